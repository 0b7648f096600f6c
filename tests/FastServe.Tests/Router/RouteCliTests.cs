using NUnit.Framework;
using System.Net;
using System.Net.Sockets;
using System.Text.Json;
using FastServe.Client;
using FastServe.Protocol;
using FastServe.Tests.Cli;
using FastServe.Tests.Server;

namespace FastServe.Tests.Router;

/// <summary>`fastserve route` flag and source errors (stable codes, exit 1), and a router whose only endpoint is down.</summary>
[TestFixture, NonParallelizable]
public sealed class RouteCliTests
{
    [Test]
    public void BadFlagsAndSourcesFailWithStableCodes()
    {
        string dir = TestModels.TempDir("route-cli");
        string badFile = Path.Combine(dir, "bad.json");
        File.WriteAllText(badFile, """{"endpoints":"nope"}""");
        using var taken = new TcpListener(IPAddress.Loopback, 0);
        taken.Start();
        int busy = ((IPEndPoint)taken.LocalEndpoint).Port;
        (string[] Args, string Code)[] cases =
        [
            (["--endpoints", "127.0.0.1"], "route.bad_endpoint"),
            (["--endpoints", "127.0.0.1:1,127.0.0.1:1"], "route.duplicate_endpoint"),
            (["--endpoints", "k8s://svc"], "route.bad_source"),
            (["--endpoints", "file:" + Path.Combine(dir, "missing.json")], "route.endpoints_file_missing"),
            (["--endpoints", "file:" + badFile], "route.bad_endpoints_file"),
            (["--endpoints", "127.0.0.1:1", "--policy", "fastest"], "args.invalid_policy"),
            (["--endpoints", "127.0.0.1:1", "--max-attempts", "0"], "args.invalid_max_attempts"),
            (["--endpoints", "127.0.0.1:1", "--connections-per-endpoint", "0"], "args.invalid_connections"),
            (["--endpoints", "127.0.0.1:1", "--max-ejected-percent", "101"], "args.invalid_max_ejected_percent"),
            (["--endpoints", "127.0.0.1:1", "--slow-start-ms", "-1"], "args.invalid_slow_start"),
            (["--endpoints", "127.0.0.1:1", "--retry-budget-percent", "-1"], "args.invalid_retry_budget"),
            (["--endpoints", "127.0.0.1:1", "--min-retries-per-second", "-1"], "args.invalid_min_retries"),
            (["--endpoints", "127.0.0.1:1", "--retry-jitter-ms", "1001"], "args.invalid_retry_jitter"),
            (["--endpoints", "127.0.0.1:1", "--host", "localhost"], "args.invalid_host"),
            (["--endpoints", "127.0.0.1:1", "--listen", $"{busy}"], "route.listen_failed"),
        ];
        foreach (var (args, code) in cases)
        {
            var r = CliTests.Run(["route", .. args, "--json"]);
            Assert.That(r.Code, Is.EqualTo(1), $"{string.Join(' ', args)}: {r.Err}");
            Assert.That(r.Err, Does.StartWith($"error[{code}]"), string.Join(' ', args));
            using var doc = JsonDocument.Parse(r.Out);
            Assert.That(doc.RootElement.GetProperty("error").GetProperty("code").GetString(), Is.EqualTo(code));
        }
    }

    [Test]
    public async Task WithItsOnlyEndpointDownTheRouterAnswersNoEndpointAndStillDrains()
    {
        int dead = ReplicaProcess.FreePort();
        using var router = RouterProcess.Start([dead]);
        await using (var c = await FastServeClient.ConnectAsync("127.0.0.1", router.Port))
        {
            Assert.That((await c.GetLoadAsync()).State, Is.EqualTo(ReplicaState.Unavailable));
            var r = await c.CompleteAsync(new CompletionRequest { Prompt = "anyone?" });
            Assert.That((r.StatusName, r.Detail, r.Retriable, r.RetryAfter), Is.EqualTo(("unavailable", "router.no_endpoint", true, (TimeSpan?)TimeSpan.FromMilliseconds(500))));
            Assert.That(await c.PingAsync(), Is.LessThan(TimeSpan.FromSeconds(1)), "PING is answered by the router itself");
        }
        var stopped = router.Stop();
        Assert.That(stopped.GetProperty("no_endpoint").GetInt64(), Is.EqualTo(1));
        Assert.That(router.Stderr, Does.Contain("cannot connect"));
    }
}
