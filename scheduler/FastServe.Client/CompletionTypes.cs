using FastServe.Protocol;

namespace FastServe.Client;

/// <summary>
/// One completion to run on a replica: a prompt (UTF-8 text, tokenized by the server, or token ids), the sampling and
/// scheduling fields of a REQUEST, and up to <see cref="Wire.MaxStops"/> stop strings.
/// </summary>
/// <remarks>
/// Start from <see cref="RequestParams.Default"/> (<c>RequestParams.Default with { MaxTokens = 50 }</c>): a bare
/// <c>new RequestParams()</c> has <c>TopP = 0</c>, which breaks the request rules (<see cref="RequestRules"/>): the
/// client refuses it before sending, as <c>bad_request</c> with detail <c>sampling.invalid</c>, as a server would.
/// </remarks>
public sealed record CompletionRequest
{
    /// <summary>Prompt text; the server tokenizes it. Give this or <see cref="PromptIds"/>, not both.</summary>
    public string? Prompt { get; init; }
    /// <summary>Prompt as token ids of the served model's vocabulary. Give this or <see cref="Prompt"/>, not both.</summary>
    public int[]? PromptIds { get; init; }
    /// <summary>Sampling and scheduling fields (max tokens, temperature, top-p/k, seed, deadline, priority, flags).</summary>
    public RequestParams Params { get; init; } = RequestParams.Default;
    /// <summary>Stop strings: at most <see cref="RequestRules.MaxStops"/> (8), each 1 to 256 UTF-8 bytes. Null or empty for none.</summary>
    public IReadOnlyList<string>? Stops { get; init; }
}

/// <summary>
/// One DELTA of a streamed completion: the token ids generated since the last delta and the UTF-8 text they completed.
/// The server never splits a UTF-8 sequence across deltas, so concatenating <see cref="Text"/> gives the full text.
/// Either may be empty (text held back by a possible stop string, or a request sent with <c>NoText</c>).
/// <see cref="Logprobs"/>: for a request sent with <c>TokenLogprobs</c> (protocol 1.4), each generated token's
/// log-probability and alternatives, in order (an EOS that ended the request has none); null otherwise.
/// </summary>
public readonly record struct CompletionDelta(int[] Ids, string Text, TokenLogprobs[]? Logprobs = null);

/// <summary>
/// Why a call failed on the client side, without a FINAL from the server. <see cref="None"/> when the server's
/// FINAL decided the outcome (which may itself be an error status).
/// </summary>
public enum ClientFailure : byte
{
    /// <summary>The server's FINAL gave the result.</summary>
    None = 0,
    /// <summary>
    /// The connection broke (closed by the peer, a socket error, a protocol error, a fatal server ERROR, or the client
    /// was disposed) before the FINAL arrived. Status <see cref="WireStatus.Unavailable"/>, status name
    /// <c>connection_lost</c>, retriable: the server may or may not have run the request.
    /// </summary>
    ConnectionLost = 1,
    /// <summary>
    /// The client's unsent bytes were over <see cref="FastServeClientOptions.MaxPendingSendBytes"/> (the server or the
    /// network is not keeping up), so the REQUEST was never sent. Status <see cref="WireStatus.TooManyRequests"/>,
    /// status name <c>send_buffer_full</c>, retriable.
    /// </summary>
    SendBufferFull = 2,
    /// <summary>
    /// The client refused the request before sending it, for a reason the server would also refuse it: a broken
    /// request rule (<see cref="RequestRules"/>: the server's detail code, e.g. <c>sampling.invalid</c>,
    /// <c>request.invalid_priority</c>, <c>request.invalid_deadline</c>), or a <c>client.*</c> code for what only the
    /// sending side sees (frame over the server's <c>max_frame</c>, too many or bad stop strings, both prompt forms
    /// given). Status <see cref="WireStatus.TooLarge"/> or <see cref="WireStatus.BadRequest"/>.
    /// </summary>
    Rejected = 3,
    /// <summary>
    /// The client's adaptive throttle (<see cref="FastServeClientOptions.AdaptiveThrottling"/>) refused the request
    /// locally because the server has been refusing requests for load; nothing was sent. Status
    /// <see cref="WireStatus.Overloaded"/> (as a server's refusal), status name <c>throttled</c>, detail
    /// <c>client.throttled</c>, retriable, with a <see cref="CompletionResult.RetryAfter"/> hint.
    /// </summary>
    Throttled = 4,
}

/// <summary>
/// The server's hand-off timing of one request from FINAL: microseconds after the server read the REQUEST, 0 when
/// the request never reached that point (docs/protocol.md, "FINAL payload").
/// </summary>
/// <param name="DeviceUs">Not a hand-off: the device time the request cost, µs (protocol 1.1; 0 from older servers).</param>
public readonly record struct ServerTimings(uint TokenizedUs, uint EngineReceivedUs, uint AdmittedUs, uint FirstScheduledUs,
    uint FirstTokenUs, uint EngineFinishedUs, uint FinalSentUs, uint DeviceUs = 0)
{
    /// <summary>Reads the named slots of a FINAL's timing array.</summary>
    public static ServerTimings From(in TimingSlots t) => new(t[(int)Timing.Tokenized], t[(int)Timing.EngineReceived], t[(int)Timing.Admitted],
        t[(int)Timing.FirstScheduled], t[(int)Timing.FirstToken], t[(int)Timing.EngineFinished], t[(int)Timing.FinalSent], t[(int)Timing.Device]);

    /// <summary>The slot's microseconds (0 = not reached).</summary>
    public uint this[Timing slot] => slot switch
    {
        Timing.Tokenized => TokenizedUs,
        Timing.EngineReceived => EngineReceivedUs,
        Timing.Admitted => AdmittedUs,
        Timing.FirstScheduled => FirstScheduledUs,
        Timing.FirstToken => FirstTokenUs,
        Timing.EngineFinished => EngineFinishedUs,
        Timing.FinalSent => FinalSentUs,
        Timing.Device => DeviceUs,
        _ => 0,
    };

    /// <summary>The slots in <see cref="Timing"/> order with their wire names (for printing); the last, <c>device</c>, is a
    /// duration, the others hand-offs.</summary>
    public static readonly (Timing Slot, string Name)[] Names =
    [
        (Timing.Tokenized, "tokenized"), (Timing.EngineReceived, "engine_received"), (Timing.Admitted, "admitted"),
        (Timing.FirstScheduled, "first_scheduled"), (Timing.FirstToken, "first_token"), (Timing.EngineFinished, "engine_finished"),
        (Timing.FinalSent, "final_sent"), (Timing.Device, "device"),
    ];
}

