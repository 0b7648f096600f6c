using System.Collections.Concurrent;
using System.Diagnostics;
using System.Threading.Channels;
using FastServe.Protocol;
using FastServe.Runtime;
using FastServe.Runtime.Generation;
using Microsoft.Extensions.ObjectPool;

namespace FastServe.Scheduler.Engine;

/// <summary>
/// The engine's front door: the only engine code that submitter threads run. <see cref="Submit"/> validates a
/// request, enforces the waiting bounds (<see cref="EngineOptions.MaxWaitingRequests"/>,
/// <see cref="EngineOptions.MaxWaitingTokens"/>), refuses a request that could not finish by its deadline or would
/// wait beyond the queue budget (estimates from <see cref="OverloadControl"/>), and hands an accepted
/// request to the scheduler thread through the incoming channel. Cancels take the same way in. The scheduler thread
/// takes both out (<see cref="TryTakeIncoming"/>, <see cref="TryTakeCancel"/>), sleeps here when it has nothing to
/// do, and reports what left the queue (<see cref="Admitted"/>, <see cref="Requeued"/>, <see cref="Abandoned"/>)
/// so that the waiting gauges and the work queued ahead stay true.
///
/// Threads and fields:
/// <list type="bullet">
/// <item><c>_waitingRequests</c>, <c>_waitingTokens</c>, <c>_waitingWorkByClass</c>: written by submitters and the
/// scheduler thread, always Interlocked; read by anyone. Submit reserves before it checks, then backs out.</item>
/// <item><c>_arrivals</c>: submitters, Interlocked.</item>
/// <item><c>_stopping</c>, <c>_failure</c>: written once each (by Dispose, by the failing scheduler thread), volatile.</item>
/// <item><c>_sleeping</c>: the scheduler thread sets and clears it around a sleep; submitters read it to skip the
/// event when the thread is awake (Interlocked/Volatile).</item>
/// <item>Everything else is set in the constructor and read-only after it.</item>
/// </list>
/// </summary>
internal sealed class Admission
{
    private readonly EngineOptions _opt;
    private readonly EngineCounters _counters;
    private readonly KvBlockManager _kv;   // read for its size only
    private readonly ObjectPool<Sequence> _pool;
    private readonly OverloadControl _control;
    private readonly SamplerScratch _scratch;
    private readonly int _ctx, _blockSize, _vocab;

    private readonly Channel<Sequence> _incoming = Channel.CreateUnbounded<Sequence>(new UnboundedChannelOptions { SingleReader = true });
    private readonly ConcurrentQueue<(Sequence Seq, long Uid)> _cancels = new();
    private readonly ManualResetEventSlim _wake = new(false);
    private int _sleeping;
    private volatile bool _stopping;
    private volatile string? _failure;

    private int _waitingRequests;
    private long _waitingTokens;
    private readonly long[] _waitingWorkByClass = new long[2];  // rows: prompt plus expected output (OverloadControl)
    private long _arrivals;

    public Admission(EngineOptions options, EngineLimits limits, EngineCounters counters, KvBlockManager kv, ObjectPool<Sequence> pool,
        OverloadControl control)
    {
        _control = control;
        _opt = options;
        (_ctx, _blockSize, _vocab) = (limits.Context, limits.BlockSize, limits.Vocab);
        _counters = counters;
        _kv = kv;
        _pool = pool;
        _scratch = new SamplerScratch(_vocab);
    }

    public int WaitingRequests => Volatile.Read(ref _waitingRequests);
    public long WaitingTokens => Interlocked.Read(ref _waitingTokens);
    public bool Stopping => _stopping;

    // ---- submitter threads ----------------------------------------------------------------------------------

