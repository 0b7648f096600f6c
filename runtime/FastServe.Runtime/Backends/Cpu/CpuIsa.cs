using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace FastServe.Runtime.Backends.Cpu;

/// <summary>Kernel paths of the CPU backend, lowest first.</summary>
public enum CpuIsa
{
    /// <summary>Cross-platform <see cref="Vector128"/> code (4 lanes); runs anywhere .NET runs.</summary>
    Portable = 0,
    /// <summary>x86 AVX2 + FMA3 (8 lanes).</summary>
    Avx2 = 1,
    /// <summary>x86 AVX-512 F + BW (16 lanes).</summary>
    Avx512 = 2,
}

/// <summary>
/// Which <see cref="CpuIsa"/> paths this process can run. Under the JIT this is the processor's capability.
/// Under NativeAOT (.NET 10) an ISA above the compile-time baseline is not probed at run time: its IsSupported
/// folds to false, so a default publish runs only the portable path. Measured here: IlcInstructionSet
/// <c>x86-64-v2,avx</c> gives AVX2+FMA under a run-time check (the binary needs only AVX);
/// <c>x86-64-v3</c> requires AVX2; AVX-512 is never checked opportunistically and needs <c>x86-64-v4</c>
/// (the binary then refuses to start without AVX-512).
/// </summary>
public static class CpuIsaInfo
{
    /// <summary>True when the processor (and the runtime) can execute <paramref name="isa"/>.</summary>
    public static bool IsSupported(CpuIsa isa) => isa switch
    {
        CpuIsa.Portable => true,
        CpuIsa.Avx2 => Avx2.IsSupported && Fma.IsSupported,
        CpuIsa.Avx512 => Avx512F.IsSupported && Avx512BW.IsSupported,
        _ => false,
    };

    /// <summary>The fastest supported path.</summary>
    public static CpuIsa Best => IsSupported(CpuIsa.Avx512) ? CpuIsa.Avx512 : IsSupported(CpuIsa.Avx2) ? CpuIsa.Avx2 : CpuIsa.Portable;

    /// <summary>Every supported path, lowest first.</summary>
    public static IReadOnlyList<CpuIsa> Supported =>
        [.. new[] { CpuIsa.Portable, CpuIsa.Avx2, CpuIsa.Avx512 }.Where(IsSupported)];

    /// <summary>Lower-case name: "portable", "avx2", "avx512".</summary>
    public static string Name(this CpuIsa isa) => isa switch
    {
        CpuIsa.Avx512 => "avx512",
        CpuIsa.Avx2 => "avx2",
        _ => "portable",
    };
}
