using NUnit.Framework;
using System.Diagnostics;
using System.Text.Json;
using FastServe.Client;
using FastServe.Protocol;
using FastServe.Tests.Server;

namespace FastServe.Tests.Router;

/// <summary>
/// Bounded chaos: four real replicas (simulated device) behind the published router under steady closed-loop load,
/// one of them killed with SIGKILL (supervisor, engine and workers at once) every couple of seconds and restarted on
/// the same port. Every request must end with exactly one final status, none may be lost, and at least 99.9 % must
/// succeed. The load uses <see cref="FastServeClient.CompleteAsync"/>, whose requests are <c>whole</c>: the router
/// replays one whose replica died mid-generation. The longer soak is bench/router/soak.sh.
/// </summary>
[TestFixture, NonParallelizable]
public sealed class RouterChaosTests
{
    private static ReplicaProcess StartReplica(int port) =>
        ReplicaProcess.Start(["--backend", "sim", "--model", TestModels.Tiny, "--workers", "1"], metrics: false, agent: false, port: port);

    /// <summary>SIGKILL to the replica's supervisor, engine and workers at once; returns when all are gone.</summary>
    internal static void KillHard(ReplicaProcess r)
    {
        int[] pids = [.. r.Children("serve-worker"), .. r.Children("serve-engine"), r.Proc.Id];
        foreach (int pid in pids) ReplicaProcess.Kill(pid, 9);
        r.Proc.WaitForExit(10_000);
        foreach (int pid in pids)
        {
            // The children are not ours to wait for: poll until each is gone, so the port is free to bind again.
            var sw = Stopwatch.StartNew();
            while (Directory.Exists($"/proc/{pid}") && File.ReadAllText($"/proc/{pid}/stat").Split(' ')[2] != "Z" && sw.ElapsedMilliseconds < 10_000) Thread.Sleep(10);
        }
    }

    [Test]
    public async Task KillingReplicasUnderLoadLosesNothingAndAlmostEverythingSucceeds()
    {
        _ = TestModels.Tiny;
        int[] ports = [.. Enumerable.Range(0, 4).Select(_ => ReplicaProcess.FreePort())];
        var rs = new ReplicaProcess[4];
        var starts = ports.Select((p, i) => Task.Run(() => rs[i] = StartReplica(p))).ToArray();
        try
        {
            await Task.WhenAll(starts);
            using var router = RouterProcess.Start(ports, "--slow-start-ms", "1000");
            var clients = new FastServeClient[4];
            for (int i = 0; i < clients.Length; i++)
                clients[i] = await FastServeClient.ConnectAsync("127.0.0.1", router.Port, new FastServeClientOptions { ClientName = "chaos" });
            var sw = Stopwatch.StartNew();
            while ((await clients[0].GetLoadAsync()).Workers < 4)
            {
                if (sw.Elapsed.TotalSeconds > 15) Assert.Fail($"the router never saw 4 replicas; stderr:\n{router.Stderr}");
                await Task.Delay(20);
            }

            // Closed loop: 32 callers, each with one request in flight, 16 tokens out.
            using var stop = new CancellationTokenSource();
            var results = new List<CompletionResult>();
            long started = 0;
            var load = Enumerable.Range(0, 32).Select(w => Task.Run(async () =>
            {
                var c = clients[w % clients.Length];
                for (int k = 0; !stop.IsCancellationRequested; k++)
                {
                    Interlocked.Increment(ref started);
                    var req = new CompletionRequest
                    {
                        Prompt = $"Correct the grammar: caller {w} sentence {k} have a error.",
                        Params = RequestParams.Default with { MaxTokens = 16, IgnoreEos = true, DeadlineMs = 20_000 },
                    };
                    var r = await c.CompleteAsync(req);
                    lock (results) results.Add(r);
                }
            })).ToArray();

            // Chaos: every 2 s kill the next replica outright, bring it back on its port half a second later.
            const int kills = 10;
            for (int i = 0; i < kills; i++)
            {
                await Task.Delay(1500);
                int victim = i % rs.Length;
                KillHard(rs[victim]);
                rs[victim].Dispose();
                await Task.Delay(500);
                rs[victim] = await Task.Run(() => StartReplica(ports[victim]));
            }
            await Task.Delay(1500);
            stop.Cancel();
            var all = Task.WhenAll(load);
            Assert.That(await Task.WhenAny(all, Task.Delay(30_000)), Is.SameAs(all), "every request got its final status");
            await all;

            var byStatus = results.GroupBy(r => $"{r.StatusName}/{r.Detail}").ToDictionary(g => g.Key, g => g.Count());
            int ok = results.Count(r => r.IsOk);
            double success = ok / (double)results.Count;
            TestContext.Out.WriteLine($"{results.Count} requests over {kills} kills: {ok} ok ({success:P3}); by status: {string.Join(", ", byStatus.Select(kv => $"{kv.Key} {kv.Value}"))}");
            Assert.That(results, Has.Count.EqualTo(Interlocked.Read(ref started)), "none lost");
            Assert.That(results, Has.Count.GreaterThan(1000));
            Assert.That(results.Where(r => r.IsOk).Select(r => (r.ReceivedTokens, r.CompletionTokens)), Is.All.EqualTo((16, 16)), "each success carries exactly one attempt's output");
            foreach (var c in clients)
            {
                Assert.That(c.IsConnected, Is.True, "a duplicate or stray frame would have closed the client");
                await c.DisposeAsync();
            }
            Assert.That(success, Is.GreaterThanOrEqualTo(0.999), router.Stderr);

            JsonElement stopped = router.Stop();
            TestContext.Out.WriteLine($"router stopped event: {stopped.GetRawText()}");
            Assert.That(stopped.GetProperty("completed").GetInt64(), Is.EqualTo(results.Count), "the router answered each request once");
            Assert.That(stopped.GetProperty("replays").GetInt64(), Is.GreaterThan(0), "some requests died mid-generation and were replayed");
        }
        finally
        {
            await Task.WhenAll(starts.Select(t => t.ContinueWith(_ => { })));
            foreach (var r in rs) r?.Dispose();
        }
    }
}
