using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using FastServe.Client;
using FastServe.Protocol;
using FastServe.Tests.Router;
using FastServe.Tests.Server;
using NUnit.Framework;

namespace FastServe.Tests.Http;

/// <summary>
/// The HTTP front door of a real replica (`serve --http-port`, the gec-tiny model, two workers sharing the port) with
/// clients nobody here wrote: the official <c>openai</c> npm package and curl.
/// </summary>
[TestFixture]
[NonParallelizable]
public sealed class HttpReplicaEndToEndTests
{
    private const string Prompt = "Correct: she go to school yesterday\nFixed:";
    private ReplicaProcess _replica = null!;
    private string _url = "";

    private static string Model => Path.Combine(TestModels.RepoRoot, "models", "gec-tiny");

    [OneTimeSetUp]
    public void Start()
    {
        _replica = ReplicaProcess.Start(["--model", Model, "--workers", "2", "--http-port", "0", "--http-header-timeout-ms", "1000"], agent: false);
        Assert.That(_replica.HttpPort, Is.GreaterThan(0), "the ready event reports the HTTP port");
        _url = $"http://127.0.0.1:{_replica.HttpPort}";
    }

    [OneTimeTearDown]
    public void Stop() => _replica?.Dispose();

    [Test]
    public async Task OpenAiClientGetsTheBinaryClientsGreedyText()
    {
        string[] scenarios = ["completion", "completion-stream", "chat", "chat-stream", "chat-stream-usage"];
        var results = scenarios.ToDictionary(s => s, s => HttpTools.OpenAi($"{_url}/v1", "gec-tiny", s, Prompt));
        foreach (var (s, r) in results) Assert.That(r.GetProperty("ok").GetBoolean(), Is.True, $"{s}: {r}");

        await using var bin = await FastServeClient.ConnectAsync("127.0.0.1", _replica.Port);
        var want = await bin.CompleteAsync(new CompletionRequest { Prompt = Prompt, Params = RequestParams.Default with { MaxTokens = 24, Temperature = 0 } });
        Assert.That(want.IsOk, want.Message);
        Assert.That(want.Text.Trim(), Is.Not.Empty);
        // The default chat template turns the user message into the same prompt, so all five agree with the binary run.
        foreach (var (s, r) in results) Assert.That(r.GetProperty("text").GetString(), Is.EqualTo(want.Text), s);
        Assert.That(results["completion"].GetProperty("usage").GetProperty("completion_tokens").GetInt32(), Is.EqualTo(want.CompletionTokens));
        Assert.That(results["completion"].GetProperty("usage").GetProperty("prompt_tokens").GetInt32(), Is.EqualTo(want.PromptTokens));
        Assert.That(results["completion"].GetProperty("finish").GetString(), Is.EqualTo(want.Finish == WireFinish.Length ? "length" : "stop"));
        Assert.That(results["chat"].GetProperty("role").GetString(), Is.EqualTo("assistant"));
        Assert.That(results["chat-stream"].GetProperty("usage").ValueKind, Is.EqualTo(JsonValueKind.Null), "usage only when asked for");
        Assert.That(results["chat-stream-usage"].GetProperty("usage").GetProperty("total_tokens").GetInt32(), Is.EqualTo(want.PromptTokens + want.CompletionTokens));
    }

