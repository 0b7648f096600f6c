using System.Runtime.InteropServices;
using FastServe.Runtime.Numerics;

namespace FastServe.Runtime.Backends;

/// <summary>Outcome of one <see cref="BackendCheck"/> case.</summary>
public enum CheckOutcome { Pass, Fail, Skip }

/// <summary>
/// One op × shape × dtype compared against the oracle. Errors are over every output value:
/// <see cref="MaxAbsError"/> = max |a − e|; <see cref="MaxRelError"/> = max |a − e| / max |e| (relative to the
/// largest reference magnitude, so values near zero do not blow it up; this is what <see cref="Tolerance"/> bounds);
/// <see cref="Nrmse"/> = sqrt(Σ(a − e)² / Σe²).
/// </summary>
public sealed record CheckResult(string Op, string Shape, string DType, double MaxAbsError, double MaxRelError, double Nrmse,
    double Tolerance, CheckOutcome Outcome, string? Detail = null);

/// <summary>
/// ggml's test-backend-ops for <see cref="IBackend"/>: every op of a backend against <see cref="Reference.ReferenceBackend"/>
/// on seeded random inputs and awkward shapes (rows 1, 3, 17, 64; widths that are no multiple of 8, 16 or 32; GQA
/// ratios 1, 4 and 6; several sequences at different positions with scattered block tables; every weight dtype, FP8
/// with per-row and per-tensor scales). Tolerances are per op and dtype (<see cref="Tolerances"/>, reasons in
/// docs/cuda.md). For FP8 MatMul on a backend that quantizes activations (W8A8) the expected values are computed here,
/// by quantizing each activation row exactly as the backend promises, so the tolerance stays tight.
/// </summary>
public static class BackendCheck
{
    /// <summary>Tolerances on <see cref="CheckResult.MaxRelError"/>.</summary>
    public static class Tolerances
    {
        /// <summary>Pure data movement (copies, gathers, KV-free reads): bit-exact.</summary>
        public const double Exact = 0;
        /// <summary>One F32 rounding per value (embedding decode × scale, residual add).</summary>
        public const double Rounding = 1e-6;
        /// <summary>F32 transcendental or reduction per row (RMSNorm, SiLU, RoPE): a few ulps of F32 math.</summary>
        public const double Elementwise = 1e-5;
        /// <summary>Dot products with F32 activations in F32, any summation order (k up to a few thousand).</summary>
        public const double MatMul = 1e-4;
        /// <summary>W8A8 against the W8A8 reference: identical quantized inputs, accumulation in F32 by tensor cores
        /// that may round partial sums more often than a scalar loop.</summary>
        public const double MatMulW8A8 = 1e-3;
        /// <summary>F32 scores and softmax over the same BF16/F32 cache contents, online-softmax rescaling included.</summary>
        public const double Attention = 1e-4;
    }

    /// <summary>Output of one op run: the values read back and the Rows the op set.</summary>
    public readonly record struct Output(float[] Values, int Rows);

    /// <summary>A check: runs the op on the backend under test (first argument) and produces the expected output
    /// (with the reference backend, second argument, or computed here); its tolerance may depend on the backend.</summary>
    public sealed record Case(string Op, string Shape, string DType, Func<IBackend, double> ToleranceFor, Func<IBackend, IBackend, (Output Actual, Output Expected)> Run);

