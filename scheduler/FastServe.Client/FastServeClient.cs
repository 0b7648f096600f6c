using System.Buffers;
using System.Buffers.Binary;
using System.Diagnostics;
using System.Net.Sockets;
using System.Text;
using FastServe.Protocol;
using FastServe.Protocol.Net;

namespace FastServe.Client;

/// <summary>
/// A client of a FastServe replica or router over one TCP connection (docs/protocol.md, docs/client.md). Many
/// completions run at once, multiplexed by request id (assigned here, increasing from 1). Thread-safe: any thread
/// may start, cancel and await calls.
/// </summary>
/// <remarks>
/// The connection is a <see cref="FrameConnection"/>, the same one FastServe's servers run: its receive loop reads into
/// a pooled buffer that grows to the largest frame seen and hands each frame to this client, which dispatches it by id
/// without copying the payload. Writers append frames to its <see cref="OutBuffer"/> under its lock; one sender swaps
/// the buffer out and writes it in a single socket call, so frames that arrive together leave together. When the
/// connection breaks, every call in flight completes once with
/// <see cref="ClientFailure.ConnectionLost"/> (status name <c>connection_lost</c>, retriable), every later
/// <see cref="Start"/> completes the same way at once, and the control methods throw
/// <see cref="FastServeClientException"/> with code <c>client.connection_lost</c>. The client never reconnects.
/// </remarks>
public sealed class FastServeClient : IAsyncDisposable
{
    private const int InitialBufferBytes = 64 << 10;

    private readonly FrameConnection _conn;
    private readonly OutBuffer _out;
    private readonly FastServeClientOptions _options;
    private readonly AdaptiveThrottle? _throttle;

    // Calls and control waiters: guarded by _lock (taken after _out.Lock when both are needed). Closing sets _closed
    // under it, so nothing registers afterwards.
    private readonly object _lock = new();
    private readonly Dictionary<ulong, CompletionCall> _calls = new();
    private readonly Dictionary<ulong, (TaskCompletionSource<TimeSpan> Tcs, long Sent)> _pings = new();
    private readonly List<TaskCompletionSource<LoadReport>> _loadWaiters = new();
    private readonly List<LoadSubscription> _subscribers = new();
    private readonly Queue<TaskCompletionSource<TimeSpan>> _drains = new();
    private readonly Queue<TaskCompletionSource<string>> _admins = new();
    private bool _closed;
    private string _closeDetail = "";
    private string _closeMessage = "";
    private ulong _nextId;
    private ulong _nextPing;
    private uint _subscribedMs;
    private ErrorInfo? _lastError;

    private volatile bool _isClosed;
    private Task _receiveTask = Task.CompletedTask;
    private Timer? _keepAlive;

    // The client's own frame limit is checked before appending (a request is refused, not the connection), so the
    // send buffer has none.
    private FastServeClient(Socket socket, FastServeClientOptions options, Stream? tls)
    {
        _options = options;
        if (options.AdaptiveThrottling is { Enabled: true } t) _throttle = new AdaptiveThrottle(t);
        _conn = new FrameConnection(socket, options.MaxReceiveFrameBytes, long.MaxValue,
            why => Close("client.send_failed", $"sending failed: {why}"), InitialBufferBytes, InitialBufferBytes, tls);
        _out = _conn.Out;
    }

    /// <summary>The server's HELLO_OK: protocol version, limits and name.</summary>
    public HelloOk Server { get; private set; }

    /// <summary>False once the connection has broken or the client was disposed; it never comes back.</summary>
    public bool IsConnected => !_isClosed;

    /// <summary>Requests started and not yet completed.</summary>
    public int InFlight { get { lock (_lock) return _calls.Count; } }

    /// <summary>The adaptive throttle (<see cref="FastServeClientOptions.AdaptiveThrottling"/>), null when it is off.</summary>
    public AdaptiveThrottle? Throttle => _throttle;

    /// <summary>Requests this client refused locally (<see cref="ClientFailure.Throttled"/>); 0 when throttling is off.</summary>
    public long Throttled => _throttle?.Throttled ?? 0;

    /// <summary>The probability that the throttle refuses the next request locally; 0 when throttling is off.</summary>
    public double ThrottleRejectProbability => _throttle?.RejectProbability ?? 0;

    /// <summary>The last connection-level ERROR the server sent (fatal or not), null if none. Non-fatal ones other than a
    /// refused DRAIN answer nothing this client asked, so they are only kept here.</summary>
    public ErrorInfo? LastServerError { get { lock (_lock) return _lastError; } }

