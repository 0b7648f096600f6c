using FastServe.Autoscale;
using NUnit.Framework;

namespace FastServe.Tests.Autoscale;

/// <summary>The autoscaling policy on a synthetic clock, in the manner of Knative's autoscaler tests and the HPA's
/// replica calculator tests: panic in and out, no scale-down in panic, starting replicas counted, stabilization,
/// rate limits, bounds, and refusals counted as demand.</summary>
public class AutoscalePolicyTests
{
    private static readonly TimeSpan Tick = TimeSpan.FromSeconds(2);

    // Target 10 per replica, the default windows (stable 60 s, panic 6 s, scale-down stabilization 300 s).
    private static AutoscalePolicy Policy(int min = 1, int max = 100) =>
        new(new AutoscaleOptions { MinReplicas = min, MaxReplicas = max, TargetConcurrency = 10 });

    // Runs `ticks` decisions with the fleet applying each one at once as ready replicas; returns the last.
    private static ScaleDecision Run(AutoscalePolicy p, ref TimeSpan t, ref int ready, int ticks, double concurrency, double refused = 0, double service = 0)
    {
        ScaleDecision d = default;
        for (int i = 0; i < ticks; i++)
        {
            t += Tick;
            d = p.Decide(new FleetObservation(t, ready, 0, concurrency, refused, service));
            ready = d.Desired;
        }
        return d;
    }

    [Test]
    public void SteadyDemandSettlesAtDemandOverTarget()
    {
        var p = Policy();
        TimeSpan t = TimeSpan.Zero;
        int ready = 10;
        var d = Run(p, ref t, ref ready, 60, concurrency: 100);
        Assert.That((d.Desired, d.Panic), Is.EqualTo((10, false)));
        d = Run(p, ref t, ref ready, 5, concurrency: 104);
        Assert.That(d.Desired, Is.EqualTo(10), "11 wanted is within the 10% tolerance of 10");
    }

    [Test]
    public void ASurgePanicsScalesUpAtMostDoublingAndNeverDownInPanic()
    {
        var p = Policy();
        TimeSpan t = TimeSpan.Zero;
        int ready = 2;
        Run(p, ref t, ref ready, 40, concurrency: 20);
        Assert.That(ready, Is.EqualTo(2));
        // ×5 in one tick: the panic window asks for 10 ≥ 2 × 2 ready.
        var d = Run(p, ref t, ref ready, 1, concurrency: 100);
        Assert.That(d.Panic, Is.True, d.Reason);
        Assert.That(d.Desired, Is.EqualTo(4), "at most x2 a decision");
        d = Run(p, ref t, ref ready, 1, concurrency: 100);
        Assert.That(d.Desired, Is.EqualTo(8));
        d = Run(p, ref t, ref ready, 1, concurrency: 100);
        Assert.That(d.Desired, Is.EqualTo(10));
        // The surge ends: in panic the count holds, however low demand falls.
        d = Run(p, ref t, ref ready, 10, concurrency: 5);
        Assert.That((d.Desired, d.Panic), Is.EqualTo((10, true)), d.Reason);
        // A whole stable window without the panic condition ends it; the stabilization window still holds the count.
        d = Run(p, ref t, ref ready, 30, concurrency: 5);
        Assert.That(d.Panic, Is.False);
        Assert.That(d.Desired, Is.EqualTo(10), d.Reason);
    }

    [Test]
    public void ARiseBelowPanicIsFollowedOnTheShortWindowAndAFallOnlyOnTheStableOne()
    {
        var p = Policy();
        TimeSpan t = TimeSpan.Zero;
        int ready = 10;
        Run(p, ref t, ref ready, 60, concurrency: 100);
        // +50%: not a panic (15 < 2 x 10), yet within the 6 s short window the count follows (to within the 10%
        // tolerance), where the 60 s mean would still ask for about 11.
        var d = Run(p, ref t, ref ready, 4, concurrency: 150);
        Assert.That(d.Panic, Is.False);
        Assert.That(d.Desired, Is.InRange(14, 15), d.Reason);
        Assert.That(d.StableDemand, Is.LessThan(115));
        // Back to 100: the short window falls at once, but the count does not.
        int held = d.Desired;
        d = Run(p, ref t, ref ready, 4, concurrency: 100);
        Assert.That(d.Desired, Is.EqualTo(held), d.Reason);
    }

    [Test]
    public void StartingReplicasCountAsCapacityOnTheWay()
    {
        // Demand for 20 replicas with 10 ready and 10 still starting: nothing more to start, tick after tick.
        var p = Policy();
        TimeSpan t = TimeSpan.Zero;
        ScaleDecision d = default;
        for (int i = 0; i < 30; i++) { t += Tick; d = p.Decide(new FleetObservation(t, 10, 10, 200)); Assert.That(d.Delta, Is.Zero, d.Reason); }
        Assert.That(d.Desired, Is.EqualTo(20));
        // The same demand with nothing starting starts the 10 missing.
        var q = Policy();
        TimeSpan u = TimeSpan.Zero;
        for (int i = 0; i < 30; i++) { u += Tick; d = q.Decide(new FleetObservation(u, 20, 0, 200)); }
        u += Tick;
        Assert.That(q.Decide(new FleetObservation(u, 10, 0, 200)).Delta, Is.EqualTo(10));
    }

