using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using BenchmarkDotNet.Attributes;
using FastServe.Runtime.Backends.Cpu;
using FastServe.Runtime.Numerics;

namespace FastServe.Benchmarks.Backends;

/// <summary>
/// Ways to turn E4M3 bytes into F32 inside a dot product, on an L1/L2-resident row (so decode cost, not memory,
/// is measured): the shipped bit trick (sign-extend, shift by 20, mask; value·2^-120 exactly), a 256-entry table
/// read with AVX2 gathers (.NET exposes no AVX-512 gather), and the scalar table. .NET 10 exposes no F16→F32 hardware convert (vcvtph2ps), so
/// the F16 route would need the same integer trick plus a second step and is not a separate option here.
/// </summary>
[MemoryDiagnoser]
public unsafe class Fp8DecodeBenchmarks
{
    private const int K = 16384;
    private byte* _w;
    private float* _x;
    private float* _table;

    [GlobalSetup]
    public void Setup()
    {
        _w = (byte*)NativeMemory.AlignedAlloc(K, 64);
        _x = (float*)NativeMemory.AlignedAlloc(K * 4, 64);
        _table = (float*)NativeMemory.AlignedAlloc(256 * 4, 64);
        var rng = new Random(5);
        WeightRing.Fill(_w, FastServe.Runtime.DType.F8E4M3, K, rng);
        for (int i = 0; i < K; i++) _x[i] = (float)rng.NextDouble() - 0.5f;
        for (int i = 0; i < 256; i++) _table[i] = (i & 0x7F) == 0x7F ? 0 : Fp8E4M3.Decode((byte)i);
    }

    [Benchmark(Baseline = true)]
    public float BitTrickAvx512()
    {
        Vector512<float> a0 = default, a1 = default;
        for (int k = 0; k < K; k += 32)
        {
            a0 = Avx512F.FusedMultiplyAdd(Vector512.Load(_x + k), Simd512.LoadFp8(_w + k), a0);
            a1 = Avx512F.FusedMultiplyAdd(Vector512.Load(_x + k + 16), Simd512.LoadFp8(_w + k + 16), a1);
        }
        return Vector512.Sum(a0 + a1) * ScalarDecode.Fp8Post;
    }

    [Benchmark]
    public float GatherTableAvx2()
    {
        Vector256<float> a0 = default, a1 = default;
        for (int k = 0; k < K; k += 16)
        {
            var i0 = Avx2.ConvertToVector256Int32(_w + k);
            var i1 = Avx2.ConvertToVector256Int32(_w + k + 8);
            a0 = Fma.MultiplyAdd(Vector256.Load(_x + k), Avx2.GatherVector256(_table, i0, 4), a0);
            a1 = Fma.MultiplyAdd(Vector256.Load(_x + k + 8), Avx2.GatherVector256(_table, i1, 4), a1);
        }
        return Vector256.Sum(a0 + a1);
    }

    [Benchmark]
    public float BitTrickAvx2()
    {
        Vector256<float> a0 = default, a1 = default;
        for (int k = 0; k < K; k += 16)
        {
            a0 = Fma.MultiplyAdd(Vector256.Load(_x + k), Simd256.LoadFp8(_w + k), a0);
            a1 = Fma.MultiplyAdd(Vector256.Load(_x + k + 8), Simd256.LoadFp8(_w + k + 8), a1);
        }
        return Vector256.Sum(a0 + a1) * ScalarDecode.Fp8Post;
    }

    [Benchmark]
    public float ScalarTable()
    {
        float s = 0;
        for (int k = 0; k < K; k++) s += _x[k] * _table[_w[k]];
        return s;
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        NativeMemory.AlignedFree(_w);
        NativeMemory.AlignedFree(_x);
        NativeMemory.AlignedFree(_table);
    }
}
