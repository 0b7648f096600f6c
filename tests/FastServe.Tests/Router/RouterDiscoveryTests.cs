using NUnit.Framework;
using System.Diagnostics;
using FastServe.Client;
using FastServe.Protocol;
using FastServe.Router;
using System.Text.Json.Nodes;
using FastServe.Tests.Server;

namespace FastServe.Tests.Router;

/// <summary>
/// Endpoint sources (file, dns, k8s) changing while load runs, with real replicas (simulated device) on 127.0.0.21–23 at one port and
/// the router in process: an endpoint joins and gets traffic, one leaves and gets nothing new while its running
/// requests finish, one changes (weight, or the whole set swapped). Every request is streamed, so none may be
/// replayed: nothing may fail or go missing.
/// </summary>
[TestFixture, NonParallelizable]
public sealed class RouterDiscoveryTests
{
    private static readonly string[] Ips = ["127.0.0.21", "127.0.0.22", "127.0.0.23"];
    private readonly List<string> _log = [];
    private ReplicaProcess[] _replicas = [];
    private int _port;

    [OneTimeSetUp]
    public void StartReplicas()
    {
        _ = TestModels.Tiny;
        _port = ReplicaProcess.FreePort();
        var tasks = Ips.Select(ip => Task.Run(() =>
            ReplicaProcess.Start(["--backend", "sim", "--model", TestModels.Tiny, "--workers", "1", "--host", ip, "--sim-time-scale", "4"],
                metrics: false, agent: false, port: _port))).ToArray();
        try { Task.WaitAll(tasks); }
        catch (AggregateException)
        {
            foreach (var t in tasks) if (t.IsCompletedSuccessfully) t.Result.Dispose();
            throw;
        }
        _replicas = [.. tasks.Select(t => t.Result)];
    }

    [OneTimeTearDown]
    public void StopReplicas()
    {
        foreach (var r in _replicas) r.Dispose();
    }

    [TearDown]
    public void DumpLog()
    {
        lock (_log)
        {
            foreach (var l in _log) TestContext.Out.WriteLine($"router: {l}");
            _log.Clear();
        }
    }

    private RouterOptions Options() => new() { Port = 0, SlowStartMs = 0, Log = m => { lock (_log) _log.Add(m); } };

    private string Addr(int i) => $"{Ips[i]}:{_port}";

    private static Endpoint? Find(RouterHost router, string address) => router.Fleet.Endpoints.FirstOrDefault(e => e.Address == address);

    private static async Task Until(Func<bool> ok, string what, double seconds = 15)
    {
        var sw = Stopwatch.StartNew();
        while (!ok())
        {
            if (sw.Elapsed.TotalSeconds > seconds) Assert.Fail($"timed out waiting for {what}");
            await Task.Delay(20);
        }
    }

    /// <summary>Streaming closed-loop load over two connections until stopped; returns every result.</summary>
    private sealed class Load : IAsyncDisposable
    {
        private readonly CancellationTokenSource _stop = new();
        private readonly FastServeClient[] _clients;
        private readonly Task[] _callers;
        public readonly List<CompletionResult> Results = [];
        public long Started;

        public Load(FastServeClient[] clients, int callers)
        {
            _clients = clients;
            _callers = [.. Enumerable.Range(0, callers).Select(w => Task.Run(async () =>
            {
                for (int k = 0; !_stop.IsCancellationRequested; k++)
                {
                    Interlocked.Increment(ref Started);
                    var call = _clients[w % _clients.Length].Start(new CompletionRequest
                    {
                        Prompt = $"caller {w} request {k}",
                        Params = RequestParams.Default with { MaxTokens = 12, IgnoreEos = true },
                    });
                    var r = await call.Completion;
                    lock (Results) Results.Add(r);
                }
            }))];
        }

        public async Task<List<CompletionResult>> StopAsync()
        {
            _stop.Cancel();
            var all = Task.WhenAll(_callers);
            Assert.That(await Task.WhenAny(all, Task.Delay(20_000)), Is.SameAs(all), "every request got its final status");
            return Results;
        }

        public async ValueTask DisposeAsync()
        {
            _stop.Cancel();
            try { await Task.WhenAll(_callers).WaitAsync(TimeSpan.FromSeconds(20)); } catch (Exception) { }
            foreach (var c in _clients) await c.DisposeAsync();
        }
    }

    private static async Task<Load> StartLoad(RouterHost router)
    {
        var clients = new FastServeClient[2];
        for (int i = 0; i < clients.Length; i++) clients[i] = await FastServeClient.ConnectAsync("127.0.0.1", router.Port);
        return new Load(clients, 16);
    }

    private static void AssertNothingDropped(Load load, List<CompletionResult> results, RouterHost router)
    {
        var bad = results.Where(r => !r.IsOk).GroupBy(r => $"{r.StatusName}/{r.Detail}").Select(g => $"{g.Key} x{g.Count()}").ToArray();
        TestContext.Out.WriteLine($"{results.Count} requests, not ok: [{string.Join(", ", bad)}]; router retries {router.Stats.Retries}");
        Assert.That(results, Has.Count.EqualTo(Interlocked.Read(ref load.Started)), "none lost");
        Assert.That(results, Has.Count.GreaterThan(200));
        Assert.That(bad, Is.Empty);
        Assert.That(results.Select(r => r.ReceivedTokens), Is.All.EqualTo(12));
    }

