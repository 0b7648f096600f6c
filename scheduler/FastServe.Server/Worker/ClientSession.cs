using System.Diagnostics;
using System.Net.Sockets;
using System.Text;
using FastServe.Protocol;
using FastServe.Protocol.Net;
using FastServe.Runtime.Generation;
using FastServe.Server.Ipc;

namespace FastServe.Server.Worker;

/// <summary>
/// One client connection in a worker. <see cref="FrameSession{TRequest}"/> runs the connection (receive loop parsing
/// frames in place, HELLO, PING, LOAD_QUERY, the id and per-connection limit checks, timeouts); here a REQUEST is
/// validated and tokenized and forwarded to the engine, CANCEL and close cancel it in the engine, and DRAIN with the
/// admin token drains the replica. Bad input gets an error frame with a stable status; only a stream that can no
/// longer be trusted (oversized length, wrong magic, a frame that never completes) closes the connection.
/// </summary>
internal sealed class ClientSession : FrameSession<WorkerRequest>
{
    private readonly WorkerHost _host;
    private int _touched;                // 1 while in the engine reader's list of sessions to flush

    public ClientSession(WorkerHost host, Socket socket, long id, Stream? stream = null, bool trusted = false) : base(socket, id, host.SessionOptions, stream, trusted)
    {
        _host = host;
    }

    /// <summary>The session settings of a worker with <paramref name="o"/> (one object for all its sessions).</summary>
    internal static FrameSessionOptions SessionOptionsOf(WorkerOptions o, Protocol.Security.ApiKeyStore? keys = null) =>
        new("server", o.MaxFrame, o.MaxInFlight, o.MaxSendBytes, FrameSessionOptions.Ticks(o.HelloTimeout), FrameSessionOptions.Ticks(o.FrameTimeout),
            $"a frame did not complete within {o.FrameTimeout.TotalSeconds:F0} s", FrameSessionOptions.Ticks(o.IdleTimeout), keys);

    internal bool MarkTouched() => Interlocked.Exchange(ref _touched, 1) == 0;
    internal void ClearTouched() => Volatile.Write(ref _touched, 0);

    protected override HelloOk HelloReply()
    {
        var o = _host.Options;
        int ctx = _host.ContextLength;
        return new HelloOk(Wire.Major, Wire.Minor, o.MaxFrame, Math.Max(0, ctx - 1), o.MaxInFlight,
            (int)o.IdleTimeout.TotalMilliseconds, ctx, o.ServerName, o.ModelName, o.ModelVersion);
    }

    protected override LoadReport CurrentLoad(long now) => _host.CurrentLoad();

