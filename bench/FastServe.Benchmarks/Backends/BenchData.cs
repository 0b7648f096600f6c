using System.Runtime.InteropServices;
using FastServe.Runtime;
using FastServe.Runtime.Backends;
using FastServe.Runtime.Numerics;

namespace FastServe.Benchmarks.Backends;

/// <summary>Weight element types the benchmarks sweep.</summary>
public enum BenchDType { F32, BF16, Fp8 }

/// <summary>
/// Random weights in native memory. A "ring" holds enough independent copies of one matrix (at least
/// <c>minBytes</c> in total) that consecutive calls never find the weights in cache, as in a real decode where
/// every layer's weights stream from DRAM once per token.
/// </summary>
internal sealed unsafe class WeightRing : IDisposable
{
    private readonly List<nint> _blocks = [];

    public WeightRing(BenchDType dtype, int rows, int cols, long minBytes, int seed = 1, int exactCopies = 0)
    {
        var rng = new Random(seed);
        DType dt = dtype switch { BenchDType.F32 => DType.F32, BenchDType.BF16 => DType.BF16, _ => DType.F8E4M3 };
        long bytes = (long)rows * cols * dt.SizeOf();
        int copies = exactCopies > 0 ? exactCopies : (int)Math.Max(1, (minBytes + bytes - 1) / bytes);
        // One random template, copied: filling hundreds of MB with fresh random numbers would dominate setup.
        byte* template = (byte*)NativeMemory.AlignedAlloc((nuint)bytes, 64);
        try
        {
            Fill(template, dt, (long)rows * cols, rng);
            Weights = new MatrixWeight[copies];
            for (int c = 0; c < copies; c++)
            {
                byte* p = (byte*)NativeMemory.AlignedAlloc((nuint)bytes, 64);
                _blocks.Add((nint)p);
                Buffer.MemoryCopy(template, p, bytes, bytes);
                float[]? scales = null;
                if (dt == DType.F8E4M3)
                {
                    scales = new float[rows];
                    for (int i = 0; i < rows; i++) scales[i] = 0.001f + (float)rng.NextDouble() * 0.01f;
                }
                Weights[c] = new MatrixWeight($"w{c}", dt, rows, cols, p, scales);
            }
        }
        finally
        {
            NativeMemory.AlignedFree(template);
        }
        BytesPerMatrix = Weights[0].BytesRead;
    }

    public MatrixWeight[] Weights { get; }
    public long BytesPerMatrix { get; }

    public static void Fill(byte* p, DType dt, long n, Random rng)
    {
        for (long i = 0; i < n; i++)
        {
            // Roughly Gaussian values, as trained weights are; FP8 codes from quantizing them (amax/448 scaling).
            float v = (float)((rng.NextDouble() + rng.NextDouble() + rng.NextDouble() - 1.5) * 0.05);
            switch (dt)
            {
                case DType.F32: ((float*)p)[i] = v; break;
                case DType.BF16: ((ushort*)p)[i] = HalfFloats.F32ToBF16(v); break;
                case DType.F16: ((ushort*)p)[i] = HalfFloats.F32ToF16(v); break;
                default: p[i] = Fp8E4M3.Encode(v / (0.075f / 448f)); break;
            }
        }
    }

    public void Dispose()
    {
        foreach (nint b in _blocks) NativeMemory.AlignedFree((void*)b);
        _blocks.Clear();
    }
}
