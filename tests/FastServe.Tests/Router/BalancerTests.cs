using NUnit.Framework;
using FastServe.Protocol;
using FastServe.Router;
using static FastServe.Tests.Router.RouterTestKit;

namespace FastServe.Tests.Router;

/// <summary>
/// Pick shares of each policy over 200k seeded picks against the shares the rule implies exactly. A share's standard
/// error at 200k picks is at most 0.0011, so the 0.005 tolerance is over four of them: a correct rule passes every
/// seed, a rule off by a few percent fails.
/// </summary>
[TestFixture]
public sealed class BalancerTests
{
    private const int Picks = 200_000;
    private const double Tol = 0.005;

    private static void AssertShares(double[] measured, double[] expected, string what)
    {
        TestContext.Out.WriteLine($"{what}: measured {Fmt(measured)} | exact {Fmt(expected)}");
        for (int i = 0; i < expected.Length; i++)
            Assert.That(measured[i], Is.EqualTo(expected[i]).Within(Tol), $"{what}: endpoint {i}");
    }

    [TestCase(new double[] { 1, 1, 1 }, new[] { 0, 1, 2 }, TestName = "P2c_EqualWeights_DistinctScores")]
    [TestCase(new double[] { 1, 1, 1 }, new[] { 0, 0, 5 }, TestName = "P2c_EqualWeights_Tie")]
    [TestCase(new double[] { 1, 2, 3 }, new[] { 3, 2, 1 }, TestName = "P2c_Weighted_HeavierLessLoaded")]
    [TestCase(new double[] { 3, 1, 1, 1 }, new[] { 2, 0, 1, 1 }, TestName = "P2c_Weighted_HeavyButBusy")]
    public void PowerOfTwoMatchesTheExactShares(double[] weights, int[] inFlight)
    {
        var o = Options();
        var set = weights.Select((w, i) => Ready(o, $"10.0.0.{i + 1}:7700", w, inFlight: inFlight[i])).ToArray();
        var b = new Balancer(BalancePolicy.PowerOfTwo, new Random(11));
        var measured = Shares(b, set, T0 + Ms(10_000), Picks);
        AssertShares(measured, PowerOfTwoShares(weights, [.. inFlight.Select(x => (double)x)]), "p2c");
    }

    [Test]
    public void PowerOfTwoCountsTheQueueOfAFreshReportOnly()
    {
        var o = Options();
        // Same router in-flight; endpoint 0's report says 4 queued. Fresh: it scores 4, and loses every pair.
        var set = new[] { Ready(o, "10.0.0.1:1", queued: 4), Ready(o, "10.0.0.2:1"), Ready(o, "10.0.0.3:1") };
        var b = new Balancer(BalancePolicy.PowerOfTwo, new Random(3));
        var fresh = Shares(b, set, T0 + Ms(100), Picks);
        AssertShares(fresh, PowerOfTwoShares([1, 1, 1], [4, 0, 0]), "p2c fresh report");
        // 300 ms later the report is stale (fresh for 200 ms): all score 0, a three-way tie.
        var stale = Shares(b, set, T0 + Ms(300), Picks);
        AssertShares(stale, [1 / 3.0, 1 / 3.0, 1 / 3.0], "p2c stale report");
    }

    [Test]
    public void PowerOfTwoDrawsBySlowStartWeight()
    {
        var o = Options(slowStartMs: 5000);
        long now = T0 + Ms(20_000);
        // Endpoint 2 became ready 2.5 s ago: factor 0.1 + 0.9 × 0.5 = 0.55. All idle: ties, so only the draw matters.
        var set = new[] { Ready(o, "10.0.0.1:1", readyAt: T0), Ready(o, "10.0.0.2:1", readyAt: T0), Ready(o, "10.0.0.3:1", readyAt: now - Ms(2500)) };
        Assert.That(set[2].EffectiveWeight(now), Is.EqualTo(0.55).Within(1e-9));
        var b = new Balancer(BalancePolicy.PowerOfTwo, new Random(5));
        AssertShares(Shares(b, set, now, Picks), PowerOfTwoShares([1, 1, 0.55], [0, 0, 0]), "p2c slow start");
    }

    [Test]
    public void RandomDrawsInProportionToWeight()
    {
        var o = Options();
        var set = new[] { Ready(o, "10.0.0.1:1", 1), Ready(o, "10.0.0.2:1", 2), Ready(o, "10.0.0.3:1", 5, inFlight: 50) };
        var b = new Balancer(BalancePolicy.Random, new Random(7));
        AssertShares(Shares(b, set, T0 + Ms(1000), Picks), [1 / 8.0, 2 / 8.0, 5 / 8.0], "random");
    }

