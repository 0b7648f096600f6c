using System.Collections.Specialized;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Threading.Channels;
using FastServe.Router;
using FastServe.Tests.Server;
using k8s;
using k8s.Models;
using NUnit.Framework;

namespace FastServe.Tests.Router;

/// <summary>The Kubernetes EndpointSlice source against a fake API server on loopback: the list, the watch's events,
/// watches that end or expire, failing answers that keep the previous set, the requests it sends, and the source text.</summary>
[NonParallelizable]
public class KubernetesSourceTests
{
    /// <summary>
    /// Enough of the Kubernetes API for one resource: each request is recorded; a list answers <see cref="ListBody"/>
    /// with <see cref="ListStatus"/>; a watch (<c>watch=true</c>) answers <see cref="WatchStatus"/>, or when that is 200
    /// opens a chunked stream that the test drives through <see cref="NextWatchAsync"/>. Raw HTTP/1.1 over TCP, one
    /// request per connection, so a test controls exactly when bytes and ends arrive.
    /// </summary>
    internal sealed class FakeApiServer : IDisposable
    {
        private readonly TcpListener _listener = new(IPAddress.Loopback, 0);
        private readonly CancellationTokenSource _stop = new();
        private readonly List<Request> _requests = [];
        private readonly List<TcpClient> _connections = [];
        private readonly Channel<WatchStream> _watches = Channel.CreateUnbounded<WatchStream>();

        public volatile string ListBody;
        public volatile int ListStatus = 200;
        public volatile int WatchStatus = 200;

        public sealed record Request(string Path, NameValueCollection Query, string? Authorization)
        {
            public bool IsWatch => Query["watch"] == "true";
        }

        public FakeApiServer(string listBody)
        {
            ListBody = listBody;
            _listener.Start();
            Port = ((IPEndPoint)_listener.LocalEndpoint).Port;
            _ = AcceptLoopAsync();
        }

        public int Port { get; }

        public KubernetesClientConfiguration Config => new() { Host = $"http://127.0.0.1:{Port}" };

        public Request[] Requests { get { lock (_requests) return [.. _requests]; } }

        public int Lists => Requests.Count(r => !r.IsWatch);

        public async Task<WatchStream> NextWatchAsync(double seconds = 10)
        {
            using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(seconds));
            try { return await _watches.Reader.ReadAsync(cts.Token); }
            catch (OperationCanceledException) { Assert.Fail("the source opened a watch in time"); throw; }
        }

