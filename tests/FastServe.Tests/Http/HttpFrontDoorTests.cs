using System.Net;
using System.Net.Http.Headers;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Text;
using System.Text.Json;
using FastServe.Http;
using FastServe.Protocol;
using FastServe.Router;
using FastServe.Tests.Router;
using NUnit.Framework;
using static FastServe.Tests.Router.ScriptedReplica;

namespace FastServe.Tests.Http;

/// <summary>
/// The HTTP front door in process, in front of an in-process router and a scripted replica: the OpenAI shapes, the
/// status mapping of every error, the FastServe headers, cancellation on disconnect, keys, HTTPS and the body limit.
/// </summary>
[TestFixture]
[CancelAfter(60_000)]
public sealed class HttpFrontDoorTests
{
    private static RouterOptions Opt() => new() { Port = 0, SlowStartMs = 0, Seed = 17, MaxAttempts = 1 };

    private sealed class Rig : IAsyncDisposable
    {
        public required ScriptedReplica Replica;
        public required RouterHost Router;
        public required HttpFrontDoor Front;
        public required HttpClient Http;
        public required HttpMetrics Metrics;

        public async ValueTask DisposeAsync()
        {
            Http.Dispose();
            await Front.DisposeAsync();
            await Router.DisposeAsync();
            Replica.Dispose();
        }
    }

    private static async Task<Rig> StartAsync(Func<HttpFrontDoorOptions, HttpFrontDoorOptions>? configure = null, string model = "")
    {
        var x = new ScriptedReplica("x") { Text = "hello", Model = model };
        var router = await RouterRulesTests.Start(Opt(), RouterRulesTests.Src(x), 1);
        // The router's model pools follow the endpoints' HELLO_OKs every 10 ms; until then a request naming a model is
        // refused as not known yet (retriable), so wait for them before the first request.
        var until = DateTime.UtcNow.AddSeconds(10);
        while (router.Routes.Resolve("gec", null, out _) == RouteOutcome.NotYet && DateTime.UtcNow < until) await Task.Delay(5);
        var metrics = new HttpMetrics();
        var o = new HttpFrontDoorOptions
        {
            Port = 0,
            AcceptLocal = s => router.AcceptLocal(s),
            Ready = router.CanServe,
            Models = router.ServedModels,
            DefaultModelName = "gec",
            Metrics = metrics,
        };
        if (configure is not null) o = configure(o);
        var front = new HttpFrontDoor(o);
        await front.StartAsync();
        string scheme = o.ServerCertificate is null ? "http" : "https";
        // No draining of an abandoned response (the default drains up to 2 s to reuse the connection): a test that
        // drops a stream closes its connection at once, as a browser or a killed client does.
        var handler = new SocketsHttpHandler
        {
            MaxResponseDrainSize = 0,
            SslOptions = { RemoteCertificateValidationCallback = (_, _, _, _) => true },
        };
        var http = new HttpClient(handler) { BaseAddress = new Uri($"{scheme}://127.0.0.1:{front.Port}") };
        return new Rig { Replica = x, Router = router, Front = front, Http = http, Metrics = metrics };
    }

    private static StringContent Json(string s) => new(s, Encoding.UTF8, "application/json");

    private static async Task<(HttpStatusCode Status, JsonElement Body, HttpResponseMessage Response)> Post(HttpClient c, string path, string body,
        Action<HttpRequestMessage>? headers = null)
    {
        var req = new HttpRequestMessage(HttpMethod.Post, path) { Content = Json(body) };
        headers?.Invoke(req);
        var res = await c.SendAsync(req);
        var text = await res.Content.ReadAsStringAsync();
        using var doc = JsonDocument.Parse(text);
        return (res.StatusCode, doc.RootElement.Clone(), res);
    }

    private static string Code(JsonElement body) => body.GetProperty("error").GetProperty("code").GetString()!;