    protected override void OnRequest(in FrameHeader h, ReadOnlySpan<byte> payload, long received)
    {
        ulong id = h.Id;
        var pe = RequestView.TryParse(payload, out var v);
        if (pe != RequestParseError.None) { Reject(id, WireStatus.BadRequest, RequestView.DetailCode(pe), "malformed REQUEST payload"); return; }
        switch (_host.State)
        {
            case ReplicaState.Draining: Reject(id, WireStatus.Draining, "server.draining", "the replica is draining; send the request elsewhere", 0); return;
            case ReplicaState.Unavailable: Reject(id, WireStatus.Unavailable, "engine.unavailable", "the engine is restarting", 500); return;
            case ReplicaState.Starting: Reject(id, WireStatus.Unavailable, "engine.starting", "the replica is still starting", 500); return;
        }
        if (!ServesRoute(v, out var notFound)) { Reject(id, WireStatus.NotFound, notFound.Code, notFound.Message); return; }
        int ctx = _host.ContextLength;
        // The shared request rules (RequestRules): the engine checks them again, but a broken one is answered here
        // without tokenizing the prompt or a round trip to the engine.
        if ((RequestRules.CheckSampling(v.MaxTokens, v.Temperature, v.TopP, v.TopK, v.TopLogprobs)
             ?? RequestRules.CheckPriority(v.Priority)
             ?? (v.DeadlineMs != 0 ? RequestRules.CheckDeadline(TimeSpan.FromMilliseconds(v.DeadlineMs)) : null)) is { } bad)
        {
            Reject(id, bad);
            return;
        }

        int[] prompt;
        if (v.PromptIsIds)
        {
            int n = v.PromptIdCount;
            if (n > 0 && RequestRules.CheckPromptLength(n, ctx) is { } tooLong) { Reject(id, tooLong); return; }
            prompt = new int[n];
            int vocab = _host.Vocab;
            for (int i = 0; i < n; i++)
            {
                int t = v.PromptId(i);
                if ((uint)t >= (uint)vocab) { Reject(id, RequestRules.InvalidToken(i, t, vocab)); return; }
                prompt[i] = t;
            }
        }
        else
        {
            if (!Utf8Text.IsValid(v.Prompt)) { Reject(id, WireStatus.BadRequest, "prompt.invalid_utf8", "the prompt is not valid UTF-8"); return; }
            var tok = _host.Tokenizer;
            prompt = tok.Encode(Encoding.UTF8.GetString(v.Prompt), addBos: tok.BosId is not null);
        }
        if (RequestRules.CheckPromptLength(prompt.Length, ctx) is { } badPrompt) { Reject(id, badPrompt); return; }
        // A resume (protocol 1.3): the engine gets the prompt's ids followed by the ids the client already has.
        int[] ids = prompt;
        if (v.IsResume)
        {
            int n = v.ResumeCount;
            if (RequestRules.CheckResume(n, v.MaxTokens, prompt.Length, ctx) is { } badResume) { Reject(id, badResume); return; }
            ids = new int[prompt.Length + n];
            prompt.CopyTo(ids, 0);
            int vocab = _host.Vocab;
            for (int i = 0; i < n; i++)
            {
                int t = v.ResumeId(i);
                if ((uint)t >= (uint)vocab)
                {
                    Reject(id, WireStatus.BadRequest, RequestRules.PromptInvalidToken, $"resumed token {i} is {t}, outside the vocabulary of {vocab}");
                    return;
                }
                ids[prompt.Length + i] = t;
            }
        }

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
            EosEnds = (v.Flags & RequestFlags.IgnoreEos) == 0,
            Logprobs = (v.Flags & RequestFlags.Logprobs) != 0,
            TokenLogprobs = v.WantsTokenLogprobs,
            PromptTokens = prompt.Length,
            Received = received,
            Tokenized = Stopwatch.GetTimestamp(),
        };
        if (v.IsResume && !StartResumed(id, r, v, ctx)) return;
        var msg = new SubmitMsg
        {
            MaxTokens = v.MaxTokens,
            Temperature = v.Temperature,
            TopP = v.TopP,
            TopK = v.TopK,
            Seed = v.Seed,
            Flags = (byte)(((v.Flags & RequestFlags.HasSeed) != 0 ? 1 : 0) | ((v.Flags & RequestFlags.IgnoreEos) != 0 ? 2 : 0)
                | ((v.Flags & RequestFlags.Logprobs) != 0 ? 4 : 0) | (v.WantsTokenLogprobs ? 8 : 0)),
            Priority = v.Priority,
            TopLogprobs = v.TopLogprobs,
            DeadlineMs = v.DeadlineMs,
            ReceivedTicks = received,
            PromptCount = (uint)prompt.Length,
            ResumeCount = (uint)(ids.Length - prompt.Length),
        };
        AddInFlight(id, r);
        msg.SentTicks = Stopwatch.GetTimestamp();
        if (!_host.Submit(r, msg, ids))
        {
            Finished(id);
            Reject(id, WireStatus.Unavailable, "engine.unavailable", "the engine is restarting", 500);
        }
    }

    // Primes a resumed request and sends the client the text it is owed now; when the resumed ids had already ended the
    // generation (the lost replica's FINAL never arrived), answers its FINAL here. True when it goes on to the engine.
    private bool StartResumed(ulong id, WorkerRequest r, in RequestView v, int ctx)
    {
        var owed = new System.Buffers.ArrayBufferWriter<byte>(64);
        if (ResumePriming.Prime(r, v, _host.Tokenizer, r.PromptTokens, ctx, owed, out var finished) is { } bad)
        {
            Reject(id, bad);
            return false;
        }
        lock (Out.Lock)
        {
            if (owed.WrittenCount > 0) FrameWriter.Delta(Out.Writer, id, [], owed.WrittenSpan);
            if (finished == WireFinish.None) return true;
            var f = new FinalInfo { Status = WireStatus.Ok, Finish = finished, PromptTokens = (uint)r.PromptTokens, CompletionTokens = (uint)r.Completion };
            if (r.Logprobs) { f.HasLogprobs = true; f.LogprobMean = f.LogprobMin = float.NaN; }
            FrameWriter.Final(Out.Writer, id, f, (string?)null, null);
        }
        _host.Report(WireStatus.Ok, finished, null, 0, 0, r.PromptTokens);
        return false;
    }

    // A request that names a model (or version) must name this replica's; a replica that declares none takes any.
    private bool ServesRoute(in RequestView v, out (string Code, string Message) notFound)
    {
        notFound = default;
        var o = _host.Options;
        if (!v.Model.IsEmpty && o.ModelName.Length > 0 && !Utf8Equals(v.Model, o.ModelName))
        {
            notFound = ("model.not_found", $"this replica serves model '{o.ModelName}', not '{Utf8Text.Decode(v.Model)}'");
            return false;
        }
        if (!v.ModelVersion.IsEmpty && o.ModelVersion.Length > 0 && !Utf8Equals(v.ModelVersion, o.ModelVersion))
        {
            notFound = ("model.version_not_found", $"this replica serves version '{o.ModelVersion}' of '{o.ModelName}', not '{Utf8Text.Decode(v.ModelVersion)}'");
            return false;
        }
        return true;
    }

    private static bool Utf8Equals(ReadOnlySpan<byte> utf8, string s)
    {
        Span<byte> buf = stackalloc byte[Wire.MaxModelBytes * 3];
        return Encoding.UTF8.TryGetBytes(s, buf, out int n) && utf8.SequenceEqual(buf[..n]);
    }

    private void Reject(ulong id, in RuleViolation broken) => Reject(id, broken.Status, broken.Code, broken.Message);

    protected override void CancelRequest(WorkerRequest request) => _host.CancelInEngine(request.Key);

    protected override void OnDrain(ReadOnlySpan<byte> payload)
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

    // A request refused before reaching the engine still counts in the engine's metrics.
    protected override void OnRejected(WireStatus status) => _host.Report(status, WireFinish.None, null, 0, 0);

    // The cancels Close appended to the engine link leave now, not whenever something else sends.
    protected override void OnClosed()
    {
        _host.SignalEngine();
        _host.OnSessionClosed(this);
    }

    // What this read appended to the engine link (submits, cancels, reports) leaves in one send.
    protected override void OnRepliesFlushed() => _host.SignalEngine();

    protected override void OnInternalError(Exception e) =>
        Console.Error.WriteLine($"fastserve worker {_host.Options.Index}: client session {Id}: internal error: {e.GetType().Name}: {e.Message}");
}