    [Test]
    public void RoundRobinGivesExactWeightedCountsInterleaved()
    {
        var o = Options();
        var set = new[] { Ready(o, "10.0.0.1:1", 1), Ready(o, "10.0.0.2:1", 2), Ready(o, "10.0.0.3:1", 3) };
        var b = new Balancer(BalancePolicy.RoundRobin, new Random(1));
        var seq = Enumerable.Range(0, 6000).Select(_ => Array.IndexOf(set, b.Pick(set, T0)!)).ToArray();
        int[] counts = [.. Enumerable.Range(0, 3).Select(i => seq.Count(x => x == i))];
        TestContext.Out.WriteLine($"round-robin counts {string.Join(" ", counts)}; first cycle {string.Join("", seq.Take(6))}");
        Assert.That(counts, Is.EqualTo(new[] { 1000, 2000, 3000 }));
        // Smooth: the heaviest never gets three in a row, and every cycle of 6 has the exact proportions.
        for (int c = 0; c < 1000; c++)
        {
            var cycle = seq.Skip(6 * c).Take(6).ToArray();
            Assert.That(cycle.Count(x => x == 2), Is.EqualTo(3));
        }
        for (int i = 2; i < seq.Length; i++) Assert.That(seq[i] == 2 && seq[i - 1] == 2 && seq[i - 2] == 2, Is.False);
    }

    [Test]
    public void LeastLoadedTakesTheLowestScoreAndSplitsTies()
    {
        var o = Options();
        var set = new[] { Ready(o, "10.0.0.1:1", inFlight: 2), Ready(o, "10.0.0.2:1", inFlight: 1), Ready(o, "10.0.0.3:1", inFlight: 1) };
        var b = new Balancer(BalancePolicy.LeastLoaded, new Random(9));
        AssertShares(Shares(b, set, T0, Picks), [0, 0.5, 0.5], "least-loaded");
    }

    [Test]
    public void OnlyEligibleEndpointsArePickedAndTriedOnesAreAvoidedWhileOthersExist()
    {
        var o = Options();
        var fleet = new Fleet(o);
        var ready = Ready(o, "10.0.0.1:1");
        var draining = Ready(o, "10.0.0.2:1");
        draining.OnLoadReport(Report(ReplicaState.Draining), T0);
        var starting = new Endpoint(EndpointSpec.Parse("10.0.0.3:1"), o);
        starting.OnConnectionUp(default, T0);
        starting.OnLoadReport(Report(ReplicaState.Starting), T0);
        var down = new Endpoint(EndpointSpec.Parse("10.0.0.4:1"), o);
        var other = Ready(o, "10.0.0.5:1");
        var set = new[] { ready, draining, starting, down, other };
        fleet.Set(set);
        var b = new Balancer(BalancePolicy.PowerOfTwo, new Random(2));
        for (int i = 0; i < 2000; i++) Assert.That(b.Pick(set, T0), Is.SameAs(ready).Or.SameAs(other));
        // A retry avoids what it tried while another endpoint is eligible, and falls back to it otherwise.
        for (int i = 0; i < 200; i++) Assert.That(b.Pick(set, T0, [ready]), Is.SameAs(other));
        other.MarkRemoved(T0);
        Assert.That(b.Pick(set, T0, [ready]), Is.SameAs(ready));
        ready.SetCongested(true);
        Assert.That(b.Pick(set, T0), Is.Null, "congested, draining, starting, down and removed endpoints take nothing");
        // As a fallback (the router's endpoints that left the source), a removed endpoint that can serve is picked;
        // draining, starting, down and congested ones still are not.
        for (int i = 0; i < 200; i++) Assert.That(b.Pick(set, T0, leaving: true), Is.SameAs(other));
        other.SetCongested(true);
        Assert.That(b.Pick(set, T0, leaving: true), Is.Null);
    }

    [Test]
    public void MeasuredSpeedScalesTheCostSoASlowReplicaCountsMorePerRequest()
    {
        var o = Options();
        var fast = Ready(o, "10.0.0.1:1", inFlight: 1);
        var slow = Ready(o, "10.0.0.2:1", inFlight: 1);
        var set = new[] { fast, slow };
        foreach (var policy in new[] { BalancePolicy.PowerOfTwo, BalancePolicy.LeastLoaded })
        {
            var b = new Balancer(policy, new Random(5));
            // No speeds yet: equal scores tie, each wins about half.
            Assert.That(Shares(b, set, T0, 4000)[0], Is.EqualTo(0.5).Within(0.04), $"{policy}: unmeasured");
            fast.OnTokenTime(1000);
            slow.OnTokenTime(3000);
            Assert.That(Shares(b, set, T0, 1000)[0], Is.EqualTo(1), $"{policy}: same score, the faster replica");
            // (1 + 1) x 3000 = 6000 against (2 + 1) x 1000 = 3000 and (5 + 1) x 1000 = 6000: a tie again at 5 on the fast one.
            for (int i = 0; i < 4; i++) fast.AddInFlight();
            Assert.That(Shares(b, set, T0, 4000)[0], Is.EqualTo(0.5).Within(0.04), $"{policy}: equal cost");
            fast.AddInFlight();
            Assert.That(Shares(b, set, T0, 1000)[1], Is.EqualTo(1), $"{policy}: the slow replica once the fast one holds more than 3x");
            for (int i = 0; i < 5; i++) fast.RemoveInFlight();
            // Speeds within 5 % are noise: ties stay random.
            slow.OnTokenTime(1000);
            for (int i = 0; i < 40; i++) slow.OnTokenTime(1030);
            Assert.That(Shares(b, set, T0, 4000)[0], Is.EqualTo(0.5).Within(0.04), $"{policy}: speeds within 5 %");
            fast = Ready(o, "10.0.0.1:1", inFlight: 1);
            slow = Ready(o, "10.0.0.2:1", inFlight: 1);
            set = [fast, slow];
        }
    }
}
