using System.Text.Json;
using FastServe.Client.Load;
using FastServe.Protocol.Stats;
using NUnit.Framework;

namespace FastServe.Tests.Client;

/// <summary>The load generator against a fake replica, and the sweep logic on synthetic results.</summary>
public class LoadGeneratorTests
{
    private static BenchOptions Options(FakeReplica fake) => new()
    {
        Port = fake.Port,
        Connections = 3,
        Warmup = TimeSpan.FromSeconds(0.3),
        Duration = TimeSpan.FromSeconds(1.5),
        DrainLimit = TimeSpan.FromSeconds(2),
        Params = global::FastServe.Protocol.RequestParams.Default with { MaxTokens = 5, IgnoreEos = true },
    };

    [Test]
    public async Task OpenLoopMeasuresEveryRequestOfTheWindow()
    {
        using var fake = new FakeReplica();
        var progress = new List<BenchProgress>();
        var r = await LoadGenerator.RunAsync(Options(fake) with { Rate = 200 }, p => { lock (progress) progress.Add(p); });
        TestContext.Out.WriteLine($"sent {r.Sent}, ok {r.Ok}, e2e p50 {r.EndToEnd.P50:F1} ms p99 {r.EndToEnd.P99:F1}, ttft p50 {r.Ttft.P50:F1}, " +
            $"tpot p50 {r.Tpot.P50:F2}, lag p99 {r.SendLag.P99:F3} ms, {fake.Requests} requests served");
        Assert.That(r.Mode, Is.EqualTo("open"));
        Assert.That(r.TargetRps, Is.EqualTo(200));
        Assert.That(r.Sent, Is.EqualTo(300).Within(60));
        Assert.That(r.Ok, Is.EqualTo(r.Sent));
        Assert.That(r.Errors, Is.Empty);
        Assert.That(r.OfferedRps, Is.EqualTo(200).Within(40));
        Assert.That(r.AchievedRps, Is.EqualTo(r.OfferedRps));
        Assert.That(r.CompletionTokensPerSecond, Is.EqualTo(5 * r.OfferedRps).Within(1e-6));
        Assert.That(r.PromptTokensPerSecond, Is.EqualTo(50 * r.OfferedRps).Within(1e-6));
        Assert.That(r.EndToEnd.Count, Is.EqualTo(r.Ok));
        Assert.That(r.EndToEnd.P50, Is.InRange(19.0, 80.0), "two 10 ms waits in the fake");
        Assert.That(r.Ttft.P50, Is.InRange(9.0, r.EndToEnd.P50));
        Assert.That(r.Tpot.P50, Is.GreaterThan(1.0), "(E2E − TTFT) / 4");
        Assert.That(r.MeetsSlo, Is.True);
        Assert.That(r.ServerMeanUs["first_token"], Is.EqualTo(500));
        Assert.That(fake.Requests, Is.GreaterThanOrEqualTo(r.Sent + 30), "the warm-up's requests were sent too");
        Assert.That(fake.Connections, Is.EqualTo(3));
        Assert.That(fake.LoadQueries, Is.EqualTo(1), "one look at the server's load before starting");
        Assert.That(progress, Is.Not.Empty);
        Assert.That(progress[^1].Fraction, Is.EqualTo(1));
    }

