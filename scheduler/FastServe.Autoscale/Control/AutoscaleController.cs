using System.Diagnostics;
using FastServe.Autoscale.Actuators;

namespace FastServe.Autoscale.Control;

/// <summary>
/// One tick of <c>fastserve autoscale</c>, for its event log (<c>--json</c>) and metrics.
/// <para><see cref="Action"/>: <c>up</c> or <c>down</c> when the actuator was asked for <see cref="ScaleDecision.Desired"/>
/// replicas, <c>none</c> when the count stays, <c>hold</c> when there was nothing to decide from (no signal, or the
/// actuator could not say the fleet's size: the count is left as it is, as Knative does without metrics), and
/// <c>failed</c> when the actuator refused the change (<see cref="ErrorCode"/> says why; the next tick tries again).</para>
/// </summary>
public readonly record struct AutoscaleTick(TimeSpan At, string Action, FleetObservation? Observation, ScaleDecision? Decision,
    FleetSize? SizeAfter, int Sources, string? ErrorCode, string? Error);

/// <summary>
/// The autoscaler's loop: every tick, read the routers' load (<see cref="IFleetSignal"/>) and the actuator's count of
/// ready and starting replicas, let <see cref="AutoscalePolicy"/> decide, and ask the actuator for the result. The
/// actuator's own count is the truth for ready and starting (routers see a new replica a little later, and never one
/// that is still starting); for <c>dry-run</c>, which has none, the routers' ready count stands in.
/// <para>Single-threaded: <see cref="TickAsync"/> calls never overlap (<see cref="RunAsync"/> makes them in turn).</para>
/// </summary>
public sealed class AutoscaleController(AutoscalePolicy policy, IFleetSignal signal, IReplicaActuator actuator, Action<AutoscaleTick> emit,
    Func<TimeSpan>? clock = null)
{
    private readonly long _origin = Stopwatch.GetTimestamp();
    private readonly Func<TimeSpan> _clock = clock ?? (() => TimeSpan.Zero);
    private readonly bool _realClock = clock is null;

    private TimeSpan Now => _realClock ? Stopwatch.GetElapsedTime(_origin) : _clock();

    /// <summary>Ticks every <paramref name="interval"/> until <paramref name="ct"/> is cancelled; a tick that overruns
    /// the interval delays the next, never overlaps it.</summary>
    public async Task RunAsync(TimeSpan interval, CancellationToken ct)
    {
        using var timer = new PeriodicTimer(interval);
        do
        {
            await TickAsync(ct).ConfigureAwait(false);
        }
        while (await timer.WaitForNextTickAsync(ct).ConfigureAwait(false));
    }

    /// <summary>One read, decision and action; the outcome is also passed to the event callback.</summary>
    public async Task<AutoscaleTick> TickAsync(CancellationToken ct)
    {
        TimeSpan at = Now;
        var seen = await actuator.ObserveAsync(ct).ConfigureAwait(false);
        if (!seen.Ok) return Emit(new AutoscaleTick(at, "hold", null, null, seen.Size, 0, seen.ErrorCode, seen.Error));
        var read = await signal.ReadAsync(ct).ConfigureAwait(false);
        if (read.Reading is not { } s)
        {
            // No signal, no decision; but the bounds hold regardless, and a fleet below its minimum is started, which
            // is also how it starts at all: routers publish no metrics before a replica is ready.
            int min = policy.Options.MinReplicas;
            if (seen.Size is { } have && have.Current < min)
            {
                var floor = new ScaleDecision(min, have.Current, 0, 0, 0, policy.Panicking, $"no signal ({read.ErrorCode}); below min replicas {min}");
                var up = await actuator.ScaleAsync(min, CancellationToken.None).ConfigureAwait(false);
                return Emit(new AutoscaleTick(at, up.Ok ? "up" : "failed", null, floor, up.Size ?? have, 0, up.ErrorCode ?? read.ErrorCode, up.Error ?? read.Error));
            }
            return Emit(new AutoscaleTick(at, "hold", null, null, seen.Size, 0, read.ErrorCode, read.Error));
        }

        var size = seen.Size ?? new FleetSize(s.Ready, 0);
        var obs = new FleetObservation(at, size.Ready, size.Starting, s.Concurrency, s.RefusedPerSecond, s.ServiceSeconds);
        var d = policy.Decide(obs);
        if (d.Desired == size.Current) return Emit(new AutoscaleTick(at, "none", obs, d, size, s.Sources, null, null));

        // Once decided, the action is not cancelled by a stop: a scale the API server applied must be reported, and a
        // stop mid-request would drop the event while the fleet changed (the actuators bound their own requests).
        var done = await actuator.ScaleAsync(d.Desired, CancellationToken.None).ConfigureAwait(false);
        string action = !done.Ok ? "failed" : d.Desired > size.Current ? "up" : "down";
        return Emit(new AutoscaleTick(at, action, obs, d, done.Size ?? size, s.Sources, done.ErrorCode, done.Error));
    }

    private AutoscaleTick Emit(AutoscaleTick t)
    {
        emit(t);
        return t;
    }
}
