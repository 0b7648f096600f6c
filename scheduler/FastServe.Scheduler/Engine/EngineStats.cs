using System.Diagnostics;

namespace FastServe.Scheduler.Engine;

/// <summary>
/// A point-in-time snapshot of an engine's counters. Totals only grow, so the difference of two snapshots
/// describes the interval between them (see <see cref="Since"/>).
/// </summary>
public sealed record EngineStats
{
    public long TakenAtTicks { get; init; }
    /// <summary>Requests waiting for admission, and their prompt tokens.</summary>
    public int WaitingRequests { get; init; }
    public long WaitingTokens { get; init; }
    public int RunningRequests { get; init; }
    public int KvBlocksTotal { get; init; }
    public int KvBlocksUsed { get; init; }
    public int KvBlocksFree { get; init; }
    /// <summary>Cached blocks no request holds (reusable on a prefix hit, evictable).</summary>
    public int KvBlocksCachedIdle { get; init; }

    public long Submitted { get; init; }
    public long Finished { get; init; }
    public long Cancelled { get; init; }
    public long DeadlineExceeded { get; init; }
    public long Overloaded { get; init; }
    public long Invalid { get; init; }
    public long Failed { get; init; }
    public long Preemptions { get; init; }

    public long Steps { get; init; }
    /// <summary>Rows computed (prefill and decode) and tokens sampled.</summary>
    public long RowsComputed { get; init; }
    /// <summary>Of <see cref="RowsComputed"/>, rows spent on requests that then ended deadline_exceeded: wasted work,
    /// which admission control exists to keep near zero.</summary>
    public long WastedRows { get; init; }
    public long PrefillRows { get; init; }
    public long TokensGenerated { get; init; }
    /// <summary>Full-block prefix-cache lookups and hits, and prompt tokens served from the cache.</summary>
    public long PrefixQueries { get; init; }
    public long PrefixHits { get; init; }
    public long PrefixHitTokens { get; init; }

    /// <summary>Device time running steps, and device time idle between steps while the engine had work.</summary>
    public double DeviceBusySeconds { get; init; }
    public double DeviceIdleSeconds { get; init; }
    /// <summary>Device busy time charged to no request: steps in which every row was computed for a sequence that had
    /// already ended (with overlap, the step after the last request's last token is already running). Rows of ended
    /// sequences in a step that also ran live ones are shared by those.
    /// The sum of every <see cref="RequestResult.DeviceTime"/> and this is <see cref="DeviceBusySeconds"/>.</summary>
    public double DeviceUnattributedSeconds { get; init; }
    /// <summary>Scheduler-thread CPU time spent scheduling and post-processing (not waiting on the device).</summary>
    public double SchedulerCpuSeconds { get; init; }

    public double PrefixHitRate => PrefixQueries == 0 ? 0 : PrefixHits / (double)PrefixQueries;
    public double DeviceIdleFraction => DeviceBusySeconds + DeviceIdleSeconds <= 0 ? 0 : DeviceIdleSeconds / (DeviceBusySeconds + DeviceIdleSeconds);

    /// <summary>The interval from <paramref name="earlier"/> to this snapshot: totals subtracted, gauges kept.</summary>
    public EngineStats Since(EngineStats earlier) => this with
    {
        Submitted = Submitted - earlier.Submitted,
        Finished = Finished - earlier.Finished,
        Cancelled = Cancelled - earlier.Cancelled,
        DeadlineExceeded = DeadlineExceeded - earlier.DeadlineExceeded,
        Overloaded = Overloaded - earlier.Overloaded,
        Invalid = Invalid - earlier.Invalid,
        Failed = Failed - earlier.Failed,
        Preemptions = Preemptions - earlier.Preemptions,
        Steps = Steps - earlier.Steps,
        RowsComputed = RowsComputed - earlier.RowsComputed,
        WastedRows = WastedRows - earlier.WastedRows,
        PrefillRows = PrefillRows - earlier.PrefillRows,
        TokensGenerated = TokensGenerated - earlier.TokensGenerated,
        PrefixQueries = PrefixQueries - earlier.PrefixQueries,
        PrefixHits = PrefixHits - earlier.PrefixHits,
        PrefixHitTokens = PrefixHitTokens - earlier.PrefixHitTokens,
        DeviceBusySeconds = DeviceBusySeconds - earlier.DeviceBusySeconds,
        DeviceIdleSeconds = DeviceIdleSeconds - earlier.DeviceIdleSeconds,
        SchedulerCpuSeconds = SchedulerCpuSeconds - earlier.SchedulerCpuSeconds,
    };
}

/// <summary>
/// What happened in one step, in <see cref="Stopwatch"/> ticks: its shape, how long the scheduler thread worked on
/// it (building it, plus post-processing its results; thread CPU time), when it was launched, when the device began
/// and finished it, and how long the device sat idle before it while work was waiting.
/// </summary>
public readonly record struct StepRecord(
    long Id,
    int Sequences,
    int Rows,
    int PrefillRows,
    int Samples,
    long SchedulerCpuTicks,
    long LaunchTicks,
    long StartTicks,
    long EndTicks,
    long IdleGapTicks)
{
    public double ForwardSeconds => (EndTicks - StartTicks) / (double)Stopwatch.Frequency;
    public double SchedulerCpuSeconds => SchedulerCpuTicks / (double)Stopwatch.Frequency;
    public double IdleGapSeconds => IdleGapTicks / (double)Stopwatch.Frequency;
}
