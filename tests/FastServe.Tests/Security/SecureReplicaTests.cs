using FastServe.Client;
using FastServe.Protocol;
using FastServe.Protocol.Security;
using FastServe.Tests.Cli;
using FastServe.Tests.Router;
using FastServe.Tests.Server;
using NUnit.Framework;

namespace FastServe.Tests.Security;

/// <summary>
/// Keys and TLS on real processes (dist/fastserve, <c>--backend sim</c>): a replica's workers requiring keys from a
/// file and picking up its rotation, the loopback rule at start, TLS with keys on a replica (its supervisor's probe
/// included), the CLI's client flags, and a router reaching such a replica over TLS with its own key. No key appears
/// in any process's output.
/// </summary>
[NonParallelizable]
public sealed class SecureReplicaTests
{
    private const string KeyA = "alpha-key-0123456789", KeyB = "bravo-key-0123456789", RouterKey = "router-key-0123456789";
    private static readonly CompletionRequest Req = new() { Prompt = "Fix: he go home.", Params = RequestParams.Default with { MaxTokens = 4, IgnoreEos = true } };
    private static string[] Sim(params string[] extra) => ["--backend", "sim", "--model", TestModels.Tiny, "--sim-time-scale", "100", .. extra];

    private static string Temp(string text)
    {
        string path = Path.Combine(Path.GetTempPath(), $"fastserve-sec-{Guid.NewGuid():N}");
        File.WriteAllText(path, text);
        return path;
    }

    private static async Task<string> Outcome(int port, FastServeClientOptions o)
    {
        try
        {
            await using var c = await FastServeClient.ConnectAsync("127.0.0.1", port, o);
            var r = await c.CompleteAsync(Req);
            return r.StatusName;
        }
        catch (FastServeClientException e) { return e.Code; }
    }

    [Test]
    public async Task AReplicaRequiresKeysFromAFileAndPicksUpItsRotation()
    {
        string keys = Temp($"# clients\nalpha {KeyA}\n");
        try
        {
            using var r = ReplicaProcess.Start(Sim("--workers", "2", "--api-keys-file", keys), metrics: false, agent: false);
            Assert.That(await Outcome(r.Port, new()), Is.EqualTo("client.unauthorized"));
            Assert.That(await Outcome(r.Port, new() { ApiKey = KeyB }), Is.EqualTo("client.unauthorized"));
            Assert.That(await Outcome(r.Port, new() { ApiKey = KeyA }), Is.EqualTo("ok"));

            File.WriteAllText(keys, $"bravo {KeyB}\n");
            // Each worker polls the file every second; connections land on either worker, so try several.
            var until = DateTime.UtcNow.AddSeconds(4);
            bool rotated = false;
            while (!rotated && DateTime.UtcNow < until)
            {
                await Task.Delay(200);
                var outcomes = await Task.WhenAll(Enumerable.Range(0, 6).Select(_ => Outcome(r.Port, new() { ApiKey = KeyA })));
                rotated = outcomes.All(o => o == "client.unauthorized");
            }
            Assert.That(rotated, Is.True, "the old key is refused by every worker after the rotation");
            for (int i = 0; i < 4; i++) Assert.That(await Outcome(r.Port, new() { ApiKey = KeyB }), Is.EqualTo("ok"));

            File.WriteAllText(keys, "bravo short\n");
            await Task.Delay(2500);
            Assert.That(await Outcome(r.Port, new() { ApiKey = KeyB }), Is.EqualTo("ok"), "a broken file keeps the previous keys");
            Assert.That(r.Stderr, Does.Contain("keeping the previous"));
            Assert.That(r.Stderr, Does.Not.Contain(KeyA).And.Not.Contain(KeyB).And.Not.Contain("short"), "no key material in the logs");
        }
        finally { File.Delete(keys); }
    }

    [Test]
    public void ANonLoopbackListenerWithoutKeysIsRefusedUnlessInsecure()
    {
        var serve = CliTests.Run(["serve", .. Sim("--host", "0.0.0.0", "--port", "0")]);
        Assert.That(serve.Code, Is.EqualTo(1));
        Assert.That(serve.Err, Does.Contain("error[config.keys_required]"));
        var route = CliTests.Run("route", "--host", "0.0.0.0", "--listen", "0", "--endpoints", "127.0.0.1:1");
        Assert.That(route.Code, Is.EqualTo(1));
        Assert.That(route.Err, Does.Contain("error[config.keys_required]"));
        var badKeys = CliTests.RunWith(new Dictionary<string, string?> { [ApiKeyStore.EnvVar] = "alpha:tooshort" }, ["route", "--listen", "0", "--endpoints", "127.0.0.1:1"]);
        Assert.That(badKeys.Err, Does.Contain("error[config.api_keys_invalid]").And.Not.Contain("tooshort"));

        using var r = ReplicaProcess.Start(Sim("--host", "0.0.0.0", "--insecure", "--workers", "1"), metrics: false, agent: false);
        Assert.That(Outcome(r.Port, new()).Result, Is.EqualTo("ok"), "--insecure serves without keys");
    }

