using System.Diagnostics;

namespace FastServe.Scheduler.Engine;

/// <summary>
/// An engine's totals, its running gauge and its step history; <see cref="Snapshot"/> turns them into
/// <see cref="EngineStats"/>. The waiting gauges belong to <see cref="Admission"/> (they are its queue bounds) and
/// the KV gauges to <see cref="KvBlockManager"/>; a snapshot reads them from there.
///
/// Threads: every field is read by any thread (<see cref="Snapshot"/>, <see cref="RecentSteps"/>). Fields marked
/// "any thread" are also written by submitter threads, so every write to them is Interlocked; the others are written
/// only by the scheduler thread (Interlocked where a torn or stale read would matter, plain where the original
/// engine wrote them plainly: <see cref="_generated"/> and <see cref="_prefixHitTokens"/>, 64-bit and so untorn).
/// </summary>
internal sealed class EngineCounters
{
    // Any thread: submitters count requests and the ones they refuse, the scheduler thread the ones it ends.
    private long _submitted, _finished, _cancelled, _deadlineExceeded, _overloaded, _invalid, _failed;
    // Scheduler thread only.
    private long _preemptions, _wastedRows;
    private long _steps, _rows, _prefillRows, _generated, _prefixHitTokens;
    private long _deviceBusyTicks, _deviceIdleTicks, _schedulerCpuTicks;
    private double _unattributedTicks; // scheduler thread only
    private int _runningGauge;

    // The step ring: written by the scheduler thread, copied by RecentSteps, both under the lock.
    private readonly object _historyLock = new();
    private readonly StepRecord[] _history;

    public EngineCounters(int stepHistory) => _history = new StepRecord[stepHistory];

    // ---- any thread -----------------------------------------------------------------------------------------

    public void CountSubmitted() => Interlocked.Increment(ref _submitted);

    /// <summary>A request ended: refused inside Submit (Overloaded, Invalid, Cancelled, Failed) or ended by the
    /// scheduler thread (Finished, Cancelled, DeadlineExceeded, Failed).</summary>
    public void CountEnded(RequestStatus status)
    {
        switch (status)
        {
            case RequestStatus.Finished: Interlocked.Increment(ref _finished); break;
            case RequestStatus.Cancelled: Interlocked.Increment(ref _cancelled); break;
            case RequestStatus.DeadlineExceeded: Interlocked.Increment(ref _deadlineExceeded); break;
            case RequestStatus.Overloaded: Interlocked.Increment(ref _overloaded); break;
            case RequestStatus.Invalid: Interlocked.Increment(ref _invalid); break;
            default: Interlocked.Increment(ref _failed); break;
        }
    }

    // ---- scheduler thread -----------------------------------------------------------------------------------

    public void CountPreemption() => Interlocked.Increment(ref _preemptions);

    public void CountGenerated() => _generated++;

    /// <summary>Rows computed for a request that then missed its deadline: work spent for nothing.</summary>
    public void CountWastedRows(long rows) => Interlocked.Add(ref _wastedRows, rows);

    public void CountPrefixHitTokens(int tokens) => _prefixHitTokens += tokens;

    public void CountDeviceTime(long busyTicks, long idleTicks)
    {
        Interlocked.Add(ref _deviceBusyTicks, busyTicks);
        Interlocked.Add(ref _deviceIdleTicks, idleTicks);
    }

    /// <summary>Device time of rows no request paid for (scheduler thread only).</summary>
    public void CountUnattributedDevice(double ticks) => Volatile.Write(ref _unattributedTicks, _unattributedTicks + ticks);

    public void CountStep(int rows, int prefillRows)
    {
        Interlocked.Increment(ref _steps);
        Interlocked.Add(ref _rows, rows);
        Interlocked.Add(ref _prefillRows, prefillRows);
    }

    public void CountSchedulerCpu(long ticks) => Interlocked.Add(ref _schedulerCpuTicks, ticks);

    /// <summary>Stores the record of the step just counted by <see cref="CountStep"/>.</summary>
    public void RecordStep(in StepRecord rec)
    {
        lock (_historyLock) _history[(_steps - 1) % _history.Length] = rec;
    }

    public void PublishRunning(int running) => Volatile.Write(ref _runningGauge, running);

    /// <summary>Sequences running, as of the scheduler thread's last iteration.</summary>
    public int Running => Volatile.Read(ref _runningGauge);

    // ---- readers --------------------------------------------------------------------------------------------

    public EngineStats Snapshot(Admission admission, KvBlockManager kv)
    {
        double f = Stopwatch.Frequency;
        return new EngineStats
        {
            TakenAtTicks = Stopwatch.GetTimestamp(),
            WaitingRequests = admission.WaitingRequests,
            WaitingTokens = admission.WaitingTokens,
            RunningRequests = Volatile.Read(ref _runningGauge),
            KvBlocksTotal = kv.NumBlocks,
            KvBlocksUsed = kv.UsedBlocks,
            KvBlocksFree = kv.FreeBlocks,
            KvBlocksCachedIdle = kv.IdleCachedBlocks,
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
            WastedRows = Interlocked.Read(ref _wastedRows),
            PrefillRows = Interlocked.Read(ref _prefillRows),
            TokensGenerated = Interlocked.Read(ref _generated),
            PrefixQueries = kv.PrefixQueries,
            PrefixHits = kv.PrefixHits,
            PrefixHitTokens = Interlocked.Read(ref _prefixHitTokens),
            DeviceBusySeconds = Interlocked.Read(ref _deviceBusyTicks) / f,
            DeviceIdleSeconds = Interlocked.Read(ref _deviceIdleTicks) / f,
            DeviceUnattributedSeconds = Volatile.Read(ref _unattributedTicks) / f,
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
}
