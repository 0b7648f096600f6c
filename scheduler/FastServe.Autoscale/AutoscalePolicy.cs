namespace FastServe.Autoscale;

/// <summary>What the fleet reported at one tick.</summary>
/// <param name="At">When (any monotonic clock; the simulator's or the process's), as a time since an origin.</param>
/// <param name="Ready">Replicas taking traffic.</param>
/// <param name="Starting">Replicas started and not yet ready: capacity on the way.</param>
/// <param name="Concurrency">Requests in flight or queued over all ready replicas.</param>
/// <param name="RefusedPerSecond">Requests the fleet refused for load per second since the last tick (overloaded
/// answers): demand that concurrency cannot show, since a replica that sheds does not queue it.</param>
/// <param name="ServiceSeconds">Mean time a request holds a replica (for turning refusals into concurrency by Little's
/// law: refused/s × seconds = the concurrency they would have added).</param>
public readonly record struct FleetObservation(TimeSpan At, int Ready, int Starting, double Concurrency,
    double RefusedPerSecond = 0, double ServiceSeconds = 0);

/// <summary>One decision: the replica count wanted, and everything it was decided from.</summary>
/// <param name="Desired">Replicas the fleet should have (ready plus starting) after this tick.</param>
/// <param name="Current">Ready plus starting when deciding.</param>
/// <param name="Demand">This tick's demand in concurrency (reported, plus refusals by Little's law).</param>
/// <param name="StableDemand">Mean demand over the stable window.</param>
/// <param name="PanicDemand">Mean demand over the panic window.</param>
/// <param name="Panic">In panic mode after this tick.</param>
/// <param name="Reason">Why <see cref="Desired"/> is what it is, for the event log.</param>
public readonly record struct ScaleDecision(int Desired, int Current, double Demand, double StableDemand, double PanicDemand,
    bool Panic, string Reason)
{
    /// <summary>Replicas to start (positive) or to drain and stop (negative).</summary>
    public int Delta => Desired - Current;
}

/// <summary>
/// The fleet autoscaler's policy (docs/autoscale.md): asymmetric, fast up and slow down, modelled on Knative's KPA and
/// the Kubernetes HPA.
/// <list type="bullet">
/// <item>Demand is concurrency (in flight plus queued), plus refused requests turned into concurrency, averaged over a
/// stable window (60 s) and a panic window (6 s); replicas wanted = demand ÷ target concurrency, rounded up.</item>
/// <item>Panic when the panic window asks for ≥ 2× the ready replicas; in panic the count follows the panic window
/// and never goes down; panic ends once a whole stable window has passed without the condition.</item>
/// <item>Up at once, as far as demand asks, at most ×<see cref="AutoscaleOptions.MaxScaleUpFactor"/> per decision;
/// starting replicas count as capacity on the way, so a ramp does not start more while they boot.</item>
/// <item>Down only to the highest count recommended over the stabilization window (300 s), and by at most
/// <see cref="AutoscaleOptions.MaxScaleDownPerMinute"/> of the fleet per minute.</item>
/// <item>Never outside [min, max]; changes within the tolerance are not made.</item>
/// </list>
/// Driven by the caller's clock (<see cref="FleetObservation.At"/>), with no timer and no I/O, so that
/// <c>fastserve autoscale</c> and the fleet simulator run the same code. Not thread-safe: one caller.
/// </summary>
public sealed class AutoscalePolicy
{
    private readonly AutoscaleOptions _o;
    private readonly Queue<(TimeSpan At, double Demand)> _demand = new();
    private readonly Queue<(TimeSpan At, int Desired)> _recommendations = new();
    private readonly Queue<(TimeSpan At, int Removed)> _removals = new();
    private TimeSpan _panicSince = TimeSpan.MinValue, _lastPanicCondition = TimeSpan.MinValue;
    private int _panicFloor;
    private TimeSpan _lastAt = TimeSpan.MinValue;

    public AutoscalePolicy(AutoscaleOptions options)
    {
        options.Validate();
        _o = options;
    }

    public AutoscaleOptions Options => _o;

    /// <summary>True while in panic mode.</summary>
    public bool Panicking => _panicSince != TimeSpan.MinValue;

