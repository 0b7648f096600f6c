using NUnit.Framework;
using FastServe.Client;
using FastServe.Router;
using Reply = FastServe.Tests.Router.ScriptedReplica.Reply;
using static FastServe.Tests.Router.RouterRulesTests;
using static FastServe.Tests.Router.RouterTestKit;

namespace FastServe.Tests.Router;

/// <summary>
/// Overload without collapse, the router's part (issue 16): the retry budget on a synthetic clock and in front of a
/// saturated fleet, the jitter delay before a retry (deadline, cancel, disconnect), the fleet saturation window, and
/// the options' ranges.
/// </summary>
[TestFixture, NonParallelizable]
public sealed class RouterOverloadTests
{
    // The client's own adaptive throttling would refuse most of these requests before the router saw them: these
    // tests are about what the router does with the load it is given.
    private static readonly FastServeClientOptions Unthrottled = new() { AdaptiveThrottling = null };

    private static RouterOptions Opt() => new() { Port = 0, SlowStartMs = 0, Seed = 17 };

    // ---------------------------------------------------------------- the budget and the windows, synthetic clock

    [Test]
    public void TheBudgetAllowsItsShareOfRequestsOrTheFloorAndNeverOverdraws()
    {
        var b = new RetryBudget(0.1, 0, 10_000, T0);
        Assert.That(b.TryWithdraw(), Is.False, "no requests, no reserve: nothing to retry with");
        for (int i = 0; i < 100; i++) b.Deposit();
        Assert.That(b.Available, Is.EqualTo(10));
        int taken = 0;
        while (b.TryWithdraw()) taken++;
        Assert.That(taken, Is.EqualTo(10));

        var reserve = new RetryBudget(0.1, 10, 10_000, T0);
        Assert.That(reserve.Available, Is.EqualTo(100), "10 a second over a 10 s window");
        for (int i = 0; i < 500; i++) reserve.Deposit();
        Assert.That(reserve.Available, Is.EqualTo(100), "the floor is a floor: 50 earned do not add to it");
        for (int i = 0; i < 1500; i++) reserve.Deposit();
        Assert.That(reserve.Available, Is.EqualTo(200), "past it, the 10 % share alone: max(share, floor), not their sum");

        var off = new RetryBudget(0, 10, 10_000, T0);
        for (int i = 0; i < 100; i++) off.Deposit();
        Assert.That((off.TryWithdraw(), off.Available), Is.EqualTo((false, 0L)), "a ratio of 0 turns retries off, the reserve too");

        // Concurrent withdrawals take exactly what is there.
        var shared = new RetryBudget(0.5, 0, 10_000, T0);
        for (int i = 0; i < 2000; i++) shared.Deposit();
        int won = 0;
        Parallel.For(0, 8, _ => { for (int k = 0; k < 1000; k++) if (shared.TryWithdraw()) Interlocked.Increment(ref won); });
        Assert.That(won, Is.EqualTo(1000));
    }

    [Test]
    public void DepositsAndWithdrawalsExpireWithTheWindow()
    {
        var b = new RetryBudget(0.1, 0, 10_000, T0);
        for (int i = 0; i < 100; i++) b.Deposit();
        for (int i = 0; i < 5; i++) Assert.That(b.TryWithdraw(), Is.True);
        b.Advance(T0 + Ms(5000));
        for (int i = 0; i < 100; i++) b.Deposit();
        Assert.That(b.Available, Is.EqualTo(15));
        b.Advance(T0 + Ms(9500));
        Assert.That(b.Available, Is.EqualTo(15), "still within the window");
        b.Advance(T0 + Ms(10_500));
        Assert.That(b.Available, Is.EqualTo(10), "the first second's deposits and withdrawals are gone");
        b.Advance(T0 + Ms(60_000));
        Assert.That(b.Available, Is.Zero, "a long quiet empties it");
        b.Deposit();
        Assert.That(b.TryWithdraw(), Is.False, "a tenth of a retry is not one");
    }

    [Test]
    public void SaturationIsTheOverloadedShareOfTheWindowsAnswers()
    {
        var w = new SaturationWindow(1000, T0);
        Assert.That(w.Value, Is.Zero, "no answers yet");
        for (int i = 0; i < 30; i++) w.Record(true);
        Assert.That(w.Value, Is.EqualTo(1));
        w.Advance(T0 + Ms(500));
        for (int i = 0; i < 90; i++) w.Record(false);
        Assert.That(w.Value, Is.EqualTo(0.25));
        w.Advance(T0 + Ms(1050));
        Assert.That(w.Value, Is.Zero, "the overloaded answers left the window; the accepted ones are still in it");
        w.Advance(T0 + Ms(5000));
        Assert.That(w.Value, Is.Zero);
    }