    [Test]
    public async Task CompletionAndChatAnswerInOpenAisShapeWithTimingHeader()
    {
        await using var rig = await StartAsync(model: "gec");
        var (status, body, res) = await Post(rig.Http, "/v1/completions", """{"model":"gec","prompt":"hi","max_tokens":3,"unknown_field":{"x":1}}""");
        Assert.That(status, Is.EqualTo(HttpStatusCode.OK), body.ToString());
        Assert.That(body.GetProperty("object").GetString(), Is.EqualTo("text_completion"));
        Assert.That(body.GetProperty("id").GetString(), Does.StartWith("cmpl-"));
        Assert.That(body.GetProperty("model").GetString(), Is.EqualTo("gec"));
        var choice = body.GetProperty("choices")[0];
        Assert.That(choice.GetProperty("text").GetString(), Is.EqualTo("hello"));
        Assert.That(choice.GetProperty("finish_reason").GetString(), Is.EqualTo("length"));
        Assert.That(body.GetProperty("usage").GetProperty("completion_tokens").GetInt32(), Is.EqualTo(3));
        Assert.That(res.Headers.GetValues("X-FastServe-Timing").Single(), Does.Match("^tokenized=\\d+;engine_received=\\d+;.*;device=\\d+$"));

        (status, body, _) = await Post(rig.Http, "/v1/chat/completions", """{"model":"gec","messages":[{"role":"user","content":"a b"}],"max_completion_tokens":3}""");
        Assert.That(status, Is.EqualTo(HttpStatusCode.OK), body.ToString());
        Assert.That(body.GetProperty("object").GetString(), Is.EqualTo("chat.completion"));
        var msg = body.GetProperty("choices")[0].GetProperty("message");
        Assert.That(msg.GetProperty("role").GetString(), Is.EqualTo("assistant"));
        Assert.That(msg.GetProperty("content").GetString(), Is.EqualTo("hello"));
        // The default template: the grammar-correction prompt format from the last user message.
        var sent = rig.Replica.Payloads.Last();
        Assert.That(Encoding.UTF8.GetString(sent), Does.Contain("Correct: a b\nFixed:"));
        Assert.That(rig.Metrics.Snapshot().Single(m => m.Endpoint == "completions").Status, Is.EqualTo(200));
    }

    [Test]
    public async Task StreamIsServerSentEventsEndingWithDone()
    {
        await using var rig = await StartAsync();
        var req = new HttpRequestMessage(HttpMethod.Post, "/v1/chat/completions")
        {
            Content = Json("""{"messages":[{"role":"user","content":"x"}],"max_tokens":3,"stream":true,"stream_options":{"include_usage":true}}"""),
        };
        var res = await rig.Http.SendAsync(req, HttpCompletionOption.ResponseHeadersRead);
        Assert.That(res.StatusCode, Is.EqualTo(HttpStatusCode.OK));
        Assert.That(res.Content.Headers.ContentType!.MediaType, Is.EqualTo("text/event-stream"));
        string all = await res.Content.ReadAsStringAsync();
        Assert.That(all, Does.EndWith("data: [DONE]\n\n"));
        var events = all.Split("\n\n", StringSplitOptions.RemoveEmptyEntries);
        Assert.That(events, Has.All.StartWith("data: "));
        var json = events[..^1].Select(e => JsonDocument.Parse(e["data: ".Length..]).RootElement).ToArray();
        Assert.That(json[0].GetProperty("choices")[0].GetProperty("delta").GetProperty("role").GetString(), Is.EqualTo("assistant"));
        Assert.That(string.Concat(json.Where(j => j.GetProperty("choices").GetArrayLength() > 0)
            .Select(j => j.GetProperty("choices")[0].GetProperty("delta").TryGetProperty("content", out var c) ? c.GetString() : "")), Is.EqualTo("hello"));
        var last = json[^2];
        Assert.That(last.GetProperty("choices")[0].GetProperty("finish_reason").GetString(), Is.EqualTo("length"));
        Assert.That(last.GetProperty("fastserve").GetProperty("timing_us").GetProperty("final_sent").GetUInt32(), Is.GreaterThanOrEqualTo(0));
        var usage = json[^1];
        Assert.That(usage.GetProperty("choices").GetArrayLength(), Is.Zero);
        Assert.That(usage.GetProperty("usage").GetProperty("completion_tokens").GetInt32(), Is.EqualTo(3));
        Assert.That(json.All(j => j.GetProperty("object").GetString() == "chat.completion.chunk"));
    }

