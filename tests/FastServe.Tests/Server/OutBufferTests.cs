using System.Net.Sockets;
using FastServe.Protocol.Net;
using NUnit.Framework;

namespace FastServe.Tests.Server;

/// <summary>The send buffer shared by the IPC links: non-blocking sends from the producer's thread, with a blocking
/// writer taking over whatever a full socket leaves, in order and exactly once.</summary>
public class OutBufferTests
{
    private static (Socket a, Socket b) Pair()
    {
        string path = Path.Combine(Path.GetTempPath(), $"fs-outbuf-{Guid.NewGuid():N}.sock");
        using var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        listener.Bind(new UnixDomainSocketEndPoint(path));
        listener.Listen(1);
        var a = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        a.Connect(new UnixDomainSocketEndPoint(path));
        var b = listener.Accept();
        File.Delete(path);
        a.SendBufferSize = 16 << 10;
        b.ReceiveBufferSize = 16 << 10;
        b.ReceiveTimeout = 20_000;     // a lost or stuck byte fails the test instead of hanging it
        a.SendTimeout = 20_000;
        return (a, b);
    }

    private static void Append(OutBuffer o, int from, int count)
    {
        lock (o.Lock)
        {
            var span = o.Writer.GetSpan(count * 4);
            for (int i = 0; i < count; i++) BitConverter.TryWriteBytes(span[(i * 4)..], from + i);
            o.Writer.Advance(count * 4);
        }
    }

    private static int[] ReadInts(Socket s, int count)
    {
        var buf = new byte[count * 4];
        int have = 0;
        while (have < buf.Length)
        {
            int n = s.Receive(buf, have, buf.Length - have, SocketFlags.None);
            if (n == 0) break;
            have += n;
        }
        Assert.That(have, Is.EqualTo(buf.Length), "stream ended early");
        var r = new int[count];
        for (int i = 0; i < count; i++) r[i] = BitConverter.ToInt32(buf, i * 4);
        return r;
    }

    [Test]
    public void SmallBatchLeavesAtOnceOnTheCallingThread()
    {
        var (a, b) = Pair();
        using (a) using (b)
        {
            var o = new OutBuffer(a, 1 << 20, _ => Assert.Fail("no failure expected"));
            Append(o, 0, 100);
            Assert.That(o.TrySendNow(), Is.True);
            Assert.That(ReadInts(b, 100), Is.EqualTo(Enumerable.Range(0, 100).ToArray()));
            Assert.That(o.TrySendNow(), Is.True, "nothing pending is a no-op");
        }
    }

    [Test]
    public void FullSocketHandsTheTailToTheBlockingWriterInOrder()
    {
        var (a, b) = Pair();
        using (a) using (b)
        {
            var o = new OutBuffer(a, 64 << 20, _ => Assert.Fail("no failure expected"));
            const int first = 1 << 20;             // 4 MiB: far more than the socket buffers hold
            Append(o, 0, first);
            Assert.That(o.TrySendNow(), Is.False, "a reader that does not read leaves a tail");
            // More appended while the tail waits must not overtake it, even through another TrySendNow.
            Append(o, first, 1000);
            Assert.That(o.TrySendNow(), Is.False, "the tail still waits for the blocking writer");
            var writer = Task.Run(() => Assert.That(o.FlushBlocking(), Is.True));
            var got = ReadInts(b, first + 1000);
            Assert.That(writer.Wait(TimeSpan.FromSeconds(30)), Is.True, "the blocking writer finished");
            Assert.That(got, Is.EqualTo(Enumerable.Range(0, first + 1000).ToArray()));
            Assert.That(o.TrySendNow(), Is.True);
        }
    }

    [Test]
    public void ConcurrentProducersLoseNothing()
    {
        var (a, b) = Pair();
        using (a) using (b)
        {
            var o = new OutBuffer(a, 64 << 20, _ => Assert.Fail("no failure expected"));
            var wake = new AutoResetEvent(false);
            bool stop = false;
            var writer = new Thread(() => { while (!Volatile.Read(ref stop)) { wake.WaitOne(50); o.FlushBlocking(); } o.FlushBlocking(); });
            writer.Start();
            const int producers = 4, perProducer = 20_000, chunk = 10;
            var reader = Task.Run(() => ReadInts(b, producers * perProducer));
            Parallel.For(0, producers, p =>
            {
                // Each producer's values are tagged by producer and increase, so order within a producer is checkable.
                for (int i = 0; i < perProducer; i += chunk)
                {
                    Append(o, p * perProducer + i, chunk);
                    if (!o.TrySendNow()) wake.Set();
                }
            });
            Volatile.Write(ref stop, true);
            wake.Set();
            Assert.That(writer.Join(TimeSpan.FromSeconds(30)), Is.True, "the writer finished");
            var got = reader.Result;
            for (int p = 0; p < producers; p++)
            {
                var mine = got.Where(v => v / perProducer == p).ToArray();
                Assert.That(mine, Is.EqualTo(Enumerable.Range(p * perProducer, perProducer).ToArray()), $"producer {p}");
            }
        }
    }

    [Test]
    public void PeerGoneFailsOnceAndTheFailureHandlerMayDisposeTheSocket()
    {
        // The engine's link closes and disposes its socket from the failure callback; disposing waits for every
        // reference to the handle, so the callback must run after the send let go of it (else this never returns).
        var (a, b) = Pair();
        int failures = 0;
        var o = new OutBuffer(a, 1 << 20, _ => { Interlocked.Increment(ref failures); a.Dispose(); });
        b.Dispose();
        var done = Task.Run(() =>
        {
            for (int i = 0; i < 3; i++)
            {
                Append(o, 0, 10);
                Assert.That(o.TrySendNow(), Is.True, "nothing is left for a writer once the buffer has failed");
            }
        });
        Assert.That(done.Wait(TimeSpan.FromSeconds(20)), Is.True, "a failing send does not deadlock on its own socket");
        Assert.That(failures, Is.EqualTo(1));
        Assert.That(o.Closed, Is.True);
    }
}