    [Test]
    public void FleetDemandTurnsRefusalsIntoConcurrency()
    {
        var w = new SaturationWindow(10_000, T0);
        for (int i = 0; i < 500; i++) w.Record(overloaded: i % 5 == 0);
        Assert.That(w.OverloadedPerSecond, Is.EqualTo(10), "100 overloaded answers over a 10 s window");
        var t = new ServiceTime();
        Assert.That(t.Seconds, Is.Zero);
        t.Observe(0.4);
        Assert.That(t.Seconds, Is.EqualTo(0.4));
        for (int i = 0; i < 1000; i++) t.Observe(0.6);
        Assert.That(t.Seconds, Is.EqualTo(0.6).Within(1e-6), "the mean follows the answers");
        t.Observe(double.NaN);
        t.Observe(-1);
        Assert.That(t.Seconds, Is.EqualTo(0.6).Within(1e-6), "nonsense is ignored");
        Assert.That(new FleetLoad(4, 40, 100, 0.5).Demand, Is.EqualTo(90), "40 in flight + 100/s refused x 0.5 s");
    }

    [Test]
    public void TheJitterStaysUnderTheCapTheRetryAfterAndHalfTheTimeLeft()
    {
        long cap = Ms(25);
        Assert.That(RouterHost.JitterTicks(cap, 100, T0, 0, 0.999), Is.InRange(Ms(24.9), cap));
        Assert.That(RouterHost.JitterTicks(cap, 10, T0, 0, 0.999), Is.InRange(Ms(9.9), Ms(10)), "the replica's retry-after bounds it");
        Assert.That(RouterHost.JitterTicks(cap, 0, T0, 0, 0.999), Is.InRange(Ms(24.9), cap), "a retry-after of 0 leaves the cap");
        Assert.That(RouterHost.JitterTicks(cap, 100, T0, 0, 0), Is.Zero);
        Assert.That(RouterHost.JitterTicks(cap, 100, T0, T0 + Ms(20), 0.999), Is.EqualTo(Ms(10)), "half the time left to the deadline");
        Assert.That(RouterHost.JitterTicks(cap, 100, T0, T0 - 1, 0.999), Is.Zero);
        Assert.That(RouterHost.JitterTicks(0, 100, T0, 0, 0.999), Is.Zero, "jitter off");
    }

    [Test]
    public void OverloadOptionsAreRangeChecked()
    {
        Assert.DoesNotThrow(() => new RouterOptions().Validate());
        Assert.DoesNotThrow(() => new RouterOptions { RetryBudgetRatio = 0, MinRetriesPerSecond = 0, RetryJitterMs = 0, OverloadWindowMs = 1000 }.Validate());
        (RouterOptions Options, string Name)[] bad =
        [
            (new() { RetryBudgetRatio = -0.01 }, nameof(RouterOptions.RetryBudgetRatio)),
            (new() { RetryBudgetRatio = 10.5 }, nameof(RouterOptions.RetryBudgetRatio)),
            (new() { RetryBudgetRatio = double.NaN }, nameof(RouterOptions.RetryBudgetRatio)),
            (new() { MinRetriesPerSecond = -1 }, nameof(RouterOptions.MinRetriesPerSecond)),
            (new() { MinRetriesPerSecond = 100_001 }, nameof(RouterOptions.MinRetriesPerSecond)),
            (new() { RetryJitterMs = -1 }, nameof(RouterOptions.RetryJitterMs)),
            (new() { RetryJitterMs = 1001 }, nameof(RouterOptions.RetryJitterMs)),
            (new() { OverloadWindowMs = 999 }, nameof(RouterOptions.OverloadWindowMs)),
            (new() { OverloadWindowMs = 600_001 }, nameof(RouterOptions.OverloadWindowMs)),
        ];
        foreach (var (o, name) in bad)
        {
            var e = Assert.Throws<ArgumentOutOfRangeException>(() => o.Validate(), name);
            Assert.That(e!.ParamName, Is.EqualTo(name));
            Assert.Throws<ArgumentOutOfRangeException>(() => _ = new RouterHost(o, new StaticEndpointSource([EndpointSpec.Parse("127.0.0.1:1")])));
        }
    }

    // ---------------------------------------------------------------- in front of scripted replicas

    // Requests sent in batches (one client connection takes at most the router's max in flight at once).
    private static async Task<List<CompletionResult>> Drive(FastServeClient c, int n, int batch = 250)
    {
        var all = new List<CompletionResult>(n);
        for (int sent = 0; sent < n; sent += batch)
            all.AddRange(await Task.WhenAll(Enumerable.Range(0, Math.Min(batch, n - sent)).Select(_ => c.CompleteAsync(Req()))));
        return all;
    }

