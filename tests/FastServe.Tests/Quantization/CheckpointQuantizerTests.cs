using System.Runtime.InteropServices;
using System.Text.Json;
using FastServe.Runtime;
using FastServe.Runtime.Formats;
using FastServe.Runtime.Numerics;
using FastServe.Runtime.Quantization;
using FastServe.Tests.Formats;
using NUnit.Framework;

namespace FastServe.Tests.Quantization;

public class CheckpointQuantizerTests
{
    private const int Hidden = 64, Inter = 96, Vocab = 50, Layers = 2, Heads = 4, KvHeads = 2, HeadDim = 16;

    private const string Config = """
        {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 96,
         "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 50,
         "rms_norm_eps": 1e-05, "tie_word_embeddings": false, "torch_dtype": "bfloat16", "bos_token_id": 1, "eos_token_id": 2,
         "custom_field_kept": {"nested": [1, 2]}}
        """;

    /// <summary>Tensor name → (shape, F32 values) of a tiny Llama.</summary>
    private static Dictionary<string, (long[] Shape, float[] Values)> TinyWeights(int seed = 5)
    {
        var rng = new Random(seed);
        var t = new Dictionary<string, (long[], float[])>();
        void Add(string name, params long[] shape)
        {
            int n = (int)shape.Aggregate(1L, (a, b) => a * b);
            t[name] = (shape, TestFiles.Normal(rng, n, 0.02));
        }
        Add("model.embed_tokens.weight", Vocab, Hidden);
        for (int l = 0; l < Layers; l++)
        {
            string p = $"model.layers.{l}.";
            Add(p + "input_layernorm.weight", Hidden);
            Add(p + "self_attn.q_proj.weight", Heads * HeadDim, Hidden);
            Add(p + "self_attn.k_proj.weight", KvHeads * HeadDim, Hidden);
            Add(p + "self_attn.v_proj.weight", KvHeads * HeadDim, Hidden);
            Add(p + "self_attn.o_proj.weight", Hidden, Heads * HeadDim);
            Add(p + "post_attention_layernorm.weight", Hidden);
            Add(p + "mlp.gate_proj.weight", Inter, Hidden);
            Add(p + "mlp.up_proj.weight", Inter, Hidden);
            Add(p + "mlp.down_proj.weight", Hidden, Inter);
        }
        Add("model.norm.weight", Hidden);
        Add("lm_head.weight", Vocab, Hidden);
        return t;
    }

    private static SafeTensorsEntry Entry(string name, long[] shape, float[] values, DType dtype) => dtype switch
    {
        DType.F32 => TestFiles.F32(name, shape, values),
        DType.BF16 => TestFiles.Bytes(name, DType.BF16, shape, MemoryMarshal.AsBytes(values.Select(HalfFloats.F32ToBF16).ToArray().AsSpan()).ToArray()),
        _ => throw new ArgumentException(dtype.ToString()),
    };

    /// <summary>Writes a model directory; returns the stored values as F32 (after BF16 rounding if BF16).</summary>
    private static Dictionary<string, float[]> WriteModel(string dir, DType dtype, bool sharded = false, Action<Dictionary<string, (long[], float[])>>? edit = null)
    {
        Directory.CreateDirectory(dir);
        var w = TinyWeights();
        edit?.Invoke(w);
        var entries = w.Select(kv => Entry(kv.Key, kv.Value.Shape, kv.Value.Values, dtype)).ToList();
        if (sharded)
        {
            var first = entries.Take(entries.Count / 2).ToList();
            var second = entries.Skip(entries.Count / 2).ToList();
            SafeTensorsWriter.Write(Path.Combine(dir, "model-00001-of-00002.safetensors"), first, new Dictionary<string, string> { ["format"] = "pt" });
            SafeTensorsWriter.Write(Path.Combine(dir, "model-00002-of-00002.safetensors"), second, new Dictionary<string, string> { ["format"] = "pt" });
            var map = first.ToDictionary(e => e.Name, _ => "model-00001-of-00002.safetensors");
            foreach (var e in second) map[e.Name] = "model-00002-of-00002.safetensors";
            File.WriteAllText(Path.Combine(dir, Checkpoint.IndexFileName),
                "{\"metadata\": {\"total_size\": 0}, \"weight_map\": {" + string.Join(",", map.Select(kv => $"\"{kv.Key}\": \"{kv.Value}\"")) + "}}");
        }
        else
        {
            SafeTensorsWriter.Write(Path.Combine(dir, "model.safetensors"), entries, new Dictionary<string, string> { ["format"] = "pt" });
        }
        File.WriteAllText(Path.Combine(dir, "config.json"), Config);
        File.WriteAllText(Path.Combine(dir, "tokenizer.json"), "{\"model\": {\"type\": \"BPE\"}}");
        File.WriteAllText(Path.Combine(dir, "generation_config.json"), "{\"do_sample\": false}");
        Directory.CreateDirectory(Path.Combine(dir, "original"));
        File.WriteAllText(Path.Combine(dir, "original", "params.json"), "{}");
        File.WriteAllBytes(Path.Combine(dir, "pytorch_model.bin"), [1, 2, 3]);

        return w.ToDictionary(kv => kv.Key, kv => dtype == DType.BF16
            ? kv.Value.Item2.Select(x => HalfFloats.BF16ToF32(HalfFloats.F32ToBF16(x))).ToArray()
            : kv.Value.Item2);
    }

