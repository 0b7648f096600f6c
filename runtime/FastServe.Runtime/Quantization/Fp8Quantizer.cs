using System.Buffers;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using FastServe.Runtime.Numerics;

namespace FastServe.Runtime.Quantization;

/// <summary>
/// Symmetric FP8 E4M3 weight quantization: scale = amax / 448, q = E4M3(w / scale) rounded to nearest even and
/// saturated at ±448, so dequantization is w ≈ scale · Decode(q). Codes are bit-identical to
/// <see cref="Fp8E4M3.Encode(float)"/> of <c>w / scale</c> (a vectorized encoder computes them).
/// </summary>
public static class Fp8Quantizer
{
    private static readonly string[] AttentionSuffixes =
        [".self_attn.q_proj.weight", ".self_attn.k_proj.weight", ".self_attn.v_proj.weight", ".self_attn.o_proj.weight"];

    private static readonly string[] MlpSuffixes = [".mlp.gate_proj.weight", ".mlp.up_proj.weight", ".mlp.down_proj.weight"];

    /// <summary>
    /// Quantizes a rows × cols row-major F32 matrix. PerChannel: <c>scales[r] = amax(row r) / 448</c> (1 for an
    /// all-zero row), rows scales written. PerTensor: <c>scales[0] = amax / 448</c> (1 when all zero).
    /// <paramref name="q"/> receives rows·cols codes, row-major.
    /// </summary>
    /// <exception cref="ArgumentException">A span is shorter than the sizes require, or a size is negative.</exception>
    /// <exception cref="FastServeException"><c>quantize.non_finite</c>: the matrix holds a NaN or infinity.</exception>
    public static void Quantize(ReadOnlySpan<float> w, int rows, int cols, Fp8Scheme scheme, Span<byte> q, Span<float> scales) =>
        Quantize(w, rows, cols, scheme, q, scales, "weight");

    /// <summary>
    /// Quantizes a stored 2-D F32, F16 or BF16 tensor ([rows, cols]) row by row, converting one row at a time (no
    /// full F32 copy; per-tensor scaling reads the tensor twice). <paramref name="q"/> must hold rows·cols bytes;
    /// <paramref name="scales"/> rows values (PerChannel) or 1 (PerTensor).
    /// </summary>
    /// <exception cref="FastServeException"><c>quantize.unsupported_tensor</c> (not 2-D, not a float dtype, or
    /// larger than 2^31 elements); <c>quantize.non_finite</c> (a NaN or infinity; message names the tensor and row).</exception>
    /// <exception cref="ArgumentException"><paramref name="q"/> or <paramref name="scales"/> too short.</exception>
    public static unsafe void Quantize(TensorView w, Fp8Scheme scheme, Span<byte> q, Span<float> scales)
    {
        var (rows, cols) = MatrixShape(w);
        long n = (long)rows * cols;
        if (q.Length < n) throw new ArgumentException($"{w.Name}: q holds {q.Length} bytes, needs {n}", nameof(q));
        int needScales = scheme == Fp8Scheme.PerChannel ? rows : 1;
        if (scales.Length < needScales) throw new ArgumentException($"{w.Name}: scales holds {scales.Length}, needs {needScales}", nameof(scales));
        if (n == 0)
        {
            scales[..needScales].Fill(1f);
            return;
        }

        int es = w.DType.SizeOf();
        if (w.DType == DType.F32)
        {
            // F32 rows can be read in place; no conversion buffer.
            Quantize(new ReadOnlySpan<float>(w.Data, (int)n), rows, cols, scheme, q, scales, w.Name);
            return;
        }

        float[] row = ArrayPool<float>.Shared.Rent(cols);
        try
        {
            var r32 = row.AsSpan(0, cols);
            if (scheme == Fp8Scheme.PerTensor)
            {
                uint amaxBits = 0;
                for (int r = 0; r < rows; r++)
                {
                    ToF32(w.DType, w.Data + (long)r * cols * es, r32);
                    amaxBits = Math.Max(amaxBits, AbsMaxBits(r32));
                    if (amaxBits >= 0x7F800000) throw NonFinite(w.Name, r);
                }
                float scale = ScaleFor(BitConverter.UInt32BitsToSingle(amaxBits));
                scales[0] = scale;
                for (int r = 0; r < rows; r++)
                {
                    ToF32(w.DType, w.Data + (long)r * cols * es, r32);
                    EncodeScaled(r32, scale, q.Slice(r * cols, cols));
                }
            }
            else
            {
                for (int r = 0; r < rows; r++)
                {
                    ToF32(w.DType, w.Data + (long)r * cols * es, r32);
                    uint bits = AbsMaxBits(r32);
                    if (bits >= 0x7F800000) throw NonFinite(w.Name, r);
                    float scale = ScaleFor(BitConverter.UInt32BitsToSingle(bits));
                    scales[r] = scale;
                    EncodeScaled(r32, scale, q.Slice(r * cols, cols));
                }
            }
        }
        finally
        {
            ArrayPool<float>.Shared.Return(row);
        }
    }

