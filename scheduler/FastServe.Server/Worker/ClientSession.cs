using System.Buffers;
using System.Diagnostics;
using System.Net.Sockets;
using System.Text;
using FastServe.Protocol;
using FastServe.Runtime.Generation;
using FastServe.Server.Ipc;
using FastServe.Protocol.Net;

namespace FastServe.Server.Worker;

/// <summary>
/// One client connection in a worker: the receive loop parses frames in place (zero-copy slices of a pooled buffer,
/// a partial frame simply stays for the next read), answers connection frames, validates and tokenizes requests
/// and forwards them to the engine. Bad input gets an error frame with a stable status; only a stream that can no
/// longer be trusted (oversized length, wrong magic, a frame that never completes) closes the connection.
/// </summary>
internal sealed class ClientSession
{
    private readonly WorkerHost _host;
    private readonly Socket _socket;
    private readonly Dictionary<ulong, WorkerRequest> _inflight = [];   // guarded by itself
    private readonly long _created;
    private int _touched, _closeOnce;
    private volatile bool _closed, _hello;
    private long _lastActivity, _partialSince;
    private long _loadIntervalTicks, _nextLoadAt;                       // 0 = not subscribed

    public ClientSession(WorkerHost host, Socket socket, long id)
    {
        _host = host;
        _socket = socket;
        Id = id;
        _created = _lastActivity = Stopwatch.GetTimestamp();
        Out = new OutBuffer(socket, host.Options.MaxSendBytes, why => Close(why));
    }

    public long Id { get; }
    public OutBuffer Out { get; }

    public void Start() => _ = ReceiveLoopAsync();

    internal bool MarkTouched() => Interlocked.Exchange(ref _touched, 1) == 0;
    internal void ClearTouched() => Volatile.Write(ref _touched, 0);

