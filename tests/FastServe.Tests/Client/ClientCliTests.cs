using System.Text.Json;
using FastServe.Tests.Cli;
using NUnit.Framework;

namespace FastServe.Tests.Client;

/// <summary><c>fastserve client</c> and <c>fastserve bench</c> through the published NativeAOT executable against a fake replica.</summary>
[NonParallelizable]
public class ClientCliTests
{
    [Test]
    public void ClientStreamsTextAndReportsOnStderr()
    {
        using var fake = new FakeReplica();
        var r = CliTests.Run("client", "--port", fake.Port.ToString(), "--max-tokens", "5", "hello there");
        Assert.That(r.Code, Is.Zero, r.Err);
        Assert.That(r.Out, Is.EqualTo("text" + Environment.NewLine));
        Assert.That(r.Err, Does.Contain("ok (length)").And.Contain("50 prompt tokens").And.Contain("5 generated").And.Contain("TTFT").And.Contain("first_token 0.50 ms"));
    }

    [Test]
    public void ClientJsonHasTheResult()
    {
        using var fake = new FakeReplica();
        var r = CliTests.Run("client", "--port", fake.Port.ToString(), "--max-tokens", "3", "--stop", "\n", "--seed", "4", "--json", "hi");
        Assert.That(r.Code, Is.Zero, r.Err);
        using var doc = JsonDocument.Parse(r.Out);
        var root = doc.RootElement;
        Assert.That(root.GetProperty("status").GetString(), Is.EqualTo("ok"));
        Assert.That(root.GetProperty("finish_reason").GetString(), Is.EqualTo("length"));
        Assert.That(root.GetProperty("server").GetString(), Is.EqualTo("fake"));
        Assert.That(root.GetProperty("token_ids").EnumerateArray().Select(e => e.GetInt32()), Is.EqualTo(new[] { 100, 101, 102 }));
        Assert.That(root.GetProperty("text").GetString(), Is.EqualTo("text"));
        Assert.That(root.GetProperty("e2e_ms").GetDouble(), Is.GreaterThan(15));
        Assert.That(root.GetProperty("server_timing_us").GetProperty("final_sent").GetInt32(), Is.EqualTo(700));
    }

    [Test]
    public void ClientErrorStatusIsOneLineAndExitCodeOne()
    {
        using var fake = new FakeReplica { OverloadEvery = 1 };
        var r = CliTests.Run("client", "--port", fake.Port.ToString(), "x");
        Assert.That(r.Code, Is.EqualTo(1));
        Assert.That(r.Err.TrimEnd().Split('\n')[^1], Is.EqualTo("error[overloaded]: engine.queue_full: queue full"));
    }

    [Test]
    public void ClientConnectFailureIsAOneLineError()
    {
        int port;
        using (var fake = new FakeReplica()) port = fake.Port;
        var r = CliTests.Run("client", "--port", port.ToString(), "x");
        Assert.That(r.Code, Is.EqualTo(1));
        Assert.That(r.Err, Does.StartWith($"error[client.connect_failed]: 127.0.0.1:{port}: "));
    }

    [Test]
    public void BenchSweepWritesJsonAndAChart()
    {
        using var fake = new FakeReplica { FirstTokenDelay = TimeSpan.FromMilliseconds(2), FinalDelay = TimeSpan.FromMilliseconds(2) };
        string dir = TestModels.TempDir("bench-cli");
        string png = Path.Combine(dir, "sweep.png"), file = Path.Combine(dir, "sweep.json");
        var r = CliTests.Run("bench", "--port", fake.Port.ToString(), "--connections", "2", "--sweep", "--sweep-start", "50", "--sweep-max", "200",
            "--duration", "0.5", "--warmup", "0.1", "--drain", "2", "--max-tokens", "4", "--json", "--chart", png, "--out-json", file);
        Assert.That(r.Code, Is.Zero, r.Err);
        using var doc = JsonDocument.Parse(r.Out);
        var root = doc.RootElement;
        Assert.That(root.GetProperty("sweep").GetBoolean(), Is.True);
        Assert.That(root.GetProperty("server").GetString(), Is.EqualTo("fake"));
        var points = root.GetProperty("points");
        Assert.That(points.EnumerateArray().Select(p => p.GetProperty("target_rps").GetDouble()), Is.EqualTo(new[] { 50.0, 100.0, 200.0 }));
        foreach (var p in points.EnumerateArray())
        {
            Assert.That(p.GetProperty("meets_slo").GetBoolean(), Is.True);
            Assert.That(p.GetProperty("ok").GetInt64(), Is.EqualTo(p.GetProperty("sent").GetInt64()));
            Assert.That(p.GetProperty("e2e_ms").GetProperty("p99").GetDouble(), Is.GreaterThan(3));
        }
        Assert.That(root.GetProperty("best").GetProperty("target_rps").GetDouble(), Is.EqualTo(200));
        using (var saved = JsonDocument.Parse(File.ReadAllBytes(file)))
            Assert.That(saved.RootElement.GetProperty("points").GetArrayLength(), Is.EqualTo(3));
        byte[] head = File.ReadAllBytes(png)[..8];
        Assert.That(head, Is.EqualTo(new byte[] { 0x89, (byte)'P', (byte)'N', (byte)'G', 0x0D, 0x0A, 0x1A, 0x0A }), "a PNG, drawn under NativeAOT");
        Assert.That(new FileInfo(png).Length, Is.GreaterThan(10_000));
    }