    [Test]
    public async Task OpenAiClientGetsPerTokenLogprobsEqualToTheBinaryClients()
    {
        await using var bin = await FastServeClient.ConnectAsync("127.0.0.1", _replica.Port);
        var want = await bin.CompleteAsync(new CompletionRequest
        {
            Prompt = Prompt,
            Params = RequestParams.Default with { MaxTokens = 24, Temperature = 0, TokenLogprobs = true, TopLogprobs = 2 },
        });
        Assert.That(want.IsOk, want.Message);
        var lp = want.TokenLogprobs!;
        Assert.That(lp, Is.Not.Empty);

        // Chat, whole and streamed: content[i] is the binary client's token i, with its two alternatives and bytes.
        foreach (var s in new[] { "chat-logprobs", "chat-stream-logprobs" })
        {
            var r = HttpTools.OpenAi($"{_url}/v1", "gec-tiny", s, Prompt);
            Assert.That(r.GetProperty("ok").GetBoolean(), Is.True, $"{s}: {r}");
            Assert.That(r.GetProperty("text").GetString(), Is.EqualTo(want.Text), s);
            var content = r.GetProperty("content").EnumerateArray().ToArray();
            Assert.That(content, Has.Length.EqualTo(lp.Length), s);
            for (int i = 0; i < lp.Length; i++)
            {
                var e = content[i];
                Assert.That(e.GetProperty("logprob").GetSingle(), Is.EqualTo(lp[i].Logprob).Within(1e-5), $"{s} token {i}");
                Assert.That(e.GetProperty("bytes").EnumerateArray().Select(b => (byte)b.GetInt32()), Is.EqualTo(lp[i].Bytes), $"{s} token {i}");
                Assert.That(e.GetProperty("token").GetString(), Is.EqualTo(Encoding.UTF8.GetString(lp[i].Bytes)));
                var top = e.GetProperty("top_logprobs").EnumerateArray().ToArray();
                Assert.That(top.Select(t => t.GetProperty("logprob").GetSingle()), Is.EqualTo(lp[i].Top.Select(t => t.Logprob)).Within(1e-5));
            }
        }

        // Completions (logprobs: 2): tokens, token_logprobs, a top map holding the chosen token, text offsets.
        var c = HttpTools.OpenAi($"{_url}/v1", "gec-tiny", "completion-logprobs", Prompt);
        Assert.That(c.GetProperty("ok").GetBoolean(), Is.True, c.ToString());
        var l = c.GetProperty("logprobs");
        var tokens = l.GetProperty("tokens").EnumerateArray().Select(t => t.GetString()!).ToArray();
        Assert.That(string.Concat(tokens), Is.EqualTo(want.Text));
        Assert.That(l.GetProperty("token_logprobs").EnumerateArray().Select(t => t.GetSingle()), Is.EqualTo(lp.Select(t => t.Logprob)).Within(1e-5));
        var offsets = l.GetProperty("text_offset").EnumerateArray().Select(t => t.GetInt32()).ToArray();
        for (int i = 0; i < tokens.Length; i++)
        {
            Assert.That(offsets[i], Is.EqualTo(tokens[..i].Sum(t => t.Length)));
            var map = l.GetProperty("top_logprobs")[i];
            Assert.That(map.TryGetProperty(tokens[i], out var chosen), Is.True, $"token {i}'s map holds the chosen token");
            Assert.That(chosen.GetSingle(), Is.EqualTo(lp[i].Logprob).Within(1e-5));
        }
    }

    [Test]
    public void OpenAiClientSeesErrorsWithStatusAndCode()
    {
        var bad = HttpTools.OpenAi($"{_url}/v1", "gec-tiny", "error-bad-sampling");
        Assert.That(bad.GetProperty("status").GetInt32(), Is.EqualTo(400), bad.ToString());
        Assert.That(bad.GetProperty("code").GetString(), Is.EqualTo("sampling.invalid"));
        var unknown = HttpTools.OpenAi($"{_url}/v1", "gec-tiny", "error-unknown-model");
        Assert.That(unknown.GetProperty("status").GetInt32(), Is.EqualTo(404), unknown.ToString());
        Assert.That(unknown.GetProperty("code").GetString(), Is.EqualTo("model.not_found"));
    }

