using System.Buffers;
using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using System.Text;
using FastServe.Protocol;
using FastServe.Protocol.Net;
using FastServe.Protocol.Security;
using FastServe.Runtime;
using FastServe.Runtime.Formats;
using FastServe.Runtime.Tokenization;
using FastServe.Scheduler.Engine;
using FastServe.Server.Ipc;

namespace FastServe.Server.Worker;

/// <summary>
/// A worker process: owns client connections on the shared port (SO_REUSEPORT, the kernel spreads connections over
/// the workers), parses frames, tokenizes prompts, forwards requests to the engine over IPC, and turns the
/// engine's token ids into text deltas (incremental detokenization that never splits a UTF-8 sequence, stop
/// strings held back until they cannot match). CPU work per request lives here, off the engine's process.
/// </summary>
public sealed class WorkerHost : IDisposable
{
    private readonly ConcurrentDictionary<ulong, WorkerRequest> _requests = new();
    private readonly ConcurrentDictionary<long, ClientSession> _sessions = new();
    private readonly List<ClientSession> _touched = [];          // engine-reader thread only
    private readonly Socket _listener;
    private readonly EngineClient _engine;
    private readonly ManualResetEventSlim _exit = new(false);
    private readonly byte[]? _adminToken;
    private readonly ApiKeyStore? _keys;
    private readonly List<CounterValue> _counters = new();     // timer thread only
    private readonly CertificateSource? _tls;
    private long _nextKey, _nextSession;
    private volatile bool _draining;
    private readonly ArrayBufferWriter<byte> _text = new(4096);    // engine-reader thread only: a delta's text
    private readonly ArrayBufferWriter<byte> _piece = new(256);    // engine-reader thread only: one token's text
    private readonly ArrayBufferWriter<byte> _lp = new(256);       // engine-reader thread only: a delta's log-probability section

    public WorkerHost(WorkerOptions options)
    {
        // Socket completions run on the epoll thread instead of hopping to the thread pool: a worker's continuations
        // only parse, tokenize and append to buffers (they never block), and on a few busy cores the hop (a thread
        // wake-up per readable socket) cost more than the work. Read once, before the first socket exists.
        Environment.SetEnvironmentVariable("DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS", "1");
        Options = options;
        Action<string> log = line => Console.Error.WriteLine($"fastserve worker {options.Index}: {line}");
        var extra = options.ProbeKey is { Length: > 0 } pk ? new[] { ("supervisor", pk) } : null;
        _keys = ApiKeyStore.Create(options.ApiKeysFile, Environment.GetEnvironmentVariable(ApiKeyStore.EnvVar), log, out var keyError, extra);
        if (keyError is { } ke) throw new FastServeException(ke.Code, ke.Message);
        if (options.TlsCert is not null && options.TlsKey is not null)
        {
            _tls = CertificateSource.Create(options.TlsCert, options.TlsKey, log, out var tlsError);
            if (tlsError is { } te) throw new FastServeException(te.Code, te.Message);
        }
        SessionOptions = ClientSession.SessionOptionsOf(options, _keys);
        var config = ModelConfig.Load(Path.Combine(options.ModelDir, "config.json"));
        Tokenizer = TextTokenizer.Load(options.ModelDir, config.BosTokenId, config.EosTokenIds.Count > 0 ? config.EosTokenIds : null);
        StartTrace.Mark("tokenizer");
        _adminToken = options.AdminToken is { Length: > 0 } t ? Encoding.UTF8.GetBytes(t) : null;
        _listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        Native.ReusePort(_listener);
        _listener.Bind(new IPEndPoint(IPAddress.Parse(options.Host), options.Port));
        _listener.Listen(1024);
        StartTrace.Mark("listening");
        _engine = new EngineClient(this, options.IpcPath);
    }

