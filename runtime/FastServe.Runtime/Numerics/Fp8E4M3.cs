using System.Runtime.CompilerServices;

namespace FastServe.Runtime.Numerics;

/// <summary>
/// OCP FP8 E4M3 ("e4m3fn"): 1 sign bit, 4 exponent bits (bias 7), 3 mantissa bits. Largest finite value ±448,
/// no infinities, S.1111.111 is NaN, exponent 0 encodes subnormals 2^-6 × 0.mmm.
/// Encoding rounds to nearest, ties to even, and saturates to ±448 (the convention of
/// <c>torch.float8_e4m3fn</c> casts after clamping, and of every FP8 checkpoint quantizer). For bulk encoding
/// with a scale use <see cref="FastServe.Runtime.Quantization.Fp8Quantizer.EncodeScaled"/> (vectorized, bit-identical
/// to Encode(x / scale)).
/// </summary>
public static class Fp8E4M3
{
    public const float MaxValue = 448f;
    public const byte NaN = 0x7F;

    private static readonly float[] DecodeTable = BuildDecodeTable();

    /// <summary>Exact value of a code (NaN for 0x7F and 0xFF).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Decode(byte code) => DecodeTable[code];

    /// <summary>Decodes from the bit layout alone; the table above is built from this.</summary>
    public static float DecodeFromDefinition(byte code)
    {
        int sign = code >> 7;
        int exp = (code >> 3) & 0xF;
        int man = code & 0x7;
        if (exp == 0xF && man == 0x7) return float.NaN;
        float mag = exp == 0
            ? MathF.ScaleB(man / 8f, -6)
            : MathF.ScaleB(1f + man / 8f, exp - 7);
        return sign != 0 ? -mag : mag;
    }

    /// <summary>Nearest code to x (ties to even mantissa), saturating at ±448; NaN maps to 0x7F.</summary>
    public static byte Encode(float x)
    {
        if (float.IsNaN(x)) return NaN;
        uint bits = BitConverter.SingleToUInt32Bits(x);
        byte sign = (byte)((bits >> 24) & 0x80);
        float a = MathF.Abs(x);
        if (a >= MaxValue) return (byte)(sign | 0x7E);

        // Work in units of the smallest subnormal (2^-9): every E4M3 magnitude is an integer multiple of its
        // exponent's step. Find the step for a's binade, then round a/step to nearest even.
        int e = a < MathF.ScaleB(1f, -6) ? -6 : Math.Max(-6, (int)((BitConverter.SingleToUInt32Bits(a) >> 23) & 0xFF) - 127);
        float step = MathF.ScaleB(1f, e - 3);
        float q = MathF.Round(a / step, MidpointRounding.ToEven); // exact: a/step is a power-of-two division
        // q in [0, 16]; 16 means we rounded up into the next binade.
        int ui = (int)q;
        int code;
        if (e == -6 && ui < 8)
        {
            code = ui; // subnormal (or zero)
        }
        else
        {
            if (ui == 16) { e++; ui = 8; }
            int expField = e + 7;
            code = (expField << 3) | (ui - 8);
            if (code > 0x7E) code = 0x7E;
        }
        return (byte)(sign | code);
    }

    private static float[] BuildDecodeTable()
    {
        var t = new float[256];
        for (int i = 0; i < 256; i++) t[i] = DecodeFromDefinition((byte)i);
        return t;
    }
}