    /// <summary>Why the connection closed (a <c>client.*</c> or <c>server.*</c> detail code), null while connected.</summary>
    public string? CloseDetail { get { lock (_lock) return _closed ? _closeDetail : null; } }

    /// <summary>Human-readable reason the connection closed, null while connected.</summary>
    public string? CloseMessage { get { lock (_lock) return _closed ? _closeMessage : null; } }

    /// <summary>
    /// Opens a TCP connection, sends HELLO and waits for HELLO_OK. <paramref name="host"/> is a name or an address.
    /// </summary>
    /// <exception cref="FastServeClientException"><c>client.connect_failed</c> (refused, unreachable, name not found),
    /// <c>client.connect_timeout</c> (no HELLO_OK within <see cref="FastServeClientOptions.ConnectTimeout"/>),
    /// <c>client.hello_rejected</c> (the server answered ERROR; <see cref="FastServeClientException.Status"/> says why),
    /// <c>client.unauthorized</c> (the server requires an API key and <see cref="FastServeClientOptions.ApiKey"/> is
    /// missing or not valid), <c>client.tls_failed</c> (<see cref="FastServeClientOptions.Tls"/>: the handshake failed),
    /// <c>client.unsupported_version</c>, <c>client.protocol_error</c>.</exception>
    /// <exception cref="OperationCanceledException"><paramref name="ct"/> was cancelled.</exception>
    public static async Task<FastServeClient> ConnectAsync(string host, int port, FastServeClientOptions? options = null, CancellationToken ct = default)
    {
        ArgumentException.ThrowIfNullOrEmpty(host);
        ArgumentOutOfRangeException.ThrowIfLessThan(port, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(port, 65535);
        options ??= new FastServeClientOptions();
        options.Validate();
        var socket = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        System.Net.Security.SslStream? tls = null;
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(ct);
        cts.CancelAfter(options.ConnectTimeout);
        try
        {
            try
            {
                await socket.ConnectAsync(host, port, cts.Token).ConfigureAwait(false);
            }
            catch (SocketException e)
            {
                throw new FastServeClientException("client.connect_failed", $"cannot connect to {host}:{port}: {e.Message}", inner: e);
            }
            if (options.Tls is { } t)
            {
                try { tls = await t.AuthenticateAsync(socket, host, cts.Token).ConfigureAwait(false); }
                catch (FastServe.Protocol.Security.TlsFailedException e) { throw new FastServeClientException("client.tls_failed", e.Message, inner: e); }
            }
        }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested)
        {
            socket.Dispose();
            throw new FastServeClientException("client.connect_timeout",
                $"no HELLO_OK from {host}:{port} within {options.ConnectTimeout.TotalMilliseconds:F0} ms");
        }
        catch
        {
            socket.Dispose();
            throw;
        }
        return await HandshakeAsync(socket, $"{host}:{port}", options, tls, cts.Token, ct).ConfigureAwait(false);
    }

    /// <summary>
    /// Runs the HELLO / HELLO_OK handshake over a socket that is already connected (any stream socket: TCP, or one end
    /// of an in-process socket pair, as the HTTP front door uses) and returns the client, which owns the socket from
    /// then on (it is disposed when the handshake fails).
    /// </summary>
    /// <exception cref="FastServeClientException">As <see cref="ConnectAsync(string, int, FastServeClientOptions?, CancellationToken)"/>,
    /// less the connect failures of TCP.</exception>
    /// <exception cref="OperationCanceledException"><paramref name="ct"/> was cancelled.</exception>
    public static async Task<FastServeClient> ConnectAsync(Socket connected, FastServeClientOptions? options = null, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(connected);
        options ??= new FastServeClientOptions();
        options.Validate();
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(ct);
        cts.CancelAfter(options.ConnectTimeout);
        return await HandshakeAsync(connected, "the connected peer", options, null, cts.Token, ct).ConfigureAwait(false);
    }

