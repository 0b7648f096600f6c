namespace FastServe.Autoscale.Simulation;

/// <summary>
/// A scaling policy the fleet simulator can drive: every <see cref="Interval"/> of simulated time it gets the fleet's
/// observation and answers the replica count (ready plus starting) it wants. Implementations keep their own history;
/// one instance serves one run.
/// </summary>
public interface IScalePolicy
{
    /// <summary>Short name for the report (<c>autoscale</c>, <c>hpa</c>, <c>kpa</c>, <c>static</c>, <c>oracle</c>).</summary>
    string Name { get; }

    /// <summary>Simulated time between decisions.</summary>
    TimeSpan Interval { get; }

    /// <summary>The replica count wanted after this observation (the simulator starts or drains the difference).</summary>
    int Decide(in FleetObservation o);
}

/// <summary>Runs an <see cref="AutoscalePolicy"/> (this project's, or one configured as Knative's KPA).</summary>
public sealed class AutoscaleAdapter(string name, AutoscaleOptions options, TimeSpan? interval = null) : IScalePolicy
{
    private readonly AutoscalePolicy _policy = new(options);

    public string Name => name;

    public TimeSpan Interval { get; } = interval ?? TimeSpan.FromSeconds(2);

    public int Decide(in FleetObservation o) => _policy.Decide(o).Desired;

    /// <summary>Knative KPA's defaults on the same policy: no scale-down stabilization beyond the stable window, no
    /// per-minute down limit, scale-up bounded only by 1000×, no tolerance band.</summary>
    public static AutoscaleOptions KpaOptions(AutoscaleOptions baseOptions) => baseOptions with
    {
        ScaleDownStabilization = TimeSpan.Zero,
        MaxScaleDownPerMinute = 1,
        MaxScaleUpFactor = 1000,
        Tolerance = 0,
    };
}
