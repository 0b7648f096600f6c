using FastServe.Runtime;
using FastServe.Runtime.Backends;
using FastServe.Runtime.Backends.Cpu;
using FastServe.Runtime.Backends.Reference;
using FastServe.Runtime.Formats;
using FastServe.Runtime.Model;
using NUnit.Framework;

namespace FastServe.Tests.Model;

/// <summary>Mistral and Qwen2 (q/k/v bias) checkpoints load and run through the same forward pass.</summary>
public class ArchitectureTests
{
    private static readonly int[] Prompt = [100257, 9906, 1917, 11, 420, 374, 264, 1296, 13];

    // Copies the tiny model with a different architecture, optionally adding q/k/v biases.
    private static unsafe string Variant(string arch, string modelType, Func<string, int, float>? bias)
    {
        string dir = TestModels.TempDir(modelType);
        foreach (var f in Directory.GetFiles(TestModels.Tiny))
            if (Path.GetFileName(f) is not ("config.json" or "model.safetensors"))
                File.CreateSymbolicLink(Path.Combine(dir, Path.GetFileName(f)), f);
        var cfg = ModelConfig.Load(Path.Combine(TestModels.Tiny, "config.json")) with
        {
            Architecture = arch,
            ModelType = modelType,
            AttentionBias = bias is not null,
        };
        File.WriteAllText(Path.Combine(dir, "config.json"), cfg.ToJson());

        using var src = SafeTensorsFile.Open(Path.Combine(TestModels.Tiny, "model.safetensors"));
        var entries = new List<SafeTensorsEntry>();
        foreach (var t in src.Tensors)
        {
            var view = t;
            entries.Add(new SafeTensorsEntry(view.Name, view.DType, view.Shape, s => s.Write(new ReadOnlySpan<byte>(view.Data, (int)view.ByteLength))));
        }
        if (bias is not null)
        {
            for (int l = 0; l < cfg.NumLayers; l++)
                foreach (var (proj, n) in new[] { ("q_proj", cfg.NumHeads * cfg.HeadDim), ("k_proj", cfg.NumKvHeads * cfg.HeadDim), ("v_proj", cfg.NumKvHeads * cfg.HeadDim) })
                {
                    string name = $"model.layers.{l}.self_attn.{proj}.bias";
                    entries.Add(new SafeTensorsEntry(name, DType.F32, [n], s =>
                    {
                        for (int i = 0; i < n; i++) s.Write(BitConverter.GetBytes(bias(name, i)));
                    }));
                }
        }
        SafeTensorsWriter.Write(Path.Combine(dir, "model.safetensors"), entries);
        return dir;
    }

    private static float[] LastLogits(string dir, IBackend b)
    {
        using var m = LoadedModel.Load(dir);
        var c = m.Config;
        var spec = new KvCacheSpec(c.NumLayers, c.NumKvHeads, c.HeadDim, 16, 1, KvDType.F32);
        using var r = new ModelRunner(c, m.Weights, b, spec, 16, 1);
        var layout = new BatchLayout();
        layout.AddSequence(0, Prompt.Length, [0]);
        var lg = new float[c.VocabSize];
        r.Forward(Prompt, layout, [Prompt.Length - 1], lg);
        return lg;
    }

    private static double RelDiff(float[] a, float[] b) => a.Zip(b, (x, y) => Math.Abs(x - y)).Max() / b.Max(Math.Abs);

    [Test]
    public void MistralAndZeroBiasQwen2MatchLlama()
    {
        using var cpu = new CpuBackend(2);
        var llama = LastLogits(TestModels.Tiny, cpu);
        Assert.That(RelDiff(LastLogits(Variant("MistralForCausalLM", "mistral", null), cpu), llama), Is.EqualTo(0));
        Assert.That(RelDiff(LastLogits(Variant("Qwen2ForCausalLM", "qwen2", (_, _) => 0f), cpu), llama), Is.LessThan(1e-6));
    }

    [Test]
    public void Qwen2BiasesChangeTheOutputAndMatchTheReference()
    {
        var rng = new Random(3);
        string dir = Variant("Qwen2ForCausalLM", "qwen2", (_, _) => (float)(rng.NextDouble() - 0.5));
        using var cpu = new CpuBackend(2);
        using var reference = new ReferenceBackend();
        var withBias = LastLogits(dir, cpu);
        Assert.That(RelDiff(withBias, LastLogits(TestModels.Tiny, cpu)), Is.GreaterThan(1e-3), "biases are applied");
        Assert.That(RelDiff(withBias, LastLogits(dir, reference)), Is.LessThan(1e-4));
    }

    [Test]
    public void Qwen2WithoutBiasTensorsIsAMissingTensorError()
    {
        string dir = TestModels.TempDir("qwen-nobias");
        foreach (var f in Directory.GetFiles(TestModels.Tiny))
            if (Path.GetFileName(f) != "config.json") File.CreateSymbolicLink(Path.Combine(dir, Path.GetFileName(f)), f);
        var cfg = ModelConfig.Load(Path.Combine(TestModels.Tiny, "config.json")) with { Architecture = "Qwen2ForCausalLM", ModelType = "qwen2", AttentionBias = true };
        File.WriteAllText(Path.Combine(dir, "config.json"), cfg.ToJson());
        var e = Assert.Throws<FastServeException>(() => LoadedModel.Load(dir).Dispose())!;
        Assert.That(e.Code, Is.EqualTo("checkpoint.missing_tensor"));
        Assert.That(e.Message, Does.Contain("q_proj.bias"));
    }
}
