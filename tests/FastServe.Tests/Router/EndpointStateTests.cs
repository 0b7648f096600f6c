using NUnit.Framework;
using FastServe.Protocol;
using FastServe.Router;
using static FastServe.Tests.Router.RouterTestKit;

namespace FastServe.Tests.Router;

/// <summary>Endpoint state on a synthetic clock: readiness, slow start, report freshness, draining, outlier ejection
/// with its doubling period and the max-ejected cap, and the fleet's aggregate report.</summary>
[TestFixture]
public sealed class EndpointStateTests
{
    [Test]
    public void ReadyNeedsAConnectionAndAReadyReport()
    {
        var o = Options();
        var e = new Endpoint(EndpointSpec.Parse("10.0.0.1:7700"), o);
        Assert.That(e.Condition(T0), Is.EqualTo(EndpointCondition.Down));
        e.OnLoadReport(Report(), T0);
        Assert.That(e.IsReady, Is.False, "a report without a connection is not readiness");
        e.OnConnectionUp(default, T0);
        e.OnLoadReport(Report(ReplicaState.Starting), T0);
        Assert.That(e.Condition(T0), Is.EqualTo(EndpointCondition.Starting));
        Assert.That(e.IsEligible(T0), Is.False);
        e.OnLoadReport(Report(), T0);
        Assert.That(e.IsEligible(T0), Is.True);
        e.OnLoadReport(Report(ReplicaState.Draining), T0);
        Assert.That(e.Condition(T0), Is.EqualTo(EndpointCondition.Draining));
        Assert.That(e.IsEligible(T0), Is.False, "draining takes no new requests");
        e.OnLoadReport(Report(), T0);
        e.OnConnectionDown(T0);
        Assert.That(e.IsReady, Is.False);
        e.OnConnectionUp(default, T0);
        Assert.That(e.IsReady, Is.False, "after reconnecting, only a fresh report makes it ready again");
    }

    [Test]
    public void SlowStartRampsFromTenPercentToFullAndRestartsAfterAnOutage()
    {
        var o = Options(slowStartMs: 5000);
        var e = Ready(o, "10.0.0.1:7700", weight: 2, readyAt: T0);
        double[] at = [0, 1000, 2500, 5000, 9000];
        double[] expect = [0.2, 2 * (0.1 + 0.9 * 0.2), 2 * 0.55, 2, 2];
        for (int i = 0; i < at.Length; i++)
            Assert.That(e.EffectiveWeight(T0 + Ms(at[i])), Is.EqualTo(expect[i]).Within(1e-9), $"at {at[i]} ms");
        TestContext.Out.WriteLine($"effective weight at {string.Join(", ", at.Select(t => $"{t} ms: {e.EffectiveWeight(T0 + Ms(t)):F3}"))}");
        e.OnConnectionDown(T0 + Ms(10_000));
        Assert.That(e.EffectiveWeight(T0 + Ms(10_000)), Is.Zero);
        e.OnConnectionUp(default, T0 + Ms(11_000));
        e.OnLoadReport(Report(), T0 + Ms(11_000));
        Assert.That(e.EffectiveWeight(T0 + Ms(11_000)), Is.EqualTo(0.2).Within(1e-9), "ramps again from 10 %");
        var off = Ready(Options(slowStartMs: 0), "10.0.0.2:1", weight: 3);
        Assert.That(off.EffectiveWeight(T0), Is.EqualTo(3));
    }

