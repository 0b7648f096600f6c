using System.Collections.Concurrent;
using FastServe.Runtime;
using FastServe.Runtime.Backends;
using FastServe.Runtime.Backends.Cpu;
using FastServe.Runtime.Backends.Reference;
using NUnit.Framework;

namespace FastServe.Tests.Backends;

/// <summary>
/// Every op of <see cref="CpuBackend"/>, on every ISA path this machine supports and on 1 and 2 threads, against
/// <see cref="ReferenceBackend"/> on random data and awkward shapes. Tolerance: max abs error ≤ 1e-5 of the
/// largest reference magnitude. Reference results are computed once per case and shared by the parameterisations.
/// </summary>
[TestFixture]
public class CpuBackendOpTests
{
    private const double Tol = 1e-5;
    private static readonly ConcurrentDictionary<string, float[]> RefCache = new();

    private static readonly (int Rows, int K, int N)[] MatMulShapes =
    [
        (1, 1, 3), (2, 7, 5), (3, 33, 9), (4, 64, 8), (5, 4099, 7), (9, 1000, 13), (67, 33, 10),
        (8, 256, 36), (1, 4099, 37), (67, 1000, 6), (6, 2048, 40), (67, 4099, 9), (1, 2048, 129),
    ];

    private static readonly int[] Cols = [1, 7, 33, 1000, 4099];
    private static readonly int[] Rows = [1, 2, 3, 4, 5, 6, 7, 8, 9, 67];

    private static float[] Reference(string key, Func<IBackend, float[]> run) =>
        RefCache.GetOrAdd(key, _ =>
        {
            using var r = new ReferenceBackend();
            return run(r);
        });

    [TestCaseSource(typeof(BackendTestKit), nameof(BackendTestKit.IsaAndThreads))]
    public void MatMul_AllWeightKinds_MatchReference(CpuIsa isa, int threads)
    {
        using var cpu = new CpuBackend(threads, isa);
        double worst = 0;
        Assert.That(cpu.Isa, Is.EqualTo(isa.Name()));
        Assert.That(cpu.Threads, Is.EqualTo(threads));
        int checkedCases = 0;
        foreach (var (rows, k, n) in MatMulShapes)
        {
            foreach (WeightKind kind in Enum.GetValues<WeightKind>())
            {
                foreach (bool bias in new[] { false, true })
                {
                    string key = $"mm/{rows}/{k}/{n}/{kind}/{bias}";
                    int seed = BackendTestKit.Seed(key);
                    float[] expected = Reference(key, b => RunMatMul(b, seed, kind, rows, k, n, bias));
                    float[] actual = RunMatMul(cpu, seed, kind, rows, k, n, bias);
                    worst = Math.Max(worst, BackendTestKit.AssertClose(actual, expected, key, Tol));
                    checkedCases++;
                }
            }
        }
        Assert.That(checkedCases, Is.EqualTo(MatMulShapes.Length * 10));
        TestContext.Out.WriteLine($"worst relative error {worst:E2}");
    }

    private static float[] RunMatMul(IBackend b, int seed, WeightKind kind, int rows, int k, int n, bool bias)
    {
        using var kit = new BackendTestKit(seed);
        var mw = kit.RandomWeight("w", kind, n, k, bias);
        float[] x = kit.RandomFloats(rows * k);
        using var w = b.LoadMatrix(mw);
        using var xt = b.Alloc("x", rows + 2, k);
        using var d = b.Alloc("d", rows + 1, n);
        b.CopyFromHost(x, rows, xt);
        b.MatMul(xt, w, d);
        Assert.That(d.Rows, Is.EqualTo(rows));
        return BackendTestKit.Read(b, d);
    }

