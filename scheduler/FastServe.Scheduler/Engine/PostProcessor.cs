using System.Diagnostics;
using FastServe.Runtime.Generation;
using Microsoft.Extensions.ObjectPool;

namespace FastServe.Scheduler.Engine;

/// <summary>
/// Applies a finished step: appends each sampled token to its sequence, streams it, and ends the sequence on EOS,
/// a stop string, its length limit or a full context; counts the step and records it. <see cref="Finish"/> is the one
/// place a sequence ends (also for cancels, deadlines and shutdown): it releases the sequence's blocks, completes
/// its result, and returns it to the pool.
///
/// Threads: scheduler thread only (the engine's <see cref="InferenceEngine.Dispose"/> may call <see cref="Finish"/>
/// on its own thread when the scheduler thread never started). Holds no state of its own beyond read-only settings.
/// </summary>
internal sealed class PostProcessor
{
    private readonly StepBuilder _builder;
    private readonly Admission _admission;
    private readonly EngineCounters _counters;
    private readonly OverloadControl _control;
    private readonly ObjectPool<Sequence> _pool;
    private readonly Action<StepRecord>? _onStep;
    private readonly int[] _eos;
    private readonly int _ctx;

    public PostProcessor(EngineOptions options, EngineLimits limits, StepBuilder builder, Admission admission, EngineCounters counters,
        ObjectPool<Sequence> pool, OverloadControl control)
    {
        _control = control;
        _eos = [.. options.EosTokenIds];
        _onStep = options.OnStep;
        _ctx = limits.Context;
        _builder = builder;
        _admission = admission;
        _counters = counters;
        _pool = pool;
    }

    public void PostProcess(StepPlan plan)
    {
        long cpu0 = ThreadCpuClock.NowTicks();
        var b = plan.Batch;
        long now = Stopwatch.GetTimestamp();
        ChargeDeviceTime(plan);
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
            _counters.CountGenerated();

            if (!s.IgnoreEos && Array.IndexOf(_eos, tok) >= 0) Finish(s, RequestStatus.Finished, FinishReason.Eos);
            else if (s.Stop is not null && StopHit(s, tok)) Finish(s, RequestStatus.Finished, FinishReason.Stop);
            else if (s.Generated >= s.Sampling.MaxTokens) Finish(s, RequestStatus.Finished, FinishReason.Length);
            else if (s.Length > _ctx) Finish(s, RequestStatus.Finished, FinishReason.ContextFull);
        }

        _control.OnStep(now, b.TokenCount, plan.PrefillRows, plan.IntervalTicks, _admission.WaitingRequests > 0);
        _counters.CountStep(b.TokenCount, plan.PrefillRows);
        long cpu = plan.SchedulerCpuTicks + ThreadCpuClock.NowTicks() - cpu0;
        _counters.CountSchedulerCpu(cpu);
        var rec = new StepRecord(b.Id, b.Layout.SequenceCount, b.TokenCount, plan.PrefillRows, b.SampleCount, cpu,
            b.LaunchTicks, b.StartTicks, b.EndTicks, plan.IdleGapTicks);
        _counters.RecordStep(rec);
        _onStep?.Invoke(rec);
    }

    // Each request pays for the rows the step computed for it: its token-weighted share of the step's device time,
    // charged before any result of this step is sent. Rows of a sequence that ended before the step did (with the
    // overlap, the row launched after its EOS; a cancel) can no longer be charged to their request, whose FINAL has
    // gone: they are overhead of the step, shared by the requests still running in it, so the requests' charges add
    // up to the busy time. Only a step in which no request is left is unattributed.
    private void ChargeDeviceTime(StepPlan plan)
    {
        var b = plan.Batch;
        long busy = b.EndTicks - b.StartTicks;
        int n = b.Layout.SequenceCount;
        if (busy <= 0 || b.TokenCount == 0) { Array.Clear(plan.RowSeq, 0, n); return; }
        int liveRows = 0;
        for (int i = 0; i < n; i++)
            if (Live(plan, i)) liveRows += b.Layout.RowCount(i);
        if (liveRows == 0)
        {
            Array.Clear(plan.RowSeq, 0, n);
            _counters.CountUnattributedDevice(busy);
            return;
        }
        double perRow = busy / (double)liveRows;
        for (int i = 0; i < n; i++)
        {
            if (Live(plan, i)) plan.RowSeq[i]!.DeviceTicks += perRow * b.Layout.RowCount(i);
            plan.RowSeq[i] = null;
        }
    }

    private static bool Live(StepPlan plan, int i) =>
        plan.RowSeq[i] is { } s && s.Uid == plan.RowUid[i] && s.State != SeqState.Done;

    private static bool StopHit(Sequence s, int tok)
    {
        s.Stop!.Append(s.Decoder!.Append(tok));
        return s.Stop.Stopped;
    }

    /// <summary>Ends <paramref name="s"/> (running or queued) with its one result.</summary>
    public void Finish(Sequence s, RequestStatus status, FinishReason? reason, string? code = null, string? message = null,
        TimeSpan? retryAfter = null)
    {
        if (s.State == SeqState.Waiting && s.WaitingTokensCounted > 0) _admission.Abandoned(s);
        _builder.Release(s);
        var result = new RequestResult
        {
            Status = status,
            Finish = reason,
            ErrorCode = code,
            Message = message,
            RetryAfter = retryAfter,
            PromptTokens = s.PromptLength,
            CachedPromptTokens = s.CachedPromptTokens,
            OutputTokens = s.Tokens.AsSpan(s.PromptLength, s.Length - s.PromptLength).ToArray(),
            Preemptions = s.Preemptions,
            DeviceTime = TimeSpan.FromSeconds(s.DeviceTicks / Stopwatch.Frequency),
            Timestamps = new RequestTimestamps(s.Received, s.Admitted, s.FirstScheduled, s.FirstToken, Stopwatch.GetTimestamp()),
            Id = s.Id,
        };
        _counters.CountEnded(status);
        if (status == RequestStatus.DeadlineExceeded) _counters.CountWastedRows(s.RowsSpent);
        else if (status == RequestStatus.Finished) _control.OnFinished(s.Generated);
        s.State = SeqState.Done;
        s.Writer?.TryComplete();
        s.Sink?.OnFinished(s.SinkTag, result);
        s.Completion.TrySetResult(result);
        _pool.Return(s);
    }
}
