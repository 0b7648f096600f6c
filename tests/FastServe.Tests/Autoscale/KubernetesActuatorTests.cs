using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.Json.Nodes;
using FastServe.Autoscale.Actuators;
using FastServe.Tests.Server;
using k8s;
using NUnit.Framework;

namespace FastServe.Tests.Autoscale;

/// <summary>The k8s actuator against a fake API server on loopback: the requests it sends to the scale subresource
/// (path, verb, body), how a Deployment's status maps to a fleet size, 409 and its one retry, every failing answer as a
/// result with its code, an unreachable server, the bounds, and the actuator's text.</summary>
[NonParallelizable]
public class KubernetesActuatorTests
{
    private const string DeploymentPath = "/apis/apps/v1/namespaces/fleet/deployments/replica";
    private const string ScalePath = DeploymentPath + "/scale";

    /// <summary>
    /// One Deployment as the API server keeps it: GET of the Deployment and of its scale subresource, and PUT of the
    /// scale, which is refused with 409 unless it carries the current resourceVersion (as the real server does).
    /// Each request is recorded with its body; <see cref="Fail"/> makes the next requests of a verb (<c>GET</c>) or of a
    /// verb and path (<c>GET /apis/…</c>) answer an error status; <see cref="BeforeWrite"/> runs before a PUT is judged (a concurrent writer). Raw HTTP/1.1 over TCP,
    /// one request per connection.
    /// </summary>
    internal sealed class FakeApiServer : IDisposable
    {
        private readonly TcpListener _listener = new(IPAddress.Loopback, 0);
        private readonly CancellationTokenSource _stop = new();
        private readonly List<Request> _requests = [];
        private readonly Dictionary<string, Queue<int>> _failures = [];
        private readonly object _lock = new();

        // The Deployment's state; under _lock.
        public int SpecReplicas = 3, StatusReplicas = 3, ReadyReplicas = 3, ResourceVersion = 41;
        public int? TerminatingReplicas;
        public Action<FakeApiServer>? BeforeWrite;

        public sealed record Request(string Method, string Path, string Query, string? ContentType, string? Authorization, string Body)
        {
            public JsonNode? Json => Body.Length == 0 ? null : JsonNode.Parse(Body);
        }

        public FakeApiServer()
        {
            _listener.Start();
            Port = ((IPEndPoint)_listener.LocalEndpoint).Port;
            _ = AcceptLoopAsync();
        }

        public int Port { get; }

        public KubernetesClientConfiguration Config => new() { Host = $"http://127.0.0.1:{Port}" };

        public Request[] Requests { get { lock (_lock) return [.. _requests]; } }

        public string[] Calls => [.. Requests.Select(r => $"{r.Method} {r.Path}")];

        public void Fail(string method, params int[] statuses)
        {
            lock (_lock)
            {
                if (!_failures.TryGetValue(method, out var q)) _failures[method] = q = new Queue<int>();
                foreach (var s in statuses) q.Enqueue(s);
            }
        }

        private async Task AcceptLoopAsync()
        {
            try
            {
                while (true)
                {
                    var c = await _listener.AcceptTcpClientAsync(_stop.Token);
                    _ = ServeAsync(c);
                }
            }
            catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException or SocketException) { }
        }

        private async Task ServeAsync(TcpClient c)
        {
            using var _ = c;
            try
            {
                var stream = c.GetStream();
                var head = new List<byte>();
                var one = new byte[1];
                while (!(head.Count >= 4 && head[^4] == '\r' && head[^3] == '\n' && head[^2] == '\r' && head[^1] == '\n'))
                {
                    if (head.Count > 65536 || await stream.ReadAsync(one, _stop.Token) == 0) return;
                    head.Add(one[0]);
                }
                var lines = Encoding.ASCII.GetString([.. head]).Split("\r\n");
                string Header(string name) => lines.Skip(1).FirstOrDefault(l => l.StartsWith(name + ":", StringComparison.OrdinalIgnoreCase))?[(name.Length + 1)..].Trim() ?? "";
                var first = lines[0].Split(' ');
                string target = first[1];
                int q = target.IndexOf('?');
                byte[] body = Header("Transfer-Encoding").Contains("chunked", StringComparison.OrdinalIgnoreCase)
                    ? await ReadChunkedAsync(stream)
                    : await ReadExactAsync(stream, int.TryParse(Header("Content-Length"), out int n) ? n : 0);
                var request = new Request(first[0], q < 0 ? target : target[..q], q < 0 ? "" : target[(q + 1)..],
                    Header("Content-Type") is { Length: > 0 } ct ? ct : null, Header("Authorization") is { Length: > 0 } auth ? auth : null, Encoding.UTF8.GetString(body));
                var (status, answer) = Answer(request);
                byte[] bytes = Encoding.UTF8.GetBytes(answer);
                await stream.WriteAsync(Encoding.ASCII.GetBytes($"HTTP/1.1 {status} {Reason(status)}\r\nContent-Type: application/json\r\nContent-Length: {bytes.Length}\r\nConnection: close\r\n\r\n"), _stop.Token);
                await stream.WriteAsync(bytes, _stop.Token);
                await stream.FlushAsync(_stop.Token);
            }
            catch (Exception e) when (e is IOException or SocketException or OperationCanceledException or ObjectDisposedException) { }
        }