    [TestCaseSource(typeof(BackendTestKit), nameof(BackendTestKit.IsaAndThreads))]
    public void RmsNorm_AddRmsNorm_MatchReference(CpuIsa isa, int threads)
    {
        using var cpu = new CpuBackend(threads, isa);
        double worst = 0;
        foreach (int cols in Cols)
        {
            foreach (int rows in Rows)
            {
                foreach (int mode in new[] { 0, 1, 2 })
                {
                    // 0: RmsNorm into another tensor, 1: RmsNorm in place, 2: AddRmsNorm (returns residual then dst).
                    string key = $"norm/{rows}/{cols}/{mode}";
                    int seed = BackendTestKit.Seed(key);
                    float[] expected = Reference(key, b => RunNorm(b, seed, rows, cols, mode));
                    worst = Math.Max(worst, BackendTestKit.AssertClose(RunNorm(cpu, seed, rows, cols, mode), expected, key, Tol));
                }
            }
        }
        TestContext.Out.WriteLine($"worst relative error {worst:E2}");
    }

    private static float[] RunNorm(IBackend b, int seed, int rows, int cols, int mode)
    {
        using var kit = new BackendTestKit(seed);
        float[] x = kit.RandomFloats(rows * cols, 3f);
        float[] y = kit.RandomFloats(rows * cols);
        using var g = b.LoadVector("gamma", kit.RandomFloats(cols, 2f));
        using var xt = b.Alloc("x", rows, cols);
        using var yt = b.Alloc("y", rows, cols);
        using var d = b.Alloc("d", rows, cols);
        b.CopyFromHost(x, rows, xt);
        b.CopyFromHost(y, rows, yt);
        switch (mode)
        {
            case 0:
                b.RmsNorm(xt, g, 1e-5f, d);
                return BackendTestKit.Read(b, d);
            case 1:
                b.RmsNorm(xt, g, 1e-6f, xt);
                return BackendTestKit.Read(b, xt);
            default:
                b.AddRmsNorm(xt, yt, g, 1e-5f, d);
                return [.. BackendTestKit.Read(b, xt), .. BackendTestKit.Read(b, d)];
        }
    }

    [TestCaseSource(typeof(BackendTestKit), nameof(BackendTestKit.IsaAndThreads))]
    public void Add_SiluGate_MatchReference(CpuIsa isa, int threads)
    {
        using var cpu = new CpuBackend(threads, isa);
        double worst = 0;
        foreach (int cols in Cols)
        {
            foreach (int rows in Rows)
            {
                string key = $"addsilu/{rows}/{cols}";
                int seed = BackendTestKit.Seed(key);
                float[] expected = Reference(key, b => RunAddSilu(b, seed, rows, cols));
                worst = Math.Max(worst, BackendTestKit.AssertClose(RunAddSilu(cpu, seed, rows, cols), expected, key, Tol));
            }
        }
        TestContext.Out.WriteLine($"worst relative error {worst:E2}");
    }

    private static float[] RunAddSilu(IBackend b, int seed, int rows, int cols)
    {
        using var kit = new BackendTestKit(seed);
        using var a = b.Alloc("a", rows, cols);
        using var x = b.Alloc("x", rows, cols);
        using var g = b.Alloc("g", rows, cols);
        using var u = b.Alloc("u", rows, cols);
        using var d = b.Alloc("d", rows, cols);
        b.CopyFromHost(kit.RandomFloats(rows * cols), rows, a);
        b.CopyFromHost(kit.RandomFloats(rows * cols), rows, x);
        // Gate values span the range where silu bends and saturates (exp overflow for large -z included).
        float[] gate = kit.RandomFloats(rows * cols, 12f);
        if (gate.Length > 2) { gate[0] = -100f; gate[1] = 100f; }
        b.CopyFromHost(gate, rows, g);
        b.CopyFromHost(kit.RandomFloats(rows * cols, 2f), rows, u);
        b.Add(a, x);
        b.SiluGate(g, u, d);
        b.SiluGate(g, u, u); // output aliasing an input
        return [.. BackendTestKit.Read(b, a), .. BackendTestKit.Read(b, d), .. BackendTestKit.Read(b, u)];
    }

