namespace FastServe.Autoscale.Simulation;

/// <summary>
/// The comparison: the same trace and seed under this project's <see cref="AutoscalePolicy"/> (defaults,
/// bounds widened to the fleet's scale), the Kubernetes HPA, Knative's KPA, static provisioning for the peak, and the
/// next-minute oracle whose replica-hours the others are measured against.
/// </summary>
public static class FleetComparison
{
    /// <summary>The five policies, fresh, in report order; <paramref name="autoscale"/> defaults to
    /// <see cref="AutoscaleOptions"/>' defaults with MaxReplicas 100,000.</summary>
    public static IScalePolicy[] Policies(LoadTrace trace, ReplicaModel model, AutoscaleOptions? autoscale = null)
    {
        var o = autoscale ?? new AutoscaleOptions { MaxReplicas = 100_000 };
        return
        [
            new AutoscaleAdapter("autoscale", o),
            new HpaPolicy(o.TargetConcurrency, o.MinReplicas, o.MaxReplicas),
            new AutoscaleAdapter("kpa", AutoscaleAdapter.KpaOptions(o)),
            new StaticPolicy(trace, model),
            new OraclePolicy(trace, model),
        ];
    }

    /// <summary>Runs each policy over the trace with the same seed; <paramref name="progress"/> gets (policy index,
    /// steps done, steps per policy); <paramref name="timelines"/>, when given, one per policy, record each run over
    /// time.</summary>
    public static FleetRunResult[] Run(LoadTrace trace, ReplicaModel model, int seed, IReadOnlyList<IScalePolicy> policies,
        Action<int, long, long>? progress = null, IReadOnlyList<FleetTimeline>? timelines = null)
    {
        var results = new FleetRunResult[policies.Count];
        for (int p = 0; p < policies.Count; p++)
        {
            int index = p;
            results[p] = new FleetSimulator(trace, model, seed).Run(policies[p], progress is null ? null : (d, n) => progress(index, d, n), timelines?[p]);
        }
        return results;
    }
}
