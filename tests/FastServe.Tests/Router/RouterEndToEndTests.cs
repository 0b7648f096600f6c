using NUnit.Framework;
using System.Diagnostics;
using System.Globalization;
using System.Net.Http;
using System.Text.Json;
using System.Text.RegularExpressions;
using FastServe.Client;
using FastServe.Protocol;
using FastServe.Tests.Server;

namespace FastServe.Tests.Router;

/// <summary>
/// The published router in front of real replicas (simulated device, tiny model), driven with the .NET client:
/// many concurrent requests spread over three replicas and each served exactly once; a replica drained by SIGTERM
/// under load gets nothing new and nothing fails; a replica killed with SIGKILL under load loses only the requests
/// that had already streamed output, and the rest are retried and succeed.
/// </summary>
[TestFixture, NonParallelizable]
public sealed class RouterEndToEndTests
{
    private static ReplicaProcess Replica(bool metrics, params string[] extra) =>
        ReplicaProcess.Start(["--backend", "sim", "--model", TestModels.Tiny, "--workers", "1", .. extra], metrics: metrics, agent: false);

    private static ReplicaProcess[] Replicas(int n, bool metrics, params string[] extra)
    {
        _ = TestModels.Tiny;    // made once, before the replicas start in parallel
        var tasks = Enumerable.Range(0, n).Select(_ => Task.Run(() => Replica(metrics, extra))).ToArray();
        try
        {
            Task.WaitAll(tasks);
        }
        catch (AggregateException)
        {
            foreach (var t in tasks) if (t.IsCompletedSuccessfully) t.Result.Dispose();
            throw;
        }
        return [.. tasks.Select(t => t.Result)];
    }

    private static async Task<FastServeClient> ConnectWhenReady(RouterProcess router, int endpoints)
    {
        var c = await FastServeClient.ConnectAsync("127.0.0.1", router.Port, new FastServeClientOptions { ClientName = "router-tests" });
        var sw = Stopwatch.StartNew();
        while (true)
        {
            var load = await c.GetLoadAsync();
            if (load.State == ReplicaState.Ready && load.Workers == endpoints) return c;
            if (sw.Elapsed.TotalSeconds > 15) Assert.Fail($"the router never saw {endpoints} ready endpoints; last {load}; stderr:\n{router.Stderr}");
            await Task.Delay(20);
        }
    }

    /// <summary>fastserve_requests_total by status, from a replica's metrics endpoint.</summary>
    private static Dictionary<string, long> RequestsByStatus(ReplicaProcess r)
    {
        using var http = new HttpClient();
        string text = http.GetStringAsync($"http://127.0.0.1:{r.MetricsPort}/metrics").Result;
        var d = new Dictionary<string, long>();
        foreach (Match m in Regex.Matches(text, @"^fastserve_requests_total\{status=""(\w+)""\} (\S+)$", RegexOptions.Multiline))
            d[m.Groups[1].Value] = (long)double.Parse(m.Groups[2].Value, CultureInfo.InvariantCulture);
        return d;
    }

    private static CompletionRequest Req(string prompt, int maxTokens) =>
        new() { Prompt = prompt, Params = RequestParams.Default with { MaxTokens = maxTokens, IgnoreEos = true } };

    private static void Print(JsonElement stopped) => TestContext.Out.WriteLine($"router stopped event: {stopped.GetRawText()}");

    [Test]
    public async Task ManyConcurrentRequestsCompleteExactlyOnceAndReachEveryReplica()
    {
        var rs = Replicas(3, metrics: true);
        try
        {
            using var router = RouterProcess.Start(rs.Select(r => r.Port));
            const int clients = 4, perClient = 150, maxTokens = 8;
            var conns = new FastServeClient[clients];
            for (int i = 0; i < clients; i++) conns[i] = await ConnectWhenReady(router, 3);
            var calls = conns.SelectMany((c, ci) => Enumerable.Range(0, perClient).Select(k => c.Start(Req($"Correct the grammar: client {ci} sentence {k} have error.", maxTokens)))).ToArray();
            var results = await Task.WhenAll(calls.Select(c => c.Completion));
            var bad = results.Where(r => !r.IsOk).Select(r => $"{r.StatusName}/{r.Detail}").Distinct().ToArray();
            Assert.That(bad, Is.Empty, router.Stderr);
            Assert.That(results.Select(r => (r.ReceivedTokens, r.CompletionTokens, r.Finish)), Is.All.EqualTo((maxTokens, maxTokens, WireFinish.Length)));
            foreach (var c in conns)
            {
                Assert.That(c.IsConnected, Is.True, "a duplicate or stray frame would have closed the client");
                await c.DisposeAsync();
            }
            // Every request ran exactly once somewhere, and every replica ran some.
            long[] ok = [];
            var sw = Stopwatch.StartNew();
            do
            {
                ok = [.. rs.Select(r => RequestsByStatus(r).GetValueOrDefault("ok"))];
                if (ok.Sum() == clients * perClient) break;
                await Task.Delay(50);
            } while (sw.Elapsed.TotalSeconds < 5);
            TestContext.Out.WriteLine($"ok requests per replica: {string.Join(", ", ok)}");
            Assert.That(ok.Sum(), Is.EqualTo(clients * perClient));
            Assert.That(ok, Is.All.GreaterThan(clients * perClient / 10));
            foreach (var r in rs) Assert.That(RequestsByStatus(r).Where(kv => kv.Key != "ok").Sum(kv => kv.Value), Is.Zero);
            var stopped = router.Stop();
            Print(stopped);
            Assert.That(stopped.GetProperty("requests").GetInt64(), Is.EqualTo(clients * perClient));
            Assert.That(stopped.GetProperty("retries").GetInt64(), Is.Zero);
            Assert.That(stopped.GetProperty("endpoints").EnumerateArray().Select(e => e.GetProperty("forwarded").GetInt64()), Is.EqualTo(ok));
        }
        finally
        {
            foreach (var r in rs) r.Dispose();
        }
    }

