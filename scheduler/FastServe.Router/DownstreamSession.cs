using System.Buffers;
using System.Buffers.Binary;
using System.Diagnostics;
using System.Net.Sockets;
using FastServe.Protocol;
using FastServe.Protocol.Net;

namespace FastServe.Router;

/// <summary>
/// One client connection to the router. The receive loop parses frames in place from a pooled buffer (a partial
/// frame stays for the next read), answers HELLO, PING and LOAD_QUERY itself, checks what a router can check of a
/// REQUEST (id, duplicates, the per-connection limit, frame size) and hands it to the router, which forwards it
/// upstream; CANCEL goes to the replica running the request. Requests forwarded in one batch leave in one send per
/// upstream connection. Closing (by either side) cancels the client's requests upstream.
/// </summary>
internal sealed class DownstreamSession
{
    private readonly RouterHost _router;
    private readonly RouterOptions _opt;
    private readonly Socket _socket;
    private readonly Dictionary<ulong, RoutedRequest> _inflight = [];   // guarded by itself
    private readonly HashSet<UpstreamConnection> _touched = [];         // receive loop only
    private readonly long _created;
    private int _closeOnce;
    private volatile bool _closed, _hello;
    private long _lastActivity, _partialSince;
    private long _loadIntervalTicks, _nextLoadAt;                       // 0 = not subscribed

    public DownstreamSession(RouterHost router, Socket socket, long id)
    {
        _router = router;
        _opt = router.Options;
        _socket = socket;
        Id = id;
        _created = _lastActivity = Stopwatch.GetTimestamp();
        Out = new OutBuffer(socket, _opt.ClientSendLimitBytes, why => Close(why));
    }

    public long Id { get; }
    public OutBuffer Out { get; }
    public bool IsClosed => _closed;

    public int InFlight { get { lock (_inflight) return _inflight.Count; } }

    public void Start() => _ = ReceiveLoopAsync();

    /// <summary>The request's FINAL is being written: its id is free again.</summary>
    public void Finished(ulong clientId)
    {
        lock (_inflight) _inflight.Remove(clientId);
    }

