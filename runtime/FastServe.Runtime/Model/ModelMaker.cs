using FastServe.Runtime.Backends;
using FastServe.Runtime.Formats;
using FastServe.Runtime.Numerics;
using FastServe.Runtime.Tokenization;

namespace FastServe.Runtime.Model;

/// <summary>A named model shape for <c>fastserve make-model</c>.</summary>
public sealed record ModelPreset(
    string Name, int Hidden, int Intermediate, int Layers, int Heads, int KvHeads, int HeadDim, int Vocab,
    int MaxPositions, double RopeTheta, double RmsEps, bool TieEmbeddings, DType DType, RopeScaling? RopeScaling)
{
    public static readonly ModelPreset Tiny = new("tiny", 64, 192, 2, 4, 2, 16, 100352, 2048, 10000, 1e-5, false, DType.F32, null);

    public static readonly ModelPreset Small = new("small", 512, 1536, 8, 8, 2, 64, 100352, 4096, 500000, 1e-5, false, DType.F32, null);

    /// <summary>The shape of Llama-3.2-1B (1.24 B parameters, tied embeddings, llama3 RoPE scaling), stored as BF16.</summary>
    public static readonly ModelPreset OneB = new("1b", 2048, 8192, 16, 32, 8, 64, 128256, 131072, 500000, 1e-5, true, DType.BF16,
        new RopeScaling(32, 1, 4, 8192));

    public static IReadOnlyList<ModelPreset> All { get; } = [Tiny, Small, OneB];

    public static ModelPreset Parse(string name) =>
        All.FirstOrDefault(p => p.Name == name)
        ?? throw new FastServeException("args.unknown_preset", $"unknown preset '{name}' (choose {string.Join(", ", All.Select(p => p.Name))})", "preset");

    public long ParameterCount =>
        (long)Vocab * Hidden * (TieEmbeddings ? 1 : 2) + Hidden
        + Layers * ((long)Hidden * Heads * HeadDim * 2 + (long)Hidden * KvHeads * HeadDim * 2 + 3L * Hidden * Intermediate + 2L * Hidden);
}

/// <summary>
/// Writes deterministic random-weight models (Hugging Face layout, loadable by transformers) with statistics
/// chosen to resemble a trained model's where it matters for serving and quantization. See docs/models.md:
/// <list type="bullet">
/// <item>Projections ~ N(0, 0.02); o_proj and down_proj scaled by 1/sqrt(2·layers) (GPT-2/Megatron init).</item>
/// <item>About 0.5% of the output channels of every projection are outliers, 32× larger: per-channel FP8 scales
/// absorb them, a per-tensor scale cannot.</item>
/// <item>Norm gains around 1. Embeddings ~ N(0, 1).</item>
/// <item>Untied presets plant a bigram structure in lm_head (each token's embedding, permuted, plus noise) so
/// next-token distributions are peaked as a trained model's are, rather than flat: quantization and sampling
/// are then judged on distributions with realistic margins.</item>
/// </list>
/// The same preset and seed always give byte-identical files.
/// </summary>
public static class ModelMaker
{
    public const float InitStd = 0.02f;
    public const float OutlierFactor = 32f;
    public const float BigramStrength = 0.03f;
    public const float EmbeddingStd = 1f;

    /// <summary>Writes config.json, generation_config.json, model.safetensors and the default tokenizer into a
    /// new directory <paramref name="outDir"/> (written aside, then renamed). progress(bytesDone, bytesTotal).</summary>
    public static void Make(ModelPreset preset, string outDir, ulong seed, Action<long, long>? progress = null)
    {
        if (Directory.Exists(outDir) && Directory.EnumerateFileSystemEntries(outDir).Any())
            throw new FastServeException("make_model.output_exists", "output directory exists and is not empty", outDir);
        if (preset.Vocab < DefaultTokenizer.MinVocabSize)
            throw new ArgumentException("preset vocabulary smaller than the tokenizer's");

        string full = Path.GetFullPath(outDir);
        string tmp = full.TrimEnd(Path.DirectorySeparatorChar) + $".tmp-{Environment.ProcessId}";
        if (Directory.Exists(tmp)) Directory.Delete(tmp, true);
        Directory.CreateDirectory(tmp);
        try
        {
            DefaultTokenizer.Write(tmp);
            var config = ConfigFor(preset);
            File.WriteAllText(Path.Combine(tmp, "config.json"), config.ToJson());
            File.WriteAllText(Path.Combine(tmp, "generation_config.json"),
                $"{{\n  \"bos_token_id\": {DefaultTokenizer.BosId},\n  \"eos_token_id\": {DefaultTokenizer.EosId},\n  \"do_sample\": false\n}}\n");
            var entries = Entries(preset, seed);
            var meta = new Dictionary<string, string> { ["format"] = "pt", ["fastserve_preset"] = preset.Name, ["fastserve_seed"] = seed.ToString() };
            SafeTensorsWriter.Write(Path.Combine(tmp, "model.safetensors"), entries, meta, progress);
            if (Directory.Exists(full)) Directory.Delete(full);
            Directory.Move(tmp, full);
        }
        catch
        {
            if (Directory.Exists(tmp)) Directory.Delete(tmp, true);
            throw;
        }
    }