    // A server that serves one request per 20 ms, offered 100 req/s: latency measured from the intended send time
    // grows with the queue, although each request takes 20 ms once served.
    [Test]
    public async Task OpenLoopCountsQueueingAndCutsOffUnfinishedRequests()
    {
        using var fake = new FakeReplica { Serial = true };
        var r = await LoadGenerator.RunAsync(Options(fake) with
        {
            Rate = 100, Warmup = TimeSpan.Zero, Duration = TimeSpan.FromSeconds(1), DrainLimit = TimeSpan.FromSeconds(0.3), SloMs = 200,
        });
        TestContext.Out.WriteLine($"sent {r.Sent}, ok {r.Ok}, unfinished {r.Unfinished}, e2e p50 {r.EndToEnd.P50:F0} ms");
        Assert.That(r.Unfinished, Is.GreaterThan(10));
        Assert.That(r.Errors["unfinished"], Is.EqualTo(r.Unfinished));
        Assert.That(r.Ok + r.Unfinished, Is.EqualTo(r.Sent));
        Assert.That(r.EndToEnd.P99, Is.EqualTo(double.PositiveInfinity));
        Assert.That(r.EndToEnd.P50, Is.GreaterThan(150), "queueing shows up as latency");
        Assert.That(r.MeetsSlo, Is.False);
    }

    [Test]
    public async Task ErrorsAreCountedByStatusName()
    {
        using var fake = new FakeReplica { OverloadEvery = 4, FirstTokenDelay = TimeSpan.FromMilliseconds(1), FinalDelay = TimeSpan.FromMilliseconds(1) };
        var r = await LoadGenerator.RunAsync(Options(fake) with { Rate = 300, Duration = TimeSpan.FromSeconds(1) });
        Assert.That(r.Errors.Keys, Is.EqualTo(new[] { "overloaded" }));
        Assert.That(r.Errors["overloaded"] + r.Ok, Is.EqualTo(r.Sent));
        Assert.That(r.ErrorRate, Is.EqualTo(0.25).Within(0.05));
        Assert.That(r.MeetsSlo, Is.False, "25 % errors is over the 1 % limit");
        Assert.That(r.EndToEnd.Count, Is.EqualTo(r.Ok), "only ok requests have latencies");
    }

    // A server that serves one request in four and refuses the rest: the throttle refuses most requests locally, and the
    // figures keep the three outcomes apart (served, refused by the server, refused by the client).
    [Test]
    public async Task OverloadFiguresSeparateAdmittedRefusedAndThrottled()
    {
        using var fake = new FakeReplica { AcceptEvery = 4, FirstTokenDelay = TimeSpan.FromMilliseconds(2), FinalDelay = TimeSpan.FromMilliseconds(2) };
        var o = Options(fake) with { Rate = 400, Duration = TimeSpan.FromSeconds(1), SettleLimit = TimeSpan.Zero };
        var r = await LoadGenerator.RunAsync(o);
        TestContext.Out.WriteLine($"sent {r.Sent}, ok {r.Ok}, admitted {r.Admitted}, errors {string.Join(", ", r.Errors)}, throttled {r.Throttled}, " +
            $"p99 admitted {r.AdmittedEndToEnd.P99:F2} ms, rejection p50/p99 {r.Rejection.P50:F2}/{r.Rejection.P99:F2} ms, {fake.Requests} reached the fake");
        long refused = r.Errors.GetValueOrDefault("overloaded");
        Assert.That(r.Errors.Keys, Is.SubsetOf(new[] { "overloaded", "throttled" }));
        Assert.That(r.Throttled, Is.GreaterThan(r.Sent / 4), "most of the 3 in 4 the server would refuse are refused locally");
        Assert.That(r.Errors["throttled"], Is.EqualTo(r.Throttled));
        Assert.That(refused, Is.GreaterThan(0));
        Assert.That(r.Ok + refused + r.Throttled, Is.EqualTo(r.Sent));
        Assert.That(r.Admitted, Is.EqualTo(r.Ok), "nothing failed after admission");
        Assert.That(r.AdmittedEndToEnd.Count, Is.EqualTo(r.Ok));
        Assert.That(r.AdmittedEndToEnd.P99, Is.EqualTo(r.EndToEnd.P99), "with no deadline, the admitted are the ok");
        Assert.That(r.Rejection.Count, Is.EqualTo(refused));
        Assert.That(r.Rejection.P50, Is.GreaterThan(0).And.LessThanOrEqualTo(r.Rejection.P99));
        Assert.That(double.IsFinite(r.Rejection.P99), Is.True);
        Assert.That(fake.Requests, Is.LessThan(r.Sent - r.Throttled + 200), "throttled requests never reach the server (the warm-up's do)");

        var off = await LoadGenerator.RunAsync(o with { ClientOptions = new global::FastServe.Client.FastServeClientOptions { AdaptiveThrottling = null } });
        Assert.That(off.Throttled, Is.Zero);
        Assert.That(off.Errors.Keys, Is.EqualTo(new[] { "overloaded" }));
        Assert.That(off.Errors["overloaded"], Is.EqualTo(off.Sent * 3 / 4.0).Within(off.Sent * 0.05 + 2));

        using var ms = new MemoryStream();
        using (var w = new Utf8JsonWriter(ms))
        {
            w.WriteStartObject();
            BenchJson.WriteDocument(w, o, "fake", sweep: false, [r], null);
            w.WriteEndObject();
        }
        using var doc = JsonDocument.Parse(ms.ToArray());
        Assert.That(doc.RootElement.GetProperty("throttle_k").GetDouble(), Is.EqualTo(2));
        var p = doc.RootElement.GetProperty("points")[0];
        Assert.That(p.GetProperty("throttled").GetInt64(), Is.EqualTo(r.Throttled));
        Assert.That(p.GetProperty("admitted").GetInt64(), Is.EqualTo(r.Admitted));
        Assert.That(p.GetProperty("p99_admitted_ms").GetDouble(), Is.EqualTo(Math.Round(r.AdmittedEndToEnd.P99, 4)));
        Assert.That(p.GetProperty("rejections").GetInt64(), Is.EqualTo(refused));
        Assert.That(p.GetProperty("rejection_p50_ms").GetDouble(), Is.EqualTo(Math.Round(r.Rejection.P50, 4)));
        Assert.That(p.GetProperty("rejection_p99_ms").GetDouble(), Is.EqualTo(Math.Round(r.Rejection.P99, 4)));
        Assert.That(p.GetProperty("errors").GetProperty("throttled").GetInt64(), Is.EqualTo(r.Throttled));
    }