    // Retries ≤ max(10 % of requests, floor): with 2000 requests the share (200) exceeds a floor of 10 × 10 s, so
    // either way the replicas get at most 1.1× the requests.
    [TestCase(0)]
    [TestCase(10)]
    public async Task ASaturatedFleetGetsAtMostItsShareOfRetries(int minRetriesPerSecond)
    {
        const int n = 2000;
        using var x = new ScriptedReplica("x") { OnRequest = _ => Reply.Overloaded };
        using var y = new ScriptedReplica("y") { OnRequest = _ => Reply.Overloaded };
        var o = Opt() with { MinRetriesPerSecond = minRetriesPerSecond };
        await using var router = await Start(o, Src(x, y), 2);
        await using var c = await FastServeClient.ConnectAsync("127.0.0.1", router.Port, Unthrottled);
        var results = await Drive(c, n);

        var st = router.Stats;
        long sent = router.Fleet.Endpoints.Sum(e => e.Forwarded);
        double bound = n + Math.Max(n * o.RetryBudgetRatio, minRetriesPerSecond * o.OverloadWindowMs / 1000.0);
        Assert.That(bound, Is.EqualTo(1.1 * n));
        TestContext.Out.WriteLine($"{n} requests: {sent} sent to replicas (bound {bound}), {st.Retries} retries, {st.BudgetExhausted} refused for want of budget, saturation {st.Saturation:F3}");
        Assert.That(results.Select(r => (r.StatusName, r.Detail, r.Retriable, r.RetryAfter)),
            Is.All.EqualTo(("overloaded", "engine.queue_full", true, (TimeSpan?)TimeSpan.FromMilliseconds(100))), "the replica's own refusal, unchanged");
        Assert.That(sent, Is.EqualTo(x.Requests.Count + y.Requests.Count));
        Assert.That(sent, Is.EqualTo(n + st.Retries), "every send after the first is a counted retry");
        Assert.That(sent, Is.LessThanOrEqualTo(bound), "without a budget this would be 3x");
        Assert.That(st.Retries, Is.GreaterThan(0), "the budget allows some");
        Assert.That(st.BudgetExhausted, Is.GreaterThan(0));
        Assert.That(st.Retries + st.BudgetExhausted, Is.InRange(n, 2 * n), "each request was retried, or refused for want of budget, once or twice");
        Assert.That((st.Completed, st.InFlight, st.UpstreamOverloaded), Is.EqualTo(((long)n, 0, sent)));
        Assert.That(st.Saturation, Is.EqualTo(1));
    }

    [Test]
    public async Task WithBudgetLeftARefusalIsRetriedOnAHealthyReplica()
    {
        using var x = new ScriptedReplica("x") { OnRequest = _ => Reply.Overloaded };
        using var y = new ScriptedReplica("y");
        await using var router = await Start(Opt(), Src(x, y), 2);
        await using var c = await FastServeClient.ConnectAsync("127.0.0.1", router.Port, Unthrottled);
        var results = await Drive(c, 60, batch: 20);
        Assert.That(results.Select(r => r.StatusName), Is.All.EqualTo("ok"));
        var st = router.Stats;
        Assert.That(x.Requests.Count, Is.GreaterThan(0), "p2c sent x a share");
        Assert.That((st.Retries, st.BudgetExhausted, st.UpstreamOverloaded), Is.EqualTo(((long)x.Requests.Count, 0L, (long)x.Requests.Count)));
        Assert.That(y.Requests, Has.Count.EqualTo(60));
        Assert.That(st.Saturation, Is.GreaterThan(0).And.LessThan(1));

        // A ratio of 0 retries nothing: x's refusal reaches the client.
        await using var off = await Start(Opt() with { RetryBudgetRatio = 0, Policy = BalancePolicy.RoundRobin }, Src(x, y), 2);
        await using var c2 = await FastServeClient.ConnectAsync("127.0.0.1", off.Port, Unthrottled);
        var two = await Drive(c2, 2, batch: 1);
        Assert.That(two.Select(r => r.StatusName), Is.EquivalentTo(new[] { "ok", "overloaded" }));
        Assert.That((off.Stats.Retries, off.Stats.BudgetExhausted), Is.EqualTo((0L, 1L)));
    }