    // Join C, then A leaves while it runs requests: A's running requests finish, then it gets nothing new.
    private async Task JoinAndLeave(RouterHost router, Func<int[], Task> publish)
    {
        await Until(() => Find(router, Addr(0))?.IsReady == true && Find(router, Addr(1))?.IsReady == true, "A and B ready");
        await using var load = await StartLoad(router);
        await Task.Delay(700);
        Assert.That(Find(router, Addr(2)), Is.Null);

        await publish([0, 1, 2]);
        await Until(() => Find(router, Addr(2)) is { } c && c.Forwarded > 20, "C joined and took requests");

        var a = Find(router, Addr(0))!;
        await Until(() => a.InFlight > 0, "A has requests running");
        await publish([1, 2]);
        await Until(() => Find(router, Addr(0)) is null, "A left the set");
        long aForwarded = a.Forwarded;
        await Until(() => a.InFlight == 0, "A's running requests finished");
        await Task.Delay(500);
        Assert.That(a.Forwarded, Is.EqualTo(aForwarded), "A got nothing after it left");
        var results = await load.StopAsync();
        AssertNothingDropped(load, results, router);
    }

    [Test]
    public async Task FileSourceChangesUnderLoadDropNothing()
    {
        string dir = Directory.CreateTempSubdirectory("fs-disc-").FullName;
        string path = Path.Combine(dir, "endpoints.json");
        try
        {
            // Written whole then renamed over the old file, as an operator's tooling (or a ConfigMap) does.
            int version = 0;
            void Write((int Index, double Weight)[] set)
            {
                string tmp = Path.Combine(dir, $"next-{version++}.json");
                File.WriteAllText(tmp, "{\"endpoints\":[" + string.Join(',', set.Select(e => $"{{\"address\":\"{Addr(e.Index)}\",\"weight\":{e.Weight}}}")) + "]}");
                File.Move(tmp, path, overwrite: true);
            }
            Write([(0, 1), (1, 1)]);
            var src = new FileEndpointSource(path, m => { lock (_log) _log.Add(m); }, TimeSpan.FromMilliseconds(50));
            await using var router = new RouterHost(Options(), src);
            await router.StartAsync();
            await JoinAndLeave(router, set => { Write([.. set.Select(i => (i, 1.0))]); return Task.CompletedTask; });

            // A weight changes in place: the endpoint (and its connections) stays; only its weight moves.
            var b = Find(router, Addr(1))!;
            await using (var load = await StartLoad(router))
            {
                await Task.Delay(300);
                Write([(1, 4), (2, 1)]);
                await Until(() => b.Weight == 4, "B's weight became 4");
                Assert.That(Find(router, Addr(1)), Is.SameAs(b), "the same endpoint, not a new one");
                await Task.Delay(500);
                AssertNothingDropped(load, await load.StopAsync(), router);
            }
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Test]
    public async Task KubernetesSourceChangesUnderLoadDropNothing()
    {
        // The Service's EndpointSlice as the fake API server serves it, then as watch events change it.
        (string?, int, string)[] ports = [("fastserve", _port, "TCP")];
        int rv = 1;
        JsonObject Slice(IEnumerable<JsonObject> eps) => KubernetesSourceTests.Slice("replica-abc", [.. eps], ports, $"{rv}");
        JsonObject Ready(int[] set) => Slice(set.Select(i => KubernetesSourceTests.Ep(Ips[i])));
        using var api = new KubernetesSourceTests.FakeApiServer(KubernetesSourceTests.List("1", Ready([0, 1])));
        using var src = new KubernetesEndpointSource("fleet", "replica", null, api.Config, m => { lock (_log) _log.Add(m); });
        await using var router = new RouterHost(Options(), src);
        await router.StartAsync();
        var watch = await api.NextWatchAsync();
        await JoinAndLeave(router, set => { rv++; return watch.SendAsync("MODIFIED", Ready(set)); });

        // A pod begins terminating (still listed, not ready): it leaves like a removed one, its requests finish.
        await using var load = await StartLoad(router);
        await Task.Delay(300);
        var c = Find(router, Addr(2))!;
        rv++;
        await watch.SendAsync("MODIFIED", Slice([KubernetesSourceTests.Ep(Ips[1]), KubernetesSourceTests.Ep(Ips[2], ready: false, terminating: true)]));
        await Until(() => c.IsRemoved && c.InFlight == 0, "the terminating endpoint left and finished its requests");
        long cForwarded = c.Forwarded;
        await Task.Delay(500);
        Assert.That(c.Forwarded, Is.EqualTo(cForwarded), "nothing new after it began terminating");
        AssertNothingDropped(load, await load.StopAsync(), router);
    }

    [Test]
    public async Task DnsSourceChangesUnderLoadDropNothing()
    {
        using var dns = new Dnsmasq();
        void Publish(int[] set) => dns.Hosts("fleet", string.Concat(set.Select(i => $"{Ips[i]} replicas.fleet.test\n")));
        Publish([0, 1]);
        var src = new DnsEndpointSource("replicas.fleet.test", _port, TimeSpan.FromMilliseconds(200), [dns.Server], m => { lock (_log) _log.Add(m); });
        await using var router = new RouterHost(Options(), src);
        await router.StartAsync();
        await JoinAndLeave(router, set => { Publish(set); return Task.CompletedTask; });

        // The whole set swapped at once (a rollout that replaced every pod): B and C leave, A comes back.
        await using var load = await StartLoad(router);
        await Task.Delay(300);
        Publish([0]);
        await Until(() => router.Fleet.Endpoints.Select(e => e.Address).SequenceEqual([Addr(0)]) && Find(router, Addr(0))!.Forwarded > 20, "only A, serving");
        await Task.Delay(300);
        AssertNothingDropped(load, await load.StopAsync(), router);
    }
}