        private (int Status, string Body) Answer(Request r)
        {
            lock (_lock)
            {
                _requests.Add(r);
                foreach (var key in new[] { $"{r.Method} {r.Path}", r.Method })
                    if (_failures.TryGetValue(key, out var queue) && queue.TryDequeue(out int failure)) return (failure, StatusJson(failure));
                switch (r.Method, r.Path)
                {
                    case ("GET", DeploymentPath): return (200, DeploymentJson());
                    case ("GET", ScalePath): return (200, ScaleJson());
                    case ("PUT", ScalePath):
                        BeforeWrite?.Invoke(this);
                        var body = r.Json!;
                        if ((string?)body["metadata"]?["resourceVersion"] != ResourceVersion.ToString()) return (409, StatusJson(409));
                        SpecReplicas = (int)body["spec"]!["replicas"]!;
                        ResourceVersion++;
                        return (200, ScaleJson());
                    default: return (404, StatusJson(404));
                }
            }
        }

        private JsonObject Metadata() => new() { ["name"] = "replica", ["namespace"] = "fleet", ["resourceVersion"] = ResourceVersion.ToString(), ["uid"] = "uid-replica" };

        private string ScaleJson() => new JsonObject
        {
            ["kind"] = "Scale", ["apiVersion"] = "autoscaling/v1", ["metadata"] = Metadata(),
            ["spec"] = new JsonObject { ["replicas"] = SpecReplicas },
            ["status"] = new JsonObject { ["replicas"] = StatusReplicas, ["selector"] = "app=replica" },
        }.ToJsonString();

        private string DeploymentJson()
        {
            var status = new JsonObject { ["replicas"] = StatusReplicas, ["readyReplicas"] = ReadyReplicas, ["observedGeneration"] = 7 };
            if (TerminatingReplicas is { } t) status["terminatingReplicas"] = t;
            return new JsonObject
            {
                ["kind"] = "Deployment", ["apiVersion"] = "apps/v1", ["metadata"] = Metadata(),
                ["spec"] = new JsonObject
                {
                    ["replicas"] = SpecReplicas,
                    ["selector"] = new JsonObject { ["matchLabels"] = new JsonObject { ["app"] = "replica" } },
                    ["template"] = new JsonObject { ["metadata"] = new JsonObject { ["labels"] = new JsonObject { ["app"] = "replica" } } },
                },
                ["status"] = status,
            }.ToJsonString();
        }

        private static string Reason(int status) => status switch
        {
            200 => "OK", 401 => "Unauthorized", 403 => "Forbidden", 404 => "Not Found", 409 => "Conflict", 422 => "Unprocessable Entity",
            500 => "Internal Server Error", 503 => "Service Unavailable", _ => "Failure",
        };

        private static string StatusJson(int code) => new JsonObject
        {
            ["kind"] = "Status", ["apiVersion"] = "v1", ["metadata"] = new JsonObject(), ["status"] = "Failure", ["code"] = code,
            ["message"] = code == 409
                ? "Operation cannot be fulfilled on deployments.apps \"replica\": the object has been modified; please apply your changes to the latest version and try again"
                : $"fake failure {code}",
        }.ToJsonString();

        private async Task<byte[]> ReadExactAsync(NetworkStream stream, int length)
        {
            var buffer = new byte[length];
            await stream.ReadExactlyAsync(buffer, _stop.Token);
            return buffer;
        }