    [Test]
    public void CurlSeesServerSentEventsAndTimingHeaders()
    {
        string body = "{\"model\":\"gec-tiny\",\"prompt\":\"" + JsonEncodedText.Encode(Prompt) + "\",\"max_tokens\":24,\"temperature\":0,\"stream\":true}";
        var (code, stream, err) = HttpTools.Run("curl", ["-sS", "-N", "-i", "-H", "Content-Type: application/json", "-d", body, $"{_url}/v1/completions"]);
        Assert.That(code, Is.Zero, err);
        var split = stream.IndexOf("\r\n\r\n", StringComparison.Ordinal);
        string head = stream[..split], events = stream[(split + 4)..];
        Assert.That(head, Does.StartWith("HTTP/1.1 200"));
        Assert.That(head, Does.Contain("Content-Type: text/event-stream").IgnoreCase);
        Assert.That(events, Does.EndWith("data: [DONE]\n\n"));
        var parts = events.Split("\n\n", StringSplitOptions.RemoveEmptyEntries);
        Assert.That(parts, Has.All.StartWith("data: "));
        using var last = JsonDocument.Parse(parts[^2]["data: ".Length..]);
        Assert.That(last.RootElement.GetProperty("choices")[0].GetProperty("finish_reason").GetString(), Is.AnyOf("stop", "length"));
        Assert.That(last.RootElement.GetProperty("fastserve").GetProperty("timing_us").GetProperty("first_token").GetUInt32(), Is.GreaterThan(0));

        string whole = body.Replace("\"stream\":true", "\"stream\":false");
        (code, var res, err) = HttpTools.Run("curl", ["-sS", "-i", "-H", "Content-Type: application/json", "-d", whole, $"{_url}/v1/completions"]);
        Assert.That(code, Is.Zero, err);
        Assert.That(res, Does.Match("(?i)X-FastServe-Timing: tokenized=\\d+;engine_received=\\d+;admitted=\\d+;first_scheduled=\\d+;first_token=[1-9]\\d*;engine_finished=\\d+;final_sent=\\d+;device=\\d+"));
    }

    [Test]
    public void OneGigabyteBodyIsRefusedWith413WithoutBuffering()
    {
        // Streamed from a pipe (chunked), never a file; the replica must refuse it after 1 MiB, not read it all. The
        // send rate is capped so curl reads the answer before the refusing side closes (a close with unread bytes is a
        // reset, which can make curl drop the 413 it was sent).
        var sw = System.Diagnostics.Stopwatch.StartNew();
        var (_, outp, err) = HttpTools.Sh($"head -c 1G /dev/zero | curl -sS --limit-rate 100M -o /dev/stdout -w '\\n%{{http_code}}' -H 'Content-Type: application/json' -X POST -T - {_url}/v1/completions", 60);
        var lines = outp.Split('\n');
        Assert.That(lines[^1], Is.EqualTo("413"), $"{outp}\n{err}");
        Assert.That(outp, Does.Contain("request_too_large"));
        Assert.That(sw.Elapsed.TotalSeconds, Is.LessThan(20), "refused early, not after a gigabyte");
        // With a declared length the refusal comes before any body byte is read.
        (_, outp, err) = HttpTools.Sh($"head -c 2M /dev/zero | curl -sS -o /dev/null -w '%{{http_code}}' -H 'Content-Type: application/json' --data-binary @- {_url}/v1/completions", 30);
        Assert.That(outp.Trim(), Is.EqualTo("413"), err);
        (_, outp, _) = HttpTools.Run("curl", ["-sS", "-o", "/dev/null", "-w", "%{http_code}", $"{_url}/health"]);
        Assert.That(outp, Is.EqualTo("200"), "still serving");
    }

    [Test]
    public void SlowSenderIsCutOffByTheHeaderTimeout()
    {
        using var s = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        s.Connect(IPAddress.Loopback, _replica.HttpPort);
        s.Send("POST /v1/completions HTTP/1.1\r\nHost: x\r\n"u8.ToArray());
        s.ReceiveTimeout = 8000;
        var sw = System.Diagnostics.Stopwatch.StartNew();
        var buf = new byte[4096];
        int total = 0, n;
        try { while ((n = s.Receive(buf, total, buf.Length - total, SocketFlags.None)) > 0) total += n; }
        catch (SocketException e) when (e.SocketErrorCode == SocketError.ConnectionReset) { }
        Assert.That(sw.Elapsed.TotalSeconds, Is.LessThan(6), "closed by the 1 s header timeout (Kestrel checks once a second)");
        if (total > 0) Assert.That(Encoding.ASCII.GetString(buf, 0, total), Does.StartWith("HTTP/1.1 408"));
    }

