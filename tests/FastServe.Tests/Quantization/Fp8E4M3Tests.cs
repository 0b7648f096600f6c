using FastServe.Runtime.Numerics;
using FastServe.Runtime.Quantization;
using NUnit.Framework;

namespace FastServe.Tests.Quantization;

/// <summary>
/// E4M3 ("e4m3fn") against the OCP definition, computed here independently of the runtime: value =
/// (-1)^s × 2^(e-7) × (1 + m/8) for e in 1..15, (-1)^s × 2^-6 × m/8 for e = 0, NaN for e = 15, m = 7.
/// Every encoding check runs through the three encoders: <see cref="Fp8E4M3.Encode(float)"/>, the quantizer's
/// scalar bit-trick encoder and its vectorized path.
/// </summary>
public class Fp8E4M3Tests
{
    private static double Definition(int code)
    {
        int s = code >> 7, e = (code >> 3) & 15, m = code & 7;
        if (e == 15 && m == 7) return double.NaN;
        double mag = e == 0 ? m / 8.0 * Math.Pow(2, -6) : (1 + m / 8.0) * Math.Pow(2, e - 7);
        return s == 1 ? -mag : mag;
    }

    /// <summary>Encodes through every encoder and asserts they agree; returns the code.</summary>
    private static byte EncodeAll(float x)
    {
        byte a = Fp8E4M3.Encode(x);
        byte b = Fp8Quantizer.EncodeScalar(x);
        var src = Enumerable.Repeat(x, 40).ToArray();
        var dst = new byte[40];
        Fp8Quantizer.EncodeScaled(src, 1f, dst);
        Assert.That(b, Is.EqualTo(a), $"scalar bit-trick encoder differs at {x:R}");
        Assert.That(dst, Is.All.EqualTo(a), $"vector encoder differs at {x:R}");
        return a;
    }

    [Test]
    public void All256CodesDecodePerDefinition()
    {
        int nan = 0;
        for (int c = 0; c < 256; c++)
        {
            double want = Definition(c);
            float got = Fp8E4M3.Decode((byte)c);
            float gotDef = Fp8E4M3.DecodeFromDefinition((byte)c);
            if (double.IsNaN(want))
            {
                nan++;
                Assert.That(float.IsNaN(got) && float.IsNaN(gotDef), Is.True, $"code 0x{c:X2}");
                continue;
            }
            Assert.That((double)got, Is.EqualTo(want), $"code 0x{c:X2}");
            Assert.That((double)gotDef, Is.EqualTo(want), $"code 0x{c:X2}");
        }
        Assert.That(nan, Is.EqualTo(2), "only 0x7F and 0xFF are NaN");
        Assert.That(Fp8E4M3.Decode(0x7E), Is.EqualTo(448f));
        Assert.That(Fp8E4M3.Decode(0xFE), Is.EqualTo(-448f));
        Assert.That(Fp8E4M3.Decode(0x38), Is.EqualTo(1f));
        Assert.That(Fp8E4M3.Decode(0x08), Is.EqualTo(MathF.ScaleB(1, -6)));
        Assert.That(Fp8E4M3.Decode(0x01), Is.EqualTo(MathF.ScaleB(1, -9)));
        Assert.That(Fp8E4M3.Decode(0x07), Is.EqualTo(7 * MathF.ScaleB(1, -9)));
    }

    [Test]
    public void EveryFiniteCodeEncodesToItself()
    {
        for (int c = 0; c < 256; c++)
        {
            double v = Definition(c);
            if (double.IsNaN(v)) continue;
            byte got = EncodeAll((float)v);
            if (v == 0) Assert.That(got & 0x7F, Is.EqualTo(0));
            else Assert.That(got, Is.EqualTo((byte)c), $"code 0x{c:X2} value {v}");
        }
    }

    [Test]
    public void MidpointsRoundToEvenAndNeighboursToNearest()
    {
        int ties = 0;
        for (int c = 0; c < 0x7E; c++)
        {
            // Adjacent positive codes c, c + 1 are adjacent values (the encoding is monotonic).
            double lo = Definition(c), hi = Definition(c + 1);
            float mid = (float)((lo + hi) / 2);
            Assert.That((double)mid, Is.EqualTo((lo + hi) / 2), "midpoint exact in float");
            int even = c % 2 == 0 ? c : c + 1;
            Assert.That(EncodeAll(mid), Is.EqualTo((byte)even), $"tie between 0x{c:X2} and 0x{c + 1:X2} at {mid:R}");
            Assert.That(EncodeAll(-mid), Is.EqualTo((byte)(0x80 | even)), $"negative tie at {-mid:R}");
            Assert.That(EncodeAll(MathF.BitDecrement(mid)), Is.EqualTo((byte)c), $"just below {mid:R}");
            Assert.That(EncodeAll(MathF.BitIncrement(mid)), Is.EqualTo((byte)(c + 1)), $"just above {mid:R}");
            ties++;
        }
        Assert.That(ties, Is.EqualTo(126));
        // Named cases: 1.0625 lies halfway between 1.0 (0x38, even) and 1.125 (0x39) -> 1.0;
        // 1.1875 halfway between 1.125 (0x39) and 1.25 (0x3A, even) -> 1.25.
        Assert.That(EncodeAll(1.0625f), Is.EqualTo(0x38));
        Assert.That(EncodeAll(1.1875f), Is.EqualTo(0x3A));
        // 17 is halfway between 16 (0x58) and 18 (0x59): even is 16. 19 between 18 and 20 (0x5A): 20.
        Assert.That(EncodeAll(17f), Is.EqualTo(0x58));
        Assert.That(EncodeAll(19f), Is.EqualTo(0x5A));
    }

