using System.Collections.Concurrent;
using System.Diagnostics;
using System.Threading.Channels;
using FastServe.Protocol;
using FastServe.Runtime;
using FastServe.Runtime.Generation;
using FastServe.Scheduler.Execution;
using Microsoft.Extensions.ObjectPool;

namespace FastServe.Scheduler.Engine;

/// <summary>
/// The in-process engine many requests share: continuous (iteration-level) batching over a paged KV cache with
/// automatic prefix caching, chunked prefill, preemption with recompute, priority classes, deadlines, admission
/// control, and a loop pipelined with the device (<see cref="EngineOptions.Overlap"/>).
///
/// Threads: <see cref="Submit"/>, <see cref="RequestHandle.Cancel"/> and <see cref="GetStats"/> may be called from
/// any thread. Everything else runs on one dedicated scheduler thread, which owns all scheduling state (no locks on
/// the hot path); the device (<see cref="IStepExecutor"/>) runs steps in launch order on its own.
///
/// Each iteration: take new requests, cancels and expired deadlines; build the next step (decode rows of running
/// sequences first, then prefill chunks of running sequences, then new admissions, all under the token budget and
/// the sequence cap); with overlap, wait for the step in flight, patch the freshly sampled tokens into the next
/// step, launch it, then post-process the finished step (emit tokens, check EOS, stop strings, length) while the
/// device runs. Without overlap: launch, wait, post-process.
/// </summary>
public sealed class InferenceEngine : IDisposable
{
    private const int NoSample = -1;

    private readonly IStepExecutor _exec;
    private readonly EngineOptions _opt;
    private readonly KvBlockManager _kv;
    private readonly int _maxTokens, _maxSeqs, _blockSize, _ctx, _vocab, _reserve;
    private readonly int[] _eos;
    private readonly SamplerScratch _scratch;

    private readonly Channel<Sequence> _incoming = Channel.CreateUnbounded<Sequence>(new UnboundedChannelOptions { SingleReader = true });
    private readonly ConcurrentQueue<(Sequence Seq, long Uid)> _cancels = new();
    private readonly ObjectPool<Sequence> _pool;
    private readonly ManualResetEventSlim _wake = new(false);
    private readonly Thread _thread;
    private int _sleeping;
    private volatile bool _stopping;
    private volatile string? _failure;
    private int _started;

    // Scheduler-thread state.
    private readonly List<Sequence> _running = [];                     // sorted by (priority, arrival)
    private readonly PriorityQueue<(Sequence Seq, long Uid), long>[] _waiting = [new(), new()]; // per class, by arrival
    private readonly PriorityQueue<(Sequence Seq, long Uid), long> _deadlines = new();
    private readonly StepPlan[] _plans;
    private long _nextStepId;
    private long _prevEndTicks;

    // Gauges and totals: written by the scheduler thread (Interlocked where submitters write too), read by anyone.
    private int _waitingRequests;
    private long _waitingTokens;
    private readonly long[] _waitingTokensByClass = new long[2];
    private long _arrivals;
    private long _submitted, _finished, _cancelled, _deadlineExceeded, _overloaded, _invalid, _failed, _preemptions;
    private long _steps, _rows, _prefillRows, _generated, _prefixHitTokens;
    private long _deviceBusyTicks, _deviceIdleTicks, _schedulerCpuTicks;
    private int _runningGauge;
    private double _drainTokensPerSecond;  // prompt tokens admitted per second while requests were queued (EWMA)
    private long _drainWindowStart, _drainWindowTokens;

    private readonly object _historyLock = new();
    private readonly StepRecord[] _history;

    /// <summary>Creates the engine over <paramref name="executor"/> (which it does not own). Call <see cref="Start"/>.
    /// Errors: engine.invalid_option.</summary>
    public InferenceEngine(IStepExecutor executor, EngineOptions? options = null)
    {
        _opt = options ?? new EngineOptions();
        _opt.Validate();
        _exec = executor;
        var spec = executor.KvSpec;
        _blockSize = spec.BlockSize;
        _kv = new KvBlockManager(spec.NumBlocks, spec.BlockSize);
        _maxTokens = Math.Min(_opt.MaxBatchedTokens, executor.MaxTokensPerStep);
        _maxSeqs = Math.Min(Math.Min(_opt.MaxSeqs, executor.MaxSequencesPerStep), _maxTokens);
        _ctx = executor.MaxContextLength;
        _vocab = executor.VocabSize;
        _reserve = _opt.AdmissionReserveBlocks > 0 ? _opt.AdmissionReserveBlocks : Math.Max(1, spec.NumBlocks / 100);
        _eos = [.. _opt.EosTokenIds];
        _scratch = new SamplerScratch(_vocab);
        _pool = new DefaultObjectPool<Sequence>(new Sequence.Policy(), Math.Min(_maxSeqs * 4 + 256, 1 << 16));
        int inFlight = Math.Max(1, Math.Min(2, executor.MaxInFlight));
        _plans = new StepPlan[_opt.Overlap && inFlight > 1 ? 2 : 1];
        for (int i = 0; i < _plans.Length; i++) _plans[i] = new StepPlan(_maxTokens, _maxSeqs);
        _history = new StepRecord[_opt.StepHistory];
        _thread = new Thread(Loop) { IsBackground = true, Name = "fastserve-scheduler" };
    }

