using System.Buffers;
using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using FastServe.Protocol;

namespace FastServe.Tests.Router;

/// <summary>
/// A protocol peer that plays a replica by a script, so the router's retry, cancel and ejection rules can be driven
/// exactly: it answers HELLO, sends LOAD_REPORTs with a settable state at the subscribed interval, and answers each
/// REQUEST as <see cref="OnRequest"/> says (stream and finish, refuse with a status, or hold until released).
/// It records every REQUEST and CANCEL id it receives.
/// </summary>
internal sealed class ScriptedReplica : IDisposable
{
    public enum Reply { Ok, Overloaded, Draining, Internal, Hold, StreamThenHold }

    private readonly Socket _listener;
    private readonly List<Conn> _conns = [];
    private readonly ConcurrentDictionary<ulong, Conn> _held = new();
    private volatile bool _disposed;

    public ScriptedReplica(string name)
    {
        Name = name;
        _listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        _listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        _listener.Listen(64);
        Port = ((IPEndPoint)_listener.LocalEndPoint!).Port;
        new Thread(AcceptLoop) { IsBackground = true, Name = $"scripted-{name}" }.Start();
    }

    public string Name { get; }
    public int Port { get; }
    public string Address => $"127.0.0.1:{Port}";
    public volatile ReplicaState State = ReplicaState.Ready;
    public Func<ulong, Reply> OnRequest = _ => Reply.Ok;
    /// <summary>Tokens streamed by an <see cref="Reply.Ok"/> answer (in one DELTA).</summary>
    public int Tokens = 3;
    /// <summary>Stop reading from every connection (a replica that hangs): the router's bytes pile up unsent.</summary>
    public volatile bool Stalled;
    /// <summary>retry_after_ms of its retriable refusals.</summary>
    public volatile uint RetryAfterMs = 100;
    public readonly ConcurrentQueue<ulong> Requests = new();
    /// <summary>The deadline field (ms; 0 = none) of every REQUEST received, in order.</summary>
    public readonly ConcurrentQueue<uint> Deadlines = new();
    public readonly ConcurrentQueue<ulong> Cancels = new();
    /// <summary>Every REQUEST payload received, in order.</summary>
    public readonly ConcurrentQueue<byte[]> Payloads = new();
    /// <summary>The model and version it declares (protocol 1.2; empty: none, as a 1.1 replica).</summary>
    public volatile string Model = "", ModelVersion = "";
    /// <summary>The text of an <see cref="Reply.Ok"/> answer.</summary>
    public volatile string Text = "x";
    /// <summary>Mean and lowest token log-probability of its answers, sent when a request asks (flag logprobs).</summary>
    public float LogprobMean = -0.1f, LogprobMin = -0.5f;
    /// <summary>The device time its FINALs report, µs.</summary>
    public uint DeviceUs = 1000;
    /// <summary>The protocol minor its HELLO_OK declares (2: it takes no resume; 3: it does).</summary>
    public volatile ushort Minor = 2;
    /// <summary>Estimated queue wait its load reports give, ms.</summary>
    public volatile int EstimatedWaitMs;

    public int OpenConnections { get { lock (_conns) return _conns.Count(c => !c.Closed); } }
    public int HeldCount => _held.Count;

    /// <summary>Finishes every held request with <c>ok</c>.</summary>
    public void ReleaseHeld()
    {
        foreach (var (id, c) in _held)
            if (_held.TryRemove(id, out _)) c.Send(w => { Delta(w, id, Tokens); Final(w, id, WireStatus.Ok, "", Tokens, logprobs: true); });
    }

    /// <summary>Closes every connection at once (as if the process died).</summary>
    public void DropConnections()
    {
        lock (_conns) foreach (var c in _conns) c.Close();
        _held.Clear();
    }

    private void AcceptLoop()
    {
        while (!_disposed)
        {
            Socket s;
            try { s = _listener.Accept(); }
            catch (Exception e) when (e is SocketException or ObjectDisposedException) { return; }
            var c = new Conn(this, s);
            lock (_conns) _conns.Add(c);
            new Thread(c.Run) { IsBackground = true, Name = $"scripted-{Name}-conn" }.Start();
        }
    }

    private void Delta(IBufferWriter<byte> w, ulong id, int n)
    {
        var ids = Enumerable.Range(100, n).ToArray();
        FrameWriter.Delta(w, id, ids, System.Text.Encoding.UTF8.GetBytes(Text));
    }

