using System.Diagnostics;
using FastServe.Protocol.Stats;
using FastServe.Runtime.Generation;
using FastServe.Scheduler.Engine;

namespace FastServe.Scheduler.Load;

/// <summary>Shape of an open-loop load run.</summary>
public sealed record OpenLoopOptions
{
    /// <summary>Mean arrivals per second (Poisson process).</summary>
    public required double Rate { get; init; }
    /// <summary>Measurement window, after the warm-up.</summary>
    public TimeSpan Duration { get; init; } = TimeSpan.FromSeconds(10);
    public TimeSpan Warmup { get; init; } = TimeSpan.FromSeconds(2);
    /// <summary>How long to wait, after arrivals stop, for measured requests still running.</summary>
    public TimeSpan DrainLimit { get; init; } = TimeSpan.FromSeconds(30);
    public int InputTokens { get; init; } = 50;
    public int OutputTokens { get; init; } = 50;
    /// <summary>Leading tokens every prompt shares (an instruction prefix); counted within InputTokens.</summary>
    public int SharedPrefixTokens { get; init; }
    /// <summary>Token ids are drawn from [<see cref="TokenLow"/>, <see cref="TokenHigh"/>).</summary>
    public int TokenLow { get; init; } = 1000;
    public int TokenHigh { get; init; } = 100000;
    public TimeSpan? Deadline { get; init; }
    public Priority Priority { get; init; } = Priority.Interactive;
    /// <summary>Fraction of requests sent as <see cref="Priority.Batch"/> instead of <see cref="Priority"/> (drawn per request).</summary>
    public double BatchFraction { get; init; }
    public double SloSeconds { get; init; } = 1.0;
    public int Seed { get; init; } = 1;
    /// <summary>Read every token off each request's stream, as a server would (else only the final result).</summary>
    public bool ReadStreams { get; init; } = true;
}

/// <summary>What one open-loop run measured. Latencies cover requests that arrived inside the window.</summary>
public sealed record OpenLoopResult
{
    public double OfferedRate { get; init; }
    /// <summary>Requests that finished inside the window, per second of window.</summary>
    public double AchievedRate { get; init; }
    /// <summary>Requests that arrived inside the window and finished within the SLO, per second of window.</summary>
    public double Goodput { get; init; }
    public int Arrived { get; init; }
    public int Finished { get; init; }
    public int Overloaded { get; init; }
    public int DeadlineExceeded { get; init; }
    /// <summary>Arrived in the window but not finished when the drain limit ran out (counted as infinitely late).</summary>
    public int Unfinished { get; init; }
    public int OtherErrors { get; init; }
    /// <summary>Measured requests that did not finish, by error code (engine.queue_budget, request.deadline_unreachable...).</summary>
    public IReadOnlyDictionary<string, int> ErrorCodes { get; init; } = new Dictionary<string, int>();
    public double GeneratedTokensPerSecond { get; init; }
    /// <summary>Latencies in seconds.</summary>
    public LatencySummary Ttft { get; init; }
    public LatencySummary EndToEnd { get; init; }
    /// <summary>End to end over the requests the engine admitted: finished, deadline_exceeded and unfinished ones
    /// (refusals excluded).</summary>
    public LatencySummary AdmittedEndToEnd { get; init; }
    public LatencySummary QueueWait { get; init; }
    public double MeanRowsPerStep { get; init; }
    public double MeanSequencesPerStep { get; init; }
    public double SchedulerCpuPerStepMean { get; init; }
    public double SchedulerCpuPerStepP99 { get; init; }
    public double ForwardPerStepMean { get; init; }
    public double DeviceIdleFraction { get; init; }
    public double PrefixHitRate { get; init; }
    public long Preemptions { get; init; }
    /// <summary>Rows the engine computed over the window, and of them the rows spent on requests that then missed their
    /// deadline (<see cref="EngineStats.WastedRows"/>).</summary>
    public long RowsComputed { get; init; }
    public long WastedRows { get; init; }
    /// <summary>Measured requests refused as overloaded after a step had already been spent on them (0 when every
    /// refusal came before any prefill).</summary>
    public int RefusedAfterScheduling { get; init; }
    /// <summary>Measured requests by class: sent, finished within the SLO.</summary>
    public int BatchArrived { get; init; }
    public int BatchGood { get; init; }
    public int InteractiveArrived { get; init; }
    public int InteractiveGood { get; init; }
    public long Steps { get; init; }
    /// <summary>Managed bytes allocated per generated token over the window (all threads, load generator included).</summary>
    public double AllocatedBytesPerToken { get; init; }

