using System.Buffers;
using System.Diagnostics;
using System.Net.Sockets;
using System.Text;
using FastServe.Protocol;
using FastServe.Protocol.Net;

namespace FastServe.Router;

/// <summary>
/// One persistent connection from the router to an endpoint, speaking the protocol as a client: HELLO, a LOAD_QUERY
/// subscription, then requests multiplexed by router-assigned ids. When it breaks, the requests on it are handed to
/// the router (retried or finished) and it reconnects with backoff until stopped.
/// </summary>
internal sealed class UpstreamConnection : IFrameConsumer
{
    private const int MaxReceiveFrame = 64 << 20;

    private readonly RouterHost _router;
    private readonly RouterOptions _opt;
    private readonly int _index;
    private readonly TaskCompletionSource _stopped = new(TaskCreationOptions.RunContinuationsAsynchronously);

    // Guarded by _lock: the request map and the live connection (its send side is used only while _up).
    private readonly Lock _lock = new();
    private readonly Dictionary<ulong, RoutedRequest> _requests = [];
    private FrameConnection? _conn;
    private Socket? _connecting;             // the socket of the connection being set up (guarded by _lock)
    private bool _up;
    private string? _abortWhy;

    private volatile bool _stopping;
    private int _count;              // _requests.Count, readable without the lock
    private bool _reportedDown;      // a failure was logged and no success since (receive loop only)
    private string? _error;          // why the replica's stream was refused (receive loop only)
    // Sessions that got frames in the current receive batch: flushed once per batch (receive loop only).
    private readonly HashSet<DownstreamSession> _touched = [];
    private Task _loop = Task.CompletedTask;

    public UpstreamConnection(RouterHost router, Endpoint endpoint, int index)
    {
        _router = router;
        _opt = router.Options;
        Endpoint = endpoint;
        _index = index;
    }

    public Endpoint Endpoint { get; }

    /// <summary>The replica's per-connection in-flight limit and largest frame (from its HELLO_OK).</summary>
    public int MaxInFlight { get; private set; } = 1;
    public int MaxFrame { get; private set; } = Wire.DefaultMaxFrame;

    /// <summary>Requests on this connection now.</summary>
    public int InFlight => Volatile.Read(ref _count);

    public bool IsUp { get { lock (_lock) return _up; } }

    public void Start() => _loop = Task.Run(RunAsync);

    /// <summary>Up, below the replica's in-flight limit, and not backed up (unsent bytes under the soft limit).</summary>
    public bool IsUsable()
    {
        OutBuffer? o;
        lock (_lock)
        {
            if (!_up || _count >= MaxInFlight) return false;
            o = _conn?.Out;
        }
        if (o is null) return false;
        lock (o.Lock) return o.PendingUnsafe < _opt.UpstreamSoftLimitBytes;
    }

    /// <summary>
    /// Sends <paramref name="req"/> under router id <paramref name="rid"/>: registers it (so its frames find it) and
    /// appends the REQUEST frame. False when the connection is not up (nothing registered). The frame leaves with the
    /// caller's batch (<paramref name="touched"/>) or at once when there is none.
    /// </summary>
    public bool TrySend(RoutedRequest req, ulong rid, HashSet<UpstreamConnection>? touched)
    {
        OutBuffer o;
        lock (_lock)
        {
            if (!_up || _conn is null) return false;
            o = _conn.Out;
            _requests.Add(rid, req);
            _count++;
            Endpoint.AddInFlight();
        }
        lock (o.Lock)
        {
            // A connection that broke meanwhile has handed the request on already; its buffer drops the frame.
            if (!o.ClosedUnsafe) req.WriteRequest(o.Writer, rid);
        }
        if (touched is not null) touched.Add(this);
        else o.Flush();
        return true;
    }

    /// <summary>Sends CANCEL for router id <paramref name="rid"/> (replicas ignore ids they do not know).</summary>
    public void SendCancel(ulong rid)
    {
        OutBuffer? o;
        lock (_lock)
        {
            if (!_up) return;
            o = _conn?.Out;
        }
        if (o is null) return;
        lock (o.Lock) if (!o.ClosedUnsafe) FrameWriter.Cancel(o.Writer, rid);
        o.Flush();
    }

    /// <summary>Starts sending what the current batch appended.</summary>
    public void Flush()
    {
        OutBuffer? o;
        lock (_lock) o = _up ? _conn?.Out : null;
        o?.Flush();
    }

    /// <summary>Breaks the connection when nothing arrived for too long (the load subscription is its heartbeat).</summary>
    public void CheckAlive(long now)
    {
        FrameConnection? c;
        lock (_lock) c = _up ? _conn : null;
        if (c is not null && now - c.LastReceiveTicks > RouterOptions.Ticks(_opt.UpstreamSilenceMs))
            Abort($"nothing received for {_opt.UpstreamSilenceMs} ms");
    }

    /// <summary>Stops for good: no reconnect; the socket is closed, and requests still on it are handed on as lost.</summary>
    public Task StopAsync()
    {
        _stopping = true;
        _stopped.TrySetResult();
        Abort("stopped");
        return _loop;
    }

