using System.Collections.Concurrent;
using System.Diagnostics;
using System.Text.Json;
using FastServe.Autoscale.Actuators;
using FastServe.Tests.Server;
using NUnit.Framework;

namespace FastServe.Tests.Autoscale;

/// <summary>The <c>local</c> actuator with real <c>dist/fastserve serve</c> processes (sim backend): start, publish to
/// the endpoints file, drain and stop, a replica that dies, a start that fails, bad configuration.</summary>
[NonParallelizable]
public class LocalActuatorTests
{
    private static readonly string[] Sim = ["--backend", "sim", "--workers", "1", "--grace-ms", "5000"];

    private static (LocalActuatorOptions O, string File) Options(int min = 0, int max = 3, string[]? serve = null)
    {
        string dir = TestModels.TempDir("local-actuator");
        int first = ReplicaProcess.FreePort();
        var o = new LocalActuatorOptions
        {
            Executable = DistBinary.Path,
            ServeArgs = [.. serve ?? [.. Sim, "--model", TestModels.Tiny]],
            FirstPort = first,
            LastPort = first + 9,
            EndpointsFile = Path.Combine(dir, "endpoints.json"),
            DrainDelay = TimeSpan.FromMilliseconds(300),
            StopTimeout = TimeSpan.FromSeconds(20),
            StartTimeout = TimeSpan.FromSeconds(60),
            MinReplicas = min,
            MaxReplicas = max,
        };
        return (o, o.EndpointsFile);
    }

