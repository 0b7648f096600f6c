using NUnit.Framework;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using FastServe.Client;
using FastServe.Protocol;
using FastServe.Router;
using Reply = FastServe.Tests.Router.ScriptedReplica.Reply;

namespace FastServe.Tests.Router;

/// <summary>
/// The router's request rules, in process, in front of scripted replicas that answer exactly as each test needs:
/// retries of refusals, attempts running out, no endpoint, cancel and disconnect reaching the replica, a lost
/// connection (retry without output, <c>router.upstream_lost</c> with output), ejection on <c>internal</c>, and an
/// endpoint leaving the source while it has a request.
/// </summary>
[TestFixture, NonParallelizable]
public sealed class RouterRulesTests
{
    private readonly List<string> _log = [];

    private RouterOptions Opt() => new()
    {
        Port = 0,
        SlowStartMs = 0,
        Seed = 17,
        Log = m => { lock (_log) _log.Add(m); },
    };

    internal static async Task<RouterHost> Start(RouterOptions o, IEndpointSource src, int ready)
    {
        var r = new RouterHost(o, src);
        await r.StartAsync();
        await Until(() => r.Fleet.Endpoints.Count(e => e.IsReady) >= ready, "endpoints ready");
        return r;
    }

    internal static Task Until(Func<bool> ok, string what, double seconds = 10) => Until(ok, () => what, seconds);

    /// <summary>As <see cref="Until(Func{bool}, string, double)"/>, with what it waited for described at the moment it
    /// gives up (the state to report).</summary>
    internal static async Task Until(Func<bool> ok, Func<string> what, double seconds = 10)
    {
        var sw = Stopwatch.StartNew();
        while (!ok())
        {
            if (sw.Elapsed.TotalSeconds > seconds) Assert.Fail($"timed out waiting for {what()}");
            await Task.Delay(10);
        }
    }

    internal static CompletionRequest Req(uint deadlineMs = 0) => new() { Prompt = "hi", Params = RequestParams.Default with { MaxTokens = 3, DeadlineMs = deadlineMs } };

    internal static StaticEndpointSource Src(params ScriptedReplica[] rs) => new(rs.Select(r => EndpointSpec.Parse(r.Address)));

    [TearDown]
    public void DumpLog()
    {
        lock (_log)
        {
            foreach (var l in _log) TestContext.Out.WriteLine($"router: {l}");
            _log.Clear();
        }
    }

    [Test]
    public async Task RefusalsWithoutOutputAreRetriedOnAnotherEndpoint()
    {
        using var x = new ScriptedReplica("x") { OnRequest = _ => Reply.Overloaded };
        using var y = new ScriptedReplica("y");
        await using var router = await Start(Opt(), Src(x, y), 2);
        await using var c = await FastServeClient.ConnectAsync("127.0.0.1", router.Port);
        Assert.That(c.Server.ServerName, Is.EqualTo("fastserve-router"));
        Assert.That(c.Server.ContextLength, Is.EqualTo(2048), "the fleet's context length");
        var results = await Task.WhenAll(Enumerable.Range(0, 100).Select(_ => c.CompleteAsync(Req())));
        Assert.That(results.Select(r => r.StatusName), Is.All.EqualTo("ok"));
        Assert.That(results.Select(r => r.ReceivedTokens), Is.All.EqualTo(3));
        TestContext.Out.WriteLine($"overloaded: x refused {x.Requests.Count}, y served {y.Requests.Count}, retries {router.Stats.Retries}");
        Assert.That(x.Requests.Count, Is.InRange(10, 90), "p2c sent x a share before each retry");
        Assert.That(y.Requests.Count, Is.EqualTo(100));
        Assert.That(router.Stats.Retries, Is.EqualTo(x.Requests.Count));

        x.OnRequest = _ => Reply.Draining;
        int before = x.Requests.Count;
        results = await Task.WhenAll(Enumerable.Range(0, 50).Select(_ => c.CompleteAsync(Req())));
        Assert.That(results.Select(r => r.StatusName), Is.All.EqualTo("ok"));
        Assert.That(x.Requests.Count - before, Is.GreaterThan(0));
        Assert.That(y.Requests.Count, Is.EqualTo(150));
    }