    [Test]
    public void ScoreIsRouterInFlightPlusTheQueueOfAFreshReport()
    {
        var o = Options();
        var e = Ready(o, "10.0.0.1:7700", inFlight: 3, queued: 5);
        Assert.That(e.Score(T0 + Ms(199)), Is.EqualTo(8));
        Assert.That(e.Score(T0 + Ms(201)), Is.EqualTo(3), "a report older than 200 ms no longer counts");
        e.RemoveInFlight();
        Assert.That(e.Score(T0 + Ms(201)), Is.EqualTo(2));

        // The report's estimated wait adds w / (w + 1000): below one request, so it only orders equal counts.
        e.OnLoadReport(new LoadReport(ReplicaState.Ready, 1, 0, 5, 0, 1f, 3000, 64, 0), T0 + Ms(300));
        Assert.That(e.Score(T0 + Ms(300)), Is.EqualTo(2 + 5 + 0.75).Within(1e-12));
        var quick = Ready(o, "10.0.0.2:7700", inFlight: 2, queued: 5);
        quick.OnLoadReport(new LoadReport(ReplicaState.Ready, 1, 0, 5, 0, 1f, 100, 64, 0), T0 + Ms(300));
        Assert.That(quick.Score(T0 + Ms(300)), Is.LessThan(e.Score(T0 + Ms(300))), "the same counts, the shorter wait");
        Assert.That(quick.Score(T0 + Ms(300)), Is.GreaterThan(7), "a wait never counts as much as one more request");
        Assert.That(e.Score(T0 + Ms(501)), Is.EqualTo(2), "a stale report's wait no longer counts either");
    }

    [Test]
    public void AReplicaThatLeftAfterDrainingIsNotEjectedForFailingToReconnect()
    {
        var o = Options();
        var fleet = new Fleet(o);
        var set = new[] { Ready(o, "10.0.0.1:1"), Ready(o, "10.0.0.2:1"), Ready(o, "10.0.0.3:1") };
        fleet.Set(set);
        var e = set[0];
        e.OnLoadReport(Report(ReplicaState.Draining), T0);
        e.OnConnectionDown(T0);
        Assert.That(e.ExitedAfterDrain, Is.True);
        for (int i = 0; i < 20; i++) Assert.That(fleet.RecordError(e, T0), Is.False, "connect failures after a drain are no fault");
        Assert.That(e.IsEjected(T0), Is.False);
        // Back up (a new replica at the address): errors count again.
        e.OnConnectionUp(default, T0);
        Assert.That(e.ExitedAfterDrain, Is.False);
        for (int i = 0; i < 4; i++) Assert.That(fleet.RecordError(e, T0), Is.False);
        Assert.That(fleet.RecordError(e, T0), Is.True);
        // A connection lost while ready (a crash, not a drain) counts.
        var f = set[1];
        f.OnConnectionDown(T0);
        Assert.That(f.ExitedAfterDrain, Is.False);
    }

    [Test]
    public void FiveConsecutiveErrorsEjectForAPeriodThatDoublesUpToTheCap()
    {
        var o = Options();
        var fleet = new Fleet(o);
        var set = new[] { Ready(o, "10.0.0.1:1"), Ready(o, "10.0.0.2:1"), Ready(o, "10.0.0.3:1") };
        fleet.Set(set);
        var e = set[0];
        long now = T0;
        for (int i = 0; i < 4; i++) Assert.That(fleet.RecordError(e, now), Is.False);
        Fleet.RecordSuccess(e);
        for (int i = 0; i < 4; i++) Assert.That(fleet.RecordError(e, now), Is.False, "a success ended the run");
        Assert.That(fleet.RecordError(e, now), Is.True, "the fifth in a row ejects");
        var periods = new List<double>();
        for (int k = 0; k < 7; k++)
        {
            Assert.That(e.IsEligible(now), Is.False);
            Assert.That(e.Condition(now), Is.EqualTo(EndpointCondition.Ejected));
            Assert.That(fleet.RecordError(e, now + Ms(1)), Is.False, "errors while ejected do not count");
            double ms = (e.EjectedUntil - now) * 1000.0 / System.Diagnostics.Stopwatch.Frequency;
            periods.Add(ms);
            now = e.EjectedUntil;
            Assert.That(e.IsEligible(now), Is.True, "back when the period ends");
            for (int i = 0; i < 5; i++) fleet.RecordError(e, now);
        }
        TestContext.Out.WriteLine($"ejection periods (ms): {string.Join(", ", periods.Select(p => p.ToString("F0")))}");
        Assert.That(periods, Is.EqualTo(new double[] { 1000, 2000, 4000, 8000, 16000, 30000, 30000 }).Within(1.0));
        // Eight ejections so far. Five quiet cap-long stretches (150 s) take the level from 8 to 3, so the next
        // ejection is the fourth step of the ladder: 8 s.
        Assert.That(e.EjectionLevel, Is.EqualTo(8));
        now = e.EjectedUntil + Ms(150_000);
        for (int i = 0; i < 5; i++) fleet.RecordError(e, now);
        Assert.That((e.EjectedUntil - now) * 1000.0 / System.Diagnostics.Stopwatch.Frequency, Is.EqualTo(8000).Within(1.0));
    }

