using System.Diagnostics;
using System.Net.Sockets;
using FastServe.Protocol.Security;

namespace FastServe.Protocol.Net;

/// <summary>
/// What a <see cref="FrameSession{TRequest}"/> is allowed and how it names itself: built once per host (a worker, a
/// router) from that host's own options and shared, read-only, by all of its sessions. Times are Stopwatch ticks.
/// </summary>
/// <param name="Role">How this end names itself in the version refusal: <c>"this {Role} speaks 1.0"</c>.</param>
/// <param name="MaxFrame">The largest payload a frame may announce; a larger length is fatal (<c>too_large</c>), since
/// the stream cannot be followed past a frame that is not read.</param>
/// <param name="MaxInFlight">Requests one connection may have in flight; the next is refused with a FINAL
/// <c>too_many_requests</c> (detail <c>connection.too_many_requests</c>, retry after 100 ms).</param>
/// <param name="SendLimitBytes">Unsent bytes after which the peer counts as not reading and the connection closes
/// (<see cref="OutBuffer"/>'s limit).</param>
/// <param name="HelloTimeoutTicks">From accept to a valid HELLO; past it the connection closes without a word.</param>
/// <param name="FrameTimeoutTicks">How long a partial frame may take to complete, counted from when its first bytes
/// arrived (or from the last read that completed a frame); past it a fatal <c>bad_request</c> with
/// <paramref name="FrameTimeoutMessage"/> closes the connection.</param>
/// <param name="FrameTimeoutMessage">The message of that fatal error (each host states its limit in its own unit).</param>
/// <param name="IdleTimeoutTicks">Without a read for this long, a connection with nothing in flight closes.</param>
/// <param name="Keys">The API keys a HELLO must carry one of (protocol 1.3), null when none are configured: then any
/// HELLO passes, with or without a key.</param>
internal sealed record FrameSessionOptions(string Role, int MaxFrame, int MaxInFlight, long SendLimitBytes,
    long HelloTimeoutTicks, long FrameTimeoutTicks, string FrameTimeoutMessage, long IdleTimeoutTicks, ApiKeyStore? Keys = null)
{
    /// <summary>Stopwatch ticks in <paramref name="t"/>, exact, saturating instead of overflowing.</summary>
    public static long Ticks(TimeSpan t) =>
        (long)Int128.Clamp((Int128)t.Ticks * Stopwatch.Frequency / TimeSpan.TicksPerSecond, long.MinValue, long.MaxValue);
}

/// <summary>
/// The accepting side of one client connection speaking the replica protocol (docs/protocol.md): what a worker and a
/// router do alike for the connections their clients open. The session owns the socket's receive loop, the receive
/// buffer, frame parsing, the HELLO gate (version, and the API key when the host has keys: docs/security.md), PING, LOAD_QUERY (one-off and subscribed reports), the connection's
/// in-flight map with its id and limit checks, error and fatal frames, the hello, partial-frame and idle timeouts,
/// and closing. A derived class handles only what its end does differently: a REQUEST that passed the connection's
/// checks, CANCEL's and close's effect on a request, DRAIN, the HELLO_OK it answers, its load, and its metrics.
/// </summary>
/// <remarks>
/// <para>
/// Receive path: a <see cref="FrameConnection"/> (pooled buffer, frames parsed in place, partial frames kept); this
/// session is its consumer, so handlers see zero-copy slices valid only during the call. After each read:
/// <see cref="OnFramesConsumed"/>, then (unless a frame was fatal) one <see cref="OutBuffer.Flush"/> for every reply
/// the read produced, then <see cref="OnRepliesFlushed"/>. A well-formed stream allocates nothing and throws nothing
/// on this path but what the handlers themselves do (like Garnet's network handlers).
/// </para>
/// <para>
/// Errors: input that can be answered gets a non-fatal ERROR (0 as its request id) or, for a request, a FINAL;
/// only a stream that can no longer be trusted — an announced length over <see cref="FrameSessionOptions.MaxFrame"/>,
/// a first frame that is not a valid HELLO, a major version this end does not speak, a frame that does not complete
/// in time — gets a fatal ERROR, after which the session reads no more and closes once the frame has left.
/// </para>
/// <para>
/// Threads: the receive loop runs the frame handlers one at a time. <see cref="OnTimer"/> (the host's timer thread),
/// <see cref="Finished"/> (whoever writes a FINAL) and <see cref="Close"/> (anyone) run beside it: the in-flight map
/// is guarded by itself, frames are appended under <see cref="OutBuffer.Lock"/>, and the timestamps are volatile.
/// </para>
/// <para>Use: construct, register with the host, <see cref="Start"/>; the host calls <see cref="OnTimer"/> every
/// 10 ms and drops the session when <see cref="OnClosed"/> says so.</para>
/// </remarks>
/// <typeparam name="TRequest">What the host keeps for a request it accepted, keyed by the client's id.</typeparam>
internal abstract class FrameSession<TRequest> : IFrameConsumer where TRequest : class
{
    private readonly FrameConnection _conn;
    private readonly FrameSessionOptions _opt;
    private readonly Dictionary<ulong, TRequest> _inflight = [];     // guarded by itself
    private readonly long _created;
    private readonly bool _trusted;
    private KeyUsage? _usage;                                         // the authenticated key's counters; receive loop only
    private int _closeOnce;
    private volatile bool _closed, _hello, _fatal;                    // _fatal: a fatal ERROR was queued (stop reading)
    private long _loadIntervalTicks, _nextLoadAt;                     // 0 = not subscribed

