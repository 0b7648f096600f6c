using System.Runtime.InteropServices;
using FastServe.Runtime;
using FastServe.Runtime.Backends;
using FastServe.Runtime.Backends.Cpu;
using FastServe.Runtime.Numerics;
using NUnit.Framework;

namespace FastServe.Tests.Backends;

/// <summary>Weight kinds the op tests cover.</summary>
public enum WeightKind { F32, F16, BF16, Fp8PerRow, Fp8PerTensor }

/// <summary>Native buffers, random data and comparisons shared by the backend tests.</summary>
internal sealed unsafe class BackendTestKit : IDisposable
{
    private readonly List<nint> _buffers = [];

    public BackendTestKit(int seed) => Rng = new Random(seed);

    public Random Rng { get; }

    public static IEnumerable<TestCaseData> IsaAndThreads()
    {
        foreach (var isa in CpuIsaInfo.Supported)
        {
            foreach (int threads in new[] { 1, 2 })
                yield return new TestCaseData(isa, threads).SetArgDisplayNames(isa.Name(), $"{threads}t");
        }
    }

    /// <summary>A stable (FNV-1a) seed from a case key, so failures reproduce across runs.</summary>
    public static int Seed(string key)
    {
        uint h = 2166136261;
        foreach (char c in key) h = (h ^ c) * 16777619;
        return (int)(h & 0x7FFFFFFF);
    }

    public float[] RandomFloats(int n, float scale = 1f)
    {
        var a = new float[n];
        for (int i = 0; i < n; i++) a[i] = (float)(Rng.NextDouble() * 2 - 1) * scale;
        return a;
    }

    public byte* Native(long bytes)
    {
        byte* p = (byte*)NativeMemory.AllocZeroed((nuint)Math.Max(1, bytes));
        _buffers.Add((nint)p);
        return p;
    }

    /// <summary>A random [rows, cols] weight of the given kind in native memory. FP8 codes are uniformly random
    /// over every non-NaN code (subnormals included) with random positive scales.</summary>
    public MatrixWeight RandomWeight(string name, WeightKind kind, int rows, int cols, bool bias)
    {
        long n = (long)rows * cols;
        float[]? b = bias ? RandomFloats(rows) : null;
        switch (kind)
        {
            case WeightKind.F32:
            {
                byte* p = Native(n * 4);
                for (long i = 0; i < n; i++) ((float*)p)[i] = (float)(Rng.NextDouble() * 2 - 1);
                return new MatrixWeight(name, DType.F32, rows, cols, p, null, b);
            }
            case WeightKind.F16:
            case WeightKind.BF16:
            {
                byte* p = Native(n * 2);
                for (long i = 0; i < n; i++)
                {
                    float v = (float)(Rng.NextDouble() * 2 - 1);
                    ((ushort*)p)[i] = kind == WeightKind.F16 ? HalfFloats.F32ToF16(v) : HalfFloats.F32ToBF16(v);
                }
                return new MatrixWeight(name, kind == WeightKind.F16 ? DType.F16 : DType.BF16, rows, cols, p, null, b);
            }
            default:
            {
                byte* p = Native(n);
                for (long i = 0; i < n; i++)
                {
                    byte c;
                    do c = (byte)Rng.Next(256); while ((c & 0x7F) == 0x7F);
                    p[i] = c;
                }
                int scales = kind == WeightKind.Fp8PerRow ? rows : 1;
                var s = new float[scales];
                for (int i = 0; i < scales; i++) s[i] = (float)(0.0005 + Rng.NextDouble() * 0.01);
                return new MatrixWeight(name, DType.F8E4M3, rows, cols, p, s, b);
            }
        }
    }

    /// <summary>max |a - b| / max |b| over the first n values.</summary>
    public static double RelativeError(ReadOnlySpan<float> actual, ReadOnlySpan<float> expected)
    {
        Assert.That(actual.Length, Is.EqualTo(expected.Length), "length");
        double maxAbs = 0, maxErr = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            Assert.That(float.IsFinite(actual[i]), $"non-finite value {actual[i]} at {i}");
            maxAbs = Math.Max(maxAbs, Math.Abs(expected[i]));
            maxErr = Math.Max(maxErr, Math.Abs(actual[i] - (double)expected[i]));
        }
        return maxAbs == 0 ? maxErr : maxErr / maxAbs;
    }

    /// <summary>Asserts the relative error is within tolerance; returns it.</summary>
    public static double AssertClose(ReadOnlySpan<float> actual, ReadOnlySpan<float> expected, string what, double tolerance = 1e-5)
    {
        double err = RelativeError(actual, expected);
        Assert.That(err, Is.LessThanOrEqualTo(tolerance), $"{what}: relative error {err:E2}");
        return err;
    }

    public static float[] Read(IBackend backend, BackendTensor t)
    {
        var a = new float[t.Rows * t.Cols];
        backend.CopyToHost(t, a);
        return a;
    }

    public void Dispose()
    {
        foreach (nint p in _buffers) NativeMemory.Free((void*)p);
        _buffers.Clear();
    }
}
