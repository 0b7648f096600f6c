using BenchmarkDotNet.Attributes;
using FastServe.Runtime.Backends;
using FastServe.Runtime.Backends.Cpu;

namespace FastServe.Benchmarks.Backends;

/// <summary>
/// The weight traffic of one decode token of a Llama-3.2-1B-shaped model: 16 layers × (q 2048², k and v 512×2048,
/// o 2048², gate and up 8192×2048, down 2048×8192) = 973 M weights, each layer its own memory, one activation row.
/// Compare FP8 with BF16 and with MachineProbe's copy bandwidth: GB/s = <see cref="WeightBytes"/> / mean time.
/// </summary>
[MemoryDiagnoser]
public class CpuDecodeStepBenchmarks
{
    private const int Layers = 16, Hidden = 2048, Kv = 512, Ffn = 8192;
    private static readonly (int N, int K)[] Projections =
        [(Hidden, Hidden), (Kv, Hidden), (Kv, Hidden), (Hidden, Hidden), (Ffn, Hidden), (Ffn, Hidden), (Hidden, Ffn)];

    private CpuBackend _cpu = null!;
    private readonly List<WeightRing> _rings = [];
    private readonly List<(BackendWeight W, BackendTensor X, BackendTensor Y)> _ops = [];

    [Params(BenchDType.BF16, BenchDType.Fp8)]
    public BenchDType DType { get; set; }

    [Params(1, 2)]
    public int Threads { get; set; }

    /// <summary>Bytes of weights (and scales) one token reads.</summary>
    public long WeightBytes { get; private set; }

    [GlobalSetup]
    public void Setup()
    {
        _cpu = new CpuBackend(Threads);
        var acts = new Dictionary<int, BackendTensor>();
        BackendTensor Act(int cols)
        {
            if (!acts.TryGetValue(cols, out var t))
            {
                t = _cpu.Alloc($"a{cols}", 1, cols);
                _cpu.CopyFromHost(Enumerable.Range(0, cols).Select(i => (float)Math.Sin(i)).ToArray(), 1, t);
                acts[cols] = t;
            }
            return t;
        }
        foreach (var (n, k) in Projections)
        {
            // One copy per layer, each its own memory.
            var layers = new WeightRing(DType, n, k, 0, seed: n + k, exactCopies: Layers);
            _rings.Add(layers);
            foreach (var mw in layers.Weights)
            {
                _ops.Add((_cpu.LoadMatrix(mw), Act(k), _cpu.Alloc($"y{_ops.Count}", 1, n)));
                WeightBytes += mw.BytesRead;
            }
        }
        Console.WriteLine($"// decode step reads {WeightBytes / 1e6:F0} MB of weights");
    }

    [Benchmark]
    public void DecodeStepMatMuls()
    {
        foreach (var (w, x, y) in _ops) _cpu.MatMul(x, w, y);
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        foreach (var (w, _, y) in _ops)
        {
            w.Dispose();
            y.Dispose();
        }
        _cpu.Dispose();
        foreach (var r in _rings) r.Dispose();
    }
}