    [Test]
    public void HealthReadyModelsAndBadRequests()
    {
        foreach (var path in new[] { "/health", "/ready" })
            Assert.That(HttpTools.Run("curl", ["-sS", "-o", "/dev/null", "-w", "%{http_code}", $"{_url}{path}"]).Out, Is.EqualTo("200"), path);
        var (_, models, _) = HttpTools.Run("curl", ["-sS", $"{_url}/v1/models"]);
        using (var doc = JsonDocument.Parse(models))
            Assert.That(doc.RootElement.GetProperty("data")[0].GetProperty("id").GetString(), Is.EqualTo("gec-tiny"));
        var (_, bad, _) = HttpTools.Run("curl", ["-sS", "-w", "\n%{http_code}", "-H", "Content-Type: application/json", "-d", "{\"prompt\":", $"{_url}/v1/completions"]);
        Assert.That(bad, Does.EndWith("\n400"));
        Assert.That(bad, Does.Contain("\"code\":\"invalid_json\""));
    }
}

/// <summary>
/// The router's HTTP front door (`route --http-listen`) in front of simulated replicas: the openai client through the
/// router, a disconnect that cancels in the engine, and overload answered 429 with Retry-After.
/// </summary>
[TestFixture]
[NonParallelizable]
public sealed class HttpRouterEndToEndTests
{
    [Test]
    public void OpenAiClientThroughTheRouterAndDisconnectCancelsInTheEngine()
    {
        using var replica = ReplicaProcess.Start(["--backend", "sim", "--model", TestModels.Tiny, "--workers", "1", "--sim-time-scale", "50"], agent: false);
        using var router = RouterProcess.Start([replica.Port], "--http-listen", "127.0.0.1:0");
        Assert.That(router.HttpPort, Is.GreaterThan(0));
        string url = $"http://127.0.0.1:{router.HttpPort}";
        WaitReady(url);
        foreach (var s in new[] { "completion", "chat-stream-usage" })
        {
            var r = HttpTools.OpenAi($"{url}/v1", "tiny", s, "hello there");
            // The sim replica declares its model directory's name; the router answers not_found for another name.
            if (!r.GetProperty("ok").GetBoolean() && r.GetProperty("status").GetInt32() == 404)
                r = HttpTools.OpenAi($"{url}/v1", Path.GetFileName(TestModels.Tiny), s, "hello there");
            Assert.That(r.GetProperty("ok").GetBoolean(), Is.True, $"{s}: {r}");
        }

        // Per-token log-probabilities pass the router untouched (the sim replica's values, with each token's bytes).
        string lpBody = "{\"model\":\"" + Path.GetFileName(TestModels.Tiny) + "\",\"prompt\":\"hello\",\"max_tokens\":5,\"logprobs\":3}";
        var (lpCode, lpOut, lpErr) = HttpTools.Run("curl", ["-sS", "-H", "Content-Type: application/json", "-d", lpBody, $"{url}/v1/completions"]);
        Assert.That(lpCode, Is.Zero, lpErr);
        using (var doc = JsonDocument.Parse(lpOut))
        {
            var choice = doc.RootElement.GetProperty("choices")[0];
            var lps = choice.GetProperty("logprobs");
            int generated = doc.RootElement.GetProperty("usage").GetProperty("completion_tokens").GetInt32();
            // Every generated token but an EOS that ended the request.
            int listed = lps.GetProperty("token_logprobs").GetArrayLength();
            Assert.That(listed, choice.GetProperty("finish_reason").GetString() == "length" ? Is.EqualTo(generated) : Is.InRange(generated - 1, generated), lpOut);
            Assert.That(listed, Is.GreaterThan(0), lpOut);
            // Three alternatives and the chosen token, fewer where two tokens read as the same text.
            Assert.That(lps.GetProperty("top_logprobs")[0].EnumerateObject().Count(), Is.InRange(1, 4), lpOut);
        }

        // A stream the client abandons after its first event: curl gives up after 1 s, and the engine counts it cancelled.
        string body = "{\"prompt\":\"hello\",\"max_tokens\":60000,\"stream\":true}";
        var (_, outp, _) = HttpTools.Run("curl", ["-sS", "-N", "--max-time", "1", "-H", "Content-Type: application/json", "-d", body, $"{url}/v1/completions"]);
        Assert.That(outp, Does.StartWith("data: "), "the stream had started");
        Assert.That(outp, Does.Not.Contain("[DONE]"), "and was cut short");
        var sw = System.Diagnostics.Stopwatch.StartNew();
        string metrics = "";
        while (sw.Elapsed.TotalSeconds < 10)
        {
            metrics = HttpTools.Run("curl", ["-sS", $"http://127.0.0.1:{replica.MetricsPort}/metrics"]).Out;
            if (metrics.Contains("fastserve_requests_total{status=\"cancelled\"} 1")) break;
            Thread.Sleep(100);
        }
        Assert.That(metrics, Does.Contain("fastserve_requests_total{status=\"cancelled\"} 1"), "CANCEL reached the engine");
    }

