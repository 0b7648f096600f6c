using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Text.Json;
using FastServe.Client;
using FastServe.Protocol;
using FastServe.Router;
using FastServe.Router.Burst;
using FastServe.Router.Canary;
using NUnit.Framework;
using Reply = FastServe.Tests.Router.ScriptedReplica.Reply;
using static FastServe.Tests.Router.RouterRulesTests;

namespace FastServe.Tests.Router;

/// <summary>
/// Models, versions and traffic rules of the router (docs/router.md, "Models, versions and traffic"), in process, in
/// front of scripted replicas that declare a model and version: one pool per model and version, not_found, traffic
/// splits (sticky too), automatic canary rollback, ADMIN and the config file, shadow mirrors and their comparison,
/// cascade tiers, burst modes, and per-pool counters.
/// </summary>
[TestFixture, NonParallelizable]
public sealed class RouterTrafficTests
{
    private const string Token = "s3cret";
    private readonly ConcurrentQueue<string> _log = new();
    private readonly ConcurrentQueue<RouterEvent> _events = new();
    private readonly List<ScriptedReplica> _replicas = [];

    private RouterOptions Opt(CanaryOptions? canary = null, BurstOptions? burst = null, string? config = null, string? shadowLog = null,
        string? defaultModel = null) => new()
    {
        Port = 0,
        SlowStartMs = 0,
        Seed = 5,
        RetryJitterMs = 0,
        AdminToken = Token,
        Canary = canary ?? new CanaryOptions(),
        Burst = burst ?? new BurstOptions(),
        ConfigPath = config,
        ShadowLogPath = shadowLog,
        DefaultModel = defaultModel,
        Log = _log.Enqueue,
        OnEvent = _events.Enqueue,
    };

    private ScriptedReplica Replica(string model, string version, string text = "x")
    {
        var r = new ScriptedReplica($"{model}@{version}") { Model = model, ModelVersion = version, Text = text };
        _replicas.Add(r);
        return r;
    }

    private static async Task<RouterHost> StartWith(RouterOptions o, params ScriptedReplica[] rs)
    {
        var router = await Start(o, Src(rs), rs.Length);
        // The model table is refreshed by the router's timer.
        await Until(() => router.Routes.Pools.Length == rs.Select(r => (r.Model, r.ModelVersion)).Distinct().Count(), "pools known");
        return router;
    }

    private static CompletionRequest Named(string? model, string? version = null, string? key = null, byte priority = 0, int maxTokens = 3, uint deadlineMs = 0) =>
        new() { Prompt = "hi", Params = RequestParams.Default with { MaxTokens = maxTokens, Model = model, ModelVersion = version, RouteKey = key, Priority = priority, DeadlineMs = deadlineMs } };

    [TearDown]
    public void TearDown()
    {
        while (_log.TryDequeue(out var l)) TestContext.Out.WriteLine($"router: {l}");
        _events.Clear();
        foreach (var r in _replicas) r.Dispose();
        _replicas.Clear();
    }

