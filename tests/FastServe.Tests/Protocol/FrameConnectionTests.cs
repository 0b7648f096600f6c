using System.Buffers.Binary;
using System.Net.Sockets;
using FastServe.Protocol;
using FastServe.Protocol.Net;
using NUnit.Framework;

namespace FastServe.Tests.Protocol;

/// <summary>The one receive loop every end runs: frames split across reads, frames larger than the buffer, the size
/// limit, a consumer that stops and a second run that finds the rest buffered, and how runs end.</summary>
public class FrameConnectionTests
{
    private sealed class Recorder : IFrameConsumer
    {
        public readonly List<(FrameHeader H, byte[] Payload)> Frames = [];
        public int Reads;
        public FrameHeader? TooLarge;
        public int StopAfter = int.MaxValue;

        public bool OnFrame(in FrameHeader header, ReadOnlySpan<byte> payload)
        {
            Frames.Add((header, payload.ToArray()));
            return Frames.Count < StopAfter;
        }

        public void OnTooLarge(in FrameHeader header) => TooLarge = header;

        public bool OnReadDone()
        {
            Reads++;
            return true;
        }
    }

    private static (Socket Ours, Socket Peer) Pair()
    {
        using var l = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        l.Bind(new System.Net.IPEndPoint(System.Net.IPAddress.Loopback, 0));
        l.Listen(1);
        var peer = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        peer.Connect(l.LocalEndPoint!);
        var ours = l.Accept();
        return (ours, peer);
    }

    private static byte[] Frame(FrameType type, ulong id, int payloadBytes, byte fill)
    {
        var f = new byte[Wire.HeaderSize + payloadBytes];
        BinaryPrimitives.WriteUInt32LittleEndian(f, (uint)payloadBytes);
        f[4] = (byte)type;
        BinaryPrimitives.WriteUInt64LittleEndian(f.AsSpan(8), id);
        f.AsSpan(Wire.HeaderSize).Fill(fill);
        return f;
    }

    [Test]
    public async Task FramesSplitAcrossReadsAndLargerThanTheBufferArriveWhole()
    {
        var (ours, peer) = Pair();
        var conn = new FrameConnection(ours, 1 << 20, 1 << 20, _ => { }, receiveBytes: 64);
        var rec = new Recorder();
        var run = conn.RunAsync(rec).AsTask();
        byte[] small = Frame(FrameType.Ping, 0, 5, 1), big = Frame(FrameType.Request, 7, 300_000, 2), last = Frame(FrameType.Cancel, 9, 0, 0);
        byte[] all = [.. small, .. big, .. last];
        // Dribble the first bytes (header split), then the rest in uneven chunks.
        for (int i = 0; i < 20; i++) { peer.Send(all, i, 1, SocketFlags.None); await Task.Delay(2); }
        for (int off = 20; off < all.Length; off += 7777) peer.Send(all, off, Math.Min(7777, all.Length - off), SocketFlags.None);
        peer.Shutdown(SocketShutdown.Send);
        var r = await run.WaitAsync(TimeSpan.FromSeconds(20));
        Assert.That(r.End, Is.EqualTo(FrameRunEnd.PeerClosed));
        Assert.That(rec.Frames.Select(f => (f.H.Type, f.H.Id, f.Payload.Length)),
            Is.EqualTo(new[] { (FrameType.Ping, 0UL, 5), (FrameType.Request, 7UL, 300_000), (FrameType.Cancel, 9UL, 0) }));
        Assert.That(rec.Frames[1].Payload.All(b => b == 2), Is.True);
        Assert.That(rec.Reads, Is.GreaterThan(20), "OnReadDone after every read");
        Assert.That(conn.PartialSinceTicks, Is.EqualTo(0), "nothing partial once every frame arrived");
        conn.Close();
        peer.Dispose();
    }

    [Test]
    public async Task AConsumerThatStopsLeavesTheRestForTheNextRun()
    {
        var (ours, peer) = Pair();
        var conn = new FrameConnection(ours, 1 << 20, 1 << 20, _ => { });
        peer.Send([.. Frame(FrameType.HelloOk, 0, 3, 1), .. Frame(FrameType.Delta, 1, 4, 2), .. Frame(FrameType.Final, 1, 2, 3)]);
        var first = new Recorder { StopAfter = 1 };
        var r1 = await conn.RunAsync(first).AsTask().WaitAsync(TimeSpan.FromSeconds(20));
        Assert.That(r1.End, Is.EqualTo(FrameRunEnd.Stopped));
        Assert.That(first.Frames, Has.Count.EqualTo(1));

        var second = new Recorder { StopAfter = 2 };
        var r2 = await conn.RunAsync(second).AsTask().WaitAsync(TimeSpan.FromSeconds(20));
        Assert.That(r2.End, Is.EqualTo(FrameRunEnd.Stopped));
        Assert.That(second.Frames.Select(f => f.H.Type), Is.EqualTo(new[] { FrameType.Delta, FrameType.Final }),
            "the frames that came with the first one were not lost");
        conn.Close();
        peer.Dispose();
    }

