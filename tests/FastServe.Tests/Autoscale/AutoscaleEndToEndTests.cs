using System.Diagnostics;
using System.Text;
using System.Text.Json;
using FastServe.Tests.Cli;
using FastServe.Tests.Router;
using FastServe.Tests.Server;
using NUnit.Framework;

namespace FastServe.Tests.Autoscale;

/// <summary>
/// <c>fastserve autoscale</c> end to end with real processes: the <c>local</c> actuator runs sim replicas, a router
/// follows its endpoints file and publishes the fleet's load, and <c>fastserve bench</c> drives a ramp through the
/// router; the fleet grows to at least 3 replicas and, after the windows, drains back to 1, and every request sent
/// gets exactly one final status, ok.
/// </summary>
[NonParallelizable]
public class AutoscaleEndToEndTests
{
    private sealed class AutoscaleProcess : IDisposable
    {
        private readonly List<JsonElement> _events = [];
        private readonly StringBuilder _err = new();
        public Process Proc { get; }
        private readonly Task _reader;

        public AutoscaleProcess(IEnumerable<string> args)
        {
            var psi = new ProcessStartInfo(DistBinary.Path) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
            psi.ArgumentList.Add("autoscale");
            foreach (var a in args) psi.ArgumentList.Add(a);
            Proc = Process.Start(psi)!;
            Proc.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (_err) _err.AppendLine(e.Data); };
            Proc.BeginErrorReadLine();
            _reader = Task.Run(async () =>
            {
                while (await Proc.StandardOutput.ReadLineAsync() is { } line)
                {
                    using var doc = JsonDocument.Parse(line);
                    lock (_events) _events.Add(doc.RootElement.Clone());
                }
            });
        }

        public JsonElement[] Events { get { lock (_events) return [.. _events]; } }
        public string Stderr { get { lock (_err) return _err.ToString(); } }

        public IEnumerable<JsonElement> Named(string name) => Events.Where(e => e.GetProperty("event").GetString() == name);

        public string Dump() => string.Join("\n", Events.Select(e => e.GetRawText())) + "\nstderr:\n" + Stderr;

        public void WaitFor(Func<AutoscaleProcess, bool> cond, string what, int seconds)
        {
            var sw = Stopwatch.StartNew();
            while (!cond(this))
            {
                if (sw.Elapsed > TimeSpan.FromSeconds(seconds) || Proc.HasExited) Assert.Fail($"waiting for {what}:\n{Dump()}");
                Thread.Sleep(100);
            }
        }

        public int Stop()
        {
            ReplicaProcess.Kill(Proc.Id, 15);
            if (!Proc.WaitForExit(60_000)) { Proc.Kill(true); Assert.Fail($"autoscale did not stop:\n{Dump()}"); }
            _reader.Wait(5000);
            return Proc.ExitCode;
        }

