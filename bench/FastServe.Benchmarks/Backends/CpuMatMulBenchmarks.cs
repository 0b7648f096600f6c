using BenchmarkDotNet.Attributes;
using FastServe.Runtime.Backends;
using FastServe.Runtime.Backends.Cpu;

namespace FastServe.Benchmarks.Backends;

/// <summary>
/// CpuBackend.MatMul at 1 row (decode), 8 rows (batched decode) and 64 rows (prefill chunk) for the two
/// Llama-1B projection shapes. Each call uses the next matrix of a ring of copies totalling ≥ 512 MB, so weights
/// come from DRAM as they do in a real decode step (bytes read per call: N·K·sizeof + scales).
/// </summary>
[MemoryDiagnoser]
public class CpuMatMulBenchmarks
{
    private CpuBackend _cpu = null!;
    private WeightRing _ring = null!;
    private BackendWeight[] _weights = null!;
    private BackendTensor _x = null!, _y = null!;
    private int _next;

    [Params(BenchDType.F32, BenchDType.BF16, BenchDType.Fp8)]
    public BenchDType DType { get; set; }

    [Params(1, 8, 64)]
    public int Rows { get; set; }

    /// <summary>Output features × input features.</summary>
    [Params("2048x2048", "8192x2048")]
    public string Shape { get; set; } = "2048x2048";

    /// <summary>Kernel path (quick checks only; BenchmarkDotNet runs use the best).</summary>
    public CpuIsa? Isa { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        int n = int.Parse(Shape.Split('x')[0]), k = int.Parse(Shape.Split('x')[1]);
        _cpu = new CpuBackend(0, Isa);
        _ring = new WeightRing(DType, n, k, 512L << 20);
        _weights = [.. _ring.Weights.Select(_cpu.LoadMatrix)];
        _x = _cpu.Alloc("x", Rows, k);
        _y = _cpu.Alloc("y", Rows, n);
        var rng = new Random(2);
        _cpu.CopyFromHost(Enumerable.Range(0, Rows * k).Select(_ => (float)rng.NextDouble() - 0.5f).ToArray(), Rows, _x);
    }

    [Benchmark]
    public void MatMul()
    {
        _cpu.MatMul(_x, _weights[_next], _y);
        if (++_next == _weights.Length) _next = 0;
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        foreach (var w in _weights) w.Dispose();
        _x.Dispose();
        _y.Dispose();
        _cpu.Dispose();
        _ring.Dispose();
    }
}