    /// <summary>The request's FINAL is being written: its id is free again.</summary>
    internal void Finished(ulong clientId)
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
                if (used < 0) return;   // fatal: already answered and closing
                if (used > 0)
                {
                    buf.AsSpan(used, have - used).CopyTo(buf);
                    have -= used;
                }
                // A partial frame's clock starts when it began arriving; slow senders are cut off by the timer.
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
                _host.SignalEngine();
            }
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
            Close(e.Message);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buf);
        }
    }

    // Returns bytes consumed, or -1 after a fatal error. `needed` is the size of the buffer the next frame needs.
    private int Consume(ReadOnlySpan<byte> data, long now, out int needed)
    {
        int used = 0;
        needed = 0;
        var opt = _host.Options;
        while (true)
        {
            var r = FrameReader.TryRead(data[used..], opt.MaxFrame, out var h, out var payload, out int consumed);
            if (r == ReadResult.NeedMore)
            {
                if (data.Length - used >= Wire.HeaderSize) needed = Wire.HeaderSize + h.Length;
                return used;
            }
            if (r == ReadResult.TooLarge)
            {
                Fatal(WireStatus.TooLarge, $"frame of {(uint)h.Length} bytes is over the {opt.MaxFrame}-byte limit");
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
                case FrameType.Drain: Drain(payload); break;
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
            Fatal(WireStatus.UnsupportedVersion, $"protocol {v.Major}.{v.Minor} is not supported; this server speaks {Wire.Major}.{Wire.Minor}");
            return false;
        }
        _hello = true;
        var o = _host.Options;
        int ctx = _host.ContextLength;
        lock (Out.Lock)
            FrameWriter.HelloOk(Out.Writer, new HelloOk(Wire.Major, Wire.Minor, o.MaxFrame, Math.Max(0, ctx - 1), o.MaxInFlight,
                (int)o.IdleTimeout.TotalMilliseconds, ctx, o.ServerName));
        return true;
    }

    private void Request(FrameHeader h, ReadOnlySpan<byte> payload, long received)
    {
        ulong id = h.Id;
        if (id == 0) { Error(WireStatus.BadRequest, "REQUEST needs a non-zero request id"); return; }
        lock (_inflight)
        {
            if (_inflight.ContainsKey(id)) { Error(WireStatus.BadRequest, $"request id {id} is already in flight on this connection"); return; }
            if (_inflight.Count >= _host.Options.MaxInFlight) { Reject(id, WireStatus.TooManyRequests, "connection.too_many_requests", $"{_host.Options.MaxInFlight} requests are already in flight on this connection", 100); return; }
        }
        var pe = RequestView.TryParse(payload, out var v);
        if (pe != RequestParseError.None) { Reject(id, WireStatus.BadRequest, RequestView.DetailCode(pe), "malformed REQUEST payload"); return; }
        switch (_host.State)
        {
            case ReplicaState.Draining: Reject(id, WireStatus.Draining, "server.draining", "the replica is draining; send the request elsewhere", 0); return;
            case ReplicaState.Unavailable: Reject(id, WireStatus.Unavailable, "engine.unavailable", "the engine is restarting", 500); return;
            case ReplicaState.Starting: Reject(id, WireStatus.Unavailable, "engine.starting", "the replica is still starting", 500); return;
        }
        int ctx = _host.ContextLength;
        if (v.MaxTokens < 1 || v.MaxTokens > ctx) { Reject(id, WireStatus.BadRequest, "sampling.invalid", $"max_tokens must be between 1 and {ctx}"); return; }
        if (!float.IsFinite(v.Temperature) || v.Temperature < 0 || v.Temperature > 100) { Reject(id, WireStatus.BadRequest, "sampling.invalid", "temperature must be between 0 and 100"); return; }
        if (!float.IsFinite(v.TopP) || v.TopP <= 0 || v.TopP > 1) { Reject(id, WireStatus.BadRequest, "sampling.invalid", "top_p must be in (0, 1]"); return; }
        if (v.TopK < 0) { Reject(id, WireStatus.BadRequest, "sampling.invalid", "top_k must be ≥ 0"); return; }
        if (v.Priority > 1) { Reject(id, WireStatus.BadRequest, "request.invalid_priority", "priority must be 0 (interactive) or 1 (batch)"); return; }

        int[] prompt;
        if (v.PromptIsIds)
        {
            int n = v.PromptIdCount;
            if (n >= ctx) { Reject(id, WireStatus.TooLarge, "prompt.too_long", $"the prompt has {n} tokens; at most {ctx - 1} fit the context"); return; }
            prompt = new int[n];
            int vocab = _host.Vocab;
            for (int i = 0; i < n; i++)
            {
                int t = v.PromptId(i);
                if ((uint)t >= (uint)vocab) { Reject(id, WireStatus.BadRequest, "prompt.invalid_token", $"prompt token {i} is {t}, outside the vocabulary of {vocab}"); return; }
                prompt[i] = t;
            }
        }
        else
        {
            if (!Utf8Text.IsValid(v.Prompt)) { Reject(id, WireStatus.BadRequest, "prompt.invalid_utf8", "the prompt is not valid UTF-8"); return; }
            var tok = _host.Tokenizer;
            prompt = tok.Encode(Encoding.UTF8.GetString(v.Prompt), addBos: tok.BosId is not null);
            if (prompt.Length >= ctx) { Reject(id, WireStatus.TooLarge, "prompt.too_long", $"the prompt has {prompt.Length} tokens; at most {ctx - 1} fit the context"); return; }
        }
        if (prompt.Length == 0) { Reject(id, WireStatus.BadRequest, "prompt.empty", "the prompt has no tokens"); return; }

        StopMatcher? stop = null;
        if (v.StopCount > 0)
        {
            var stops = new string[v.StopCount];
            for (int i = 0; i < stops.Length; i++)
            {
                var s = v.GetStop(i);
                if (!Utf8Text.IsValid(s)) { Reject(id, WireStatus.BadRequest, "request.bad_stop", $"stop string {i} is not valid UTF-8"); return; }
                stops[i] = Encoding.UTF8.GetString(s);
            }
            stop = new StopMatcher(stops);
        }

        bool noText = (v.Flags & RequestFlags.NoText) != 0;
        var r = new WorkerRequest
        {
            Key = _host.NextKey(),
            ClientId = id,
            Session = this,
            Decoder = noText ? null : _host.Tokenizer.CreateDecoder(),
            Stop = noText ? null : stop,
            PromptTokens = prompt.Length,
            Received = received,
            Tokenized = Stopwatch.GetTimestamp(),
        };
        var msg = new SubmitMsg
        {
            MaxTokens = v.MaxTokens,
            Temperature = v.Temperature,
            TopP = v.TopP,
            TopK = v.TopK,
            Seed = v.Seed,
            Flags = (byte)(((v.Flags & RequestFlags.HasSeed) != 0 ? 1 : 0) | ((v.Flags & RequestFlags.IgnoreEos) != 0 ? 2 : 0)),
            Priority = v.Priority,
            DeadlineMs = v.DeadlineMs,
            ReceivedTicks = received,
            PromptCount = (uint)prompt.Length,
        };
        lock (_inflight) _inflight[id] = r;
        msg.SentTicks = Stopwatch.GetTimestamp();
        if (!_host.Submit(r, msg, prompt))
        {
            lock (_inflight) _inflight.Remove(id);
            Reject(id, WireStatus.Unavailable, "engine.unavailable", "the engine is restarting", 500);
        }
    }

    private void Cancel(ulong id)
    {
        WorkerRequest? r;
        lock (_inflight) _inflight.TryGetValue(id, out r);
        if (r is not null) _host.CancelInEngine(r.Key);
    }

    private void LoadQuery(FrameHeader h, ReadOnlySpan<byte> payload, long now)
    {
        var p = new PayloadReader(payload);
        if (!p.TryU32(out uint interval)) { Error(WireStatus.BadRequest, "LOAD_QUERY needs a u32 interval"); return; }
        if ((h.Flags & 1) != 0) { Volatile.Write(ref _loadIntervalTicks, 0); return; }
        if (interval == 0) { lock (Out.Lock) FrameWriter.LoadReport(Out.Writer, _host.CurrentLoad()); return; }
        long ticks = Math.Max(10, interval) * Stopwatch.Frequency / 1000;
        Volatile.Write(ref _nextLoadAt, now);
        Volatile.Write(ref _loadIntervalTicks, ticks);
    }

    private void Drain(ReadOnlySpan<byte> payload)
    {
        var p = new PayloadReader(payload);
        if (!p.TryStr16(out var token) || !_host.CheckAdminToken(token))
        {
            Error(WireStatus.Unauthorized, "DRAIN needs the admin token");
            return;
        }
        lock (Out.Lock) FrameWriter.DrainOk(Out.Writer, (uint)_host.Options.Grace.TotalMilliseconds);
        _host.RequestReplicaDrain();
    }

    /// <summary>A request refused before reaching the engine: FINAL with the status, and a metrics record.</summary>
    private void Reject(ulong id, WireStatus status, string detail, string message, uint retryAfterMs = 0)
    {
        var f = new FinalInfo { Status = status, Retriable = WireNames.IsRetriable(status), RetryAfterMs = retryAfterMs };
        lock (Out.Lock) FrameWriter.Final(Out.Writer, id, f, detail, message);
        _host.Report(status, WireFinish.None, null, 0, 0);
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

    internal void OnTimer(long now, bool checkTimeouts)
    {
        if (_closed) return;
        long interval = Volatile.Read(ref _loadIntervalTicks);
        if (interval > 0 && now >= Volatile.Read(ref _nextLoadAt))
        {
            Volatile.Write(ref _nextLoadAt, now + interval);
            lock (Out.Lock) FrameWriter.LoadReport(Out.Writer, _host.CurrentLoad());
            Out.Flush();
        }
        if (!checkTimeouts) return;
        var o = _host.Options;
        double f = Stopwatch.Frequency;
        long partial = Volatile.Read(ref _partialSince);
        if (!_hello && (now - _created) / f > o.HelloTimeout.TotalSeconds) Close("no HELLO in time");
        else if (partial != 0 && (now - partial) / f > o.FrameTimeout.TotalSeconds)
            Fatal(WireStatus.BadRequest, $"a frame did not complete within {o.FrameTimeout.TotalSeconds:F0} s");
        else
        {
            int n;
            lock (_inflight) n = _inflight.Count;
            if (n == 0 && (now - Volatile.Read(ref _lastActivity)) / f > o.IdleTimeout.TotalSeconds) Close("idle");
        }
    }

    /// <summary>Closes the connection; its requests still running are cancelled in the engine.</summary>
    public void Close(string why)
    {
        WorkerRequest[] left;
        if (Interlocked.Exchange(ref _closeOnce, 1) == 1) return;
        lock (_inflight)
        {
            _closed = true;
            left = [.. _inflight.Values];
            _inflight.Clear();
        }
        Out.Close();
        try { _socket.Shutdown(SocketShutdown.Both); } catch (Exception e) when (e is SocketException or ObjectDisposedException) { }
        _socket.Dispose();
        foreach (var r in left) _host.CancelInEngine(r.Key);
        _host.SignalEngine();
        _host.OnSessionClosed(this);
    }
}