    public EngineOptions Options => _opt;
    public IStepExecutor Executor => _exec;
    /// <summary>Effective caps after clamping to the executor.</summary>
    public int MaxBatchedTokens => _maxTokens;
    public int MaxSeqs => _maxSeqs;
    public bool Overlap => _plans.Length == 2;

    /// <summary>Starts the scheduler thread. Requests submitted before it wait in the queue.</summary>
    public void Start()
    {
        if (Interlocked.Exchange(ref _started, 1) == 0) _thread.Start();
    }

    /// <summary>
    /// Submits a request. Never throws for a bad or unlucky request: the handle then completes at once with
    /// Invalid (prompt.empty, prompt.too_long, prompt.invalid_token, sampling.invalid, request.invalid_deadline,
    /// request.stop_needs_tokenizer), Overloaded (engine.queue_full, engine.queue_tokens_full,
    /// engine.deadline_unmeetable, each with RetryAfter) or Cancelled/Failed (engine.shutdown, engine.failed).
    /// </summary>
    public RequestHandle Submit(EngineRequest request)
    {
        long now = Stopwatch.GetTimestamp();
        long received = request.ReceivedTicks != 0 ? request.ReceivedTicks : now;
        Interlocked.Increment(ref _submitted);
        var ts = new RequestTimestamps(received, 0, 0, 0, now);

        if (_failure is { } why) return Immediate(RequestStatus.Failed, "engine.failed", why, request, ts);
        if (_stopping) return Immediate(RequestStatus.Cancelled, "engine.shutdown", "the engine is shutting down", request, ts);
        if (Validate(request) is { } bad) return Immediate(RequestStatus.Invalid, bad.Code, bad.Message, request, ts);

        var prompt = request.Prompt.Span;
        int cls = (int)request.Priority;
        if (Interlocked.Increment(ref _waitingRequests) > _opt.MaxWaitingRequests)
        {
            Interlocked.Decrement(ref _waitingRequests);
            return Immediate(RequestStatus.Overloaded, "engine.queue_full", $"{_opt.MaxWaitingRequests} requests are already waiting", request, ts, RetryHint(1));
        }
        if (Interlocked.Add(ref _waitingTokens, prompt.Length) > _opt.MaxWaitingTokens)
        {
            Interlocked.Add(ref _waitingTokens, -prompt.Length);
            Interlocked.Decrement(ref _waitingRequests);
            return Immediate(RequestStatus.Overloaded, "engine.queue_tokens_full", $"more than {_opt.MaxWaitingTokens} prompt tokens are already waiting", request, ts, RetryHint(prompt.Length));
        }
        long deadline = long.MaxValue;
        if (request.Deadline is { } d)
        {
            deadline = received + (long)(d.TotalSeconds * Stopwatch.Frequency);
            double wait = EstimatedQueueWait(request.Priority).TotalSeconds;
            double left = (deadline - now) / (double)Stopwatch.Frequency;
            if (wait > left)
            {
                Interlocked.Add(ref _waitingTokens, -prompt.Length);
                Interlocked.Decrement(ref _waitingRequests);
                return Immediate(RequestStatus.Overloaded, "engine.deadline_unmeetable",
                    $"the estimated queue wait {wait * 1000:F0} ms exceeds the {Math.Max(left, 0) * 1000:F0} ms left before the deadline",
                    request, ts, TimeSpan.FromSeconds(wait));
            }
        }
        Interlocked.Add(ref _waitingTokensByClass[cls], prompt.Length);

        var p = request.Sampling;
        var seq = _pool.Get();
        int capTokens = Math.Min(prompt.Length + p.MaxTokens, _ctx + 1) + 1;
        seq.Init(capTokens, (_ctx + _blockSize - 1) / _blockSize);
        prompt.CopyTo(seq.Tokens);
        seq.PromptLength = seq.Length = prompt.Length;
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
        }
        seq.Id = request.Id;
        seq.Received = received;
        seq.WaitingTokensCounted = prompt.Length;
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

