namespace FastServe.Autoscale.Simulation;

/// <summary>
/// The Kubernetes HPA v2 with its default behaviour, on a concurrency metric with an average-value target
/// (evaluated every 15 s by the controller manager): desired = ⌈demand ÷ target⌉, no change within a 10 % tolerance
/// of the current count; up at once (no up-stabilization) by at most max(+4 pods, +100 %) per 15 s; down only to the
/// highest recommendation of the last 300 s (then by up to 100 % per 15 s). Demand is fed the same as the
/// autoscaler's (concurrency plus refusals by Little's law), so the comparison is of the algorithms, not the metrics.
/// </summary>
public sealed class HpaPolicy(double targetConcurrency, int minReplicas = 1, int maxReplicas = 100_000) : IScalePolicy
{
    private readonly Queue<(TimeSpan At, int Desired)> _recommendations = new();

    public string Name => "hpa";

    public TimeSpan Interval => TimeSpan.FromSeconds(15);

    public int Decide(in FleetObservation o)
    {
        int current = o.Ready + o.Starting;
        double demand = Math.Max(0, o.Concurrency) + Math.Max(0, o.RefusedPerSecond) * Math.Max(0, o.ServiceSeconds);
        int desired = (int)Math.Ceiling(demand / targetConcurrency - 1e-9);
        if (current > 0 && Math.Abs(demand / (targetConcurrency * current) - 1) <= 0.1) desired = current;
        desired = Math.Clamp(desired, minReplicas, maxReplicas);
        _recommendations.Enqueue((o.At, desired));
        while (_recommendations.Peek().At < o.At - TimeSpan.FromSeconds(300)) _recommendations.Dequeue();
        if (desired > current) return Math.Min(desired, Math.Max(current + 4, 2 * current));
        if (desired < current)
        {
            int floor = desired;
            foreach (var r in _recommendations) floor = Math.Max(floor, r.Desired);
            return Math.Min(floor, current);
        }
        return current;
    }
}