    /// <summary>A session over an accepted, connected <paramref name="socket"/>; nothing is read until
    /// <see cref="Start"/>. Virtual members are not called from here.</summary>
    /// <param name="socket">The accepted socket (the session owns it).</param>
    /// <param name="id">The host's number for this connection.</param>
    /// <param name="options">The host's session settings.</param>
    /// <param name="stream">For a TLS listener: the stream the host's handshake authenticated over
    /// <paramref name="socket"/>; null for plaintext.</param>
    /// <param name="trusted">A connection the process opened to itself (the HTTP front door's in-process link): its
    /// HELLO skips the key check, since the front door checked the caller's key already.</param>
    protected FrameSession(Socket socket, long id, FrameSessionOptions options, Stream? stream = null, bool trusted = false)
    {
        _opt = options;
        Id = id;
        _trusted = trusted;
        _created = Stopwatch.GetTimestamp();
        _conn = new FrameConnection(socket, options.MaxFrame, options.SendLimitBytes, why => Close(why), stream: stream);
        Out = _conn.Out;
    }

    /// <summary>The name of the API key this connection's HELLO carried; null before HELLO, and when no keys are
    /// configured or the session is trusted.</summary>
    public string? KeyName => _usage?.Name;

    /// <summary>The host's number for this connection.</summary>
    public long Id { get; }

    /// <summary>The send side: append frames under its lock, then flush.</summary>
    public OutBuffer Out { get; }

    /// <summary>Closed, or closing after a fatal error: frames for it can be dropped.</summary>
    public bool IsClosed => _closed;

    /// <summary>Requests accepted on this connection whose FINAL has not been written.</summary>
    public int InFlight { get { lock (_inflight) return _inflight.Count; } }

    /// <summary>Starts the receive loop (it runs until the connection closes).</summary>
    public void Start() => _ = ReceiveLoopAsync();

    /// <summary>The request's FINAL is being written (or it was never handed on): its id is free again.</summary>
    public void Finished(ulong clientId)
    {
        lock (_inflight) _inflight.Remove(clientId);
    }

    // ---- what a derived class supplies -------------------------------------------------------------------------

    /// <summary>The HELLO_OK to answer a valid HELLO with.</summary>
    protected abstract HelloOk HelloReply();

    /// <summary>The load report for LOAD_QUERY, asked once or on the subscription's schedule.</summary>
    protected abstract LoadReport CurrentLoad(long now);

    /// <summary>
    /// A REQUEST that passed the connection's checks: a non-zero id not in flight here, and room under
    /// <see cref="FrameSessionOptions.MaxInFlight"/>. The handler validates the rest, registers it with
    /// <see cref="AddInFlight"/> and hands it on, or answers it with <see cref="Reject"/> or <see cref="Error"/>.
    /// <paramref name="payload"/> is valid only during the call; <paramref name="now"/> is when the read completed.
    /// </summary>
    protected abstract void OnRequest(in FrameHeader header, ReadOnlySpan<byte> payload, long now);

    /// <summary>Stops a request in flight here: for its CANCEL frame, and for each one left when the connection
    /// closes. May run more than once for a request whose FINAL is on its way.</summary>
    protected abstract void CancelRequest(TRequest request);

    /// <summary>A DRAIN frame (after HELLO).</summary>
    protected abstract void OnDrain(ReadOnlySpan<byte> payload);

    /// <summary>A request was refused with a FINAL by <see cref="Reject"/>: count it.</summary>
    protected abstract void OnRejected(WireStatus status);

    /// <summary>After <see cref="Close"/> has closed the socket and cancelled what was left: tell the host.</summary>
    protected abstract void OnClosed();