    /// <summary>Met the SLO: P99 end-to-end within it, nothing rejected or left unfinished, and throughput kept up
    /// with the offered rate.</summary>
    public bool MeetsSlo(double sloSeconds) =>
        Unfinished == 0 && Overloaded == 0 && OtherErrors == 0 && EndToEnd.P99 <= sloSeconds && AchievedRate >= 0.9 * OfferedRate;
}

/// <summary>
/// Open-loop load against an in-process engine: arrivals follow a Poisson process at a fixed rate whatever the
/// engine's speed (so queueing shows up as latency rather than as a slower client), each request is stamped with its
/// intended arrival time (a late submission does not hide its delay), and requests are measured by arrival window.
/// </summary>
public static class OpenLoop
{
    public static OpenLoopResult Run(InferenceEngine engine, OpenLoopOptions o, Action<double>? progress = null, CancellationToken ct = default)
    {
        if (!(o.Rate > 0) || double.IsInfinity(o.Rate)) throw new ArgumentOutOfRangeException(nameof(o), "rate must be positive");
        var rng = new Random(o.Seed);
        int vocabHigh = Math.Min(o.TokenHigh, engine.Executor.VocabSize);
        int low = Math.Min(o.TokenLow, vocabHigh - 1);
        var prefix = new int[Math.Min(o.SharedPrefixTokens, o.InputTokens)];
        for (int i = 0; i < prefix.Length; i++) prefix[i] = rng.Next(low, vocabHigh);
        var sampling = new SamplingParams { MaxTokens = o.OutputTokens, IgnoreEos = true };

        double f = Stopwatch.Frequency;
        long t0 = Stopwatch.GetTimestamp();
        long windowStart = t0 + (long)(o.Warmup.TotalSeconds * f);
        long windowEnd = windowStart + (long)(o.Duration.TotalSeconds * f);
        var outcomes = new List<Task<(bool Measured, RequestResult Result)>>();
        var handles = new List<RequestHandle>();
        var classes = new List<Priority>();
        EngineStats? before = null;
        long allocBefore = 0;

        double next = t0;
        while (!ct.IsCancellationRequested)
        {
            next += -Math.Log(1 - rng.NextDouble()) / o.Rate * f;
            if (next >= windowEnd) break;
            long due = (long)next;
            SleepUntil(due);
            if (before is null && due >= windowStart)
            {
                before = engine.GetStats();
                allocBefore = GC.GetTotalAllocatedBytes();
            }
            var prompt = new int[o.InputTokens];
            prefix.CopyTo(prompt, 0);
            for (int i = prefix.Length; i < prompt.Length; i++) prompt[i] = rng.Next(low, vocabHigh);
            var priority = o.BatchFraction > 0 && rng.NextDouble() < o.BatchFraction ? Priority.Batch : o.Priority;
            var h = engine.Submit(new EngineRequest
            {
                Prompt = prompt, Sampling = sampling, Priority = priority, Deadline = o.Deadline, ReceivedTicks = due,
            });
            classes.Add(priority);
            handles.Add(h);
            outcomes.Add(Track(h, due >= windowStart, o.ReadStreams));
            progress?.Invoke(Math.Min(1, (Stopwatch.GetTimestamp() - t0) / (double)(windowEnd - t0)));
        }
        before ??= engine.GetStats();
        SleepUntil(windowEnd);
        var after = engine.GetStats();
        long allocAfter = GC.GetTotalAllocatedBytes();
        var steps = engine.RecentSteps().Where(s => s.LaunchTicks >= windowStart && s.LaunchTicks < windowEnd).ToArray();

        // Let measured requests finish (bounded), then cancel whatever is left so the engine is clean.
        var late = new bool[outcomes.Count];
        if (!Task.WhenAll(outcomes).Wait(o.DrainLimit))
        {
            for (int i = 0; i < outcomes.Count; i++)
            {
                if (outcomes[i].IsCompleted) continue;
                late[i] = true;
                handles[i].Cancel();
            }
            Task.WhenAll(outcomes).Wait();
        }
        return Summarize(o, outcomes, classes, late, before, after, steps, windowStart, windowEnd, allocAfter - allocBefore);
    }

    private static async Task<(bool, RequestResult)> Track(RequestHandle h, bool measured, bool read)
    {
        if (read)
        {
            var r = h.Tokens;
            while (await r.WaitToReadAsync().ConfigureAwait(false))
                while (r.TryRead(out _)) { }
        }
        return (measured, await h.Completion.ConfigureAwait(false));
    }

