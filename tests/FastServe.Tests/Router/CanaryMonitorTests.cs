using System.Diagnostics;
using NUnit.Framework;
using FastServe.Router.Canary;

namespace FastServe.Tests.Router;

/// <summary>The canary monitor on a synthetic clock: when it stays silent (too few samples, stable no better, within
/// margins), when it rolls back (error rate, P99), how samples leave the window, and its percentiles.</summary>
[TestFixture]
public sealed class CanaryMonitorTests
{
    private static long Ms(long ms) => ms * Stopwatch.Frequency / 1000;

    // A whole number of the default window's tenths (6 s), so bucket edges fall on round times.
    private static readonly long T0 = Ms(60_000) * 1000;

    private static CanaryMonitor Monitor(CanaryOptions? o = null) => new(o ?? new CanaryOptions());

    private static void Add(CanaryMonitor m, string version, int requests, int errors, double seconds, long now)
    {
        for (int i = 0; i < requests; i++) m.Record(version, i < errors, seconds, now);
    }

    // ---------------------------------------------------------------- silence

    [Test]
    public void NothingIsDecidedBelowMinSamplesOnEitherSide()
    {
        var split = TrafficSplit.Parse("stable=95,canary=5");
        var m = Monitor();
        Add(m, "stable", 1000, 0, 0.1, T0);
        Add(m, "canary", 199, 199, 0.1, T0);
        Assert.That(m.Evaluate(split, T0), Is.Empty, "199 canary requests, all failed: not enough to judge");
        Add(m, "canary", 1, 1, 0.1, T0);
        Assert.That(m.Evaluate(split, T0).Select(d => d.Version), Is.EqualTo(new[] { "canary" }), "the 200th is");

        var thinStable = Monitor();
        Add(thinStable, "stable", 199, 0, 0.1, T0);
        Add(thinStable, "canary", 1000, 1000, 0.1, T0);
        Assert.That(thinStable.Evaluate(split, T0), Is.Empty, "199 stable requests: nothing to compare against");
        Add(thinStable, "stable", 1, 0, 0.1, T0);
        Assert.That(thinStable.Evaluate(split, T0), Has.Count.EqualTo(1));
    }

    [Test]
    public void ACanaryNoWorseThanStableOrWithinTheMarginsStays()
    {
        var m = Monitor();
        // Stable is the bad one: 10 % errors, P99 2 s.
        Add(m, "stable", 900, 0, 0.1, T0);
        Add(m, "stable", 100, 100, 2.0, T0);
        Add(m, "better", 500, 0, 0.1, T0);
        // 2.9 % against 1 % is within the 2 % margin ...
        Add(m, "stable2", 1000, 10, 0.2, T0);
        Add(m, "within", 1000, 29, 0.2, T0);
        // ... as is a P99 ×4 that is only 30 ms more, and one 80 ms more that is only ×1.4.
        Add(m, "fast", 1000, 0, 0.010, T0);
        Add(m, "fast-canary", 1000, 0, 0.040, T0);
        Add(m, "slowish", 1000, 0, 0.200, T0);
        Add(m, "slowish-canary", 1000, 0, 0.280, T0);

        Assert.That(m.Evaluate(TrafficSplit.Parse("stable=90,better=10"), T0), Is.Empty);
        Assert.That(m.Evaluate(TrafficSplit.Parse("stable2=90,within=10"), T0), Is.Empty);
        Assert.That(m.Evaluate(TrafficSplit.Parse("fast=90,fast-canary=10"), T0), Is.Empty);
        Assert.That(m.Evaluate(TrafficSplit.Parse("slowish=90,slowish-canary=10"), T0), Is.Empty);
    }

    [Test]
    public void ACanaryAtWeightZeroIsNotJudgedAgain()
    {
        var m = Monitor();
        Add(m, "stable", 1000, 0, 0.1, T0);
        Add(m, "canary", 1000, 500, 0.1, T0);
        var split = TrafficSplit.Parse("stable=95,canary=5");
        Assert.That(m.Evaluate(split, T0), Has.Count.EqualTo(1));
        Assert.That(m.Evaluate(split.WithWeight("canary", 0), T0), Is.Empty);
    }

    // ---------------------------------------------------------------- rollback