    [Test]
    public async Task EachModelAndVersionIsAPoolAndUnknownNamesAreNotFound()
    {
        var tiny = Replica("gec-tiny", "t1");
        var small = Replica("gec-small", "s1");
        await using var router = await StartWith(Opt(), tiny, small);
        await using var c = await FastServeClient.ConnectAsync("127.0.0.1", router.Port);

        for (int i = 0; i < 10; i++) Assert.That((await c.CompleteAsync(Named("gec-small"))).IsOk);
        Assert.That(small.Requests.Count, Is.EqualTo(10));
        Assert.That(tiny.Requests.Count, Is.Zero);
        Assert.That((await c.CompleteAsync(Named("gec-tiny", "t1"))).IsOk);
        Assert.That(tiny.Requests.Count, Is.EqualTo(1));

        var unknown = await c.CompleteAsync(Named("gec-large"));
        Assert.That(unknown.Status, Is.EqualTo(WireStatus.NotFound));
        Assert.That(unknown.Detail, Is.EqualTo("router.model_not_found"));
        Assert.That(unknown.Retriable, Is.False);
        var badVersion = await c.CompleteAsync(Named("gec-small", "zz"));
        Assert.That((badVersion.Status, badVersion.Detail), Is.EqualTo((WireStatus.NotFound, "router.version_not_found")));
        Assert.That(tiny.Requests.Count + small.Requests.Count, Is.EqualTo(11), "a not_found request reaches no replica");

        // The replica gets the request without the routing fields, so a replica of any 1.x version can serve it.
        Assert.That(small.Payloads.TryPeek(out var p));
        Assert.That(p![29] & (byte)RequestFlags.Route, Is.Zero);
        Assert.That(RequestView.TryParse(p, out var v), Is.EqualTo(RequestParseError.None));
        Assert.That(v.Model.IsEmpty && v.RouteOffset == p.Length);

        // No model named, two models served, no default: any endpoint.
        for (int i = 0; i < 40; i++) Assert.That((await c.CompleteAsync(Named(null))).IsOk);
        Assert.That(tiny.Requests.Count, Is.GreaterThan(1));
        Assert.That(small.Requests.Count, Is.GreaterThan(11));
    }

    [Test]
    public async Task ADefaultModelTakesRequestsThatNameNone()
    {
        var tiny = Replica("gec-tiny", "t1");
        var small = Replica("gec-small", "s1");
        await using var router = await StartWith(Opt(defaultModel: "gec-tiny"), tiny, small);
        await using var c = await FastServeClient.ConnectAsync("127.0.0.1", router.Port);
        for (int i = 0; i < 20; i++) Assert.That((await c.CompleteAsync(Req())).IsOk);
        Assert.That((tiny.Requests.Count, small.Requests.Count), Is.EqualTo((20, 0)));
    }

    [Test]
    public async Task ASplitSharesTrafficByWeightAndStickyKeysKeepTheirVersion()
    {
        var v1 = Replica("gec", "v1");
        var v2 = Replica("gec", "v2");
        await using var router = await StartWith(Opt(), v1, v2);
        await using var c = await FastServeClient.ConnectAsync("127.0.0.1", router.Port);
        var state = JsonDocument.Parse(await c.AdminAsync(Token, "split gec v1=80,v2=20;sticky"));
        Assert.That(state.RootElement.GetProperty("splits").GetProperty("gec").GetProperty("stable").GetString(), Is.EqualTo("v1"));

        const int n = 1000;
        var calls = Enumerable.Range(0, n).Select(_ => c.CompleteAsync(Named("gec"))).ToArray();
        Assert.That((await Task.WhenAll(calls)).All(r => r.IsOk));
        double share = v2.Requests.Count / (double)n;
        Assert.That(share, Is.EqualTo(0.2).Within(0.05), $"v2 share {share:F3}");

        // Requests that name no model take the fleet's only model, and so its split.
        int before = v1.Requests.Count + v2.Requests.Count;
        for (int i = 0; i < 50; i++) await c.CompleteAsync(Req());
        Assert.That(v1.Requests.Count + v2.Requests.Count - before, Is.EqualTo(50));

        // Sticky: each key lands on one version, every time.
        foreach (string key in Enumerable.Range(0, 20).Select(i => $"user-{i}"))
        {
            int a1 = v1.Requests.Count, a2 = v2.Requests.Count;
            for (int i = 0; i < 5; i++) Assert.That((await c.CompleteAsync(Named("gec", key: key))).IsOk);
            Assert.That((v1.Requests.Count - a1, v2.Requests.Count - a2), Is.EqualTo((5, 0)).Or.EqualTo((0, 5)), key);
        }

        // A version named outright bypasses the split.
        int b2 = v2.Requests.Count;
        for (int i = 0; i < 10; i++) await c.CompleteAsync(Named("gec", "v2"));
        Assert.That(v2.Requests.Count - b2, Is.EqualTo(10));
    }