    [Test]
    public async Task TheJitterDelayNeverRunsPastTheDeadline()
    {
        // The draw is pinned near the top and the cap is a whole second: only the deadline keeps each delay short
        // (half the time left), so all three attempts go out, each with time left.
        using var x = new ScriptedReplica("x") { OnRequest = _ => Reply.Overloaded, RetryAfterMs = 1000 };
        await using var router = await Start(Opt() with { RetryJitterMs = 1000 }, Src(x), 1);
        router.JitterUnit = () => 0.999;
        await using var c = await FastServeClient.ConnectAsync("127.0.0.1", router.Port, Unthrottled);
        var results = await Task.WhenAll(Enumerable.Range(0, 5).Select(_ => c.CompleteAsync(Req(deadlineMs: 1000))));
        Assert.That(results.Select(r => (r.StatusName, r.Detail)), Is.All.EqualTo(("overloaded", "engine.queue_full")));
        var deadlines = x.Deadlines.ToArray();
        TestContext.Out.WriteLine($"deadline fields seen by the replica: {string.Join(" ", deadlines)}");
        Assert.That(deadlines, Has.Length.EqualTo(15), "three attempts each");
        Assert.That(deadlines.Count(d => d == 1000), Is.EqualTo(5));
        Assert.That(deadlines, Is.All.InRange(2u, 1000u), "every retry left with time to spare (a late one would carry 1 ms)");
        Assert.That(router.Stats.Retries, Is.EqualTo(10));
    }

    [Test]
    public async Task ACancelOrADisconnectDuringTheDelayEndsTheRequestOnce()
    {
        using var x = new ScriptedReplica("x") { OnRequest = _ => Reply.Overloaded, RetryAfterMs = 1000 };
        await using var router = await Start(Opt() with { RetryJitterMs = 1000 }, Src(x), 1);
        router.JitterUnit = () => 0.999;
        await using var c = await FastServeClient.ConnectAsync("127.0.0.1", router.Port, Unthrottled);
        var call = c.Start(Req());
        await Until(() => router.DelayedRetries == 1, "the retry waiting");
        call.Cancel();
        var r = await call.Completion;
        Assert.That((r.StatusName, r.Detail), Is.EqualTo(("cancelled", "request.cancelled")));
        await Until(() => router.Stats.InFlight == 0 && router.DelayedRetries == 0, "nothing in flight");
        Assert.That(x.Requests, Has.Count.EqualTo(1), "the retry was never sent");

        await using (var gone = await FastServeClient.ConnectAsync("127.0.0.1", router.Port, Unthrottled))
        {
            gone.Start(Req());
            await Until(() => router.DelayedRetries == 1, "the second retry waiting");
        }
        await Until(() => router.Stats.InFlight == 0 && router.DelayedRetries == 0, "the disconnected client's request ended");
        Assert.That(x.Requests, Has.Count.EqualTo(2));

        x.OnRequest = _ => Reply.Ok;
        Assert.That((await c.CompleteAsync(Req())).StatusName, Is.EqualTo("ok"));
        Assert.That(c.IsConnected, Is.True, "a second FINAL for the cancelled request would have closed the client");
        Assert.That((router.Stats.Requests, router.Stats.Completed, router.Stats.Retries), Is.EqualTo((3L, 3L, 0L)));
    }

    [Test]
    public async Task SaturationRisesWhenEveryReplicaRefusesAndFallsWhenTheyAccept()
    {
        using var x = new ScriptedReplica("x") { OnRequest = _ => Reply.Overloaded };
        using var y = new ScriptedReplica("y") { OnRequest = _ => Reply.Overloaded };
        await using var router = await Start(Opt() with { OverloadWindowMs = 1000, MaxAttempts = 1 }, Src(x, y), 2);
        await using var c = await FastServeClient.ConnectAsync("127.0.0.1", router.Port, Unthrottled);
        Assert.That(router.Stats.Saturation, Is.Zero);
        await Drive(c, 100);
        Assert.That(router.Stats.Saturation, Is.EqualTo(1));

        x.OnRequest = y.OnRequest = _ => Reply.Ok;
        await Drive(c, 100);
        double mixed = router.Stats.Saturation;
        Assert.That(mixed, Is.GreaterThan(0).And.LessThan(1));
        // Accepted answers keep coming while the refusals age out of the one-second window.
        var sw = System.Diagnostics.Stopwatch.StartNew();
        while (router.Stats.Saturation > 0 && sw.Elapsed.TotalSeconds < 10) await Drive(c, 10);
        Assert.That(router.Stats.Saturation, Is.Zero, $"still {router.Stats.Saturation} after {sw.Elapsed.TotalSeconds:F1} s");
        Assert.That(router.Stats.UpstreamOverloaded, Is.EqualTo(100));
    }
}
