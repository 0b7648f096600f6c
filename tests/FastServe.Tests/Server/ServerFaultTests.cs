using NUnit.Framework;
using System.Diagnostics;
using FastServe.Protocol;

namespace FastServe.Tests.Server;

/// <summary>
/// Faults and lifecycle, each on its own replica over a slowed simulated device (steps of a few milliseconds, so
/// requests are still running when the test acts): cancel, deadline, client disconnect, kill -9 of a worker and of
/// the engine, drain by admin frame and by SIGTERM, slow senders.
/// </summary>
[TestFixture, NonParallelizable]
public sealed class ServerFaultTests
{
    private static ReplicaProcess Slow(params string[] extra) =>
        ReplicaProcess.Start(["--backend", "sim", "--model", TestModels.Tiny, "--sim-time-scale", "100", .. extra]);

    [Test]
    public void CancelEndsTheRequestAndDeadlineEndsItOnTime()
    {
        using var r = Slow("--workers", "1");
        using var c = RawConnection.Open(r.Port);
        // 1500 tokens cannot be generated in 300 ms: once the engine knows its step time (from its warm-up) it refuses
        // the request at once, retriably (engine.deadline_unmeetable); had it admitted it, the request would end as soon
        // as it visibly could not make it (request.deadline_unreachable), or at the deadline. Either way nothing past it.
        c.Request(2, "deadline", 1500, deadlineMs: 300);
        c.Request(1, "cancel me", 1500);
        var sw = Stopwatch.StartNew();
        while (!c.Outcomes.TryGetValue(1, out var o) || o.Ids.Count < 3) c.Record(c.Read(TimeSpan.FromSeconds(10))!.Value);
        c.Send(w => FrameWriter.Cancel(w, 1));
        Assert.That(c.Collect([1, 2]), Is.True);
        var cancelled = c.Outcomes[1];
        Assert.That(cancelled.Final.Status, Is.EqualTo(WireStatus.Cancelled));
        Assert.That(cancelled.Ids.Count, Is.LessThan(1500));
        Assert.That(cancelled.Final.CompletionTokens, Is.EqualTo((uint)cancelled.Ids.Count));
        var late = c.Outcomes[2];
        double e2eMs = late.Final.Timings[(int)Timing.FinalSent] / 1000.0;
        if (late.Final.Status == WireStatus.Overloaded)
        {
            Assert.That((late.Detail, late.Final.Retriable, late.Ids.Count), Is.EqualTo(("engine.deadline_unmeetable", true, 0)), late.Message);
            Assert.That(late.Final.RetryAfterMs, Is.GreaterThan(0u));
            Assert.That(e2eMs, Is.LessThan(100), "refused at once");
        }
        else
        {
            Assert.That(late.Final.Status, Is.EqualTo(WireStatus.DeadlineExceeded), late.Message);
            Assert.That((late.Detail, late.Final.Retriable), Is.AnyOf(("request.deadline_exceeded", false), ("request.deadline_unreachable", false)));
            Assert.That(e2eMs, Is.LessThan(1000));
            Assert.That(late.Ids.Count, Is.LessThan(1500));
        }
        Assert.That(r.WaitLoad(l => l.InFlight == 0 && l.Running == 0).InFlight, Is.Zero);
    }

    [Test]
    public void AClientThatDisconnectsMidStreamFreesItsRequestsInTheEngine()
    {
        using var r = Slow("--workers", "1");
        using (var c = RawConnection.Open(r.Port))
        {
            for (ulong i = 1; i <= 10; i++) c.Request(i, "long", 1500);
            while (c.Outcomes.Count < 10) c.Record(c.Read(TimeSpan.FromSeconds(10))!.Value);
            Assert.That(r.WaitLoad(l => l.Running == 10).Running, Is.EqualTo(10));
        }
        r.WaitLoad(l => l.Running == 0 && l.InFlight == 0, 5);
    }