    [Test]
    public void AHigherErrorRateRollsBackWithTheNumbersAndAReason()
    {
        var m = Monitor();
        Add(m, "a1b2", 2000, 20, 0.1, T0);         // 1 %
        Add(m, "c3d4", 400, 30, 0.1, T0 + Ms(5000));   // 7.5 %
        Add(m, "e5f6", 400, 10, 0.1, T0);          // 2.5 %: within the margin
        var split = TrafficSplit.Parse("a1b2=90,c3d4=5,e5f6=5");

        var decisions = m.Evaluate(split, T0 + Ms(5000));
        Assert.That(decisions, Has.Count.EqualTo(1));
        var d = decisions[0];
        Assert.That(d.Version, Is.EqualTo("c3d4"));
        Assert.That((d.CanaryErrorRate, d.StableErrorRate), Is.EqualTo((0.075, 0.01)));
        Assert.That((d.CanarySamples, d.StableSamples), Is.EqualTo((400L, 2000L)));
        Assert.That(d.Reason, Is.EqualTo("error rate 7.5 % vs stable 1 % (margin 2 %) over 60 s, 400 vs 2,000 requests"));
    }

    [Test]
    public void AHigherP99RollsBack()
    {
        var m = Monitor();
        Add(m, "stable", 1000, 0, 0.100, T0);
        // 290 at 100 ms and 10 at 400 ms: the 297th of 300 (P99) is at 400 ms.
        Add(m, "canary", 290, 0, 0.100, T0);
        Add(m, "canary", 10, 0, 0.400, T0);
        var decisions = m.Evaluate(TrafficSplit.Parse("stable=95,canary=5"), T0);
        Assert.That(decisions, Has.Count.EqualTo(1));
        var d = decisions[0];
        Assert.That(d.CanaryP99Ms, Is.EqualTo(400).Within(2.5).Percent);
        Assert.That(d.StableP99Ms, Is.EqualTo(100).Within(2.5).Percent);
        Assert.That((d.CanaryErrorRate, d.StableErrorRate), Is.EqualTo((0.0, 0.0)));
        Assert.That(d.Reason, Does.Match(@"^P99 [\d,.]+ ms vs stable [\d,.]+ ms \(limit ×1\.5 and \+50 ms\) over 60 s, 300 vs 1,000 requests$"));

        // 3 slow of 300 leaves the 297th, the P99, at 100 ms: no rollback.
        var m2 = Monitor();
        Add(m2, "stable", 1000, 0, 0.100, T0);
        Add(m2, "canary", 297, 0, 0.100, T0);
        Add(m2, "canary", 3, 0, 0.400, T0);
        Assert.That(m2.Evaluate(TrafficSplit.Parse("stable=95,canary=5"), T0), Is.Empty);
    }

    [Test]
    public void BothRulesFiringGiveOneDecisionWithBothReasons()
    {
        var m = Monitor(new CanaryOptions { MinSamples = 10, WindowMs = 30_000 });
        Add(m, "s", 100, 0, 0.05, T0);
        Add(m, "c", 100, 50, 1.0, T0);
        var d = m.Evaluate(TrafficSplit.Parse("s=1,c=1"), T0).Single();
        Assert.That(d.Reason, Does.Match(@"^error rate 50 % vs stable 0 % \(margin 2 %\); P99 [\d,]+ ms vs stable \d+(\.\d)? ms \(limit ×1\.5 and \+50 ms\) over 30 s, 100 vs 100 requests$"));
    }

    // ---------------------------------------------------------------- the window

    [Test]
    public void SamplesLeaveTheWindowAfterItsSpan()
    {
        var m = Monitor();
        var split = TrafficSplit.Parse("stable=95,canary=5");
        Add(m, "stable", 1000, 0, 0.1, T0);
        Add(m, "canary", 1000, 500, 0.1, T0);
        Assert.That(m.Stats("canary", T0 + Ms(59_999)).Samples, Is.EqualTo(1000), "still in the window's last tenth");
        Assert.That(m.Evaluate(split, T0 + Ms(59_999)), Has.Count.EqualTo(1));
        Assert.That(m.Stats("canary", T0 + Ms(60_000)).Samples, Is.EqualTo(0), "a whole window later: gone");
        Assert.That(m.Evaluate(split, T0 + Ms(60_000)), Is.Empty);

        // Newer good samples outlive older bad ones: the canary recovers without a reset.
        var r = Monitor();
        Add(r, "stable", 1000, 0, 0.1, T0);
        Add(r, "canary", 300, 150, 0.1, T0);
        Add(r, "stable", 1000, 0, 0.1, T0 + Ms(30_000));
        Add(r, "canary", 300, 0, 0.1, T0 + Ms(30_000));
        Assert.That(r.Evaluate(split, T0 + Ms(59_000)), Has.Count.EqualTo(1), "bad and good half and half: 25 %");
        var later = T0 + Ms(60_000);
        Assert.That((r.Stats("canary", later).Samples, r.Stats("canary", later).Errors), Is.EqualTo((300L, 0L)));
        Assert.That(r.Evaluate(split, later), Is.Empty, "the bad half has left the window");
        Assert.That(r.Stats("stable", T0 + Ms(90_000)).Samples, Is.EqualTo(0));
    }