    [Test]
    public void ScaleDownWaitsForTheStabilizationWindowThenRemovesAtMostATenthAMinute()
    {
        var p = Policy();
        TimeSpan t = TimeSpan.Zero;
        int ready = 20;
        Run(p, ref t, ref ready, 60, concurrency: 200);
        Assert.That(ready, Is.EqualTo(20));
        // Demand falls to a quarter (not a panic: that only rises). For 300 s the count holds.
        var d = Run(p, ref t, ref ready, 140, concurrency: 50);
        Assert.That(d.Desired, Is.EqualTo(20), d.Reason);
        // Then it comes down, by at most 10% of the fleet (at least one replica) a minute.
        var counts = new List<int>();
        for (int i = 0; i < 600; i++) { counts.Add(Run(p, ref t, ref ready, 1, concurrency: 50).Desired); }
        // The last high recommendation came when the stable mean fell (≤ 60 s after the drop); 300 s after that, down.
        Assert.That(counts.FindIndex(c => c < 20), Is.InRange(0, 45), "it starts down once the window has passed");
        for (int i = 30; i < counts.Count; i++)
            Assert.That(counts[i - 30] - counts[i], Is.LessThanOrEqualTo(Math.Max(1, counts[i - 30] / 10)), $"a minute ending at tick {i}");
        Assert.That(counts[^1], Is.EqualTo(5), "it reaches demand / target in the end");
    }

    [Test]
    public void TheDownRateIsAShareOfTheFleetAsItWasAMinuteAgo()
    {
        // Windows of one tick, no stabilization, no tolerance: only the rate limit holds the count up.
        var p = new AutoscalePolicy(new AutoscaleOptions
        {
            TargetConcurrency = 10, StableWindow = Tick, PanicWindow = Tick, ScaleDownStabilization = TimeSpan.Zero,
            Tolerance = 0, MaxScaleDownPerMinute = 0.5,
        });
        TimeSpan t = TimeSpan.Zero;
        int ready = 8;
        Run(p, ref t, ref ready, 3, concurrency: 80);
        Assert.That(ready, Is.EqualTo(8));
        Assert.That(Run(p, ref t, ref ready, 1, concurrency: 60).Desired, Is.EqualTo(6));
        // Half of the 8 of a minute ago may go: 2 more now (half of the current 6, less the 2 gone, would allow 1).
        var d = Run(p, ref t, ref ready, 1, concurrency: 10);
        Assert.That(d.Desired, Is.EqualTo(4), d.Reason);
        Assert.That(Run(p, ref t, ref ready, 25, concurrency: 10).Desired, Is.EqualTo(4), "the minute's share is spent");
        Assert.That(Run(p, ref t, ref ready, 10, concurrency: 10).Desired, Is.EqualTo(2), "a minute on, half of 4");
    }

    [Test]
    public void RefusalsCountAsDemandByLittlesLaw()
    {
        var p = Policy();
        TimeSpan t = TimeSpan.Zero;
        int ready = 4;
        // 4 replicas hold 40 concurrently and refuse 100 requests/s of 0.5 s each: 50 more in flight were they served.
        var d = Run(p, ref t, ref ready, 40, concurrency: 40, refused: 100, service: 0.5);
        Assert.That(d.Demand, Is.EqualTo(90).Within(1e-9));
        Assert.That(ready, Is.EqualTo(9), d.Reason);
    }

    [Test]
    public void TheCountStaysWithinItsBounds()
    {
        var p = Policy(min: 2, max: 6);
        TimeSpan t = TimeSpan.Zero;
        int ready = 2;
        var d = Run(p, ref t, ref ready, 20, concurrency: 1000);
        Assert.That(d.Desired, Is.EqualTo(6));
        var q = Policy(min: 2, max: 6);
        TimeSpan u = TimeSpan.Zero;
        int r = 3;
        d = Run(q, ref u, ref r, 400, concurrency: 0);
        Assert.That(d.Desired, Is.EqualTo(2), "never below min, even with no demand");
        var z = Policy(min: 0);
        TimeSpan v = TimeSpan.Zero;
        int none = 0;
        d = Run(z, ref v, ref none, 1, concurrency: 3);
        Assert.That((d.Desired, d.Panic), Is.EqualTo((1, true)), "demand with nothing ready panics and starts one");
    }

    [Test]
    public void BadOptionsAreRefusedNamingTheKnob()
    {
        Assert.That(() => new AutoscalePolicy(new AutoscaleOptions { MinReplicas = 5, MaxReplicas = 2 }),
            Throws.ArgumentException.With.Property("ParamName").EqualTo("MinReplicas"));
        Assert.That(() => new AutoscalePolicy(new AutoscaleOptions { StableWindow = TimeSpan.Zero }),
            Throws.ArgumentException.With.Property("ParamName").EqualTo("StableWindow"));
        Assert.That(() => new AutoscalePolicy(new AutoscaleOptions { PanicWindow = TimeSpan.FromSeconds(120) }),
            Throws.ArgumentException.With.Property("ParamName").EqualTo("PanicWindow"));
        Assert.That(() => new AutoscalePolicy(new AutoscaleOptions { TargetConcurrency = 0 }),
            Throws.ArgumentException.With.Property("ParamName").EqualTo("TargetConcurrency"));
        Assert.That(() => new AutoscalePolicy(new AutoscaleOptions { MaxScaleUpFactor = 1 }),
            Throws.ArgumentException.With.Property("ParamName").EqualTo("MaxScaleUpFactor"));
        var p = Policy();
        p.Decide(new FleetObservation(TimeSpan.FromSeconds(10), 1, 0, 1));
        Assert.That(() => p.Decide(new FleetObservation(TimeSpan.FromSeconds(5), 1, 0, 1)), Throws.ArgumentException);
    }
}
