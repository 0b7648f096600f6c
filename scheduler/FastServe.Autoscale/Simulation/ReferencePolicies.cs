namespace FastServe.Autoscale.Simulation;

/// <summary>Static provisioning: always enough replicas for the trace's peak at full capacity.</summary>
public sealed class StaticPolicy(LoadTrace trace, ReplicaModel model) : IScalePolicy
{
    private readonly int _replicas = Math.Max(1, (int)Math.Ceiling(trace.Peak(0, trace.DurationSeconds) / model.Capacity - 1e-9));

    public string Name => "static";

    public TimeSpan Interval => TimeSpan.FromSeconds(60);

    public int Decide(in FleetObservation o) => _replicas;
}

/// <summary>A fixed count whatever the load (a fleet that never scales; for tests and what-ifs).</summary>
public sealed class FixedPolicy(int replicas) : IScalePolicy
{
    public string Name => "fixed";

    public TimeSpan Interval => TimeSpan.FromSeconds(60);

    public int Decide(in FleetObservation o) => replicas;
}

/// <summary>The oracle: knows the trace, and every second holds exactly enough replicas, at full capacity, for the
/// peak rate of the next minute. It still pays the start delay; its replica-hours are the yardstick of the report.</summary>
public sealed class OraclePolicy(LoadTrace trace, ReplicaModel model) : IScalePolicy
{
    public string Name => "oracle";

    public TimeSpan Interval => TimeSpan.FromSeconds(1);

    public int Decide(in FleetObservation o)
    {
        double t = o.At.TotalSeconds;
        return Math.Max(1, (int)Math.Ceiling(trace.Peak(t, t + 60) / model.Capacity - 1e-9));
    }
}