        private async Task AcceptLoopAsync()
        {
            try
            {
                while (true)
                {
                    var c = await _listener.AcceptTcpClientAsync(_stop.Token);
                    lock (_connections) _connections.Add(c);
                    _ = ServeAsync(c);
                }
            }
            catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException or SocketException) { }
        }

        private async Task ServeAsync(TcpClient c)
        {
            try
            {
                var stream = c.GetStream();
                var head = new List<byte>();
                var one = new byte[1];
                while (head.Count < 65536 && !(head.Count >= 4 && head[^4] == '\r' && head[^3] == '\n' && head[^2] == '\r' && head[^1] == '\n'))
                {
                    if (await stream.ReadAsync(one, _stop.Token) == 0) return;
                    head.Add(one[0]);
                }
                var lines = Encoding.ASCII.GetString([.. head]).Split("\r\n");
                string target = lines[0].Split(' ')[1];
                string? auth = lines.Skip(1).FirstOrDefault(l => l.StartsWith("Authorization:", StringComparison.OrdinalIgnoreCase))?["Authorization:".Length..].Trim();
                int q = target.IndexOf('?');
                var request = new Request(q < 0 ? target : target[..q], System.Web.HttpUtility.ParseQueryString(q < 0 ? "" : target[(q + 1)..]), auth);
                lock (_requests) _requests.Add(request);
                if (request.IsWatch && WatchStatus == 200)
                {
                    await stream.WriteAsync(Encoding.ASCII.GetBytes("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"), _stop.Token);
                    await stream.FlushAsync(_stop.Token);
                    _watches.Writer.TryWrite(new WatchStream(c, stream));
                    return;
                }
                int status = request.IsWatch ? WatchStatus : ListStatus;
                string body = status == 200 ? ListBody : StatusJson(status);
                byte[] bytes = Encoding.UTF8.GetBytes(body);
                await stream.WriteAsync(Encoding.ASCII.GetBytes($"HTTP/1.1 {status} {(status == 200 ? "OK" : "Failure")}\r\nContent-Type: application/json\r\nContent-Length: {bytes.Length}\r\nConnection: close\r\n\r\n"), _stop.Token);
                await stream.WriteAsync(bytes, _stop.Token);
                await stream.FlushAsync(_stop.Token);
                c.Close();
            }
            catch (Exception e) when (e is IOException or SocketException or OperationCanceledException or ObjectDisposedException) { }
        }

        public void Dispose()
        {
            _stop.Cancel();
            _listener.Stop();
            lock (_connections) foreach (var c in _connections) c.Dispose();
            _stop.Dispose();
        }
    }

    /// <summary>One open watch response: events go out as chunks, one JSON line each.</summary>
    internal sealed class WatchStream(TcpClient client, NetworkStream stream)
    {
        public async Task SendAsync(string type, JsonNode obj)
        {
            string line = new JsonObject { ["type"] = type, ["object"] = obj.DeepClone() }.ToJsonString() + "\n";
            byte[] data = Encoding.UTF8.GetBytes(line);
            await stream.WriteAsync(Encoding.ASCII.GetBytes($"{data.Length:X}\r\n"));
            await stream.WriteAsync(data);
            await stream.WriteAsync("\r\n"u8.ToArray());
            await stream.FlushAsync();
        }

        /// <summary>Ends the response properly (the server's timeoutSeconds).</summary>
        public async Task EndAsync()
        {
            await stream.WriteAsync("0\r\n\r\n"u8.ToArray());
            await stream.FlushAsync();
            client.Close();
        }
    }

    private static string StatusJson(int code) => new JsonObject
    {
        ["kind"] = "Status", ["apiVersion"] = "v1", ["metadata"] = new JsonObject(), ["status"] = "Failure",
        ["message"] = code == 410 ? "too old resource version: 1 (2)" : $"fake failure {code}", ["reason"] = code == 410 ? "Expired" : "InternalError",
        ["code"] = code,
    }.ToJsonString();

    internal static JsonObject Ep(string address, bool? ready = true, bool? terminating = null, string? pod = null)
    {
        var conditions = new JsonObject();
        if (ready is not null) conditions["ready"] = ready;
        if (terminating is not null) conditions["terminating"] = terminating;
        var e = new JsonObject { ["addresses"] = new JsonArray(address), ["conditions"] = conditions };
        if (pod is not null) e["targetRef"] = new JsonObject { ["kind"] = "Pod", ["namespace"] = "fleet", ["name"] = pod, ["uid"] = "uid-" + pod };
        return e;
    }

    private static readonly (string? Name, int Port, string Protocol)[] FastservePorts = [("metrics", 9090, "TCP"), ("fastserve", 7700, "TCP")];

    internal static JsonObject Slice(string name, JsonObject[] endpoints, (string? Name, int Port, string Protocol)[]? ports = null, string rv = "1", string addressType = "IPv4")
    {
        var p = new JsonArray();
        foreach (var (n, port, protocol) in ports ?? FastservePorts)
        {
            var o = new JsonObject { ["port"] = port, ["protocol"] = protocol };
            if (n is not null) o["name"] = n;
            p.Add((JsonNode)o);
        }
        var eps = new JsonArray();
        foreach (var e in endpoints) eps.Add(e.DeepClone());
        return new JsonObject
        {
            ["apiVersion"] = "discovery.k8s.io/v1", ["kind"] = "EndpointSlice",
            ["metadata"] = new JsonObject
            {
                ["name"] = name, ["namespace"] = "fleet", ["resourceVersion"] = rv, ["creationTimestamp"] = "2025-06-01T12:00:00Z",
                ["labels"] = new JsonObject { ["kubernetes.io/service-name"] = "replica", ["endpointslice.kubernetes.io/managed-by"] = "endpointslice-controller.k8s.io" },
            },
            ["addressType"] = addressType, ["ports"] = p, ["endpoints"] = eps,
        };
    }

    internal static string List(string rv, params JsonObject[] slices)
    {
        var items = new JsonArray();
        foreach (var s in slices) items.Add(s.DeepClone());
        return new JsonObject { ["apiVersion"] = "discovery.k8s.io/v1", ["kind"] = "EndpointSliceList", ["metadata"] = new JsonObject { ["resourceVersion"] = rv }, ["items"] = items }.ToJsonString();
    }

    private static async Task<string[]> NextAsync(IAsyncEnumerator<IReadOnlyList<EndpointSpec>> e, double seconds = 10)
    {
        var move = e.MoveNextAsync().AsTask();
        Assert.That(await Task.WhenAny(move, Task.Delay(TimeSpan.FromSeconds(seconds))), Is.SameAs(move), "the source yielded a set in time");
        Assert.That(move.Result, Is.True);
        return [.. e.Current.Select(x => x.Address)];
    }

    // A move that must stay pending: nothing new to yield.
    private static async Task<Task<bool>> AssertQuietAsync(IAsyncEnumerator<IReadOnlyList<EndpointSpec>> e, int ms = 300)
    {
        var move = e.MoveNextAsync().AsTask();
        await Task.WhenAny(move, Task.Delay(ms));
        Assert.That(move.IsCompleted, Is.False, move.IsCompleted && move.Result ? $"no new set, but got {string.Join(",", e.Current.Select(x => x.Address))}" : "no new set");
        return move;
    }

    private static async Task<string[]> AwaitMoveAsync(Task<bool> move, IAsyncEnumerator<IReadOnlyList<EndpointSpec>> e, double seconds = 10)
    {
        Assert.That(await Task.WhenAny(move, Task.Delay(TimeSpan.FromSeconds(seconds))), Is.SameAs(move), "the source yielded a set in time");
        Assert.That(move.Result, Is.True);
        return [.. e.Current.Select(x => x.Address)];
    }

    private static async Task UntilAsync(Func<bool> condition, string what, double seconds = 10)
    {
        var deadline = DateTime.UtcNow.AddSeconds(seconds);
        while (!condition())
        {
            if (DateTime.UtcNow > deadline) Assert.Fail($"timed out waiting for {what}");
            await Task.Delay(20);
        }
    }

    private sealed class Log
    {
        private readonly List<string> _lines = [];
        public void Add(string line) { lock (_lines) _lines.Add(line); }
        public string[] Lines { get { lock (_lines) return [.. _lines]; } }
    }

    [Test]
    public async Task TheListGivesTheFirstSetOfReadyEndpointsAtTheNamedPortAndTheWatchStartsFromItsVersion()
    {
        using var api = new FakeApiServer(List("100",
            Slice("replica-a", [Ep("10.0.0.1"), Ep("10.0.0.2", ready: false), Ep("10.0.0.3", ready: null), Ep("10.0.0.4", ready: true, terminating: true)]),
            Slice("replica-b", [Ep("10.0.0.3"), Ep("10.0.0.5", terminating: false)])));
        using var src = new KubernetesEndpointSource("fleet", "replica", null, api.Config);
        Assert.That(src.Description, Is.EqualTo("k8s:fleet/replica"));
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        await using var e = src.WatchAsync(cts.Token).GetAsyncEnumerator(cts.Token);
        Assert.That(await NextAsync(e), Is.EqualTo(new[] { "10.0.0.1:7700", "10.0.0.3:7700", "10.0.0.5:7700" }),
            "ready (or no ready condition), not terminating, port 'fastserve', the address in both slices once, sorted");

        await api.NextWatchAsync();
        var requests = api.Requests;
        Assert.That(requests, Has.Length.EqualTo(2));
        foreach (var r in requests)
        {
            Assert.That(r.Path, Is.EqualTo("/apis/discovery.k8s.io/v1/namespaces/fleet/endpointslices"));
            Assert.That(r.Query["labelSelector"], Is.EqualTo("kubernetes.io/service-name=replica"));
        }
        Assert.That(requests[0].IsWatch, Is.False, "a list first");
        Assert.That(requests[1].IsWatch, Is.True);
        Assert.That(requests[1].Query["resourceVersion"], Is.EqualTo("100"), "the watch starts where the list was taken");
        Assert.That(int.Parse(requests[1].Query["timeoutSeconds"]!), Is.InRange(1, 3600), "the server ends the watch in time");
    }

    [Test]
    public async Task WatchEventsGiveNewFullSetsAndNothingWhenTheSetIsUnchangedOrEmpty()
    {
        var a1 = Slice("replica-a", [Ep("10.0.0.1")]);
        using var api = new FakeApiServer(List("10", a1));
        var log = new Log();
        using var src = new KubernetesEndpointSource("fleet", "replica", null, api.Config, log.Add);
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        await using var e = src.WatchAsync(cts.Token).GetAsyncEnumerator(cts.Token);
        Assert.That(await NextAsync(e), Is.EqualTo(new[] { "10.0.0.1:7700" }));
        var w = await api.NextWatchAsync();

        var b = Slice("replica-b", [Ep("10.0.0.2")], rv: "11");
        await w.SendAsync("ADDED", b);
        Assert.That(await NextAsync(e), Is.EqualTo(new[] { "10.0.0.1:7700", "10.0.0.2:7700" }));

        await w.SendAsync("MODIFIED", Slice("replica-a", [Ep("10.0.0.1", ready: false), Ep("10.0.0.3")], rv: "12"));
        Assert.That(await NextAsync(e), Is.EqualTo(new[] { "10.0.0.2:7700", "10.0.0.3:7700" }));

        // A bookmark and a slice rewritten with the same endpoints change nothing; the next real change comes through.
        await w.SendAsync("BOOKMARK", new JsonObject { ["kind"] = "EndpointSlice", ["apiVersion"] = "discovery.k8s.io/v1", ["metadata"] = new JsonObject { ["resourceVersion"] = "13" } });
        await w.SendAsync("MODIFIED", Slice("replica-b", [Ep("10.0.0.2"), Ep("10.0.0.9", ready: false)], rv: "14"));
        var pending = await AssertQuietAsync(e);
        await w.SendAsync("DELETED", Slice("replica-b", [Ep("10.0.0.2")], rv: "15"));
        Assert.That(await AwaitMoveAsync(pending, e), Is.EqualTo(new[] { "10.0.0.3:7700" }));

        // The last slice goes: no empty set, one log line; the next endpoint is a new set.
        await w.SendAsync("DELETED", Slice("replica-a", [], rv: "16"));
        pending = await AssertQuietAsync(e);
        await UntilAsync(() => log.Lines.Any(l => l.Contains("no ready endpoints; keeping the previous 1-endpoint set")), "the empty-set log line");
        await w.SendAsync("ADDED", Slice("replica-c", [Ep("10.0.0.4")], rv: "17"));
        Assert.That(await AwaitMoveAsync(pending, e), Is.EqualTo(new[] { "10.0.0.4:7700" }));
        Assert.That(log.Lines, Has.Length.EqualTo(1), string.Join("\n", log.Lines));
        Assert.That(api.Lists, Is.EqualTo(1), "events alone, no re-list");
    }

    [Test]
    public async Task AWatchThatEndsIsFollowedByANewListAndWatch()
    {
        using var api = new FakeApiServer(List("20", Slice("replica-a", [Ep("10.0.0.1")])));
        var log = new Log();
        using var src = new KubernetesEndpointSource("fleet", "replica", null, api.Config, log.Add) { MinRetryDelay = TimeSpan.FromMilliseconds(50) };
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        await using var e = src.WatchAsync(cts.Token).GetAsyncEnumerator(cts.Token);
        Assert.That(await NextAsync(e), Is.EqualTo(new[] { "10.0.0.1:7700" }));
        var w = await api.NextWatchAsync();

        // Missed while no watch is open: the new list catches it.
        api.ListBody = List("25", Slice("replica-a", [Ep("10.0.0.1"), Ep("10.0.0.2")]));
        await w.EndAsync();
        Assert.That(await NextAsync(e), Is.EqualTo(new[] { "10.0.0.1:7700", "10.0.0.2:7700" }));
        var w2 = await api.NextWatchAsync();
        Assert.That(api.Lists, Is.EqualTo(2));
        Assert.That(api.Requests[^1].Query["resourceVersion"], Is.EqualTo("25"));
        await w2.SendAsync("MODIFIED", Slice("replica-a", [Ep("10.0.0.2")], rv: "26"));
        Assert.That(await NextAsync(e), Is.EqualTo(new[] { "10.0.0.2:7700" }), "the new watch's events apply");
        Assert.That(log.Lines, Is.Empty, "a watch ending is routine");
    }

    [Test]
    public async Task AnExpiredWatchAsHttp410OrAsAnErrorEventIsFollowedByANewList()
    {
        using var api = new FakeApiServer(List("30", Slice("replica-a", [Ep("10.0.0.1")])));
        var log = new Log();
        using var src = new KubernetesEndpointSource("fleet", "replica", null, api.Config, log.Add) { MinRetryDelay = TimeSpan.FromMilliseconds(50) };
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        await using var e = src.WatchAsync(cts.Token).GetAsyncEnumerator(cts.Token);
        Assert.That(await NextAsync(e), Is.EqualTo(new[] { "10.0.0.1:7700" }));
        var w = await api.NextWatchAsync();

        // In the stream: an ERROR event with a 410 Status (what an API server sends once the version is compacted).
        api.ListBody = List("40", Slice("replica-a", [Ep("10.0.0.2")]));
        await w.SendAsync("ERROR", JsonNode.Parse(StatusJson(410))!);
        Assert.That(await NextAsync(e), Is.EqualTo(new[] { "10.0.0.2:7700" }));
        w = await api.NextWatchAsync();
        Assert.That(api.Lists, Is.EqualTo(2));

        // As the watch's HTTP status: 410 Gone. Only a new list sees the change made meanwhile.
        api.WatchStatus = 410;
        await w.EndAsync();
        await UntilAsync(() => api.Requests.Count(r => r.IsWatch) >= 3, "a watch refused with 410");
        int lists = api.Lists;
        api.ListBody = List("50", Slice("replica-a", [Ep("10.0.0.3")]));
        api.WatchStatus = 200;
        Assert.That(await NextAsync(e), Is.EqualTo(new[] { "10.0.0.3:7700" }));
        await api.NextWatchAsync();
        Assert.That(api.Lists, Is.GreaterThan(lists));
        Assert.That(log.Lines, Is.Empty, "an expired watch is routine");
    }

    [Test]
    public async Task FailingAnswersKeepThePreviousSetAndLogOncePerStreak()
    {
        using var api = new FakeApiServer(List("60", Slice("replica-a", [Ep("10.0.0.1")])));
        var log = new Log();
        using var src = new KubernetesEndpointSource("fleet", "replica", null, api.Config, log.Add)
        {
            MinRetryDelay = TimeSpan.FromMilliseconds(50), MaxRetryDelay = TimeSpan.FromMilliseconds(200),
        };
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        await using var e = src.WatchAsync(cts.Token).GetAsyncEnumerator(cts.Token);
        Assert.That(await NextAsync(e), Is.EqualTo(new[] { "10.0.0.1:7700" }));
        var w = await api.NextWatchAsync();

        // The list fails again and again: no set (an empty one least of all), one log line.
        api.ListStatus = 500;
        await w.EndAsync();
        var pending = e.MoveNextAsync().AsTask();
        await UntilAsync(() => api.Lists >= 5, "three failed lists");
        Assert.That(pending.IsCompleted, Is.False, "no set while the API fails");
        Assert.That(log.Lines, Has.Length.EqualTo(1), string.Join("\n", log.Lines));
        Assert.That(log.Lines[0], Does.StartWith("k8s:fleet/replica: the API server answered 500").And.Contain("fake failure 500").And.Contain("keeping the previous 1-endpoint set"));

        api.ListBody = List("61", Slice("replica-a", [Ep("10.0.0.1"), Ep("10.0.0.2")]));
        api.ListStatus = 200;
        Assert.That(await AwaitMoveAsync(pending, e), Is.EqualTo(new[] { "10.0.0.1:7700", "10.0.0.2:7700" }));
        w = await api.NextWatchAsync();

        // Lists succeed but every watch is refused: a new streak, one more line, retried with backoff.
        api.WatchStatus = 500;
        await w.EndAsync();
        await UntilAsync(() => api.Requests.Count(r => r.IsWatch) >= 5, "three refused watches");
        Assert.That(log.Lines, Has.Length.EqualTo(2), string.Join("\n", log.Lines));
        Assert.That(log.Lines[1], Does.Contain("watch: the API server answered 500").And.Contain("keeping the previous 2-endpoint set"));
        api.WatchStatus = 200;
        w = await api.NextWatchAsync();
        await w.SendAsync("ADDED", Slice("replica-b", [Ep("10.0.0.3")]));
        Assert.That(await NextAsync(e), Is.EqualTo(new[] { "10.0.0.1:7700", "10.0.0.2:7700", "10.0.0.3:7700" }));
    }

    [Test]
    public async Task UntilTheFirstListSucceedsTheSourceWaitsAndSaysWhy()
    {
        using var api = new FakeApiServer(List("70", Slice("replica-a", [Ep("10.0.0.1")]))) { ListStatus = 403 };
        var log = new Log();
        using var src = new KubernetesEndpointSource("fleet", "replica", null, api.Config, log.Add) { MinRetryDelay = TimeSpan.FromMilliseconds(50), MaxRetryDelay = TimeSpan.FromMilliseconds(100) };
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        await using var e = src.WatchAsync(cts.Token).GetAsyncEnumerator(cts.Token);
        var first = e.MoveNextAsync().AsTask();
        await UntilAsync(() => api.Lists >= 3, "three refused lists");
        Assert.That(first.IsCompleted, Is.False, "no first set yet");
        Assert.That(log.Lines, Has.Length.EqualTo(1), string.Join("\n", log.Lines));
        Assert.That(log.Lines[0], Does.Contain("answered 403").And.Contain("get, list and watch on endpointslices.discovery.k8s.io in fleet").And.Contain("keeping the empty set"));
        api.ListStatus = 200;
        Assert.That(await AwaitMoveAsync(first, e), Is.EqualTo(new[] { "10.0.0.1:7700" }));
    }

    [Test]
    public async Task AQuietWatchOutlivesTheClientsRequestTimeout()
    {
        using var api = new FakeApiServer(List("80", Slice("replica-a", [Ep("10.0.0.1")])));
        var config = api.Config;
        config.HttpClientTimeout = TimeSpan.FromSeconds(1);
        using var src = new KubernetesEndpointSource("fleet", "replica", null, config);
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        await using var e = src.WatchAsync(cts.Token).GetAsyncEnumerator(cts.Token);
        Assert.That(await NextAsync(e), Is.EqualTo(new[] { "10.0.0.1:7700" }));
        var w = await api.NextWatchAsync();
        await Task.Delay(1500);
        await w.SendAsync("ADDED", Slice("replica-b", [Ep("10.0.0.2")]));
        Assert.That(await NextAsync(e), Is.EqualTo(new[] { "10.0.0.1:7700", "10.0.0.2:7700" }));
        Assert.That(api.Lists, Is.EqualTo(1), "the same watch delivered it");
    }

    private static V1EndpointSlice Parsed(JsonObject slice) => JsonSerializer.Deserialize(slice.ToJsonString(), SourceGenerationContext.Default.V1EndpointSlice)!;

    [Test]
    public void ThePortIsTheNamedOneTheDefaultOneTheOnlyOneOrTheGivenNumber()
    {
        var config = new KubernetesClientConfiguration { Host = "http://127.0.0.1:9" };
        var two = Parsed(Slice("two", [Ep("10.0.0.1")]));
        var only = Parsed(Slice("only", [Ep("10.0.0.2")], [(null, 8000, "TCP")]));
        var none = Parsed(Slice("none", [Ep("10.0.0.3")], [("http", 8080, "TCP"), ("grpc", 9000, "TCP")]));
        var udp = Parsed(Slice("udp", [Ep("10.0.0.4")], [("fastserve", 7700, "UDP"), ("tcp", 7701, "TCP")]));
        var log = new Log();
        using var byDefault = new KubernetesEndpointSource("fleet", "replica", null, config, log.Add);
        var warned = new HashSet<string>();
        Assert.That(byDefault.Snapshot([two, only, none, udp], warned).Select(x => x.Address),
            Is.EqualTo(new[] { "10.0.0.1:7700", "10.0.0.2:8000", "10.0.0.4:7701" }), "'fastserve', else the only TCP port");
        Assert.That(log.Lines, Has.Length.EqualTo(1));
        Assert.That(log.Lines[0], Does.Contain("EndpointSlice none has ports http, grpc and none named 'fastserve'"));
        byDefault.Snapshot([two, only, none, udp], warned);
        Assert.That(log.Lines, Has.Length.EqualTo(1), "a slice without a port is logged once");

        using var byName = KubernetesEndpointSource.Parse("fleet/replica:metrics", config);
        Assert.That(byName.PortName, Is.EqualTo("metrics"));
        Assert.That(byName.Snapshot([two, only]).Select(x => x.Address), Is.EqualTo(new[] { "10.0.0.1:9090" }), "a slice without that name is left out");

        using var byNumber = KubernetesEndpointSource.Parse("fleet/replica:7800", config);
        Assert.That((byNumber.PortNumber, byNumber.Description), Is.EqualTo(((int?)7800, "k8s:fleet/replica:7800")));
        Assert.That(byNumber.Snapshot([two, only, none]).Select(x => x.Address), Is.EqualTo(new[] { "10.0.0.1:7800", "10.0.0.2:7800", "10.0.0.3:7800" }));
    }

    [Test]
    public void APodInBothSlicesOfADualStackServiceCountsOnce()
    {
        var config = new KubernetesClientConfiguration { Host = "http://127.0.0.1:9" };
        var v4 = Parsed(Slice("v4", [Ep("10.0.0.1", pod: "p1"), Ep("10.0.0.2", pod: "p2")]));
        var v6 = Parsed(Slice("v6", [Ep("fd00::1", pod: "p1"), Ep("fd00::3", pod: "p3")], addressType: "IPv6"));
        using var src = new KubernetesEndpointSource("fleet", "replica", null, config);
        Assert.That(src.Snapshot([v6, v4]).Select(x => x.Address), Is.EqualTo(new[] { "10.0.0.1:7700", "10.0.0.2:7700", "[fd00::3]:7700" }));
    }

    [Test]
    public void SourceTextParsesAndBadTextIsABadSource()
    {
        var config = new KubernetesClientConfiguration { Host = "http://127.0.0.1:9" };
        using (var s = KubernetesEndpointSource.Parse("fastserve/fastserve-replica", config))
            Assert.That((s.Namespace, s.Service, s.PortName, s.PortNumber, s.Description), Is.EqualTo(("fastserve", "fastserve-replica", (string?)null, (int?)null, "k8s:fastserve/fastserve-replica")));
        string[] bad =
        [
            "", "fastserve", "/svc", "ns/", "NS/svc", "ns/Svc", "ns/svc_x", "-ns/svc", "ns/svc-", "ns/svc:", "ns/svc:0", "ns/svc:70000",
            "ns/svc:Bad_Port", "ns/svc/extra", "//svc", "ns/svc:a:b", new string('a', 64) + "/svc", "ns/s vc",
        ];
        foreach (var b in bad)
        {
            var ex = Assert.Throws<EndpointSourceException>(() => KubernetesEndpointSource.Parse(b, config), b)!;
            Assert.That(ex.Code, Is.EqualTo("route.bad_source"), b);
            Assert.That(ex.Message, Does.Contain("k8s:"), b);
            Assert.That(Assert.Throws<EndpointSourceException>(() => EndpointSources.Parse("k8s:" + b), b)!.Code, Is.EqualTo("route.bad_source"), "k8s:" + b);
        }
    }

    [Test]
    public async Task WithoutAConfigurationTheKubeconfigIsReadAndItsTokenSent()
    {
        Assume.That(KubernetesClientConfiguration.IsInCluster(), Is.False, "in a cluster the service account comes first");
        string? saved = Environment.GetEnvironmentVariable("KUBECONFIG");
        string dir = TestModels.TempDir("kubeconfig");
        try
        {
            Environment.SetEnvironmentVariable("KUBECONFIG", Path.Combine(dir, "missing"));
            var ex = Assert.Throws<EndpointSourceException>(() => EndpointSources.Parse("k8s:fleet/replica"))!;
            Assert.That(ex.Code, Is.EqualTo("route.k8s_config"));
            Assert.That(ex.Message, Does.Contain("no kubeconfig found").And.Contain("KUBECONFIG=" + Path.Combine(dir, "missing")));

            using var api = new FakeApiServer(List("90", Slice("replica-a", [Ep("10.0.0.1")])));
            string path = Path.Combine(dir, "config");
            KubeConfigFile.Write(path, api.Port, "router", "fake-token-1");
            Environment.SetEnvironmentVariable("KUBECONFIG", Path.Combine(dir, "missing") + Path.PathSeparator + path);
            var src = EndpointSources.Parse("k8s:fleet/replica");
            Assert.That(src, Is.TypeOf<KubernetesEndpointSource>());
            using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(30));
            await using var e = src.WatchAsync(cts.Token).GetAsyncEnumerator(cts.Token);
            Assert.That(await NextAsync(e), Is.EqualTo(new[] { "10.0.0.1:7700" }));
            await api.NextWatchAsync();
            Assert.That(api.Requests.Select(r => (r.IsWatch, r.Authorization)), Is.EqualTo(new[] { (false, "Bearer fake-token-1"), (true, "Bearer fake-token-1") }),
                "the list and the watch both carry the kubeconfig's token");
            ((IDisposable)src).Dispose();
        }
        finally
        {
            Environment.SetEnvironmentVariable("KUBECONFIG", saved);
        }
    }

    private static string Kubeconfig(string dir, int apiPort, string token)
    {
        string path = Path.Combine(dir, "config");
        File.WriteAllText(path, $"""
            apiVersion: v1
            kind: Config
            clusters:
            - name: fake
              cluster:
                server: http://127.0.0.1:{apiPort}
            users:
            - name: router
              user:
                token: {token}
            contexts:
            - name: fake
              context:
                cluster: fake
                user: router
            current-context: fake
            """);
        return path;
    }

    // NativeAOT is where a Kubernetes client usually breaks (reflection-based JSON or YAML): the published binary reads
    // the kubeconfig, lists and watches, and its router applies each set. Replica addresses are loopback ones at a port
    // where nothing listens.
    [Test]
    public async Task ThePublishedBinaryReadsItsKubeconfigListsAndWatches()
    {
        Assume.That(KubernetesClientConfiguration.IsInCluster(), Is.False, "in a cluster the service account comes first");
        string exe = DistBinary.Path;
        string dir = TestModels.TempDir("kubeconfig-aot");
        int dead = ReplicaProcess.FreePort();
        (string?, int, string)[] ports = [("metrics", 9090, "TCP"), ("fastserve", dead, "TCP")];

        // No configuration at all: a clear error and exit 1 before anything listens.
        var psi = new ProcessStartInfo(exe) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in new[] { "route", "--listen", "0", "--endpoints", "k8s:fleet/replica", "--json" }) psi.ArgumentList.Add(a);
        psi.Environment["KUBECONFIG"] = Path.Combine(dir, "missing");
        using (var p = Process.Start(psi)!)
        {
            var stdout = p.StandardOutput.ReadToEndAsync();
            var stderr = p.StandardError.ReadToEndAsync();
            Assert.That(p.WaitForExit(TimeSpan.FromSeconds(30)), Is.True);
            Assert.That(p.ExitCode, Is.EqualTo(1));
            Assert.That(await stderr, Does.StartWith("error[route.k8s_config]").And.Contain("no kubeconfig found"));
            using var doc = JsonDocument.Parse(await stdout);
            Assert.That(doc.RootElement.GetProperty("error").GetProperty("code").GetString(), Is.EqualTo("route.k8s_config"));
        }

        using var api = new FakeApiServer(List("100", Slice("replica-a", [Ep("127.0.0.61"), Ep("127.0.0.62", ready: null), Ep("127.0.0.69", ready: false)], ports)));
        psi.Environment["KUBECONFIG"] = Kubeconfig(dir, api.Port, "aot-token");
        using var router = Process.Start(psi)!;
        var err = new StringBuilder();
        router.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (err) err.AppendLine(e.Data); };
        router.BeginErrorReadLine();
        string Err() { lock (err) return err.ToString(); }
        try
        {
            var ready = router.StandardOutput.ReadLineAsync();
            Assert.That(await Task.WhenAny(ready, Task.Delay(30_000)), Is.SameAs(ready), "the router became ready");
            using (var doc = JsonDocument.Parse(ready.Result!))
            {
                Assert.That(doc.RootElement.GetProperty("endpoints").GetInt32(), Is.EqualTo(2), Err());
                Assert.That(doc.RootElement.GetProperty("source").GetString(), Is.EqualTo("k8s:fleet/replica"));
            }
            var w = await api.NextWatchAsync(30);
            await w.SendAsync("BOOKMARK", new JsonObject { ["kind"] = "EndpointSlice", ["apiVersion"] = "discovery.k8s.io/v1", ["metadata"] = new JsonObject { ["resourceVersion"] = "101" } });
            await w.SendAsync("ADDED", Slice("replica-b", [Ep("127.0.0.63", pod: "c")], ports, rv: "102"));
            await UntilAsync(() => Err().Contains($"endpoints: 3 (127.0.0.61:{dead}, 127.0.0.62:{dead}, 127.0.0.63:{dead})"), "the added slice's endpoint\n" + Err());
            await w.SendAsync("MODIFIED", Slice("replica-a", [Ep("127.0.0.61", terminating: true, ready: false), Ep("127.0.0.62")], ports, rv: "103"));
            await UntilAsync(() => Err().Contains($"endpoints: 2 (127.0.0.62:{dead}, 127.0.0.63:{dead})"), "the terminating endpoint leaving\n" + Err());
            Assert.That(api.Requests.Select(r => (r.IsWatch, r.Authorization, r.Query["labelSelector"])),
                Is.EqualTo(new[] { (false, "Bearer aot-token", "kubernetes.io/service-name=replica"), (true, "Bearer aot-token", "kubernetes.io/service-name=replica") }));
        }
        finally
        {
            if (!router.HasExited)
            {
                ReplicaProcess.Kill(router.Id, 15);
                if (!router.WaitForExit(20_000)) router.Kill(entireProcessTree: true);
            }
        }
        Assert.That(router.ExitCode, Is.Zero, Err());
    }
}