    private static string[] Listed(string file)
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(file));
        return doc.RootElement.GetProperty("endpoints").EnumerateArray().Select(e => e.GetProperty("address").GetString()!).ToArray();
    }

    private static void WaitFor(Func<bool> cond, string what, ConcurrentQueue<ReplicaEvent> events, int seconds = 60)
    {
        var sw = Stopwatch.StartNew();
        while (!cond())
        {
            if (sw.Elapsed > TimeSpan.FromSeconds(seconds))
                Assert.Fail($"timed out waiting for {what}; events:\n{string.Join("\n", events)}");
            Thread.Sleep(50);
        }
    }

    [Test]
    public void StartsPublishesReadyReplicasThenDrainsTheNewestFirst()
    {
        var (o, file) = Options();
        var events = new ConcurrentQueue<ReplicaEvent>();
        var a = new LocalActuator(o, events.Enqueue);
        try
        {
            Assert.That(Listed(file), Is.Empty, "a file left by an earlier run is emptied at start");
            var r = a.ScaleAsync(2, default).AsTask().Result;
            Assert.That(r.Size, Is.EqualTo(new FleetSize(0, 2)), "both starting");
            WaitFor(() => a.ObserveAsync(default).AsTask().Result.Size!.Value.Ready == 2, "two ready", events);
            string[] both = [$"127.0.0.1:{o.FirstPort}", $"127.0.0.1:{o.FirstPort + 1}"];
            Assert.That(Listed(file), Is.EquivalentTo(both));
            Assert.That(events.Count(e => e.Event == "replica.ready"), Is.EqualTo(2));

            r = a.ScaleAsync(1, default).AsTask().Result;
            Assert.That(r.Size, Is.EqualTo(new FleetSize(1, 0, 1)), "one draining");
            Assert.That(Listed(file), Has.Length.EqualTo(1), "out of the file at once, before SIGTERM");
            var drained = events.Single(e => e.Event == "replica.draining");
            WaitFor(() => events.Any(e => e.Event == "replica.stopped"), "the drained replica to stop", events);
            var stopped = events.Single(e => e.Event == "replica.stopped");
            Assert.That(stopped.Replica, Is.EqualTo(drained.Replica));
            Assert.That(stopped.Detail, Does.StartWith("exit code 0"), "a drained replica exits cleanly");
            Assert.That(Listed(file).Single(), Is.Not.EqualTo(drained.Replica));
            Assert.That(a.ObserveAsync(default).AsTask().Result.Size, Is.EqualTo(new FleetSize(1, 0, 0)));
            Assert.That(a.ScaleAsync(7, default).AsTask().Result.Size!.Value.Current, Is.EqualTo(3), "never above max");
        }
        finally { a.DisposeAsync().AsTask().Wait(); }
        Assert.That(Listed(file), Is.Empty, "stopping the actuator stops its replicas");
        Assert.That(events.Count(e => e.Event == "replica.stopped"), Is.EqualTo(4), "the one drained, then the ready one and the two starting: " + string.Join("\n", events));
        foreach (int pid in events.Where(e => e.Pid is not null).Select(e => e.Pid!.Value).Distinct())
            Assert.That(Directory.Exists($"/proc/{pid}"), Is.False, $"pid {pid} still runs");
    }

    [Test]
    public void AReplicaThatDiesLeavesTheFileAtOnce()
    {
        var (o, file) = Options();
        var events = new ConcurrentQueue<ReplicaEvent>();
        var a = new LocalActuator(o, events.Enqueue);
        try
        {
            a.ScaleAsync(1, default).AsTask().Wait();
            // The actuator publishes the file before it emits replica.ready (whoever acts on the event finds the
            // replica listed), so the event may come a moment after the file shows it.
            WaitFor(() => Listed(file).Length == 1 && events.Any(e => e.Event == "replica.ready"), "one ready", events);
            int pid = events.First(e => e.Event == "replica.ready").Pid!.Value;
            ReplicaProcess.Kill(pid, 9);
            WaitFor(() => events.Any(e => e.Event == "replica.exited"), "the exit to be seen", events);
            Assert.That(Listed(file), Is.Empty);
            Assert.That(a.ObserveAsync(default).AsTask().Result.Size, Is.EqualTo(new FleetSize(0, 0)), "gone, for the next decision to replace");
        }
        finally { a.DisposeAsync().AsTask().Wait(); }
    }

    [Test]
    public void AFailedStartIsReportedWithItsStderrAndBacksOff()
    {
        var (o, file) = Options(serve: ["--backend", "no-such-backend"]);
        var events = new ConcurrentQueue<ReplicaEvent>();
        var a = new LocalActuator(o, events.Enqueue);
        try
        {
            a.ScaleAsync(1, default).AsTask().Wait();
            WaitFor(() => events.Any(e => e.Event == "replica.start_failed"), "the failed start", events);
            var failed = events.Single(e => e.Event == "replica.start_failed");
            Assert.That(failed.Detail, Does.Contain("before it was ready").And.Contain("no-such-backend"), "the replica's own error is passed on");
            var r = a.ScaleAsync(1, default).AsTask().Result;
            Assert.That(r.ErrorCode, Is.EqualTo("autoscale.local_backoff"), r.Error);
            Assert.That(Listed(file), Is.Empty);
        }
        finally { a.DisposeAsync().AsTask().Wait(); }
    }

    [Test]
    public void BadConfigurationIsOneClearError()
    {
        var (o, _) = Options();
        void Bad(LocalActuatorOptions x, string words)
        {
            var e = Assert.Throws<AutoscaleException>(() => new LocalActuator(x));
            Assert.That(e!.Code, Is.EqualTo("autoscale.bad_config"));
            Assert.That(e.Message, Does.Contain(words));
        }
        Bad(o with { MinReplicas = 4, MaxReplicas = 3 }, "min replicas (4)");
        Bad(o with { FirstPort = 9000, LastPort = 8000 }, "port range");
        Bad(o with { MaxReplicas = 11 }, "needs as many ports");
        Bad(o with { ServeArgs = ["--port", "1"] }, "'--port' is the local actuator's");
        Bad(o with { Executable = "/nonexistent/fastserve" }, "does not exist");
        Bad(o with { EndpointsFile = "/nonexistent-dir/e.json" }, "does not exist");
    }
}