    private async Task ReceiveLoopAsync()
    {
        byte[] buf = ArrayPool<byte>.Shared.Rent(16 << 10);
        int have = 0;
        try
        {
            while (!_closed)
            {
                int n = await _socket.ReceiveAsync(buf.AsMemory(have), SocketFlags.None).ConfigureAwait(false);
                if (n == 0) { Close("peer closed"); return; }
                have += n;
                long now = Stopwatch.GetTimestamp();
                Volatile.Write(ref _lastActivity, now);
                int used = Consume(buf.AsSpan(0, have), now, out int needed);
                foreach (var u in _touched) u.Flush();
                _touched.Clear();
                if (used < 0) return;   // fatal: already answered and closing
                if (used > 0)
                {
                    buf.AsSpan(used, have - used).CopyTo(buf);
                    have -= used;
                }
                long since = Volatile.Read(ref _partialSince);
                Volatile.Write(ref _partialSince, have == 0 ? 0 : used > 0 || since == 0 ? now : since);
                if (needed > buf.Length)
                {
                    var bigger = ArrayPool<byte>.Shared.Rent(needed);
                    buf.AsSpan(0, have).CopyTo(bigger);
                    ArrayPool<byte>.Shared.Return(buf);
                    buf = bigger;
                }
                Out.Flush();
            }
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
            Close(e.Message);
        }
        catch (Exception e)
        {
            _router.Log($"client session {Id}: internal error: {e.GetType().Name}: {e.Message}");
            Close("internal error");
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buf);
        }
    }

    // Bytes consumed, or -1 after a fatal error. `needed`: size of the buffer the next frame needs.
    private int Consume(ReadOnlySpan<byte> data, long now, out int needed)
    {
        int used = 0;
        needed = 0;
        while (true)
        {
            var r = FrameReader.TryRead(data[used..], _opt.MaxFrame, out var h, out var payload, out int consumed);
            if (r == ReadResult.NeedMore)
            {
                if (data.Length - used >= Wire.HeaderSize) needed = Wire.HeaderSize + h.Length;
                return used;
            }
            if (r == ReadResult.TooLarge)
            {
                Fatal(WireStatus.TooLarge, $"frame of {(uint)h.Length} bytes is over the {_opt.MaxFrame}-byte limit");
                return -1;
            }
            used += consumed;
            if (!_hello)
            {
                if (!Hello(h, payload)) return -1;
                continue;
            }
            switch (h.Type)
            {
                case FrameType.Request: Request(h, payload, now); break;
                case FrameType.Cancel: Cancel(h.Id); break;
                case FrameType.Ping:
                    if (payload.Length > Wire.MaxPingBytes) Error(WireStatus.BadRequest, $"PING payload over {Wire.MaxPingBytes} bytes");
                    else lock (Out.Lock) FrameWriter.Ping(Out.Writer, payload, pong: true);
                    break;
                case FrameType.LoadQuery: LoadQuery(h, payload, now); break;
                case FrameType.Drain: Error(WireStatus.Unauthorized, "a router takes no DRAIN frame; send it SIGTERM, or drain the replicas themselves"); break;
                case FrameType.Hello: Error(WireStatus.BadRequest, "HELLO was already received"); break;
                default: Error(WireStatus.BadRequest, $"unknown or server-only frame type 0x{(byte)h.Type:X2}"); break;
            }
        }
    }

    private bool Hello(FrameHeader h, ReadOnlySpan<byte> payload)
    {
        if (h.Type != FrameType.Hello || !HelloView.TryParse(payload, out var v) || v.Magic != Wire.Magic)
        {
            Fatal(WireStatus.BadRequest, "expected HELLO with magic FSRV as the first frame");
            return false;
        }
        if (v.Major != Wire.Major)
        {
            Fatal(WireStatus.UnsupportedVersion, $"protocol {v.Major}.{v.Minor} is not supported; this router speaks {Wire.Major}.{Wire.Minor}");
            return false;
        }
        _hello = true;
        var fleet = _router.Fleet;
        lock (Out.Lock)
            FrameWriter.HelloOk(Out.Writer, new HelloOk(Wire.Major, Wire.Minor, _opt.MaxFrame, fleet.MaxPromptTokens(), _opt.MaxInFlight,
                _opt.IdleTimeoutMs, fleet.ContextLength(), _opt.Name));
        return true;
    }

    private void Request(FrameHeader h, ReadOnlySpan<byte> payload, long now)
    {
        ulong id = h.Id;
        if (id == 0) { Error(WireStatus.BadRequest, "REQUEST needs a non-zero request id"); return; }
        lock (_inflight)
        {
            if (_inflight.ContainsKey(id)) { Error(WireStatus.BadRequest, $"request id {id} is already in flight on this connection"); return; }
            if (_inflight.Count >= _opt.MaxInFlight)
            {
                Reject(id, WireStatus.TooManyRequests, "connection.too_many_requests", $"{_opt.MaxInFlight} requests are already in flight on this connection", 100);
                return;
            }
        }
        // The replica checks the rest; the router only needs the fixed part (the deadline lives there).
        if (payload.Length < Wire.RequestFixedSize) { Reject(id, WireStatus.BadRequest, "frame.truncated", "malformed REQUEST payload"); return; }
        if (_router.IsDraining) { Reject(id, WireStatus.Draining, "router.draining", "the router is draining; send the request elsewhere", 0); return; }
        var req = new RoutedRequest(this, id, h.Flags, payload, now, _opt.MaxAttempts);
        lock (_inflight) _inflight[id] = req;
        _router.Admit(req, now, _touched);
    }

    private void Cancel(ulong id)
    {
        RoutedRequest? req;
        lock (_inflight) _inflight.TryGetValue(id, out req);
        if (req is not null) RouterHost.CancelUpstream(req);
    }

    private void LoadQuery(FrameHeader h, ReadOnlySpan<byte> payload, long now)
    {
        if (payload.Length < 4) { Error(WireStatus.BadRequest, "LOAD_QUERY needs a u32 interval"); return; }
        uint interval = BinaryPrimitives.ReadUInt32LittleEndian(payload);
        if ((h.Flags & 1) != 0) { Volatile.Write(ref _loadIntervalTicks, 0); return; }
        if (interval == 0) { lock (Out.Lock) FrameWriter.LoadReport(Out.Writer, _router.CurrentLoad(now)); return; }
        long ticks = Math.Max(10, interval) * Stopwatch.Frequency / 1000;
        Volatile.Write(ref _nextLoadAt, now);
        Volatile.Write(ref _loadIntervalTicks, ticks);
    }

    /// <summary>A FINAL for a request refused before it was forwarded.</summary>
    private void Reject(ulong id, WireStatus status, string detail, string message, uint retryAfterMs = 0)
    {
        var f = new FinalInfo { Status = status, Retriable = WireNames.IsRetriable(status), RetryAfterMs = retryAfterMs };
        lock (Out.Lock) FrameWriter.Final(Out.Writer, id, f, detail, message);
        _router.CountRejected();
    }

    private void Error(WireStatus status, string message)
    {
        lock (Out.Lock) FrameWriter.Error(Out.Writer, status, fatal: false, 0, message);
    }

    private void Fatal(WireStatus status, string message)
    {
        lock (Out.Lock) FrameWriter.Error(Out.Writer, status, fatal: true, 0, message);
        _closed = true;
        Out.FlushThen(() => Close(message));
    }

    /// <summary>Every 10 ms from the router's timer: load subscription; timeouts when <paramref name="checkTimeouts"/>.</summary>
    public void OnTimer(long now, bool checkTimeouts)
    {
        if (_closed) return;
        long interval = Volatile.Read(ref _loadIntervalTicks);
        if (interval > 0 && now >= Volatile.Read(ref _nextLoadAt))
        {
            Volatile.Write(ref _nextLoadAt, now + interval);
            var report = _router.CurrentLoad(now);
            lock (Out.Lock) FrameWriter.LoadReport(Out.Writer, report);
            Out.Flush();
        }
        if (!checkTimeouts) return;
        double f = Stopwatch.Frequency;
        long partial = Volatile.Read(ref _partialSince);
        if (!_hello && (now - _created) / f * 1000 > _opt.HelloTimeoutMs) Close("no HELLO in time");
        else if (partial != 0 && (now - partial) / f * 1000 > _opt.FrameTimeoutMs)
            Fatal(WireStatus.BadRequest, $"a frame did not complete within {_opt.FrameTimeoutMs} ms");
        else if (InFlight == 0 && (now - Volatile.Read(ref _lastActivity)) / f * 1000 > _opt.IdleTimeoutMs) Close("idle");
    }

    /// <summary>Closes the connection; its requests still running are cancelled upstream (their FINALs are dropped).</summary>
    public void Close(string why)
    {
        if (Interlocked.Exchange(ref _closeOnce, 1) == 1) return;
        RoutedRequest[] left;
        lock (_inflight)
        {
            _closed = true;
            left = _inflight.Count == 0 ? [] : [.. _inflight.Values];
        }
        Out.Close();
        try { _socket.Shutdown(SocketShutdown.Both); } catch (Exception e) when (e is SocketException or ObjectDisposedException) { }
        _socket.Dispose();
        foreach (var r in left) RouterHost.CancelUpstream(r);
        _router.OnSessionClosed(this);
    }
}