    private void Abort(string why)
    {
        FrameConnection? c;
        Socket? s;
        lock (_lock)
        {
            _abortWhy ??= why;
            c = _conn;
            s = _connecting;
        }
        Close(c, s);
    }

    private static void Close(FrameConnection? c, Socket? s)
    {
        if (c is not null) c.Close();
        else s?.Dispose();
    }

    private FrameConnection NewConnection(Socket socket, Stream? tls) =>
        new(socket, MaxReceiveFrame, _opt.UpstreamHardLimitBytes, w => Abort(w), receiveBytes: 64 << 10, stream: tls);

    private async Task RunAsync()
    {
        int backoff = _opt.ReconnectMinMs;
        while (!_stopping)
        {
            bool wasUp = await SessionAsync().ConfigureAwait(false);
            if (_stopping) break;
            if (wasUp) backoff = _opt.ReconnectMinMs;
            await Task.WhenAny(Task.Delay(backoff), _stopped.Task).ConfigureAwait(false);
            backoff = Math.Min(backoff * 2, _opt.ReconnectMaxMs);
        }
    }

    // One connection's life: connect, handshake, serve until it breaks. True if it got as far as HELLO_OK.
    private async Task<bool> SessionAsync()
    {
        var socket = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        // Without TLS the connection exists before connecting, so Abort can close a connect in progress; with TLS it
        // is made once the handshake is done, and Abort closes the socket meanwhile.
        FrameConnection? conn = _opt.UpstreamTls is null ? NewConnection(socket, null) : null;
        lock (_lock)
        {
            _conn = conn;
            _abortWhy = null;
            _connecting = socket;
        }
        if (_stopping) Close(conn, socket);
        bool up = false;
        string why = "closed";
        try
        {
            HelloOk server;
            using (var cts = new CancellationTokenSource(_opt.ConnectTimeoutMs))
            {
                await socket.ConnectAsync(Endpoint.Spec.Host, Endpoint.Spec.Port, cts.Token).ConfigureAwait(false);
                if (_opt.UpstreamTls is { } tls)
                {
                    System.Net.Security.SslStream ssl;
                    try { ssl = await tls.AuthenticateAsync(socket, Endpoint.Spec.Host, cts.Token).ConfigureAwait(false); }
                    catch (Protocol.Security.TlsFailedException e) { why = e.Message; return false; }
                    conn = NewConnection(socket, ssl);
                    lock (_lock) _conn = conn;
                    if (_stopping) conn.Close();
                }
                var hello = new ArrayBufferWriter<byte>(128);
                FrameWriter.Hello(hello, Encoding.UTF8.GetBytes(_opt.Name), apiKey: _opt.UpstreamApiKey is null ? default : Encoding.ASCII.GetBytes(_opt.UpstreamApiKey));
                FrameWriter.LoadQuery(hello, (uint)_opt.LoadIntervalMs);
                await conn!.SendDirectAsync(hello.WrittenMemory, cts.Token).ConfigureAwait(false);
                var reply = new HelloReader();
                var r = await conn!.RunAsync(reply, cts.Token).ConfigureAwait(false);
                if (r.End != FrameRunEnd.Stopped || reply.Why is not null)
                {
                    why = r.End switch
                    {
                        FrameRunEnd.TooLarge => "its first frame is over the size limit",
                        FrameRunEnd.PeerClosed => "it closed the connection before HELLO_OK",
                        FrameRunEnd.SocketError => r.Message,
                        _ => reply.Why!,
                    };
                    return false;
                }
                server = reply.Server;
            }

            long now = Stopwatch.GetTimestamp();
            MaxInFlight = Math.Max(1, server.MaxInFlight);
            MaxFrame = server.MaxFrame;
            lock (_lock)
            {
                if (_stopping) return false;
                _up = true;
            }
            Endpoint.OnConnectionUp(server, now);
            Endpoint.SetCongested(false);
            up = true;
            if (_reportedDown || _index == 0) _router.Log($"endpoint {Endpoint.Address}: connected ({server.ServerName}, protocol {server.Major}.{server.Minor})");
            _reportedDown = false;

            _error = null;
            var end = await conn!.RunAsync(this).ConfigureAwait(false);
            why = end.End switch
            {
                FrameRunEnd.PeerClosed => "the replica closed the connection",
                FrameRunEnd.SocketError => end.Message,
                _ => _error ?? "protocol error",
            };
            return true;
        }
        catch (OperationCanceledException)
        {
            why = $"no HELLO_OK within {_opt.ConnectTimeoutMs} ms";
            return up;
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException or IOException)
        {
            why = e.Message;
            return up;
        }
        catch (Exception e)
        {
            // A bug in dispatch: the connection goes, the router stays up.
            why = $"internal error: {e.GetType().Name}: {e.Message}";
            return up;
        }
        finally
        {
            FlushTouched();
            TearDown(conn, socket, up, why);
        }
    }