    public WorkerOptions Options { get; }
    /// <summary>What every client session runs with (built from <see cref="Options"/>).</summary>
    internal FrameSessionOptions SessionOptions { get; }
    internal TextTokenizer Tokenizer { get; }
    internal bool Draining => _draining;
    internal int InFlight => _requests.Count;

    public int Run()
    {
        using var term = PosixSignalRegistration.Create(PosixSignal.SIGTERM, c => { c.Cancel = true; BeginDrain(); });
        using var intr = PosixSignalRegistration.Create(PosixSignal.SIGINT, c => { c.Cancel = true; BeginDrain(); });
        _engine.Start();
        new Thread(TimerLoop) { IsBackground = true, Name = "fastserve-worker-timer" }.Start();
        _ = AcceptLoop();
        _exit.Wait();
        return 0;
    }

    private async Task AcceptLoop()
    {
        while (true)
        {
            Socket s;
            try { s = await _listener.AcceptAsync().ConfigureAwait(false); }
            catch (Exception e) when (e is SocketException or ObjectDisposedException) { return; }
            s.NoDelay = true;
            if (_tls is null) StartSession(s, null);
            else _ = AcceptTlsAsync(s, _tls);
        }
    }

    // The TLS handshake runs here, off the accept loop, within the HELLO timeout; a failed one closes the socket.
    private async Task AcceptTlsAsync(Socket s, CertificateSource tls)
    {
        var ssl = await tls.AcceptAsync(s, Options.HelloTimeout).ConfigureAwait(false);
        if (ssl is null) { s.Dispose(); return; }
        StartSession(s, ssl);
    }

    private void StartSession(Socket s, Stream? stream, bool trusted = false)
    {
        long id = Interlocked.Increment(ref _nextSession);
        var session = new ClientSession(this, s, id, stream, trusted);
        _sessions[id] = session;
        session.Start();
    }

    /// <summary>The API keys this worker enforces, null when none are configured (for a listener beside the binary
    /// one, such as HTTP: <see cref="ApiKeyStore.TryAuthenticate(string, out string)"/>).</summary>
    public ApiKeyStore? Keys => _keys;

    /// <summary>The client port's TLS certificate source, null for plaintext (for another listener's TLS, such as
    /// Kestrel's certificate selector: <see cref="CertificateSource.Current"/>).</summary>
    public CertificateSource? Tls => _tls;

    /// <summary>
    /// Starts a client session on an in-process connection (the server end of a socket pair from the HTTP front door,
    /// docs/http.md), as if accepted from the listener; its HELLO skips the API key check (the front door authenticated
    /// its caller) and it has no TLS. False (the socket disposed) once draining.
    /// </summary>
    public bool AcceptLocal(Socket s)
    {
        if (_draining) { s.Dispose(); return false; }
        StartSession(s, null, trusted: true);
        return true;
    }

    internal void OnSessionClosed(ClientSession s) => _sessions.TryRemove(s.Id, out _);

    // ---- admission (session receive loops) -------------------------------------------------------------------

    internal ulong NextKey() => (ulong)Interlocked.Increment(ref _nextKey);

    /// <summary>The replica's readiness as this worker sees it.</summary>
    internal ReplicaState State
    {
        get
        {
            if (_draining) return ReplicaState.Draining;
            if (!_engine.Connected) return ReplicaState.Unavailable;
            var l = _engine.Load;
            return l.TakenTicks == 0 ? ReplicaState.Starting : (ReplicaState)l.State;
        }
    }

    /// <summary>Engine linked and ready, not draining (the HTTP front door's <c>GET /ready</c>).</summary>
    public bool IsReady => State == ReplicaState.Ready;

    internal int ContextLength => _engine.Hello.Context > 0 ? _engine.Hello.Context : 0;
    internal int Vocab => _engine.Hello.Vocab;