        public void Dispose()
        {
            if (!Proc.HasExited) { ReplicaProcess.Kill(Proc.Id, 15); if (!Proc.WaitForExit(30_000)) Proc.Kill(true); }
            Proc.Dispose();
        }
    }

    private static (int Sent, int Ok, int Unfinished, string Errors) Bench(params string[] args)
    {
        var r = CliTests.Run(["bench", .. args, "--json"]);
        Assert.That(r.Code, Is.Zero, r.Err);
        using var doc = JsonDocument.Parse(r.Out);
        var p = doc.RootElement.GetProperty("points")[0];
        return (p.GetProperty("sent").GetInt32(), p.GetProperty("ok").GetInt32(), p.GetProperty("unfinished").GetInt32(), p.GetProperty("errors").GetRawText());
    }

    private static int FleetReady(JsonElement tick) => tick.TryGetProperty("fleet", out var f) ? f.GetProperty("ready").GetInt32() : -1;

    [Test]
    public void ARampGrowsTheFleetToThreeAndItDrainsBackToOneWithoutLosingARequest()
    {
        string dir = TestModels.TempDir("autoscale-e2e");
        string file = Path.Combine(dir, "endpoints.json");
        int metrics = ReplicaProcess.FreePort(), first = ReplicaProcess.FreePort();
        using var scaler = new AutoscaleProcess([
            "--actuator", "local", "--router-metrics", $"http://127.0.0.1:{metrics}/metrics", "--endpoints-file", file,
            "--fastserve", DistBinary.Path, "--ports", $"{first}-{first + 9}", "--min-replicas", "1", "--max-replicas", "4",
            "--target-concurrency", "4", "--stable-window-s", "6", "--panic-window-s", "2", "--scale-down-delay-s", "6",
            "--max-scale-down-per-minute", "1", "--tick-ms", "500", "--drain-delay-ms", "1000", "--json",
            "--", "--backend", "sim", "--model", TestModels.Tiny, "--workers", "1", "--sim-time-scale", "100", "--grace-ms", "15000"]);
        scaler.WaitFor(s => s.Named("replica.ready").Any(), "the first replica", 60);
        using var router = RouterProcess.StartOn($"file:{file}", "--metrics-port", $"{metrics}", "--slow-start-ms", "0");
        scaler.WaitFor(s => s.Named("tick").Any(t => t.GetProperty("action").GetString() == "none"), "a tick with the router's signal", 30);

        // ~0.58 s a request: 2 → 24 req/s is 1 → 14 in flight, 4 replicas' worth at 4 each.
        var ramp = Bench("--port", $"{router.Port}", "--profile", "ramp:2:24", "--duration", "20", "--warmup", "0");
        int peak = scaler.Named("tick").Max(FleetReady);
        Assert.That(peak, Is.GreaterThanOrEqualTo(3), scaler.Dump());
        Assert.That(scaler.Named("tick").Any(t => t.GetProperty("action").GetString() == "up" && t.GetProperty("desired").GetInt32() >= 3), Is.True);

        // A light load while the windows pass and the fleet drains back to one.
        var tail = Bench("--port", $"{router.Port}", "--rate", "2", "--duration", "25", "--warmup", "0");
        scaler.WaitFor(s => s.Named("tick").LastOrDefault() is { ValueKind: JsonValueKind.Object } t && t.TryGetProperty("fleet", out var f)
            && f.GetProperty("ready").GetInt32() == 1 && f.GetProperty("starting").GetInt32() == 0 && f.GetProperty("draining").GetInt32() == 0, "the fleet back at 1", 60);
        Assert.That(scaler.Named("tick").Any(t => t.GetProperty("action").GetString() == "down"), Is.True);
        var stopped = scaler.Named("replica.stopped").ToArray();
        Assert.That(stopped, Has.Length.EqualTo(peak - 1), scaler.Dump());
        Assert.That(stopped.All(e => e.GetProperty("detail").GetString()!.StartsWith("exit code 0")), Is.True, "drained replicas exit cleanly");
        Assert.That(scaler.Named("replica.exited").Concat(scaler.Named("replica.killed")).Concat(scaler.Named("replica.start_failed")), Is.Empty, scaler.Dump());

        foreach (var (name, b) in new[] { ("ramp", ramp), ("tail", tail) })
        {
            Assert.That(b.Unfinished, Is.Zero, $"{name}: every request gets a final");
            Assert.That((b.Ok, b.Errors), Is.EqualTo((b.Sent, "{}")), $"{name}: none lost or refused while replicas joined and drained");
        }
        var rs = router.Stop();
        Assert.That(rs.GetProperty("upstream_lost").GetInt64(), Is.Zero);
        Assert.That(scaler.Stop(), Is.Zero, scaler.Dump());
        Assert.That(scaler.Named("stopped"), Is.Not.Empty);
        Assert.That(scaler.Named("replica.stopped").Count(), Is.EqualTo(peak), "the last replica is drained on exit too");
    }

    [TestCase(new[] { "--actuator", "nope" }, "autoscale.bad_actuator", "--actuator must be local")]
    [TestCase(new[] { "--actuator", "dry-run", "--min-replicas", "5", "--max-replicas", "3" }, "autoscale.bad_config", "must not exceed max replicas")]
    [TestCase(new[] { "--actuator", "dry-run", "--min-replicas", "0" }, "autoscale.bad_config", "at least 1")]
    [TestCase(new[] { "--actuator", "dry-run", "--stable-window-s", "0" }, "autoscale.bad_config", "--stable-window-s must be above 0")]
    [TestCase(new[] { "--actuator", "dry-run", "--panic-window-s", "90" }, "autoscale.bad_config", "panic window")]
    [TestCase(new[] { "--actuator", "dry-run", "--tick-ms", "0" }, "autoscale.bad_config", "--tick-ms")]
    [TestCase(new[] { "--actuator", "local" }, "autoscale.bad_config", "--endpoints-file")]
    [TestCase(new[] { "--actuator", "dry-run", "--", "--backend", "sim" }, "autoscale.bad_config", "local actuator only")]
    public void BadConfigurationIsOneClearError(string[] args, string code, string words)
    {
        var r = CliTests.Run(["autoscale", "--router-metrics", "http://127.0.0.1:9/metrics", .. args]);
        Assert.That(r.Code, Is.Not.Zero);
        Assert.That(r.Err, Does.StartWith($"error[{code}]").And.Contain(words), r.Err);
        Assert.That(r.Err.Split('\n', StringSplitOptions.RemoveEmptyEntries), Has.Length.LessThanOrEqualTo(2), "one error, not a stack trace");
    }

    [Test]
    public void ABadSignalUrlIsOneClearError()
    {
        var r = CliTests.Run("autoscale", "--actuator", "dry-run", "--router-metrics", "https://router:9100/metrics");
        Assert.That(r.Err, Does.StartWith("error[autoscale.bad_signal]"), r.Err);
    }

    private static string KubeConfig(int port) =>
        KubeConfigFile.Write(Path.Combine(TestModels.TempDir("autoscale-kubeconfig"), "config"), port, "autoscaler", "scale-token");

    /// <summary>The published binary's k8s actuator (KubernetesClient.Aot under NativeAOT) against the fake API
    /// server: a surge on the routers' gauges becomes a PUT of the Deployment's scale subresource.</summary>
    [Test]
    public void TheK8sActuatorScalesADeploymentFromTheRoutersGauges()
    {
        using var api = new KubernetesActuatorTests.FakeApiServer();   // spec 3, all ready
        // 3 ready, 400 in flight at 48 each: 9 wanted ≥ 2 × 3, panic, at most ×2 → 6.
        using var router = new RouterMetricsSignalTests.TinyHttp(RouterMetricsSignalTests.Page
            .Replace("ready_endpoints 3", "ready_endpoints 3").Replace("concurrency 12.5", "concurrency 400").Replace("demand 22.5", "demand 410"));
        var psi = new ProcessStartInfo(DistBinary.Path) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in new[] { "autoscale", "--actuator", "k8s:fleet/replica", "--router-metrics", router.Url, "--max-replicas", "20", "--tick-ms", "200", "--json" })
            psi.ArgumentList.Add(a);
        psi.Environment["KUBECONFIG"] = KubeConfig(api.Port);
        psi.Environment.Remove("KUBERNETES_SERVICE_HOST");
        using var p = Process.Start(psi)!;
        var err = p.StandardError.ReadToEndAsync();
        var sw = Stopwatch.StartNew();
        while (api.SpecReplicas == 3 && sw.Elapsed < TimeSpan.FromSeconds(30) && !p.HasExited) Thread.Sleep(50);
        ReplicaProcess.Kill(p.Id, 15);
        Assert.That(p.WaitForExit(20_000), Is.True);
        string output = p.StandardOutput.ReadToEnd();
        Assert.That(api.SpecReplicas, Is.EqualTo(6), output + err.Result);
        var put = api.Requests.First(r => r.Method == "PUT");
        Assert.That((put.Path, put.Authorization), Is.EqualTo(("/apis/apps/v1/namespaces/fleet/deployments/replica/scale", "Bearer scale-token")));
        Assert.That(output, Does.Contain("\"action\":\"up\"").And.Contain("\"desired\":6"));
        Assert.That(p.ExitCode, Is.Zero, err.Result);
    }

    [Test]
    public void AnUnreachableClusterIsOneClearErrorAtStart()
    {
        var psi = new ProcessStartInfo(DistBinary.Path) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in new[] { "autoscale", "--actuator", "k8s:fleet/replica", "--router-metrics", "http://127.0.0.1:9/metrics" }) psi.ArgumentList.Add(a);
        psi.Environment["KUBECONFIG"] = KubeConfig(ReplicaProcess.FreePort());
        psi.Environment.Remove("KUBERNETES_SERVICE_HOST");
        using var p = Process.Start(psi)!;
        var err = p.StandardError.ReadToEndAsync();
        Assert.That(p.WaitForExit(30_000), Is.True);
        Assert.That(p.ExitCode, Is.EqualTo(1));
        Assert.That(err.Result, Does.StartWith("error[autoscale.k8s_unreachable]"), err.Result);
    }

    [Test]
    public void DryRunPrintsItsDecisionsAsJson()
    {
        using var p = new AutoscaleProcess(["--actuator", "dry-run", "--router-metrics", $"http://127.0.0.1:{ReplicaProcess.FreePort()}/metrics", "--tick-ms", "200", "--json"]);
        p.WaitFor(s => s.Named("tick").Count() >= 3, "three ticks", 30);
        var t = p.Named("tick").First();
        Assert.That(t.GetProperty("action").GetString(), Is.EqualTo("hold"));
        Assert.That(t.GetProperty("error").GetProperty("code").GetString(), Is.EqualTo("autoscale.signal_unavailable"));
        Assert.That(p.Named("started").Single().GetProperty("actuator").GetString(), Is.EqualTo("dry-run"));
        Assert.That(p.Stop(), Is.Zero, p.Dump());
    }
}
