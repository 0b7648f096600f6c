using System.Runtime.CompilerServices;

namespace FastServe.Runtime.Numerics;

/// <summary>Scalar BF16 and F16 conversions, and bulk conversion of stored tensors to F32.</summary>
public static class HalfFloats
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float BF16ToF32(ushort bits) => BitConverter.UInt32BitsToSingle((uint)bits << 16);

    /// <summary>Round to nearest even; NaN stays NaN.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ushort F32ToBF16(float x)
    {
        uint u = BitConverter.SingleToUInt32Bits(x);
        if ((u & 0x7FFFFFFF) > 0x7F800000) return (ushort)((u >> 16) | 0x40);
        u += 0x7FFF + ((u >> 16) & 1);
        return (ushort)(u >> 16);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float F16ToF32(ushort bits) => (float)BitConverter.UInt16BitsToHalf(bits);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ushort F32ToF16(float x) => BitConverter.HalfToUInt16Bits((Half)x);

    /// <summary>Converts <paramref name="count"/> elements of a stored tensor to F32 (F32, F16, BF16, F8_E4M3 unscaled).</summary>
    public static unsafe void ToF32(DType dtype, byte* src, Span<float> dst)
    {
        switch (dtype)
        {
            case DType.F32:
                new ReadOnlySpan<float>(src, dst.Length).CopyTo(dst);
                break;
            case DType.BF16:
                for (int i = 0; i < dst.Length; i++) dst[i] = BF16ToF32(Unsafe.ReadUnaligned<ushort>(src + 2 * i));
                break;
            case DType.F16:
                for (int i = 0; i < dst.Length; i++) dst[i] = F16ToF32(Unsafe.ReadUnaligned<ushort>(src + 2 * i));
                break;
            case DType.F8E4M3:
                for (int i = 0; i < dst.Length; i++) dst[i] = Fp8E4M3.Decode(src[i]);
                break;
            default:
                throw new ArgumentException($"cannot convert {dtype.SafeTensorsName()} to F32");
        }
    }

    /// <summary>Converts F32 values to a stored dtype (F32, F16, BF16).</summary>
    public static unsafe void FromF32(ReadOnlySpan<float> src, DType dtype, byte* dst)
    {
        switch (dtype)
        {
            case DType.F32:
                src.CopyTo(new Span<float>(dst, src.Length));
                break;
            case DType.BF16:
                for (int i = 0; i < src.Length; i++) Unsafe.WriteUnaligned(dst + 2 * i, F32ToBF16(src[i]));
                break;
            case DType.F16:
                for (int i = 0; i < src.Length; i++) Unsafe.WriteUnaligned(dst + 2 * i, F32ToF16(src[i]));
                break;
            default:
                throw new ArgumentException($"cannot convert F32 to {dtype.SafeTensorsName()}");
        }
    }
}
