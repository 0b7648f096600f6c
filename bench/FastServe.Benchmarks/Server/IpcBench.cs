using System.Buffers;
using System.Diagnostics;
using System.Net.Sockets;
using FastServe.Protocol;
using FastServe.Server.Ipc;
using FastServe.Protocol.Net;

namespace FastServe.Benchmarks.Server;

/// <summary>
/// Cost of the engine↔worker IPC (Unix-domain stream sockets carrying batched messages), measured with the real
/// message writer and frame reader: a one-message ping-pong (latency of one hand-off), and one-way streams of
/// token messages in batches of 1, 16 and 256 per write (what a scheduler step sends a worker). Prints ns per message.
///   dotnet run -c Release --project bench/FastServe.Benchmarks -- ipc [--json]
/// </summary>
internal static class IpcBench
{
    public static int Run(string[] args)
    {
        bool json = args.Contains("--json");
        var results = new List<(string Name, double NsPerMessage, double MessagesPerSecond)>();
        double rtt = PingPong(20_000);
        results.Add(("ping-pong round trip (1 message each way)", rtt, 1e9 / rtt));
        // How a producer hands a finished batch to the socket (docs/server.md): waking a writer thread, or sending on
        // its own thread without blocking (what the engine and workers do, the writer thread only taking over a
        // full socket). Round trips, so the hand-off's latency counts, as it does for a step's tokens.
        double viaWriter = PingPongOutBuffer(20_000, inline: false);
        results.Add(("round trip, hand-off to a writer thread", viaWriter, 1e9 / viaWriter));
        double viaInline = PingPongOutBuffer(20_000, inline: true);
        results.Add(("round trip, non-blocking send on producer", viaInline, 1e9 / viaInline));
        foreach (int batch in new[] { 1, 16, 256 })
        {
            double ns = Stream(batch, 2_000_000 / Math.Max(1, 64 / batch) / (batch == 1 ? 4 : 1));
            results.Add(($"one-way stream, {batch} messages per write", ns, 1e9 / ns));
        }
        if (json)
        {
            Console.WriteLine("{\"ipc\": [" + string.Join(", ", results.Select(r => $"{{\"case\": \"{r.Name}\", \"ns_per_message\": {r.NsPerMessage:F1}, \"messages_per_second\": {r.MessagesPerSecond:F0}}}")) + "]}");
        }
        else
        {
            Console.WriteLine($"{"case",-48} {"ns/message",12} {"messages/s",14}");
            foreach (var r in results) Console.WriteLine($"{r.Name,-48} {r.NsPerMessage,12:F0} {r.MessagesPerSecond,14:N0}");
        }
        return 0;
    }

    private static (Socket, Socket) Pair()
    {
        string path = Path.Combine(Path.GetTempPath(), $"fastserve-ipcbench-{Environment.ProcessId}.sock");
        File.Delete(path);
        using var l = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        l.Bind(new UnixDomainSocketEndPoint(path));
        l.Listen(1);
        var a = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        a.Connect(new UnixDomainSocketEndPoint(path));
        var b = l.Accept();
        File.Delete(path);
        return (a, b);
    }

    // Reads whole messages from `s` until `count` were parsed; returns false on EOF.
    private static bool ReadMessages(Socket s, byte[] buf, ref int have, long count, Action<FrameHeader>? each = null)
    {
        long seen = 0;
        while (seen < count)
        {
            int n = s.Receive(buf, have, buf.Length - have, SocketFlags.None);
            if (n == 0) return false;
            have += n;
            int used = 0;
            while (FrameReader.TryRead(buf.AsSpan(used, have - used), Ipc.MaxMessage, out var h, out _, out int consumed) == ReadResult.Frame)
            {
                used += consumed;
                seen++;
                each?.Invoke(h);
            }
            buf.AsSpan(used, have - used).CopyTo(buf);
            have -= used;
        }
        return true;
    }

    private static double PingPong(int rounds)
    {
        var (a, b) = Pair();
        using (a) using (b)
        {
            var echo = StartEcho(b, rounds);
            var buf = new byte[1 << 16];
            int have = 0;
            var w = new ArrayBufferWriter<byte>();
            var sw = Stopwatch.StartNew();
            for (int i = 0; i < rounds; i++)
            {
                w.ResetWrittenCount();
                Ipc.WriteTokens(w, (ulong)i, i);
                a.Send(w.WrittenSpan);
                ReadMessages(a, buf, ref have, 1);
            }
            double ns = sw.Elapsed.TotalNanoseconds / rounds;
            echo.Join();
            return ns;
        }
    }

    // The far end of a round-trip case: answers each message with one message, `rounds` times.
    private static Thread StartEcho(Socket b, int rounds)
    {
        var echo = new Thread(() =>
        {
            var buf = new byte[1 << 16];
            int have = 0;
            var w = new ArrayBufferWriter<byte>();
            for (int i = 0; i < rounds; i++)
            {
                if (!ReadMessages(b, buf, ref have, 1)) return;
                w.ResetWrittenCount();
                Ipc.WriteTokens(w, (ulong)i, i);
                b.Send(w.WrittenSpan);
            }
        }) { IsBackground = true };
        echo.Start();
        return echo;
    }

    private static double PingPongOutBuffer(int rounds, bool inline)
    {
        var (a, b) = Pair();
        using (a) using (b)
        {
            var echo = StartEcho(b, rounds);
            var o = new OutBuffer(a, 1 << 20, _ => { });
            var wake = new AutoResetEvent(false);
            bool stop = false;
            var writer = new Thread(() =>
            {
                while (!Volatile.Read(ref stop)) { wake.WaitOne(100); o.FlushBlocking(); }
            }) { IsBackground = true };
            writer.Start();
            var buf = new byte[1 << 16];
            int have = 0;
            var sw = Stopwatch.StartNew();
            for (int i = 0; i < rounds; i++)
            {
                lock (o.Lock) Ipc.WriteTokens(o.Writer, (ulong)i, i);
                if (!inline || !o.TrySendNow()) wake.Set();
                ReadMessages(a, buf, ref have, 1);
            }
            double ns = sw.Elapsed.TotalNanoseconds / rounds;
            Volatile.Write(ref stop, true);
            wake.Set();
            writer.Join();
            echo.Join();
            return ns;
        }
    }

    private static double Stream(int batch, int messages)
    {
        int writes = Math.Max(1, messages / batch);
        long total = (long)writes * batch;
        var (a, b) = Pair();
        using (a) using (b)
        {
            long sum = 0;
            var reader = new Thread(() =>
            {
                var buf = new byte[1 << 20];
                int have = 0;
                ReadMessages(b, buf, ref have, total, h => sum += (long)h.Id);
            }) { IsBackground = true };
            reader.Start();
            var w = new ArrayBufferWriter<byte>(batch * 32);
            var sw = Stopwatch.StartNew();
            for (int i = 0; i < writes; i++)
            {
                w.ResetWrittenCount();
                for (int k = 0; k < batch; k++) Ipc.WriteTokens(w, (ulong)k, k);
                var span = w.WrittenSpan;
                while (!span.IsEmpty) span = span[a.Send(span)..];
            }
            reader.Join();
            return sw.Elapsed.TotalNanoseconds / total;
        }
    }
}