    [Test]
    public void SaturatesAtPlusMinus448()
    {
        Assert.That(EncodeAll(1000f), Is.EqualTo(0x7E));
        Assert.That(EncodeAll(-1e9f), Is.EqualTo(0xFE));
        Assert.That(EncodeAll(448f), Is.EqualTo(0x7E));
        Assert.That(EncodeAll(464f), Is.EqualTo(0x7E), "halfway to the would-be 480 still saturates");
        Assert.That(EncodeAll(479.9f), Is.EqualTo(0x7E));
        Assert.That(EncodeAll(float.MaxValue), Is.EqualTo(0x7E));
        Assert.That(EncodeAll(float.PositiveInfinity), Is.EqualTo(0x7E));
        Assert.That(EncodeAll(float.NegativeInfinity), Is.EqualTo(0xFE));
        Assert.That(EncodeAll(432f), Is.EqualTo(0x7E), "halfway between 416 (0x7D) and 448 (0x7E) rounds to even 0x7E");
    }

    [Test]
    public void NaNEncodesTo0x7F()
    {
        Assert.That(EncodeAll(float.NaN), Is.EqualTo(0x7F));
        Assert.That(EncodeAll(BitConverter.UInt32BitsToSingle(0xFFC00001)), Is.EqualTo(0x7F), "negative NaN too");
    }

    [Test]
    public void Subnormals()
    {
        float u = MathF.ScaleB(1, -9); // smallest subnormal
        Assert.That(EncodeAll(u), Is.EqualTo(0x01));
        Assert.That(EncodeAll(-u), Is.EqualTo(0x81));
        Assert.That(EncodeAll(3 * u), Is.EqualTo(0x03));
        Assert.That(EncodeAll(u / 2), Is.EqualTo(0x00), "half the smallest subnormal ties to even zero");
        Assert.That(EncodeAll(MathF.BitIncrement(u / 2)), Is.EqualTo(0x01));
        Assert.That(EncodeAll(2.5f * u), Is.EqualTo(0x02), "2.5 ulp ties to even 2");
        Assert.That(EncodeAll(3.5f * u), Is.EqualTo(0x04), "3.5 ulp ties to even 4");
        Assert.That(EncodeAll(7.5f * u), Is.EqualTo(0x08), "top subnormal tie rounds up into the first normal, 2^-6");
        Assert.That(EncodeAll(u / 4), Is.EqualTo(0x00));
        Assert.That(EncodeAll(1e-30f), Is.EqualTo(0x00));
        Assert.That(EncodeAll(float.Epsilon), Is.EqualTo(0x00), "float subnormal input");
        Assert.That(EncodeAll(-0f), Is.EqualTo(0x80));
        Assert.That(EncodeAll(0f), Is.EqualTo(0x00));
        Assert.That(Fp8E4M3.Decode(0x80), Is.EqualTo(0f));
    }

    [Test]
    public void EncodersAgreeOnABroadSampleOfFloats()
    {
        // Every 4099th float bit pattern (about a million values, all binades, NaNs and infinities included),
        // then random values divided by random scales, as the quantizer computes them.
        var xs = new List<float>();
        for (long b = 0; b <= uint.MaxValue; b += 4099) xs.Add(BitConverter.UInt32BitsToSingle((uint)b));
        var src = xs.ToArray();
        var dst = new byte[src.Length];
        Fp8Quantizer.EncodeScaled(src, 1f, dst);
        int mismatches = 0;
        for (int i = 0; i < src.Length; i++)
        {
            byte want = Fp8E4M3.Encode(src[i]);
            if (dst[i] != want || Fp8Quantizer.EncodeScalar(src[i]) != want) mismatches++;
        }
        Assert.That(mismatches, Is.EqualTo(0), $"of {src.Length} bit patterns");

        var rng = new Random(7);
        var vals = new float[100_003];
        for (int i = 0; i < vals.Length; i++) vals[i] = (float)((rng.NextDouble() - 0.5) * Math.Pow(2, rng.Next(-20, 12)));
        foreach (float scale in new[] { 1f, 0.0123f, 3.7e-4f, 17.5f })
        {
            var q = new byte[vals.Length];
            Fp8Quantizer.EncodeScaled(vals, scale, q);
            for (int i = 0; i < vals.Length; i++)
                if (q[i] != Fp8E4M3.Encode(vals[i] / scale))
                    Assert.Fail($"scale {scale}: {vals[i]:R} -> 0x{q[i]:X2}, want 0x{Fp8E4M3.Encode(vals[i] / scale):X2}");
        }
    }
}
