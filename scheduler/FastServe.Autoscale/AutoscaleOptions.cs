namespace FastServe.Autoscale;

/// <summary>
/// Knobs of an <see cref="AutoscalePolicy"/> (docs/autoscale.md). The defaults follow Knative's KPA for the windows
/// and panic, and the Kubernetes HPA for scale-down stabilization. <see cref="Validate"/> refuses an inconsistent set
/// with one <see cref="ArgumentException"/> naming the knob (the CLI maps it to <c>args.invalid_autoscale</c>).
/// </summary>
public sealed record AutoscaleOptions
{
    /// <summary>Fewest replicas, whatever the demand.</summary>
    public int MinReplicas { get; init; } = 1;

    /// <summary>Most replicas, whatever the demand.</summary>
    public int MaxReplicas { get; init; } = 100;

    /// <summary>Concurrency (requests in flight plus queued) one replica should carry: demand ÷ this = replicas wanted.
    /// Below the replica's batch capacity, so that a replica at target still admits at once.</summary>
    public double TargetConcurrency { get; init; } = 48;

    /// <summary>Demand is averaged over this window for the normal (stable) decision.</summary>
    public TimeSpan StableWindow { get; init; } = TimeSpan.FromSeconds(60);

    /// <summary>Demand is also averaged over this short window; when it asks for at least
    /// <see cref="PanicThreshold"/> × the ready replicas, the policy panics.</summary>
    public TimeSpan PanicWindow { get; init; } = TimeSpan.FromSeconds(6);

    /// <summary>Panic when the panic window's demand needs this many times the ready replicas (2 = 200 %).</summary>
    public double PanicThreshold { get; init; } = 2.0;

    /// <summary>Scale down only to the highest count recommended over this window (the HPA's stabilization), so a
    /// dip does not remove replicas a returning load needs.</summary>
    public TimeSpan ScaleDownStabilization { get; init; } = TimeSpan.FromSeconds(300);

    /// <summary>At most this fraction of the replicas (at least one) is removed per minute.</summary>
    public double MaxScaleDownPerMinute { get; init; } = 0.1;

    /// <summary>One decision may grow the fleet (ready plus starting) by at most this factor (at least one replica).</summary>
    public double MaxScaleUpFactor { get; init; } = 2.0;

    /// <summary>Changes smaller than this fraction of the current size are not made (the HPA's tolerance).</summary>
    public double Tolerance { get; init; } = 0.1;

    public void Validate()
    {
        static void Bad(string name, string why) => throw new ArgumentException(why, name);
        if (MinReplicas < 0) Bad(nameof(MinReplicas), "min replicas must be 0 or more");
        if (MaxReplicas < 1 || MaxReplicas > 100_000) Bad(nameof(MaxReplicas), "max replicas must be between 1 and 100000");
        if (MinReplicas > MaxReplicas) Bad(nameof(MinReplicas), $"min replicas ({MinReplicas}) must not exceed max replicas ({MaxReplicas})");
        if (!(TargetConcurrency > 0) || double.IsInfinity(TargetConcurrency)) Bad(nameof(TargetConcurrency), "the target concurrency must be positive");
        if (StableWindow <= TimeSpan.Zero) Bad(nameof(StableWindow), "the stable window must be positive");
        if (PanicWindow <= TimeSpan.Zero || PanicWindow > StableWindow) Bad(nameof(PanicWindow), "the panic window must be positive and at most the stable window");
        if (!(PanicThreshold > 1) || double.IsInfinity(PanicThreshold)) Bad(nameof(PanicThreshold), "the panic threshold must be above 1");
        if (ScaleDownStabilization < TimeSpan.Zero) Bad(nameof(ScaleDownStabilization), "the scale-down stabilization window must not be negative");
        if (!(MaxScaleDownPerMinute > 0 && MaxScaleDownPerMinute <= 1)) Bad(nameof(MaxScaleDownPerMinute), "the scale-down rate must be in (0, 1]");
        if (!(MaxScaleUpFactor > 1) || double.IsInfinity(MaxScaleUpFactor)) Bad(nameof(MaxScaleUpFactor), "the scale-up factor must be above 1");
        if (!(Tolerance >= 0 && Tolerance < 1)) Bad(nameof(Tolerance), "the tolerance must be in [0, 1)");
    }
}