    /// <summary>After every read's frames were handled, fatal or not, before the replies are flushed: flush what
    /// the frames queued elsewhere.</summary>
    protected virtual void OnFramesConsumed() { }

    /// <summary>An ADMIN frame (protocol 1.2). By default a non-fatal <c>bad_request</c>: only a router takes them.</summary>
    protected virtual void OnAdmin(ReadOnlySpan<byte> payload) =>
        Error(WireStatus.BadRequest, $"this {_opt.Role} takes no ADMIN frame");

    /// <summary>A HELLO was refused for its API key (<paramref name="missing"/>: it carried none), before the fatal
    /// ERROR goes out; the key store has counted it already. By default nothing more.</summary>
    protected virtual void OnUnauthorized(bool missing) { }

    /// <summary>After a read's replies were flushed (not after a fatal frame).</summary>
    protected virtual void OnRepliesFlushed() { }

    /// <summary>
    /// An exception other than a socket's escaped a handler (a bug): report it. The session then closes, so the
    /// client sees its connection end (and its requests cancelled) instead of a connection nobody reads any more.
    /// </summary>
    protected virtual void OnInternalError(Exception e) { }

    // ---- helpers for handlers ----------------------------------------------------------------------------------

    /// <summary>Registers an accepted request under the client's id (free it with <see cref="Finished"/>).</summary>
    protected void AddInFlight(ulong clientId, TRequest request)
    {
        lock (_inflight) _inflight[clientId] = request;
    }

    /// <summary>A request refused before it was handed on: its FINAL with <paramref name="status"/>, then
    /// <see cref="OnRejected"/>.</summary>
    protected void Reject(ulong id, WireStatus status, string detail, string message, uint retryAfterMs = 0)
    {
        var f = new FinalInfo { Status = status, Retriable = WireNames.IsRetriable(status), RetryAfterMs = retryAfterMs };
        lock (Out.Lock) FrameWriter.Final(Out.Writer, id, f, detail, message);
        OnRejected(status);
    }

    /// <summary>A non-fatal ERROR: the connection carries on.</summary>
    protected void Error(WireStatus status, string message)
    {
        lock (Out.Lock) FrameWriter.Error(Out.Writer, status, fatal: false, 0, message);
    }

    /// <summary>A fatal ERROR: nothing more is read, and the connection closes once the frame has left.</summary>
    protected void Fatal(WireStatus status, string message)
    {
        lock (Out.Lock) FrameWriter.Error(Out.Writer, status, fatal: true, 0, message);
        _fatal = true;
        _closed = true;
        Out.FlushThen(() => Close(message));
    }

    // ---- receive path ------------------------------------------------------------------------------------------

    private async Task ReceiveLoopAsync()
    {
        FrameRunResult r;
        try
        {
            r = await _conn.RunAsync(this).ConfigureAwait(false);
        }
        catch (Exception e)
        {
            OnInternalError(e);
            Close("internal error");
            return;
        }
        // Stopped: a fatal frame is on its way out, and sending it closes the session.
        if (r.End == FrameRunEnd.PeerClosed) Close("peer closed");
        else if (r.End == FrameRunEnd.SocketError) Close(r.Message);
    }

    void IFrameConsumer.OnTooLarge(in FrameHeader h) =>
        Fatal(WireStatus.TooLarge, $"frame of {(uint)h.Length} bytes is over the {_opt.MaxFrame}-byte limit");

    bool IFrameConsumer.OnReadDone()
    {
        OnFramesConsumed();
        if (_fatal) return false;
        Out.Flush();
        OnRepliesFlushed();
        return !_closed;
    }

    bool IFrameConsumer.OnFrame(in FrameHeader h, ReadOnlySpan<byte> payload)
    {
        if (!_hello) return Hello(h, payload);
        switch (h.Type)
        {
            case FrameType.Request: Request(h, payload, _conn.LastReceiveTicks); break;
            case FrameType.Cancel: Cancel(h.Id); break;
            case FrameType.Ping:
                if (payload.Length > Wire.MaxPingBytes) Error(WireStatus.BadRequest, $"PING payload over {Wire.MaxPingBytes} bytes");
                else lock (Out.Lock) FrameWriter.Ping(Out.Writer, payload, pong: true);
                break;
            case FrameType.LoadQuery: LoadQuery(h, payload, _conn.LastReceiveTicks); break;
            case FrameType.Drain: OnDrain(payload); break;
            case FrameType.Admin: OnAdmin(payload); break;
            case FrameType.Hello: Error(WireStatus.BadRequest, "HELLO was already received"); break;
            default: Error(WireStatus.BadRequest, $"unknown or server-only frame type 0x{(byte)h.Type:X2}"); break;
        }
        return true;
    }

