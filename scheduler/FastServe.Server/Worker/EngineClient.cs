using System.Buffers;
using System.Diagnostics;
using System.Net.Sockets;
using FastServe.Protocol;
using FastServe.Protocol.Net;
using FastServe.Runtime;
using FastServe.Server.Engine;
using FastServe.Server.Ipc;

namespace FastServe.Server.Worker;

/// <summary>
/// The worker's end of the IPC link to the engine: connects (and reconnects while the supervisor restarts the
/// engine), sends submits and cancels in batches, and hands what the engine sends to the <see cref="WorkerHost"/>
/// on one reader thread.
/// </summary>
internal sealed class EngineClient : IpcReader
{
    private readonly WorkerHost _host;
    private readonly string _path;
    private readonly AutoResetEvent _wake = new(false);
    private readonly Lock _lock = new();
    private FrameConnection? _conn;    // guarded by _lock
    private OutBuffer? _out;           // guarded by _lock: _conn's, while linked
    private int _dirty;
    private volatile bool _stopped;
    private bool _startWritten;     // connect-loop thread only

    public EngineClient(WorkerHost host, string path)
    {
        _host = host;
        _path = path;
    }

    /// <summary>True while a link to an engine exists (its state may still be `starting`).</summary>
    public volatile bool Connected;
    public EngineHelloMsg Hello;
    private LoadMsg _load;
    private readonly Lock _loadLock = new();

    public LoadMsg Load { get { lock (_loadLock) return _load; } }

    public void Start()
    {
        new Thread(ConnectLoop) { IsBackground = true, Name = "fastserve-engine-link" }.Start();
        new Thread(WriteLoop) { IsBackground = true, Name = "fastserve-engine-write" }.Start();
    }

    public void Stop()
    {
        _stopped = true;
        lock (_lock) _conn?.Close();
        _wake.Set();
    }

    /// <summary>Appends a message for the engine; false when there is no link (the caller answers `unavailable`).</summary>
    public bool TrySend<TState>(TState state, Action<IBufferWriter<byte>, TState> write)
    {
        OutBuffer? o;
        lock (_lock) o = Connected ? _out : null;
        if (o is null) return false;
        lock (o.Lock) write(o.Writer, state);
        Volatile.Write(ref _dirty, 1);
        return true;
    }

    /// <summary>Sends what was appended (called at the end of each receive batch): on the calling thread when the
    /// socket takes it at once, else by waking the writer thread.</summary>
    public void Signal()
    {
        if (Interlocked.Exchange(ref _dirty, 0) != 1) return;
        OutBuffer? o;
        lock (_lock) o = _out;
        if (o is not null && !o.TrySendNow()) _wake.Set();
    }

    private void WriteLoop()
    {
        while (!_stopped)
        {
            _wake.WaitOne(200);
            OutBuffer? o;
            lock (_lock) o = _out;
            o?.FlushBlocking();
        }
    }

    private void ConnectLoop()
    {
        int backoffMs = 20;
        while (!_stopped)
        {
            var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            try
            {
                s.Connect(new UnixDomainSocketEndPoint(_path));
            }
            catch (SocketException)
            {
                s.Dispose();
                Thread.Sleep(backoffMs);
                backoffMs = Math.Min(backoffMs * 2, 500);
                continue;
            }
            backoffMs = 20;
            // A send that fails shuts the socket down, so the read fails too and the link is made again.
            var c = new FrameConnection(s, Ipc.Ipc.MaxMessage, 256L << 20,
                _ => { try { s.Shutdown(SocketShutdown.Both); } catch (Exception e) when (e is SocketException or ObjectDisposedException) { } },
                receiveBytes: 1 << 20);
            var o = c.Out;
            lock (_lock) { _conn = c; _out = o; }
            // Written before the engine hears of this worker, so it exists before the replica can report ready.
            StartTrace.Mark("linked");
            if (_host.Options.StartFile is { } sf && !_startWritten) { StartTrace.WriteFile(sf); _startWritten = true; }
            lock (o.Lock) Ipc.Ipc.Write(o.Writer, IpcType.WorkerHello, 0, new WorkerHelloMsg { Pid = Environment.ProcessId, Index = _host.Options.Index });
            o.FlushBlocking();
            Connected = true;
            ReadLoop(c);
            Connected = false;
            lock (_lock) { _conn = null; _out = null; }
            c.Close();
            lock (_loadLock) _load = default;
            _host.OnEngineLost();
        }
    }

    private void ReadLoop(FrameConnection c)
    {
        ReadError = null;
        var r = c.Run(this);
        if (r.End != FrameRunEnd.SocketError && ReadError is not null)
            Console.Error.WriteLine($"fastserve worker {_host.Options.Index}: {ReadError} from the engine; reconnecting");
    }

    // After each read: the tokens it delivered reach the clients, and what it queued for the engine leaves.
    protected override bool ReadDone()
    {
        _host.FlushTouched();
        Signal();
        return !_stopped;
    }

    protected override bool Handle(in FrameHeader h, ReadOnlySpan<byte> payload)
    {
        switch ((IpcType)h.Type)
        {
            case IpcType.EngineHello:
                if (!Ipc.Ipc.TryRead<EngineHelloMsg>(payload, out var hello, out _)) return false;
                Hello = hello;
                return true;
            case IpcType.Load:
                if (!Ipc.Ipc.TryRead<LoadMsg>(payload, out var load, out _)) return false;
                lock (_loadLock) _load = load;
                return true;
            case IpcType.Tokens:
            {
                var p = new PayloadReader(payload);
                if (!p.TryU32(out uint n) || n > 1 << 20 || !p.TryBytes((int)n * 4, out var ids)) return false;
                _host.OnTokens(h.Id, System.Runtime.InteropServices.MemoryMarshal.Cast<byte, int>(ids));
                return true;
            }
            case IpcType.TokenLogprobs:
            {
                if (payload.Length < 9 || payload.Length != 9 + 8 * payload[8]) return false;
                _host.OnTokens(h.Id, System.Runtime.InteropServices.MemoryMarshal.Cast<byte, int>(payload[..4]), payload[4..]);
                return true;
            }
            case IpcType.Final:
            {
                if (!Ipc.Ipc.TryRead<FinalMsg>(payload, out var f, out var tail)) return false;
                var p = new PayloadReader(tail);
                if (!p.TryStr16(out var code) || !p.TryStr16(out var message)) return false;
                _host.OnFinal(h.Id, f, code, message);
                return true;
            }
            default:
                return false;
        }
    }

    /// <summary>Age of the last load report in milliseconds.</summary>
    public int LoadAgeMs(in LoadMsg m) => m.TakenTicks == 0 ? 0 : (int)Math.Min(int.MaxValue, (Stopwatch.GetTimestamp() - m.TakenTicks) * 1000 / Stopwatch.Frequency);
}