    [TestCase(DType.F32, Fp8Scheme.PerChannel)]
    [TestCase(DType.BF16, Fp8Scheme.PerChannel)]
    [TestCase(DType.F32, Fp8Scheme.PerTensor)]
    [TestCase(DType.BF16, Fp8Scheme.PerTensor)]
    public void EndToEnd(DType dtype, Fp8Scheme scheme)
    {
        using var tmp = new TempDir();
        string inDir = tmp.File("in"), outDir = tmp.File("out");
        var original = WriteModel(inDir, dtype);
        var progress = new List<(long, long)>();
        var report = CheckpointQuantizer.Run(inDir, outDir, scheme, QuantizeLayers.All, (d, t) => progress.Add((d, t)));

        Assert.That(report.TensorsQuantized, Is.EqualTo(7 * Layers));
        using var inCk = Checkpoint.Open(inDir);
        Assert.That(report.BytesIn, Is.EqualTo(inCk.TotalBytes));
        using var ck = Checkpoint.Open(outDir);
        Assert.That(report.BytesOut, Is.EqualTo(ck.TotalBytes));
        Assert.That(report.BytesOut, Is.LessThan(report.BytesIn));
        TestContext.Out.WriteLine($"{dtype} {scheme}: {report.TensorsQuantized} tensors, {report.BytesIn} -> {report.BytesOut} bytes in {report.Elapsed.TotalMilliseconds:F1} ms");

        Assert.That(progress, Is.Not.Empty);
        Assert.That(progress.Select(p => p.Item1), Is.Ordered);
        Assert.That(progress[^1], Is.EqualTo((inCk.TotalBytes, inCk.TotalBytes)));

        double worst = 0;
        foreach (var (name, values) in original)
        {
            var t = ck.Get(name);
            if (!Fp8Quantizer.IsTarget(name, QuantizeLayers.All))
            {
                var src = inCk.Get(name);
                Assert.That(t.DType, Is.EqualTo(dtype), name);
                Assert.That(t.Shape, Is.EqualTo(src.Shape), name);
                Assert.That(t.Bytes.ToArray(), Is.EqualTo(src.Bytes.ToArray()), $"{name} copied unchanged");
                Assert.That(ck.TryGet(name + "_scale", out _), Is.False);
                continue;
            }
            Assert.That(t.DType, Is.EqualTo(DType.F8E4M3), name);
            Assert.That(t.Shape, Is.EqualTo(inCk.Get(name).Shape), name);
            int rows = (int)t.Shape[0], cols = (int)t.Shape[1];
            var scaleT = ck.Get(name + "_scale");
            Assert.That(scaleT.DType, Is.EqualTo(DType.F32));
            Assert.That(scaleT.Shape, Is.EqualTo(scheme == Fp8Scheme.PerChannel ? new long[] { rows, 1 } : Array.Empty<long>()));
            var scales = MemoryMarshal.Cast<byte, float>(scaleT.Bytes).ToArray();
            var q = t.Bytes.ToArray();
            for (int r = 0; r < rows; r++)
            {
                float s = scales[scheme == Fp8Scheme.PerChannel ? r : 0];
                float amax = values.Skip(r * cols).Take(cols).Max(MathF.Abs);
                if (scheme == Fp8Scheme.PerChannel) Assert.That(s, Is.EqualTo(amax / 448f), $"{name} row {r} scale");
                for (int c = 0; c < cols; c++)
                {
                    float w = values[r * cols + c], d = s * Fp8E4M3.Decode(q[r * cols + c]);
                    // E4M3 keeps 3 mantissa bits: relative error ≤ 2^-4 in the normal range, absolute ≤ scale·2^-10 below it.
                    double bound = Math.Max(Math.Abs(w) * 0.0625, s * Math.ScaleB(1, -10)) * 1.0001;
                    Assert.That(Math.Abs(d - w), Is.LessThanOrEqualTo(bound), $"{name}[{r},{c}] = {w} dequantized to {d}");
                    worst = Math.Max(worst, Math.Abs(d - w) / bound);
                }
            }
        }
        TestContext.Out.WriteLine($"worst error / bound = {worst:F3}");

        var cfg = ModelConfig.Load(Path.Combine(outDir, "config.json"));
        Assert.That(cfg.Quantization, Is.EqualTo(new QuantizationConfig(scheme, ["lm_head"])));
        Assert.That(cfg with { Quantization = null }, Is.EqualTo(ModelConfig.Load(Path.Combine(inDir, "config.json"))));
        using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(outDir, "config.json")));
        Assert.That(doc.RootElement.GetProperty("custom_field_kept").GetRawText(), Does.Contain("nested"), "unknown fields kept");

        Assert.That(File.ReadAllText(Path.Combine(outDir, "tokenizer.json")), Is.EqualTo(File.ReadAllText(Path.Combine(inDir, "tokenizer.json"))));
        Assert.That(File.Exists(Path.Combine(outDir, "generation_config.json")), Is.True);
        Assert.That(File.Exists(Path.Combine(outDir, "pytorch_model.bin")), Is.False, "other weight formats are not copied");
        Assert.That(Directory.Exists(Path.Combine(outDir, "original")), Is.False);
        Assert.That(ck.SafeTensorsFiles[0].Metadata["format"], Is.EqualTo("pt"));
        Assert.That(Directory.GetFileSystemEntries(tmp.Path).Select(Path.GetFileName), Is.EquivalentTo(new[] { "in", "out" }), "no temp dir left");

        var again = Assert.Throws<FastServeException>(() => CheckpointQuantizer.Run(outDir, tmp.File("out2"), scheme, QuantizeLayers.All))!;
        Assert.That(again.Code, Is.EqualTo("quantize.already_quantized"));
        Assert.That(Directory.Exists(tmp.File("out2")), Is.False);
    }

    [Test]
    public void AttentionOnlyListsMlpProjectionsInIgnore()
    {
        using var tmp = new TempDir();
        WriteModel(tmp.File("in"), DType.BF16);
        var report = CheckpointQuantizer.Run(tmp.File("in"), tmp.File("out"), Fp8Scheme.PerChannel, QuantizeLayers.Attention);
        Assert.That(report.TensorsQuantized, Is.EqualTo(4 * Layers));
        var cfg = ModelConfig.Load(tmp.File("out/config.json"));
        Assert.That(cfg.Quantization!.Ignore, Is.EqualTo(new[]
        {
            "lm_head",
            "model.layers.0.mlp.down_proj", "model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj",
            "model.layers.1.mlp.down_proj", "model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj",
        }));
        using var ck = Checkpoint.Open(tmp.File("out"));
        Assert.That(ck.Get("model.layers.1.mlp.up_proj.weight").DType, Is.EqualTo(DType.BF16));
        Assert.That(ck.Get("model.layers.1.self_attn.v_proj.weight").DType, Is.EqualTo(DType.F8E4M3));
    }

    [Test]
    public void ShardedInputGivesShardedOutputWithIndex()
    {
        using var tmp = new TempDir();
        WriteModel(tmp.File("in"), DType.BF16, sharded: true);
        CheckpointQuantizer.Run(tmp.File("in"), tmp.File("out"), Fp8Scheme.PerChannel, QuantizeLayers.All);
        using var ck = Checkpoint.Open(tmp.File("out")); // validates the new index against the shards
        Assert.That(ck.Files.Select(Path.GetFileName), Is.EqualTo(new[] { "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors" }));
        using var doc = JsonDocument.Parse(File.ReadAllText(tmp.File("out/" + Checkpoint.IndexFileName)));
        var map = doc.RootElement.GetProperty("weight_map");
        Assert.That(map.GetProperty("model.layers.1.mlp.down_proj.weight_scale").GetString(),
            Is.EqualTo(map.GetProperty("model.layers.1.mlp.down_proj.weight").GetString()));
        Assert.That(doc.RootElement.GetProperty("metadata").GetProperty("total_size").GetInt64(), Is.EqualTo(ck.TotalBytes));
        Assert.That(ck.TensorCount, Is.EqualTo(TinyWeights().Count + 7 * Layers));
    }

    [Test]
    public void OutputExistsIsRefusedAndLeftAlone()
    {
        using var tmp = new TempDir();
        WriteModel(tmp.File("in"), DType.F32);
        Directory.CreateDirectory(tmp.File("out"));
        File.WriteAllText(tmp.File("out/keep.txt"), "mine");
        var ex = Assert.Throws<FastServeException>(() => CheckpointQuantizer.Run(tmp.File("in"), tmp.File("out"), Fp8Scheme.PerChannel, QuantizeLayers.All))!;
        Assert.That(ex.Code, Is.EqualTo("quantize.output_exists"));
        Assert.That(ex.Message, Does.Contain(tmp.File("out")));
        Assert.That(Directory.GetFileSystemEntries(tmp.File("out")), Has.Length.EqualTo(1));
        Assert.That(Directory.GetFileSystemEntries(tmp.Path), Has.Length.EqualTo(2), "no temp dir left");
    }

    [Test]
    public void NonFiniteWeightMidWayLeavesNoOutput()
    {
        using var tmp = new TempDir();
        // The failure happens while writing, after earlier tensors are already in the temp directory.
        WriteModel(tmp.File("in"), DType.BF16, edit: w => w["model.layers.1.mlp.up_proj.weight"].Item2[17] = float.PositiveInfinity);
        var ex = Assert.Throws<FastServeException>(() => CheckpointQuantizer.Run(tmp.File("in"), tmp.File("out"), Fp8Scheme.PerChannel, QuantizeLayers.All))!;
        Assert.That(ex.Code, Is.EqualTo("quantize.non_finite"));
        Assert.That(ex.Message, Does.Contain("model.layers.1.mlp.up_proj.weight").And.Contain("model.safetensors"));
        Assert.That(Directory.Exists(tmp.File("out")), Is.False);
        Assert.That(Directory.GetFileSystemEntries(tmp.Path).Select(Path.GetFileName), Is.EqualTo(new[] { "in" }), "temp dir removed");
    }

    [Test]
    public void MalformedInputLeavesNoOutput()
    {
        using var tmp = new TempDir();
        WriteModel(tmp.File("in"), DType.F32);
        // Corrupt the header: claim one more element than the data holds.
        string path = tmp.File("in/model.safetensors");
        byte[] bytes = File.ReadAllBytes(path);
        string header = System.Text.Encoding.UTF8.GetString(bytes, 8, (int)BitConverter.ToUInt64(bytes));
        string bad = header.Replace("\"shape\":[64]", "\"shape\":[65]");
        Assert.That(bad, Is.Not.EqualTo(header));
        System.Text.Encoding.UTF8.GetBytes(bad).CopyTo(bytes, 8);
        File.WriteAllBytes(path, bytes);

        var ex = Assert.Throws<FastServeException>(() => CheckpointQuantizer.Run(tmp.File("in"), tmp.File("out"), Fp8Scheme.PerTensor, QuantizeLayers.All))!;
        Assert.That(ex.Code, Is.EqualTo("safetensors.size_mismatch"));
        Assert.That(Directory.GetFileSystemEntries(tmp.Path).Select(Path.GetFileName), Is.EqualTo(new[] { "in" }));
    }

    [Test]
    public void TargetThatIsNotAMatrixIsRejectedUpFront()
    {
        using var tmp = new TempDir();
        WriteModel(tmp.File("in"), DType.F32, edit: w =>
            w["model.layers.0.self_attn.q_proj.weight"] = (new long[] { 4, 16, 64 }, w["model.layers.0.self_attn.q_proj.weight"].Item2));
        var ex = Assert.Throws<FastServeException>(() => CheckpointQuantizer.Run(tmp.File("in"), tmp.File("out"), Fp8Scheme.PerChannel, QuantizeLayers.All))!;
        Assert.That(ex.Code, Is.EqualTo("quantize.unsupported_tensor"));
        Assert.That(ex.Message, Does.Contain("model.layers.0.self_attn.q_proj.weight"));
        Assert.That(Directory.GetFileSystemEntries(tmp.Path).Select(Path.GetFileName), Is.EqualTo(new[] { "in" }));
    }

    [Test]
    public void MissingConfigIsReported()
    {
        using var tmp = new TempDir();
        WriteModel(tmp.File("in"), DType.F32);
        File.Delete(tmp.File("in/config.json"));
        var ex = Assert.Throws<FastServeException>(() => CheckpointQuantizer.Run(tmp.File("in"), tmp.File("out"), Fp8Scheme.PerChannel, QuantizeLayers.All))!;
        Assert.That(ex.Code, Is.EqualTo("config.missing"));
    }
}
