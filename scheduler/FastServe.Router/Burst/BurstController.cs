using System.Diagnostics;
using System.Globalization;

namespace FastServe.Router.Burst;

/// <summary>
/// When <see cref="BurstController"/> changes mode. A level is entered when its estimated wait OR its utilization
/// reaches the enter threshold and stays there for <see cref="EnterHoldMs"/>; it is left (one level down) when the
/// estimated wait AND the utilization are both below its exit thresholds for <see cref="ExitHoldMs"/>. The gap between
/// the two thresholds is the hysteresis. Waits and holds are milliseconds; utilization is (running + queued) /
/// capacity and may exceed 1. <see cref="Validate"/> checks ranges and orders.
/// </summary>
public sealed record BurstOptions
{
    /// <summary>Enter surge at this estimated queue wait. Default 250.</summary>
    public double SurgeEnterWaitMs { get; init; } = 250;
    /// <summary>Leave surge below this wait (and below <see cref="SurgeExitUtilization"/>). Default 100.</summary>
    public double SurgeExitWaitMs { get; init; } = 100;
    /// <summary>Enter emergency at this estimated queue wait. Default 1,000.</summary>
    public double EmergencyEnterWaitMs { get; init; } = 1000;
    /// <summary>Leave emergency (for surge) below this wait (and below <see cref="EmergencyExitUtilization"/>).
    /// Default 400.</summary>
    public double EmergencyExitWaitMs { get; init; } = 400;
    /// <summary>Enter surge at this utilization. Default 1.5: a full batch (1.0) is a healthy replica, not a burst;
    /// half a batch more waiting behind it is.</summary>
    public double SurgeEnterUtilization { get; init; } = 1.5;
    /// <summary>Leave surge below this utilization. Default 1.0.</summary>
    public double SurgeExitUtilization { get; init; } = 1.0;
    /// <summary>Enter emergency at this utilization. Default 3.0 (two batches queued).</summary>
    public double EmergencyEnterUtilization { get; init; } = 3.0;
    /// <summary>Leave emergency below this utilization. Default 2.0.</summary>
    public double EmergencyExitUtilization { get; init; } = 2.0;
    /// <summary>How long a level's enter condition must hold before the mode goes up to it. Default 1,000.</summary>
    public int EnterHoldMs { get; init; } = 1000;
    /// <summary>How long the current level's exit condition must hold before the mode goes down one level (again
    /// for each further level). Default 10,000.</summary>
    public int ExitHoldMs { get; init; } = 10_000;

    /// <summary>Throws <see cref="ArgumentOutOfRangeException"/> naming the first setting out of range or out of
    /// order: waits 0 … 3,600,000 ms and utilizations 0 … 100, each exit below its enter; surge's thresholds at most
    /// emergency's; EnterHoldMs 0 … 600,000; ExitHoldMs 0 … 3,600,000.</summary>
    public void Validate()
    {
        static void Range(double v, double lo, double hi, string name)
        {
            if (!(v >= lo && v <= hi)) throw new ArgumentOutOfRangeException(name, v, $"{name} must be between {lo} and {hi}");
        }
        static void Below(double v, double limit, string name, string limitName, bool orEqual = false)
        {
            if (!(v < limit || orEqual && v == limit))
                throw new ArgumentOutOfRangeException(name, v, $"{name} must be {(orEqual ? "at most" : "below")} {limitName} ({limit})");
        }
        Range(SurgeEnterWaitMs, 0, 3_600_000, nameof(SurgeEnterWaitMs));
        Range(SurgeExitWaitMs, 0, 3_600_000, nameof(SurgeExitWaitMs));
        Range(EmergencyEnterWaitMs, 0, 3_600_000, nameof(EmergencyEnterWaitMs));
        Range(EmergencyExitWaitMs, 0, 3_600_000, nameof(EmergencyExitWaitMs));
        Range(SurgeEnterUtilization, 0, 100, nameof(SurgeEnterUtilization));
        Range(SurgeExitUtilization, 0, 100, nameof(SurgeExitUtilization));
        Range(EmergencyEnterUtilization, 0, 100, nameof(EmergencyEnterUtilization));
        Range(EmergencyExitUtilization, 0, 100, nameof(EmergencyExitUtilization));
        Below(SurgeExitWaitMs, SurgeEnterWaitMs, nameof(SurgeExitWaitMs), nameof(SurgeEnterWaitMs));
        Below(EmergencyExitWaitMs, EmergencyEnterWaitMs, nameof(EmergencyExitWaitMs), nameof(EmergencyEnterWaitMs));
        Below(SurgeExitUtilization, SurgeEnterUtilization, nameof(SurgeExitUtilization), nameof(SurgeEnterUtilization));
        Below(EmergencyExitUtilization, EmergencyEnterUtilization, nameof(EmergencyExitUtilization), nameof(EmergencyEnterUtilization));
        Below(SurgeEnterWaitMs, EmergencyEnterWaitMs, nameof(SurgeEnterWaitMs), nameof(EmergencyEnterWaitMs), orEqual: true);
        Below(SurgeEnterUtilization, EmergencyEnterUtilization, nameof(SurgeEnterUtilization), nameof(EmergencyEnterUtilization), orEqual: true);
        Below(SurgeExitWaitMs, EmergencyExitWaitMs, nameof(SurgeExitWaitMs), nameof(EmergencyExitWaitMs), orEqual: true);
        Below(SurgeExitUtilization, EmergencyExitUtilization, nameof(SurgeExitUtilization), nameof(EmergencyExitUtilization), orEqual: true);
        Range(EnterHoldMs, 0, 600_000, nameof(EnterHoldMs));
        Range(ExitHoldMs, 0, 3_600_000, nameof(ExitHoldMs));
    }
}