    /// <summary>Registers and forwards a request; false if the engine link is down.</summary>
    internal bool Submit(WorkerRequest r, in SubmitMsg msg, int[] prompt)
    {
        _requests[r.Key] = r;
        var state = (msg, prompt, r.Key);
        if (_engine.TrySend(state, static (w, s) => Ipc.Ipc.Write(w, IpcType.Submit, s.Key, s.msg, MemoryMarshal.AsBytes(s.prompt.AsSpan()))))
            return true;
        _requests.TryRemove(r.Key, out _);
        return false;
    }

    internal void CancelInEngine(ulong key) => _engine.TrySend(key, static (w, k) => Ipc.Ipc.WriteEmpty(w, IpcType.Cancel, k));

    internal void SignalEngine() => _engine.Signal();

    internal LoadReport CurrentLoad()
    {
        var l = _engine.Load;
        return new LoadReport(State, l.Workers, (int)l.Running, (int)l.Queued, (int)l.InFlight, l.KvFreeFraction, (int)l.EstimatedWaitMs,
            (int)l.MaxRunning, _engine.LoadAgeMs(l), Options.ModelName, Options.ModelVersion);
    }

    internal bool CheckAdminToken(ReadOnlySpan<byte> token) =>
        _adminToken is not null && CryptographicEquals(token, _adminToken);

    private static bool CryptographicEquals(ReadOnlySpan<byte> a, ReadOnlySpan<byte> b) =>
        System.Security.Cryptography.CryptographicOperations.FixedTimeEquals(a, b);

    /// <summary>An authenticated DRAIN: ask the supervisor to drain the whole replica (it signals every process).</summary>
    internal void RequestReplicaDrain()
    {
        BeginDrain();
        if (Options.ParentPid > 1) Native.Kill(Options.ParentPid, Native.SIGTERM);
    }

    // ---- engine output (engine-link reader thread) -----------------------------------------------------------

    /// <summary>Ids the engine generated for request <paramref name="key"/>; <paramref name="logprobs"/> is, for a
    /// request that asked for per-token log-probabilities, the IPC message's part after the id (f32 logprob, u8 k,
    /// k × (i32 id, f32 logprob)) of its one id.</summary>
    internal void OnTokens(ulong key, ReadOnlySpan<int> ids, ReadOnlySpan<byte> logprobs = default)
    {
        if (!_requests.TryGetValue(key, out var r) || r.Done) return;
        long now = Stopwatch.GetTimestamp();
        if (r.FirstTokenSent == 0) r.FirstTokenSent = now;
        r.LastTokenSent = now;
        r.Completion += ids.Length;
        _text.ResetWrittenCount();
        if (r.Decoder is not null)
        {
            foreach (int id in ids)
            {
                // The engine sends the EOS that ended a request as its last id; it is not part of the text.
                if (r.EosEnds && Tokenizer.IsEos(id)) continue;
                if (r.AppendText(id, _piece, _text)) break;
            }
        }
        var section = r.TokenLogprobs && ids.Length == 1 && !logprobs.IsEmpty ? LogprobSection(r, ids[0], logprobs) : default;
        var session = r.Session;
        lock (session.Out.Lock) FrameWriter.Delta(session.Out.Writer, r.ClientId, ids, Unsent(r, _text.WrittenSpan), section);
        Touch(session);
        if (r.Stop?.Stopped == true)
        {
            r.Done = true;
            var f = new FinalInfo { Status = WireStatus.Ok, Finish = WireFinish.Stop };
            FinishToClient(r, ref f, default, null, null);
            CancelInEngine(key);
        }
    }

