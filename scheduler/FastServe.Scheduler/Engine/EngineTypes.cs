using System.Diagnostics;
using System.Threading.Channels;
using FastServe.Runtime.Generation;

namespace FastServe.Scheduler.Engine;

/// <summary>Scheduling class. Interactive requests are admitted first and preempted last; batch requests fill
/// spare capacity and are preempted first when KV blocks run out.</summary>
public enum Priority : byte { Interactive = 0, Batch = 1 }

/// <summary>How a request ended. Every request gets exactly one.</summary>
public enum RequestStatus : byte
{
    /// <summary>Generation ran to a natural end; see <see cref="RequestResult.Finish"/>.</summary>
    Finished,
    /// <summary>The caller cancelled it (or the engine shut down).</summary>
    Cancelled,
    /// <summary>Its deadline passed before it finished; the tokens produced so far were streamed.</summary>
    DeadlineExceeded,
    /// <summary>Rejected at admission: the queue was full, or the estimated wait already exceeded the deadline.
    /// <see cref="RequestResult.RetryAfter"/> says when trying again is sensible.</summary>
    Overloaded,
    /// <summary>Rejected at admission: the request itself is invalid (<see cref="RequestResult.ErrorCode"/>).</summary>
    Invalid,
    /// <summary>The engine failed while running it (a bug or a device fault); <see cref="RequestResult.ErrorCode"/>.</summary>
    Failed,
}

/// <summary>Stable wire names of <see cref="RequestStatus"/> (finish reasons: <see cref="FinishReasonNames"/>).</summary>
public static class StatusNames
{
    public static string Of(RequestStatus s) => s switch
    {
        RequestStatus.Finished => "finished",
        RequestStatus.Cancelled => "cancelled",
        RequestStatus.DeadlineExceeded => "deadline_exceeded",
        RequestStatus.Overloaded => "overloaded",
        RequestStatus.Invalid => "invalid",
        _ => "failed",
    };
}

/// <summary>
/// What a caller submits. <see cref="Prompt"/> is read during <see cref="InferenceEngine.Submit"/> only (copied).
/// </summary>
public sealed record EngineRequest
{
    /// <summary>Prompt token ids (at least one; each in the vocabulary; shorter than the context).</summary>
    public required ReadOnlyMemory<int> Prompt { get; init; }
    public SamplingParams Sampling { get; init; } = new();
    /// <summary>Initial output tokens: a generation another engine began (a router's failover, docs/router.md). The
    /// request continues as if it had generated them itself: they follow the prompt in the context, count toward
    /// <see cref="SamplingParams.MaxTokens"/> and the result's <see cref="RequestResult.OutputTokens"/> (but are not
    /// streamed again), and each new token is drawn at the position it takes, so a seeded or greedy request draws
    /// exactly what it would have. Fewer than MaxTokens; with the prompt at most the context; each in the vocabulary
    /// (<c>request.bad_resume</c>, <c>prompt.invalid_token</c>). Read during Submit only (copied).</summary>
    public ReadOnlyMemory<int> Resumed { get; init; }
    public Priority Priority { get; init; } = Priority.Interactive;
    /// <summary>Time allowed from <see cref="ReceivedTicks"/> to the final token; null = none. A request still
    /// running at its deadline ends at once with <see cref="RequestStatus.DeadlineExceeded"/>.</summary>
    public TimeSpan? Deadline { get; init; }
    /// <summary>When the request reached the system (<see cref="Stopwatch.GetTimestamp"/>); 0 = at submission.
    /// A server passes the time it read the request off the socket; an open-loop benchmark the intended arrival.</summary>
    public long ReceivedTicks { get; init; }
    /// <summary>Opaque caller id carried into logs and results.</summary>
    public string? Id { get; init; }
    /// <summary>Where tokens and the result go instead of the handle's stream: a server forwarding to another process
    /// uses it to batch per step without a channel per request. With a sink, <see cref="RequestHandle.Tokens"/> is
    /// empty; <see cref="RequestHandle.Completion"/> still completes.</summary>
    public IRequestSink? Sink { get; init; }
    /// <summary>Passed back to <see cref="Sink"/> with every call (the caller's key for the request).</summary>
    public long SinkTag { get; init; }
}

