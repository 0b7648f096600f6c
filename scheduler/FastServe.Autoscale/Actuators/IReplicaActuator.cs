namespace FastServe.Autoscale.Actuators;

/// <summary>The fleet's size as an actuator sees it.</summary>
/// <param name="Ready">Replicas taking traffic.</param>
/// <param name="Starting">Replicas asked for and not yet ready: capacity on the way, counted by the policy.</param>
/// <param name="Draining">Replicas on their way out (no new requests; finishing what they hold).</param>
public readonly record struct FleetSize(int Ready, int Starting, int Draining = 0)
{
    /// <summary>Ready plus starting: what the policy's decisions are measured against.</summary>
    public int Current => Ready + Starting;
}

/// <summary>
/// What an actuator call found or did. <see cref="Size"/> is null when the actuator cannot know the fleet's size
/// (<c>dry-run</c>: the signal's ready count stands in). A failure carries a stable <see cref="ErrorCode"/> and a
/// message for the event log; the autoscaler keeps running and tries again at its next tick.
/// </summary>
public readonly record struct ActuatorResult(FleetSize? Size, string? ErrorCode = null, string? Error = null)
{
    public bool Ok => ErrorCode is null;
    public static ActuatorResult Of(FleetSize? size) => new(size);
    public static ActuatorResult Failed(string code, string message, FleetSize? size = null) => new(size, code, message);
}

/// <summary>
/// Turns the policy's replica count into replicas (docs/autoscale.md, "Actuators"): <c>local</c> starts and stops
/// <c>fastserve serve</c> processes, <c>k8s</c> sets a Deployment's scale, <c>dry-run</c> only records.
/// <para>
/// Contract: one caller (the autoscale loop), calls never overlap. <see cref="ScaleAsync"/> asks for
/// <c>desired</c> replicas (ready plus starting) and returns once the change is under way, not once it is done;
/// scaling down drains before it stops. Bounds are the caller's, but an actuator never goes outside the min and max
/// it was built with either. Expected failures (an API that refuses, a process that does not start) are results,
/// not exceptions; exceptions are for bugs and for bad configuration at construction
/// (<see cref="AutoscaleException"/>).
/// </para>
/// </summary>
public interface IReplicaActuator : IAsyncDisposable
{
    /// <summary><c>local</c>, <c>k8s</c> or <c>dry-run</c>.</summary>
    string Name { get; }

    /// <summary>What it drives, for logs (a port range, a Deployment).</summary>
    string Description { get; }

    /// <summary>Reads the fleet's size now.</summary>
    ValueTask<ActuatorResult> ObserveAsync(CancellationToken ct);

    /// <summary>Asks for <paramref name="desired"/> replicas; returns the size as the change starts.</summary>
    ValueTask<ActuatorResult> ScaleAsync(int desired, CancellationToken ct);
}

/// <summary>Bad autoscaler configuration or an actuator that cannot be set up, with a stable code
/// (<c>autoscale.*</c>, docs/errors.md).</summary>
public sealed class AutoscaleException(string code, string message, Exception? inner = null) : Exception(message, inner)
{
    public string Code { get; } = code;
}