    // A DELTA's log-probability section for one token, each token named by its bytes (DeltaLogprobs): no entry for an
    // EOS that ends the request, since it adds no output.
    private ReadOnlySpan<byte> LogprobSection(WorkerRequest r, int id, ReadOnlySpan<byte> lp)
    {
        _lp.ResetWrittenCount();
        int at = DeltaLogprobs.Begin(_lp);
        int entries = 0;
        if (!(r.EosEnds && Tokenizer.IsEos(id)))
        {
            var tok = Tokenizer;
            int k = lp[4];
            DeltaLogprobs.WriteToken(_lp, id, System.Buffers.Binary.BinaryPrimitives.ReadSingleLittleEndian(lp), tok.RawTokenBytes(id), k);
            for (int i = 0; i < k; i++)
            {
                var alt = lp[(5 + 8 * i)..];
                int altId = System.Buffers.Binary.BinaryPrimitives.ReadInt32LittleEndian(alt);
                DeltaLogprobs.WriteTop(_lp, altId, System.Buffers.Binary.BinaryPrimitives.ReadSingleLittleEndian(alt[4..]), tok.RawTokenBytes(altId));
            }
            entries = 1;
        }
        DeltaLogprobs.End(_lp, at, entries);
        return _lp.WrittenSpan;
    }

    internal void OnFinal(ulong key, in FinalMsg m, ReadOnlySpan<byte> code, ReadOnlySpan<byte> message)
    {
        if (!_requests.TryRemove(key, out var r) || r.Done) return;
        // Text held back (an unfinished character, a possible stop-string start) is released at the end.
        if (r.Decoder is not null)
        {
            _text.ResetWrittenCount();
            if (r.Stop is null) r.Decoder.FlushUtf8(_text);
            else
            {
                _piece.ResetWrittenCount();
                r.Decoder.FlushUtf8(_piece);
                r.Stop.AppendUtf8(_piece.WrittenSpan, _text);
                r.Stop.FlushUtf8(_text);
            }
            var unsent = Unsent(r, _text.WrittenSpan);
            if (unsent.Length > 0)
            {
                lock (r.Session.Out.Lock) FrameWriter.Delta(r.Session.Out.Writer, r.ClientId, [], unsent);
            }
        }
        var status = (RequestStatus)m.Status;
        string codeStr = status == RequestStatus.Finished ? "" : Encoding.UTF8.GetString(code);
        var f = new FinalInfo
        {
            Status = MapStatus(status, codeStr),
            Finish = (WireFinish)m.Finish,
            RetryAfterMs = m.RetryAfterMs,
            PromptTokens = m.PromptTokens,
            CachedPromptTokens = m.CachedPromptTokens,
            CompletionTokens = m.CompletionTokens,
            Preemptions = m.Preemptions,
        };
        if (f.Status == WireStatus.Unavailable && f.RetryAfterMs == 0) f.RetryAfterMs = 500;
        f.Retriable = WireNames.IsRetriable(f.Status);
        FinishToClient(r, ref f, m, f.Status == WireStatus.Ok ? null : codeStr, f.Status == WireStatus.Ok ? null : Encoding.UTF8.GetString(message));
    }

    // The output text less what a resumed request's client already has (WorkerRequest.SkipBytes).
    private static ReadOnlySpan<byte> Unsent(WorkerRequest r, ReadOnlySpan<byte> text)
    {
        if (r.SkipBytes == 0) return text;
        int k = (int)Math.Min(r.SkipBytes, text.Length);
        r.SkipBytes -= k;
        return text[k..];
    }

    private static WireStatus MapStatus(RequestStatus s, string code) => s switch
    {
        RequestStatus.Finished => WireStatus.Ok,
        RequestStatus.Cancelled when code is "engine.shutdown" or "engine.starting" => WireStatus.Unavailable,
        RequestStatus.Cancelled => WireStatus.Cancelled,
        RequestStatus.DeadlineExceeded => WireStatus.DeadlineExceeded,
        RequestStatus.Overloaded => WireStatus.Overloaded,
        RequestStatus.Invalid when code == "prompt.too_long" => WireStatus.TooLarge,
        RequestStatus.Invalid => WireStatus.BadRequest,
        _ => WireStatus.Internal,
    };