    /// <summary>
    /// True when <paramref name="tensorName"/> is a weight the selection quantizes:
    /// <c>*.self_attn.{q,k,v,o}_proj.weight</c> for <see cref="QuantizeLayers.Attention"/>,
    /// <c>*.mlp.{gate,up,down}_proj.weight</c> for <see cref="QuantizeLayers.Mlp"/>.
    /// </summary>
    public static bool IsTarget(string tensorName, QuantizeLayers layers) =>
        ((layers & QuantizeLayers.Attention) != 0 && EndsWithAny(tensorName, AttentionSuffixes))
        || ((layers & QuantizeLayers.Mlp) != 0 && EndsWithAny(tensorName, MlpSuffixes));

    /// <summary>True for any decoder linear weight (attention or MLP projection), quantized or not.</summary>
    public static bool IsLinearWeight(string tensorName) => IsTarget(tensorName, QuantizeLayers.All);

    /// <summary>Encodes <c>src[i] / scale</c> into E4M3 codes; bit-identical to <see cref="Fp8E4M3.Encode(float)"/>
    /// of the quotient. NaN becomes 0x7F; magnitudes ≥ 448 saturate.</summary>
    public static void EncodeScaled(ReadOnlySpan<float> src, float scale, Span<byte> dst)
    {
        if (dst.Length < src.Length) throw new ArgumentException("destination too short", nameof(dst));
        int i = 0;
        if (Vector256.IsHardwareAccelerated && src.Length >= 32)
        {
            ref float s = ref MemoryMarshal.GetReference(src);
            ref byte d = ref MemoryMarshal.GetReference(dst);
            var vs = Vector256.Create(scale);
            for (; i <= src.Length - 32; i += 32)
            {
                var c0 = EncodeVector(Vector256.LoadUnsafe(ref s, (nuint)i) / vs);
                var c1 = EncodeVector(Vector256.LoadUnsafe(ref s, (nuint)(i + 8)) / vs);
                var c2 = EncodeVector(Vector256.LoadUnsafe(ref s, (nuint)(i + 16)) / vs);
                var c3 = EncodeVector(Vector256.LoadUnsafe(ref s, (nuint)(i + 24)) / vs);
                var lo = Vector256.Narrow(c0, c1);
                var hi = Vector256.Narrow(c2, c3);
                Vector256.Narrow(lo, hi).StoreUnsafe(ref d, (nuint)i);
            }
        }
        for (; i < src.Length; i++) dst[i] = EncodeScalar(src[i] / scale);
    }

    internal static void Quantize(ReadOnlySpan<float> w, int rows, int cols, Fp8Scheme scheme, Span<byte> q, Span<float> scales, string name)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(rows);
        ArgumentOutOfRangeException.ThrowIfNegative(cols);
        long n = (long)rows * cols;
        if (w.Length < n) throw new ArgumentException($"{name}: w holds {w.Length} values, needs {n}", nameof(w));
        if (q.Length < n) throw new ArgumentException($"{name}: q holds {q.Length} bytes, needs {n}", nameof(q));
        int needScales = scheme == Fp8Scheme.PerChannel ? rows : 1;
        if (scales.Length < needScales) throw new ArgumentException($"{name}: scales holds {scales.Length}, needs {needScales}", nameof(scales));