    [Test]
    public async Task AttemptsRunOutAndTheReplicasAnswerIsPassedOn()
    {
        using var x = new ScriptedReplica("x") { OnRequest = _ => Reply.Overloaded };
        await using var router = await Start(Opt() with { MaxAttempts = 3 }, Src(x), 1);
        await using var c = await FastServeClient.ConnectAsync("127.0.0.1", router.Port);
        var r = await c.CompleteAsync(Req());
        Assert.That(r.StatusName, Is.EqualTo("overloaded"));
        Assert.That(r.Detail, Is.EqualTo("engine.queue_full"));
        Assert.That(r.Retriable, Is.True);
        Assert.That(x.Requests.Count, Is.EqualTo(3), "the only endpoint is tried again, up to --max-attempts");
    }

    [Test]
    public async Task NoReadyEndpointAnswersNoEndpointRetriably()
    {
        using var x = new ScriptedReplica("x") { State = ReplicaState.Starting };
        await using var router = new RouterHost(Opt(), Src(x));
        await router.StartAsync();
        await Until(() => router.Fleet.Endpoints[0].ConnectionsUp == 2 && router.Fleet.Endpoints[0].LastReport.ReceivedAt != 0, "connected");
        await using var c = await FastServeClient.ConnectAsync("127.0.0.1", router.Port);
        Assert.That((await c.GetLoadAsync()).State, Is.EqualTo(ReplicaState.Starting));
        var r = await c.CompleteAsync(Req());
        Assert.That((r.StatusName, r.Detail, r.Retriable, r.RetryAfter), Is.EqualTo(("unavailable", "router.no_endpoint", true, (TimeSpan?)TimeSpan.FromMilliseconds(500))));
        Assert.That(x.Requests, Is.Empty);
        x.State = ReplicaState.Ready;
        await Until(() => router.Fleet.Endpoints[0].IsReady, "ready");
        Assert.That((await c.CompleteAsync(Req())).StatusName, Is.EqualTo("ok"));
        var load = await c.GetLoadAsync();
        Assert.That((load.State, load.Workers), Is.EqualTo((ReplicaState.Ready, 1)));
    }

    [Test]
    public async Task CancelAndClientDisconnectReachTheReplica()
    {
        using var x = new ScriptedReplica("x") { OnRequest = _ => Reply.Hold };
        await using var router = await Start(Opt(), Src(x), 1);
        await using (var c = await FastServeClient.ConnectAsync("127.0.0.1", router.Port))
        {
            var call = c.Start(Req());
            await Until(() => x.HeldCount == 1, "held");
            call.Cancel();
            var r = await call.Completion;
            Assert.That(r.StatusName, Is.EqualTo("cancelled"));
            Assert.That(x.Cancels, Has.Count.EqualTo(1));
            Assert.That(x.Cancels.Single(), Is.EqualTo(x.Requests.Single()), "the CANCEL names the router's id for it");
            for (int i = 0; i < 3; i++) c.Start(Req());
            await Until(() => x.HeldCount == 3, "three held");
        }
        await Until(() => x.Cancels.Count == 4, "the client's disconnect cancels its requests upstream");
        await Until(() => router.Stats.InFlight == 0 && router.Fleet.Endpoints[0].InFlight == 0, "nothing in flight");
    }

    [Test]
    public async Task ALostConnectionRetriesRequestsWithoutOutputAndFailsThoseWithOutput()
    {
        using var x = new ScriptedReplica("x");
        using var y = new ScriptedReplica("y") { State = ReplicaState.Starting };
        int n = 0;
        x.OnRequest = _ => Interlocked.Increment(ref n) == 1 ? Reply.StreamThenHold : Reply.Hold;
        await using var router = await Start(Opt(), Src(x, y), 1);
        await using var c = await FastServeClient.ConnectAsync("127.0.0.1", router.Port);
        var streamed = c.Start(Req());
        await Until(() => x.HeldCount == 1 && streamed.FirstTokenTimestamp != 0, "first request streaming");
        var quiet = Enumerable.Range(0, 4).Select(_ => c.Start(Req())).ToArray();
        await Until(() => x.HeldCount == 5, "all on x");
        y.State = ReplicaState.Ready;
        await Until(() => router.Fleet.Endpoints[1].IsReady, "y ready");
        x.OnRequest = _ => Reply.Hold;
        x.DropConnections();
        var lost = await streamed.Completion;
        Assert.That((lost.StatusName, lost.Detail, lost.Retriable, lost.ReceivedTokens), Is.EqualTo(("unavailable", "router.upstream_lost", true, 1)));
        foreach (var q in quiet)
        {
            var r = await q.Completion;
            Assert.That((r.StatusName, r.ReceivedTokens), Is.EqualTo(("ok", 3)), "retried on y");
        }
        Assert.That(y.Requests, Has.Count.EqualTo(4));
        Assert.That((router.Stats.Retries, router.Stats.UpstreamLost), Is.EqualTo((4L, 1L)));
        Assert.That(c.IsConnected, Is.True);
    }

