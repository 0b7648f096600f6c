using System.Diagnostics;
using FastServe.Runtime.Generation;

namespace FastServe.Scheduler.Engine;

/// <summary>
/// Builds each step: which sequences run, how many rows each computes, which KV blocks they hold. Owns the running
/// list (sorted by priority class, then arrival), the per-class waiting queues, the step ids, and every sequence's
/// block table; it preempts (drops a sequence's blocks and queues it again) when blocks run out.
///
/// Threads: scheduler thread only, every field and method (or the thread disposing an engine whose loop never
/// started). It reports queue movements to <see cref="Admission"/>
/// (whose gauges other threads read) and counts preemptions and prefix hits in <see cref="EngineCounters"/>.
///
/// Overload: a queued request about to be admitted that can no longer finish by its deadline, or (without a deadline)
/// has waited beyond the queue budget, is not admitted but put in <see cref="Shed"/> for the engine to end: no prefill
/// is spent on it. Only requests never admitted are shed this way; a preempted one keeps its place.
/// </summary>
internal sealed class StepBuilder
{
    private readonly KvBlockManager _kv;
    private readonly Admission _admission;
    private readonly EngineCounters _counters;
    private readonly OverloadControl _control;
    private readonly bool _prefixCaching;
    private readonly int _maxTokens, _maxSeqs, _blockSize, _ctx, _reserve;

    private readonly List<Sequence> _running = [];                     // sorted by (priority, arrival)
    private readonly PriorityQueue<(Sequence Seq, long Uid), long>[] _waiting = [new(), new()]; // per class, by arrival
    private long _nextStepId;

    public StepBuilder(EngineLimits limits, bool prefixCaching, KvBlockManager kv, Admission admission, EngineCounters counters,
        OverloadControl control)
    {
        _control = control;
        (_maxTokens, _maxSeqs, _blockSize, _ctx, _reserve) = (limits.MaxTokens, limits.MaxSeqs, limits.BlockSize, limits.Context, limits.ReserveBlocks);
        _prefixCaching = prefixCaching;
        _kv = kv;
        _admission = admission;
        _counters = counters;
    }

    public int RunningCount => _running.Count;

    /// <summary>The running sequence at <paramref name="i"/> (priority, then arrival order).</summary>
    public Sequence RunningAt(int i) => _running[i];

    /// <summary>Queued requests the last <see cref="Build"/> took out of the queue without admitting them, because
    /// they could not finish in time (<see cref="ShedReason"/>); the engine ends them and clears the list.</summary>
    public List<(Sequence Seq, ShedReason Reason)> Shed { get; } = [];

    /// <summary>Sequences running or queued (queues may still hold entries of sequences that ended meanwhile).</summary>
    public int LiveCount => _running.Count + _waiting[0].Count + _waiting[1].Count;

    public bool HasWork => _waiting[0].Count + _waiting[1].Count > 0 || _running.Count > 0;

    /// <summary>Queues a sequence just taken in from <see cref="Admission"/>.</summary>
    public void Enqueue(Sequence s)
    {
        s.State = SeqState.Waiting;
        _waiting[(int)s.Priority].Enqueue((s, s.Uid), s.ArrivalOrder);
    }

    /// <summary>Takes <paramref name="s"/> out of the running list (if there) and gives back its blocks; it is ending.</summary>
    public void Release(Sequence s)
    {
        if (s.State == SeqState.Running) _running.Remove(s);
        DropBlocks(s);
    }

    /// <summary>For shutdown: the running sequences, copied (ending one changes the list).</summary>
    public Sequence[] RunningSnapshot() => _running.ToArray();

    /// <summary>For shutdown: the next live queued sequence, interactive before batch, removed from its queue.</summary>
    public bool TryDequeueWaiting(out Sequence s)
    {
        foreach (var q in _waiting)
            while (q.TryDequeue(out var e, out _))
                if (e.Seq.Uid == e.Uid && e.Seq.State != SeqState.Done) { s = e.Seq; return true; }
        s = null!;
        return false;
    }

    public void Build(StepPlan plan, long now)
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
            // The head is checked for shedding even when there is no room, so that a full batch does not keep a
            // request that can no longer make it waiting for its answer.
            while (q.TryPeek(out var e, out _))
            {
                var s = e.Seq;
                if (s.Uid != e.Uid || s.State != SeqState.Waiting) { q.Dequeue(); continue; }
                if (ShouldShed(s, now) is { } why) { q.Dequeue(); Shed.Add((s, why)); continue; }
                if (budget <= 0 || _running.Count >= _maxSeqs || plan.Batch.Layout.SequenceCount >= _maxSeqs) break;
                if (s.Pending > 0) { blocked = true; break; } // preempted with a token still in flight: next step
                if (!TryAdmit(plan, s, ref budget)) { blocked = true; break; }
                q.Dequeue();
            }
        }
        _nextStepId++;
    }

    // A request never admitted yet that would now miss its deadline even if admitted at once, or that has waited
    // beyond the queue budget and its tolerance (requests without a deadline; OverloadControl.DropTicks).
    private ShedReason? ShouldShed(Sequence s, long now)
    {
        if (s.Admitted != 0) return null;
        if (s.DeadlineTicks != long.MaxValue)
        {
            // Alone, it runs at the fastest step seen (see Admission.Submit).
            double step = _running.Count == 0 ? _control.FastestStepSeconds : _control.PredictStepSeconds(_running.Count, false);
            double need = _control.ServiceSeconds(s.Uncomputed, s.ExpectedOutput, step);
            return now + (long)(need * Stopwatch.Frequency) > s.DeadlineTicks ? ShedReason.Deadline : null;
        }
        long drop = _control.DropTicks;
        return drop > 0 && now - s.Received > drop ? ShedReason.QueueBudget : null;
    }

    private bool TryAdmit(StepPlan plan, Sequence s, ref int budget)
    {
        int matched = 0;
        if (_prefixCaching && s.BlockCount == 0)
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
        _admission.Admitted(s);
        if (s.Admitted == 0)
        {
            s.Admitted = Stopwatch.GetTimestamp();
            s.CachedPromptTokens = matched;
        }
        _counters.CountPrefixHitTokens(matched);
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
        plan.RowSeq[seqIndex] = s;
        plan.RowUid[seqIndex] = s.Uid;
        int rowStart = plan.Batch.Layout.RowStart(seqIndex);
        if (s.Pending > 0) plan.AddPatch(rowStart + rows - 1, s.PendingSample);
        bool decode = rows == 1 && (s.Pending > 0 || start == s.Length - 1) && s.Generated > 0;
        if (!decode) plan.PrefillRows += rows;
        s.Computed += rows;
        s.RowsSpent += rows;
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
        if (!_prefixCaching) return;
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
        _counters.CountPreemption();
        _admission.Requeued(s, s.Length);
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
}

/// <summary>Why a queued request was dropped before its prefill.</summary>
internal enum ShedReason : byte
{
    /// <summary>Its deadline would pass before it could finish, even admitted now.</summary>
    Deadline,
    /// <summary>It has no deadline and waited longer than the queue budget.</summary>
    QueueBudget,
}