    [Test]
    public async Task ClosedLoopKeepsConcurrencyRequestsInFlight()
    {
        using var fake = new FakeReplica();
        var r = await LoadGenerator.RunAsync(Options(fake) with { Concurrency = 4, Duration = TimeSpan.FromSeconds(1) });
        TestContext.Out.WriteLine($"closed: {r.AchievedRps:F0} req/s, e2e p50 {r.EndToEnd.P50:F1} ms, max in flight {fake.MaxInFlight}");
        Assert.That(r.Mode, Is.EqualTo("closed"));
        Assert.That(r.TargetRps, Is.Null);
        Assert.That(fake.MaxInFlight, Is.EqualTo(4));
        Assert.That(r.Errors, Is.Empty);
        // Each worker completes a request per ~20 ms (more with timer slack): at most 4 / 20 ms = 200 req/s.
        Assert.That(r.AchievedRps, Is.InRange(40.0, 205.0));
    }

    [Test]
    public async Task BrokenConnectionsAreCountedAndReestablished()
    {
        using var fake = new FakeReplica();
        var run = LoadGenerator.RunAsync(Options(fake) with { Rate = 200, Warmup = TimeSpan.Zero, Duration = TimeSpan.FromSeconds(1.5) });
        await Task.Delay(600);
        fake.DropConnections();
        var r = await run;
        TestContext.Out.WriteLine($"sent {r.Sent}, ok {r.Ok}, errors {string.Join(", ", r.Errors)}, reconnects {r.Reconnects}");
        Assert.That(r.Errors.ContainsKey("connection_lost"), Is.True);
        Assert.That(r.Reconnects, Is.EqualTo(3));
        Assert.That(r.Ok, Is.GreaterThan(r.Sent / 2), "traffic resumed on the new connections");
        Assert.That(r.Ok + r.Errors.Values.Sum(), Is.EqualTo(r.Sent));
    }