    [Test]
    public void KillingAWorkerLeavesTheOtherServingAndTheSupervisorRestartsIt()
    {
        using var r = Slow("--workers", "2");
        // Open connections until both workers hold some (the kernel spreads them), with a request running on each.
        var conns = new List<RawConnection>();
        for (int i = 0; i < 16; i++)
        {
            var c = RawConnection.Open(r.Port);
            c.Request(1, "long", 1500);
            conns.Add(c);
        }
        foreach (var c in conns) while (!c.Outcomes.ContainsKey(1)) c.Record(c.Read(TimeSpan.FromSeconds(10))!.Value);
        var workers = r.Children("serve-worker");
        Assert.That(workers, Has.Length.EqualTo(2));
        ReplicaProcess.Kill(workers[0], 9);
        int closed = 0, alive = 0;
        foreach (var c in conns)
        {
            if (c.ClosedWithin(0.5)) closed++;
            else alive++;
        }
        Assert.That(closed, Is.GreaterThan(0), "connections of the killed worker are closed");
        Assert.That(alive, Is.GreaterThan(0), "connections of the other worker stay up");
        // The engine frees the dead worker's requests; the survivors keep running.
        r.WaitLoad(l => l.Running == alive, 5);
        foreach (var c in conns.Where(c => c.Socket.Connected)) c.Send(w => FrameWriter.Cancel(w, 1));
        foreach (var c in conns) c.Dispose();
        r.WaitLoad(l => l.Running == 0 && l.Workers == 2, 10);
        Assert.That(r.Children("serve-worker"), Has.Length.EqualTo(2));
        Assert.That(r.Children("serve-worker"), Does.Not.Contain(workers[0]));
        using var fresh = RawConnection.Open(r.Port);
        fresh.Request(1, "after restart", 4);
        Assert.That(fresh.Collect([1]), Is.True);
        Assert.That(fresh.Outcomes[1].Final.Status, Is.EqualTo(WireStatus.Ok));
    }

    [Test]
    public void KillingTheEngineAnswersInFlightRequestsRetriablyAndServingResumes()
    {
        using var r = Slow("--workers", "1");
        using var c = RawConnection.Open(r.Port);
        for (ulong i = 1; i <= 5; i++) c.Request(i, "long", 1500);
        while (c.Outcomes.Count < 5) c.Record(c.Read(TimeSpan.FromSeconds(10))!.Value);
        int engine = r.Children("serve-engine").Single();
        ReplicaProcess.Kill(engine, 9);
        Assert.That(c.Collect([1, 2, 3, 4, 5], 10), Is.True, "nothing hangs");
        foreach (var o in c.Outcomes.Values)
        {
            Assert.That(o.Final.Status, Is.EqualTo(WireStatus.Unavailable));
            Assert.That(o.Final.Retriable, Is.True);
            Assert.That(o.Final.RetryAfterMs, Is.GreaterThan(0u));
            Assert.That(o.Detail, Is.EqualTo("engine.lost"));
        }
        // The same connection keeps working once the supervisor has restarted the engine.
        r.WaitLoad(l => l.State == ReplicaState.Ready, 30);
        Assert.That(r.Children("serve-engine").Single(), Is.Not.EqualTo(engine));
        c.Request(9, "after restart", 4);
        Assert.That(c.Collect([9]), Is.True);
        Assert.That(c.Outcomes[9].Final.Status, Is.EqualTo(WireStatus.Ok));
    }

    [Test]
    public void AdminDrainWithAWrongTokenIsUnauthorized()
    {
        using var r = Slow(["--workers", "1", "--grace-ms", "20000"]);
        using var c = RawConnection.Open(r.Port);
        c.Request(1, "finishes during the drain", 200);
        while (!c.Outcomes.ContainsKey(1)) c.Record(c.Read(TimeSpan.FromSeconds(10))!.Value);
        c.Send(w => FrameWriter.Drain(w, "wrong"u8));
        while (c.Errors.Count == 0) c.Record(c.Read(TimeSpan.FromSeconds(5))!.Value);
        Assert.That(c.Errors[0].Status, Is.EqualTo(WireStatus.Unauthorized));
        Assert.That(r.Proc.HasExited, Is.False);
        Assert.That(c.Load().State, Is.EqualTo(ReplicaState.Ready), "an unauthorized DRAIN changes nothing");
    }

    [Test]
    public void AdminDrainWithTheTokenDrains()
    {
        string token = "s3cret-" + Guid.NewGuid().ToString("N");
        using var r = ReplicaProcess.Start(["--backend", "sim", "--model", TestModels.Tiny, "--sim-time-scale", "100", "--workers", "1", "--grace-ms", "20000"],
            new Dictionary<string, string> { ["FASTSERVE_ADMIN_TOKEN"] = token });
        using var c = RawConnection.Open(r.Port);
        c.Request(1, "finishes during the drain", 200);
        while (!c.Outcomes.ContainsKey(1)) c.Record(c.Read(TimeSpan.FromSeconds(10))!.Value);
        c.Send(w => FrameWriter.Drain(w, System.Text.Encoding.UTF8.GetBytes(token)));
        var ok = c.Read(TimeSpan.FromSeconds(5));
        while (ok is { } f && f.Header.Type != FrameType.DrainOk) { c.Record(f); ok = c.Read(TimeSpan.FromSeconds(5)); }
        Assert.That(ok?.Header.Type, Is.EqualTo(FrameType.DrainOk));
        // While the request runs: the replica reports draining and refuses new work, retriably.
        using (var other = RawConnection.Open(r.Port))
        {
            r.WaitLoad(l => l.State == ReplicaState.Draining, 3);
            other.Request(7, "too late", 4);
            Assert.That(other.Collect([7]), Is.True);
            Assert.That(other.Outcomes[7].Final.Status, Is.EqualTo(WireStatus.Draining));
            Assert.That(other.Outcomes[7].Final.Retriable, Is.True);
        }
        // The worker that took the DRAIN frame refuses at once; the engine, which answers the agent port, hears of
        // the drain a moment later.
        string? line = null;
        for (var until = DateTime.UtcNow.AddSeconds(3); DateTime.UtcNow < until && line != "drain"; Thread.Sleep(20))
            using (var agent = new System.Net.Sockets.TcpClient("127.0.0.1", r.AgentPort))
                line = new StreamReader(agent.GetStream()).ReadLine();
        Assert.That(line, Is.EqualTo("drain"));
        Assert.That(c.Collect([1]), Is.True);
        Assert.That(c.Outcomes[1].Final.Status, Is.EqualTo(WireStatus.Ok), "in-flight work finishes");
        Assert.That(c.Outcomes[1].Ids, Has.Count.EqualTo(200));
        Assert.That(r.Proc.WaitForExit(15_000), Is.True, "the replica exits once drained");
        Assert.That(r.Proc.ExitCode, Is.Zero);
    }