/// <summary>
/// Receives a request's tokens and its one result. Called on the engine's scheduler thread, except for a request
/// rejected inside <see cref="InferenceEngine.Submit"/>, whose <see cref="OnFinished"/> runs on the submitting
/// thread before Submit returns. Implementations must be quick and must not throw or block (they run inside the
/// scheduling loop); <see cref="EngineOptions.AfterIteration"/> marks where a batch of calls ends.
/// </summary>
public interface IRequestSink
{
    void OnToken(long tag, in TokenEvent token);
    void OnFinished(long tag, RequestResult result);
}

/// <summary>One generated token as streamed. <see cref="Top"/> is set only when log-probabilities were asked for.</summary>
public readonly record struct TokenEvent(int Id, float Logprob, TokenLogprob[]? Top);

/// <summary>Hand-off timestamps of one request, in <see cref="Stopwatch"/> ticks (0 = never reached).</summary>
public readonly record struct RequestTimestamps(long Received, long Admitted, long FirstScheduled, long FirstToken, long Finished)
{
    public static double Seconds(long from, long to) => from == 0 || to == 0 ? double.NaN : (to - from) / (double)Stopwatch.Frequency;

    /// <summary>Time to first token, from receipt; NaN if no token was produced.</summary>
    public double TimeToFirstToken => Seconds(Received, FirstToken);
    /// <summary>End-to-end latency, receipt to final status.</summary>
    public double EndToEnd => Seconds(Received, Finished);
    /// <summary>Time spent queued before first being scheduled on the device.</summary>
    public double QueueWait => Seconds(Received, FirstScheduled);
}

/// <summary>The final status of a request, with its output ids and counters.</summary>
public sealed record RequestResult
{
    public required RequestStatus Status { get; init; }
    /// <summary>Why generation ended when <see cref="Status"/> is Finished.</summary>
    public FinishReason? Finish { get; init; }
    /// <summary>Stable error code for Invalid, Overloaded, DeadlineExceeded, Failed (e.g. "prompt.too_long", "engine.queue_full").</summary>
    public string? ErrorCode { get; init; }
    public string? Message { get; init; }
    /// <summary>For Overloaded: how long to wait before retrying (the engine's estimate of its queue drain).</summary>
    public TimeSpan? RetryAfter { get; init; }
    public int PromptTokens { get; init; }
    /// <summary>Prompt tokens served from the prefix cache at first admission (not recomputed).</summary>
    public int CachedPromptTokens { get; init; }
    /// <summary>Every generated token id, in order (also streamed).</summary>
    public int[] OutputTokens { get; init; } = [];
    /// <summary>Times this request was preempted (its KV dropped and later recomputed).</summary>
    public int Preemptions { get; init; }
    /// <summary>The device time this request cost: over every step that computed rows for it (prefill chunks, decode
    /// rows, recomputes after a preemption), the step's forward time × its rows / the step's rows of requests still
    /// running (rows computed for a request that had already ended are shared by the others). Summed over all
    /// requests, plus <see cref="EngineStats.DeviceUnattributedSeconds"/>, it is the engine's device busy time.</summary>
    public TimeSpan DeviceTime { get; init; }
    public RequestTimestamps Timestamps { get; init; }
    public string? Id { get; init; }
}

/// <summary>
/// A submitted request: its token stream and its one final status. Read <see cref="Tokens"/> (it completes when the
/// request ends) and/or await <see cref="Completion"/>; a caller that never reads the stream loses nothing (the
/// result carries every id).
/// </summary>
public sealed class RequestHandle
{
    private readonly Admission? _admission;
    private readonly Sequence? _seq;
    private readonly long _uid;

    internal RequestHandle(Admission? admission, Sequence? seq, long uid, ChannelReader<TokenEvent> tokens, Task<RequestResult> completion)
    {
        _admission = admission;
        _seq = seq;
        _uid = uid;
        Tokens = tokens;
        Completion = completion;
    }

    public ChannelReader<TokenEvent> Tokens { get; }
    public Task<RequestResult> Completion { get; }

    /// <summary>Ends the request with <see cref="RequestStatus.Cancelled"/> (if it has not ended) and frees its KV
    /// blocks; takes effect at the scheduler's next iteration (well under a step). Safe from any thread, any number of times.</summary>
    public void Cancel()
    {
        if (_admission is not null && _seq is not null && !Completion.IsCompleted) _admission.Cancel(_seq, _uid);
    }
}