    [Test]
    public async Task TlsWithKeysOnAReplicaThroughTheClientTheCliAndARouter()
    {
        using var certs = new TestCerts();
        string keyFile = Temp(KeyA + "\n"), routerKeyFile = Temp(RouterKey + "\n");
        try
        {
            using var r = ReplicaProcess.Start(Sim("--workers", "2", "--tls-cert", certs.Good.Cert, "--tls-key", certs.Good.Key),
                new Dictionary<string, string> { [ApiKeyStore.EnvVar] = $"alpha:{KeyA},router:{RouterKey}" }, metrics: false, agent: false);
            var tls = new TlsClientSettings { CaFile = certs.CaPem, TargetHost = "localhost" };
            Assert.That(await Outcome(r.Port, new() { Tls = tls, ApiKey = KeyA }), Is.EqualTo("ok"));
            Assert.That(await Outcome(r.Port, new() { Tls = tls }), Is.EqualTo("client.unauthorized"));
            Assert.That(await Outcome(r.Port, new() { ApiKey = KeyA, ConnectTimeout = TimeSpan.FromSeconds(5) }), Is.Not.EqualTo("ok"), "plaintext is not served");
            Assert.That(await Outcome(r.Port, new() { Tls = new TlsClientSettings { TargetHost = "localhost" }, ApiKey = KeyA }), Is.EqualTo("client.tls_failed"),
                "the system's roots do not trust the test CA");

            var cli = CliTests.Run("client", "--port", $"{r.Port}", "--tls-ca", certs.CaPem, "--tls-host", "localhost", "--api-key-file", keyFile, "--max-tokens", "3", "--json", "Fix: he go.");
            Assert.That(cli.Code, Is.Zero, cli.Err);
            var cliEnv = CliTests.RunWith(new Dictionary<string, string?> { ["FASTSERVE_API_KEY"] = "wrong-key-0123456789abc" },
                ["client", "--port", $"{r.Port}", "--tls-insecure", "--max-tokens", "3", "Fix: he go."]);
            Assert.That(cliEnv.Code, Is.EqualTo(1));
            Assert.That(cliEnv.Err, Does.Contain("error[client.unauthorized]").And.Contain("auth.invalid_key").And.Not.Contain("wrong-key"));

            using var router = RouterProcess.Start([r.Port], "--upstream-tls-ca", certs.CaPem, "--upstream-tls-host", "localhost", "--upstream-api-key-file", routerKeyFile);
            // The router is ready before its endpoint is: wait for the connection to the replica.
            string through = "";
            for (var until = DateTime.UtcNow.AddSeconds(10); through != "ok" && DateTime.UtcNow < until; await Task.Delay(100))
                through = await Outcome(router.Port, new());
            Assert.That(through, Is.EqualTo("ok"), $"the router reaches the replica over TLS with its key; router stderr:\n{router.Stderr}");
            foreach (var output in new[] { r.Stderr, router.Stderr, cli.Out, cli.Err })
                Assert.That(output, Does.Not.Contain(KeyA).And.Not.Contain(RouterKey), "no key material in any output");
        }
        finally
        {
            File.Delete(keyFile);
            File.Delete(routerKeyFile);
        }
    }

    [Test]
    public async Task TheReplicasMetricsCountRequestsByKeyRefusalsAndHttpAnswers()
    {
        string keys = Temp($"alpha {KeyA}\n");
        using var r = ReplicaProcess.Start(Sim("--workers", "2", "--http-port", "0", "--api-keys-file", keys), agent: false);
        await using (var c = await FastServeClient.ConnectAsync("127.0.0.1", r.Port, new FastServeClientOptions { ApiKey = KeyA }))
            for (int i = 0; i < 3; i++) Assert.That((await c.CompleteAsync(Req)).IsOk);
        Assert.That(await Outcome(r.Port, new() { ApiKey = KeyB }), Is.EqualTo("client.unauthorized"));
        string body = "{\"prompt\":\"hi\",\"max_tokens\":2}";
        var ok = Http.HttpTools.Run("curl", ["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-H", $"Authorization: Bearer {KeyA}", "-d", body, $"http://127.0.0.1:{r.HttpPort}/v1/completions"]);
        Assert.That(ok.Out, Is.EqualTo("200"), ok.Err);
        var no = Http.HttpTools.Run("curl", ["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-d", body, $"http://127.0.0.1:{r.HttpPort}/v1/completions"]);
        Assert.That(no.Out, Is.EqualTo("401"), no.Err);

        // Workers send their counters every second; the engine serves their sums.
        string[] want =
        [
            "fastserve_key_connections_total{key=\"alpha\"} 1",
            "fastserve_key_requests_total{key=\"alpha\"} 4",
            "fastserve_auth_refused_total{reason=\"invalid_key\"} 1",
            "fastserve_http_requests_total{endpoint=\"completions\",status=\"200\"} 1",
            "fastserve_http_requests_total{endpoint=\"completions\",status=\"401\"} 1",
        ];
        string metrics = "";
        var until = DateTime.UtcNow.AddSeconds(10);
        while (DateTime.UtcNow < until)
        {
            metrics = Http.HttpTools.Run("curl", ["-sS", $"http://127.0.0.1:{r.MetricsPort}/metrics"]).Out;
            if (want.All(metrics.Contains)) break;
            await Task.Delay(200);
        }
        foreach (var line in want) Assert.That(metrics, Does.Contain(line));
        Assert.That(metrics, Does.Not.Contain(KeyA).And.Not.Contain(KeyB), "names, never key material");
    }
}