    [Test]
    public async Task ASplitVersionThatCannotServeLeavesItsRequestsToTheModelsOtherVersions()
    {
        var v1 = Replica("gec", "v1");
        var v2 = Replica("gec", "v2");
        await using var router = await StartWith(Opt(), v1, v2);
        await using var c = await FastServeClient.ConnectAsync("127.0.0.1", router.Port);
        await c.AdminAsync(Token, "split gec v1=0,v2=100");
        v2.State = FastServe.Protocol.ReplicaState.Draining;
        await Until(() => !router.Fleet.Endpoints.Single(e => e.ModelVersion == "v2").IsEligible(System.Diagnostics.Stopwatch.GetTimestamp()), "v2 draining");
        var results = await Task.WhenAll(Enumerable.Range(0, 20).Select(_ => c.CompleteAsync(Named("gec"))));
        Assert.That(results.All(r => r.IsOk), "the drawn version drains: v1 takes its requests");
        Assert.That(v1.Requests.Count, Is.EqualTo(20));
        // A version the client names is held to: nothing else may answer for it.
        var named = await c.CompleteAsync(Named("gec", "v2"));
        Assert.That((named.Status, named.Detail), Is.EqualTo((WireStatus.Unavailable, "router.no_endpoint")));
    }

    [Test]
    public async Task ACanaryThatFailsIsRolledBackWithAnEventAndItsShareGoesToZero()
    {
        var stable = Replica("gec", "v1");
        var canary = Replica("gec", "v2");
        canary.OnRequest = _ => Reply.Internal;
        var opt = Opt(canary: new CanaryOptions { MinSamples = 20, WindowMs = 60_000 }) with { EjectAfterErrors = 1_000_000 };
        await using var router = await StartWith(opt, stable, canary);
        await using var c = await FastServeClient.ConnectAsync("127.0.0.1", router.Port);
        await c.AdminAsync(Token, "split gec v1=50,v2=50");

        // Until the canary is judged, about half the requests fail; the router never retries `internal`.
        var sw = System.Diagnostics.Stopwatch.StartNew();
        while (router.Traffic.Rollbacks == 0 && sw.Elapsed.TotalSeconds < 15)
        {
            await Task.WhenAll(Enumerable.Range(0, 20).Select(_ => c.CompleteAsync(Named("gec"))));
            await Task.Delay(20);
        }
        Assert.That(router.Traffic.Rollbacks, Is.EqualTo(1), "rolled back");
        Assert.That(router.Traffic.Table.Splits["gec"].Share("v2"), Is.Zero);
        var ev = _events.Single(e => e.Kind == "canary_rollback");
        Assert.That(ev.Fields["version"], Is.EqualTo("v2"));
        Assert.That(ev.Detail, Does.Contain("error rate"));
        TestContext.Out.WriteLine($"rollback after {sw.Elapsed.TotalSeconds:F1} s: {ev.Detail}");

        int canaryBefore = canary.Requests.Count;
        var after = await Task.WhenAll(Enumerable.Range(0, 100).Select(_ => c.CompleteAsync(Named("gec"))));
        Assert.That(after.All(r => r.IsOk), "after the rollback every request goes to stable");
        Assert.That(canary.Requests.Count, Is.EqualTo(canaryBefore));
    }

    [Test]
    public async Task AdminNeedsTheTokenAndRefusesBadCommandsWithAReason()
    {
        var r1 = Replica("gec", "v1");
        await using var router = await StartWith(Opt(), r1);
        await using var c = await FastServeClient.ConnectAsync("127.0.0.1", router.Port);

        var wrong = await Refused(c, "nope", "status");
        Assert.That(wrong!.Code, Is.EqualTo("client.unauthorized"));
        foreach (var bad in new[] { "split gec v1=abc", "shadow gec v2 0", "tier t gec gec-small 0.5", "mode turbo", "frobnicate", "split gec" })
        {
            var e = await Refused(c, Token, bad);
            Assert.That(e!.Code, Is.EqualTo("client.admin_refused"), bad);
            Assert.That(e.Message, Is.Not.Empty, bad);
        }
        // The connection carries on: requests and good commands still work.
        Assert.That((await c.CompleteAsync(Named("gec"))).IsOk);
        var status = JsonDocument.Parse(await c.AdminAsync(Token, "status")).RootElement;
        Assert.That(status.GetProperty("pools")[0].GetProperty("model").GetString(), Is.EqualTo("gec"));
        Assert.That(status.GetProperty("pools")[0].GetProperty("eligible").GetInt32(), Is.EqualTo(1));
        Assert.That(status.GetProperty("mode").GetString(), Is.EqualTo("normal"));
        Assert.That(router.Traffic.Table, Is.SameAs(RoutingTable.Empty), "refused commands changed nothing");
    }