        private async Task<byte[]> ReadChunkedAsync(NetworkStream stream)
        {
            var all = new List<byte>();
            while (true)
            {
                var line = new List<byte>();
                var one = new byte[1];
                while (!(line.Count >= 2 && line[^2] == '\r' && line[^1] == '\n'))
                {
                    await stream.ReadExactlyAsync(one, _stop.Token);
                    line.Add(one[0]);
                }
                int size = Convert.ToInt32(Encoding.ASCII.GetString([.. line]).Trim().Split(';')[0], 16);
                all.AddRange(await ReadExactAsync(stream, size + 2));
                all.RemoveRange(all.Count - 2, 2);
                if (size == 0) return [.. all];
            }
        }

        public void Dispose()
        {
            _stop.Cancel();
            _listener.Stop();
            _stop.Dispose();
        }
    }

    private sealed class Log
    {
        private readonly List<string> _lines = [];
        public void Add(string line) { lock (_lines) _lines.Add(line); }
        public string[] Lines { get { lock (_lines) return [.. _lines]; } }
    }

    private static KubernetesActuator Actuator(FakeApiServer api, int min = 0, int max = 100, Log? log = null) =>
        KubernetesActuator.Create("fleet/replica", min, max, log is null ? null : log.Add, api.Config);

    private static CancellationToken Soon => new CancellationTokenSource(TimeSpan.FromSeconds(30)).Token;

    [Test]
    public async Task ScalingReadsTheScaleSubresourceAndPutsItBackWithTheNewCountAndItsResourceVersion()
    {
        using var api = new FakeApiServer { SpecReplicas = 3, StatusReplicas = 3, ReadyReplicas = 3, ResourceVersion = 41 };
        var log = new Log();
        await using var k8s = Actuator(api, log: log);
        Assert.That((k8s.Name, k8s.Description, k8s.Namespace, k8s.Deployment), Is.EqualTo(("k8s", "k8s:fleet/replica", "fleet", "replica")));

        var result = await k8s.ScaleAsync(5, Soon);
        Assert.That(result.Ok, Is.True, result.Error);
        Assert.That(api.Calls, Is.EqualTo(new[] { $"GET {ScalePath}", $"PUT {ScalePath}", $"GET {DeploymentPath}" }),
            "read the scale, write it, then read the Deployment for the size");
        var put = api.Requests[1];
        Assert.That(put.ContentType, Does.StartWith("application/json"));
        Assert.That(put.Query, Does.Contain("fieldManager=fastserve-autoscale"));
        var body = put.Json!;
        Assert.That(((string?)body["kind"], (string?)body["apiVersion"]), Is.EqualTo(("Scale", "autoscaling/v1")));
        Assert.That(((string?)body["metadata"]!["name"], (string?)body["metadata"]!["namespace"]), Is.EqualTo(("replica", "fleet")));
        Assert.That((string?)body["metadata"]!["resourceVersion"], Is.EqualTo("41"), "the version it read, so a change in between is refused");
        Assert.That((int?)body["spec"]!["replicas"], Is.EqualTo(5));
        Assert.That(api.SpecReplicas, Is.EqualTo(5));
        Assert.That(result.Size, Is.EqualTo(new FleetSize(Ready: 3, Starting: 2, Draining: 0)), "the size as the change starts");
        Assert.That(log.Lines, Is.EqualTo(new[] { "k8s:fleet/replica: spec.replicas 3 -> 5" }));
    }

    [Test]
    public async Task ScalingDownWritesTheLowerCountAndReportsTheSurplusPodsAsDraining()
    {
        using var api = new FakeApiServer { SpecReplicas = 6, StatusReplicas = 6, ReadyReplicas = 6 };
        await using var k8s = Actuator(api);
        var result = await k8s.ScaleAsync(4, Soon);
        Assert.That(result.Ok, Is.True, result.Error);
        Assert.That((int?)api.Requests[1].Json!["spec"]!["replicas"], Is.EqualTo(4));
        Assert.That(result.Size, Is.EqualTo(new FleetSize(4, 0, 2)), "the fake's pods have not gone yet: two surplus pods are on their way out");
    }

    [TestCase(4, 2, 5, null, 2, 2, 1, TestName = "ObserveMapsStatus(starting: 2 of 4 ready, 1 surplus pod)")]
    [TestCase(4, 6, 6, null, 4, 0, 2, TestName = "ObserveMapsStatus(scale-down under way: ready capped at spec, the rest draining)")]
    [TestCase(3, 3, 3, 2, 3, 0, 2, TestName = "ObserveMapsStatus(terminating pods reported by the server are draining)")]
    [TestCase(5, 0, 0, null, 0, 5, 0, TestName = "ObserveMapsStatus(nothing ready yet)")]
    [TestCase(0, 0, 0, null, 0, 0, 0, TestName = "ObserveMapsStatus(scaled to zero)")]
    [TestCase(4, 4, 5, 1, 4, 0, 2, TestName = "ObserveMapsStatus(rolling update surge plus a terminating pod)")]
    public async Task ObserveMapsTheDeploymentsStatus(int spec, int ready, int pods, int? terminating, int wantReady, int wantStarting, int wantDraining)
    {
        using var api = new FakeApiServer { SpecReplicas = spec, ReadyReplicas = ready, StatusReplicas = pods, TerminatingReplicas = terminating };
        await using var k8s = Actuator(api);
        var result = await k8s.ObserveAsync(Soon);
        Assert.That(result.Ok, Is.True, result.Error);
        Assert.That(result.Size, Is.EqualTo(new FleetSize(wantReady, wantStarting, wantDraining)));
        Assert.That(result.Size!.Value.Current, Is.EqualTo(spec), "ready plus starting is what was asked for");
        Assert.That(api.Calls, Is.EqualTo(new[] { $"GET {DeploymentPath}" }), "one read, no write");
    }

    [Test]
    public async Task AConflictIsRetriedOnceFromAFreshRead()
    {
        using var api = new FakeApiServer { SpecReplicas = 3, ResourceVersion = 50 };
        int writes = 0;
        // Someone else scales between the read and the first write.
        api.BeforeWrite = s => { if (++writes == 1) { s.SpecReplicas = 4; s.ResourceVersion = 51; } };
        await using var k8s = Actuator(api);
        var result = await k8s.ScaleAsync(8, Soon);
        Assert.That(result.Ok, Is.True, result.Error);
        Assert.That(api.Calls, Is.EqualTo(new[] { $"GET {ScalePath}", $"PUT {ScalePath}", $"GET {ScalePath}", $"PUT {ScalePath}", $"GET {DeploymentPath}" }));
        Assert.That((string?)api.Requests[1].Json!["metadata"]!["resourceVersion"], Is.EqualTo("50"));
        Assert.That((string?)api.Requests[3].Json!["metadata"]!["resourceVersion"], Is.EqualTo("51"), "the retry carries the version it re-read");
        Assert.That(api.SpecReplicas, Is.EqualTo(8));
    }

    [Test]
    public async Task AConflictThatAlreadyReachedTheCountIsNotWrittenAgain()
    {
        using var api = new FakeApiServer { SpecReplicas = 3 };
        api.BeforeWrite = s => { s.SpecReplicas = 6; s.ResourceVersion++; };
        await using var k8s = Actuator(api);
        var result = await k8s.ScaleAsync(6, Soon);
        Assert.That(result.Ok, Is.True, result.Error);
        Assert.That(api.Calls, Is.EqualTo(new[] { $"GET {ScalePath}", $"PUT {ScalePath}", $"GET {ScalePath}", $"GET {DeploymentPath}" }));
    }

    [Test]
    public async Task TwoConflictsAreAConflictResult()
    {
        using var api = new FakeApiServer { SpecReplicas = 3 };
        api.BeforeWrite = s => s.ResourceVersion++;
        await using var k8s = Actuator(api);
        var result = await k8s.ScaleAsync(8, Soon);
        Assert.That(result.Ok, Is.False);
        Assert.That(result.ErrorCode, Is.EqualTo("autoscale.k8s_conflict"));
        Assert.That(result.Error, Does.Contain("k8s:fleet/replica").And.Contain("409").And.Contain("twice"));
        Assert.That(result.Size, Is.Null);
        Assert.That(api.Calls, Is.EqualTo(new[] { $"GET {ScalePath}", $"PUT {ScalePath}", $"GET {ScalePath}", $"PUT {ScalePath}" }), "one retry, no more");
        Assert.That(api.SpecReplicas, Is.EqualTo(3));
    }

    [TestCase("GET", 403)]
    [TestCase("GET", 401)]
    [TestCase("PUT", 403)]
    public async Task AForbiddenAnswerNamesTheRbacNeeded(string verb, int status)
    {
        using var api = new FakeApiServer();
        api.Fail(verb, status);
        await using var k8s = Actuator(api);
        var result = await k8s.ScaleAsync(7, Soon);
        Assert.That(result.ErrorCode, Is.EqualTo("autoscale.k8s_forbidden"));
        Assert.That(result.Error, Does.Contain($"answered {status}")
            .And.Contain("get on deployments and get, update on deployments/scale").And.Contain("namespace fleet")
            .And.Contain("deploy/k8s/autoscaler.yaml").And.Contain($"fake failure {status}"));
        Assert.That(api.SpecReplicas, Is.EqualTo(3));

        api.Fail("GET", status);
        var observed = await k8s.ObserveAsync(Soon);
        Assert.That((observed.ErrorCode, observed.Size), Is.EqualTo(("autoscale.k8s_forbidden", (FleetSize?)null)));
    }

    [Test]
    public async Task AMissingDeploymentIsNotFound()
    {
        using var api = new FakeApiServer();
        await using var k8s = KubernetesActuator.Create("fleet/other", 0, 10, null, api.Config);
        var scaled = await k8s.ScaleAsync(2, Soon);
        Assert.That(scaled.ErrorCode, Is.EqualTo("autoscale.k8s_not_found"));
        Assert.That(scaled.Error, Does.Contain("answered 404").And.Contain("Deployment other in namespace fleet"));
        var observed = await k8s.ObserveAsync(Soon);
        Assert.That(observed.ErrorCode, Is.EqualTo("autoscale.k8s_not_found"));
        Assert.That(api.Calls, Is.EqualTo(new[] { "GET /apis/apps/v1/namespaces/fleet/deployments/other/scale", "GET /apis/apps/v1/namespaces/fleet/deployments/other" }));
    }

    [Test]
    public async Task ServerErrorsAreResultsAndTheNextCallWorks()
    {
        using var api = new FakeApiServer { SpecReplicas = 3 };
        await using var k8s = Actuator(api);
        api.Fail("GET", 500);
        var first = await k8s.ScaleAsync(5, Soon);
        Assert.That(first.ErrorCode, Is.EqualTo("autoscale.k8s_server_error"));
        Assert.That(first.Error, Does.Contain("answered 500 Internal Server Error: fake failure 500"));
        api.Fail("PUT", 503);
        var second = await k8s.ScaleAsync(5, Soon);
        Assert.That(second.ErrorCode, Is.EqualTo("autoscale.k8s_server_error"), "no retry within the call: the caller's next tick is the retry");
        Assert.That(api.SpecReplicas, Is.EqualTo(3));
        var third = await k8s.ScaleAsync(5, Soon);
        Assert.That(third.Ok, Is.True, third.Error);
        Assert.That(api.SpecReplicas, Is.EqualTo(5));
    }

    [Test]
    public async Task AFailedReadAfterAWriteIsStillASuccessWithoutASizeButWithoutAWriteItIsTheFailure()
    {
        using var api = new FakeApiServer { SpecReplicas = 3 };
        var log = new Log();
        await using var k8s = Actuator(api, log: log);
        api.Fail($"GET {DeploymentPath}", 503);
        var wrote = await k8s.ScaleAsync(6, Soon);
        Assert.That((wrote.Ok, wrote.Size), Is.EqualTo((true, (FleetSize?)null)), "the change is made; only its size is unknown");
        Assert.That(api.SpecReplicas, Is.EqualTo(6));
        Assert.That(log.Lines.Last(), Does.Contain("scaled, but").And.Contain("answered 503"));

        api.Fail($"GET {DeploymentPath}", 503);
        var unchanged = await k8s.ScaleAsync(6, Soon);
        Assert.That(unchanged.ErrorCode, Is.EqualTo("autoscale.k8s_server_error"), "nothing was done, and the size is unknown");
        Assert.That(api.Requests.Count(r => r.Method == "PUT"), Is.EqualTo(1));
    }

    [Test]
    public async Task AnotherRefusalIsRejected()
    {
        using var api = new FakeApiServer();
        api.Fail("PUT", 422);
        await using var k8s = Actuator(api);
        var result = await k8s.ScaleAsync(5, Soon);
        Assert.That(result.ErrorCode, Is.EqualTo("autoscale.k8s_rejected"));
        Assert.That(result.Error, Does.Contain("answered 422"));
    }

    [Test]
    public async Task AClosedPortIsUnreachable()
    {
        int closed = ReplicaProcess.FreePort();
        await using var k8s = KubernetesActuator.Create("fleet/replica", 0, 10, null, new KubernetesClientConfiguration { Host = $"http://127.0.0.1:{closed}" });
        var watch = Stopwatch.StartNew();
        var scaled = await k8s.ScaleAsync(3, Soon);
        var observed = await k8s.ObserveAsync(Soon);
        Assert.That(watch.Elapsed, Is.LessThan(TimeSpan.FromSeconds(10)), "within the per-call timeout");
        Assert.That((scaled.ErrorCode, observed.ErrorCode), Is.EqualTo(("autoscale.k8s_unreachable", "autoscale.k8s_unreachable")));
        Assert.That(scaled.Error, Does.Contain($"127.0.0.1:{closed}").And.Contain("unreachable"));
    }

    [Test]
    public async Task AServerThatNeverAnswersIsUnreachableAfterTheCallTimeout()
    {
        using var silent = new TcpListener(IPAddress.Loopback, 0);
        silent.Start(); // accepts (the backlog) and never answers
        int port = ((IPEndPoint)silent.LocalEndpoint).Port;
        await using var k8s = KubernetesActuator.Create("fleet/replica", 0, 10, null, new KubernetesClientConfiguration { Host = $"http://127.0.0.1:{port}" });
        Assert.That(k8s.CallTimeout, Is.EqualTo(TimeSpan.FromSeconds(5)), "the default");
        await using var quick = KubernetesActuator.Create("fleet/replica", 0, 10, null, new KubernetesClientConfiguration { Host = $"http://127.0.0.1:{port}" }, TimeSpan.FromMilliseconds(300));
        var watch = Stopwatch.StartNew();
        var result = await quick.ObserveAsync(Soon);
        Assert.That(watch.Elapsed, Is.InRange(TimeSpan.FromMilliseconds(250), TimeSpan.FromSeconds(3)));
        Assert.That(result.ErrorCode, Is.EqualTo("autoscale.k8s_unreachable"));
        Assert.That(result.Error, Does.Contain("no answer within 0.3 s"));

        // The caller's own cancellation is not a failure to report: it ends the call.
        using var cancel = new CancellationTokenSource(TimeSpan.FromMilliseconds(100));
        Assert.That(async () => await k8s.ScaleAsync(3, cancel.Token), Throws.InstanceOf<OperationCanceledException>());
    }

    [TestCase(0, 2, 10, 2)]
    [TestCase(1000, 2, 10, 10)]
    [TestCase(-5, 0, 10, 0)]
    [TestCase(7, 2, 10, 7)]
    public async Task NeverScalesOutsideTheBounds(int asked, int min, int max, int written)
    {
        using var api = new FakeApiServer { SpecReplicas = 5 };
        var log = new Log();
        await using var k8s = Actuator(api, min, max, log);
        var result = await k8s.ScaleAsync(asked, Soon);
        Assert.That(result.Ok, Is.True, result.Error);
        var put = api.Requests.Single(r => r.Method == "PUT");
        Assert.That((int?)put.Json!["spec"]!["replicas"], Is.EqualTo(written));
        Assert.That(api.SpecReplicas, Is.EqualTo(written));
        if (asked != written) Assert.That(log.Lines.Single(), Does.Contain($"5 -> {written} (asked {asked}, bounds {min}..{max})"));
    }

    [TestCase(5, 0, 10)]
    [TestCase(0, 5, 10)]
    [TestCase(99, 0, 5)]
    public async Task NoWriteWhenTheCountIsAlreadyTheAskedOne(int asked, int min, int max)
    {
        using var api = new FakeApiServer { SpecReplicas = 5, StatusReplicas = 5, ReadyReplicas = 4 };
        var log = new Log();
        await using var k8s = Actuator(api, min, max, log);
        var result = await k8s.ScaleAsync(asked, Soon);
        Assert.That(result.Ok, Is.True, result.Error);
        Assert.That(api.Calls, Is.EqualTo(new[] { $"GET {ScalePath}", $"GET {DeploymentPath}" }), "no PUT");
        Assert.That(result.Size, Is.EqualTo(new FleetSize(4, 1, 0)));
        Assert.That(log.Lines, Is.Empty);
    }

    [Test]
    public void TheSpecTextIsTwoDnsLabels()
    {
        var config = new KubernetesClientConfiguration { Host = "http://127.0.0.1:9" };
        foreach (var good in new[] { "fastserve/fastserve-replica", "k8s:fastserve/fastserve-replica" })
        {
            var a = KubernetesActuator.Create(good, 1, 4, null, config);
            Assert.That((a.Namespace, a.Deployment, a.MinReplicas, a.MaxReplicas, a.Description),
                Is.EqualTo(("fastserve", "fastserve-replica", 1, 4, "k8s:fastserve/fastserve-replica")), good);
        }
        string[] bad =
        [
            "", "fastserve", "/replica", "ns/", "NS/replica", "ns/Replica", "ns/re_plica", "-ns/replica", "ns/replica-", "ns/replica/extra",
            "ns/replica:7700", "//replica", new string('a', 64) + "/replica", "ns/rep lica", "k8s:", "k8s:ns",
        ];
        foreach (var b in bad)
        {
            var ex = Assert.Throws<AutoscaleException>(() => KubernetesActuator.Create(b, 1, 4, null, config), b)!;
            Assert.That(ex.Code, Is.EqualTo("autoscale.bad_actuator"), b);
            Assert.That(ex.Message, Does.Contain("expected k8s:NAMESPACE/DEPLOYMENT").And.Contain("DNS label"), b);
        }
        Assert.Throws<ArgumentOutOfRangeException>(() => KubernetesActuator.Create("ns/replica", 5, 4, null, config));
        Assert.Throws<ArgumentOutOfRangeException>(() => KubernetesActuator.Create("ns/replica", -1, 4, null, config));
        Assert.Throws<ArgumentOutOfRangeException>(() => KubernetesActuator.Create("ns/replica", 0, 0, null, config));
    }

    [Test]
    public async Task WithoutAConfigurationTheKubeconfigIsReadOrTheErrorIsClear()
    {
        Assume.That(KubernetesClientConfiguration.IsInCluster(), Is.False, "in a cluster the service account comes first");
        string? saved = Environment.GetEnvironmentVariable("KUBECONFIG");
        string dir = TestModels.TempDir("kubeconfig-autoscale");
        try
        {
            string missing = Path.Combine(dir, "missing");
            Environment.SetEnvironmentVariable("KUBECONFIG", missing);
            var ex = Assert.Throws<AutoscaleException>(() => KubernetesActuator.Create("fleet/replica", 0, 10))!;
            Assert.That(ex.Code, Is.EqualTo("autoscale.k8s_config"));
            Assert.That(ex.Message, Does.Contain("no kubeconfig found").And.Contain("KUBECONFIG=" + missing).And.Contain("deploy/k8s/autoscaler.yaml"));

            string broken = Path.Combine(dir, "broken");
            File.WriteAllText(broken, "this: [is not a kubeconfig");
            Environment.SetEnvironmentVariable("KUBECONFIG", broken);
            var bad = Assert.Throws<AutoscaleException>(() => KubernetesActuator.Create("fleet/replica", 0, 10))!;
            Assert.That(bad.Code, Is.EqualTo("autoscale.k8s_config"));
            Assert.That(bad.Message, Does.Contain(broken));

            using var api = new FakeApiServer();
            string path = Path.Combine(dir, "config");
            KubeConfigFile.Write(path, api.Port, "autoscaler", "scale-token");
            Environment.SetEnvironmentVariable("KUBECONFIG", missing + Path.PathSeparator + path);
            await using var k8s = KubernetesActuator.Create("fleet/replica", 0, 10);
            var result = await k8s.ScaleAsync(4, Soon);
            Assert.That(result.Ok, Is.True, result.Error);
            Assert.That(api.SpecReplicas, Is.EqualTo(4), "the first kubeconfig that exists was used");
            Assert.That(api.Requests.Select(r => r.Authorization), Is.All.EqualTo("Bearer scale-token"), "every call carries its token");
        }
        finally
        {
            Environment.SetEnvironmentVariable("KUBECONFIG", saved);
        }
    }
}