    [Test]
    public async Task OverloadThroughHttpIs429WithRetryAfterNever500()
    {
        using var replica = ReplicaProcess.Start(["--backend", "sim", "--model", TestModels.Tiny, "--workers", "1", "--sim-time-scale", "20",
            "--max-seqs", "1", "--max-waiting", "1"], metrics: false, agent: false);
        using var router = RouterProcess.Start([replica.Port], "--http-listen", "0", "--max-attempts", "1");
        string url = $"http://127.0.0.1:{router.HttpPort}";
        WaitReady(url);
        using var http = new HttpClient { BaseAddress = new Uri(url) };
        var tasks = Enumerable.Range(0, 40).Select(async _ =>
        {
            var res = await http.PostAsync("/v1/completions", new StringContent("{\"prompt\":\"hello\",\"max_tokens\":64}", Encoding.UTF8, "application/json"));
            return ((int)res.StatusCode, res.Headers.RetryAfter?.Delta, await res.Content.ReadAsStringAsync());
        }).ToArray();
        var results = await Task.WhenAll(tasks);
        var codes = results.GroupBy(r => r.Item1).ToDictionary(g => g.Key, g => g.Count());
        Assert.That(codes.Keys, Is.SubsetOf(new[] { 200, 429 }), string.Join("; ", results.Where(r => r.Item1 is not (200 or 429)).Select(r => r.Item3).Take(3)));
        Assert.That(codes.GetValueOrDefault(200), Is.GreaterThan(0));
        Assert.That(codes.GetValueOrDefault(429), Is.GreaterThan(0), "a burst of 40 over capacity 2 is refused in part");
        foreach (var r in results.Where(r => r.Item1 == 429))
        {
            Assert.That(r.Item2?.TotalSeconds, Is.GreaterThanOrEqualTo(1), r.Item3);
            Assert.That(r.Item3, Does.Contain("\"type\":\"rate_limit_error\""));
        }
    }

    private static void WaitReady(string url)
    {
        var sw = System.Diagnostics.Stopwatch.StartNew();
        while (HttpTools.Run("curl", ["-s", "-o", "/dev/null", "-w", "%{http_code}", $"{url}/ready"]).Out != "200")
        {
            if (sw.Elapsed.TotalSeconds > 20) Assert.Fail("the router's /ready never answered 200");
            Thread.Sleep(50);
        }
    }
}