/// <summary>A change of <see cref="BurstController.Mode"/>.</summary>
/// <param name="From">The mode before.</param>
/// <param name="To">The mode now.</param>
/// <param name="Reason">For people and logs, e.g. "estimated wait 612 ms ≥ 250 ms for 1.0 s", or "pinned by the
/// operator".</param>
/// <param name="Pinned">Whether the change came from <see cref="BurstController.Pin"/> rather than from load.</param>
public sealed record BurstChange(BurstMode From, BurstMode To, string Reason, bool Pinned);

/// <summary>
/// Picks the router's <see cref="BurstMode"/> from fleet load, with hysteresis (<see cref="BurstOptions"/>), unless
/// an operator pins one. The router's timer calls <see cref="Observe"/> every 10–50 ms with the fleet's estimated
/// queue wait and utilization; the mode goes up one or two levels at once (straight to emergency when emergency's
/// condition has held for the hold time, from either lower level) and down one level at a time, each step down
/// needing its own <see cref="BurstOptions.ExitHoldMs"/> of calm. Times are <see cref="Stopwatch"/> ticks passed in by
/// the caller, so a synthetic clock makes it deterministic.
/// </summary>
/// <remarks>
/// Thread-safe: <see cref="Observe"/> and <see cref="Pin"/> take one lock (Observe from the timer, Pin from admin
/// requests); <see cref="Mode"/>, <see cref="IsPinned"/> and <see cref="Changes"/> read without it. Observe allocates
/// only when it returns a change.
/// </remarks>
public sealed class BurstController
{
    private const long Never = long.MinValue;

    private readonly Lock _lock = new();
    private readonly long _enterHold, _exitHold;
    // Under _lock: since when each condition has held without a break (Never = it does not hold now).
    private long _surgeSince = Never, _emergencySince = Never;
    private long _calmSince = Never;          // the current mode's exit condition; restarts at every change
    private volatile BurstMode _mode;         // written under _lock
    private volatile bool _pinned;            // written under _lock
    private int _changes;                     // written under _lock