    private static async Task<FastServeClientException?> Refused(FastServeClient c, string token, string command)
    {
        try { await c.AdminAsync(token, command); }
        catch (FastServeClientException e) { return e; }
        Assert.Fail($"'{command}' was not refused");
        return null;
    }

    [Test]
    public async Task TheConfigFileIsAppliedAtStartAndWhenItChanges()
    {
        var v1 = Replica("gec", "v1");
        var v2 = Replica("gec", "v2");
        string path = Path.Combine(Path.GetTempPath(), $"fastserve-route-{Guid.NewGuid():N}.conf");
        File.WriteAllText(path, "# canary\nsplit gec v1=100,v2=0\n");
        try
        {
            await using var router = await StartWith(Opt(config: path), v1, v2);
            await using var c = await FastServeClient.ConnectAsync("127.0.0.1", router.Port);
            for (int i = 0; i < 30; i++) await c.CompleteAsync(Named("gec"));
            Assert.That(v2.Requests.Count, Is.Zero);

            File.WriteAllText(path, "split gec v1=0,v2=100\nmode surge\n");
            await Until(() => router.Traffic.Table.Splits.TryGetValue("gec", out var s) && s.Share("v2") == 1, "config re-read");
            Assert.That(router.Traffic.Burst.Mode, Is.EqualTo(BurstMode.Surge));
            for (int i = 0; i < 30; i++) await c.CompleteAsync(Named("gec"));
            Assert.That(v2.Requests.Count, Is.EqualTo(30));

            // A broken file changes nothing and says why.
            File.WriteAllText(path, "split gec v1=0,v2=100\nshadow gec\n");
            await Until(() => router.Traffic.ConfigErrors == 1, "broken config reported");
            Assert.That(_events.Any(e => e.Kind == "config_rejected" && e.Detail.Contains("line 2")));
            Assert.That(router.Traffic.Table.Splits["gec"].Share("v2"), Is.EqualTo(1));
        }
        finally { File.Delete(path); }
    }

