namespace FastServe.Autoscale.Simulation;

/// <summary>What a set of ready replicas did with one step's offered load (rates in requests per second).</summary>
/// <param name="Served">Admitted and answered: min(offered, ready × capacity).</param>
/// <param name="Refused">Refused at the door for load (issue 16): offered − served.</param>
/// <param name="OverSloFraction">Fraction of the served requests whose latency exceeds the SLO.</param>
/// <param name="MeanLatency">Mean latency of a served request, seconds.</param>
/// <param name="Utilization">Served ÷ (ready × capacity), in [0, 1].</param>
public readonly record struct StepOutcome(double Served, double Refused, double OverSloFraction, double MeanLatency, double Utilization)
{
    /// <summary>Requests in flight over the fleet by Little's law (served/s × mean latency).</summary>
    public double Concurrency => Served * MeanLatency;
}

/// <summary>
/// One replica, as a fluid (docs/autoscale.md, "The fleet simulator"):
/// <list type="bullet">
/// <item>It serves at most <see cref="Capacity"/> requests per second and refuses the excess at once (issue 16's
/// overload without collapse: refusals cost under 1 ms, goodput stays at capacity).</item>
/// <item>A served request's latency is <see cref="BaseLatency"/> plus an exponential wait of mean
/// <see cref="WaitAtCapacity"/> × u² at utilization u; the fraction over the SLO is exp(−(SLO − base) ÷ mean wait).</item>
/// <item>Start-up takes a lognormal time of median <see cref="StartDelayMedian"/> and shape
/// <see cref="StartDelaySigma"/>.</item>
/// </list>
/// Defaults are the sim replica of docs/benchmarks.md (issue 16): capacity 166 req/s with a 1 s deadline; 50 output
/// tokens at 8.0 ms a step ≈ 0.40 s plus prefill gives 0.45 s at low load; P99 admitted 0.57–0.76 s at and past
/// capacity gives a mean wait of 0.054 s at u = 1 (P99 = 0.45 + 0.054 × ln 100 ≈ 0.70 s). The u² shape is assumed.
/// </summary>
public sealed record ReplicaModel
{
    /// <summary>Requests per second one replica serves at most.</summary>
    public double Capacity { get; init; } = 166;

    /// <summary>Latency of a request at low load, seconds.</summary>
    public double BaseLatency { get; init; } = 0.45;

    /// <summary>Mean queueing wait at full utilization, seconds.</summary>
    public double WaitAtCapacity { get; init; } = 0.054;

    /// <summary>End-to-end latency objective, seconds.</summary>
    public double Slo { get; init; } = 1.0;

    /// <summary>Median start-up time (scheduled to ready), seconds.</summary>
    public double StartDelayMedian { get; init; } = 5;

    /// <summary>Shape (σ of the logarithm) of the start-up time; 0 makes it fixed.</summary>
    public double StartDelaySigma { get; init; } = 0.3;

    /// <summary>Throws an <see cref="ArgumentException"/> naming the first bad knob.</summary>
    public void Validate()
    {
        if (!(Capacity > 0) || double.IsInfinity(Capacity)) throw new ArgumentException("the replica capacity must be positive", nameof(Capacity));
        if (!(BaseLatency > 0) || double.IsInfinity(BaseLatency)) throw new ArgumentException("the base latency must be positive", nameof(BaseLatency));
        if (!(WaitAtCapacity >= 0) || double.IsInfinity(WaitAtCapacity)) throw new ArgumentException("the wait must not be negative", nameof(WaitAtCapacity));
        if (!(Slo > 0) || double.IsInfinity(Slo)) throw new ArgumentException("the SLO must be positive", nameof(Slo));
        if (!(StartDelayMedian >= 0 && StartDelayMedian <= 3600)) throw new ArgumentException("the start delay must be between 0 and 3600 s", nameof(StartDelayMedian));
        if (!(StartDelaySigma >= 0 && StartDelaySigma <= 3)) throw new ArgumentException("the start delay's sigma must be between 0 and 3", nameof(StartDelaySigma));
    }

    /// <summary>
    /// Spreads <paramref name="offered"/> req/s over <paramref name="ready"/> identical replicas. Power-of-two-choices
    /// keeps replicas within a few requests of each other, which a fluid model rounds to an even split (equal to a
    /// split weighted by spare capacity when the replicas are the same); so the fleet acts as one server of ready ×
    /// capacity. O(1) in the replica count.
    /// </summary>
    public StepOutcome Step(double offered, int ready)
    {
        double cap = ready * Capacity;
        double served = Math.Min(offered, cap);
        double u = cap > 0 ? served / cap : 0;
        double wait = WaitAtCapacity * u * u;
        double over = BaseLatency >= Slo ? 1 : wait <= 0 ? 0 : Math.Exp(-(Slo - BaseLatency) / wait);
        return new StepOutcome(served, offered - served, served > 0 ? over : 0, BaseLatency + wait, u);
    }

    /// <summary>One start-up time in seconds, drawn from <paramref name="rng"/>.</summary>
    public double SampleStartDelay(Random rng)
    {
        if (StartDelaySigma == 0) return StartDelayMedian;
        // Box–Muller; 1 − NextDouble() keeps the logarithm finite.
        double z = Math.Sqrt(-2 * Math.Log(1 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble());
        return StartDelayMedian * Math.Exp(StartDelaySigma * z);
    }
}