    public static ModelConfig ConfigFor(ModelPreset p) => new()
    {
        Architecture = "LlamaForCausalLM",
        ModelType = "llama",
        HiddenSize = p.Hidden,
        IntermediateSize = p.Intermediate,
        NumLayers = p.Layers,
        NumHeads = p.Heads,
        NumKvHeads = p.KvHeads,
        HeadDim = p.HeadDim,
        VocabSize = p.Vocab,
        MaxPositionEmbeddings = p.MaxPositions,
        RmsNormEps = p.RmsEps,
        RopeTheta = p.RopeTheta,
        RopeScaling = p.RopeScaling,
        TieWordEmbeddings = p.TieEmbeddings,
        BosTokenId = DefaultTokenizer.BosId,
        EosTokenIds = [DefaultTokenizer.EosId],
        TorchDtype = p.DType switch { DType.BF16 => "bfloat16", DType.F16 => "float16", _ => "float32" },
    };

    private static List<SafeTensorsEntry> Entries(ModelPreset p, ulong seed)
    {
        var list = new List<SafeTensorsEntry>();
        int q = p.Heads * p.HeadDim, kv = p.KvHeads * p.HeadDim;
        float resStd = InitStd / MathF.Sqrt(2 * p.Layers);
        void Matrix(string name, int rows, int cols, float std, bool outliers) =>
            list.Add(new SafeTensorsEntry(name, p.DType, [rows, cols], s => WriteNormal(s, p.DType, name, seed, rows, cols, std, outliers)));
        void Norm(string name) =>
            list.Add(new SafeTensorsEntry(name, p.DType, [p.Hidden], s => WriteNorm(s, p.DType, name, seed, p.Hidden)));

        Matrix("model.embed_tokens.weight", p.Vocab, p.Hidden, EmbeddingStd, false);
        for (int i = 0; i < p.Layers; i++)
        {
            string l = $"model.layers.{i}.";
            Norm(l + "input_layernorm.weight");
            Matrix(l + "self_attn.q_proj.weight", q, p.Hidden, InitStd, true);
            Matrix(l + "self_attn.k_proj.weight", kv, p.Hidden, InitStd, true);
            Matrix(l + "self_attn.v_proj.weight", kv, p.Hidden, InitStd, true);
            Matrix(l + "self_attn.o_proj.weight", p.Hidden, q, resStd, true);
            Norm(l + "post_attention_layernorm.weight");
            Matrix(l + "mlp.gate_proj.weight", p.Intermediate, p.Hidden, InitStd, true);
            Matrix(l + "mlp.up_proj.weight", p.Intermediate, p.Hidden, InitStd, true);
            Matrix(l + "mlp.down_proj.weight", p.Hidden, p.Intermediate, resStd, true);
        }
        Norm("model.norm.weight");
        if (!p.TieEmbeddings)
            list.Add(new SafeTensorsEntry("lm_head.weight", p.DType, [p.Vocab, p.Hidden], s => WriteBigramHead(s, p, seed)));
        return list;
    }

    private static void WriteNormal(Stream s, DType dtype, string name, ulong seed, int rows, int cols, float std, bool outliers)
    {
        var rng = new NormalRng(Mix(seed, name));
        var outlierRng = new NormalRng(Mix(seed, name + "#outliers"));
        var row = new float[cols];
        var bytes = new byte[cols * dtype.SizeOf()];
        for (int r = 0; r < rows; r++)
        {
            // About 1 row in 200 is an outlier channel.
            float scale = outliers && outlierRng.NextUInt(200) == 0 ? std * OutlierFactor : std;
            for (int c = 0; c < cols; c++) row[c] = rng.Next() * scale;
            WriteRow(s, dtype, row, bytes);
        }
    }

