namespace FastServe.Autoscale.Simulation;

/// <summary>One policy's run over a trace. Request figures are counts over the run (fluid, so fractional).</summary>
/// <param name="Policy">The policy's <see cref="IScalePolicy.Name"/>.</param>
/// <param name="Offered">Requests offered.</param>
/// <param name="WithinSlo">Served within the SLO.</param>
/// <param name="OverSlo">Served, but over the SLO.</param>
/// <param name="Rejected">Refused for load.</param>
/// <param name="ReplicaHours">Replica time paid for: starting, ready and draining, in hours.</param>
/// <param name="ScaleEvents">Decisions that changed the replica count.</param>
/// <param name="Reversals">Scale events in the opposite direction to the previous one, within 5 minutes of it.</param>
/// <param name="MaxReplicas">Most replicas (ready plus starting) at any time.</param>
public sealed record FleetRunResult(string Policy, double Offered, double WithinSlo, double OverSlo, double Rejected,
    double ReplicaHours, int ScaleEvents, int Reversals, int MaxReplicas)
{
    public double WithinSloFraction => Offered > 0 ? WithinSlo / Offered : 1;

    public double OverSloFraction => Offered > 0 ? OverSlo / Offered : 0;

    public double RejectedFraction => Offered > 0 ? Rejected / Offered : 0;
}