    /// <summary>Writes FINAL (with the hand-off timings) and reports the request's figures to the engine's metrics.</summary>
    private void FinishToClient(WorkerRequest r, ref FinalInfo f, in FinalMsg m, string? code, string? message)
    {
        long now = Stopwatch.GetTimestamp();
        long t0 = r.Received;
        f.Timings[(int)Timing.Tokenized] = Micros(t0, r.Tokenized);
        f.Timings[(int)Timing.EngineReceived] = Micros(t0, m.EngineReceived);
        f.Timings[(int)Timing.Admitted] = Micros(t0, m.Admitted);
        f.Timings[(int)Timing.FirstScheduled] = Micros(t0, m.FirstScheduled);
        f.Timings[(int)Timing.FirstToken] = Micros(t0, r.FirstTokenSent);
        f.Timings[(int)Timing.EngineFinished] = Micros(t0, m.Finished);
        f.Timings[(int)Timing.FinalSent] = Micros(t0, now);
        f.Timings[(int)Timing.Device] = m.DeviceUs;
        if (r.Logprobs)
        {
            f.HasLogprobs = true;
            f.LogprobMean = m.HasLogprobs != 0 ? m.LogprobMean : float.NaN;
            f.LogprobMin = m.HasLogprobs != 0 ? m.LogprobMin : float.NaN;
        }
        if (f.CompletionTokens == 0) f.CompletionTokens = (uint)r.Completion;
        if (f.PromptTokens == 0) f.PromptTokens = (uint)r.PromptTokens;
        var session = r.Session;
        session.Finished(r.ClientId);
        lock (session.Out.Lock) FrameWriter.Final(session.Out.Writer, r.ClientId, f, code, message);
        Touch(session);
        Report(f.Status, f.Finish, r, m.FirstScheduled, now, deviceUs: m.DeviceUs);
    }

    /// <summary>Sends the engine a finished request's figures for the metrics endpoint.</summary>
    internal void Report(WireStatus status, WireFinish finish, WorkerRequest? r, long firstScheduled, long now, int promptTokens = 0, uint deviceUs = 0)
    {
        double f = Stopwatch.Frequency;
        var rep = new ReportMsg { Status = (ushort)status, Finish = (byte)finish, QueueSeconds = float.NaN, TtftSeconds = float.NaN, TpotSeconds = float.NaN, E2eSeconds = float.NaN,
            PromptTokens = (uint)promptTokens, DeviceSeconds = deviceUs / 1e6f };
        if (r is not null)
        {
            rep.PromptTokens = (uint)r.PromptTokens;
            rep.CompletionTokens = (uint)(r.Completion - r.Resumed);   // generated here
            rep.E2eSeconds = (float)((now - r.Received) / f);
            if (firstScheduled != 0) rep.QueueSeconds = (float)((firstScheduled - r.Received) / f);
            if (r.FirstTokenSent != 0) rep.TtftSeconds = (float)((r.FirstTokenSent - r.Received) / f);
            // Over the tokens generated here (a resumed request's first ids came from another replica).
            int here = r.Completion - r.Resumed;
            if (here > 1) rep.TpotSeconds = (float)((r.LastTokenSent - r.FirstTokenSent) / f / (here - 1));
        }
        _engine.TrySend(rep, static (w, x) => Ipc.Ipc.Write(w, IpcType.Report, 0, x));
    }

    private static uint Micros(long from, long to) =>
        to == 0 || from == 0 || to < from ? 0 : (uint)Math.Min(uint.MaxValue, (to - from) * 1_000_000 / Stopwatch.Frequency);

    private void Touch(ClientSession s)
    {
        if (s.MarkTouched()) _touched.Add(s);
    }

    /// <summary>After each batch from the engine: one flush per connection that got frames.</summary>
    internal void FlushTouched()
    {
        foreach (var s in _touched) { s.ClearTouched(); s.Out.Flush(); }
        _touched.Clear();
    }