    [Test]
    public void SigtermDrainsLikeTheAdminFrame()
    {
        using var r = Slow(["--workers", "2", "--grace-ms", "20000"]);
        using var c = RawConnection.Open(r.Port);
        for (ulong i = 1; i <= 4; i++) c.Request(i, "finishes during the drain", 150);
        while (c.Outcomes.Count < 4) c.Record(c.Read(TimeSpan.FromSeconds(10))!.Value);
        r.Signal(15);
        Assert.That(c.Collect([1, 2, 3, 4]), Is.True);
        Assert.That(c.Outcomes.Values.Select(o => o.Final.Status), Is.All.EqualTo(WireStatus.Ok));
        Assert.That(r.Proc.WaitForExit(15_000), Is.True);
        Assert.That(r.Proc.ExitCode, Is.Zero);
    }

    [Test]
    public void GraceExpiryEndsUnfinishedRequestsWithDraining()
    {
        using var r = Slow(["--workers", "1", "--grace-ms", "500"]);
        using var c = RawConnection.Open(r.Port);
        c.Request(1, "too long for the grace period", 1900);
        while (!c.Outcomes.ContainsKey(1)) c.Record(c.Read(TimeSpan.FromSeconds(10))!.Value);
        r.Signal(15);
        Assert.That(c.Collect([1], 10), Is.True);
        Assert.That(c.Outcomes[1].Final.Status, Is.EqualTo(WireStatus.Draining));
        Assert.That(c.Outcomes[1].Final.Retriable, Is.False, "output was already streamed: not silently retriable");
        Assert.That(r.Proc.WaitForExit(15_000), Is.True);
    }

    [Test]
    public void SlowSendersAndSilentConnectionsAreCutOff()
    {
        using var r = ReplicaProcess.Start(["--backend", "sim", "--model", TestModels.Tiny, "--workers", "1", "--frame-timeout-ms", "500", "--idle-timeout-ms", "800"], metrics: false, agent: false);
        // Slowloris: a frame that trickles in a byte at a time never completes.
        using var slow = RawConnection.Open(r.Port);
        var w = new System.Buffers.ArrayBufferWriter<byte>();
        FrameWriter.Request(w, 1, RequestParams.Default, "slow"u8, default);
        var bytes = w.WrittenSpan.ToArray();
        var sw = Stopwatch.StartNew();
        bool closed = false;
        for (int i = 0; i < bytes.Length && !closed; i++)
        {
            try { slow.SendRaw(bytes.AsSpan(i, 1)); } catch (System.Net.Sockets.SocketException) { closed = true; break; }
            closed = slow.ClosedWithin(0.2);
        }
        Assert.That(closed || slow.ClosedWithin(3), Is.True);
        Assert.That(sw.Elapsed.TotalSeconds, Is.LessThan(5));
        Assert.That(slow.Errors.Any(e => e.Fatal && e.Status == WireStatus.BadRequest), Is.True, "a fatal error frame says why");
        // No HELLO at all, and an idle connection: both closed.
        using var silent = new RawConnection(r.Port);
        Assert.That(silent.ClosedWithin(3), Is.True);
        using var idle = RawConnection.Open(r.Port);
        Assert.That(idle.ClosedWithin(3), Is.True);
        // Meanwhile a normal client is served.
        using var good = RawConnection.Open(r.Port);
        good.Request(1, "fine", 4);
        Assert.That(good.Collect([1]), Is.True);
        Assert.That(good.Outcomes[1].Final.Status, Is.EqualTo(WireStatus.Ok));
    }
}