    [TestCaseSource(typeof(BackendTestKit), nameof(BackendTestKit.IsaAndThreads))]
    public void Rope_MatchesReference(CpuIsa isa, int threads)
    {
        using var cpu = new CpuBackend(threads, isa);
        double worst = 0;
        foreach (var (dim, heads) in new[] { (2, 1), (6, 3), (64, 8), (128, 4), (34, 5), (64, 32) })
        {
            foreach (int rows in new[] { 1, 3, 9, 67 })
            {
                foreach (bool scaled in new[] { false, true })
                {
                    string key = $"rope/{dim}/{heads}/{rows}/{scaled}";
                    int seed = BackendTestKit.Seed(key);
                    float[] expected = Reference(key, b => RunRope(b, seed, dim, heads, rows, scaled));
                    worst = Math.Max(worst, BackendTestKit.AssertClose(RunRope(cpu, seed, dim, heads, rows, scaled), expected, key, Tol));
                }
            }
        }
        TestContext.Out.WriteLine($"worst relative error {worst:E2}");
    }

    private static float[] RunRope(IBackend b, int seed, int dim, int heads, int rows, bool scaled)
    {
        using var kit = new BackendTestKit(seed);
        var rope = new RopeTable(dim, 500000, scaled ? new RopeScaling(32, 1, 4, 8192) : null);
        var pos = new int[rows];
        for (int i = 0; i < rows; i++) pos[i] = i == 0 ? 0 : kit.Rng.Next(0, 131072);
        using var x = b.Alloc("x", rows, heads * dim);
        b.CopyFromHost(kit.RandomFloats(rows * heads * dim), rows, x);
        b.Rope(x, heads, pos, rope);
        return BackendTestKit.Read(b, x);
    }

    [TestCaseSource(typeof(BackendTestKit), nameof(BackendTestKit.IsaAndThreads))]
    public void Embedding_Gather_Copy_MatchReference(CpuIsa isa, int threads)
    {
        using var cpu = new CpuBackend(threads, isa);
        double worst = 0;
        foreach (WeightKind kind in Enum.GetValues<WeightKind>())
        {
            foreach (int cols in Cols)
            {
                string key = $"embed/{kind}/{cols}";
                int seed = BackendTestKit.Seed(key);
                float[] expected = Reference(key, b => RunEmbedding(b, seed, kind, cols));
                worst = Math.Max(worst, BackendTestKit.AssertClose(RunEmbedding(cpu, seed, kind, cols), expected, key, Tol));
            }
        }
        TestContext.Out.WriteLine($"worst relative error {worst:E2}");
    }

    private static float[] RunEmbedding(IBackend b, int seed, WeightKind kind, int cols)
    {
        using var kit = new BackendTestKit(seed);
        const int vocab = 37;
        var mw = kit.RandomWeight("embed", kind, vocab, cols, bias: false);
        int[] tokens = [5, 0, 36, 5, 17, 2, 9];
        using var table = b.LoadMatrix(mw);
        using var e = b.Alloc("e", 9, cols);
        using var g = b.Alloc("g", 4, cols);
        b.Embedding(table, tokens, e);
        Assert.That(e.Rows, Is.EqualTo(tokens.Length));
        b.GatherRows(e, [6, 0, 3], g);
        float[] embedded = BackendTestKit.Read(b, e);
        float[] gathered = BackendTestKit.Read(b, g);
        b.GatherRows(e, [1, 4, 6], e); // in place, increasing rows
        Assert.That(e.Rows, Is.EqualTo(3));
        return [.. embedded, .. gathered, .. BackendTestKit.Read(b, e)];
    }

    /// <summary>Attention configurations: KV heads, query heads per KV head, head dim, block size, KV dtype.</summary>
    private static readonly (int KvHeads, int Group, int Dim, int Bs)[] AttentionShapes =
    [
        (2, 4, 64, 16), (1, 3, 6, 3), (2, 1, 18, 5), (3, 5, 32, 8), (1, 1, 2, 1), (2, 2, 64, 32), (1, 8, 128, 16),
    ];

