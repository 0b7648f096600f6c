using FastServe.Runtime;
using FastServe.Runtime.Tokenization;

namespace FastServe.Scheduler.Engine;

/// <summary>Knobs of an <see cref="InferenceEngine"/>. Validated by <see cref="Validate"/> (code "engine.invalid_option").</summary>
public sealed record EngineOptions
{
    /// <summary>Token budget of one step: decode rows plus prefill chunk rows (clamped to the executor's capacity).</summary>
    public int MaxBatchedTokens { get; init; } = 512;

    /// <summary>Most sequences running at once (each decodes one token per step); clamped to the executor's capacity.</summary>
    public int MaxSeqs { get; init; } = 64;

    /// <summary>Pipeline the loop: prepare step N+1 and post-process step N−1 while step N runs.</summary>
    public bool Overlap { get; init; } = true;

    /// <summary>Bound on requests waiting for admission; beyond it Submit answers Overloaded.</summary>
    public int MaxWaitingRequests { get; init; } = 4096;

    /// <summary>Bound on prompt tokens waiting for admission; beyond it Submit answers Overloaded.</summary>
    public long MaxWaitingTokens { get; init; } = 1 << 20;

    /// <summary>Queue-time budget of requests without a deadline while the queue stands (CoDel's target): if the queue
    /// has not been empty at any point of the last <see cref="QueueInterval"/>, such a request may wait at most this
    /// long for admission; one that would wait longer is refused (engine.queue_budget) or dropped before its prefill.</summary>
    public TimeSpan QueueTarget { get; init; } = TimeSpan.FromMilliseconds(50);

    /// <summary>CoDel's interval: the budget of requests without a deadline when the queue has emptied within the last
    /// interval (a burst), and the window over which that is judged. Zero: no budget (only the waiting bounds).</summary>
    public TimeSpan QueueInterval { get; init; } = TimeSpan.FromMilliseconds(500);

    /// <summary>Deadline given to requests that bring none (null: none); end to end, like a client's.</summary>
    public TimeSpan? DefaultDeadline { get; init; }

    /// <summary>Share full KV blocks between requests with equal prefixes.</summary>
    public bool PrefixCaching { get; init; } = true;

    /// <summary>Token ids that end generation (unless a request sets IgnoreEos).</summary>
    public IReadOnlyList<int> EosTokenIds { get; init; } = [];

    /// <summary>Needed for requests with stop strings (the engine detokenizes their output to find them).</summary>
    public TextTokenizer? Tokenizer { get; init; }

    /// <summary>Steps kept in the step history ring (for percentiles of step timings).</summary>
    public int StepHistory { get; init; } = 8192;

    /// <summary>Blocks kept free when admitting new prompts while others run, so running decodes are not
    /// preempted the moment a prompt is admitted; 0 = 1% of the cache.</summary>
    public int AdmissionReserveBlocks { get; init; }

    /// <summary>Called on the scheduler thread after every loop iteration that may have delivered tokens or results
    /// to <see cref="IRequestSink"/>s, and before the loop sleeps: the point to flush what sinks batched.
    /// Must not throw or block.</summary>
    public Action? AfterIteration { get; init; }

    /// <summary>Called on the scheduler thread with each finished step's record (metrics). Must not throw or block.</summary>
    public Action<StepRecord>? OnStep { get; init; }

    public void Validate()
    {
        static void Bad(string name, string why) => throw new FastServeException("engine.invalid_option", why, name);
        if (MaxBatchedTokens < 1 || MaxBatchedTokens > 1 << 20) Bad("max_batched_tokens", "max-batched-tokens must be between 1 and 1048576");
        if (MaxSeqs < 1 || MaxSeqs > 1 << 16) Bad("max_seqs", "max-seqs must be between 1 and 65536");
        if (MaxWaitingRequests < 0) Bad("max_waiting_requests", "max waiting requests must be ≥ 0");
        if (MaxWaitingTokens < 0) Bad("max_waiting_tokens", "max waiting tokens must be ≥ 0");
        if (StepHistory < 16 || StepHistory > 1 << 24) Bad("step_history", "step history must be between 16 and 16777216");
        if (QueueTarget < TimeSpan.Zero || QueueTarget > TimeSpan.FromHours(1)) Bad("queue_target", "the queue target must be between 0 and 1 hour");
        if (QueueInterval < TimeSpan.Zero || QueueInterval > TimeSpan.FromHours(1)) Bad("queue_interval", "the queue interval must be between 0 and 1 hour");
        if (QueueInterval > TimeSpan.Zero && QueueTarget > QueueInterval) Bad("queue_target", "the queue target must not exceed the queue interval");
        if (DefaultDeadline is { } dd && (dd <= TimeSpan.Zero || dd > TimeSpan.FromDays(1))) Bad("default_deadline", "the default deadline must be positive and at most a day");
        if (AdmissionReserveBlocks < 0) Bad("admission_reserve_blocks", "admission reserve must be ≥ 0");
    }
}