    [Test]
    public async Task ErrorsMapToTheirHttpStatusInOpenAisShape()
    {
        await using var rig = await StartAsync(model: "gec");
        const string ok = """{"prompt":"hi","max_tokens":3}""";
        var cases = new (string Body, Reply Reply, int Status, string Code)[]
        {
            ("{not json", Reply.Ok, 400, "invalid_json"),
            ("""{"prompt":5}""", Reply.Ok, 400, "invalid_type"),
            ("""{"max_tokens":3}""", Reply.Ok, 400, "missing_field"),
            ("""{"prompt":"hi","n":2}""", Reply.Ok, 400, "n_unsupported"),
            ("""{"prompt":"hi","logprobs":21}""", Reply.Ok, 400, "sampling.invalid"),
            ("""{"prompt":"hi","temperature":-1}""", Reply.Ok, 400, "sampling.invalid"),
            ("""{"prompt":"hi","stop":["a","b","c","d","e","f","g","h","i"]}""", Reply.Ok, 400, "client.too_many_stops"),
            ("""{"prompt":"hi","model":"other"}""", Reply.Ok, 404, "router.model_not_found"),
            (ok, Reply.Overloaded, 429, "engine.queue_full"),
            (ok, Reply.Draining, 503, "server.draining"),
            (ok, Reply.Internal, 500, "engine.failed"),
        };
        foreach (var (body, reply, want, code) in cases)
        {
            rig.Replica.OnRequest = _ => reply;
            var (status, json, res) = await Post(rig.Http, "/v1/completions", body);
            Assert.That((int)status, Is.EqualTo(want), $"{body} {reply}: {json}");
            Assert.That(Code(json), Is.EqualTo(code), body);
            Assert.That(json.GetProperty("error").GetProperty("message").GetString(), Is.Not.Empty);
            Assert.That(json.GetProperty("error").GetProperty("type").GetString(), Is.Not.Empty);
            if (want is 429 or 503) Assert.That(res.Headers.RetryAfter?.Delta?.TotalSeconds, Is.GreaterThanOrEqualTo(1), body);
        }
        var nf = await rig.Http.GetAsync("/v1/nothing");
        Assert.That((int)nf.StatusCode, Is.EqualTo(404));
        var bad = await Post(rig.Http, "/v1/completions", ok, r => r.Headers.Add("X-FastServe-Priority", "urgent"));
        Assert.That(Code(bad.Body), Is.EqualTo("request.invalid_priority"));
    }

    [Test]
    public async Task DeadlineAndPriorityHeadersReachTheReplica()
    {
        await using var rig = await StartAsync();
        var (status, body, _) = await Post(rig.Http, "/v1/completions", """{"prompt":"hi","max_tokens":3}""", r =>
        {
            r.Headers.Add("X-FastServe-Deadline-Ms", "4321");
            r.Headers.Add("X-FastServe-Priority", "batch");
        });
        Assert.That(status, Is.EqualTo(HttpStatusCode.OK), body.ToString());
        Assert.That(rig.Replica.Deadlines.Single(), Is.InRange(4000u, 4321u), "the router passes on what is left of the deadline");
    }

