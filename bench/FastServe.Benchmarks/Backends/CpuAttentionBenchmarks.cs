using BenchmarkDotNet.Attributes;
using FastServe.Runtime.Backends;
using FastServe.Runtime.Backends.Cpu;

namespace FastServe.Benchmarks.Backends;

/// <summary>
/// One decode row of CpuBackend.Attention (one layer) over a cache already holding the given number of positions:
/// Llama-1B heads (32 query heads, 8 KV heads, head_dim 64), block size 16, blocks scattered in a shuffled table.
/// KV bytes read per call: positions · 8 heads · 64 · 2 (K and V) · element size.
/// </summary>
[MemoryDiagnoser]
public class CpuAttentionBenchmarks
{
    private const int Heads = 32, KvHeads = 8, Dim = 64, BlockSize = 16;
    private CpuBackend _cpu = null!;
    private KvCache _cache = null!;
    private BatchLayout _layout = null!;
    private BackendTensor _q = null!, _o = null!;

    [Params(512, 2048)]
    public int Positions { get; set; }

    [Params(KvDType.F32, KvDType.BF16)]
    public KvDType Kv { get; set; }

    /// <summary>Kernel path (quick checks only; BenchmarkDotNet runs use the best).</summary>
    public CpuIsa? Isa { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        _cpu = new CpuBackend(0, Isa);
        int blocks = Positions / BlockSize + 1;
        var rng = new Random(3);
        int[] table = [.. Enumerable.Range(0, blocks).OrderBy(_ => rng.Next())];
        _cache = _cpu.AllocKvCache(new KvCacheSpec(1, KvHeads, Dim, BlockSize, blocks, Kv));
        using var k = _cpu.Alloc("k", Positions, KvHeads * Dim);
        using var v = _cpu.Alloc("v", Positions, KvHeads * Dim);
        float[] Random(int n) => [.. Enumerable.Range(0, n).Select(_ => (float)rng.NextDouble() - 0.5f)];
        _cpu.CopyFromHost(Random(Positions * KvHeads * Dim), Positions, k);
        _cpu.CopyFromHost(Random(Positions * KvHeads * Dim), Positions, v);
        _layout = new BatchLayout();
        _layout.AddSequence(0, Positions, table);
        _cpu.KvStore(_cache, 0, k, v, _layout);
        // The decode row: the last cached position attends to all of them.
        _layout.Clear();
        _layout.AddSequence(Positions - 1, 1, table);
        _q = _cpu.Alloc("q", 1, Heads * Dim);
        _o = _cpu.Alloc("o", 1, Heads * Dim);
        _cpu.CopyFromHost(Random(Heads * Dim), 1, _q);
    }

    [Benchmark]
    public void AttentionDecode() => _cpu.Attention(_q, _cache, 0, _layout, _o);

    [GlobalCleanup]
    public void Cleanup()
    {
        _q.Dispose();
        _o.Dispose();
        _cache.Dispose();
        _cpu.Dispose();
    }
}
