using FastServe.Autoscale;
using FastServe.Autoscale.Actuators;
using FastServe.Autoscale.Control;
using NUnit.Framework;

namespace FastServe.Tests.Autoscale;

/// <summary>The autoscale loop on a synthetic clock with a scripted signal and a recording actuator: what it reads,
/// what it asks for, and when it holds.</summary>
public class AutoscaleControllerTests
{
    private sealed class ScriptedSignal : IFleetSignal
    {
        public SignalResult Next = new(null, "autoscale.signal_unavailable", "down");
        public int Reads;
        public string Description => "scripted";
        public Task<SignalResult> ReadAsync(CancellationToken ct) { Reads++; return Task.FromResult(Next); }
        public void Dispose() { }
    }

    /// <summary>Applies scale requests at once as starting replicas; <see cref="Ready"/> is moved by the test.</summary>
    private sealed class FakeActuator : IReplicaActuator
    {
        public int Ready, Starting;
        public ActuatorResult? ObserveFailure, ScaleFailure;
        public readonly List<int> Asked = [];
        public string Name => "fake";
        public string Description => "fake";
        public ValueTask<ActuatorResult> ObserveAsync(CancellationToken ct) =>
            ValueTask.FromResult(ObserveFailure ?? ActuatorResult.Of(new FleetSize(Ready, Starting)));
        public ValueTask<ActuatorResult> ScaleAsync(int desired, CancellationToken ct)
        {
            Asked.Add(desired);
            if (ScaleFailure is { } f) return ValueTask.FromResult(f);
            if (desired > Ready + Starting) Starting = desired - Ready;
            else { Ready = Math.Min(Ready, desired); Starting = desired - Ready; }
            return ValueTask.FromResult(ActuatorResult.Of(new FleetSize(Ready, Starting)));
        }
        public ValueTask DisposeAsync() => ValueTask.CompletedTask;
    }

    private static (AutoscaleController C, ScriptedSignal S, FakeActuator A, List<AutoscaleTick> Ticks, Func<TimeSpan, TimeSpan> Advance) Make(int min = 1, int max = 10, IReplicaActuator? actuator = null)
    {
        var s = new ScriptedSignal();
        var a = new FakeActuator();
        var ticks = new List<AutoscaleTick>();
        TimeSpan now = TimeSpan.Zero;
        var policy = new AutoscalePolicy(new AutoscaleOptions { MinReplicas = min, MaxReplicas = max, TargetConcurrency = 10 });
        var c = new AutoscaleController(policy, s, actuator ?? a, ticks.Add, () => now);
        return (c, s, a, ticks, d => now += d);
    }

    private static SignalResult Load(int ready, double concurrency, double refused = 0, double service = 0) =>
        new(new SignalReading(ready, concurrency, refused, service, 1));

    /// <summary>Like the API server: the scale is applied when the request arrives; the answer comes when released.</summary>
    private sealed class SlowActuator : IReplicaActuator
    {
        public readonly TaskCompletionSource Entered = new(TaskCreationOptions.RunContinuationsAsynchronously);
        public readonly TaskCompletionSource Release = new(TaskCreationOptions.RunContinuationsAsynchronously);
        public int Applied = 1;
        public string Name => "slow";
        public string Description => "slow";
        public ValueTask<ActuatorResult> ObserveAsync(CancellationToken ct) => ValueTask.FromResult(ActuatorResult.Of(new FleetSize(Applied, 0)));
        public async ValueTask<ActuatorResult> ScaleAsync(int desired, CancellationToken ct)
        {
            Applied = desired;
            Entered.SetResult();
            await Release.Task.WaitAsync(ct);
            return ActuatorResult.Of(new FleetSize(1, desired - 1));
        }
        public ValueTask DisposeAsync() => ValueTask.CompletedTask;
    }

    [Test]
    public async Task AStopDuringAScaleStillReportsTheScale()
    {
        var slow = new SlowActuator();
        var (c, s, _, ticks, advance) = Make(actuator: slow);
        s.Next = Load(ready: 1, concurrency: 40);
        advance(TimeSpan.FromSeconds(2));
        using var stop = new CancellationTokenSource();
        var tick = c.TickAsync(stop.Token);
        await slow.Entered.Task;
        stop.Cancel();                 // the stop arrives while the scale request is out
        slow.Release.SetResult();
        var t = await tick;
        Assert.That((t.Action, slow.Applied), Is.EqualTo(("up", 2)), "the applied scale is not dropped by the stop");
        Assert.That(ticks.Single().Action, Is.EqualTo("up"), "and its event is emitted");
    }

    [Test]
    public void WithoutASignalItStartsTheMinimumAndOtherwiseHolds()
    {
        var (c, s, a, ticks, _) = Make(min: 2);
        var t = c.TickAsync(default).Result;
        Assert.That((t.Action, a.Asked.Single(), t.ErrorCode), Is.EqualTo(("up", 2, "autoscale.signal_unavailable")),
            "routers publish nothing before a replica is ready, so the minimum is started without a signal");
        t = c.TickAsync(default).Result;
        Assert.That((t.Action, a.Asked.Count), Is.EqualTo(("hold", 1)), "at the minimum, no signal means no change");
        Assert.That(ticks, Has.Count.EqualTo(2), "every tick is an event");
    }

