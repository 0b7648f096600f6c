using FastServe.Autoscale;
using FastServe.Autoscale.Simulation;
using NUnit.Framework;

namespace FastServe.Tests.Autoscale;

/// <summary>The fleet simulator (docs/autoscale.md): trace shapes and CSV errors, the replica model's accounting,
/// the HPA baseline's limits, and whole runs that static provisioning, a fleet that never scales and the autoscaler
/// must come out of in known ways.</summary>
public class FleetSimulatorTests
{
    private const double H = 3600;
    private static readonly ReplicaModel Model = new();

    // Two hours: 45 min quiet at 20K req/s, a 30-minute ramp to 200K, 15 min at the peak, 30 min back down.
    private static LoadTrace Ramp() => new PiecewiseTrace([(0, 20_000), (45 * 60, 20_000), (75 * 60, 200_000), (90 * 60, 200_000), (120 * 60, 20_000)]);

    [Test]
    public void Daily_HasAQuietNightAMorningRampAMiddayDipAndAnEveningDecline()
    {
        var d = PiecewiseTrace.Daily(20_000, 200_000);
        Assert.That(d.DurationSeconds, Is.EqualTo(24 * H));
        Assert.That(d.Rate(3 * H), Is.EqualTo(20_000));
        Assert.That(d.Rate(7 * H), Is.EqualTo(20_000));
        Assert.That(d.Rate(7.5 * H), Is.EqualTo(180_000).Within(1e-6), "the morning ramp takes 30 minutes");
        Assert.That(d.Rate(15 * H), Is.EqualTo(200_000));
        Assert.That(d.Rate(13 * H), Is.EqualTo(150_000).Within(1e-6), "midday dip");
        Assert.That(d.Rate(20 * H), Is.LessThan(200_000).And.GreaterThan(20_000), "evening decline");
        Assert.That(d.Rate(23.5 * H), Is.EqualTo(20_000));
        Assert.That(d.Peak(0, d.DurationSeconds), Is.EqualTo(200_000));
    }

    [Test]
    public void Spike_DoublesWithinAMinuteHoldsAndReturns()
    {
        var flat = new PiecewiseTrace([(0, 1000), (10 * H, 1000)]);
        var s = new SpikeTrace(flat, 2 * H, factor: 2, riseSeconds: 60, holdSeconds: 300);
        Assert.That(s.Rate(2 * H - 1), Is.EqualTo(1000));
        Assert.That(s.Rate(2 * H + 30), Is.EqualTo(1500).Within(1e-6));
        Assert.That(s.Rate(2 * H + 60), Is.EqualTo(2000).Within(1e-6));
        Assert.That(s.Rate(2 * H + 360), Is.EqualTo(2000).Within(1e-6));
        Assert.That(s.Rate(2 * H + 421), Is.EqualTo(1000));
        Assert.That(s.DurationSeconds, Is.EqualTo(10 * H));
    }

    [Test]
    public void Csv_SkipsHeaderAndCommentsAndInterpolates()
    {
        var t = TraceCsv.Parse("timestamp_seconds,rate\n# recorded\n0,100\n\n10, 300\r\n20,300\n");
        Assert.That(t.DurationSeconds, Is.EqualTo(20));
        Assert.That(t.Rate(5), Is.EqualTo(200).Within(1e-9));
        Assert.That(t.Rate(15), Is.EqualTo(300));
        Assert.That(t.Rate(99), Is.EqualTo(300));
    }

    [TestCase("0,10\nx,5", "line 2")]
    [TestCase("0,10\n5,-1", "line 2")]
    [TestCase("0,10\n5,NaN", "line 2")]
    [TestCase("0,10\n5,1,2", "line 2")]
    [TestCase("0,10\n5,1\n5,2", "line 3")]
    [TestCase("0,10\n5,1\n3,2", "line 3")]
    [TestCase("t,r\n0,1\n-1,2", "line 3")]
    [TestCase("0,10\n9999999999,5", "line 2")]
    [TestCase("0,10", "at least two points")]
    [TestCase("", "at least two points")]
    public void Csv_HostileInputFailsNamingTheLine(string text, string expected)
    {
        var e = Assert.Throws<FormatException>(() => TraceCsv.Parse(text));
        Assert.That(e!.Message, Does.Contain(expected));
    }

    [Test]
    public void ReplicaModel_ServedPlusRefusedIsOffered_RefusalsOnlyPastCapacity()
    {
        foreach (int ready in new[] { 0, 1, 7, 1205 })
            foreach (double offered in new[] { 0.0, 1, 100, 165.9, 166, 167, 1000, 200_000, 400_000 })
            {
                var s = Model.Step(offered, ready);
                Assert.That(s.Served + s.Refused, Is.EqualTo(offered).Within(1e-9), $"{offered} over {ready}");
                double cap = ready * Model.Capacity;
                if (offered <= cap) Assert.That(s.Refused, Is.Zero, $"{offered} over {ready}");
                else Assert.That(s.Refused, Is.EqualTo(offered - cap).Within(1e-9), $"{offered} over {ready}");
                Assert.That(s.Utilization, Is.InRange(0, 1));
            }
    }

