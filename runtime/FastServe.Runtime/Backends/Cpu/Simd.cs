using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace FastServe.Runtime.Backends.Cpu;

/// <summary>
/// The handful of vector operations the CPU kernels are written against. Kernels are generic over an
/// implementation (a struct, so the JIT and NativeAOT compile one specialised copy per ISA with every call
/// inlined); <typeparamref name="TVec"/> is the raw vector type of that ISA (F32 lanes).
/// Narrow loads decode stored formats with integer tricks that are exact for every finite code:
/// FP8 E4M3 code c -> float bits ((sbyte)c &lt;&lt; 20) &amp; 0x87F00000 = value · 2^-120 (subnormal codes land on
/// F32 subnormals); F16 h -> ((short)h &lt;&lt; 13) &amp; 0x8FFFE000 = value · 2^-112; BF16 -> bits &lt;&lt; 16.
/// The power-of-two factor is folded into the caller's epilogue (see <see cref="IWeightKind.Post"/>).
/// </summary>
internal unsafe interface ISimd<TVec> where TVec : struct
{
    /// <summary>F32 lanes per vector.</summary>
    static abstract int Width { get; }
    static abstract TVec Zero { get; }
    static abstract TVec Splat(float v);
    static abstract TVec Load(float* p);
    static abstract void Store(float* p, TVec v);
    static abstract TVec Add(TVec a, TVec b);
    static abstract TVec Sub(TVec a, TVec b);
    static abstract TVec Mul(TVec a, TVec b);
    static abstract TVec Div(TVec a, TVec b);
    /// <summary>a · b + c (fused where the ISA has FMA).</summary>
    static abstract TVec Fma(TVec a, TVec b, TVec c);
    static abstract TVec Max(TVec a, TVec b);
    static abstract TVec Exp(TVec a);
    static abstract float Sum(TVec v);
    static abstract float HMax(TVec v);
    /// <summary>Width FP8 E4M3 codes as value · 2^-120.</summary>
    static abstract TVec LoadFp8(byte* p);
    /// <summary>Width F16 values as value · 2^-112 (finite inputs).</summary>
    static abstract TVec LoadF16(ushort* p);
    /// <summary>Width BF16 values, exact.</summary>
    static abstract TVec LoadBf16(ushort* p);
}

/// <summary>Scalar versions of the narrow decodes, bit-identical to the vector ones (used for tails).</summary>
internal static class ScalarDecode
{
    /// <summary>2^120: undoes <see cref="Fp8"/>'s scaling.</summary>
    public static float Fp8Post
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => BitConverter.Int32BitsToSingle((127 + 120) << 23);
    }

    /// <summary>2^112: undoes <see cref="F16"/>'s scaling.</summary>
    public static float F16Post
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => BitConverter.Int32BitsToSingle((127 + 112) << 23);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Fp8(byte c) => BitConverter.Int32BitsToSingle(((sbyte)c << 20) & unchecked((int)0x87F00000));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float F16(ushort h) => BitConverter.Int32BitsToSingle(((short)h << 13) & unchecked((int)0x8FFFE000));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Bf16(ushort h) => BitConverter.Int32BitsToSingle(h << 16);
}