    [Test]
    public async Task ClientDisconnectMidStreamCancelsUpstream()
    {
        await using var rig = await StartAsync();
        rig.Replica.OnRequest = _ => Reply.StreamThenHold;
        // A raw socket, so the disconnect is exactly a close after the first event (no client library pooling or
        // draining the connection).
        using var sock = new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.InterNetwork, System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Tcp);
        await sock.ConnectAsync(System.Net.IPAddress.Loopback, rig.Front.Port);
        const string body = """{"prompt":"hi","max_tokens":50,"stream":true}""";
        await sock.SendAsync(Encoding.ASCII.GetBytes(
            $"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {body.Length}\r\n\r\n{body}"));
        var seen = new StringBuilder();
        var buf = new byte[4096];
        using (var read = new CancellationTokenSource(TimeSpan.FromSeconds(10)))
            while (!seen.ToString().Contains("data: "))
            {
                int n = await sock.ReceiveAsync(buf, read.Token);
                Assert.That(n, Is.GreaterThan(0), $"the stream ended before its first event: {seen}");
                seen.Append(Encoding.UTF8.GetString(buf, 0, n));
            }
        Assert.That(seen.ToString(), Does.StartWith("HTTP/1.1 200"));
        sock.Close();   // the HTTP client goes away mid-stream
        await RouterRulesTests.Until(() => rig.Replica.Cancels.Count == 1,
            () => $"the CANCEL reached the replica (replica: {rig.Replica.Requests.Count} requests, {rig.Replica.Cancels.Count} cancels; "
                + $"front door: {string.Join(", ", rig.Metrics.Snapshot().Select(c => $"{c.Endpoint} {c.Status}: {c.Count}"))})");
        Assert.That(rig.Replica.Cancels.Single(), Is.EqualTo(rig.Replica.Requests.Single()));
    }

    [Test]
    public async Task ErrorAfterTheStreamStartedIsAnErrorEventThenDone()
    {
        await using var rig = await StartAsync();
        rig.Replica.OnRequest = _ => Reply.StreamThenHold;
        var req = new HttpRequestMessage(HttpMethod.Post, "/v1/completions") { Content = Json("""{"prompt":"hi","max_tokens":50,"stream":true}""") };
        var res = await rig.Http.SendAsync(req, HttpCompletionOption.ResponseHeadersRead);
        Assert.That(res.StatusCode, Is.EqualTo(HttpStatusCode.OK));
        var body = res.Content.ReadAsStringAsync();
        await RouterRulesTests.Until(() => rig.Replica.HeldCount == 1, "streaming");
        rig.Replica.DropConnections();   // the replica dies mid-stream
        string all = await body;
        var events = all.Split("\n\n", StringSplitOptions.RemoveEmptyEntries);
        Assert.That(events[^1], Is.EqualTo("data: [DONE]"));
        using var err = JsonDocument.Parse(events[^2]["data: ".Length..]);
        Assert.That(err.RootElement.GetProperty("error").GetProperty("code").GetString(), Is.EqualTo("router.upstream_lost"), all);
    }

    [TestCase(WireStatus.BadRequest, 400, 0u)]
    [TestCase(WireStatus.Unauthorized, 401, 0u)]
    [TestCase(WireStatus.NotFound, 404, 0u)]
    [TestCase(WireStatus.TooLarge, 413, 0u)]
    [TestCase(WireStatus.Overloaded, 429, 2500u)]
    [TestCase(WireStatus.TooManyRequests, 429, 1000u)]
    [TestCase(WireStatus.Draining, 503, 1000u)]
    [TestCase(WireStatus.Unavailable, 503, 1000u)]
    [TestCase(WireStatus.DeadlineExceeded, 504, 0u)]
    [TestCase(WireStatus.Internal, 500, 0u)]
    public void EveryWireStatusHasItsHttpStatus(WireStatus wire, int http, uint retryAfterMs)
    {
        var e = HttpFrontDoor.ErrorOf(new FastServe.Client.CompletionResult
        {
            Status = wire, StatusName = WireNames.Of(wire), Detail = "x.y", Message = "m",
            RetryAfter = wire == WireStatus.Overloaded ? TimeSpan.FromMilliseconds(2500) : null,
        });
        Assert.That(e.Status, Is.EqualTo(http));
        Assert.That(e.Code, Is.EqualTo("x.y"));
        Assert.That(e.RetryAfterMs, Is.EqualTo(retryAfterMs), "Retry-After on 429 and 503: the server's hint, at least 1 s");
    }

    [Test]
    public async Task KeysRequiredRefusesMissingAndWrongBearerTokens()
    {
        await using var rig = await StartAsync(o => o with { KeysRequired = true, Authenticate = t => t == "sk-good" ? "team-a" : null });
        const string body = """{"prompt":"hi","max_tokens":3}""";
        var none = await Post(rig.Http, "/v1/completions", body);
        Assert.That((int)none.Status, Is.EqualTo(401));
        Assert.That(Code(none.Body), Is.EqualTo("invalid_api_key"));
        var wrong = await Post(rig.Http, "/v1/completions", body, r => r.Headers.Authorization = new AuthenticationHeaderValue("Bearer", "sk-bad"));
        Assert.That((int)wrong.Status, Is.EqualTo(401));
        var good = await Post(rig.Http, "/v1/completions", body, r => r.Headers.Authorization = new AuthenticationHeaderValue("Bearer", "sk-good"));
        Assert.That(good.Status, Is.EqualTo(HttpStatusCode.OK));
        Assert.That((await rig.Http.GetAsync("/health")).StatusCode, Is.EqualTo(HttpStatusCode.OK), "health stays open");
    }

    [Test]
    public async Task HttpsWithACertificateSource()
    {
        using var key = RSA.Create(2048);
        var req = new CertificateRequest("CN=127.0.0.1", key, HashAlgorithmName.SHA256, RSASignaturePadding.Pkcs1);
        using var cert = req.CreateSelfSigned(DateTimeOffset.UtcNow.AddMinutes(-5), DateTimeOffset.UtcNow.AddHours(1));
        var pfx = X509CertificateLoader.LoadPkcs12(cert.Export(X509ContentType.Pkcs12), null);
        int handshakes = 0;
        await using var rig = await StartAsync(o => o with { ServerCertificate = () => { Interlocked.Increment(ref handshakes); return pfx; } });
        var (status, body, _) = await Post(rig.Http, "/v1/completions", """{"prompt":"hi","max_tokens":3}""");
        Assert.That(status, Is.EqualTo(HttpStatusCode.OK), body.ToString());
        Assert.That(handshakes, Is.GreaterThanOrEqualTo(1));
    }

    [Test]
    public async Task BodyOverTheLimitIs413()
    {
        await using var rig = await StartAsync(o => o with { MaxBodyBytes = 4096 });
        var big = "{\"prompt\":\"" + new string('a', 100_000) + "\"}";
        var (status, body, _) = await Post(rig.Http, "/v1/completions", big);
        Assert.That((int)status, Is.EqualTo(413));
        Assert.That(Code(body), Is.EqualTo("request_too_large"));
        Assert.That(rig.Replica.Requests, Is.Empty);
    }

    [Test]
    public async Task ConcurrentRequestsShareOneLocalConnectionUntilItsPackLimit()
    {
        // Packing the in-process hop's requests onto one connection batches their frames (docs/benchmarks.md); a
        // second connection opens only once the first has LocalClientPool.PackLimit calls in flight.
        int accepted = 0;
        await using var rig = await StartAsync(o =>
        {
            var inner = o.AcceptLocal;
            return o with { AcceptLocal = s => { Interlocked.Increment(ref accepted); inner(s); } };
        });
        rig.Replica.OnRequest = _ => Reply.Hold;
        async Task<HttpStatusCode> One() => (await Post(rig.Http, "/v1/completions", """{"prompt":"hi","max_tokens":2}""")).Status;
        async Task HeldReaches(int n)
        {
            var until = DateTime.UtcNow.AddSeconds(20);
            while (rig.Replica.HeldCount < n && DateTime.UtcNow < until) await Task.Delay(5);
            Assert.That(rig.Replica.HeldCount, Is.EqualTo(n));
        }
        var calls = Enumerable.Range(0, LocalClientPool.PackLimit).Select(_ => One()).ToList();
        await HeldReaches(LocalClientPool.PackLimit);
        Assert.That(Volatile.Read(ref accepted), Is.EqualTo(1));
        calls.Add(One());
        await HeldReaches(LocalClientPool.PackLimit + 1);
        Assert.That(Volatile.Read(ref accepted), Is.EqualTo(2));
        rig.Replica.ReleaseHeld();
        Assert.That(await Task.WhenAll(calls), Has.All.EqualTo(HttpStatusCode.OK));
    }

    [Test]
    public async Task HealthReadyAndModels()
    {
        await using var rig = await StartAsync(model: "gec");
        Assert.That((await rig.Http.GetAsync("/health")).StatusCode, Is.EqualTo(HttpStatusCode.OK));
        Assert.That((await rig.Http.GetAsync("/ready")).StatusCode, Is.EqualTo(HttpStatusCode.OK));
        using var models = JsonDocument.Parse(await rig.Http.GetStringAsync("/v1/models"));
        Assert.That(models.RootElement.GetProperty("data")[0].GetProperty("id").GetString(), Is.EqualTo("gec"));
        rig.Router.BeginDrain();
        var ready = await rig.Http.GetAsync("/ready");
        Assert.That((int)ready.StatusCode, Is.EqualTo(503));
        Assert.That(ready.Headers.RetryAfter, Is.Not.Null);
    }
}