    private static void WriteNorm(Stream s, DType dtype, string name, ulong seed, int n)
    {
        var rng = new NormalRng(Mix(seed, name));
        var row = new float[n];
        for (int i = 0; i < n; i++) row[i] = 1f + 0.1f * rng.Next();
        WriteRow(s, dtype, row, new byte[n * dtype.SizeOf()]);
    }

    // lm_head[v] = BigramStrength · embed[π(v)] + N(0, InitStd): token t's hidden state, which the residual stream
    // carries from embed[t], scores highest on v = π⁻¹(t), a fixed "next token" for each token.
    private static void WriteBigramHead(Stream s, ModelPreset p, ulong seed)
    {
        int[] perm = Permutation(p.Vocab, Mix(seed, "lm_head#perm"));
        var noise = new NormalRng(Mix(seed, "lm_head.weight"));
        var embedRow = new float[p.Hidden];
        var row = new float[p.Hidden];
        var bytes = new byte[p.Hidden * p.DType.SizeOf()];
        for (int v = 0; v < p.Vocab; v++)
        {
            EmbeddingRow(p, seed, perm[v], embedRow);
            for (int c = 0; c < p.Hidden; c++) row[c] = BigramStrength * embedRow[c] + InitStd * noise.Next();
            WriteRow(s, p.DType, row, bytes);
        }
    }

    // Regenerates one row of the embedding (the generator is reseeded per row for random access).
    private static void EmbeddingRow(ModelPreset p, ulong seed, int row, float[] dst)
    {
        var rng = new NormalRng(Mix(seed, "model.embed_tokens.weight"));
        rng.Skip((long)row * p.Hidden);
        for (int c = 0; c < dst.Length; c++) dst[c] = rng.Next() * EmbeddingStd;
    }

    private static int[] Permutation(int n, ulong seed)
    {
        var rng = new NormalRng(seed);
        var perm = new int[n];
        for (int i = 0; i < n; i++) perm[i] = i;
        for (int i = n - 1; i > 0; i--)
        {
            int j = (int)rng.NextUInt((uint)(i + 1));
            (perm[i], perm[j]) = (perm[j], perm[i]);
        }
        return perm;
    }

    private static unsafe void WriteRow(Stream s, DType dtype, float[] row, byte[] bytes)
    {
        fixed (byte* b = bytes) HalfFloats.FromF32(row, dtype, b);
        s.Write(bytes);
    }

    private static ulong Mix(ulong seed, string name)
    {
        ulong h = 14695981039346656037UL ^ seed;
        foreach (char c in name) { h ^= c; h *= 1099511628211UL; }
        return h;
    }

    /// <summary>Counter-based normal generator: value i depends only on (seed, i), so rows can be regenerated
    /// at random positions. SplitMix64 bits, Box–Muller pairs.</summary>
    private struct NormalRng(ulong seed)
    {
        private ulong _counter;

        public void Skip(long values) => _counter += (ulong)values;

        public float Next()
        {
            ulong i = _counter++;
            ulong pair = i >> 1;
            double u1 = ((SplitMix(seed ^ (pair * 2 + 0x9E3779B97F4A7C15UL)) >> 11) + 1) * (1.0 / 9007199254740993.0);
            double u2 = (SplitMix(seed ^ (pair * 2 + 1 + 0x9E3779B97F4A7C15UL)) >> 11) * (1.0 / 9007199254740992.0);
            double r = Math.Sqrt(-2 * Math.Log(u1));
            double a = 2 * Math.PI * u2;
            return (float)((i & 1) == 0 ? r * Math.Cos(a) : r * Math.Sin(a));
        }

        public uint NextUInt(uint bound)
        {
            ulong x = SplitMix(seed ^ (_counter++ * 0xD1B54A32D192ED03UL));
            return (uint)((x >> 32) * bound >> 32);
        }

        private static ulong SplitMix(ulong z)
        {
            z += 0x9E3779B97F4A7C15UL;
            z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
            z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
            return z ^ (z >> 31);
        }
    }
}