    [TestCaseSource(typeof(BackendTestKit), nameof(BackendTestKit.IsaAndThreads))]
    public void KvStore_Attention_PagedBatch_MatchReference(CpuIsa isa, int threads)
    {
        using var cpu = new CpuBackend(threads, isa);
        double worst = 0;
        foreach (var shape in AttentionShapes)
        {
            foreach (KvDType kv in new[] { KvDType.F32, KvDType.BF16 })
            {
                string key = $"attn/{shape}/{kv}";
                int seed = BackendTestKit.Seed(key);
                float[] expected = Reference(key, b => RunAttention(b, seed, shape, kv));
                worst = Math.Max(worst, BackendTestKit.AssertClose(RunAttention(cpu, seed, shape, kv), expected, key, Tol));
            }
        }
        TestContext.Out.WriteLine($"worst relative error {worst:E2}");
    }

    /// <summary>
    /// Five sequences with shuffled, scattered block ids. Step 1 stores a history (prefix) for four of them in
    /// layer 1 (and different data in layer 0). Step 2 is a mixed batch: a fresh prefill from 0, prefill chunks
    /// starting mid-sequence and mid-block, and single-row decodes; it stores the new rows and attends.
    /// </summary>
    private static float[] RunAttention(IBackend b, int seed, (int KvHeads, int Group, int Dim, int Bs) s, KvDType kvType)
    {
        using var kit = new BackendTestKit(seed);
        int[] history = [0, 5, 17, 40, 70];
        int[] fresh = [6, 1, 7, 1, 3];
        int heads = s.KvHeads * s.Group, width = s.KvHeads * s.Dim;
        int seqs = history.Length;
        int blocksPerSeq = (history.Max() + fresh.Max()) / s.Bs + 2;
        int numBlocks = seqs * blocksPerSeq + 3;
        var ids = Enumerable.Range(0, numBlocks).OrderBy(_ => kit.Rng.Next()).ToArray();
        var tables = new int[seqs][];
        for (int i = 0; i < seqs; i++) tables[i] = ids.Skip(i * blocksPerSeq).Take(blocksPerSeq).ToArray();

        using var cache = b.AllocKvCache(new KvCacheSpec(2, s.KvHeads, s.Dim, s.Bs, numBlocks, kvType));
        var layout = new BatchLayout();
        int maxRows = history.Sum() + fresh.Sum();
        using var k = b.Alloc("k", maxRows, width);
        using var v = b.Alloc("v", maxRows, width);
        using var q = b.Alloc("q", maxRows, heads * s.Dim);
        using var o = b.Alloc("o", maxRows, heads * s.Dim);

        for (int layer = 0; layer < 2; layer++)
        {
            layout.Clear();
            for (int i = 0; i < seqs; i++) if (history[i] > 0) layout.AddSequence(0, history[i], tables[i]);
            int n = layout.TotalRows;
            b.CopyFromHost(kit.RandomFloats(n * width, 2f), n, k);
            b.CopyFromHost(kit.RandomFloats(n * width), n, v);
            b.KvStore(cache, layer, k, v, layout);
        }

        layout.Clear();
        for (int i = 0; i < seqs; i++) layout.AddSequence(history[i], fresh[i], tables[i]);
        int rows = layout.TotalRows;
        b.CopyFromHost(kit.RandomFloats(rows * width, 2f), rows, k);
        b.CopyFromHost(kit.RandomFloats(rows * width), rows, v);
        b.CopyFromHost(kit.RandomFloats(rows * heads * s.Dim, 2f), rows, q);
        b.KvStore(cache, 1, k, v, layout);
        b.Attention(q, cache, 1, layout, o);
        Assert.That(o.Rows, Is.EqualTo(rows));
        return BackendTestKit.Read(b, o);
    }

