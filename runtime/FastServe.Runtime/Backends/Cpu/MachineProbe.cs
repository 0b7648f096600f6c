using System.Runtime.InteropServices;
using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace FastServe.Runtime.Backends.Cpu;

/// <summary>
/// Measures the two ceilings the CPU kernels are judged against: memory-copy bandwidth (what a memory-bound
/// decode can at best stream) and the F32 FMA peak (what a compute-bound prefill can at best reach).
/// Both run on a <see cref="ComputePool"/> of the requested size, warm up first, and report the best of
/// several repetitions.
/// </summary>
public static unsafe class MachineProbe
{
    /// <summary>
    /// Bytes copied per second (each byte counted once, not read plus write) when <paramref name="threads"/>
    /// threads each <c>memcpy</c> their own slice of a <paramref name="bufferBytes"/> source into an equally large
    /// destination. Use a buffer much larger than the last-level cache (the default is 1 GiB, so 2 GiB are
    /// allocated). Repeats whole passes for about <paramref name="seconds"/> and returns the best pass.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">threads &lt; 1, bufferBytes &lt; 1 MiB or seconds ≤ 0.</exception>
    /// <exception cref="FastServeException"><c>cpu.out_of_memory</c> when the buffers cannot be allocated.</exception>
    public static double MeasureCopyBandwidth(int threads, long bufferBytes = 1L << 30, double seconds = 1.0)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(threads, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(bufferBytes, 1L << 20);
        ArgumentOutOfRangeException.ThrowIfLessThanOrEqual(seconds, 0);
        bufferBytes &= ~4095L;
        byte* src = (byte*)AlignedMemory.Alloc(bufferBytes, "probe.copy_src");
        byte* dst = null;
        try
        {
            dst = (byte*)AlignedMemory.Alloc(bufferBytes, "probe.copy_dst");
            // Untouched pages all map the kernel's one zero page, which would be copied from cache: give the
            // source real pages of its own.
            NativeMemory.Fill(src, (nuint)bufferBytes, 0x5A);
            using var pool = new ComputePool(threads);
            var job = new CopyJob { Src = src, Dst = dst, Bytes = bufferBytes, Slices = threads };
            pool.Run(job, threads); // warm-up: faults in every destination page
            double best = 0;
            var total = Stopwatch.StartNew();
            int reps = 0;
            while (reps < 3 || total.Elapsed.TotalSeconds < seconds)
            {
                long t0 = Stopwatch.GetTimestamp();
                pool.Run(job, threads);
                double dt = Stopwatch.GetElapsedTime(t0).TotalSeconds;
                best = Math.Max(best, bufferBytes / dt);
                reps++;
                if (reps >= 1000) break;
            }
            return best;
        }
        finally
        {
            void* s = src, d = dst;
            AlignedMemory.Free(ref s);
            AlignedMemory.Free(ref d);
        }
    }

    /// <summary>
    /// F32 FLOP/s (2 per FMA lane) of a register-resident FMA loop on the widest vector ISA present
    /// (AVX-512, else AVX2+FMA, else Vector128 multiply-add), on <paramref name="threads"/> threads; best of
    /// repetitions over about <paramref name="seconds"/>.
    /// </summary>
    public static double MeasureFmaPeak(int threads, double seconds = 0.5)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(threads, 1);
        ArgumentOutOfRangeException.ThrowIfLessThanOrEqual(seconds, 0);
        using var pool = new ComputePool(threads);
        var job = new FmaJob { Iterations = 1 << 16 };
        pool.Run(job, threads);
        // Size one repetition to ~20 ms.
        long t0 = Stopwatch.GetTimestamp();
        pool.Run(job, threads);
        double one = Math.Max(1e-6, Stopwatch.GetElapsedTime(t0).TotalSeconds);
        job.Iterations = (int)Math.Clamp(job.Iterations * (0.02 / one), 1 << 12, 1 << 28);
        double best = 0;
        var total = Stopwatch.StartNew();
        int reps = 0;
        while (reps < 3 || total.Elapsed.TotalSeconds < seconds)
        {
            long s = Stopwatch.GetTimestamp();
            pool.Run(job, threads);
            double dt = Stopwatch.GetElapsedTime(s).TotalSeconds;
            best = Math.Max(best, (double)job.FlopsPerItem * threads / dt);
            if (++reps >= 1000) break;
        }
        return best;
    }

    private sealed class CopyJob : ComputeJob
    {
        public byte* Src, Dst;
        public long Bytes;
        public int Slices;

        public override void Execute(int item, int worker)
        {
            long slice = (Bytes / Slices) & ~63L;
            long lo = item * slice, len = item == Slices - 1 ? Bytes - lo : slice;
            Buffer.MemoryCopy(Src + lo, Dst + lo, len, len);
        }
    }

    private sealed class FmaJob : ComputeJob
    {
        public int Iterations;
        public float Sink;

        /// <summary>12 independent accumulators × lanes × 2 FLOP per iteration.</summary>
        public long FlopsPerItem => (long)Iterations * 12 * Lanes * 2;

        private static int Lanes => CpuIsaInfo.IsSupported(CpuIsa.Avx512) ? 16 : CpuIsaInfo.IsSupported(CpuIsa.Avx2) ? 8 : 4;

        public override void Execute(int item, int worker)
        {
            float r = CpuIsaInfo.IsSupported(CpuIsa.Avx512) ? Loop<Simd512, Vector512<float>>(Iterations)
                : CpuIsaInfo.IsSupported(CpuIsa.Avx2) ? Loop<Simd256, Vector256<float>>(Iterations)
                : Loop<Simd128, Vector128<float>>(Iterations);
            Sink = r;
        }

        [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
        private static float Loop<TOps, TVec>(int iterations) where TOps : ISimd<TVec> where TVec : struct
        {
            TVec m = TOps.Splat(0.999999f), c = TOps.Splat(1e-7f);
            TVec a0 = TOps.Splat(1f), a1 = TOps.Splat(1.1f), a2 = TOps.Splat(1.2f), a3 = TOps.Splat(1.3f);
            TVec a4 = TOps.Splat(1.4f), a5 = TOps.Splat(1.5f), a6 = TOps.Splat(1.6f), a7 = TOps.Splat(1.7f);
            TVec a8 = TOps.Splat(1.8f), a9 = TOps.Splat(1.9f), a10 = TOps.Splat(2.0f), a11 = TOps.Splat(2.1f);
            for (int i = 0; i < iterations; i++)
            {
                a0 = TOps.Fma(a0, m, c); a1 = TOps.Fma(a1, m, c); a2 = TOps.Fma(a2, m, c); a3 = TOps.Fma(a3, m, c);
                a4 = TOps.Fma(a4, m, c); a5 = TOps.Fma(a5, m, c); a6 = TOps.Fma(a6, m, c); a7 = TOps.Fma(a7, m, c);
                a8 = TOps.Fma(a8, m, c); a9 = TOps.Fma(a9, m, c); a10 = TOps.Fma(a10, m, c); a11 = TOps.Fma(a11, m, c);
            }
            TVec s = TOps.Add(TOps.Add(TOps.Add(a0, a1), TOps.Add(a2, a3)), TOps.Add(TOps.Add(a4, a5), TOps.Add(a6, a7)));
            s = TOps.Add(s, TOps.Add(TOps.Add(a8, a9), TOps.Add(a10, a11)));
            return TOps.Sum(s);
        }
    }
}