        if (scheme == Fp8Scheme.PerTensor)
        {
            uint amaxBits = 0;
            for (int r = 0; r < rows; r++)
            {
                amaxBits = Math.Max(amaxBits, AbsMaxBits(w.Slice(r * cols, cols)));
                if (amaxBits >= 0x7F800000) throw NonFinite(name, r);
            }
            float scale = ScaleFor(BitConverter.UInt32BitsToSingle(amaxBits));
            scales[0] = scale;
            EncodeScaled(w[..(int)n], scale, q);
        }
        else
        {
            for (int r = 0; r < rows; r++)
            {
                var row = w.Slice(r * cols, cols);
                uint bits = AbsMaxBits(row);
                if (bits >= 0x7F800000) throw NonFinite(name, r);
                float scale = ScaleFor(BitConverter.UInt32BitsToSingle(bits));
                scales[r] = scale;
                EncodeScaled(row, scale, q.Slice(r * cols, cols));
            }
        }
    }

    internal static (int Rows, int Cols) MatrixShape(TensorView w)
    {
        if (w.DType is not (DType.F32 or DType.F16 or DType.BF16))
            throw new FastServeException("quantize.unsupported_tensor", $"tensor '{w.Name}' is {w.DType.SafeTensorsName()}; only F32, F16 and BF16 weights can be quantized", w.Name);
        if (w.Shape.Length != 2)
            throw new FastServeException("quantize.unsupported_tensor", $"tensor '{w.Name}' has shape [{string.Join(",", w.Shape)}]; only 2-D matrices can be quantized", w.Name);
        if (w.ElementCount > int.MaxValue)
            throw new FastServeException("quantize.unsupported_tensor", $"tensor '{w.Name}' has {w.ElementCount} elements, more than 2^31-1", w.Name);
        return ((int)w.Shape[0], (int)w.Shape[1]);
    }

    /// <summary>amax / 448, with 1 for an all-zero block and the smallest positive float when amax / 448 underflows.</summary>
    private static float ScaleFor(float amax)
    {
        if (amax == 0) return 1f;
        float s = amax / Fp8E4M3.MaxValue;
        return s > 0 ? s : float.Epsilon;
    }

    /// <summary>Max of |x| as IEEE bits; for non-negative floats bit order is value order, and NaN/∞ compare ≥ 0x7F800000.</summary>
    private static uint AbsMaxBits(ReadOnlySpan<float> x)
    {
        var bits = MemoryMarshal.Cast<float, uint>(x);
        uint m = 0;
        int i = 0;
        if (Vector256.IsHardwareAccelerated && bits.Length >= 8)
        {
            var mask = Vector256.Create(0x7FFFFFFFu);
            var acc = Vector256<uint>.Zero;
            ref uint b = ref MemoryMarshal.GetReference(bits);
            for (; i <= bits.Length - 8; i += 8) acc = Vector256.Max(acc, Vector256.LoadUnsafe(ref b, (nuint)i) & mask);
            for (int k = 0; k < 8; k++) m = Math.Max(m, acc.GetElement(k));
        }
        for (; i < bits.Length; i++) m = Math.Max(m, bits[i] & 0x7FFFFFFF);
        return m;
    }

    // Bit-level E4M3 encoding, equal to Fp8E4M3.Encode for every input: clamp |y| to 448; below 2^-6, adding 2^14
    // makes the FPU round |y| to a multiple of 2^-9 (the subnormal step) with ties to even; otherwise round the
    // mantissa to 3 bits with ties to even and rebias the exponent from 127 to 7 (960 = 120 << 3).
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static byte EncodeScalar(float y)
    {
        if (float.IsNaN(y)) return Fp8E4M3.NaN;
        uint sign = (BitConverter.SingleToUInt32Bits(y) >> 24) & 0x80;
        float a = MathF.Min(MathF.Abs(y), Fp8E4M3.MaxValue);
        uint code;
        if (a < 0.015625f)
        {
            code = BitConverter.SingleToUInt32Bits(a + 16384f) - 0x46800000u;
        }
        else
        {
            uint ab = BitConverter.SingleToUInt32Bits(a);
            code = ((ab + 0x7FFFFu + ((ab >> 20) & 1)) >> 20) - 960;
        }
        return (byte)(sign | code);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<uint> EncodeVector(Vector256<float> y)
    {
        var yb = y.AsUInt32();
        var sign = Vector256.ShiftRightLogical(yb, 24) & Vector256.Create(0x80u);
        var a = Vector256.Min(Vector256.Abs(y), Vector256.Create(Fp8E4M3.MaxValue));
        var ab = a.AsUInt32();
        var sub = (a + Vector256.Create(16384f)).AsUInt32() - Vector256.Create(0x46800000u);
        var nrm = Vector256.ShiftRightLogical(ab + Vector256.Create(0x7FFFFu) + (Vector256.ShiftRightLogical(ab, 20) & Vector256.Create(1u)), 20)
            - Vector256.Create(960u);
        var isSub = Vector256.LessThan(a, Vector256.Create(0.015625f)).AsUInt32();
        var code = Vector256.ConditionalSelect(isSub, sub, nrm) | sign;
        var isNaN = ~Vector256.Equals(y, y).AsUInt32();
        return Vector256.ConditionalSelect(isNaN, Vector256.Create((uint)Fp8E4M3.NaN), code);
    }

    /// <summary>Like <see cref="HalfFloats.ToF32"/>, with BF16 widened 16 lanes at a time (the quantizer's hot loop).</summary>
    private static unsafe void ToF32(DType dtype, byte* src, Span<float> dst)
    {
        if (dtype != DType.BF16 || !Vector256.IsHardwareAccelerated)
        {
            HalfFloats.ToF32(dtype, src, dst);
            return;
        }
        int i = 0;
        ref uint d = ref Unsafe.As<float, uint>(ref MemoryMarshal.GetReference(dst));
        ushort* s = (ushort*)src;
        for (; i <= dst.Length - 16; i += 16)
        {
            var (lo, hi) = Vector256.Widen(Vector256.Load(s + i));
            Vector256.ShiftLeft(lo, 16).StoreUnsafe(ref d, (nuint)i);
            Vector256.ShiftLeft(hi, 16).StoreUnsafe(ref d, (nuint)(i + 8));
        }
        for (; i < dst.Length; i++) dst[i] = HalfFloats.BF16ToF32(s[i]);
    }

    private static bool EndsWithAny(string name, string[] suffixes)
    {
        foreach (string s in suffixes)
            if (name.Length > s.Length && name.EndsWith(s, StringComparison.Ordinal)) return true;
        return false;
    }

    private static FastServeException NonFinite(string name, int row) =>
        new("quantize.non_finite", $"tensor '{name}' row {row} holds a NaN or infinity; it cannot be scaled to FP8", name);
}
