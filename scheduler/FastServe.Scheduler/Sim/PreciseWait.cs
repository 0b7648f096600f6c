using System.Diagnostics;
using System.Runtime.InteropServices;

namespace FastServe.Scheduler.Sim;

/// <summary>
/// Blocks the calling thread until a <see cref="Stopwatch"/> timestamp, cheaply in CPU yet within microseconds
/// at the median. On Linux: nanosleep(2) until <see cref="LinuxMargin"/> before the deadline, the thread's timer
/// slack having been set to 1 ns (prctl PR_SET_TIMERSLACK, once per thread) so the wake-up is late by ~40–80 µs
/// rather than ~100–130 µs; then a busy spin to the deadline. Elsewhere (or if libc cannot be called):
/// Thread.Sleep whole milliseconds until <see cref="SleepMargin"/> before the deadline, then Thread.Yield.
/// Measured figures are in docs/sim.md.
/// </summary>
internal static unsafe partial class PreciseWait
{
    /// <summary>Seconds before the deadline at which the nanosleep phase stops.</summary>
    public const double LinuxMargin = 100e-6;

    /// <summary>Seconds before the deadline at which the Thread.Sleep phase stops.</summary>
    public const double SleepMargin = 1.2e-3;

    private const int PR_SET_TIMERSLACK = 29;

    private static readonly double TicksPerSecond = Stopwatch.Frequency;
    private static bool s_libcFailed = !OperatingSystem.IsLinux();

    [ThreadStatic] private static bool t_slackSet;

    public static void Until(long deadlineTicks)
    {
        while (true)
        {
            long remaining = deadlineTicks - Stopwatch.GetTimestamp();
            if (remaining <= 0) return;
            double seconds = remaining / TicksPerSecond;
            if (!s_libcFailed)
            {
                if (seconds > LinuxMargin + 20e-6) NanoSleep(seconds - LinuxMargin);
                else Thread.SpinWait(20);
            }
            else if (seconds > SleepMargin)
                Thread.Sleep((int)((seconds - SleepMargin) * 1000) + 1);
            else
                Thread.Yield();
        }
    }

    private static void NanoSleep(double seconds)
    {
        long ns = (long)(seconds * 1e9);
        var req = new Timespec { Sec = (nint)(ns / 1_000_000_000), Nsec = (nint)(ns % 1_000_000_000) };
        try
        {
            if (!t_slackSet)
            {
                t_slackSet = true;
                prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0);   // best effort: a failure only costs precision
            }
            // EINTR returns early; the caller's loop sleeps again for what is left.
            nanosleep(&req, null);
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            s_libcFailed = true;
        }
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct Timespec
    {
        public nint Sec;
        public nint Nsec;
    }

    [LibraryImport("libc")]
    private static partial int nanosleep(Timespec* req, Timespec* rem);

    [LibraryImport("libc")]
    private static partial int prctl(int option, nuint arg2, nuint arg3, nuint arg4, nuint arg5);
}