    [Test]
    public void ConnectFailureThrowsAClientException()
    {
        int port;
        using (var fake = new FakeReplica()) port = fake.Port;
        Assert.That(async () => await LoadGenerator.RunAsync(new BenchOptions { Port = port, Rate = 10 }),
            Throws.InstanceOf<FastServe.Client.FastServeClientException>().With.Property("Code").EqualTo("client.connect_failed"));
    }

    // ------------------------------------------------------------------ sweep, on synthetic results

    private static BenchResult Synthetic(double rate, double p99, double errorRate = 0)
    {
        long sent = 1000, ok = (long)Math.Round(sent * (1 - errorRate));
        var lat = new LatencySummary(ok, p99 / 2, p99 / 3, p99 / 2, p99, p99, p99);
        return new BenchResult
        {
            Mode = "open", TargetRps = rate, WindowSeconds = 10, SloMs = 1000, MaxErrorRate = 0.01, Sent = sent, Ok = ok, Good = ok,
            Errors = ok == sent ? new Dictionary<string, long>() : new Dictionary<string, long> { ["overloaded"] = sent - ok },
            ServerMeanUs = new Dictionary<string, double>(), EndToEnd = lat, Ttft = lat, Tpot = lat, SendLag = lat,
        };
    }

    // A system with capacity 700 req/s: P99 is 100 ms below it and 5 s at or above it.
    private static Task<BenchResult> Knee(double rate) => Task.FromResult(Synthetic(rate, rate < 700 ? 100 : 5000));

    [Test]
    public async Task GeometricSweepStopsAfterTwoFailuresThenBisects()
    {
        var s = await Sweep.RunAsync(new SweepOptions { Start = 100, Factor = 2, Refine = 2 }, Knee);
        Assert.That(s.Points.Select(p => p.TargetRps), Is.EqualTo(new double?[] { 100, 200, 400, 800, 1600, 600, 700 }));
        Assert.That(s.Best!.TargetRps, Is.EqualTo(600));
    }

    [Test]
    public async Task ArithmeticSweepStopsAtMax()
    {
        var s = await Sweep.RunAsync(new SweepOptions { Start = 100, Step = 100, Max = 500 }, Knee);
        Assert.That(s.Points.Select(p => p.TargetRps), Is.EqualTo(new double?[] { 100, 200, 300, 400, 500 }));
        Assert.That(s.Best!.TargetRps, Is.EqualTo(500));
    }

    [Test]
    public async Task ALuckyPassAboveAFailureIsNotTheBest()
    {
        var p99 = new Dictionary<double, double> { [100] = 100, [200] = 2000, [400] = 100, [800] = 3000, [1600] = 3000, [150] = 100, [175] = 2000 };
        var s = await Sweep.RunAsync(new SweepOptions { Start = 100, Refine = 2 }, r => Task.FromResult(Synthetic(r, p99[r])));
        Assert.That(s.Points.Select(p => p.TargetRps), Is.EqualTo(new double?[] { 100, 200, 400, 800, 1600, 150, 175 }));
        Assert.That(s.Best!.TargetRps, Is.EqualTo(150));
    }

    [Test]
    public async Task ErrorRateOverTheLimitFailsAPoint()
    {
        Assert.That(Synthetic(10, 100, errorRate: 0.005).MeetsSlo, Is.True);
        Assert.That(Synthetic(10, 100, errorRate: 0.05).MeetsSlo, Is.False);
        Assert.That(Synthetic(10, 1000).MeetsSlo, Is.False, "P99 must be under the SLO, not equal");
        var s = await Sweep.RunAsync(new SweepOptions { Start = 100, Refine = 2 }, r => Task.FromResult(Synthetic(r, 50, r >= 400 ? 0.02 : 0)));
        Assert.That(s.Best!.TargetRps, Is.EqualTo(350));
    }