    [Test]
    public async Task ShadowMirrorsAreComparedLoggedAndNeverDelayTheClient()
    {
        var primary = Replica("gec", "v1", text: "She goes home.");
        var shadow = Replica("gec", "v2", text: "She go home.");
        string log = Path.Combine(Path.GetTempPath(), $"fastserve-shadow-{Guid.NewGuid():N}.jsonl");
        try
        {
            await using (var router = await StartWith(Opt(shadowLog: log), primary, shadow))
            {
                await using var c = await FastServeClient.ConnectAsync("127.0.0.1", router.Port);
                await c.AdminAsync(Token, "split gec v1=100,v2=0");
                await c.AdminAsync(Token, "shadow gec v2 100");
                var answers = await Task.WhenAll(Enumerable.Range(0, 30).Select(_ => c.CompleteAsync(Named("gec"))));
                Assert.That(answers.All(a => a.IsOk && a.Text == "She goes home."), "clients get the primary's answers");
                await Until(() => router.Mirror.PairTotals().Sum(t => t.Pairs) == 30, "30 pairs compared");
                var t = router.Mirror.PairTotals().Single();
                Assert.That((t.Model, t.Primary, t.Shadow, t.Matches), Is.EqualTo(("gec", "v1", "v2", 0L)));
                // Mirrors run at batch priority and ask for log-probabilities.
                Assert.That(shadow.Payloads.All(p => p[28] == 1 && (p[29] & (byte)RequestFlags.Logprobs) != 0));

                // Surge turns shadows off; the mirrors it would have sent are counted.
                await c.AdminAsync(Token, "mode surge");
                for (int i = 0; i < 5; i++) Assert.That((await c.CompleteAsync(Named("gec"))).IsOk);
                Assert.That(router.Mirror.Dropped(FastServe.Router.Shadow.ShadowDrop.BurstMode), Is.EqualTo(5));
                await c.AdminAsync(Token, "mode normal");

                // A shadow that never answers: the clients are not held up, and the mirrors are bounded.
                shadow.OnRequest = _ => Reply.Hold;
                var sw = System.Diagnostics.Stopwatch.StartNew();
                var quick = await Task.WhenAll(Enumerable.Range(0, 20).Select(_ => c.CompleteAsync(Named("gec"))));
                Assert.That(quick.All(a => a.IsOk));
                Assert.That(sw.Elapsed.TotalSeconds, Is.LessThan(5));
                Assert.That(router.Mirror.InFlight, Is.EqualTo(20));
                shadow.ReleaseHeld();
                await Until(() => router.Mirror.InFlight == 0, "held mirrors finish");
            }
            // The router's stop flushed the log: one line per disagreement, and the report reads it.
            var lines = File.ReadAllLines(log).Select(l => JsonDocument.Parse(l).RootElement).ToArray();
            var pairs = lines.Where(l => l.GetProperty("type").GetString() == "pair").ToArray();
            Assert.That(pairs, Has.Length.EqualTo(50));
            Assert.That(pairs[0].GetProperty("primary_text").GetString(), Is.EqualTo("She goes home."));
            Assert.That(pairs[0].GetProperty("shadow_text").GetString(), Is.EqualTo("She go home."));
            Assert.That(pairs[0].GetProperty("prompt").GetString(), Is.EqualTo("hi"));
        }
        finally { File.Delete(log); }
    }

    [Test]
    public async Task ATierEscalatesLowConfidenceAnswersAndTheClientSeesOnlyTheStrongOne()
    {
        var cheap = Replica("gec-tiny", "t1", text: "cheap");
        var strong = Replica("gec-small", "s1", text: "strong");
        cheap.DeviceUs = 300;
        strong.DeviceUs = 1000;
        await using var router = await StartWith(Opt(), cheap, strong);
        await using var c = await FastServeClient.ConnectAsync("127.0.0.1", router.Port);
        await c.AdminAsync(Token, "tier gec gec-tiny gec-small -1.0");

        cheap.LogprobMin = -0.2f;        // confident: the cheap answer stands
        var sure = await c.CompleteAsync(Named("gec"));
        Assert.That((sure.IsOk, sure.Text, sure.ServerTimings.DeviceUs), Is.EqualTo((true, "cheap", 300u)));
        Assert.That(strong.Requests.Count, Is.Zero);

        cheap.LogprobMin = -2.5f;        // unsure: the strong model answers, and the answer costs both attempts
        var unsure = await c.CompleteAsync(Named("gec"));
        Assert.That((unsure.IsOk, unsure.Text, unsure.ServerTimings.DeviceUs), Is.EqualTo((true, "strong", 1300u)));
        Assert.That(router.Escalations, Is.EqualTo(1));
        Assert.That(cheap.Payloads.All(p => (p[29] & (byte)RequestFlags.Logprobs) != 0), "the cheap attempt asks for log-probabilities");

        // In emergency mode escalation is off: the cheap answer goes out as it is.
        await c.AdminAsync(Token, "mode emergency");
        var shed = await c.CompleteAsync(Named("gec"));
        Assert.That((shed.IsOk, shed.Text), Is.EqualTo((true, "cheap")));
        Assert.That(router.Escalations, Is.EqualTo(1));
    }