    [Test]
    public void NeverMoreThanTheMaxEjectedShareIsEjected()
    {
        var o = Options(maxEjectedPercent: 50);
        var fleet = new Fleet(o);
        var set = new[] { Ready(o, "10.0.0.1:1"), Ready(o, "10.0.0.2:1"), Ready(o, "10.0.0.3:1") };
        fleet.Set(set);
        Assert.That(fleet.MaxEjected, Is.EqualTo(1), "50 % of 3, rounded down");
        for (int i = 0; i < 5; i++) fleet.RecordError(set[0], T0);
        Assert.That(set[0].IsEjected(T0), Is.True);
        for (int i = 0; i < 8; i++) Assert.That(fleet.RecordError(set[1], T0), Is.False);
        Assert.That(set[1].IsEjected(T0), Is.False, "the cap keeps the second one in");
        Assert.That(fleet.EjectedCount(T0), Is.EqualTo(1));
        // Once the first is back, the second's run (still counting) ejects it at its next error.
        long later = set[0].EjectedUntil;
        Assert.That(fleet.RecordError(set[1], later), Is.True);
        Assert.That(fleet.EjectedCount(later), Is.EqualTo(1));
        // A single endpoint is never ejected at 50 %.
        var solo = new Fleet(o);
        var only = Ready(o, "10.0.0.9:1");
        solo.Set([only]);
        for (int i = 0; i < 20; i++) solo.RecordError(only, T0);
        Assert.That(only.IsEligible(T0), Is.True);
    }

    [Test]
    public void AggregateReportSumsTheFleet()
    {
        var o = Options();
        var fleet = new Fleet(o);
        var a = Ready(o, "10.0.0.1:1");
        var b = Ready(o, "10.0.0.2:1");
        a.OnLoadReport(new LoadReport(ReplicaState.Ready, 2, 10, 4, 14, 0.5f, 30, 64, 5), T0);
        b.OnLoadReport(new LoadReport(ReplicaState.Draining, 1, 3, 1, 4, 0.9f, 10, 32, 0), T0);
        fleet.Set([a, b]);
        var r = fleet.Aggregate(T0 + Ms(20), routerDraining: false);
        Assert.That(r.State, Is.EqualTo(ReplicaState.Ready));
        Assert.That((r.Workers, r.Running, r.Queued, r.InFlight, r.MaxRunning), Is.EqualTo((3, 13, 5, 18, 96)));
        Assert.That(r.KvFreeFraction, Is.EqualTo(0.7f).Within(1e-6));
        Assert.That(r.EstimatedWaitMs, Is.EqualTo(30), "the wait of the eligible endpoint");
        Assert.That(r.AgeMs, Is.EqualTo(25));
        Assert.That(fleet.Aggregate(T0, routerDraining: true).State, Is.EqualTo(ReplicaState.Draining));
        a.OnLoadReport(Report(ReplicaState.Starting), T0);
        Assert.That(fleet.Aggregate(T0, false).State, Is.EqualTo(ReplicaState.Starting), "connected and starting, none eligible");
        a.OnLoadReport(Report(ReplicaState.Draining), T0);
        Assert.That(fleet.Aggregate(T0, false).State, Is.EqualTo(ReplicaState.Unavailable), "every endpoint draining");
        a.OnConnectionDown(T0);
        b.OnConnectionDown(T0);
        Assert.That(fleet.Aggregate(T0, false).State, Is.EqualTo(ReplicaState.Unavailable));
    }
}
