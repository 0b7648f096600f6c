using FastServe.Runtime.Numerics;
using NUnit.Framework;

namespace FastServe.Tests.Vulkan;

/// <summary>
/// The numerics of native/vulkan/shaders/coopmat/matmul_coopmat.comp: a scalar model of what it computes, held to
/// MatMul's check-backend tolerance against an exact (double) product, for the rounding choices a device may make
/// (the shader itself runs on lavapipe in <see cref="VulkanCoopmatLavapipeTests"/>, with one driver's choices). Each
/// activation row is scaled by a power of two that brings its largest element below 2^14, split into hi = x·s cut to
/// F16's 11 significant bits (a mask: exact in F16) and lo = f16(x·s − hi), and both halves multiply the weights in F16
/// (FP8 E4M3 and F16 are exact there) with F32 accumulation over k blocks; the sum is divided by s again. F16
/// conversion of lo may round to nearest or toward zero (GLSL leaves it to the implementation): both are modelled. The
/// same model without the lo half shows why the split is there (and what a compiler that folds f32(f16(v)) into v made
/// of the shader's first split, hi = f16(v), lo = f16(v − f32(hi)): lo = 0), and without the row scale why that is.
/// </summary>
public sealed class CoopMatrixNumericsTests
{
    private const double Tolerance = 1e-4; // BackendCheck.Tolerances.MatMul

    private enum Mode { Split, HiOnly, Unscaled }

    [TestCase(false, 1.0f)]
    [TestCase(true, 1.0f)]
    [TestCase(false, 3e5f)]   // rows beyond F16's range: the row scale keeps them finite
    [TestCase(true, 1e-6f)]   // tiny rows: the scale keeps them out of F16's subnormals
    public void SplitF16ProductIsWithinMatMulTolerance(bool towardZero, float magnitude)
    {
        var (x, w, rows, k, n) = Problem(seed: 7, magnitude);
        double err = RelError(x, w, rows, k, n, Mode.Split, towardZero);
        TestContext.Out.WriteLine($"split f16, |x| ~ {magnitude}, {(towardZero ? "toward zero" : "nearest")}: max rel error {err:E2}");
        Assert.That(err, Is.LessThan(Tolerance / 10), "hi + lo carries 22 bits of each activation");
    }

    [Test]
    public void OneF16HalfOrNoRowScaleWouldNotBe()
    {
        var (x, w, rows, k, n) = Problem(seed: 7, 1.0f);
        double hiOnly = RelError(x, w, rows, k, n, Mode.HiOnly, towardZero: true);
        TestContext.Out.WriteLine($"hi only: max rel error {hiOnly:E2}");
        Assert.That(hiOnly, Is.GreaterThan(Tolerance), "a plain f16 activation loses 13 bits: MatMul's check would fail");

        var (big, wb, _, _, _) = Problem(seed: 7, 3e5f);
        double unscaled = RelError(big, wb, rows, k, n, Mode.Unscaled, towardZero: false);
        Assert.That(double.IsNaN(unscaled) || unscaled > Tolerance, Is.True, $"without the row scale: {unscaled:E2}");
    }

    private static (float[] X, float[] W, int Rows, int K, int N) Problem(int seed, float magnitude)
    {
        const int rows = 48, k = 1024, n = 40;
        var rng = new Random(seed);
        var x = new float[rows * k];
        for (int i = 0; i < x.Length; i++)
        {
            // Mostly unit-scale values with a few outliers per row, as LLM activations have.
            float v = (float)(rng.NextDouble() * 2 - 1) * magnitude;
            if (rng.Next(64) == 0) v *= 40;
            x[i] = v;
        }
        var w = new float[n * k];
        for (int i = 0; i < w.Length; i++)
        {
            int code;
            do code = rng.Next(256); while ((code & 0x7F) == 0x7F); // E4M3's NaN codes
            w[i] = Fp8E4M3.Decode((byte)code); // every E4M3 value is exact in F16
        }
        return (x, w, rows, k, n);
    }

    private static double RelError(float[] x, float[] w, int rows, int k, int n, Mode mode, bool towardZero)
    {
        double maxErr = 0, maxRef = 0;
        for (int r = 0; r < rows; r++)
        {
            var row = x.AsSpan(r * k, k);
            float s = mode == Mode.Unscaled ? 1f : RowScale(row);
            for (int c = 0; c < n; c++)
            {
                var wc = w.AsSpan(c * k, k);
                double exact = 0;
                for (int i = 0; i < k; i++) exact += (double)row[i] * wc[i];
                // F32 accumulation in k blocks of 32, as the shader's tensor-core products add into its accumulator.
                float acc = 0;
                for (int k0 = 0; k0 < k; k0 += 32)
                {
                    float block = 0;
                    for (int i = k0; i < Math.Min(k, k0 + 32); i++)
                    {
                        float v = row[i] * s;
                        float h = BitConverter.UInt32BitsToSingle(BitConverter.SingleToUInt32Bits(v) & 0xFFFFE000u);
                        float hi = ToF16(h, false); // exact for a scaled row; infinite beyond F16's range
                        float lo = mode == Mode.HiOnly ? 0 : ToF16(v - h, towardZero);
                        float wf = ToF16(wc[i], false); // exact
                        block += hi * wf + lo * wf;
                    }
                    acc += block;
                }
                double got = acc / s;
                maxErr = Math.Max(maxErr, Math.Abs(got - exact));
                maxRef = Math.Max(maxRef, Math.Abs(exact));
                if (double.IsNaN(got) || double.IsInfinity(got)) return double.NaN;
            }
        }
        return maxErr / maxRef;
    }

    // The shader's: s = 2^(14 - e) for a row maximum in [2^(e-1), 2^e); 1 for a zero or non-finite maximum.
    private static float RowScale(ReadOnlySpan<float> row)
    {
        float m = 0;
        foreach (float v in row) m = MathF.Max(m, MathF.Abs(v));
        if (m == 0 || !float.IsFinite(m)) return 1f;
        int e = MathF.ILogB(m) + 1; // frexp's exponent
        return MathF.ScaleB(1f, Math.Clamp(14 - e, -100, 100));
    }

    private static float ToF16(float v, bool towardZero)
    {
        var h = (Half)v;
        if (towardZero && Half.IsFinite(h) && MathF.Abs((float)h) > MathF.Abs(v))
            h = BitConverter.UInt16BitsToHalf((ushort)(BitConverter.HalfToUInt16Bits(h) - 1)); // one step toward zero
        return (float)h;
    }
}