    [Test]
    public void ReplicaModel_LatencyRisesWithLoadButStaysWithinTheSloAtCapacity()
    {
        var low = Model.Step(10, 1);
        var half = Model.Step(83, 1);
        var full = Model.Step(166, 1);
        Assert.That(low.MeanLatency, Is.EqualTo(0.45).Within(0.01));
        Assert.That(full.MeanLatency, Is.GreaterThan(half.MeanLatency));
        Assert.That(half.MeanLatency, Is.GreaterThan(low.MeanLatency));
        Assert.That(full.OverSloFraction, Is.GreaterThan(half.OverSloFraction).And.LessThan(1e-3), "issue 16: P99 admitted under 0.8 s at capacity");
        Assert.That((Model with { Slo = 0.5 }).Step(166, 1).OverSloFraction, Is.GreaterThan(0.1), "a tight SLO is missed at capacity");
    }

    [Test]
    public void ReplicaModel_StartDelayIsLognormalAroundTheMedian()
    {
        var rng = new Random(3);
        var xs = Enumerable.Range(0, 4001).Select(_ => Model.SampleStartDelay(rng)).Order().ToArray();
        Assert.That(xs[2000], Is.EqualTo(5).Within(0.25));
        Assert.That(xs[0], Is.GreaterThan(0));
        Assert.That((Model with { StartDelaySigma = 0 }).SampleStartDelay(rng), Is.EqualTo(5));
    }

    [Test]
    public void Hpa_UpByAtMostFourOrDouble_DownOnlyAfterFiveMinutes()
    {
        var hpa = new HpaPolicy(targetConcurrency: 10);
        Assert.That(hpa.Decide(new FleetObservation(TimeSpan.FromSeconds(15), 1, 0, 1000)), Is.EqualTo(5), "+4 pods beats +100 % of 1");
        Assert.That(hpa.Decide(new FleetObservation(TimeSpan.FromSeconds(30), 20, 0, 1000)), Is.EqualTo(40), "+100 % of 20");
        Assert.That(hpa.Decide(new FleetObservation(TimeSpan.FromSeconds(45), 100, 0, 1040)), Is.EqualTo(100), "within the 10 % tolerance");
        Assert.That(hpa.Decide(new FleetObservation(TimeSpan.FromSeconds(60), 100, 0, 100)), Is.EqualTo(100), "held by the 300 s window");
        int last = 0;
        for (int s = 75; s <= 400; s += 15) last = hpa.Decide(new FleetObservation(TimeSpan.FromSeconds(s), 100, 0, 100));
        Assert.That(last, Is.EqualTo(10), "down once the window has only low recommendations");
    }

    [Test]
    public void Static_ForThePeak_RejectsAlmostNothing()
    {
        var trace = Ramp();
        var r = new FleetSimulator(trace, Model, seed: 1).Run(new StaticPolicy(trace, Model));
        Assert.That(r.MaxReplicas, Is.EqualTo(1205));
        Assert.That(r.RejectedFraction, Is.LessThan(1e-6));
        Assert.That(r.WithinSloFraction, Is.GreaterThan(0.999));
        Assert.That(r.ReplicaHours, Is.EqualTo(1205 * 2).Within(1));
        Assert.That(r.ScaleEvents, Is.Zero);
    }

    [Test]
    public void NeverScaling_OneReplica_RejectsMostOfABigLoad()
    {
        var r = new FleetSimulator(Ramp(), Model, seed: 1).Run(new FixedPolicy(1));
        Assert.That(r.RejectedFraction, Is.GreaterThan(0.99));
        Assert.That(r.WithinSloFraction + r.OverSloFraction + r.RejectedFraction, Is.EqualTo(1).Within(1e-9));
    }

    [Test]
    public void SameSeed_SameResult_OtherSeed_OtherStartTimes()
    {
        // Slow starts and little headroom, so that when replicas become ready (the seed's draws) shows in the refusals.
        var trace = Ramp();
        var model = Model with { StartDelayMedian = 60 };
        FleetRunResult Run(int seed) => new FleetSimulator(trace, model, seed).Run(
            new AutoscaleAdapter("autoscale", new AutoscaleOptions { MaxReplicas = 100_000, TargetConcurrency = 80 }));
        var a = Run(7);
        Assert.That(Run(7), Is.EqualTo(a));
        Assert.That(a.RejectedFraction, Is.GreaterThan(0), "the setting does refuse some");
        Assert.That(Run(8).RejectedFraction, Is.Not.EqualTo(a.RejectedFraction));
    }

    [Test]
    public void Autoscaler_TwoHourRamp_MeetsTheSloWithFewerReplicaHoursThanStatic()
    {
        var trace = Ramp();
        var policies = FleetComparison.Policies(trace, Model);
        var results = FleetComparison.Run(trace, Model, seed: 1, policies);
        var auto = results.Single(x => x.Policy == "autoscale");
        var stat = results.Single(x => x.Policy == "static");
        var oracle = results.Single(x => x.Policy == "oracle");
        Assert.That(auto.WithinSloFraction, Is.GreaterThanOrEqualTo(0.99));
        Assert.That(auto.ReplicaHours, Is.LessThan(stat.ReplicaHours));
        Assert.That(oracle.ReplicaHours, Is.LessThan(auto.ReplicaHours), "the oracle is the floor");
        Assert.That(auto.MaxReplicas, Is.GreaterThan(1205), "it runs below capacity per replica, at its target concurrency");
    }
}