    [Test]
    public async Task BurstModesCapTokensTightenDeadlinesAndShedTheBatchClass()
    {
        var r1 = Replica("gec", "v1");
        var burst = new BurstOptions { EnterHoldMs = 100, ExitHoldMs = 300, SurgeEnterWaitMs = 250, SurgeExitWaitMs = 100, EmergencyEnterWaitMs = 5000, EmergencyExitWaitMs = 400 };
        await using var router = await StartWith(Opt(burst: burst), r1);
        await using var c = await FastServeClient.ConnectAsync("127.0.0.1", router.Port);

        Assert.That((await c.CompleteAsync(Named("gec", priority: 1, maxTokens: 1000, deadlineMs: 1000))).IsOk);
        r1.Payloads.TryDequeue(out var normal);
        Assert.That((BinaryPrimitives.ReadUInt32LittleEndian(normal), BinaryPrimitives.ReadUInt32LittleEndian(normal.AsSpan(24))), Is.EqualTo((1000u, 1000u)));

        // Load pushes the fleet into surge (the replica's estimated wait), with an event.
        r1.EstimatedWaitMs = 600;
        await Until(() => router.Traffic.Burst.Mode == BurstMode.Surge, "surge");
        Assert.That(_events.Any(e => e.Kind == "mode_change" && e.Fields["to"] == "surge" && e.Fields["pinned"] == "false"));
        var shed = await c.CompleteAsync(Named("gec", priority: 1));
        Assert.That((shed.Status, shed.Detail, shed.Retriable), Is.EqualTo((WireStatus.Overloaded, "router.shed_batch", true)));
        Assert.That((await c.CompleteAsync(Named("gec", maxTokens: 1000, deadlineMs: 1000))).IsOk);
        r1.Payloads.TryDequeue(out var surge);
        Assert.That((BinaryPrimitives.ReadUInt32LittleEndian(surge), BinaryPrimitives.ReadUInt32LittleEndian(surge.AsSpan(24))), Is.EqualTo((256u, 800u)));

        // Hysteresis: back to normal only once the wait stays under the exit threshold.
        r1.EstimatedWaitMs = 150;
        await Task.Delay(600);
        Assert.That(router.Traffic.Burst.Mode, Is.EqualTo(BurstMode.Surge), "150 ms is under enter but over exit");
        r1.EstimatedWaitMs = 0;
        await Until(() => router.Traffic.Burst.Mode == BurstMode.Normal, "normal again");
        Assert.That((await c.CompleteAsync(Named("gec", priority: 1))).IsOk);

        // Pinned emergency: default deadline for requests without one, a tighter cap.
        await c.AdminAsync(Token, "mode emergency");
        r1.Payloads.Clear();
        Assert.That((await c.CompleteAsync(Named("gec", maxTokens: 1000))).IsOk);
        r1.Payloads.TryDequeue(out var emergency);
        Assert.That((BinaryPrimitives.ReadUInt32LittleEndian(emergency), BinaryPrimitives.ReadUInt32LittleEndian(emergency.AsSpan(24))), Is.EqualTo((64u, 2000u)));
        Assert.That(router.Traffic.Burst.IsPinned);
        await c.AdminAsync(Token, "mode auto");
        Assert.That(router.Traffic.Burst.IsPinned, Is.False);
    }

    [Test]
    public async Task PoolCountersSumDeviceTimePerModelAndVersion()
    {
        var a = Replica("gec-tiny", "t1");
        var b = Replica("gec-small", "s1");
        a.DeviceUs = 250;
        b.DeviceUs = 4000;
        await using var router = await StartWith(Opt(), a, b);
        await using var c = await FastServeClient.ConnectAsync("127.0.0.1", router.Port);
        for (int i = 0; i < 8; i++) await c.CompleteAsync(Named("gec-tiny"));
        for (int i = 0; i < 3; i++) await c.CompleteAsync(Named("gec-small"));
        var tiny = router.Routes.Counters("gec-tiny", "t1");
        var small = router.Routes.Counters("gec-small", "s1");
        Assert.That((tiny.Ok, tiny.DeviceMicros), Is.EqualTo((8L, 2000L)));
        Assert.That((small.Ok, small.DeviceMicros), Is.EqualTo((3L, 12000L)));
    }
}