    [Test]
    public void SteadyState_DecodeOps_AllocateNothing()
    {
        using var kit = new BackendTestKit(7);
        using var cpu = new CpuBackend(2);
        var mw = kit.RandomWeight("w", WeightKind.Fp8PerRow, 256, 128, bias: true);
        using var w = cpu.LoadMatrix(mw);
        using var g = cpu.LoadVector("g", kit.RandomFloats(128));
        using var x = cpu.Alloc("x", 4, 128);
        using var h = cpu.Alloc("h", 4, 256);
        using var o = cpu.Alloc("o", 4, 256);
        using var cache = cpu.AllocKvCache(new KvCacheSpec(1, 2, 64, 16, 8, KvDType.BF16));
        var rope = new RopeTable(64, 10000);
        var layout = new BatchLayout(2, 4);
        int[] table = [3, 1, 6];
        int[] pos = [0];
        int[] firstRow = [0];
        var host = new float[4 * 256];
        void Step(int p)
        {
            layout.Clear();
            layout.AddSequence(p, 1, table);
            pos[0] = p;
            cpu.CopyFromHost(host.AsSpan(0, 128), 1, x);
            cpu.RmsNorm(x, g, 1e-5f, x);
            cpu.MatMul(x, w, h);
            cpu.Rope(h, 4, pos, rope);
            cpu.SiluGate(h, h, o);
            cpu.KvStore(cache, 0, x, x, layout);
            cpu.Attention(h, cache, 0, layout, o);
            cpu.Add(o, h);
            cpu.AddRmsNorm(x, x, g, 1e-5f, x);
            cpu.GatherRows(o, firstRow, o);
            cpu.CopyToHost(o, host);
            for (int i = 0; i < 128; i++) host[i] *= 1e-3f;
        }
        for (int p = 0; p < 8; p++) Step(p);
        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int p = 8; p < 40; p++) Step(p);
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        Assert.That(allocated, Is.EqualTo(0), "bytes allocated by 32 decode steps after warm-up");
    }

    [Test]
    public void Misuse_ThrowsArgumentOrStableCodes()
    {
        var e = Assert.Throws<FastServeException>(() => new CpuBackend(-1));
        Assert.That(e!.Code, Is.EqualTo("cpu.bad_thread_count"));
        if (!CpuIsaInfo.IsSupported(CpuIsa.Avx512))
        {
            var e2 = Assert.Throws<FastServeException>(() => new CpuBackend(1, CpuIsa.Avx512));
            Assert.That(e2!.Code, Is.EqualTo("cpu.isa_unsupported"));
        }
        using var cpu = new CpuBackend(1);
        using var r = new ReferenceBackend();
        using var x = cpu.Alloc("x", 2, 8);
        using var d = cpu.Alloc("d", 2, 5);
        using var kit = new BackendTestKit(1);
        using var w = cpu.LoadMatrix(kit.RandomWeight("w", WeightKind.F32, 4, 8, false));
        using var foreign = r.Alloc("foreign", 2, 8);
        x.Rows = 2;
        Assert.Throws<ArgumentException>(() => cpu.MatMul(x, w, d));         // 4 outputs into 5 columns
        Assert.Throws<ArgumentException>(() => cpu.MatMul(foreign, w, d));   // another backend's tensor
        Assert.Throws<ArgumentOutOfRangeException>(() => cpu.Embedding(w, [4], x));
        Assert.Throws<ArgumentException>(() => cpu.GatherRows(x, [1, 0], x)); // in place, not increasing
        using var cache = cpu.AllocKvCache(new KvCacheSpec(1, 1, 8, 4, 2, KvDType.F32));
        var layout = new BatchLayout();
        layout.AddSequence(0, 2, [2]); // block id 2 of 2 blocks
        Assert.Throws<ArgumentException>(() => cpu.KvStore(cache, 0, x, x, layout));
        layout.Clear();
        layout.AddSequence(3, 2, [0]); // position 4 needs a second block
        Assert.Throws<ArgumentException>(() => cpu.KvStore(cache, 0, x, x, layout));
    }
}