    /// <summary>The engine went away (killed, or restarting): every request in flight ends `unavailable`, retriable.</summary>
    internal void OnEngineLost()
    {
        foreach (var kv in _requests)
        {
            if (!_requests.TryRemove(kv.Key, out var r) || r.Done) continue;
            var f = new FinalInfo { Status = WireStatus.Unavailable, Retriable = true, RetryAfterMs = 500 };
            FinishToClient(r, ref f, default, "engine.lost", "the engine process went away; the replica is restarting it");
        }
        FlushTouched();
        if (!_draining) Console.Error.WriteLine($"fastserve worker {Options.Index}: lost the engine; reconnecting");
    }

    // ---- timers, drain -------------------------------------------------------------------------------------

    private void TimerLoop()
    {
        long tick = 0;
        while (!_exit.IsSet)
        {
            Thread.Sleep(10);
            long now = Stopwatch.GetTimestamp();
            foreach (var kv in _sessions) kv.Value.OnTimer(now, tick % 25 == 0);
            if (tick % 100 == 0) SendCounters();
            tick++;
        }
    }

    /// <summary>This worker's HTTP answers by endpoint and status, where it serves HTTP (set by the command that
    /// starts the front door); shipped with the key counters to the engine's /metrics.</summary>
    public Func<IEnumerable<(string Endpoint, int Status, long Count)>>? HttpCounts { get; set; }

    // Every second: this worker's cumulative key and HTTP counters to the engine, which serves their sums.
    private void SendCounters()
    {
        _counters.Clear();
        if (_keys is { } k)
        {
            foreach (var u in k.Usage)
            {
                _counters.Add(new CounterValue(CounterKind.KeyConnections, u.Name, "", u.Connections));
                _counters.Add(new CounterValue(CounterKind.KeyRequests, u.Name, "", u.Requests));
            }
            _counters.Add(new CounterValue(CounterKind.AuthRefused, "key_required", "", k.RefusedMissing));
            _counters.Add(new CounterValue(CounterKind.AuthRefused, "invalid_key", "", k.RefusedInvalid));
            _counters.Add(new CounterValue(CounterKind.KeyReloads, "", "", k.Reloads));
            _counters.Add(new CounterValue(CounterKind.KeyReloadFailures, "", "", k.ReloadFailures));
        }
        if (HttpCounts is { } http)
            foreach (var (endpoint, status, count) in http())
                _counters.Add(new CounterValue(CounterKind.HttpRequests, endpoint, status.ToString(System.Globalization.CultureInfo.InvariantCulture), count));
        if (_counters.Count == 0) return;
        // The link's writer thread flushes within 200 ms; no need to push from this thread.
        _engine.TrySend(_counters, static (w, c) => WorkerCounters.Write(w, c));
    }

    public void BeginDrain()
    {
        if (_draining) return;
        _draining = true;
        new Thread(() =>
        {
            long until = Stopwatch.GetTimestamp() + (long)(Options.Grace.TotalSeconds * Stopwatch.Frequency);
            while (_requests.Count > 0 && Stopwatch.GetTimestamp() < until) Thread.Sleep(10);
            foreach (var kv in _requests)
            {
                if (!_requests.TryRemove(kv.Key, out var r) || r.Done) continue;
                var f = new FinalInfo { Status = WireStatus.Draining, Retriable = r.Completion == 0 };
                lock (r.Session.Out.Lock) FrameWriter.Final(r.Session.Out.Writer, r.ClientId, f, "server.drain_grace_expired", "the replica drained before this request finished");
                r.Session.Out.Flush();
            }
            // Give the last frames a moment to leave, then close every connection cleanly.
            Thread.Sleep(50);
            foreach (var kv in _sessions) kv.Value.Close("draining");
            _exit.Set();
        }) { IsBackground = true, Name = "fastserve-drain" }.Start();
    }

    public void Dispose()
    {
        _exit.Set();
        _engine.Stop();
        _listener.Dispose();
        _keys?.Dispose();
        _tls?.Dispose();
        foreach (var kv in _sessions) kv.Value.Close("shutting down");
    }
}