    [Test]
    public async Task NoPassingRateGivesNoBest()
    {
        var s = await Sweep.RunAsync(new SweepOptions { Start = 1000, Refine = 3 }, Knee);
        Assert.That(s.Points.Select(p => p.TargetRps), Is.EqualTo(new double?[] { 1000, 2000 }));
        Assert.That(s.Best, Is.Null);
    }

    [Test]
    public void PlannerRefusesBadOptionsAndOutOfOrderReports()
    {
        Assert.That(() => new SweepPlanner(new SweepOptions { Factor = 1 }), Throws.InstanceOf<ArgumentOutOfRangeException>());
        Assert.That(() => new SweepPlanner(new SweepOptions { Start = 10, Max = 5 }), Throws.InstanceOf<ArgumentOutOfRangeException>());
        var p = new SweepPlanner(new SweepOptions { Start = 10 });
        Assert.That(p.Next(), Is.EqualTo(10));
        Assert.That(() => p.Next(), Throws.InvalidOperationException);
        Assert.That(() => p.Report(20, true), Throws.InvalidOperationException);
    }

    [Test]
    public void JsonHasEveryFieldAndNullsForNonFiniteNumbers()
    {
        var late = Synthetic(100, double.PositiveInfinity) with { Unfinished = 3 };
        var ok = Synthetic(50, 120);
        using var ms = new MemoryStream();
        using (var w = new Utf8JsonWriter(ms))
        {
            w.WriteStartObject();
            BenchJson.WriteDocument(w, new BenchOptions { Rate = 50 }, "fake", sweep: true, [ok, late], ok);
            w.WriteEndObject();
        }
        using var doc = JsonDocument.Parse(ms.ToArray());
        var root = doc.RootElement;
        Assert.That(root.GetProperty("target").GetString(), Is.EqualTo("127.0.0.1:7700"));
        Assert.That(root.GetProperty("max_tokens").GetInt32(), Is.EqualTo(50));
        Assert.That(root.GetProperty("ignore_eos").GetBoolean(), Is.True);
        Assert.That(root.GetProperty("points").GetArrayLength(), Is.EqualTo(2));
        var p1 = root.GetProperty("points")[1];
        Assert.That(p1.GetProperty("e2e_ms").GetProperty("p99").ValueKind, Is.EqualTo(JsonValueKind.Null));
        Assert.That(p1.GetProperty("unfinished").GetInt64(), Is.EqualTo(3));
        Assert.That(p1.GetProperty("meets_slo").GetBoolean(), Is.False);
        var best = root.GetProperty("best");
        Assert.That(best.GetProperty("target_rps").GetDouble(), Is.EqualTo(50));
        Assert.That(best.GetProperty("e2e_ms").GetProperty("p99").GetDouble(), Is.EqualTo(120));
        Assert.That(best.GetProperty("goodput_rps").GetDouble(), Is.EqualTo(100));
        Assert.That(best.GetProperty("p99_admitted_ms").ValueKind, Is.EqualTo(JsonValueKind.Null), "no samples");
        Assert.That(best.GetProperty("throttled").GetInt64(), Is.Zero);
        Assert.That(root.GetProperty("throttle_k").GetDouble(), Is.EqualTo(2), "on by default");
        foreach (var name in new[] { "mode", "concurrency", "arrival", "burstiness", "profile", "window_s", "slo_ms", "sent", "ok", "good",
                     "offered_rps", "achieved_rps", "error_rate", "prompt_tokens_per_s", "completion_tokens_per_s", "ttft_ms", "tpot_ms",
                     "send_lag_ms", "errors", "server_mean_us", "reconnects", "throttled", "admitted", "p99_admitted_ms", "rejections",
                     "rejection_p50_ms", "rejection_p99_ms" })
            Assert.That(best.TryGetProperty(name, out _), Is.True, name);
    }
}