/// <summary>AVX-512 (F + BW): 16 lanes.</summary>
internal readonly unsafe struct Simd512 : ISimd<Vector512<float>>
{
    public static int Width => 16;
    public static Vector512<float> Zero => Vector512<float>.Zero;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Splat(float v) => Vector512.Create(v);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Load(float* p) => Vector512.Load(p);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Store(float* p, Vector512<float> v) => v.Store(p);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Add(Vector512<float> a, Vector512<float> b) => a + b;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Sub(Vector512<float> a, Vector512<float> b) => a - b;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Mul(Vector512<float> a, Vector512<float> b) => a * b;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Div(Vector512<float> a, Vector512<float> b) => a / b;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Fma(Vector512<float> a, Vector512<float> b, Vector512<float> c) => Avx512F.FusedMultiplyAdd(a, b, c);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Max(Vector512<float> a, Vector512<float> b) => Avx512F.Max(a, b);

    /// <summary>e^a, Cephes expf scheme (round to n·ln2, degree-5 polynomial, 2^n by exponent add); about 2 ulp.
    /// Inputs are clamped to [-87, 88], keeping 2^n normal: exp(-87) ≈ 1.6e-38 stands in for anything smaller.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Exp(Vector512<float> a)
    {
        Vector512<float> x = Avx512F.Min(Avx512F.Max(a, Vector512.Create(-87f)), Vector512.Create(88f));
        Vector512<float> n = Vector512.Round(x * Vector512.Create(1.44269504088896341f));
        Vector512<float> r = Avx512F.FusedMultiplyAdd(n, Vector512.Create(-0.693359375f), x);
        r = Avx512F.FusedMultiplyAdd(n, Vector512.Create(2.12194440e-4f), r);
        Vector512<float> p = Vector512.Create(1.9875691500E-4f);
        p = Avx512F.FusedMultiplyAdd(p, r, Vector512.Create(1.3981999507E-3f));
        p = Avx512F.FusedMultiplyAdd(p, r, Vector512.Create(8.3334519073E-3f));
        p = Avx512F.FusedMultiplyAdd(p, r, Vector512.Create(4.1665795894E-2f));
        p = Avx512F.FusedMultiplyAdd(p, r, Vector512.Create(1.6666665459E-1f));
        p = Avx512F.FusedMultiplyAdd(p, r, Vector512.Create(5.0000001201E-1f));
        Vector512<float> y = Avx512F.FusedMultiplyAdd(p, r * r, r + Vector512.Create(1f));
        return (y.AsInt32() + Vector512.ShiftLeft(Vector512.ConvertToInt32(n), 23)).AsSingle();
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Sum(Vector512<float> v) => Simd256.Sum(v.GetLower() + v.GetUpper());

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float HMax(Vector512<float> v) => Simd256.HMax(Avx.Max(v.GetLower(), v.GetUpper()));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> LoadFp8(byte* p) =>
        (Avx512F.ShiftLeftLogical(Avx512F.ConvertToVector512Int32(Vector128.Load((sbyte*)p)), 20)
         & Vector512.Create(unchecked((int)0x87F00000))).AsSingle();

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> LoadF16(ushort* p) =>
        (Avx512F.ShiftLeftLogical(Avx512F.ConvertToVector512Int32(Vector256.Load((short*)p)), 13)
         & Vector512.Create(unchecked((int)0x8FFFE000))).AsSingle();

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> LoadBf16(ushort* p) =>
        Avx512F.ShiftLeftLogical(Avx512F.ConvertToVector512Int32(Vector256.Load(p)), 16).AsSingle();
}

/// <summary>AVX2 + FMA: 8 lanes.</summary>
internal readonly unsafe struct Simd256 : ISimd<Vector256<float>>
{
    public static int Width => 8;
    public static Vector256<float> Zero => Vector256<float>.Zero;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Splat(float v) => Vector256.Create(v);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Load(float* p) => Vector256.Load(p);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Store(float* p, Vector256<float> v) => v.Store(p);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Add(Vector256<float> a, Vector256<float> b) => a + b;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Sub(Vector256<float> a, Vector256<float> b) => a - b;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Mul(Vector256<float> a, Vector256<float> b) => a * b;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Div(Vector256<float> a, Vector256<float> b) => a / b;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Fma(Vector256<float> a, Vector256<float> b, Vector256<float> c) => System.Runtime.Intrinsics.X86.Fma.MultiplyAdd(a, b, c);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Max(Vector256<float> a, Vector256<float> b) => Avx.Max(a, b);

    /// <summary>e^a, Cephes expf scheme (round to n·ln2, degree-5 polynomial, 2^n by exponent add); about 2 ulp.
    /// Inputs are clamped to [-87, 88], keeping 2^n normal: exp(-87) ≈ 1.6e-38 stands in for anything smaller.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Exp(Vector256<float> a)
    {
        Vector256<float> x = Avx.Min(Avx.Max(a, Vector256.Create(-87f)), Vector256.Create(88f));
        Vector256<float> n = Vector256.Round(x * Vector256.Create(1.44269504088896341f));
        Vector256<float> r = System.Runtime.Intrinsics.X86.Fma.MultiplyAdd(n, Vector256.Create(-0.693359375f), x);
        r = System.Runtime.Intrinsics.X86.Fma.MultiplyAdd(n, Vector256.Create(2.12194440e-4f), r);
        Vector256<float> p = Vector256.Create(1.9875691500E-4f);
        p = System.Runtime.Intrinsics.X86.Fma.MultiplyAdd(p, r, Vector256.Create(1.3981999507E-3f));
        p = System.Runtime.Intrinsics.X86.Fma.MultiplyAdd(p, r, Vector256.Create(8.3334519073E-3f));
        p = System.Runtime.Intrinsics.X86.Fma.MultiplyAdd(p, r, Vector256.Create(4.1665795894E-2f));
        p = System.Runtime.Intrinsics.X86.Fma.MultiplyAdd(p, r, Vector256.Create(1.6666665459E-1f));
        p = System.Runtime.Intrinsics.X86.Fma.MultiplyAdd(p, r, Vector256.Create(5.0000001201E-1f));
        Vector256<float> y = System.Runtime.Intrinsics.X86.Fma.MultiplyAdd(p, r * r, r + Vector256.Create(1f));
        return (y.AsInt32() + Vector256.ShiftLeft(Vector256.ConvertToInt32(n), 23)).AsSingle();
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Sum(Vector256<float> v)
    {
        Vector128<float> s = v.GetLower() + v.GetUpper();
        s += Sse.MoveHighToLow(s, s);
        s = Sse.AddScalar(s, Sse.Shuffle(s, s, 0b01));
        return s.ToScalar();
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float HMax(Vector256<float> v)
    {
        Vector128<float> s = Sse.Max(v.GetLower(), v.GetUpper());
        s = Sse.Max(s, Sse.MoveHighToLow(s, s));
        s = Sse.MaxScalar(s, Sse.Shuffle(s, s, 0b01));
        return s.ToScalar();
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> LoadFp8(byte* p) =>
        (Avx2.ShiftLeftLogical(Avx2.ConvertToVector256Int32((sbyte*)p), 20)
         & Vector256.Create(unchecked((int)0x87F00000))).AsSingle();

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> LoadF16(ushort* p) =>
        (Avx2.ShiftLeftLogical(Avx2.ConvertToVector256Int32((short*)p), 13)
         & Vector256.Create(unchecked((int)0x8FFFE000))).AsSingle();

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> LoadBf16(ushort* p) =>
        Avx2.ShiftLeftLogical(Avx2.ConvertToVector256Int32(p), 16).AsSingle();
}

/// <summary>Portable 4-lane path on the cross-platform <see cref="Vector128"/> API only (any .NET target).</summary>
internal readonly unsafe struct Simd128 : ISimd<Vector128<float>>
{
    public static int Width => 4;
    public static Vector128<float> Zero => Vector128<float>.Zero;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<float> Splat(float v) => Vector128.Create(v);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<float> Load(float* p) => Vector128.Load(p);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Store(float* p, Vector128<float> v) => v.Store(p);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<float> Add(Vector128<float> a, Vector128<float> b) => a + b;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<float> Sub(Vector128<float> a, Vector128<float> b) => a - b;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<float> Mul(Vector128<float> a, Vector128<float> b) => a * b;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<float> Div(Vector128<float> a, Vector128<float> b) => a / b;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<float> Fma(Vector128<float> a, Vector128<float> b, Vector128<float> c) => Vector128.MultiplyAddEstimate(a, b, c);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<float> Max(Vector128<float> a, Vector128<float> b) => Vector128.MaxNative(a, b);

    /// <summary>e^a, Cephes expf scheme (round to n·ln2, degree-5 polynomial, 2^n by exponent add); about 2 ulp.
    /// Inputs are clamped to [-87, 88], keeping 2^n normal: exp(-87) ≈ 1.6e-38 stands in for anything smaller.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<float> Exp(Vector128<float> a)
    {
        Vector128<float> x = Vector128.MinNative(Vector128.MaxNative(a, Vector128.Create(-87f)), Vector128.Create(88f));
        Vector128<float> n = Vector128.Round(x * Vector128.Create(1.44269504088896341f));
        Vector128<float> r = Vector128.MultiplyAddEstimate(n, Vector128.Create(-0.693359375f), x);
        r = Vector128.MultiplyAddEstimate(n, Vector128.Create(2.12194440e-4f), r);
        Vector128<float> p = Vector128.Create(1.9875691500E-4f);
        p = Vector128.MultiplyAddEstimate(p, r, Vector128.Create(1.3981999507E-3f));
        p = Vector128.MultiplyAddEstimate(p, r, Vector128.Create(8.3334519073E-3f));
        p = Vector128.MultiplyAddEstimate(p, r, Vector128.Create(4.1665795894E-2f));
        p = Vector128.MultiplyAddEstimate(p, r, Vector128.Create(1.6666665459E-1f));
        p = Vector128.MultiplyAddEstimate(p, r, Vector128.Create(5.0000001201E-1f));
        Vector128<float> y = Vector128.MultiplyAddEstimate(p, r * r, r + Vector128.Create(1f));
        return (y.AsInt32() + Vector128.ShiftLeft(Vector128.ConvertToInt32(n), 23)).AsSingle();
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Sum(Vector128<float> v) => (v.GetElement(0) + v.GetElement(2)) + (v.GetElement(1) + v.GetElement(3));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float HMax(Vector128<float> v) => MathF.Max(MathF.Max(v.GetElement(0), v.GetElement(1)), MathF.Max(v.GetElement(2), v.GetElement(3)));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<float> LoadFp8(byte* p)
    {
        Vector128<sbyte> b = Vector128.CreateScalarUnsafe(Unsafe.ReadUnaligned<int>(p)).AsSByte();
        Vector128<int> s = Vector128.WidenLower(Vector128.WidenLower(b));
        return (Vector128.ShiftLeft(s, 20) & Vector128.Create(unchecked((int)0x87F00000))).AsSingle();
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<float> LoadF16(ushort* p)
    {
        Vector128<short> h = Vector128.CreateScalarUnsafe(Unsafe.ReadUnaligned<long>(p)).AsInt16();
        return (Vector128.ShiftLeft(Vector128.WidenLower(h), 13) & Vector128.Create(unchecked((int)0x8FFFE000))).AsSingle();
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<float> LoadBf16(ushort* p)
    {
        Vector128<ushort> h = Vector128.CreateScalarUnsafe(Unsafe.ReadUnaligned<long>(p)).AsUInt16();
        return Vector128.ShiftLeft(Vector128.WidenLower(h), 16).AsSingle();
    }
}

/// <summary>How a stored weight element type is read: element size, vector/scalar decode, and the factor the
/// accumulated dot product must be multiplied by to undo the decode's power-of-two scaling.</summary>
internal unsafe interface IWeightKind
{
    static abstract int Bytes { get; }
    static abstract float Post { get; }
    static abstract TVec Load<TOps, TVec>(byte* p) where TOps : ISimd<TVec> where TVec : struct;
    static abstract float LoadScalar(byte* p);
}

internal readonly unsafe struct WeightF32 : IWeightKind
{
    public static int Bytes => 4;
    public static float Post => 1f;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static TVec Load<TOps, TVec>(byte* p) where TOps : ISimd<TVec> where TVec : struct => TOps.Load((float*)p);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float LoadScalar(byte* p) => *(float*)p;
}

internal readonly unsafe struct WeightF16 : IWeightKind
{
    public static int Bytes => 2;
    public static float Post => ScalarDecode.F16Post;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static TVec Load<TOps, TVec>(byte* p) where TOps : ISimd<TVec> where TVec : struct => TOps.LoadF16((ushort*)p);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float LoadScalar(byte* p) => ScalarDecode.F16(Unsafe.ReadUnaligned<ushort>(p));
}

internal readonly unsafe struct WeightBf16 : IWeightKind
{
    public static int Bytes => 2;
    public static float Post => 1f;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static TVec Load<TOps, TVec>(byte* p) where TOps : ISimd<TVec> where TVec : struct => TOps.LoadBf16((ushort*)p);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float LoadScalar(byte* p) => ScalarDecode.Bf16(Unsafe.ReadUnaligned<ushort>(p));
}

internal readonly unsafe struct WeightFp8 : IWeightKind
{
    public static int Bytes => 1;
    public static float Post => ScalarDecode.Fp8Post;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static TVec Load<TOps, TVec>(byte* p) where TOps : ISimd<TVec> where TVec : struct => TOps.LoadFp8(p);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float LoadScalar(byte* p) => ScalarDecode.Fp8(*p);
}