    // The handshake's consumer: the replica's first frame, HELLO_OK or a refusal.
    private sealed class HelloReader : IFrameConsumer
    {
        public HelloOk Server;
        public string? Why;

        public bool OnFrame(in FrameHeader h, ReadOnlySpan<byte> payload)
        {
            if (h.Type == FrameType.HelloOk && HelloOk.TryParse(payload, out Server))
            {
                if (Server.Major != Wire.Major) Why = $"it speaks protocol {Server.Major}.{Server.Minor}";
                return false;
            }
            Why = h.Type == FrameType.Error && ErrorInfo.TryParse(payload, h.Flags, out var err)
                ? $"it refused HELLO: {WireNames.Of(err.Status)}: {err.Message}"
                : $"expected HELLO_OK, got frame type 0x{(byte)h.Type:X2}";
            return false;
        }

        public void OnTooLarge(in FrameHeader h) { }

        public bool OnReadDone() => true;
    }

    private void FlushTouched()
    {
        if (_touched.Count == 0) return;
        foreach (var s in _touched) s.Out.Flush();
        _touched.Clear();
    }

    void IFrameConsumer.OnTooLarge(in FrameHeader h) => _error = $"the replica sent a frame of {(uint)h.Length} bytes";

    bool IFrameConsumer.OnReadDone()
    {
        FlushTouched();
        return true;
    }

    // The replica's frames once up; false on a protocol error (`_error` says which).
    bool IFrameConsumer.OnFrame(in FrameHeader h, ReadOnlySpan<byte> payload)
    {
        switch (h.Type)
        {
            case FrameType.Delta:
            {
                RoutedRequest? req;
                lock (_lock) _requests.TryGetValue(h.Id, out req);
                if (req is null) break;     // a request the router already gave up on (its client left)
                // A mirror's output is for its comparison only.
                if (req.IsShadow) { req.Pair?.Append(true, payload); break; }
                req.Pair?.Append(false, payload);
                // A whole request's output waits for its FINAL, so a lost replica can be replaced; a tier's cheap
                // attempt's, so the strong answer can replace it.
                if (req.Holds && !req.Streamed && req.TryHold(h.Flags, payload, _router.Options.MaxHeldBytes)) break;
                req.Streamed = true;
                var s = req.Session;
                if (s.IsClosed) break;
                lock (s.Out.Lock)
                {
                    req.PassHeld(s.Out.Writer, record: true);
                    FrameCopy.Write(s.Out.Writer, FrameType.Delta, h.Flags, req.ClientId, payload);
                }
                // What the client has is where a resume on another replica starts, should this one be lost.
                req.RecordDelivered(payload);
                _touched.Add(s);
                break;
            }
            case FrameType.Final:
            {
                RoutedRequest? req;
                lock (_lock)
                {
                    if (_requests.Remove(h.Id, out req)) _count--;
                }
                if (req is null) break;
                Endpoint.RemoveInFlight();
                _router.OnFinal(this, req, h.Flags, payload, _conn!.LastReceiveTicks, _touched);
                break;
            }
            case FrameType.LoadReport:
                if (LoadReport.TryParse(payload, out var report)) Endpoint.OnLoadReport(report, _conn!.LastReceiveTicks);
                else { _error = "malformed LOAD_REPORT"; return false; }
                break;
            case FrameType.Error:
                if (ErrorInfo.TryParse(payload, h.Flags, out var err))
                    _router.Log($"endpoint {Endpoint.Address}: ERROR {WireNames.Of(err.Status)}{(err.Fatal ? " (fatal)" : "")}: {err.Message}");
                break;
            default:
                break;      // PONG, DRAIN_OK, frame types of a later minor version: nothing to do
        }
        return true;
    }

    private void TearDown(FrameConnection? conn, Socket socket, bool up, string why)
    {
        RoutedRequest[] left;
        bool draining = Endpoint.IsDraining;
        lock (_lock)
        {
            why = _abortWhy ?? why;
            _up = false;
            _conn = null;
            _connecting = null;
            left = _requests.Count == 0 ? [] : [.. _requests.Values];
            _requests.Clear();
            _count = 0;
        }
        Close(conn, socket);
        long now = Stopwatch.GetTimestamp();
        if (up) Endpoint.OnConnectionDown(now);
        foreach (var _ in left) Endpoint.RemoveInFlight();
        if (!_stopping)
        {
            // A draining replica closing an idle connection is its normal exit, not a fault.
            if (!(up && draining && left.Length == 0)) _router.Fleet.RecordError(Endpoint, now);
            if (up || !_reportedDown)
            {
                _router.Log(up ? $"endpoint {Endpoint.Address}: connection lost ({why}){(left.Length > 0 ? $"; {left.Length} request(s) on it" : "")}"
                               : $"endpoint {Endpoint.Address}: cannot connect ({why}); retrying with backoff");
                _reportedDown = true;
            }
        }
        if (left.Length > 0) _router.OnUpstreamLost(this, left, now);
    }
}
