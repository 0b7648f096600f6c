namespace FastServe.Autoscale.Actuators;

/// <summary>
/// The <c>dry-run</c> actuator: decides and records, changes nothing. It cannot know the fleet's size, so the
/// autoscaler takes the routers' ready count for it (and nothing as starting): each decision is what the policy would
/// ask of the fleet as it is, which is how to try a policy's settings beside a running fleet.
/// </summary>
public sealed class DryRunActuator : IReplicaActuator
{
    /// <summary>The last count asked for (0 before any).</summary>
    public int LastDesired { get; private set; }

    public string Name => "dry-run";

    public string Description => "dry-run: decisions only";

    public ValueTask<ActuatorResult> ObserveAsync(CancellationToken ct) => ValueTask.FromResult(ActuatorResult.Of(null));

    public ValueTask<ActuatorResult> ScaleAsync(int desired, CancellationToken ct)
    {
        LastDesired = desired;
        return ValueTask.FromResult(ActuatorResult.Of(null));
    }

    public ValueTask DisposeAsync() => ValueTask.CompletedTask;
}