    private static OpenLoopResult Summarize(OpenLoopOptions o, List<Task<(bool Measured, RequestResult Result)>> outcomes, List<Priority> classes, bool[] late,
        EngineStats before, EngineStats after, StepRecord[] steps, long windowStart, long windowEnd, long allocated)
    {
        double f = Stopwatch.Frequency, window = (windowEnd - windowStart) / f;
        SampleSet ttft = new(), e2e = new(), queue = new(), admitted = new();
        int arrived = 0, finished = 0, overloaded = 0, deadline = 0, unfinished = 0, other = 0, good = 0, finishedInWindow = 0;
        var classArrived = new int[2];
        var classGood = new int[2];
        int refusedLate = 0;
        var codes = new SortedDictionary<string, int>(StringComparer.Ordinal);
        for (int i = 0; i < outcomes.Count; i++)
        {
            var (measured, r) = outcomes[i].Result;
            if (late[i])
            {
                if (measured) { unfinished++; arrived++; classArrived[(int)classes[i]]++; }
                continue;
            }
            var ts = r.Timestamps;
            if (r.Status == RequestStatus.Finished && ts.Finished >= windowStart && ts.Finished < windowEnd) finishedInWindow++;
            if (!measured) continue;
            arrived++;
            classArrived[(int)classes[i]]++;
            if (r.Status != RequestStatus.Finished) codes[r.ErrorCode ?? r.Status.ToString()] = codes.GetValueOrDefault(r.ErrorCode ?? r.Status.ToString()) + 1;
            switch (r.Status)
            {
                case RequestStatus.Finished:
                    finished++;
                    e2e.Add(ts.EndToEnd);
                    if (!double.IsNaN(ts.TimeToFirstToken)) ttft.Add(ts.TimeToFirstToken);
                    if (!double.IsNaN(ts.QueueWait)) queue.Add(ts.QueueWait);
                    if (ts.EndToEnd <= o.SloSeconds) { good++; classGood[(int)classes[i]]++; }
                    admitted.Add(ts.EndToEnd);
                    break;
                case RequestStatus.Overloaded: overloaded++; if (ts.FirstScheduled != 0) refusedLate++; break;
                case RequestStatus.DeadlineExceeded: deadline++; admitted.Add(ts.EndToEnd); break;
                default: other++; break;
            }
        }
        // Unfinished requests are infinitely late for the percentiles.
        for (int i = 0; i < unfinished; i++) { e2e.Add(double.PositiveInfinity); admitted.Add(double.PositiveInfinity); }
        var d = after.Since(before);
        var cpu = steps.Select(s => s.SchedulerCpuSeconds).ToArray();
        Array.Sort(cpu);
        return new OpenLoopResult
        {
            OfferedRate = o.Rate,
            AchievedRate = finishedInWindow / window,
            Goodput = good / window,
            Arrived = arrived,
            Finished = finished,
            Overloaded = overloaded,
            DeadlineExceeded = deadline,
            Unfinished = unfinished,
            OtherErrors = other,
            GeneratedTokensPerSecond = d.TokensGenerated / window,
            Ttft = ttft.Summarize(),
            EndToEnd = e2e.Summarize(),
            AdmittedEndToEnd = admitted.Summarize(),
            ErrorCodes = codes,
            QueueWait = queue.Summarize(),
            MeanRowsPerStep = d.Steps == 0 ? 0 : d.RowsComputed / (double)d.Steps,
            MeanSequencesPerStep = steps.Length == 0 ? 0 : steps.Average(s => s.Sequences),
            SchedulerCpuPerStepMean = d.Steps == 0 ? 0 : d.SchedulerCpuSeconds / d.Steps,
            SchedulerCpuPerStepP99 = cpu.Length == 0 ? 0 : SampleSet.Rank(cpu, 0.99),
            ForwardPerStepMean = steps.Length == 0 ? 0 : steps.Average(s => s.ForwardSeconds),
            DeviceIdleFraction = d.DeviceIdleFraction,
            PrefixHitRate = d.PrefixHitRate,
            Preemptions = d.Preemptions,
            RowsComputed = d.RowsComputed,
            WastedRows = d.WastedRows,
            RefusedAfterScheduling = refusedLate,
            InteractiveArrived = classArrived[(int)Priority.Interactive],
            InteractiveGood = classGood[(int)Priority.Interactive],
            BatchArrived = classArrived[(int)Priority.Batch],
            BatchGood = classGood[(int)Priority.Batch],
            Steps = d.Steps,
            AllocatedBytesPerToken = d.TokensGenerated == 0 ? 0 : allocated / (double)d.TokensGenerated,
        };
    }

    // Sleeps in coarse steps, then yields, so arrivals land within tens of microseconds of their schedule.
    private static void SleepUntil(long due)
    {
        while (true)
        {
            long left = due - Stopwatch.GetTimestamp();
            if (left <= 0) return;
            double ms = left * 1000.0 / Stopwatch.Frequency;
            if (ms > 2) Thread.Sleep((int)(ms - 1));
            else Thread.Yield();
        }
    }
}