    [Test]
    public void ScalesOnTheSignalCountingTheActuatorsStartingReplicas()
    {
        var (c, s, a, _, advance) = Make();
        a.Ready = 1;
        s.Next = Load(ready: 1, concurrency: 40);   // panic: 4 wanted ≥ 2 × 1 ready
        advance(TimeSpan.FromSeconds(2));
        var t = c.TickAsync(default).Result;
        Assert.That((t.Action, t.Decision!.Value.Desired, t.Decision.Value.Panic), Is.EqualTo(("up", 2, true)), "at most x2 a decision");
        Assert.That(t.SizeAfter, Is.EqualTo(new FleetSize(1, 1)));
        advance(TimeSpan.FromSeconds(2));
        t = c.TickAsync(default).Result;
        Assert.That(t.Observation!.Value.Starting, Is.EqualTo(1), "the actuator's starting replica is observed");
        Assert.That(a.Asked, Is.EqualTo(new[] { 2, 4 }));
        // They are ready now: 4 replicas carry 40, nothing more is asked.
        a.Ready = 4; a.Starting = 0;
        advance(TimeSpan.FromSeconds(2));
        t = c.TickAsync(default).Result;
        Assert.That((t.Action, a.Asked.Count), Is.EqualTo(("none", 2)));
    }

    [Test]
    public void RefusalsCountAsDemand()
    {
        var (c, s, a, _, advance) = Make();
        a.Ready = 2;
        s.Next = Load(ready: 2, concurrency: 20, refused: 40, service: 0.5);   // 20 + 40 × 0.5 = 40 → 4 replicas
        advance(TimeSpan.FromSeconds(2));
        var t = c.TickAsync(default).Result;
        Assert.That(t.Decision!.Value.Demand, Is.EqualTo(40).Within(1e-9));
        Assert.That(a.Asked.Single(), Is.EqualTo(4));
    }

    [Test]
    public void AnActuatorThatFailsIsReportedAndTriedAgainNextTick()
    {
        var (c, s, a, _, advance) = Make();
        a.Ready = 1;
        s.Next = Load(ready: 1, concurrency: 30);
        a.ScaleFailure = ActuatorResult.Failed("autoscale.k8s_forbidden", "no patch on deployments/scale");
        advance(TimeSpan.FromSeconds(2));
        var t = c.TickAsync(default).Result;
        Assert.That((t.Action, t.ErrorCode), Is.EqualTo(("failed", "autoscale.k8s_forbidden")));
        a.ScaleFailure = null;
        advance(TimeSpan.FromSeconds(2));
        t = c.TickAsync(default).Result;
        Assert.That(t.Action, Is.EqualTo("up"));
        Assert.That(a.Asked, Has.Count.EqualTo(2));

        a.ObserveFailure = ActuatorResult.Failed("autoscale.k8s_unreachable", "connection refused");
        int reads = s.Reads;
        advance(TimeSpan.FromSeconds(2));
        t = c.TickAsync(default).Result;
        Assert.That((t.Action, t.ErrorCode, a.Asked.Count), Is.EqualTo(("hold", "autoscale.k8s_unreachable", 2)), "no size, no decision");
        Assert.That(s.Reads, Is.EqualTo(reads), "the signal is not read when the fleet's size is unknown");
    }

    [Test]
    public void DryRunDecidesFromTheRoutersReadyCountAndChangesNothing()
    {
        var dry = new DryRunActuator();
        var (c, s, _, _, advance) = Make(actuator: dry);
        s.Next = Load(ready: 3, concurrency: 90);
        advance(TimeSpan.FromSeconds(2));
        var t = c.TickAsync(default).Result;
        Assert.That(t.Observation!.Value.Ready, Is.EqualTo(3));
        Assert.That((t.Action, dry.LastDesired), Is.EqualTo(("up", 6)), "panic: 9 wanted ≥ 2 × 3, at most x2");
        s.Next = new SignalResult(null, "autoscale.signal_unavailable", "down");
        t = c.TickAsync(default).Result;
        Assert.That(t.Action, Is.EqualTo("hold"), "dry-run has no count of its own to keep at the minimum");
    }

    [Test]
    public void RunTicksUntilCancelled()
    {
        var (c, s, a, ticks, _) = Make();
        a.Ready = 1;
        s.Next = Load(ready: 1, concurrency: 1);
        using var cts = new CancellationTokenSource(TimeSpan.FromMilliseconds(550));
        Assert.That(async () => await c.RunAsync(TimeSpan.FromMilliseconds(100), cts.Token), Throws.InstanceOf<OperationCanceledException>());
        Assert.That(ticks.Count, Is.InRange(2, 7));
    }
}