    private void Final(IBufferWriter<byte> w, ulong id, WireStatus status, string detail, int tokens = 0, bool logprobs = false)
    {
        var f = new FinalInfo
        {
            Status = status,
            Finish = status == WireStatus.Ok ? WireFinish.Length : WireFinish.None,
            Retriable = WireNames.IsRetriable(status),
            RetryAfterMs = WireNames.IsRetriable(status) ? RetryAfterMs : 0,
            CompletionTokens = (uint)tokens,
            HasLogprobs = logprobs,
            LogprobMean = LogprobMean,
            LogprobMin = LogprobMin,
        };
        if (status == WireStatus.Ok) f.Timings[(int)Timing.Device] = DeviceUs;
        FrameWriter.Final(w, id, f, detail, status == WireStatus.Ok ? "" : "scripted");
    }

    private sealed class Conn(ScriptedReplica owner, Socket socket)
    {
        private readonly Lock _send = new();
        private volatile bool _closed;
        public bool Closed => _closed;

        public void Send(Action<IBufferWriter<byte>> write)
        {
            var w = new ArrayBufferWriter<byte>();
            write(w);
            lock (_send)
            {
                if (_closed) return;
                try
                {
                    var span = w.WrittenSpan;
                    while (!span.IsEmpty) span = span[socket.Send(span)..];
                }
                catch (Exception e) when (e is SocketException or ObjectDisposedException) { Close(); }
            }
        }

        public void Close()
        {
            if (_closed) return;
            _closed = true;
            try { socket.Shutdown(SocketShutdown.Both); } catch (Exception e) when (e is SocketException or ObjectDisposedException) { }
            socket.Dispose();
        }

        public void Run()
        {
            var buf = new byte[2 << 20];
            int have = 0;
            try
            {
                while (!_closed)
                {
                    if (owner.Stalled)
                    {
                        Thread.Sleep(5);
                        continue;
                    }
                    int n = socket.Receive(buf, have, buf.Length - have, SocketFlags.None);
                    if (n == 0) break;
                    have += n;
                    int used = 0;
                    while (FrameReader.TryRead(buf.AsSpan(used, have - used), 1 << 20, out var h, out var payload, out int consumed) == ReadResult.Frame)
                    {
                        used += consumed;
                        Handle(h, payload.ToArray());
                    }
                    buf.AsSpan(used, have - used).CopyTo(buf);
                    have -= used;
                }
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException) { }
            Close();
        }

        private void Handle(FrameHeader h, byte[] payload)
        {
            switch (h.Type)
            {
                case FrameType.Hello:
                    Send(w => FrameWriter.HelloOk(w, new HelloOk(1, owner.Minor, Wire.DefaultMaxFrame, 2047, 1024, 60_000, 2048, owner.Name, owner.Model, owner.ModelVersion)));
                    break;
                case FrameType.LoadQuery:
                {
                    uint interval = BitConverter.ToUInt32(payload);
                    if (interval == 0) Send(w => FrameWriter.LoadReport(w, Report()));
                    else new Thread(() =>
                    {
                        while (!_closed && !owner._disposed)
                        {
                            Send(w => FrameWriter.LoadReport(w, Report()));
                            Thread.Sleep((int)interval);
                        }
                    }) { IsBackground = true }.Start();
                    break;
                }
                case FrameType.Request:
                {
                    ulong id = h.Id;
                    owner.Deadlines.Enqueue(BitConverter.ToUInt32(payload, 24));
                    owner.Payloads.Enqueue(payload);
                    owner.Requests.Enqueue(id);
                    bool lp = (payload[29] & (byte)RequestFlags.Logprobs) != 0;
                    switch (owner.OnRequest(id))
                    {
                        case Reply.Ok: Send(w => { owner.Delta(w, id, owner.Tokens); owner.Final(w, id, WireStatus.Ok, "", owner.Tokens, lp); }); break;
                        case Reply.Overloaded: Send(w => owner.Final(w, id, WireStatus.Overloaded, "engine.queue_full")); break;
                        case Reply.Draining: Send(w => owner.Final(w, id, WireStatus.Draining, "server.draining")); break;
                        case Reply.Internal: Send(w => owner.Final(w, id, WireStatus.Internal, "engine.failed")); break;
                        case Reply.Hold: owner._held[id] = this; break;
                        case Reply.StreamThenHold:
                            owner._held[id] = this;
                            Send(w => owner.Delta(w, id, 1));
                            break;
                    }
                    break;
                }
                case FrameType.Cancel:
                    owner.Cancels.Enqueue(h.Id);
                    if (owner._held.TryRemove(h.Id, out _)) Send(w => owner.Final(w, h.Id, WireStatus.Cancelled, "request.cancelled"));
                    break;
            }
        }

        private LoadReport Report() => new(owner.State, 1, owner._held.Count, 0, owner._held.Count, 1f, owner.EstimatedWaitMs, 64, 0, owner.Model, owner.ModelVersion);
    }

    public void Dispose()
    {
        _disposed = true;
        _listener.Dispose();
        DropConnections();
    }
}
