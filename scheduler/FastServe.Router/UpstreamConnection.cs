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
internal sealed class UpstreamConnection
{
    private const int MaxReceiveFrame = 64 << 20;

    private readonly RouterHost _router;
    private readonly RouterOptions _opt;
    private readonly int _index;
    private readonly TaskCompletionSource _stopped = new(TaskCreationOptions.RunContinuationsAsynchronously);

    // Guarded by _lock: the request map and the live socket with its send buffer.
    private readonly Lock _lock = new();
    private readonly Dictionary<ulong, RoutedRequest> _requests = [];
    private Socket? _socket;
    private OutBuffer? _out;
    private bool _up;
    private string? _abortWhy;

    private volatile bool _stopping;
    private int _count;              // _requests.Count, readable without the lock
    private long _lastReceive;
    private bool _reportedDown;      // a failure was logged and no success since (receive loop only)
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
            o = _out;
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
            if (!_up || _out is null) return false;
            o = _out;
            _requests.Add(rid, req);
            _count++;
            Endpoint.AddInFlight();
        }
        lock (o.Lock)
        {
            // A connection that broke meanwhile has handed the request on already; its buffer drops the frame.
            if (!o.Closed) FrameCopy.Write(o.Writer, FrameType.Request, req.HeaderFlags, rid, req.Payload);
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
            o = _out;
        }
        if (o is null) return;
        lock (o.Lock) if (!o.Closed) FrameWriter.Cancel(o.Writer, rid);
        o.Flush();
    }

    /// <summary>Starts sending what the current batch appended.</summary>
    public void Flush()
    {
        OutBuffer? o;
        lock (_lock) o = _out;
        o?.Flush();
    }

    /// <summary>Breaks the connection when nothing arrived for too long (the load subscription is its heartbeat).</summary>
    public void CheckAlive(long now)
    {
        bool up;
        lock (_lock) up = _up;
        if (up && now - Volatile.Read(ref _lastReceive) > RouterOptions.Ticks(_opt.UpstreamSilenceMs))
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
        Socket? s;
        lock (_lock)
        {
            _abortWhy ??= why;
            s = _socket;
        }
        if (s is null) return;
        try { s.Shutdown(SocketShutdown.Both); } catch (Exception e) when (e is SocketException or ObjectDisposedException) { }
        s.Dispose();
    }

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
        lock (_lock)
        {
            _socket = socket;
            _abortWhy = null;
        }
        if (_stopping) socket.Dispose();
        byte[] buf = ArrayPool<byte>.Shared.Rent(64 << 10);
        int have = 0;
        bool up = false;
        string why = "closed";
        try
        {
            HelloOk server;
            using (var cts = new CancellationTokenSource(_opt.ConnectTimeoutMs))
            {
                await socket.ConnectAsync(Endpoint.Spec.Host, Endpoint.Spec.Port, cts.Token).ConfigureAwait(false);
                var hello = new ArrayBufferWriter<byte>(128);
                FrameWriter.Hello(hello, Encoding.UTF8.GetBytes(_opt.Name));
                FrameWriter.LoadQuery(hello, (uint)_opt.LoadIntervalMs);
                var mem = hello.WrittenMemory;
                while (!mem.IsEmpty) mem = mem[await socket.SendAsync(mem, SocketFlags.None, cts.Token).ConfigureAwait(false)..];
                while (true)
                {
                    var r = FrameReader.TryRead(buf.AsSpan(0, have), MaxReceiveFrame, out var h, out var payload, out int consumed);
                    if (r == ReadResult.TooLarge) { why = "its first frame is over the size limit"; return false; }
                    if (r == ReadResult.Frame)
                    {
                        if (h.Type == FrameType.HelloOk && HelloOk.TryParse(payload, out server))
                        {
                            if (server.Major != Wire.Major) { why = $"it speaks protocol {server.Major}.{server.Minor}"; return false; }
                            buf.AsSpan(consumed, have - consumed).CopyTo(buf);
                            have -= consumed;
                            break;
                        }
                        why = h.Type == FrameType.Error && ErrorInfo.TryParse(payload, h.Flags, out var err)
                            ? $"it refused HELLO: {WireNames.Of(err.Status)}: {err.Message}"
                            : $"expected HELLO_OK, got frame type 0x{(byte)h.Type:X2}";
                        return false;
                    }
                    if (have >= Wire.HeaderSize && Wire.HeaderSize + h.Length > buf.Length) buf = Grow(buf, have, Wire.HeaderSize + h.Length);
                    int n = await socket.ReceiveAsync(buf.AsMemory(have), SocketFlags.None, cts.Token).ConfigureAwait(false);
                    if (n == 0) { why = "it closed the connection before HELLO_OK"; return false; }
                    have += n;
                }
            }

            long now = Stopwatch.GetTimestamp();
            MaxInFlight = Math.Max(1, server.MaxInFlight);
            MaxFrame = server.MaxFrame;
            lock (_lock)
            {
                if (_stopping) return false;
                _out = new OutBuffer(socket, _opt.UpstreamHardLimitBytes, w => Abort(w));
                _up = true;
            }
            Volatile.Write(ref _lastReceive, now);
            Endpoint.OnConnectionUp(server, now);
            Endpoint.SetCongested(false);
            up = true;
            if (_reportedDown || _index == 0) _router.Log($"endpoint {Endpoint.Address}: connected ({server.ServerName}, protocol {server.Major}.{server.Minor})");
            _reportedDown = false;

            while (true)
            {
                int used = Consume(buf.AsSpan(0, have), out int needed, out string? error);
                if (used < 0) { why = error ?? "protocol error"; return true; }
                if (used > 0)
                {
                    buf.AsSpan(used, have - used).CopyTo(buf);
                    have -= used;
                }
                if (needed > buf.Length) buf = Grow(buf, have, needed);
                FlushTouched();
                int n = await socket.ReceiveAsync(buf.AsMemory(have), SocketFlags.None).ConfigureAwait(false);
                if (n == 0) { why = "the replica closed the connection"; return true; }
                have += n;
                Volatile.Write(ref _lastReceive, Stopwatch.GetTimestamp());
            }
        }
        catch (OperationCanceledException)
        {
            why = $"no HELLO_OK within {_opt.ConnectTimeoutMs} ms";
            return up;
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
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
            ArrayPool<byte>.Shared.Return(buf);
            TearDown(socket, up, why);
        }
    }

    private static byte[] Grow(byte[] buf, int have, int need)
    {
        var bigger = ArrayPool<byte>.Shared.Rent(need);
        buf.AsSpan(0, have).CopyTo(bigger);
        ArrayPool<byte>.Shared.Return(buf);
        return bigger;
    }

    private void FlushTouched()
    {
        if (_touched.Count == 0) return;
        foreach (var s in _touched) s.Out.Flush();
        _touched.Clear();
    }

    // Bytes consumed, or -1 on a protocol error. `needed`: buffer size the next frame needs.
    private int Consume(ReadOnlySpan<byte> data, out int needed, out string? error)
    {
        int used = 0;
        needed = 0;
        error = null;
        long now = Stopwatch.GetTimestamp();
        while (true)
        {
            var r = FrameReader.TryRead(data[used..], MaxReceiveFrame, out var h, out var payload, out int consumed);
            if (r == ReadResult.NeedMore)
            {
                if (data.Length - used >= Wire.HeaderSize) needed = Wire.HeaderSize + h.Length;
                return used;
            }
            if (r == ReadResult.TooLarge)
            {
                error = $"the replica sent a frame of {(uint)h.Length} bytes";
                return -1;
            }
            used += consumed;
            switch (h.Type)
            {
                case FrameType.Delta:
                {
                    RoutedRequest? req;
                    lock (_lock) _requests.TryGetValue(h.Id, out req);
                    if (req is null) break;     // a request the router already gave up on (its client left)
                    // A whole request's output waits for its FINAL, so a lost replica can be replaced.
                    if (req.Whole && !req.Streamed && req.TryHold(h.Flags, payload, _router.Options.MaxHeldBytes)) break;
                    req.Streamed = true;
                    var s = req.Session;
                    if (s.IsClosed) break;
                    lock (s.Out.Lock)
                    {
                        req.PassHeld(s.Out.Writer);
                        FrameCopy.Write(s.Out.Writer, FrameType.Delta, h.Flags, req.ClientId, payload);
                    }
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
                    _router.OnFinal(this, req, h.Flags, payload, now, _touched);
                    break;
                }
                case FrameType.LoadReport:
                    if (LoadReport.TryParse(payload, out var report)) Endpoint.OnLoadReport(report, now);
                    else { error = "malformed LOAD_REPORT"; return -1; }
                    break;
                case FrameType.Error:
                    if (ErrorInfo.TryParse(payload, h.Flags, out var err))
                        _router.Log($"endpoint {Endpoint.Address}: ERROR {WireNames.Of(err.Status)}{(err.Fatal ? " (fatal)" : "")}: {err.Message}");
                    break;
                default:
                    break;      // PONG, DRAIN_OK, frame types of a later minor version: nothing to do
            }
        }
    }

    private void TearDown(Socket socket, bool up, string why)
    {
        RoutedRequest[] left;
        OutBuffer? o;
        bool draining = Endpoint.IsDraining;
        lock (_lock)
        {
            why = _abortWhy ?? why;
            _up = false;
            o = _out;
            _out = null;
            _socket = null;
            left = _requests.Count == 0 ? [] : [.. _requests.Values];
            _requests.Clear();
            _count = 0;
        }
        o?.Close();
        try { socket.Shutdown(SocketShutdown.Both); } catch (Exception e) when (e is SocketException or ObjectDisposedException) { }
        socket.Dispose();
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
