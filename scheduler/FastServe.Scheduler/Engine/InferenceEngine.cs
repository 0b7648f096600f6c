using System.Diagnostics;
using FastServe.Runtime;
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
///
/// The parts, each the one owner of its state: <see cref="Admission"/> (what submitter threads run: validation,
/// waiting bounds, the incoming and cancel queues), <see cref="StepBuilder"/> (running and waiting sequences, KV
/// blocks, preemption), <see cref="PostProcessor"/> (tokens out, ending sequences) and <see cref="EngineCounters"/>
/// (totals and step history). This class runs the loop: intake, deadlines, launch and wait, sleep, shutdown.
/// </summary>
public sealed class InferenceEngine : IDisposable
{
    private readonly IStepExecutor _exec;
    private readonly EngineOptions _opt;
    private readonly KvBlockManager _kv;
    private readonly int _maxTokens, _maxSeqs;
    private readonly EngineCounters _counters;
    private readonly Admission _admission;
    private readonly OverloadControl _control;
    private readonly StepBuilder _builder;
    private readonly PostProcessor _post;
    private readonly Thread _thread;
    private int _started;  // 0 → 1 once, by Start (Interlocked); read by Dispose

    // Scheduler thread only.
    private readonly PriorityQueue<(Sequence Seq, long Uid), long> _deadlines = new();
    private readonly StepPlan[] _plans;
    private long _prevEndTicks;