    /// <summary>Error statistics of <paramref name="actual"/> against <paramref name="expected"/>; non-finite values
    /// or a length mismatch make every statistic +∞.</summary>
    public static (double MaxAbs, double MaxRel, double Nrmse) Compare(ReadOnlySpan<float> actual, ReadOnlySpan<float> expected)
    {
        if (actual.Length != expected.Length) return (double.PositiveInfinity, double.PositiveInfinity, double.PositiveInfinity);
        double maxAbs = 0, maxRef = 0, sumErr = 0, sumRef = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            if (!float.IsFinite(actual[i]) || !float.IsFinite(expected[i])) return (double.PositiveInfinity, double.PositiveInfinity, double.PositiveInfinity);
            double e = expected[i], d = Math.Abs(actual[i] - e);
            maxAbs = Math.Max(maxAbs, d);
            maxRef = Math.Max(maxRef, Math.Abs(e));
            sumErr += d * d;
            sumRef += e * e;
        }
        double rel = maxRef > 0 ? maxAbs / maxRef : maxAbs;
        double nrmse = sumRef > 0 ? Math.Sqrt(sumErr / sumRef) : Math.Sqrt(sumErr);
        return (maxAbs, rel, nrmse);
    }

    /// <summary>Judges one run: the Rows the op set must match, then the values within <paramref name="tolerance"/>.</summary>
    public static CheckResult Judge(string op, string shape, string dtype, double tolerance, Output actual, Output expected)
    {
        var (abs, rel, nrmse) = Compare(actual.Values, expected.Values);
        if (actual.Rows != expected.Rows)
            return new CheckResult(op, shape, dtype, abs, rel, nrmse, tolerance, CheckOutcome.Fail, $"Rows is {actual.Rows}, expected {expected.Rows}");
        if (double.IsPositiveInfinity(rel))
            return new CheckResult(op, shape, dtype, abs, rel, nrmse, tolerance, CheckOutcome.Fail,
                actual.Values.Length != expected.Values.Length ? $"{actual.Values.Length} values, expected {expected.Values.Length}" : "non-finite output");
        return new CheckResult(op, shape, dtype, abs, rel, nrmse, tolerance, rel <= tolerance ? CheckOutcome.Pass : CheckOutcome.Fail);
    }

    /// <summary>Runs one case; an exception from the backend fails it (a refused KV dtype skips it).</summary>
    public static CheckResult Run(Case c, IBackend backend, IBackend reference)
    {
        double tol = c.ToleranceFor(backend);
        try
        {
            var (actual, expected) = c.Run(backend, reference);
            return Judge(c.Op, c.Shape, c.DType, tol, actual, expected);
        }
        catch (FastServeException e) when (e.Code.EndsWith(".unsupported_kv_dtype", StringComparison.Ordinal))
        {
            return new CheckResult(c.Op, c.Shape, c.DType, 0, 0, 0, tol, CheckOutcome.Skip, e.Message);
        }
        catch (Exception e) when (e is FastServeException or ArgumentException or InvalidOperationException)
        {
            return new CheckResult(c.Op, c.Shape, c.DType, double.NaN, double.NaN, double.NaN, tol, CheckOutcome.Fail, $"{e.GetType().Name}: {e.Message}");
        }
    }

    /// <summary>Every case, with inputs derived from <paramref name="seed"/> (a case's data depends only on the seed
    /// and its own name, so a failure reproduces alone).</summary>
    public static IReadOnlyList<Case> Cases(int seed)
    {
        var list = new List<Case>();
        int[] rowsSet = [1, 3, 17, 64];
        string[] kinds = ["f32", "f16", "bf16", "fp8-row", "fp8-tensor"];

        foreach (string kind in kinds)
        {
            foreach (int rows in rowsSet)
            {
                string shape = $"tokens={rows} vocab=97 cols=67";
                list.Add(Make("Embedding", shape, kind, kind.StartsWith("fp8") ? Tolerances.Rounding : Tolerances.Exact, seed,
                    (b, rng, mem) => RunEmbedding(b, rng, mem, kind, rows)));
            }
        }
        foreach (int cols in new[] { 67, 1031 })
        {
            foreach (int rows in rowsSet)
            {
                list.Add(Make("RmsNorm", $"rows={rows} cols={cols}", "f32", Tolerances.Elementwise, seed, (b, rng, _) => RunRmsNorm(b, rng, rows, cols, inPlace: false)));
                list.Add(Make("AddRmsNorm", $"rows={rows} cols={cols}", "f32", Tolerances.Elementwise, seed, (b, rng, _) => RunAddRmsNorm(b, rng, rows, cols)));
            }
        }
        list.Add(Make("RmsNorm", "rows=17 cols=67 in-place", "f32", Tolerances.Elementwise, seed, (b, rng, _) => RunRmsNorm(b, rng, 17, 67, inPlace: true)));
        foreach (int rows in rowsSet)
        {
            int cols = rows == 64 ? 1031 : 67;
            list.Add(Make("Add", $"rows={rows} cols={cols}", "f32", Tolerances.Rounding, seed, (b, rng, _) => RunAdd(b, rng, rows, cols)));
            list.Add(Make("SiluGate", $"rows={rows} cols={cols}", "f32", Tolerances.Elementwise, seed, (b, rng, _) => RunSiluGate(b, rng, rows, cols)));
        }
        foreach (string kind in kinds)
        {
            // k = 67 and 269 take a device's any-shape kernel; k = 256 and 1024 (16-byte weight rows) its tensor-core
            // kernels: rows 1 to 32 the decode kernel, and with these small n, 64 and 100 the decode kernel in 32-token
            // groups (the last one partial), 200 the small tiles, 300 the large ones.
            foreach (var (k, n, bias) in new[] { (67, 45, true), (269, 130, false), (256, 96, true), (1024, 200, false) })
            {
                foreach (int rows in k switch { 256 => [.. rowsSet, 100, 200, 300], 1024 => [.. rowsSet, 100], _ => rowsSet })
                {
                    string shape = $"rows={rows} k={k} n={n}{(bias ? " bias" : "")}";
                    bool fp8 = kind.StartsWith("fp8");
                    list.Add(new Case("MatMul", shape, kind, be => fp8 && be.QuantizesFp8Activations ? Tolerances.MatMulW8A8 : Tolerances.MatMul,
                        (b, r) => WithData(seed, "MatMul", shape, kind, (rng, mem) => RunMatMul(b, r, rng, mem, kind, rows, k, n, bias))));
                }
            }
        }
        foreach (var (heads, dim, theta, scaled) in new[] { (4, 64, 10000.0, false), (3, 128, 500000.0, true), (5, 6, 10000.0, false) })
        {
            foreach (int rows in rowsSet)
            {
                string shape = $"rows={rows} heads={heads} head_dim={dim}{(scaled ? " llama3-scaled" : "")}";
                list.Add(Make("Rope", shape, "f32", Tolerances.Elementwise, seed, (b, rng, _) => RunRope(b, rng, rows, heads, dim, theta, scaled)));
            }
        }
        foreach (var a in AttentionShapes)
        {
            foreach (var scenario in Scenarios)
            {
                foreach (var kv in new[] { KvDType.BF16, KvDType.F32 })
                {
                    string shape = $"{scenario.Name} rows={scenario.Rows} heads={a.Heads} kv_heads={a.KvHeads} head_dim={a.Dim} block={a.Block}";
                    string dt = kv == KvDType.BF16 ? "kv-bf16" : "kv-f32";
                    list.Add(Make("KvStore+Attention", shape, dt, Tolerances.Attention, seed, (b, rng, _) => RunAttention(b, rng, a, scenario, kv)));
                }
            }
        }
        list.Add(Make("GatherRows", "src=17 rows=[16,0,5,5,3]", "f32", Tolerances.Exact, seed, (b, rng, _) => RunGather(b, rng, 17, [16, 0, 5, 5, 3], inPlace: false)));
        list.Add(Make("GatherRows", "src=64 rows=[1,2,5,63] in-place", "f32", Tolerances.Exact, seed, (b, rng, _) => RunGather(b, rng, 64, [1, 2, 5, 63], inPlace: true)));
        list.Add(Make("GatherRows", "src=3 rows=[0,1] in-place identity", "f32", Tolerances.Exact, seed, (b, rng, _) => RunGather(b, rng, 3, [0, 1], inPlace: true)));
        foreach (int rows in new[] { 0, 1, 64 })
            list.Add(Make("CopyFromHost+CopyToHost", $"rows={rows} cols=67", "f32", Tolerances.Exact, seed, (b, rng, _) => RunCopy(b, rng, rows, 67)));
        foreach (var (mode, rows, vocab) in SampleShapes)
        {
            string shape = $"{mode} rows={rows} vocab={vocab}";
            list.Add(new Case("Sample", shape, "f32", _ => Tolerances.Exact, (b, _) => WithData(seed, "Sample", shape, "f32", (rng, _) => RunSample(b, rng, mode, rows, vocab))));
        }
        return list;
    }

    // ---- case plumbing --------------------------------------------------------------------------------------------

    /// <summary>Native memory for weights that must outlive the backend weights made from them within one run.</summary>
    private sealed unsafe class NativeArena : IDisposable
    {
        private readonly List<nint> _blocks = [];

        public byte* Alloc(long bytes)
        {
            var p = (byte*)NativeMemory.AllocZeroed((nuint)Math.Max(1, bytes));
            _blocks.Add((nint)p);
            return p;
        }

        public void Dispose()
        {
            foreach (var p in _blocks) NativeMemory.Free((void*)p);
            _blocks.Clear();
        }
    }

    private static Case Make(string op, string shape, string dtype, double tol, int seed, Func<IBackend, Random, NativeArena, Output> run) =>
        new(op, shape, dtype, _ => tol, (b, r) =>
        {
            var actual = WithData(seed, op, shape, dtype, (rng, mem) => run(b, rng, mem));
            var expected = WithData(seed, op, shape, dtype, (rng, mem) => run(r, rng, mem));
            return (actual, expected);
        });

    private static T WithData<T>(int seed, string op, string shape, string dtype, Func<Random, NativeArena, T> run)
    {
        using var mem = new NativeArena();
        return run(new Random(CaseSeed(seed, $"{op}/{shape}/{dtype}")), mem);
    }

    /// <summary>FNV-1a of the case name mixed with the run's seed.</summary>
    internal static int CaseSeed(int seed, string name)
    {
        uint h = 2166136261u ^ (uint)seed;
        foreach (char c in name) h = (h ^ c) * 16777619u;
        return (int)(h & 0x7FFFFFFF);
    }

    private static float[] Floats(Random rng, int n, float scale = 1f)
    {
        var a = new float[n];
        for (int i = 0; i < n; i++) a[i] = (float)(rng.NextDouble() * 2 - 1) * scale;
        return a;
    }

    private static float[] Read(IBackend b, BackendTensor t)
    {
        var a = new float[t.Rows * t.Cols];
        b.CopyToHost(t, a);
        return a;
    }

    private static BackendTensor Upload(IBackend b, string name, Random rng, int rows, int cols, float scale = 1f)
    {
        var t = b.Alloc(name, rows, cols);
        b.CopyFromHost(Floats(rng, rows * cols, scale), rows, t);
        return t;
    }

    /// <summary>A random [rows, cols] weight: F32/F16/BF16 uniform in ±1; FP8 codes uniform over every finite code
    /// (subnormals included) with positive scales per row or for the tensor.</summary>
    private static unsafe MatrixWeight RandomWeight(Random rng, NativeArena mem, string name, string kind, int rows, int cols, bool bias)
    {
        long n = (long)rows * cols;
        float[]? b = bias ? Floats(rng, rows) : null;
        switch (kind)
        {
            case "f32":
            {
                byte* p = mem.Alloc(n * 4);
                for (long i = 0; i < n; i++) ((float*)p)[i] = (float)(rng.NextDouble() * 2 - 1);
                return new MatrixWeight(name, DType.F32, rows, cols, p, null, b);
            }
            case "f16":
            case "bf16":
            {
                byte* p = mem.Alloc(n * 2);
                for (long i = 0; i < n; i++)
                {
                    float v = (float)(rng.NextDouble() * 2 - 1);
                    ((ushort*)p)[i] = kind == "f16" ? HalfFloats.F32ToF16(v) : HalfFloats.F32ToBF16(v);
                }
                return new MatrixWeight(name, kind == "f16" ? DType.F16 : DType.BF16, rows, cols, p, null, b);
            }
            default:
            {
                byte* p = mem.Alloc(n);
                for (long i = 0; i < n; i++)
                {
                    byte c;
                    do c = (byte)rng.Next(256); while ((c & 0x7F) == 0x7F);
                    p[i] = c;
                }
                var s = new float[kind == "fp8-row" ? rows : 1];
                for (int i = 0; i < s.Length; i++) s[i] = (float)(0.0005 + rng.NextDouble() * 0.01);
                return new MatrixWeight(name, DType.F8E4M3, rows, cols, p, s, b);
            }
        }
    }

    // ---- the ops --------------------------------------------------------------------------------------------------

    private static Output RunEmbedding(IBackend b, Random rng, NativeArena mem, string kind, int n)
    {
        const int vocab = 97, cols = 67;
        var w = RandomWeight(rng, mem, "embed", kind, vocab, cols, bias: false);
        var tokens = new int[n];
        for (int i = 0; i < n; i++) tokens[i] = i == 0 ? vocab - 1 : i == 1 ? 0 : rng.Next(vocab);
        using var table = b.LoadMatrix(w);
        using var dst = b.Alloc("dst", 64, cols);
        b.Embedding(table, tokens, dst);
        return new Output(Read(b, dst), dst.Rows);
    }

    private static Output RunRmsNorm(IBackend b, Random rng, int rows, int cols, bool inPlace)
    {
        using var x = Upload(b, "x", rng, rows, cols, 3f);
        using var gamma = b.LoadVector("gamma", Floats(rng, cols, 2f));
        using var dst = b.Alloc("dst", 64, cols);
        var target = inPlace ? x : dst;
        b.RmsNorm(x, gamma, 1e-5f, target);
        return new Output(Read(b, target), target.Rows);
    }

    private static Output RunAddRmsNorm(IBackend b, Random rng, int rows, int cols)
    {
        using var residual = Upload(b, "residual", rng, rows, cols, 3f);
        using var x = Upload(b, "x", rng, rows, cols);
        using var gamma = b.LoadVector("gamma", Floats(rng, cols, 2f));
        using var dst = b.Alloc("dst", 64, cols);
        b.AddRmsNorm(residual, x, gamma, 1e-6f, dst);
        // Both outputs count: the updated residual and the normalized rows.
        return new Output([.. Read(b, residual), .. Read(b, dst)], dst.Rows);
    }

    private static Output RunAdd(IBackend b, Random rng, int rows, int cols)
    {
        using var acc = Upload(b, "acc", rng, rows, cols);
        using var x = Upload(b, "x", rng, rows, cols);
        b.Add(acc, x);
        return new Output(Read(b, acc), acc.Rows);
    }

    private static Output RunSiluGate(IBackend b, Random rng, int rows, int cols)
    {
        using var gate = b.Alloc("gate", rows, cols);
        var g = Floats(rng, rows * cols, 12f);
        if (g.Length > 2) { g[0] = -100f; g[1] = 100f; } // saturation on both sides
        b.CopyFromHost(g, rows, gate);
        using var up = Upload(b, "up", rng, rows, cols, 2f);
        using var dst = b.Alloc("dst", 64, cols);
        b.SiluGate(gate, up, dst);
        return new Output(Read(b, dst), dst.Rows);
    }

    private static (Output, Output) RunMatMul(IBackend b, IBackend reference, Random rng, NativeArena mem, string kind, int rows, int k, int n, bool bias)
    {
        var w = RandomWeight(rng, mem, "w", kind, n, k, bias);
        var x = Floats(rng, rows * k, 2f);
        if (rows > 2) Array.Clear(x, 2 * k, k); // an all-zero row: W8A8's scale is 0 there
        var actual = MatMulOn(b, w, x, rows);
        var expected = w.DType == DType.F8E4M3 && b.QuantizesFp8Activations
            ? new Output(W8A8Reference(x, rows, k, w), rows)
            : MatMulOn(reference, w, w.DType is DType.F16 or DType.BF16 && b.RoundsActivationsTo16Bit ? RoundTo(w.DType, x) : x, rows);
        return (actual, expected);
    }

    /// <summary>x with every value rounded to F16 or BF16 (nearest even), as a W16A16 backend feeds its tensor cores.</summary>
    private static float[] RoundTo(DType dtype, float[] x) =>
        [.. x.Select(v => dtype == DType.BF16 ? HalfFloats.BF16ToF32(HalfFloats.F32ToBF16(v)) : HalfFloats.F16ToF32(HalfFloats.F32ToF16(v)))];

    private static Output MatMulOn(IBackend b, MatrixWeight w, float[] x, int rows)
    {
        using var weight = b.LoadMatrix(w);
        using var xt = b.Alloc("x", Math.Max(64, rows), w.Cols);
        using var dst = b.Alloc("dst", Math.Max(64, rows), w.Rows);
        b.CopyFromHost(x, rows, xt);
        b.MatMul(xt, weight, dst);
        return new Output(Read(b, dst), dst.Rows);
    }

    /// <summary>
    /// FP8 W8A8 MatMul as fs_cuda_matmul specifies it, in scalar code: per row, s = max|x| / 448 (F32); each x / s is
    /// rounded to E4M3 (nearest, ties to even, saturating); products with the dequantized weight codes are summed in
    /// double and scaled by s · w_scale[n] (+ bias). An all-zero row gives the bias.
    /// </summary>
    public static unsafe float[] W8A8Reference(ReadOnlySpan<float> x, int rows, int k, MatrixWeight w)
    {
        if (w.DType != DType.F8E4M3) throw new ArgumentException($"{w.Name}: W8A8 needs FP8 weights");
        if (w.Cols != k || x.Length < rows * k) throw new ArgumentException("W8A8Reference: shape mismatch");
        var dst = new float[rows * w.Rows];
        var q = new double[k];
        var scales = w.Scales!;
        for (int r = 0; r < rows; r++)
        {
            var xr = x.Slice(r * k, k);
            float amax = 0;
            foreach (float v in xr) amax = MathF.Max(amax, MathF.Abs(v));
            float s = amax / Fp8E4M3.MaxValue;
            for (int i = 0; i < k; i++) q[i] = s > 0 ? Fp8E4M3.Decode(Fp8E4M3.Encode(xr[i] / s)) : 0;
            for (int n = 0; n < w.Rows; n++)
            {
                byte* row = w.Data + (long)n * k;
                double acc = 0;
                for (int i = 0; i < k; i++) acc += q[i] * Fp8E4M3.Decode(row[i]);
                double y = (double)s * scales[scales.Length == 1 ? 0 : n] * acc;
                if (w.Bias is { } bias) y += bias[n];
                dst[r * w.Rows + n] = (float)y;
            }
        }
        return dst;
    }

    private static Output RunRope(IBackend b, Random rng, int rows, int heads, int dim, double theta, bool scaled)
    {
        var rope = new RopeTable(dim, theta, scaled ? new RopeScaling(32, 1, 4, 8192) : null);
        var positions = new int[rows];
        for (int i = 0; i < rows; i++) positions[i] = i == 0 ? 0 : rng.Next(0, 8192);
        using var x = Upload(b, "x", rng, rows, heads * dim);
        b.Rope(x, heads, positions, rope);
        return new Output(Read(b, x), x.Rows);
    }

    private readonly record struct AttentionShape(int Heads, int KvHeads, int Dim, int Block);

    /// <summary>MHA, GQA 4:1, MQA 6:1 and GQA 2:1 with a head size and block size that are no power of two.</summary>
    private static readonly AttentionShape[] AttentionShapes =
    [
        new(4, 4, 64, 16), new(8, 2, 64, 16), new(6, 1, 128, 16), new(8, 4, 40, 7),
    ];

    /// <summary>A step's sequences: (history already in the cache, rows this step).</summary>
    private sealed record Scenario(string Name, (int History, int Rows)[] Seqs)
    {
        public int Rows => Seqs.Sum(s => s.Rows);
    }

    private static readonly Scenario[] Scenarios =
    [
        new("single", [(0, 1)]),
        new("decode", [(0, 1), (40, 1), (130, 1)]),
        new("prefill", [(0, 17)]),
        new("mixed", [(63, 1), (5, 17), (0, 46)]),
    ];

    /// <summary>
    /// Two layers; every sequence gets a history (earlier positions) stored in layer 1 with different data in layer 0,
    /// then the step stores its rows and attends in layer 1. Block ids are a shuffled, scattered subset of the cache,
    /// and tables run past what the step needs.
    /// </summary>
    private static Output RunAttention(IBackend b, Random rng, AttentionShape a, Scenario sc, KvDType kv)
    {
        int block = a.Block, width = a.KvHeads * a.Dim;
        int[] needed = sc.Seqs.Select(s => (s.History + s.Rows + block - 1) / block + 1).ToArray();
        int numBlocks = needed.Sum() + 5;
        var ids = Enumerable.Range(0, numBlocks).ToArray();
        rng.Shuffle(ids);
        var tables = new int[sc.Seqs.Length][];
        for (int s = 0, next = 0; s < sc.Seqs.Length; s++)
        {
            tables[s] = ids.AsSpan(next, needed[s]).ToArray();
            next += needed[s];
        }
        using var cache = b.AllocKvCache(new KvCacheSpec(2, a.KvHeads, a.Dim, block, numBlocks, kv));

        int historyRows = sc.Seqs.Sum(s => s.History);
        if (historyRows > 0)
        {
            var hist = new BatchLayout();
            foreach (var (s, i) in sc.Seqs.Select((s, i) => (s, i)))
                hist.AddSequence(0, s.History, tables[i]);
            foreach (int layer in new[] { 0, 1 })
            {
                using var hk = Upload(b, "hk", rng, historyRows, width);
                using var hv = Upload(b, "hv", rng, historyRows, width);
                b.KvStore(cache, layer, hk, hv, hist);
            }
        }
        var batch = new BatchLayout();
        foreach (var (s, i) in sc.Seqs.Select((s, i) => (s, i)))
            batch.AddSequence(s.History, s.Rows, tables[i]);
        int rows = batch.TotalRows;
        using var k = Upload(b, "k", rng, rows, width);
        using var v = Upload(b, "v", rng, rows, width);
        using var q = Upload(b, "q", rng, rows, a.Heads * a.Dim, 2f);
        using var dst = b.Alloc("dst", 64, a.Heads * a.Dim);
        b.KvStore(cache, 1, k, v, batch);
        b.Attention(q, cache, 1, batch, dst);
        return new Output(Read(b, dst), dst.Rows);
    }

    private static Output RunGather(IBackend b, Random rng, int srcRows, int[] rows, bool inPlace)
    {
        using var src = Upload(b, "src", rng, srcRows, 67);
        using var dst = b.Alloc("dst", 64, 67);
        var target = inPlace ? src : dst;
        b.GatherRows(src, rows, target);
        return new Output(Read(b, target), target.Rows);
    }

    private static readonly (string Mode, int Rows, int Vocab)[] SampleShapes =
    [
        ("greedy-ties", 5, 97), ("top-k", 5, 1031), ("top-p", 5, 1031), ("top-k+top-p", 17, 1031), ("full", 3, 1031),
        ("mixed", 64, 32000), ("flat-ties", 4, 2048),
    ];

    // The backend's draws against CounterSampler's on the same logits. A draw is exact but for exp's last bit (a
    // device's expf may differ from the host's by an ulp, moving each mass by about 2^-23 of itself): a different
    // token is excused only when the reference's target lies within 2^-18 of the kept mass of its token's interval
    // ends, where such a shift could move it across.
    private static (Output Actual, Output Expected) RunSample(IBackend b, Random rng, string mode, int rows, int vocab)
    {
        var host = new float[rows * vocab];
        for (int i = 0; i < host.Length; i++) host[i] = mode == "flat-ties" ? rng.Next(3) : (float)(Gaussian(rng) * 3);
        var param = new SampleRow[rows];
        for (int r = 0; r < rows; r++)
        {
            if (mode == "greedy-ties")
            {
                // The maximum twice, the later copy first in memory order of a strided scan.
                int a = rng.Next(vocab / 2), c = a + 1 + rng.Next(vocab / 2 - 1);
                host[r * vocab + a] = host[r * vocab + c] = 50f;
            }
            string m = mode == "mixed" ? (new[] { "greedy-ties", "top-k", "top-p", "top-k+top-p", "full" })[r % 5] : mode;
            float t = m == "greedy-ties" ? 0 : (float)(0.5 + rng.NextDouble());
            float p = m is "top-p" or "top-k+top-p" or "flat-ties" ? (float)(0.5 + 0.45 * rng.NextDouble()) : 1f;
            int k = m is "top-k" or "top-k+top-p" ? 1 + rng.Next(100) : m == "flat-ties" ? 1 + rng.Next(vocab) : 0;
            param[r] = new SampleRow(t, p, k, (ulong)rng.NextInt64(), (ulong)rng.Next(1 << 20));
        }
        using var logits = b.Alloc("logits", rows, vocab);
        b.CopyFromHost(host, rows, logits);
        var tokens = new int[rows];
        b.Sample(logits, param, tokens);

        var probs = new float[vocab];
        var actual = new float[rows];
        var expected = new float[rows];
        for (int r = 0; r < rows; r++)
        {
            var d = CounterSampler.Explain(host.AsSpan(r * vocab, vocab), param[r], probs);
            actual[r] = tokens[r];
            ulong slack = Math.Max(1UL, d.Kept >> 18);
            bool borderline = d.Kept > 0 && (d.Target - d.Before <= slack || d.After - 1 - d.Target <= slack);
            expected[r] = tokens[r] != d.Token && borderline ? tokens[r] : d.Token;
        }
        return (new Output(actual, rows), new Output(expected, rows));
    }

    private static double Gaussian(Random rng) => Math.Sqrt(-2 * Math.Log(1 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble());

    private static Output RunCopy(IBackend b, Random rng, int rows, int cols)
    {
        using var t = b.Alloc("t", 64, cols);
        b.CopyFromHost(Floats(rng, rows * cols), rows, t);
        return new Output(Read(b, t), t.Rows);
    }
}