/// <summary>
/// How a completion ended: the server's FINAL (status, finish reason, token counts, timing breakdown), the output the
/// client collected from the deltas, and client-side latencies. Client-side timestamps are
/// <see cref="System.Diagnostics.Stopwatch"/> ticks (0 = not reached).
/// </summary>
public sealed record CompletionResult
{
    /// <summary>The wire status; for a <see cref="ClientFailure"/> the closest wire status (see that enum).</summary>
    public required WireStatus Status { get; init; }
    /// <summary>Stable snake_case name: the wire status name, or <c>connection_lost</c> / <c>send_buffer_full</c> /
    /// <c>throttled</c>.</summary>
    public required string StatusName { get; init; }
    public ClientFailure ClientFailure { get; init; }
    /// <summary>Why generation stopped, when <see cref="Status"/> is <c>ok</c>.</summary>
    public WireFinish Finish { get; init; }
    public string FinishName => WireNames.Of(Finish);
    /// <summary>Stable detail code (e.g. <c>prompt.too_long</c>, <c>client.connection_closed</c>); null when ok.</summary>
    public string? Detail { get; init; }
    /// <summary>Human-readable explanation; null when ok.</summary>
    public string? Message { get; init; }
    /// <summary>Whether sending the same request again (here or elsewhere) may succeed.</summary>
    public bool Retriable { get; init; }
    /// <summary>The server's back-off hint (overloaded, unavailable, draining), or the throttle's for a
    /// <see cref="ClientFailure.Throttled"/> call; null when none was given.</summary>
    public TimeSpan? RetryAfter { get; init; }
    public int PromptTokens { get; init; }
    public int CachedPromptTokens { get; init; }
    /// <summary>Tokens generated, as counted by the server.</summary>
    public int CompletionTokens { get; init; }
    public int Preemptions { get; init; }
    /// <summary>Token ids received in deltas (empty when the client does not collect output).</summary>
    public int[] Ids { get; init; } = [];
    /// <summary>Text received in deltas (empty when the client does not collect output).</summary>
    public string Text { get; init; } = "";
    /// <summary>Token ids counted over the deltas received (kept even when output is not collected).</summary>
    public int ReceivedTokens { get; init; }
    public ServerTimings ServerTimings { get; init; }
    /// <summary>Mean log-probability of the generated tokens, for a request sent with <c>Logprobs</c> to a 1.2 server;
    /// NaN otherwise.</summary>
    public double LogprobMean { get; init; } = double.NaN;
    /// <summary>The lowest log-probability among the generated tokens (a confidence: a cascade escalates on it); NaN
    /// as <see cref="LogprobMean"/>.</summary>
    public double LogprobMin { get; init; } = double.NaN;
    /// <summary>For a request sent with <c>TokenLogprobs</c> (protocol 1.4) on a client that collects output: every
    /// generated token's log-probability and alternatives from the deltas, in order; null otherwise.</summary>
    public TokenLogprobs[]? TokenLogprobs { get; init; }
    /// <summary>When the call was started (its REQUEST queued for sending).</summary>
    public long StartedTimestamp { get; init; }
    /// <summary>When the first DELTA carrying at least one token id arrived; 0 if none did.</summary>
    public long FirstTokenTimestamp { get; init; }
    /// <summary>When the FINAL arrived, or the call failed on the client side.</summary>
    public long FinalTimestamp { get; init; }

    public bool IsOk => Status == WireStatus.Ok && ClientFailure == ClientFailure.None;

    /// <summary>Client-side time to first token, from <see cref="StartedTimestamp"/>; null without a token.</summary>
    public TimeSpan? TimeToFirstToken => FirstTokenTimestamp == 0 ? null : Ticks(FirstTokenTimestamp - StartedTimestamp);
    /// <summary>Client-side time from start to FINAL.</summary>
    public TimeSpan EndToEnd => Ticks(FinalTimestamp - StartedTimestamp);
    /// <summary>Mean time per output token after the first: (FINAL − first token) / (completion tokens − 1);
    /// null with fewer than two tokens.</summary>
    public TimeSpan? TimePerOutputToken => FirstTokenTimestamp == 0 || CompletionTokens < 2
        ? null : Ticks((FinalTimestamp - FirstTokenTimestamp) / (double)(CompletionTokens - 1));

    private static TimeSpan Ticks(double stopwatchTicks) =>
        TimeSpan.FromTicks((long)(stopwatchTicks * TimeSpan.TicksPerSecond / System.Diagnostics.Stopwatch.Frequency));
}