    /// <summary>Creates the engine over <paramref name="executor"/> (which it does not own). Call <see cref="Start"/>.
    /// Errors: engine.invalid_option.</summary>
    public InferenceEngine(IStepExecutor executor, EngineOptions? options = null)
    {
        _opt = options ?? new EngineOptions();
        _opt.Validate();
        _exec = executor;
        var spec = executor.KvSpec;
        _kv = new KvBlockManager(spec.NumBlocks, spec.BlockSize);
        _maxTokens = Math.Min(_opt.MaxBatchedTokens, executor.MaxTokensPerStep);
        _maxSeqs = Math.Min(Math.Min(_opt.MaxSeqs, executor.MaxSequencesPerStep), _maxTokens);
        var limits = new EngineLimits(_maxTokens, _maxSeqs, executor.MaxContextLength, spec.BlockSize, executor.VocabSize,
            _opt.AdmissionReserveBlocks > 0 ? _opt.AdmissionReserveBlocks : Math.Max(1, spec.NumBlocks / 100));
        var pool = new DefaultObjectPool<Sequence>(new Sequence.Policy(), Math.Min(_maxSeqs * 4 + 256, 1 << 16));
        _counters = new EngineCounters(_opt.StepHistory);
        _control = new OverloadControl(_opt, _maxTokens, _maxSeqs);
        _admission = new Admission(_opt, limits, _counters, _kv, pool, _control);
        _builder = new StepBuilder(limits, _opt.PrefixCaching, _kv, _admission, _counters, _control);
        _post = new PostProcessor(_opt, limits, _builder, _admission, _counters, pool, _control);
        int inFlight = Math.Max(1, Math.Min(2, executor.MaxInFlight));
        _plans = new StepPlan[_opt.Overlap && inFlight > 1 ? 2 : 1];
        for (int i = 0; i < _plans.Length; i++) _plans[i] = new StepPlan(_maxTokens, _maxSeqs);
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
    /// engine.deadline_unmeetable, engine.queue_budget, each with RetryAfter) or Cancelled/Failed (engine.shutdown,
    /// engine.failed). An accepted request may still be dropped from the queue before its prefill with Overloaded
    /// (engine.deadline_unmeetable, engine.queue_budget), or ended early with DeadlineExceeded
    /// (request.deadline_unreachable): docs/engine.md, "Overload".
    /// </summary>
    public RequestHandle Submit(EngineRequest request) => _admission.Submit(request);

    /// <summary>The engine's estimate of how long a request of class <paramref name="priority"/> submitted now would
    /// wait before admission: prompt tokens queued at or above its class, over the rate at which queued prompt tokens
    /// were admitted recently while a queue existed. Zero before any queue has been observed.</summary>
    public TimeSpan EstimatedQueueWait(Priority priority) => _admission.EstimatedQueueWait(priority);

    /// <summary>The queue wait allowed now to a request without a deadline (<see cref="EngineOptions.QueueTarget"/>
    /// while the queue stands, <see cref="EngineOptions.QueueInterval"/> otherwise); zero when there is no budget.</summary>
    public TimeSpan QueueBudget => TimeSpan.FromSeconds(_control.BudgetTicks / (double)Stopwatch.Frequency);

    /// <summary>A snapshot of the counters; cheap enough to call every second.</summary>
    public EngineStats GetStats() => _counters.Snapshot(_admission, _kv);

    /// <summary>Copies the most recent step records (oldest first) into a new array, at most the history size.</summary>
    public StepRecord[] RecentSteps() => _counters.RecentSteps();

    /// <summary>Stops the loop: requests still queued or running end with Cancelled (engine.shutdown).</summary>
    public void Dispose()
    {
        _admission.Stop();
        if (Volatile.Read(ref _started) == 1) _thread.Join();
        else FailAll(RequestStatus.Cancelled, "engine.shutdown", "the engine was disposed");
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
                EndUnreachable(now);
                if (_admission.Stopping) break;

                var plan = _plans[next];
                _builder.Build(plan, now);
                EndShed();
                _control.ObserveQueue(now, _admission.WaitingRequests > 0);
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
                    if (inflight is not null) _post.PostProcess(inflight);
                    inflight = plan.Batch.TokenCount > 0 ? plan : null;
                    if (inflight is not null) next ^= 1;
                }
                else
                {
                    LaunchStep(plan);
                    WaitStep(plan);
                    _post.PostProcess(plan);
                }
                PublishGauges();
                _opt.AfterIteration?.Invoke();
            }
            if (inflight is not null)
            {
                WaitStep(inflight);
                _post.PostProcess(inflight);
            }
            FailAll(RequestStatus.Cancelled, "engine.shutdown", "the engine was shut down");
            _opt.AfterIteration?.Invoke();
        }
        catch (Exception e)
        {
            // A device fault or a scheduler bug: end every request with Failed and refuse new ones, rather than hang.
            // A backend's fault keeps its stable code (cuda.error, vulkan.device_lost...) in the requests' message.
            string failure = Environment.GetEnvironmentVariable("FASTSERVE_DEBUG") == "1" ? e.ToString()
                : e is FastServeException fe ? $"{fe.Code}: {fe.Message}" : $"{e.GetType().Name}: {e.Message}";
            _admission.Fail(failure);
            try { FailAll(RequestStatus.Failed, "engine.failed", failure); _opt.AfterIteration?.Invoke(); }
            catch (Exception again) { Console.Error.WriteLine($"fastserve: the engine failed ({failure}) and could not end every request: {again}"); }
        }
    }

    private void IdleWait()
    {
        _prevEndTicks = 0; // the device idles because there is no work, not because the scheduler is slow
        bool anyWaiting = _builder.HasWork;
        if (_admission.BeginSleep())
        {
            // Work that cannot be scheduled yet (a preempted sequence whose last token is still settling) retries
            // soon; otherwise sleep until a submission, a cancel, or the nearest deadline.
            int timeout = anyWaiting ? 1 : -1;
            if (_deadlines.TryPeek(out _, out long dl))
            {
                long ms = (dl - Stopwatch.GetTimestamp()) * 1000 / Stopwatch.Frequency + 1;
                timeout = timeout < 0 ? (int)Math.Clamp(ms, 0, int.MaxValue) : Math.Min(timeout, (int)Math.Clamp(ms, 0, int.MaxValue));
            }
            _admission.Sleep(timeout);
        }
        _admission.EndSleep();
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
        plan.IntervalTicks = _prevEndTicks != 0 ? Math.Max(0, b.EndTicks - _prevEndTicks) : 0;
        _prevEndTicks = b.EndTicks;
        plan.IdleGapTicks = gap;
        _counters.CountDeviceTime(busy, gap);
    }

    private void TakeIncoming()
    {
        while (_admission.TryTakeIncoming(out var s))
        {
            _builder.Enqueue(s);
            if (s.DeadlineTicks != long.MaxValue) _deadlines.Enqueue((s, s.Uid), s.DeadlineTicks);
        }
    }

    private void TakeCancels()
    {
        int n = _admission.PendingCancels;
        for (int i = 0; i < n && _admission.TryTakeCancel(out var c); i++)
        {
            if (c.Seq.Uid != c.Uid) continue;
            // Cancelled between its submission and this iteration's intake: it is taken in next time, then ended.
            if (c.Seq.State == SeqState.Submitted) _admission.PutBackCancel(c);
            else if (c.Seq.State != SeqState.Done) _post.Finish(c.Seq, RequestStatus.Cancelled, null, "request.cancelled", "cancelled by the caller");
        }
    }

    private void ExpireDeadlines(long now)
    {
        while (_deadlines.TryPeek(out var e, out long dl) && dl <= now)
        {
            _deadlines.Dequeue();
            if (e.Seq.Uid == e.Uid && e.Seq.State != SeqState.Done)
                _post.Finish(e.Seq, RequestStatus.DeadlineExceeded, null, "request.deadline_exceeded", "the request did not finish by its deadline");
        }
        // Entries of requests that ended early stay until their deadline passes; compact if they pile up.
        int live = _builder.LiveCount;
        if (_deadlines.Count > 4 * live + 4096)
        {
            var keep = new List<((Sequence, long), long)>();
            while (_deadlines.TryDequeue(out var e, out long dl))
                if (e.Seq.Uid == e.Uid && e.Seq.State != SeqState.Done) keep.Add((e, dl));
            foreach (var k in keep) _deadlines.Enqueue(k.Item1, k.Item2);
        }
    }

    // Running requests whose deadline would pass before their expected output is out, at the measured step interval:
    // ended now, before another step is spent on them (a token in flight is dropped with them).
    private void EndUnreachable(long now)
    {
        double step = _control.RecentStepSeconds;
        if (step <= 0) return;
        for (int i = _builder.RunningCount - 1; i >= 0; i--)
        {
            var s = _builder.RunningAt(i);
            if (s.DeadlineTicks == long.MaxValue) continue;
            int left = Math.Max(1, s.ExpectedOutput - s.Generated - s.Pending);
            double need = _control.ServiceSeconds(Math.Max(0, s.Uncomputed - s.Pending), left, step);
            if (now + (long)(need * Stopwatch.Frequency) > s.DeadlineTicks)
                _post.Finish(s, RequestStatus.DeadlineExceeded, null, "request.deadline_unreachable",
                    $"ended early: {left} more tokens at {step * 1000:F1} ms a step would end after the deadline");
        }
    }

    // Queued requests the builder dropped before their prefill (StepBuilder.Shed): refused as overloaded, with a
    // retry-after of the queue's expected wait, since another replica (or this one later) may still serve them.
    private void EndShed()
    {
        var shed = _builder.Shed;
        if (shed.Count == 0) return;
        var retry = TimeSpan.FromSeconds(Math.Clamp(_admission.EstimatedQueueWait(Priority.Batch).TotalSeconds, 0.01, 60));
        foreach (var (s, why) in shed)
        {
            if (why == ShedReason.Deadline)
                _post.Finish(s, RequestStatus.Overloaded, null, "engine.deadline_unmeetable",
                    "dropped before its prefill: it could no longer finish by its deadline", retry);
            else
            {
                _control.NoteBudgetRefusal();
                _post.Finish(s, RequestStatus.Overloaded, null, Admission.QueueBudgetCode,
                    $"dropped before its prefill: it waited longer than the queue budget and its tolerance, {_control.DropTicks * 1000 / Stopwatch.Frequency} ms", retry);
            }
        }
        shed.Clear();
    }

    private void FailAll(RequestStatus status, string code, string message)
    {
        TakeIncoming();
        foreach (var s in _builder.RunningSnapshot()) _post.Finish(s, status, null, code, message);
        while (_builder.TryDequeueWaiting(out var s)) _post.Finish(s, status, null, code, message);
        PublishGauges();
    }

    private void PublishGauges() => _counters.PublishRunning(_builder.RunningCount);
}

/// <summary>The engine's effective limits: its options clamped to the executor, fixed at construction. Rows per step,
/// sequences per step, context length and KV block size in tokens, vocabulary size, and the KV blocks kept free
/// when admitting a prompt while others run.</summary>
internal readonly record struct EngineLimits(int MaxTokens, int MaxSeqs, int Context, int BlockSize, int Vocab, int ReserveBlocks);