    /// <summary>The engine's estimate of how long a request of class <paramref name="priority"/> submitted now would
    /// wait before admission: prompt tokens queued at or above its class, over the rate at which queued prompt tokens
    /// were admitted recently while a queue existed. Zero before any queue has been observed.</summary>
    public TimeSpan EstimatedQueueWait(Priority priority)
    {
        double rate = Volatile.Read(ref _drainTokensPerSecond);
        long ahead = Interlocked.Read(ref _waitingTokensByClass[0]) + (priority == Priority.Batch ? Interlocked.Read(ref _waitingTokensByClass[1]) : 0);
        if (rate <= 0 || ahead <= 0) return TimeSpan.Zero;
        return TimeSpan.FromSeconds(ahead / rate);
    }

    /// <summary>A snapshot of the counters; cheap enough to call every second.</summary>
    public EngineStats GetStats()
    {
        double f = Stopwatch.Frequency;
        return new EngineStats
        {
            TakenAtTicks = Stopwatch.GetTimestamp(),
            WaitingRequests = Volatile.Read(ref _waitingRequests),
            WaitingTokens = Interlocked.Read(ref _waitingTokens),
            RunningRequests = Volatile.Read(ref _runningGauge),
            KvBlocksTotal = _kv.NumBlocks,
            KvBlocksUsed = _kv.UsedBlocks,
            KvBlocksFree = _kv.FreeBlocks,
            KvBlocksCachedIdle = _kv.IdleCachedBlocks,
            Submitted = Interlocked.Read(ref _submitted),
            Finished = Interlocked.Read(ref _finished),
            Cancelled = Interlocked.Read(ref _cancelled),
            DeadlineExceeded = Interlocked.Read(ref _deadlineExceeded),
            Overloaded = Interlocked.Read(ref _overloaded),
            Invalid = Interlocked.Read(ref _invalid),
            Failed = Interlocked.Read(ref _failed),
            Preemptions = Interlocked.Read(ref _preemptions),
            Steps = Interlocked.Read(ref _steps),
            RowsComputed = Interlocked.Read(ref _rows),
            PrefillRows = Interlocked.Read(ref _prefillRows),
            TokensGenerated = Interlocked.Read(ref _generated),
            PrefixQueries = _kv.PrefixQueries,
            PrefixHits = _kv.PrefixHits,
            PrefixHitTokens = Interlocked.Read(ref _prefixHitTokens),
            DeviceBusySeconds = Interlocked.Read(ref _deviceBusyTicks) / f,
            DeviceIdleSeconds = Interlocked.Read(ref _deviceIdleTicks) / f,
            SchedulerCpuSeconds = Interlocked.Read(ref _schedulerCpuTicks) / f,
        };
    }

    /// <summary>Copies the most recent step records (oldest first) into a new array, at most the history size.</summary>
    public StepRecord[] RecentSteps()
    {
        lock (_historyLock)
        {
            long n = Math.Min(_steps, _history.Length);
            var r = new StepRecord[n];
            for (long i = 0; i < n; i++) r[i] = _history[(_steps - n + i) % _history.Length];
            return r;
        }
    }

    /// <summary>Stops the loop: requests still queued or running end with Cancelled (engine.shutdown).</summary>
    public void Dispose()
    {
        _stopping = true;
        Wake(force: true);
        if (Volatile.Read(ref _started) == 1) _thread.Join();
        else FailAll(RequestStatus.Cancelled, "engine.shutdown", "the engine was disposed");
    }

    internal void RequestCancel(Sequence seq, long uid)
    {
        _cancels.Enqueue((seq, uid));
        Wake();
    }

    // ---- submission helpers -------------------------------------------------------------------------------

    // The shared request rules (RequestRules), then what only the engine knows: its KV cache and tokenizer.
    private (string Code, string Message)? Validate(EngineRequest r)
    {
        var prompt = r.Prompt.Span;
        var broken = r.Sampling.Check()
            ?? RequestRules.CheckPromptLength(prompt.Length, _ctx)
            ?? RequestRules.CheckPromptTokens(prompt, _vocab)
            ?? (r.Deadline is { } d ? RequestRules.CheckDeadline(d) : null);
        if (broken is { } v) return (v.Code, v.Code == RequestRules.SamplingInvalid ? $"{v.Field}: {v.Message}" : v.Message);
        int blocksNeeded = (prompt.Length + 1 + _blockSize - 1) / _blockSize;
        if (blocksNeeded > _kv.NumBlocks) return (RequestRules.PromptTooLong, $"the prompt needs {blocksNeeded} KV blocks; the cache has {_kv.NumBlocks}");
        if (r.Sampling.Stop.Count > 0 && _opt.Tokenizer is null) return ("request.stop_needs_tokenizer", "stop strings need the engine to have a tokenizer");
        return null;
    }