    private bool Hello(in FrameHeader h, ReadOnlySpan<byte> payload)
    {
        if (h.Type != FrameType.Hello || !HelloView.TryParse(payload, out var v) || v.Magic != Wire.Magic)
        {
            Fatal(WireStatus.BadRequest, "expected HELLO with magic FSRV as the first frame");
            return false;
        }
        if (v.Major != Wire.Major)
        {
            Fatal(WireStatus.UnsupportedVersion, $"protocol {v.Major}.{v.Minor} is not supported; this {_opt.Role} speaks {Wire.Major}.{Wire.Minor}");
            return false;
        }
        if (_opt.Keys is { } keys && !_trusted)
        {
            // One refusal for both cases on the wire (the status); the message's code tells a client which to fix.
            if (!keys.TryAuthenticate(v.ApiKey, out string name))
            {
                bool missing = v.ApiKey.IsEmpty;
                keys.CountRefusal(missing);
                OnUnauthorized(missing);
                Fatal(WireStatus.Unauthorized, missing
                    ? $"auth.key_required: this {_opt.Role} requires an API key in HELLO (protocol 1.3)"
                    : "auth.invalid_key: the API key is not valid");
                return false;
            }
            _usage = keys.CountConnection(name);
        }
        _hello = true;
        var ok = HelloReply();
        lock (Out.Lock) FrameWriter.HelloOk(Out.Writer, ok);
        return true;
    }

    private void Request(in FrameHeader h, ReadOnlySpan<byte> payload, long now)
    {
        ulong id = h.Id;
        _usage?.CountRequest();
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
        OnRequest(h, payload, now);
    }

    private void Cancel(ulong id)
    {
        TRequest? r;
        lock (_inflight) _inflight.TryGetValue(id, out r);
        if (r is not null) CancelRequest(r);
    }

    private void LoadQuery(in FrameHeader h, ReadOnlySpan<byte> payload, long now)
    {
        var p = new PayloadReader(payload);
        if (!p.TryU32(out uint interval)) { Error(WireStatus.BadRequest, "LOAD_QUERY needs a u32 interval"); return; }
        if ((h.Flags & 1) != 0) { Volatile.Write(ref _loadIntervalTicks, 0); return; }
        if (interval == 0)
        {
            var report = CurrentLoad(now);
            lock (Out.Lock) FrameWriter.LoadReport(Out.Writer, report);
            return;
        }
        long ticks = Math.Max(10, interval) * Stopwatch.Frequency / 1000;
        Volatile.Write(ref _nextLoadAt, now);
        Volatile.Write(ref _loadIntervalTicks, ticks);
    }

    // ---- timer and close ---------------------------------------------------------------------------------------

    /// <summary>
    /// Every 10 ms from the host's timer: a subscribed load report when one is due; the timeouts when
    /// <paramref name="checkTimeouts"/> (no HELLO in time, a partial frame stuck, idle with nothing in flight).
    /// </summary>
    public void OnTimer(long now, bool checkTimeouts)
    {
        if (_closed) return;
        long interval = Volatile.Read(ref _loadIntervalTicks);
        if (interval > 0 && now >= Volatile.Read(ref _nextLoadAt))
        {
            Volatile.Write(ref _nextLoadAt, now + interval);
            var report = CurrentLoad(now);
            lock (Out.Lock) FrameWriter.LoadReport(Out.Writer, report);
            Out.Flush();
        }
        if (!checkTimeouts) return;
        long partial = _conn.PartialSinceTicks;
        if (!_hello && now - _created > _opt.HelloTimeoutTicks) Close("no HELLO in time");
        else if (partial != 0 && now - partial > _opt.FrameTimeoutTicks) Fatal(WireStatus.BadRequest, _opt.FrameTimeoutMessage);
        else if (InFlight == 0 && now - _conn.LastReceiveTicks > _opt.IdleTimeoutTicks) Close("idle");
    }

    /// <summary>
    /// Closes the connection once (later calls do nothing): unsent frames are dropped, the socket is shut, each
    /// request still in flight goes to <see cref="CancelRequest"/> (its FINAL will find the session closed), then
    /// <see cref="OnClosed"/>. <paramref name="why"/> says what closed it (for a debugger; nothing is sent).
    /// </summary>
    public void Close(string why)
    {
        if (Interlocked.Exchange(ref _closeOnce, 1) == 1) return;
        TRequest[] left;
        lock (_inflight)
        {
            _closed = true;
            left = _inflight.Count == 0 ? [] : [.. _inflight.Values];
            _inflight.Clear();
        }
        _conn.Close();
        foreach (var r in left) CancelRequest(r);
        OnClosed();
    }
}