    private static CompletionRequest WholeReq() => new() { Prompt = "hi", Params = RequestParams.Default with { MaxTokens = 3, Whole = true } };

    [Test]
    public async Task AWholeRequestsOutputIsHeldUntilItsFinal()
    {
        using var x = new ScriptedReplica("x") { OnRequest = _ => Reply.StreamThenHold };
        await using var router = await Start(Opt(), Src(x), 1);
        await using var c = await FastServeClient.ConnectAsync("127.0.0.1", router.Port);
        var call = c.Start(WholeReq());
        await Until(() => x.HeldCount == 1, "the replica streamed a token and holds the request");
        await Task.Delay(200);
        Assert.That(call.FirstTokenTimestamp, Is.Zero, "the router holds a whole request's output back");
        x.ReleaseHeld();
        var r = await call.Completion;
        Assert.That((r.StatusName, r.ReceivedTokens), Is.EqualTo(("ok", 4)), "the held token, then the rest, then the FINAL");
        Assert.That(r.Ids, Is.EqualTo(new[] { 100, 100, 101, 102 }));
        Assert.That(router.Stats.Replays, Is.Zero);
    }

    [Test]
    public async Task AWholeRequestLostMidGenerationIsReplayedElsewhereAndOnlyTheReplayIsSeen()
    {
        using var x = new ScriptedReplica("x") { OnRequest = _ => Reply.StreamThenHold };
        using var y = new ScriptedReplica("y") { State = ReplicaState.Starting };
        await using var router = await Start(Opt(), Src(x, y), 1);
        await using var c = await FastServeClient.ConnectAsync("127.0.0.1", router.Port);
        var whole = c.Start(WholeReq());
        var streaming = c.Start(Req());
        await Until(() => x.HeldCount == 2 && streaming.FirstTokenTimestamp != 0, "both requests produced a token on x");
        Assert.That(whole.FirstTokenTimestamp, Is.Zero);
        y.State = ReplicaState.Ready;
        await Until(() => router.Fleet.Endpoints[1].IsReady, "y ready");
        x.OnRequest = _ => Reply.Hold;
        x.DropConnections();
        var w = await whole.Completion;
        var s = await streaming.Completion;
        Assert.That((w.StatusName, w.ReceivedTokens), Is.EqualTo(("ok", 3)), "only y's output reached the client");
        Assert.That(w.Ids, Is.EqualTo(new[] { 100, 101, 102 }));
        Assert.That((s.StatusName, s.Detail, s.ReceivedTokens), Is.EqualTo(("unavailable", "router.upstream_lost", 1)), "a streamed request is never replayed");
        Assert.That(y.Requests, Has.Count.EqualTo(1));
        Assert.That((router.Stats.Retries, router.Stats.Replays, router.Stats.UpstreamLost), Is.EqualTo((1L, 1L, 1L)));

        // CompleteAsync marks its requests whole: a replica that fails mid-generation is replaced the same way.
        y.OnRequest = _ => Reply.StreamThenHold;
        x.OnRequest = _ => Reply.Ok;
        await Until(() => router.Fleet.Endpoints[0].ConnectionsUp == 2 && router.Fleet.Endpoints[0].IsEligible(Stopwatch.GetTimestamp()), "x back");
        int xBefore = x.Requests.Count;
        var pending = Enumerable.Range(0, 10).Select(_ => c.CompleteAsync(Req())).ToArray();
        await Until(() => x.Requests.Count - xBefore + y.HeldCount == 10, "each request answered by x or streaming on y");
        int onY = y.HeldCount;
        Assert.That(onY, Is.GreaterThan(0), "p2c sent y some of them");
        y.DropConnections();
        var again = await Task.WhenAll(pending);
        Assert.That(again.Select(r => (r.StatusName, r.ReceivedTokens)), Is.All.EqualTo(("ok", 3)));
        Assert.That(router.Stats.Replays, Is.EqualTo(1 + onY));
    }