    // Sends HELLO over a connected socket (inside `tls` when not null) and waits for HELLO_OK; on failure the socket is
    // disposed. `timed` carries the connect timeout, `caller` the caller's own token (to tell a timeout from a
    // cancellation).
    private static async Task<FastServeClient> HandshakeAsync(Socket socket, string peer, FastServeClientOptions options,
        System.Net.Security.SslStream? tls, CancellationToken timed, CancellationToken caller)
    {
        FastServeClient? client = null;
        try
        {
            client = new FastServeClient(socket, options, tls);
            await client.HandshakeAsync(peer, timed).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (!caller.IsCancellationRequested)
        {
            Abandon(socket, client);
            throw new FastServeClientException("client.connect_timeout",
                $"no HELLO_OK from {peer} within {options.ConnectTimeout.TotalMilliseconds:F0} ms");
        }
        catch (SocketException e)
        {
            Abandon(socket, client);
            throw new FastServeClientException("client.connect_failed", $"connection to {peer} failed during the handshake: {e.Message}", inner: e);
        }
        catch
        {
            Abandon(socket, client);
            throw;
        }
        client.StartLoops();
        return client;
    }

    private static void Abandon(Socket socket, FastServeClient? client)
    {
        if (client is not null) client._conn.Close();
        else socket.Dispose();
    }

    private async Task HandshakeAsync(string peer, CancellationToken ct)
    {
        var hello = new ArrayBufferWriter<byte>(64);
        FrameWriter.Hello(hello, Encoding.UTF8.GetBytes(_options.ClientName), apiKey: _options.ApiKey is null ? default : Encoding.ASCII.GetBytes(_options.ApiKey));
        try { await _conn.SendDirectAsync(hello.WrittenMemory, ct).ConfigureAwait(false); }
        catch (IOException e) { throw new FastServeClientException("client.connect_failed", $"connection to {peer} failed during the handshake: {e.Message}", inner: e); }
        var reply = new HelloReader();
        var r = await _conn.RunAsync(reply, ct).ConfigureAwait(false);
        switch (r.End)
        {
            case FrameRunEnd.TooLarge: throw ProtocolError($"the server's first frame announces {reply.TooLargeLength} bytes");
            case FrameRunEnd.PeerClosed: throw new FastServeClientException("client.connect_failed", "the server closed the connection before HELLO_OK");
            case FrameRunEnd.SocketError:
                throw new FastServeClientException("client.connect_failed", $"connection to {peer} failed during the handshake: {r.Message}", inner: r.Error);
        }
        if (reply.Error is not null) throw reply.Error;
        Server = reply.Server;
    }

    // The handshake's consumer: the server's first frame, HELLO_OK or a refusal.
    private sealed class HelloReader : IFrameConsumer
    {
        public HelloOk Server;
        public FastServeClientException? Error;
        public int TooLargeLength;

        public bool OnFrame(in FrameHeader h, ReadOnlySpan<byte> payload)
        {
            switch (h.Type)
            {
                case FrameType.HelloOk:
                    if (!HelloOk.TryParse(payload, out var ok)) Error = ProtocolError("malformed HELLO_OK");
                    else if (ok.Major != Wire.Major)
                        Error = new FastServeClientException("client.unsupported_version", $"the server speaks protocol {ok.Major}.{ok.Minor}, this client {Wire.Major}.{Wire.Minor}");
                    else Server = ok;
                    break;
                case FrameType.Error:
                    Error = !ErrorInfo.TryParse(payload, h.Flags, out var err)
                        ? ProtocolError("malformed ERROR")
                        : new FastServeClientException(err.Status == WireStatus.Unauthorized ? "client.unauthorized" : "client.hello_rejected",
                            $"the server refused the connection: {WireNames.Of(err.Status)}: {err.Message}", err.Status, err.RetryAfterMs);
                    break;
                default:
                    Error = ProtocolError($"expected HELLO_OK, got frame type 0x{(byte)h.Type:X2}");
                    break;
            }
            return false;
        }

        public void OnTooLarge(in FrameHeader h) => TooLargeLength = h.Length;

        public bool OnReadDone() => true;
    }

    private static FastServeClientException ProtocolError(string message) => new("client.protocol_error", message);

    private void StartLoops()
    {
        _receiveTask = Task.Run(ReceiveLoopAsync);
        if (_options.KeepAliveInterval is { } k) _keepAlive = new Timer(static s => ((FastServeClient)s!).KeepAliveTick(), this, k, k);
    }

    // ---------------------------------------------------------------- requests

    /// <summary>
    /// Starts a completion: registers it, queues its REQUEST frame and returns at once (never waits on the network:
    /// when no send is running the frame leaves on the calling thread with a non-blocking send, else with the next batch).
    /// Deltas stream into <see cref="CompletionCall.Deltas"/> (unless <see cref="FastServeClientOptions.CollectOutput"/> is off).
    /// Problems never throw: the call completes with a failure (connection lost, send buffer full, refused, or
    /// throttled: the adaptive throttle refused it locally, <see cref="FastServeClientOptions.AdaptiveThrottling"/>).
    /// </summary>
    public CompletionCall Start(CompletionRequest request) => Start(request, stream: true);

    /// <summary>Runs a completion and returns its result (the deltas are collected, not streamed). Cancelling
    /// <paramref name="ct"/> sends CANCEL and throws <see cref="OperationCanceledException"/> at once; the server's
    /// FINAL is then absorbed in the background.</summary>
    /// <remarks>
    /// The request goes with <see cref="RequestFlags.Whole"/> set, since nothing here looks at the output before the
    /// FINAL: a router in between may then hold the output back and run the request again on another replica when
    /// its replica is lost mid-generation, instead of failing it. Through a router, the result's
    /// <see cref="CompletionResult.FirstTokenTimestamp"/> is then close to its <see cref="CompletionResult.FinalTimestamp"/>.
    /// </remarks>
    public async Task<CompletionResult> CompleteAsync(CompletionRequest request, CancellationToken ct = default)
    {
        var call = Start(request, stream: false, whole: true);
        if (!ct.CanBeCanceled) return await call.Completion.ConfigureAwait(false);
        try
        {
            return await call.Completion.WaitAsync(ct).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (ct.IsCancellationRequested)
        {
            // Not a token registration: WaitAsync's own one runs first, and when the caller's continuation ran inline
            // on the cancelling thread, disposing ours there dropped its callback before it ran, and no CANCEL left.
            call.Cancel();
            throw;
        }
    }

    internal CompletionCall Start(CompletionRequest request, bool stream, ICompletionObserver? observer = null, bool whole = false)
    {
        ArgumentNullException.ThrowIfNull(request);
        ulong id = Interlocked.Increment(ref _nextId);
        var call = new CompletionCall(this, id, stream && _options.CollectOutput, _options.CollectOutput, observer);
        call.StartedTimestamp = Stopwatch.GetTimestamp();

        // The shared request rules (RequestRules), so a request the server would refuse never leaves: the same detail
        // codes as the server's, but for stops, whose client.* codes say the REQUEST was never written.
        var stops = request.Stops;
        var p0 = request.Params;
        if (RequestRules.CheckStops(stops, out int stopText) is { } badStop)
            return Refuse(call, badStop.Status, badStop.Code == RequestRules.TooManyStops ? "client.too_many_stops" : "client.bad_stop", badStop.Message);
        if ((RequestRules.CheckSampling(p0.MaxTokens, p0.Temperature, p0.TopP, p0.TopK, p0.TokenLogprobs ? p0.TopLogprobs : 0)
             ?? RequestRules.CheckPriority(p0.Priority)
             ?? (p0.DeadlineMs != 0 ? RequestRules.CheckDeadline(TimeSpan.FromMilliseconds(p0.DeadlineMs)) : null)) is { } bad)
            return Refuse(call, bad.Status, bad.Code, bad.Message);
        int stopBytes = stopText + 2 * (stops?.Count ?? 0);
        if (p0.TokenLogprobs && Server.Major == 1 && Server.Minor < 4)
            return Refuse(call, WireStatus.BadRequest, "client.logprobs_unsupported",
                $"the server speaks protocol {Server.Major}.{Server.Minor}; per-token log-probabilities need 1.4");
        if (p0.HasRoute)
        {
            if (Server.Major == 1 && Server.Minor < 2)
                return Refuse(call, WireStatus.BadRequest, "client.route_unsupported",
                    $"the server speaks protocol {Server.Major}.{Server.Minor}; naming a model, version or routing key needs 1.2");
            int m = Encoding.UTF8.GetByteCount(p0.Model ?? ""), v = Encoding.UTF8.GetByteCount(p0.ModelVersion ?? ""), k = Encoding.UTF8.GetByteCount(p0.RouteKey ?? "");
            if (m > Wire.MaxModelBytes || v > Wire.MaxModelBytes || k > Wire.MaxRouteKeyBytes)
                return Refuse(call, WireStatus.BadRequest, "request.bad_route",
                    $"model and version take at most {Wire.MaxModelBytes} UTF-8 bytes, the routing key {Wire.MaxRouteKeyBytes}");
            stopBytes += 6 + m + v + k;
        }
        if (request.Prompt is not null && request.PromptIds is not null)
            return Refuse(call, WireStatus.BadRequest, "client.prompt_ambiguous", "give a prompt text or prompt ids, not both");

        byte[]? rented = null;
        try
        {
            ReadOnlySpan<byte> text = default;
            ReadOnlySpan<int> ids = request.PromptIds ?? default;
            long promptBytes = ids.Length * 4L;
            if (!string.IsNullOrEmpty(request.Prompt))
            {
                rented = ArrayPool<byte>.Shared.Rent(Encoding.UTF8.GetMaxByteCount(request.Prompt.Length));
                int n = Encoding.UTF8.GetBytes(request.Prompt, rented);
                text = rented.AsSpan(0, n);
                promptBytes = n;
            }
            long payload = Wire.RequestFixedSize + promptBytes + stopBytes;
            if (payload > Server.MaxFrame)
                return Refuse(call, WireStatus.TooLarge, "client.frame_too_large", $"the request is {payload} bytes; the server accepts frames up to {Server.MaxFrame}");
            long frame = Wire.HeaderSize + payload;
            // A closed client keeps answering connection_lost, uncounted: the throttle is about the server's answers.
            if (_throttle is not null && !_isClosed && !_throttle.TryAdmit())
            {
                call.Fail(ClientFailure.Throttled, WireStatus.Overloaded, "throttled", "client.throttled", ThrottledMessage, retriable: true,
                    retryAfterMs: _throttle.RetryAfterMs);
                return call;
            }

            ClientFailure failure = ClientFailure.None;
            lock (_out.Lock)
            {
                long queued = _out.UnsentUnsafe;
                // An empty queue takes any frame, so a request larger than the limit is slow rather than impossible.
                if (queued > 0 && queued + frame > _options.MaxPendingSendBytes) failure = ClientFailure.SendBufferFull;
                else
                {
                    lock (_lock)
                    {
                        if (_closed) failure = ClientFailure.ConnectionLost;
                        else _calls.Add(id, call);
                    }
                    if (failure == ClientFailure.None)
                    {
                        var p = request.Params;
                        if (whole) p.Whole = true;
                        FrameWriter.Request(_out.Writer, id, p, text, ids, stops);
                    }
                }
            }
            if (failure == ClientFailure.None) _out.Flush();
            if (failure == ClientFailure.SendBufferFull)
            {
                _throttle?.OnUnanswered();
                call.Fail(ClientFailure.SendBufferFull, WireStatus.TooManyRequests, "send_buffer_full", "client.send_buffer_full",
                    $"more than {_options.MaxPendingSendBytes} bytes are waiting to be sent", retriable: true);
            }
            else if (failure == ClientFailure.ConnectionLost) FailLost(call);
            return call;
        }
        finally
        {
            if (rented is not null) ArrayPool<byte>.Shared.Return(rented);
        }
    }

    private const string ThrottledMessage = "refused by the client's adaptive throttle: the server has been refusing requests for load";

    private static CompletionCall Refuse(CompletionCall call, WireStatus status, string detail, string message)
    {
        call.Fail(ClientFailure.Rejected, status, WireNames.Of(status), detail, message, retriable: false);
        return call;
    }

    private void FailLost(CompletionCall call)
    {
        string detail, message;
        lock (_lock) { detail = _closeDetail; message = _closeMessage; }
        call.Fail(ClientFailure.ConnectionLost, WireStatus.Unavailable, "connection_lost", detail, message, retriable: true);
    }

    internal void SendCancel(ulong id)
    {
        lock (_out.Lock)
        {
            if (_out.ClosedUnsafe) return;
            FrameWriter.Cancel(_out.Writer, id);
        }
        _out.Flush();
    }

    // ---------------------------------------------------------------- control

    /// <summary>Sends PING and returns the round-trip time when the PONG arrives.</summary>
    /// <exception cref="FastServeClientException"><c>client.connection_lost</c>.</exception>
    public async Task<TimeSpan> PingAsync(CancellationToken ct = default)
    {
        var tcs = new TaskCompletionSource<TimeSpan>(TaskCreationOptions.RunContinuationsAsynchronously);
        ulong seq;
        lock (_lock)
        {
            ThrowIfClosedLocked();
            seq = ++_nextPing;
            _pings[seq] = (tcs, Stopwatch.GetTimestamp());
        }
        SendPing(seq);
        try
        {
            return await tcs.Task.WaitAsync(ct).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            lock (_lock) _pings.Remove(seq);
            throw;
        }
    }

    private void SendPing(ulong seq)
    {
        Span<byte> p = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(p, seq);
        lock (_out.Lock)
        {
            if (_out.ClosedUnsafe) return;
            FrameWriter.Ping(_out.Writer, p);
        }
        _out.Flush();
    }

    /// <summary>Asks for one load report. Reports carry no request id, so this completes with the next LOAD_REPORT that
    /// arrives, which may be a subscription's report sent at about the same time.</summary>
    /// <exception cref="FastServeClientException"><c>client.connection_lost</c>.</exception>
    public async Task<LoadReport> GetLoadAsync(CancellationToken ct = default)
    {
        var tcs = new TaskCompletionSource<LoadReport>(TaskCreationOptions.RunContinuationsAsynchronously);
        lock (_lock)
        {
            ThrowIfClosedLocked();
            _loadWaiters.Add(tcs);
        }
        SendLoadQuery(0, false);
        try
        {
            return await tcs.Task.WaitAsync(ct).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            lock (_lock) _loadWaiters.Remove(tcs);
            throw;
        }
    }

    /// <summary>
    /// Subscribes to periodic load reports. The connection holds one subscription on the server, at the shortest
    /// interval any subscriber asked for; every subscriber sees every report. <paramref name="onReport"/> runs on the
    /// receive loop: keep it short; if it throws, the connection closes (detail <c>client.callback_failed</c>).
    /// Disposing the result unsubscribes (the server is told when the last subscriber leaves).
    /// </summary>
    /// <param name="intervalMs">Milliseconds between reports, at least 10.</param>
    public IDisposable SubscribeLoad(uint intervalMs, Action<LoadReport> onReport)
    {
        ArgumentNullException.ThrowIfNull(onReport);
        ArgumentOutOfRangeException.ThrowIfLessThan(intervalMs, 10u);
        var sub = new LoadSubscription(this, intervalMs, onReport);
        lock (_lock)
        {
            ThrowIfClosedLocked();
            _subscribers.Add(sub);
        }
        UpdateSubscription();
        return sub;
    }

    private void Unsubscribe(LoadSubscription sub)
    {
        lock (_lock)
        {
            if (!_subscribers.Remove(sub)) return;
        }
        UpdateSubscription();
    }

    private void UpdateSubscription()
    {
        lock (_out.Lock)
        {
            uint want;
            lock (_lock)
            {
                want = 0;
                foreach (var s in _subscribers) want = want == 0 ? s.IntervalMs : Math.Min(want, s.IntervalMs);
                if (want == _subscribedMs || _closed) return;
                _subscribedMs = want;
            }
            if (want == 0) FrameWriter.LoadQuery(_out.Writer, 0, unsubscribe: true);
            else FrameWriter.LoadQuery(_out.Writer, want);
        }
        _out.Flush();
    }

    private void SendLoadQuery(uint intervalMs, bool unsubscribe)
    {
        lock (_out.Lock)
        {
            if (_out.ClosedUnsafe) return;
            FrameWriter.LoadQuery(_out.Writer, intervalMs, unsubscribe);
        }
        _out.Flush();
    }

    /// <summary>Asks the server to drain (stop admitting, finish what runs). Returns the grace period from DRAIN_OK.</summary>
    /// <exception cref="FastServeClientException"><c>client.unauthorized</c> (wrong or missing token),
    /// <c>client.connection_lost</c>.</exception>
    public async Task<TimeSpan> DrainAsync(string adminToken, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(adminToken);
        var tcs = new TaskCompletionSource<TimeSpan>(TaskCreationOptions.RunContinuationsAsynchronously);
        byte[] token = Encoding.UTF8.GetBytes(adminToken);
        lock (_out.Lock)
        {
            lock (_lock)
            {
                ThrowIfClosedLocked();
                _drains.Enqueue(tcs);
            }
            FrameWriter.Drain(_out.Writer, token);
        }
        _out.Flush();
        return await tcs.Task.WaitAsync(ct).ConfigureAwait(false);
    }

    /// <summary>
    /// Sends an ADMIN command (protocol 1.2; a router takes them, docs/router.md "Admin commands") and returns the
    /// ADMIN_OK's JSON body.
    /// </summary>
    /// <exception cref="FastServeClientException"><c>client.unauthorized</c> (wrong or missing token),
    /// <c>client.admin_refused</c> (the command was refused: its message says why), <c>client.connection_lost</c>.</exception>
    public async Task<string> AdminAsync(string adminToken, string command, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(adminToken);
        ArgumentNullException.ThrowIfNull(command);
        var tcs = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        byte[] token = Encoding.UTF8.GetBytes(adminToken), cmd = Encoding.UTF8.GetBytes(command);
        if (cmd.Length > Wire.MaxAdminBytes) throw new FastServeClientException("client.admin_refused", $"the command is over {Wire.MaxAdminBytes} bytes", WireStatus.BadRequest);
        lock (_out.Lock)
        {
            lock (_lock)
            {
                ThrowIfClosedLocked();
                _admins.Enqueue(tcs);
            }
            FrameWriter.Admin(_out.Writer, token, cmd);
        }
        _out.Flush();
        return await tcs.Task.WaitAsync(ct).ConfigureAwait(false);
    }

    private void ThrowIfClosedLocked()
    {
        if (_closed) throw LostException();
    }

    private FastServeClientException LostException() =>
        new("client.connection_lost", $"the connection is closed ({_closeDetail}): {_closeMessage}");

    private void KeepAliveTick()
    {
        if (_isClosed) return;
        long idle = Stopwatch.GetTimestamp() - _conn.LastReceiveTicks;
        if (idle * 1.0 / Stopwatch.Frequency < _options.KeepAliveInterval!.Value.TotalSeconds * 0.9) return;
        // A keep-alive ping nobody awaits: its PONG is absorbed as an unknown sequence number.
        SendPing(0);
    }

    // ---------------------------------------------------------------- receive loop

    private async Task ReceiveLoopAsync()
    {
        try
        {
            var r = await _conn.RunAsync(new Receiver(this)).ConfigureAwait(false);
            // Stopped or too large: the receiver has closed the connection already.
            if (r.End == FrameRunEnd.PeerClosed) Close("client.connection_closed", "the server closed the connection");
            else if (r.End == FrameRunEnd.SocketError) Close("client.connection_closed", $"receiving failed: {r.Message}");
        }
        catch (Exception e)
        {
            Close("client.internal_error", $"the receive loop failed: {e.GetType().Name}: {e.Message}");
        }
        finally
        {
            FailEverything();
        }
    }

    // The connection's consumer once connected (a nested class, so the client's public surface has no frame methods).
    private sealed class Receiver(FastServeClient client) : IFrameConsumer
    {
        public bool OnFrame(in FrameHeader h, ReadOnlySpan<byte> payload)
        {
            string? error = client.Dispatch(h, payload);
            if (error is null) return true;
            client.Close("client.protocol_error", error);
            return false;
        }

        public void OnTooLarge(in FrameHeader h) =>
            client.Close("client.protocol_error", $"the server sent a frame of {h.Length} bytes (limit {client._options.MaxReceiveFrameBytes})");

        public bool OnReadDone() => true;
    }

    // Returns null, or why the frame is a protocol error ("" when the connection was already closed for another reason).
    private string? Dispatch(in FrameHeader h, ReadOnlySpan<byte> payload)
    {
        long now = Stopwatch.GetTimestamp();
        switch (h.Type)
        {
            case FrameType.Delta:
            {
                if (!DeltaView.TryParse(payload, out var d, h.Flags)) return $"malformed DELTA for request {h.Id}";
                CompletionCall? call;
                lock (_lock) _calls.TryGetValue(h.Id, out call);
                if (call is null) return $"DELTA for unknown request id {h.Id}";
                call.OnDelta(d, now);
                return null;
            }
            case FrameType.Final:
            {
                if (!FinalInfo.TryParse(payload, out var f, out var detail, out var message)) return $"malformed FINAL for request {h.Id}";
                CompletionCall? call;
                lock (_lock) _calls.Remove(h.Id, out call);
                if (call is null) return $"FINAL for unknown request id {h.Id}";
                _throttle?.OnAnswer(f.Status, f.RetryAfterMs);
                call.OnFinal(f, detail, message, now);
                return null;
            }
            case FrameType.Pong:
            {
                if (payload.Length != 8) return null; // not one of ours (pings carry an 8-byte sequence number)
                ulong seq = BinaryPrimitives.ReadUInt64LittleEndian(payload);
                (TaskCompletionSource<TimeSpan> Tcs, long Sent) ping;
                lock (_lock)
                {
                    if (!_pings.Remove(seq, out ping)) return null; // a keep-alive, or a ping whose caller gave up
                }
                ping.Tcs.TrySetResult(Stopwatch.GetElapsedTime(ping.Sent, now));
                return null;
            }
            case FrameType.LoadReport:
            {
                if (!LoadReport.TryParse(payload, out var report)) return "malformed LOAD_REPORT";
                TaskCompletionSource<LoadReport>[] waiters;
                LoadSubscription[] subs;
                lock (_lock)
                {
                    waiters = _loadWaiters.Count == 0 ? [] : _loadWaiters.ToArray();
                    _loadWaiters.Clear();
                    subs = _subscribers.Count == 0 ? [] : _subscribers.ToArray();
                }
                foreach (var w in waiters) w.TrySetResult(report);
                foreach (var s in subs)
                {
                    try { s.Deliver(report); }
                    catch (Exception e)
                    {
                        Close("client.callback_failed", $"a load subscriber threw {e.GetType().Name}: {e.Message}");
                        return "";
                    }
                }
                return null;
            }
            case FrameType.DrainOk:
            {
                var r = new PayloadReader(payload);
                if (!r.TryU32(out uint grace)) return "malformed DRAIN_OK";
                TaskCompletionSource<TimeSpan>? tcs;
                lock (_lock) _drains.TryDequeue(out tcs);
                tcs?.TrySetResult(TimeSpan.FromMilliseconds(grace));
                return null;
            }
            case FrameType.AdminOk:
            {
                var r = new PayloadReader(payload);
                if (!r.TryStr16(out var body)) return "malformed ADMIN_OK";
                TaskCompletionSource<string>? tcs;
                lock (_lock) _admins.TryDequeue(out tcs);
                tcs?.TrySetResult(Utf8Text.Decode(body));
                return null;
            }
            case FrameType.Error:
            {
                if (!ErrorInfo.TryParse(payload, h.Flags, out var err)) return "malformed ERROR";
                TaskCompletionSource<TimeSpan>? drain = null;
                TaskCompletionSource<string>? admin = null;
                lock (_lock)
                {
                    _lastError = err;
                    // A refused DRAIN or ADMIN answers with an ERROR; drains are matched first (a tool that sends both
                    // at once cannot tell which an `unauthorized` answers).
                    if (err.Status == WireStatus.Unauthorized && !_drains.TryDequeue(out drain)) _admins.TryDequeue(out admin);
                    else if (err.Status == WireStatus.BadRequest && !err.Fatal) _admins.TryDequeue(out admin);
                }
                drain?.TrySetException(new FastServeClientException("client.unauthorized", $"the server refused DRAIN: {err.Message}", err.Status));
                admin?.TrySetException(err.Status == WireStatus.Unauthorized
                    ? new FastServeClientException("client.unauthorized", $"the server refused ADMIN: {err.Message}", err.Status)
                    : new FastServeClientException("client.admin_refused", err.Message, err.Status));
                if (err.Fatal) Close("server." + WireNames.Of(err.Status), $"the server closed the connection: {WireNames.Of(err.Status)}: {err.Message}");
                return null;
            }
            case FrameType.Hello or FrameType.Request or FrameType.Cancel or FrameType.Ping or FrameType.LoadQuery or FrameType.Drain or FrameType.Admin or FrameType.HelloOk:
                return $"unexpected frame type 0x{(byte)h.Type:X2} from the server";
            default:
                // A later minor version may add frame types; this client has no use for them.
                return null;
        }
    }

    // ---------------------------------------------------------------- closing

    /// <summary>Marks the connection closed (first reason wins) and aborts the socket; the receive loop then fails
    /// every call and waiter.</summary>
    private void Close(string detail, string message)
    {
        lock (_lock)
        {
            if (_closed) return;
            _closed = true;
            _closeDetail = detail;
            _closeMessage = message;
        }
        _isClosed = true;
        _keepAlive?.Dispose();
        _conn.Close();
    }

    // Runs once, at the end of the receive loop: completes everything still waiting.
    private void FailEverything()
    {
        CompletionCall[] calls;
        (TaskCompletionSource<TimeSpan> Tcs, long Sent)[] pings;
        TaskCompletionSource<LoadReport>[] loads;
        TaskCompletionSource<TimeSpan>[] drains;
        TaskCompletionSource<string>[] admins;
        FastServeClientException lost;
        lock (_lock)
        {
            calls = _calls.Values.ToArray();
            _calls.Clear();
            pings = _pings.Values.ToArray();
            _pings.Clear();
            loads = _loadWaiters.ToArray();
            _loadWaiters.Clear();
            drains = _drains.ToArray();
            _drains.Clear();
            admins = _admins.ToArray();
            _admins.Clear();
            _subscribers.Clear();
            lost = LostException();
        }
        foreach (var c in calls) FailLost(c);
        foreach (var p in pings) p.Tcs.TrySetException(lost);
        foreach (var l in loads) l.TrySetException(lost);
        foreach (var d in drains) d.TrySetException(lost);
        foreach (var a in admins) a.TrySetException(lost);
    }

    /// <summary>Closes the connection: calls in flight complete with <c>connection_lost</c> (detail
    /// <c>client.disposed</c>). Waits for the loops to finish.</summary>
    public async ValueTask DisposeAsync()
    {
        Close("client.disposed", "the client was disposed");
        try { await _receiveTask.ConfigureAwait(false); }
        catch (Exception e) when (e is SocketException or ObjectDisposedException or IOException) { }
    }

    private sealed class LoadSubscription(FastServeClient owner, uint intervalMs, Action<LoadReport> onReport) : IDisposable
    {
        public uint IntervalMs => intervalMs;
        public void Deliver(LoadReport r) => onReport(r);
        public void Dispose() => owner.Unsubscribe(this);
    }
}