    [Test]
    public async Task AHeaderOverTheLimitEndsTheRunAfterTheFramesBeforeIt()
    {
        var (ours, peer) = Pair();
        var conn = new FrameConnection(ours, 1000, 1 << 20, _ => { });
        var rec = new Recorder();
        byte[] tooLarge = Frame(FrameType.Ping, 0, 0, 0);
        BitConverter.TryWriteBytes(tooLarge.AsSpan(0, 4), 1001u);
        peer.Send([.. Frame(FrameType.Ping, 0, 1000, 1), .. tooLarge]);
        var r = await conn.RunAsync(rec).AsTask().WaitAsync(TimeSpan.FromSeconds(20));
        Assert.That(r.End, Is.EqualTo(FrameRunEnd.TooLarge));
        Assert.That(rec.Frames, Has.Count.EqualTo(1), "a frame of exactly the limit is accepted");
        Assert.That(rec.TooLarge?.Length, Is.EqualTo(1001));
        Assert.That(rec.Reads, Is.EqualTo(1), "OnReadDone runs for the read that ended it too");
        conn.Close();
        peer.Dispose();
    }

    [Test]
    public void TheBlockingRunEndsWithASocketErrorWhenClosedFromAnotherThread()
    {
        var (ours, peer) = Pair();
        var conn = new FrameConnection(ours, 1 << 20, 1 << 20, _ => { });
        var rec = new Recorder();
        FrameRunResult r = default;
        var t = new Thread(() => r = conn.Run(rec));
        t.Start();
        peer.Send(Frame(FrameType.Ping, 0, 10, 1).AsSpan(0, 20));    // a partial frame: its clock starts
        var until = DateTime.UtcNow.AddSeconds(10);
        while (conn.PartialSinceTicks == 0 && DateTime.UtcNow < until) Thread.Sleep(5);
        Assert.That(conn.PartialSinceTicks, Is.Not.EqualTo(0));
        conn.Close();
        Assert.That(t.Join(TimeSpan.FromSeconds(20)), Is.True);
        Assert.That(r.End, Is.EqualTo(FrameRunEnd.SocketError));
        Assert.That(rec.Frames, Is.Empty);
        Assert.That(conn.Run(rec).End, Is.EqualTo(FrameRunEnd.SocketError), "a closed connection runs no more");
        peer.Dispose();
    }
    // Counts frames and samples the run thread's allocations at two frame numbers (allocates nothing itself).
    private sealed class AllocationProbe(int from, int to) : IFrameConsumer
    {
        public int Frames;
        public long AtFrom, AtTo;

        public bool OnFrame(in FrameHeader header, ReadOnlySpan<byte> payload)
        {
            Frames++;
            if (Frames == from) AtFrom = GC.GetAllocatedBytesForCurrentThread();
            if (Frames == to) AtTo = GC.GetAllocatedBytesForCurrentThread();
            return true;
        }

        public void OnTooLarge(in FrameHeader header) { }

        public bool OnReadDone() => true;
    }

    [Test]
    public void AWellFormedStreamAllocatesNothingOnTheReceivePath()
    {
        var (ours, peer) = Pair();
        var conn = new FrameConnection(ours, 1 << 20, 1 << 20, _ => { }, receiveBytes: 4 << 10);
        var probe = new AllocationProbe(1_000, 20_000);
        FrameRunResult r = default;
        var t = new Thread(() => r = conn.Run(probe));
        t.Start();
        // Frames of mixed sizes that straddle reads, and one larger than the first buffer early on (it grows once).
        var stream = new List<byte>(Frame(FrameType.Delta, 1, 10_000, 9));
        for (int i = 0; i < 20_000; i++) stream.AddRange(Frame(FrameType.Delta, (ulong)i, i % 97, 1));
        byte[] all = [.. stream];
        for (int off = 0; off < all.Length; off += 3001) peer.Send(all, off, Math.Min(3001, all.Length - off), SocketFlags.None);
        peer.Shutdown(SocketShutdown.Send);
        Assert.That(t.Join(TimeSpan.FromSeconds(30)), Is.True);
        Assert.That(r.End, Is.EqualTo(FrameRunEnd.PeerClosed));
        Assert.That(probe.Frames, Is.EqualTo(20_001));
        // Under one byte per frame: a per-frame allocation (24 bytes at least) would show 19,000 times over, while a
        // one-off allocation by the runtime on this thread (a JIT tier-up under a parallel test run) is tolerated.
        Assert.That(probe.AtTo - probe.AtFrom, Is.LessThan(20_000 - 1_000), "bytes allocated by the loop between frame 1,000 and 20,000");
        conn.Close();
        peer.Dispose();
    }
}