    private TimeSpan RetryHint(long extraTokens)
    {
        double rate = Volatile.Read(ref _drainTokensPerSecond);
        double s = rate > 0 ? (Interlocked.Read(ref _waitingTokens) + extraTokens) / rate : 1.0;
        return TimeSpan.FromSeconds(Math.Clamp(s, 0.01, 60));
    }

    private RequestHandle Immediate(RequestStatus status, string code, string message, EngineRequest r, RequestTimestamps ts, TimeSpan? retryAfter = null)
    {
        switch (status)
        {
            case RequestStatus.Overloaded: Interlocked.Increment(ref _overloaded); break;
            case RequestStatus.Invalid: Interlocked.Increment(ref _invalid); break;
            case RequestStatus.Failed: Interlocked.Increment(ref _failed); break;
            default: Interlocked.Increment(ref _cancelled); break;
        }
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

    // ---- the loop -----------------------------------------------------------------------------------------

    private void Loop()
    {
        StepPlan? inflight = null;
        int next = 0;
        try
        {
            while (true)
            {
                long cpu0 = ThreadCpuClock.NowTicks();
                long now = Stopwatch.GetTimestamp();
                TakeIncoming();
                TakeCancels();
                ExpireDeadlines(now);
                if (_stopping) break;

                var plan = _plans[next];
                Build(plan);
                plan.SchedulerCpuTicks = ThreadCpuClock.NowTicks() - cpu0;

                if (plan.Batch.TokenCount == 0 && inflight is null)
                {
                    PublishGauges();
                    _opt.AfterIteration?.Invoke();
                    IdleWait();
                    continue;
                }

                if (_plans.Length == 2)
                {
                    if (inflight is not null) WaitStep(inflight);
                    if (plan.Batch.TokenCount > 0)
                    {
                        if (inflight is not null) plan.PatchFrom(inflight.Batch);
                        LaunchStep(plan);
                    }
                    if (inflight is not null) PostProcess(inflight);
                    inflight = plan.Batch.TokenCount > 0 ? plan : null;
                    if (inflight is not null) next ^= 1;
                }
                else
                {
                    LaunchStep(plan);
                    WaitStep(plan);
                    PostProcess(plan);
                }
                PublishGauges();
                _opt.AfterIteration?.Invoke();
            }
            if (inflight is not null)
            {
                WaitStep(inflight);
                PostProcess(inflight);
            }
            FailAll(RequestStatus.Cancelled, "engine.shutdown", "the engine was shut down");
            _opt.AfterIteration?.Invoke();
        }
        catch (Exception e)
        {
            // A device fault or a scheduler bug: end every request with Failed and refuse new ones, rather than hang.
            _failure = Environment.GetEnvironmentVariable("FASTSERVE_DEBUG") == "1" ? e.ToString() : $"{e.GetType().Name}: {e.Message}";
            try { FailAll(RequestStatus.Failed, "engine.failed", _failure); _opt.AfterIteration?.Invoke(); }
            catch (Exception again) { Console.Error.WriteLine($"fastserve: the engine failed ({_failure}) and could not end every request: {again}"); }
        }
    }

    private void IdleWait()
    {
        _prevEndTicks = 0; // the device idles because there is no work, not because the scheduler is slow
        bool anyWaiting = _waiting[0].Count + _waiting[1].Count > 0 || _running.Count > 0;
        _wake.Reset();
        Interlocked.Exchange(ref _sleeping, 1);
        if (!_incoming.Reader.TryPeek(out _) && _cancels.IsEmpty && !_stopping)
        {
            // Work that cannot be scheduled yet (a preempted sequence whose last token is still settling) retries
            // soon; otherwise sleep until a submission, a cancel, or the nearest deadline.
            int timeout = anyWaiting ? 1 : -1;
            if (_deadlines.TryPeek(out _, out long dl))
            {
                long ms = (dl - Stopwatch.GetTimestamp()) * 1000 / Stopwatch.Frequency + 1;
                timeout = timeout < 0 ? (int)Math.Clamp(ms, 0, int.MaxValue) : Math.Min(timeout, (int)Math.Clamp(ms, 0, int.MaxValue));
            }
            _wake.Wait(timeout);
        }
        Interlocked.Exchange(ref _sleeping, 0);
    }

    private void LaunchStep(StepPlan plan)
    {
        _exec.Launch(plan.Batch);
    }

    private void WaitStep(StepPlan plan)
    {
        _exec.Wait(plan.Batch);
        var b = plan.Batch;
        long busy = b.EndTicks - b.StartTicks;
        long gap = _prevEndTicks != 0 ? Math.Max(0, b.StartTicks - _prevEndTicks) : 0;
        _prevEndTicks = b.EndTicks;
        plan.IdleGapTicks = gap;
        Interlocked.Add(ref _deviceBusyTicks, busy);
        Interlocked.Add(ref _deviceIdleTicks, gap);
    }

    private void TakeIncoming()
    {
        while (_incoming.Reader.TryRead(out var s))
        {
            s.State = SeqState.Waiting;
            _waiting[(int)s.Priority].Enqueue((s, s.Uid), s.ArrivalOrder);
            if (s.DeadlineTicks != long.MaxValue) _deadlines.Enqueue((s, s.Uid), s.DeadlineTicks);
        }
    }

    private void TakeCancels()
    {
        int n = _cancels.Count;
        for (int i = 0; i < n && _cancels.TryDequeue(out var c); i++)
        {
            if (c.Seq.Uid != c.Uid) continue;
            // Cancelled between its submission and this iteration's intake: it is taken in next time, then ended.
            if (c.Seq.State == SeqState.Submitted) _cancels.Enqueue(c);
            else if (c.Seq.State != SeqState.Done) Finish(c.Seq, RequestStatus.Cancelled, null, "request.cancelled", "cancelled by the caller");
        }
    }

    private void ExpireDeadlines(long now)
    {
        while (_deadlines.TryPeek(out var e, out long dl) && dl <= now)
        {
            _deadlines.Dequeue();
            if (e.Seq.Uid == e.Uid && e.Seq.State != SeqState.Done)
                Finish(e.Seq, RequestStatus.DeadlineExceeded, null, "request.deadline_exceeded", "the request did not finish by its deadline");
        }
        // Entries of requests that ended early stay until their deadline passes; compact if they pile up.
        int live = _running.Count + _waiting[0].Count + _waiting[1].Count;
        if (_deadlines.Count > 4 * live + 4096)
        {
            var keep = new List<((Sequence, long), long)>();
            while (_deadlines.TryDequeue(out var e, out long dl))
                if (e.Seq.Uid == e.Uid && e.Seq.State != SeqState.Done) keep.Add((e, dl));
            foreach (var k in keep) _deadlines.Enqueue(k.Item1, k.Item2);
        }
    }

    // ---- building a step ----------------------------------------------------------------------------------

    private void Build(StepPlan plan)
    {
        plan.Clear(_nextStepId);
        int budget = _maxTokens;

        // 1. One decode row for every running sequence whose prompt is done: never stalled by prefills.
        for (int i = 0; i < _running.Count && budget > 0; i++)
        {
            var s = _running[i];
            if (s.Uncomputed != 1 || s.ScheduledIn == plan.Id) continue;
            int got = TrySchedule(plan, s, 1);
            if (got >= 0) budget -= got;
            else i--; // s preempted itself: the list shifted down
        }
        // 2. Prefill chunks of running sequences mid-prompt.
        for (int i = 0; i < _running.Count && budget > 0; i++)
        {
            var s = _running[i];
            int need = s.Uncomputed;
            if (need <= 1 || s.ScheduledIn == plan.Id) continue;
            int got = TrySchedule(plan, s, Math.Min(need, budget));
            if (got >= 0) budget -= got;
            else i--;
        }
        // 3. Admit waiting requests, interactive before batch, oldest first.
        bool blocked = false;
        for (int cls = 0; cls < 2 && !blocked; cls++)
        {
            var q = _waiting[cls];
            while (budget > 0 && _running.Count < _maxSeqs && plan.Batch.Layout.SequenceCount < _maxSeqs)
            {
                if (!q.TryPeek(out var e, out _)) break;
                var s = e.Seq;
                if (s.Uid != e.Uid || s.State != SeqState.Waiting) { q.Dequeue(); continue; }
                if (s.Pending > 0) { blocked = true; break; } // preempted with a token still in flight: next step
                if (!TryAdmit(plan, s, ref budget)) { blocked = true; break; }
                q.Dequeue();
            }
        }
        _nextStepId++;
    }

    private bool TryAdmit(StepPlan plan, Sequence s, ref int budget)
    {
        int matched = 0;
        if (_opt.PrefixCaching && s.BlockCount == 0)
        {
            matched = _kv.MatchPrefix(s.Tokens.AsSpan(0, s.Length), s.Length - 1, s.Blocks, out ulong h);
            s.BlockCount = s.CommittedBlocks = matched / _blockSize;
            s.Computed = matched;
            s.ChainHash = h;
        }
        int rows = Math.Min(s.Uncomputed, budget);
        int need = BlocksFor(s.Computed + rows) - s.BlockCount;
        int reserve = _running.Count > 0 ? _reserve : 0;
        if (_kv.AvailableBlocks < need + reserve)
        {
            DropBlocks(s);
            return false;
        }
        // Admitted: it leaves the queue.
        s.State = SeqState.Running;
        InsertRunning(s);
        Interlocked.Decrement(ref _waitingRequests);
        Interlocked.Add(ref _waitingTokens, -s.WaitingTokensCounted);
        Interlocked.Add(ref _waitingTokensByClass[(int)s.Priority], -s.WaitingTokensCounted);
        _drainWindowTokens += s.WaitingTokensCounted;
        s.WaitingTokensCounted = 0;
        if (s.Admitted == 0)
        {
            s.Admitted = Stopwatch.GetTimestamp();
            s.CachedPromptTokens = matched;
        }
        _prefixHitTokens += matched;
        if (TrySchedule(plan, s, rows) != rows) throw new InvalidOperationException("blocks checked available were not");
        budget -= rows;
        return true;
    }

    // Adds `rows` rows of `s` to the step, allocating blocks (preempting the lowest-priority, latest-arrived
    // running sequences not yet in this step when none are free). Returns the rows added (0 when the sequence's
    // tokens in flight are its last), or -1 when `s` itself had to be preempted.
    private int TrySchedule(StepPlan plan, Sequence s, int rows)
    {
        // The token in flight is the last one (length, or its position is past the context): post-processing ends it.
        if (s.Pending > 0 && (s.Generated + s.Pending >= s.Sampling.MaxTokens || s.Length + s.Pending > _ctx)) { s.ScheduledIn = plan.Id; return 0; }
        int need = BlocksFor(s.Computed + rows) - s.BlockCount;
        while (need > 0)
        {
            if (_kv.TryAllocate(out int b))
            {
                s.Blocks[s.BlockCount++] = b;
                need--;
                continue;
            }
            var victim = PickVictim(plan, s);
            Preempt(victim);
            if (victim == s) return -1;
        }

        int start = s.Computed;
        // With a token in flight the last row's input is that token, not known yet: 0 stands in for it until the
        // finished step's output is copied in just before launch (StepPlan.PatchFrom).
        if (s.Pending > 0) s.Tokens[s.Length] = 0;
        int seqIndex = plan.Batch.AddSequence(start, s.Tokens.AsSpan(start, rows), s.Blocks.AsSpan(0, s.BlockCount));
        int rowStart = plan.Batch.Layout.RowStart(seqIndex);
        if (s.Pending > 0) plan.AddPatch(rowStart + rows - 1, s.PendingSample);
        bool decode = rows == 1 && (s.Pending > 0 || start == s.Length - 1) && s.Generated > 0;
        if (!decode) plan.PrefillRows += rows;
        s.Computed += rows;
        s.ScheduledIn = plan.Id;
        if (s.FirstScheduled == 0) s.FirstScheduled = Stopwatch.GetTimestamp();

        if (s.Computed == s.Length + s.Pending)
        {
            var top = s.Sampling.Logprobs > 0 ? new TokenLogprob[s.Sampling.Logprobs] : null;
            int sample = plan.Batch.AddSample(rowStart + rows - 1, s.Sampler, s.SampleKey, s.Computed, top);
            plan.SampleSeq[sample] = s;
            plan.SampleUid[sample] = s.Uid;
            s.Pending++;
            s.PendingSample = sample;
        }
        CommitFullBlocks(s);
        return rows;
    }

    private void CommitFullBlocks(Sequence s)
    {
        if (!_opt.PrefixCaching) return;
        int known = Math.Min(s.Computed, s.Length);
        while ((s.CommittedBlocks + 1) * _blockSize <= known)
        {
            var tokens = s.Tokens.AsSpan(s.CommittedBlocks * _blockSize, _blockSize);
            s.ChainHash = KvBlockManager.ChainHash(s.ChainHash, tokens);
            _kv.Commit(s.Blocks[s.CommittedBlocks], s.ChainHash, tokens);
            s.CommittedBlocks++;
        }
    }

    private Sequence PickVictim(StepPlan plan, Sequence requester)
    {
        for (int i = _running.Count - 1; i >= 0; i--)
        {
            var v = _running[i];
            if (v != requester && v.ScheduledIn != plan.Id && Compare(v, requester) > 0) return v;
        }
        return requester;
    }

    private void Preempt(Sequence s)
    {
        DropBlocks(s);
        _running.Remove(s);
        s.State = SeqState.Waiting;
        s.Preemptions++;
        Interlocked.Increment(ref _preemptions);
        int tokens = s.Length;
        s.WaitingTokensCounted = tokens;
        Interlocked.Increment(ref _waitingRequests);
        Interlocked.Add(ref _waitingTokens, tokens);
        Interlocked.Add(ref _waitingTokensByClass[(int)s.Priority], tokens);
        _waiting[(int)s.Priority].Enqueue((s, s.Uid), s.ArrivalOrder);
    }

    // Gives back every KV block of `s`; its KV is then recomputed (from the prefix cache where possible).
    private void DropBlocks(Sequence s)
    {
        _kv.ReleaseAll(s.Blocks.AsSpan(0, s.BlockCount));
        s.BlockCount = s.CommittedBlocks = s.Computed = 0;
        s.ChainHash = 0;
    }

    private int BlocksFor(int positions) => (positions + _blockSize - 1) / _blockSize;

    // Running order: priority class, then arrival. Victims come from the end.
    private static int Compare(Sequence a, Sequence b) =>
        a.Priority != b.Priority ? a.Priority.CompareTo(b.Priority) : a.ArrivalOrder.CompareTo(b.ArrivalOrder);

    private void InsertRunning(Sequence s)
    {
        int lo = 0, hi = _running.Count;
        while (lo < hi)
        {
            int mid = (lo + hi) >> 1;
            if (Compare(_running[mid], s) < 0) lo = mid + 1; else hi = mid;
        }
        _running.Insert(lo, s);
    }

    // ---- post-processing ----------------------------------------------------------------------------------

    private void PostProcess(StepPlan plan)
    {
        long cpu0 = ThreadCpuClock.NowTicks();
        var b = plan.Batch;
        long now = Stopwatch.GetTimestamp();
        for (int i = 0; i < b.SampleCount; i++)
        {
            var s = plan.SampleSeq[i];
            plan.SampleSeq[i] = null;
            if (s is null || s.Uid != plan.SampleUid[i] || s.State == SeqState.Done) continue;
            s.Pending--;
            int tok = b.OutToken[i];
            s.Tokens[s.Length++] = tok;
            s.Generated++;
            if (s.FirstToken == 0) s.FirstToken = now;
            if (s.Sink is { } sink) sink.OnToken(s.SinkTag, new TokenEvent(tok, b.OutLogprob[i], b.SampleTop[i]));
            else s.Writer!.TryWrite(new TokenEvent(tok, b.OutLogprob[i], b.SampleTop[i]));
            _generated++;

            if (!s.IgnoreEos && Array.IndexOf(_eos, tok) >= 0) Finish(s, RequestStatus.Finished, FinishReason.Eos);
            else if (s.Stop is not null && StopHit(s, tok)) Finish(s, RequestStatus.Finished, FinishReason.Stop);
            else if (s.Generated >= s.Sampling.MaxTokens) Finish(s, RequestStatus.Finished, FinishReason.Length);
            else if (s.Length > _ctx) Finish(s, RequestStatus.Finished, FinishReason.ContextFull);
        }

        UpdateDrainRate(now);
        Interlocked.Increment(ref _steps);
        Interlocked.Add(ref _rows, b.TokenCount);
        Interlocked.Add(ref _prefillRows, plan.PrefillRows);
        long cpu = plan.SchedulerCpuTicks + ThreadCpuClock.NowTicks() - cpu0;
        Interlocked.Add(ref _schedulerCpuTicks, cpu);
        var rec = new StepRecord(b.Id, b.Layout.SequenceCount, b.TokenCount, plan.PrefillRows, b.SampleCount, cpu,
            b.LaunchTicks, b.StartTicks, b.EndTicks, plan.IdleGapTicks);
        lock (_historyLock) _history[(_steps - 1) % _history.Length] = rec;
        _opt.OnStep?.Invoke(rec);
    }

    private static bool StopHit(Sequence s, int tok)
    {
        s.Stop!.Append(s.Decoder!.Append(tok));
        return s.Stop.Stopped;
    }

    // The admission estimate's rate: prompt tokens admitted per second, measured only over windows that began
    // with a queue (otherwise it would measure the arrival rate, not what the engine can drain).
    private void UpdateDrainRate(long now)
    {
        if (_drainWindowStart == 0)
        {
            if (Volatile.Read(ref _waitingRequests) > 0) { _drainWindowStart = now; _drainWindowTokens = 0; }
            return;
        }
        double secs = (now - _drainWindowStart) / (double)Stopwatch.Frequency;
        if (secs < 0.05) return;
        double rate = _drainWindowTokens / secs;
        double prev = _drainTokensPerSecond;
        Volatile.Write(ref _drainTokensPerSecond, prev <= 0 ? rate : 0.7 * prev + 0.3 * rate);
        _drainWindowStart = Volatile.Read(ref _waitingRequests) > 0 ? now : 0;
        _drainWindowTokens = 0;
    }

    private void Finish(Sequence s, RequestStatus status, FinishReason? reason, string? code = null, string? message = null)
    {
        if (s.State == SeqState.Running) _running.Remove(s);
        else if (s.State == SeqState.Waiting && s.WaitingTokensCounted > 0)
        {
            Interlocked.Decrement(ref _waitingRequests);
            Interlocked.Add(ref _waitingTokens, -s.WaitingTokensCounted);
            Interlocked.Add(ref _waitingTokensByClass[(int)s.Priority], -s.WaitingTokensCounted);
        }
        DropBlocks(s);
        var result = new RequestResult
        {
            Status = status,
            Finish = reason,
            ErrorCode = code,
            Message = message,
            PromptTokens = s.PromptLength,
            CachedPromptTokens = s.CachedPromptTokens,
            OutputTokens = s.Tokens.AsSpan(s.PromptLength, s.Length - s.PromptLength).ToArray(),
            Preemptions = s.Preemptions,
            Timestamps = new RequestTimestamps(s.Received, s.Admitted, s.FirstScheduled, s.FirstToken, Stopwatch.GetTimestamp()),
            Id = s.Id,
        };
        switch (status)
        {
            case RequestStatus.Finished: Interlocked.Increment(ref _finished); break;
            case RequestStatus.Cancelled: Interlocked.Increment(ref _cancelled); break;
            case RequestStatus.DeadlineExceeded: Interlocked.Increment(ref _deadlineExceeded); break;
            default: Interlocked.Increment(ref _failed); break;
        }
        s.State = SeqState.Done;
        s.Writer?.TryComplete();
        s.Sink?.OnFinished(s.SinkTag, result);
        s.Completion.TrySetResult(result);
        _pool.Return(s);
    }

    private void FailAll(RequestStatus status, string code, string message)
    {
        TakeIncoming();
        foreach (var s in _running.ToArray()) Finish(s, status, null, code, message);
        foreach (var q in _waiting)
            while (q.TryDequeue(out var e, out _))
                if (e.Seq.Uid == e.Uid && e.Seq.State != SeqState.Done) Finish(e.Seq, status, null, code, message);
        PublishGauges();
    }

    private void PublishGauges() => Volatile.Write(ref _runningGauge, _running.Count);

    /// <summary>An engine-side step: the device batch plus which sequence each sample belongs to (with the uid it
    /// had, so a sequence that ended or was reused meanwhile is recognised) and the rows whose input token is the
    /// output of the step before (filled in just before launch).</summary>
    private sealed class StepPlan
    {
        public StepPlan(int maxTokens, int maxSeqs)
        {
            Batch = new StepBatch(maxTokens, maxSeqs);
            SampleSeq = new Sequence?[maxSeqs];
            SampleUid = new long[maxSeqs];
            PatchRow = new int[maxSeqs];
            PatchSample = new int[maxSeqs];
        }

        public StepBatch Batch { get; }
        public long Id => Batch.Id;
        public Sequence?[] SampleSeq { get; }
        public long[] SampleUid { get; }
        public int[] PatchRow { get; }
        public int[] PatchSample { get; }
        public int PatchCount;
        public int PrefillRows;
        public long SchedulerCpuTicks;
        public long IdleGapTicks;

        public void Clear(long id)
        {
            Batch.Clear();
            Batch.Id = id;
            PatchCount = 0;
            PrefillRows = 0;
            IdleGapTicks = 0;
        }

        public void AddPatch(int row, int sample)
        {
            PatchRow[PatchCount] = row;
            PatchSample[PatchCount] = sample;
            PatchCount++;
        }

        public void PatchFrom(StepBatch previous)
        {
            for (int i = 0; i < PatchCount; i++) Batch.Tokens[PatchRow[i]] = previous.OutToken[PatchSample[i]];
        }
    }
}
