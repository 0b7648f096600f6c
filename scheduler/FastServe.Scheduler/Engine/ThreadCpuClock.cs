using System.Diagnostics;
using System.Runtime.InteropServices;

namespace FastServe.Scheduler.Engine;

/// <summary>CPU time of the calling thread in <see cref="Stopwatch"/> ticks (Linux CLOCK_THREAD_CPUTIME_ID), so
/// "scheduler CPU per step" excludes time the thread was descheduled. Falls back to wall time elsewhere.</summary>
internal static partial class ThreadCpuClock
{
    private const int ClockThreadCpuTime = 3;
    private static readonly bool s_linux = OperatingSystem.IsLinux();

    [StructLayout(LayoutKind.Sequential)]
    private struct Timespec
    {
        public long Seconds;
        public long Nanoseconds;
    }

    [LibraryImport("libc", EntryPoint = "clock_gettime")]
    private static partial int ClockGetTime(int clock, out Timespec ts);

    public static long NowTicks()
    {
        if (s_linux && ClockGetTime(ClockThreadCpuTime, out var ts) == 0)
            return (long)((ts.Seconds * 1_000_000_000.0 + ts.Nanoseconds) * Stopwatch.Frequency / 1e9);
        return Stopwatch.GetTimestamp();
    }
}