    [Test]
    public async Task AReplicaDrainedUnderLoadGetsNothingNewAndNothingFails()
    {
        var rs = Replicas(2, metrics: true, "--sim-time-scale", "100", "--grace-ms", "20000");
        var (a, b) = (rs[0], rs[1]);
        try
        {
            using var router = RouterProcess.Start(rs.Select(r => r.Port), "--slow-start-ms", "0");
            await using var c = await ConnectWhenReady(router, 2);
            // A request straight to A keeps it draining (not exited) while the test watches its counters.
            await using var direct = await FastServeClient.ConnectAsync("127.0.0.1", a.Port);
            var hold = direct.Start(Req("keeps the replica busy", 1500));
            while (hold.FirstTokenTimestamp == 0) await Task.Delay(5);

            using var stop = new CancellationTokenSource();
            var results = new List<CompletionResult>();
            var load = Enumerable.Range(0, 16).Select(w => Task.Run(async () =>
            {
                for (int k = 0; !stop.IsCancellationRequested; k++)
                {
                    var r = await c.CompleteAsync(Req($"worker {w} request {k}", 10));
                    lock (results) results.Add(r);
                }
            })).ToArray();
            await Task.Delay(1000);
            a.Signal(15);
            // Requests A held when it began draining finish within a few hundred ms; after that its totals must freeze.
            await Task.Delay(700);
            var before = RequestsByStatus(a);
            await Task.Delay(1300);
            var after = RequestsByStatus(a);
            Assert.That(hold.Completion.IsCompleted, Is.False, "the held request keeps A up for the whole window");
            stop.Cancel();
            await Task.WhenAll(load);
            hold.Cancel();
            await hold.Completion;
            TestContext.Out.WriteLine($"A requests by status before {string.Join(",", before)} after {string.Join(",", after)}; router results {results.Count}");
            Assert.That(after, Is.EqualTo(before), "nothing reached A after the router saw it draining");
            Assert.That(results, Has.Count.GreaterThan(100));
            var bad = results.Where(r => !r.IsOk).Select(r => $"{r.StatusName}/{r.Detail}").ToArray();
            Assert.That(bad, Is.Empty);
            Assert.That(a.Proc.WaitForExit(15_000), Is.True, "A exits once drained");
            Assert.That(a.Proc.ExitCode, Is.Zero);
            Assert.That((await c.CompleteAsync(Req("after the drain", 4))).IsOk, Is.True, "B alone still serves");
            var stopped = router.Stop();
            Print(stopped);
        }
        finally
        {
            foreach (var r in rs) r.Dispose();
        }
    }

    [Test]
    public async Task AReplicaKilledUnderLoadLosesNothing()
    {
        // Four sequences at a time per replica: the rest wait in its queue without output when it dies (however long:
        // no queue budget, which would refuse most of them up front). The queued ones are retried on B; the (at most
        // four) running ones had streamed, and are resumed on B from what their client had (docs/router.md, "Failover").
        var rs = Replicas(2, metrics: false, "--sim-time-scale", "100", "--max-seqs", "4", "--queue-interval-ms", "0");
        var (a, b) = (rs[0], rs[1]);
        try
        {
            using var router = RouterProcess.Start(rs.Select(r => r.Port), "--slow-start-ms", "0");
            await using var c = await ConnectWhenReady(router, 2);
            const int n = 40, maxTokens = 20;
            var calls = Enumerable.Range(0, n).Select(i => c.Start(Req($"request {i}", maxTokens))).ToArray();
            var sw = Stopwatch.StartNew();
            while (calls.Count(x => x.FirstTokenTimestamp != 0) < 8 && sw.Elapsed.TotalSeconds < 10) await Task.Delay(2);
            int[] pids = [.. a.Children("serve-worker"), .. a.Children("serve-engine"), a.Proc.Id];
            foreach (int pid in pids) ReplicaProcess.Kill(pid, 9);
            var results = await Task.WhenAll(calls.Select(x => x.Completion));
            var ok = results.Where(r => r.IsOk).ToArray();
            TestContext.Out.WriteLine($"killed A: {ok.Length} ok of {n}");
            Assert.That(ok.Length, Is.EqualTo(n), string.Join("; ", results.Where(r => !r.IsOk).Select(r => $"{r.StatusName}/{r.Detail}: {r.Message}")));
            Assert.That(ok.Select(r => (r.ReceivedTokens, r.CompletionTokens)), Is.All.EqualTo((maxTokens, maxTokens)),
                "a resumed stream carries each token once, and its FINAL counts the resumed ones");
            Assert.That(c.IsConnected, Is.True);
            var stopped = router.Stop();
            Print(stopped);
            Assert.That(stopped.GetProperty("upstream_lost").GetInt64(), Is.Zero);
            Assert.That(stopped.GetProperty("resumes").GetInt64(), Is.InRange(1, 4), "the (at most 4) requests running on A had streamed and were resumed");
            Assert.That(stopped.GetProperty("retries").GetInt64(), Is.GreaterThanOrEqualTo(8), "A's queued requests were retried on B");
        }
        finally
        {
            foreach (var r in rs) r.Dispose();
        }
    }
}