    [Test]
    public void BenchReportsThrottlingAndRejectionsAndCanTurnThrottlingOff()
    {
        using var fake = new FakeReplica { AcceptEvery = 4, FirstTokenDelay = TimeSpan.FromMilliseconds(2), FinalDelay = TimeSpan.FromMilliseconds(2) };
        string[] run = ["bench", "--port", fake.Port.ToString(), "--connections", "2", "--rate", "300", "--duration", "1", "--warmup", "0.2",
            "--drain", "2", "--max-tokens", "4", "--json"];
        var r = CliTests.Run(run);
        Assert.That(r.Code, Is.Zero, r.Err);
        using (var doc = JsonDocument.Parse(r.Out))
        {
            Assert.That(doc.RootElement.GetProperty("throttle_k").GetDouble(), Is.EqualTo(2));
            var p = doc.RootElement.GetProperty("points")[0];
            long throttled = p.GetProperty("throttled").GetInt64(), refused = p.GetProperty("errors").GetProperty("overloaded").GetInt64();
            Assert.That(throttled, Is.GreaterThan(0));
            Assert.That(p.GetProperty("errors").GetProperty("throttled").GetInt64(), Is.EqualTo(throttled));
            Assert.That(p.GetProperty("ok").GetInt64() + refused + throttled, Is.EqualTo(p.GetProperty("sent").GetInt64()));
            Assert.That(p.GetProperty("admitted").GetInt64(), Is.EqualTo(p.GetProperty("ok").GetInt64()));
            Assert.That(p.GetProperty("p99_admitted_ms").GetDouble(), Is.GreaterThan(3));
            Assert.That(p.GetProperty("rejections").GetInt64(), Is.EqualTo(refused));
            Assert.That(p.GetProperty("rejection_p99_ms").GetDouble(), Is.GreaterThanOrEqualTo(p.GetProperty("rejection_p50_ms").GetDouble()));
        }
        r = CliTests.Run([.. run, "--no-throttle"]);
        Assert.That(r.Code, Is.Zero, r.Err);
        using (var doc = JsonDocument.Parse(r.Out))
        {
            Assert.That(doc.RootElement.GetProperty("throttle_k").ValueKind, Is.EqualTo(JsonValueKind.Null));
            Assert.That(doc.RootElement.GetProperty("points")[0].GetProperty("throttled").GetInt64(), Is.Zero);
        }
    }

    [Test]
    public void BenchRejectsConflictingModes()
    {
        var r = CliTests.Run("bench", "--rate", "10", "--concurrency", "2");
        Assert.That(r.Code, Is.EqualTo(1));
        Assert.That(r.Err, Does.StartWith("error[args.bench_mode]"));
        r = CliTests.Run("bench", "--rate", "10", "--chart", "x.png");
        Assert.That(r.Err, Does.StartWith("error[args.chart_needs_sweep]"));
        r = CliTests.Run("bench", "--profile", "weekly:1:2");
        Assert.That(r.Err, Does.StartWith("error[args.invalid_profile]"));
        r = CliTests.Run("bench", "--rate", "10", "--throttle-k", "0.5");
        Assert.That(r.Err, Does.StartWith("error[args.invalid_throttle_k]"));
        r = CliTests.Run("bench", "--rate", "10", "--no-throttle", "--throttle-k", "3");
        Assert.That(r.Err, Does.StartWith("error[args.invalid_throttle_k]"));
    }
}