    /// <summary>Takes one observation (times must not go back) and decides the replica count.</summary>
    public ScaleDecision Decide(in FleetObservation o)
    {
        if (o.At < _lastAt) throw new ArgumentException("observations must not go back in time", nameof(o));
        _lastAt = o.At;
        double demand = Math.Max(0, o.Concurrency) + Math.Max(0, o.RefusedPerSecond) * Math.Max(0, o.ServiceSeconds);
        _demand.Enqueue((o.At, demand));
        while (_demand.Count > 0 && _demand.Peek().At <= o.At - _o.StableWindow) _demand.Dequeue();
        double stable = Mean(o.At - _o.StableWindow), panicDemand = Mean(o.At - _o.PanicWindow);
        int current = o.Ready + o.Starting;
        int wantStable = Want(stable), wantPanic = Want(panicDemand);

        // Panic: the short window needs at least the threshold times what is ready (or anything, with nothing ready).
        bool condition = o.Ready == 0 ? wantPanic > 0 : wantPanic >= _o.PanicThreshold * o.Ready;
        if (condition)
        {
            _lastPanicCondition = o.At;
            if (!Panicking) { _panicSince = o.At; _panicFloor = current; }
        }
        else if (Panicking && o.At - _lastPanicCondition >= _o.StableWindow)
        {
            _panicSince = TimeSpan.MinValue;
        }

        string reason;
        int desired;
        if (Panicking)
        {
            // Never down in panic: the count only ratchets up, to what the panic window asks.
            _panicFloor = Math.Max(_panicFloor, Math.Max(wantPanic, current));
            desired = _panicFloor;
            reason = $"panic: {panicDemand:F1} in flight over {_o.PanicWindow.TotalSeconds:F0} s needs {wantPanic} replicas, {o.Ready} ready";
        }
        else if (wantPanic > wantStable)
        {
            // Up on the short window: a ramp shows there within seconds, while the stable mean trails it by half its
            // window. Down stays on the stable mean (and the stabilization window below).
            desired = wantPanic;
            reason = $"rising: {panicDemand:F1} in flight over {_o.PanicWindow.TotalSeconds:F0} s needs {wantPanic} replicas at {_o.TargetConcurrency:F0} each";
        }
        else
        {
            desired = wantStable;
            reason = $"stable: {stable:F1} in flight over {_o.StableWindow.TotalSeconds:F0} s needs {wantStable} replicas at {_o.TargetConcurrency:F0} each";
        }

        // The HPA's tolerance: a change within it is noise.
        if (current > 0 && desired != current && Math.Abs(desired - current) <= _o.Tolerance * current)
        {
            desired = current;
            reason += $"; within the {_o.Tolerance:P0} tolerance of {current}";
        }

        desired = Math.Clamp(desired, _o.MinReplicas, _o.MaxReplicas);
        _recommendations.Enqueue((o.At, desired));
        while (_recommendations.Count > 0 && _recommendations.Peek().At < o.At - _o.ScaleDownStabilization) _recommendations.Dequeue();

        if (desired > current)
        {
            int cap = Math.Max(current + 1, (int)Math.Ceiling(current * _o.MaxScaleUpFactor));
            if (desired > cap) { desired = cap; reason += $"; up at most x{_o.MaxScaleUpFactor:G3} a step: {cap}"; }
        }
        else if (desired < current)
        {
            // Down only as far as the highest recommendation of the stabilization window, and a bounded share a minute.
            int floor = 0;
            foreach (var r in _recommendations) floor = Math.Max(floor, r.Desired);
            if (floor > desired) { desired = Math.Min(floor, current); reason += $"; held at {desired} by the {_o.ScaleDownStabilization.TotalSeconds:F0} s stabilization window"; }
            while (_removals.Count > 0 && _removals.Peek().At <= o.At - TimeSpan.FromMinutes(1)) _removals.Dequeue();
            int removedLastMinute = 0;
            foreach (var r in _removals) removedLastMinute += r.Removed;
            // A share of the fleet as it was a minute ago (the HPA's periodStartReplicas), not as it is now: of the
            // shrinking current size, a limit of 100 % a minute stalled a 4 → 1 scale-down at 2 for a minute.
            int allowed = Math.Max(1, (int)Math.Floor(_o.MaxScaleDownPerMinute * (current + removedLastMinute))) - removedLastMinute;
            if (current - desired > Math.Max(0, allowed))
            {
                desired = current - Math.Max(0, allowed);
                reason += $"; down at most {_o.MaxScaleDownPerMinute:P0} a minute";
            }
            if (desired < current) _removals.Enqueue((o.At, current - desired));
        }
        desired = Math.Clamp(desired, _o.MinReplicas, _o.MaxReplicas);
        return new ScaleDecision(desired, current, demand, stable, panicDemand, Panicking, reason);
    }

    private int Want(double concurrency) => concurrency <= 0 ? 0 : (int)Math.Ceiling(concurrency / _o.TargetConcurrency - 1e-9);

    // Mean of the demand samples after `since` (the caller ticks at a steady interval, so each sample weighs the same).
    private double Mean(TimeSpan since)
    {
        double sum = 0;
        int n = 0;
        foreach (var (at, d) in _demand)
            if (at > since) { sum += d; n++; }
        return n == 0 ? 0 : sum / n;
    }
}