    /// <summary>A controller applying <paramref name="options"/> (validated here), starting in
    /// <paramref name="initial"/>, automatic.</summary>
    public BurstController(BurstOptions options, BurstMode initial = BurstMode.Normal)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        Options = options;
        _enterHold = options.EnterHoldMs * Stopwatch.Frequency / 1000;
        _exitHold = options.ExitHoldMs * Stopwatch.Frequency / 1000;
        _mode = initial;
    }

    /// <summary>The thresholds it applies.</summary>
    public BurstOptions Options { get; }

    /// <summary>The mode now.</summary>
    public BurstMode Mode => _mode;

    /// <summary>Whether an operator pinned the mode (<see cref="Observe"/> then changes nothing).</summary>
    public bool IsPinned => _pinned;

    /// <summary>Mode changes so far, automatic and pinned.</summary>
    public int Changes => Volatile.Read(ref _changes);

    /// <summary>
    /// The fleet's load at <paramref name="now"/>: <paramref name="estimatedWaitMs"/>, how long a request arriving now
    /// would queue, and <paramref name="utilization"/>, (running + queued) / capacity. Returns the change when the
    /// mode changes, else null (always null while pinned; the conditions are still tracked, so unpinning acts on load
    /// that has held meanwhile). A NaN signal neither enters nor leaves a level.
    /// </summary>
    public BurstChange? Observe(double estimatedWaitMs, double utilization, long now)
    {
        var o = Options;
        lock (_lock)
        {
            bool surge = estimatedWaitMs >= o.SurgeEnterWaitMs || utilization >= o.SurgeEnterUtilization;
            bool emergency = estimatedWaitMs >= o.EmergencyEnterWaitMs || utilization >= o.EmergencyEnterUtilization;
            Track(ref _surgeSince, surge, now);
            Track(ref _emergencySince, emergency, now);
            var mode = _mode;
            bool calm = mode switch
            {
                BurstMode.Surge => estimatedWaitMs < o.SurgeExitWaitMs && utilization < o.SurgeExitUtilization,
                BurstMode.Emergency => estimatedWaitMs < o.EmergencyExitWaitMs && utilization < o.EmergencyExitUtilization,
                _ => false,
            };
            Track(ref _calmSince, calm, now);
            if (_pinned) return null;

            if (mode < BurstMode.Emergency && Held(_emergencySince, _enterHold, now))
                return ChangeLocked(BurstMode.Emergency, Up(estimatedWaitMs, utilization, o.EmergencyEnterWaitMs, o.EmergencyEnterUtilization, now - _emergencySince), pinned: false);
            if (mode == BurstMode.Normal && Held(_surgeSince, _enterHold, now))
                return ChangeLocked(BurstMode.Surge, Up(estimatedWaitMs, utilization, o.SurgeEnterWaitMs, o.SurgeEnterUtilization, now - _surgeSince), pinned: false);
            if (mode > BurstMode.Normal && Held(_calmSince, _exitHold, now))
            {
                var (wait, util) = mode == BurstMode.Emergency
                    ? (o.EmergencyExitWaitMs, o.EmergencyExitUtilization)
                    : (o.SurgeExitWaitMs, o.SurgeExitUtilization);
                return ChangeLocked(mode - 1, Down(estimatedWaitMs, utilization, wait, util, now - _calmSince), pinned: false);
            }
            return null;
        }
    }

    /// <summary>
    /// Pins the mode to <paramref name="mode"/> (an operator's override: <see cref="Observe"/> changes nothing until
    /// unpinned), or with null unpins: automatic again, starting from the mode pinned. Returns the change when the mode
    /// changes (<see cref="BurstChange.Pinned"/> set), else null; unpinning never changes the mode by itself.
    /// </summary>
    public BurstChange? Pin(BurstMode? mode, long now)
    {
        lock (_lock)
        {
            if (mode is not { } m)
            {
                _pinned = false;
                return null;
            }
            _pinned = true;
            return m == _mode ? null : ChangeLocked(m, $"pinned to {BurstModeNames.Of(m)} by the operator", pinned: true);
        }
    }

    private BurstChange ChangeLocked(BurstMode to, string reason, bool pinned)
    {
        var change = new BurstChange(_mode, to, reason, pinned);
        _mode = to;
        _calmSince = Never;     // each level's exit hold starts when it is entered
        Volatile.Write(ref _changes, _changes + 1);
        return change;
    }

    private static void Track(ref long since, bool holds, long now)
    {
        if (!holds) since = Never;
        else if (since == Never) since = now;
    }

    private static bool Held(long since, long hold, long now) => since != Never && now - since >= hold;

    private static string Up(double waitMs, double utilization, double waitLimit, double utilLimit, long heldTicks)
    {
        var inv = CultureInfo.InvariantCulture;
        string what = waitMs >= waitLimit
            ? string.Create(inv, $"estimated wait {waitMs:N0} ms ≥ {waitLimit:N0} ms")
            : string.Create(inv, $"utilization {utilization:0.00} ≥ {utilLimit:0.00}");
        return string.Create(inv, $"{what} for {Seconds(heldTicks):0.0} s");
    }

    private static string Down(double waitMs, double utilization, double waitLimit, double utilLimit, long heldTicks) =>
        string.Create(CultureInfo.InvariantCulture,
            $"estimated wait {waitMs:N0} ms < {waitLimit:N0} ms and utilization {utilization:0.00} < {utilLimit:0.00} for {Seconds(heldTicks):0.0} s");

    private static double Seconds(long ticks) => ticks / (double)Stopwatch.Frequency;
}