    /// <summary>See <see cref="InferenceEngine.Submit"/>.</summary>
    public RequestHandle Submit(EngineRequest request)
    {
        long now = Stopwatch.GetTimestamp();
        long received = request.ReceivedTicks != 0 ? request.ReceivedTicks : now;
        _counters.CountSubmitted();
        var ts = new RequestTimestamps(received, 0, 0, 0, now);

        if (_failure is { } why) return Immediate(RequestStatus.Failed, "engine.failed", why, request, ts);
        if (_stopping) return Immediate(RequestStatus.Cancelled, "engine.shutdown", "the engine is shutting down", request, ts);
        if (Validate(request) is { } bad) return Immediate(RequestStatus.Invalid, bad.Code, bad.Message, request, ts);

        var prompt = request.Prompt.Span;
        var resumed = request.Resumed.Span;
        // Rows to prefill: the prompt and any resumed output (both are recomputed context).
        int rows = prompt.Length + resumed.Length;
        int cls = (int)request.Priority;
        if (Interlocked.Increment(ref _waitingRequests) > _opt.MaxWaitingRequests)
        {
            Interlocked.Decrement(ref _waitingRequests);
            return Immediate(RequestStatus.Overloaded, "engine.queue_full", $"{_opt.MaxWaitingRequests} requests are already waiting", request, ts, RetryHint(0));
        }
        if (Interlocked.Add(ref _waitingTokens, rows) > _opt.MaxWaitingTokens)
        {
            Interlocked.Add(ref _waitingTokens, -rows);
            Interlocked.Decrement(ref _waitingRequests);
            return Immediate(RequestStatus.Overloaded, "engine.queue_tokens_full", $"more than {_opt.MaxWaitingTokens} prompt tokens are already waiting", request, ts, RetryHint(rows));
        }
        // Admit only what can plausibly finish in time: the work queued ahead at the measured drain rate, then this
        // request's own steps at the measured step interval (OverloadControl). Refusing now costs nothing; a request
        // admitted and then late would waste every step spent on it and delay the ones behind it.
        var p = request.Sampling;
        int expected = _control.ExpectedOutput(p.MaxTokens, p.IgnoreEos, p.Stop.Count > 0);
        long work = _control.WorkRows(rows, Math.Max(1, expected - resumed.Length));
        double wait = _control.WaitSeconds(WorkAhead(request.Priority));
        long deadline = long.MaxValue;
        if ((request.Deadline ?? _opt.DefaultDeadline) is { } d)
        {
            deadline = received + (long)(d.TotalSeconds * Stopwatch.Frequency);
            double left = (deadline - now) / (double)Stopwatch.Frequency;
            // The batch it will join: full if others queue (this request is already counted as waiting); alone on an
            // idle engine, the fastest step seen (see OverloadControl.FastestStepSeconds).
            bool idle = _counters.Running == 0 && Volatile.Read(ref _waitingRequests) <= 1;
            double step = idle ? _control.FastestStepSeconds : _control.PredictStepSeconds(_counters.Running, Volatile.Read(ref _waitingRequests) > 1);
            double need = wait + _control.ServiceSeconds(rows, Math.Max(1, expected - resumed.Length), step);
            if (need > left * Headroom)
            {
                Interlocked.Add(ref _waitingTokens, -rows);
                Interlocked.Decrement(ref _waitingRequests);
                return Immediate(RequestStatus.Overloaded, "engine.deadline_unmeetable",
                    $"the estimated queue wait {wait * 1000:F0} ms and run {(need - wait) * 1000:F0} ms exceed the {Math.Max(left, 0) * 1000:F0} ms left before the deadline",
                    request, ts, RetryAfter(need - left * Headroom));
            }
        }
        else if (_control.BudgetTicks is > 0 and var budgetTicks && wait * Stopwatch.Frequency > budgetTicks)
        {
            double budget = budgetTicks / (double)Stopwatch.Frequency;
            _control.NoteBudgetRefusal();
            Interlocked.Add(ref _waitingTokens, -rows);
            Interlocked.Decrement(ref _waitingRequests);
            return Immediate(RequestStatus.Overloaded, QueueBudgetCode,
                $"the estimated queue wait {wait * 1000:F0} ms exceeds the replica's queue budget of {budget * 1000:F0} ms",
                request, ts, RetryAfter(wait - budget));
        }
        Interlocked.Add(ref _waitingWorkByClass[cls], work);

        var seq = _pool.Get();
        int capTokens = Math.Min(prompt.Length + p.MaxTokens, _ctx + 1) + 1;
        seq.Init(capTokens, (_ctx + _blockSize - 1) / _blockSize);
        prompt.CopyTo(seq.Tokens);
        resumed.CopyTo(seq.Tokens.AsSpan(prompt.Length));
        seq.PromptLength = prompt.Length;
        seq.Length = rows;
        seq.Generated = resumed.Length;
        seq.ArrivalOrder = Interlocked.Increment(ref _arrivals);
        seq.Priority = request.Priority;
        seq.DeadlineTicks = deadline;
        seq.Sampling = p;
        seq.Sampler = new Sampler(_vocab, p, _scratch);
        seq.SampleKey = KvBlockManager.ChainHash(p.Seed ?? 0, prompt);
        seq.IgnoreEos = p.IgnoreEos;
        if (p.Stop.Count > 0)
        {
            seq.Stop = new StopMatcher(p.Stop);
            seq.Decoder = _opt.Tokenizer!.CreateDecoder();
            // Primed with the resumed output, so a stop string that straddles it and the new tokens still ends it.
            foreach (int t in resumed) seq.Stop.Append(seq.Decoder.Append(t));
        }
        seq.Id = request.Id;
        seq.Received = received;
        seq.WaitingTokensCounted = rows;
        seq.WaitingWorkCounted = work;
        seq.ExpectedOutput = expected;
        ChannelReader<TokenEvent> reader;
        if (request.Sink is { } sink)
        {
            seq.Sink = sink;
            seq.SinkTag = request.SinkTag;
            reader = EmptyTokens;
        }
        else
        {
            var channel = Channel.CreateUnbounded<TokenEvent>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });
            seq.Writer = channel.Writer;
            reader = channel.Reader;
        }
        seq.Completion = new TaskCompletionSource<RequestResult>(TaskCreationOptions.RunContinuationsAsynchronously);
        var handle = new RequestHandle(this, seq, seq.Uid, reader, seq.Completion.Task);
        _incoming.Writer.TryWrite(seq);
        Wake();
        return handle;
    }

    /// <summary>See <see cref="InferenceEngine.EstimatedQueueWait"/>.</summary>
    public TimeSpan EstimatedQueueWait(Priority priority) => TimeSpan.FromSeconds(_control.WaitSeconds(WorkAhead(priority)));

    // Admit only when the estimate leaves this fraction of the time left: estimates err (a step grows with the prefill
    // mixed into it), and a request admitted on a too-tight estimate is the one whose work is wasted.
    private const double Headroom = 0.85;

    /// <summary>Stable code of a request refused or dropped because it would wait longer than the queue budget.</summary>
    public const string QueueBudgetCode = "engine.queue_budget";

    // Rows queued ahead of a request of this class: its own class and every class above it.
    private long WorkAhead(Priority priority) =>
        Interlocked.Read(ref _waitingWorkByClass[0]) + (priority == Priority.Batch ? Interlocked.Read(ref _waitingWorkByClass[1]) : 0);

    /// <summary>From <see cref="RequestHandle.Cancel"/>, any thread: the scheduler ends the request at its next iteration.</summary>
    public void Cancel(Sequence seq, long uid)
    {
        _cancels.Enqueue((seq, uid));
        Wake();
    }

    /// <summary>Refuses every later submission with engine.shutdown and wakes the scheduler thread to stop.</summary>
    public void Stop()
    {
        _stopping = true;
        Wake(force: true);
    }

    /// <summary>Scheduler thread, when the loop died: refuses every later submission with engine.failed.</summary>
    public void Fail(string why) => _failure = why;

    // The shared request rules (RequestRules), then what only the engine knows: its KV cache and tokenizer.
    private (string Code, string Message)? Validate(EngineRequest r)
    {
        var prompt = r.Prompt.Span;
        var broken = r.Sampling.Check()
            ?? RequestRules.CheckPromptLength(prompt.Length, _ctx)
            ?? RequestRules.CheckPromptTokens(prompt, _vocab)
            ?? (r.Deadline is { } d ? RequestRules.CheckDeadline(d) : null)
            ?? CheckResumed(r.Resumed.Span, r.Sampling.MaxTokens, prompt.Length);
        if (broken is { } v) return (v.Code, v.Code == RequestRules.SamplingInvalid ? $"{v.Field}: {v.Message}" : v.Message);
        int blocksNeeded = (prompt.Length + r.Resumed.Length + 1 + _blockSize - 1) / _blockSize;
        if (blocksNeeded > _kv.NumBlocks) return (RequestRules.PromptTooLong, $"the prompt needs {blocksNeeded} KV blocks; the cache has {_kv.NumBlocks}");
        if (r.Sampling.Stop.Count > 0 && _opt.Tokenizer is null) return ("request.stop_needs_tokenizer", "stop strings need the engine to have a tokenizer");
        return null;
    }

    // Resumed output must leave at least one token to generate within max_tokens and the context (a generation that
    // had already ended is its caller's to answer), and be made of vocabulary ids.
    private RuleViolation? CheckResumed(ReadOnlySpan<int> resumed, int maxTokens, int promptTokens)
    {
        if (resumed.IsEmpty) return null;
        if (resumed.Length >= maxTokens || promptTokens + resumed.Length > _ctx)
            return new RuleViolation(RequestRules.BadResume, "resume",
                $"{resumed.Length} resumed tokens leave nothing to generate within max_tokens {maxTokens} and the context of {_ctx} (the prompt has {promptTokens})", WireStatus.BadRequest);
        for (int i = 0; i < resumed.Length; i++)
            if ((uint)resumed[i] >= (uint)_vocab)
                return new RuleViolation(RequestRules.PromptInvalidToken, "resume", $"resumed token {i} is {resumed[i]}, outside the vocabulary of {_vocab}", WireStatus.BadRequest);
        return null;
    }

    // When capacity frees: the queue's work drained at the measured rate (a second before any rate was measured).
    private TimeSpan RetryHint(long extraRows)
    {
        double rate = _control.RowsPerSecond;
        double all = Interlocked.Read(ref _waitingWorkByClass[0]) + Interlocked.Read(ref _waitingWorkByClass[1]);
        return RetryAfter(rate > 0 ? (all + extraRows) / rate : 1.0);
    }

    private static TimeSpan RetryAfter(double seconds) => TimeSpan.FromSeconds(Math.Clamp(seconds, 0.01, 60));

    // A request refused inside Submit: its result is complete before Submit returns (the sink hears it on this thread).
    private RequestHandle Immediate(RequestStatus status, string code, string message, EngineRequest r, RequestTimestamps ts, TimeSpan? retryAfter = null)
    {
        _counters.CountEnded(status);
        var result = new RequestResult
        {
            Status = status, ErrorCode = code, Message = message, RetryAfter = retryAfter,
            PromptTokens = r.Prompt.Length, Timestamps = ts, Id = r.Id,
        };
        r.Sink?.OnFinished(r.SinkTag, result);
        return new RequestHandle(null, null, 0, EmptyTokens, Task.FromResult(result));
    }

    private static readonly ChannelReader<TokenEvent> EmptyTokens = CreateEmpty();

    private static ChannelReader<TokenEvent> CreateEmpty()
    {
        var ch = Channel.CreateUnbounded<TokenEvent>();
        ch.Writer.TryComplete();
        return ch.Reader;
    }

    private void Wake(bool force = false)
    {
        if (force || Volatile.Read(ref _sleeping) == 1) _wake.Set();
    }

    // ---- scheduler thread -----------------------------------------------------------------------------------

    public bool TryTakeIncoming(out Sequence seq) => _incoming.Reader.TryRead(out seq!);

    /// <summary>Cancels queued so far; a cancel put back (<see cref="PutBackCancel"/>) waits for the next call.</summary>
    public int PendingCancels => _cancels.Count;

    public bool TryTakeCancel(out (Sequence Seq, long Uid) cancel) => _cancels.TryDequeue(out cancel);

    public void PutBackCancel((Sequence Seq, long Uid) cancel) => _cancels.Enqueue(cancel);

    /// <summary>
    /// Announces that the scheduler thread is about to sleep, so that a submission or cancel from now on sets the
    /// event. Returns false when one already arrived (or the engine is stopping): then do not <see cref="Sleep"/>.
    /// Always pair with <see cref="EndSleep"/>.
    /// </summary>
    public bool BeginSleep()
    {
        _wake.Reset();
        Interlocked.Exchange(ref _sleeping, 1);
        return !_incoming.Reader.TryPeek(out _) && _cancels.IsEmpty && !_stopping;
    }

    /// <summary>Sleeps until a submission, a cancel, <see cref="Stop"/>, or <paramref name="timeoutMs"/> (-1: none).</summary>
    public void Sleep(int timeoutMs) => _wake.Wait(timeoutMs);

    public void EndSleep() => Interlocked.Exchange(ref _sleeping, 0);

    /// <summary><paramref name="s"/> left the queue for a step.</summary>
    public void Admitted(Sequence s)
    {
        Interlocked.Decrement(ref _waitingRequests);
        Interlocked.Add(ref _waitingTokens, -s.WaitingTokensCounted);
        Interlocked.Add(ref _waitingWorkByClass[(int)s.Priority], -s.WaitingWorkCounted);
        s.WaitingTokensCounted = s.WaitingWorkCounted = 0;
    }

    /// <summary><paramref name="s"/> was preempted back into the queue, where its <paramref name="tokens"/> (to
    /// recompute) and the output it is still expected to generate wait again.</summary>
    public void Requeued(Sequence s, int tokens)
    {
        s.WaitingTokensCounted = tokens;
        s.WaitingWorkCounted = tokens + (long)Math.Max(0, s.ExpectedOutput - s.Generated);
        Interlocked.Increment(ref _waitingRequests);
        Interlocked.Add(ref _waitingTokens, tokens);
        Interlocked.Add(ref _waitingWorkByClass[(int)s.Priority], s.WaitingWorkCounted);
    }

    /// <summary><paramref name="s"/> ended while still queued (cancel, deadline, shed, shutdown).</summary>
    public void Abandoned(Sequence s)
    {
        Interlocked.Decrement(ref _waitingRequests);
        Interlocked.Add(ref _waitingTokens, -s.WaitingTokensCounted);
        Interlocked.Add(ref _waitingWorkByClass[(int)s.Priority], -s.WaitingWorkCounted);
        s.WaitingTokensCounted = s.WaitingWorkCounted = 0;
    }
}