    [Test]
    public async Task AWholeRequestOverTheHoldLimitStreamsAndIsNotReplayed()
    {
        using var x = new ScriptedReplica("x") { OnRequest = _ => Reply.StreamThenHold };
        using var y = new ScriptedReplica("y");
        // One held DELTA frame is 16 header + 13 payload bytes for this replica's one-token delta: a 16-byte limit holds none.
        await using var router = await Start(Opt() with { MaxHeldBytes = 16, Policy = BalancePolicy.RoundRobin }, Src(x, y), 2);
        await using var c = await FastServeClient.ConnectAsync("127.0.0.1", router.Port);
        y.OnRequest = _ => Reply.Hold;
        var calls = new[] { c.Start(WholeReq()), c.Start(WholeReq()) };
        await Until(() => x.HeldCount == 1 && y.HeldCount == 1, "one request on each");
        var onX = calls.Single(k => k.FirstTokenTimestamp != 0);
        x.DropConnections();
        var r = await onX.Completion;
        Assert.That((r.StatusName, r.Detail, r.ReceivedTokens), Is.EqualTo(("unavailable", "router.upstream_lost", 1)));
        y.ReleaseHeld();
        Assert.That((await calls.Single(k => k != onX).Completion).StatusName, Is.EqualTo("ok"));
        Assert.That(router.Stats.Replays, Is.Zero);
    }

    [Test]
    public async Task RepeatedInternalErrorsEjectAnEndpoint()
    {
        using var x = new ScriptedReplica("x") { OnRequest = _ => Reply.Internal };
        using var y = new ScriptedReplica("y");
        await using var router = await Start(Opt() with { BaseEjectionMs = 5000 }, Src(x, y), 2);
        await using var c = await FastServeClient.ConnectAsync("127.0.0.1", router.Port);
        int internals = 0;
        for (int i = 0; i < 200 && x.Requests.Count < 5; i++)
            if ((await c.CompleteAsync(Req())).StatusName == "internal") internals++;
        Assert.That(internals, Is.EqualTo(5), "internal is passed on, not retried");
        var ex = router.Fleet.Endpoints[0];
        Assert.That(ex.IsEjected(Stopwatch.GetTimestamp()), Is.True);
        var results = await Task.WhenAll(Enumerable.Range(0, 40).Select(_ => c.CompleteAsync(Req())));
        Assert.That(results.Select(r => r.StatusName), Is.All.EqualTo("ok"));
        Assert.That(x.Requests.Count, Is.EqualTo(5), "an ejected endpoint gets nothing");
        lock (_log) Assert.That(_log.Any(l => l.Contains("ejected for 5000 ms")), Is.True);
    }