    [Test]
    public void ASampleOlderThanWhatItsBucketHoldsIsDropped()
    {
        var m = Monitor();
        m.Record("v", false, 0.1, T0 + Ms(60_000));
        m.Record("v", true, 0.1, T0);   // lands in the same tenth's slot, a window older: dropped, not mixed in
        m.Record("v", false, 0.1, T0 + Ms(54_000));   // late but inside the window: counted
        Assert.That(m.Stats("v", T0 + Ms(60_000)), Has.Property(nameof(WindowStats.Samples)).EqualTo(2)
            .And.Property(nameof(WindowStats.Errors)).EqualTo(0));
    }

    [Test]
    public void ResetForgetsAVersion()
    {
        var m = Monitor();
        Add(m, "stable", 1000, 0, 0.1, T0);
        Add(m, "canary", 1000, 500, 0.1, T0);
        m.Reset("canary");
        Assert.That(m.Stats("canary", T0), Is.EqualTo(default(WindowStats)));
        Assert.That(m.Stats("stable", T0).Samples, Is.EqualTo(1000));
        Assert.That(m.Evaluate(TrafficSplit.Parse("stable=95,canary=5"), T0), Is.Empty);
    }

    // ---------------------------------------------------------------- stats and percentiles

    [Test]
    public void StatsGivePercentilesWithinTheBucketError()
    {
        var m = Monitor();
        for (int i = 1; i <= 1000; i++) m.Record("v", i % 40 == 0, i / 1000.0, T0);   // 1 … 1000 ms
        var s = m.Stats("v", T0);
        Assert.That((s.Samples, s.Errors, s.ErrorRate), Is.EqualTo((1000L, 25L, 0.025)));
        Assert.That(s.P50Ms, Is.EqualTo(500).Within(5).Percent);
        Assert.That(s.P99Ms, Is.EqualTo(990).Within(5).Percent);
        Assert.That(m.Stats("never", T0), Is.EqualTo(default(WindowStats)));

        foreach (double seconds in new[] { 0.00005, 0.0123, 1.5, 42.0, 599.0 })
        {
            var one = Monitor();
            one.Record("v", false, seconds, T0);
            Assert.That(one.Stats("v", T0).P99Ms, Is.EqualTo(seconds * 1000).Within(seconds < 1e-4 ? 100 : 2.5).Percent, $"{seconds} s");
        }
        // Off the ends: counted, at the ends' values.
        var ends = Monitor();
        ends.Record("v", false, double.NaN, T0);
        ends.Record("v", false, -1, T0);
        ends.Record("v", false, 3600, T0);
        var e = ends.Stats("v", T0);
        Assert.That(e.Samples, Is.EqualTo(3));
        Assert.That(e.P50Ms, Is.LessThan(0.1));
        Assert.That(e.P99Ms, Is.GreaterThanOrEqualTo(600_000));
    }

    [Test]
    public void RecordIsSafeFromManyThreadsAndAllocatesNothingOnceAVersionIsKnown()
    {
        var m = Monitor();
        Parallel.For(0, 4, t => { for (int i = 0; i < 10_000; i++) m.Record("v", i % 10 == 0, 0.001 * (i % 100 + 1), T0 + i); });
        var s = m.Stats("v", T0 + 10_000);
        Assert.That((s.Samples, s.Errors), Is.EqualTo((40_000L, 4_000L)));

        for (int i = 0; i < 100; i++) m.Record("v", false, 0.01, T0);
        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 10_000; i++) m.Record("v", false, 0.01 * i, T0 + Ms(i));
        Assert.That(GC.GetAllocatedBytesForCurrentThread() - before, Is.EqualTo(0));
    }

    [Test]
    public void OptionsOutOfRangeAreRefused()
    {
        Assert.That(() => new CanaryOptions().Validate(), Throws.Nothing);
        Assert.That(() => Monitor(new CanaryOptions { WindowMs = 999 }), Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("WindowMs"));
        Assert.That(() => new CanaryOptions { MinSamples = 0 }.Validate(), Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("MinSamples"));
        Assert.That(() => new CanaryOptions { MaxErrorRateDelta = -0.01 }.Validate(), Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("MaxErrorRateDelta"));
        Assert.That(() => new CanaryOptions { MaxErrorRateDelta = double.NaN }.Validate(), Throws.InstanceOf<ArgumentOutOfRangeException>());
        Assert.That(() => new CanaryOptions { MaxP99Ratio = 0.9 }.Validate(), Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("MaxP99Ratio"));
        Assert.That(() => new CanaryOptions { MinP99DeltaMs = -1 }.Validate(), Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("MinP99DeltaMs"));
    }
}