    [Test]
    public async Task DrainingTheRouterFinishesWhatRunsAndRefusesWhatIsNew()
    {
        using var x = new ScriptedReplica("x") { OnRequest = _ => Reply.Hold };
        var router = await Start(Opt(), Src(x), 1);
        await using var c = await FastServeClient.ConnectAsync("127.0.0.1", router.Port);
        var running = c.Start(Req());
        await Until(() => x.HeldCount == 1, "held");
        router.BeginDrain();
        Assert.That((await c.GetLoadAsync()).State, Is.EqualTo(ReplicaState.Draining));
        var late = await c.CompleteAsync(Req());
        Assert.That((late.StatusName, late.Detail, late.Retriable), Is.EqualTo(("draining", "router.draining", true)));
        bool refused = false;
        using (var s = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp))
        {
            try { await s.ConnectAsync(IPAddress.Loopback, router.Port); }
            catch (SocketException) { refused = true; }
        }
        Assert.That(refused, Is.True, "the listener is closed");
        await Task.Delay(200);
        Assert.That(router.Completion.IsCompleted, Is.False, "a request is still running");
        x.ReleaseHeld();
        Assert.That((await running.Completion).StatusName, Is.EqualTo("ok"));
        Assert.That(await Task.WhenAny(router.Completion, Task.Delay(5000)), Is.SameAs(router.Completion), "stops once nothing is in flight");
        Assert.That((router.Stats.Requests, router.Stats.Rejected, router.Stats.Completed), Is.EqualTo((1L, 1L, 1L)));
        await router.DisposeAsync();
    }

    [Test]
    public async Task AReplicaThatStopsReadingIsLeftOutUntilItsBacklogClears()
    {
        using var x = new ScriptedReplica("x");
        using var y = new ScriptedReplica("y");
        await using var router = await Start(Opt() with { Policy = BalancePolicy.RoundRobin, ConnectionsPerEndpoint = 1 }, Src(x, y), 2);
        await using var c = await FastServeClient.ConnectAsync("127.0.0.1", router.Port, new FastServeClientOptions { MaxPendingSendBytes = 256 << 20 });
        var ex = router.Fleet.Endpoints[0];
        x.Stalled = true;
        string big = new('a', 900_000);
        var calls = new List<CompletionCall>();
        // Round-robin sends x every other request until its unsent bytes pass the soft limit (kernel buffers first).
        while (!ex.IsCongested && calls.Count < 400)
        {
            calls.Add(c.Start(Req() with { Prompt = big }));
            await Task.Delay(2);
        }
        Assert.That(ex.IsCongested, Is.True, $"x never backed up after {calls.Count} requests");
        long atCongestion = ex.Forwarded;
        int yBefore = y.Requests.Count;
        for (int i = 0; i < 20; i++) calls.Add(c.Start(Req()));
        await Until(() => y.Requests.Count >= yBefore + 20, "the next 20 all on y");
        TestContext.Out.WriteLine($"x congested after {atCongestion} requests ({calls.Count - 20} sent in all); then y took 20, x {ex.Forwarded - atCongestion}");
        Assert.That(ex.Forwarded, Is.EqualTo(atCongestion), "a congested endpoint is out of the draw");
        // x reads again: its backlog drains, the timer sees room, and it is back in the rotation.
        x.Stalled = false;
        var results = await Task.WhenAll(calls.Select(k => k.Completion));
        Assert.That(results.Select(r => r.StatusName), Is.All.EqualTo("ok"));
        await Until(() => !ex.IsCongested, "congestion cleared");
        results = await Task.WhenAll(Enumerable.Range(0, 10).Select(_ => c.CompleteAsync(Req())));
        Assert.That(results.Select(r => r.StatusName), Is.All.EqualTo("ok"));
        Assert.That(ex.Forwarded, Is.GreaterThan(atCongestion));
    }

    [Test]
    public async Task AnEndpointLeavingTheFileFinishesItsRequestsAndGetsNoNewOnes()
    {
        using var x = new ScriptedReplica("x") { OnRequest = _ => Reply.Hold };
        using var y = new ScriptedReplica("y");
        string path = Path.Combine(TestModels.TempDir("route-file"), "endpoints.json");
        File.WriteAllText(path, $$"""{"endpoints":[{"address":"{{x.Address}}"}]}""");
        var src = new FileEndpointSource(path, pollInterval: TimeSpan.FromMilliseconds(20));
        await using var router = await Start(Opt(), src, 1);
        await using var c = await FastServeClient.ConnectAsync("127.0.0.1", router.Port);
        var held = c.Start(Req());
        await Until(() => x.HeldCount == 1, "held on x");
        File.WriteAllText(path, $$"""{"endpoints":[{"address":"{{y.Address}}","weight":2}]}""");
        File.SetLastWriteTimeUtc(path, DateTime.UtcNow.AddSeconds(5));
        await Until(() => router.Fleet.Endpoints.Length == 1 && router.Fleet.Endpoints[0].Address == y.Address && router.Fleet.Endpoints[0].IsReady, "y replaces x");
        Assert.That(router.Fleet.Endpoints[0].Weight, Is.EqualTo(2));
        var results = await Task.WhenAll(Enumerable.Range(0, 20).Select(_ => c.CompleteAsync(Req())));
        Assert.That(results.Select(r => r.StatusName), Is.All.EqualTo("ok"));
        Assert.That((x.Requests.Count, y.Requests.Count), Is.EqualTo((1, 20)));
        Assert.That(x.OpenConnections, Is.EqualTo(2), "x keeps its connections while its request runs");
        x.ReleaseHeld();
        Assert.That((await held.Completion).StatusName, Is.EqualTo("ok"));
        await Until(() => x.OpenConnections == 0, "x's connections close once it has nothing in flight");
    }
}
