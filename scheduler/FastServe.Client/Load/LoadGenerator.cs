using System.Diagnostics;
using FastServe.Protocol;
using FastServe.Protocol.Stats;

namespace FastServe.Client.Load;

/// <summary>
/// Drives load at a FastServe replica or router over several connections and measures it (docs/client.md).
/// Open loop: requests are sent at times drawn from an <see cref="ArrivalProcess"/> by a dedicated thread, whatever
/// the server's speed, and each is measured from its intended send time, so queueing anywhere (server, network or the
/// generator itself) shows up as latency (no coordinated omission). Closed loop: C requests always in flight.
/// </summary>
public static class LoadGenerator
{
    /// <summary>Runs one measurement: connect, warm up, measure for the window, drain, disconnect.</summary>
    /// <param name="progress">Called about five times a second from a pool thread.</param>
    /// <exception cref="FastServeClientException">The connections could not be opened (<c>client.connect_failed</c>, ...).</exception>
    /// <exception cref="ArgumentException">Inconsistent options.</exception>
    public static async Task<BenchResult> RunAsync(BenchOptions o, Action<BenchProgress>? progress = null, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(o);
        o.Validate();
        var prompts = o.Prompts ?? GrammarCorpus.Prompts();
        var requests = prompts.Select(p => new CompletionRequest { Prompt = p, Params = o.Params }).ToArray();
        var clientOptions = (o.ClientOptions ?? new FastServeClientOptions()) with { CollectOutput = false };
        await using var conns = await ConnectionSet.OpenAsync(o.Host, o.Port, o.Connections, clientOptions, ct).ConfigureAwait(false);
        if (o.SettleLimit > TimeSpan.Zero) await SettleAsync(conns.First, o.SettleLimit, ct).ConfigureAwait(false);

        double f = Stopwatch.Frequency;
        long t0 = Stopwatch.GetTimestamp() + (long)(0.01 * f);
        long windowStart = t0 + (long)(o.Warmup.TotalSeconds * f);
        long windowEnd = windowStart + (long)(o.Duration.TotalSeconds * f);
        var rec = new Recorder(o);

        using var stopProgress = new CancellationTokenSource();
        var progressTask = progress is null ? Task.CompletedTask : ReportProgressAsync(rec, progress, t0, windowEnd, stopProgress.Token);
        try
        {
            if (o.Concurrency is { } c) await RunClosedAsync(o, c, conns, requests, rec, windowStart, windowEnd, ct).ConfigureAwait(false);
            else await RunOpenAsync(o, conns, requests, rec, t0, windowStart, windowEnd, ct).ConfigureAwait(false);

            // Let measured requests finish, within the drain limit; the rest count as unfinished.
            long drainEnd = Math.Max(Stopwatch.GetTimestamp(), windowEnd) + (long)(o.DrainLimit.TotalSeconds * f);
            while (rec.OutstandingMeasured > 0 && Stopwatch.GetTimestamp() < drainEnd && !ct.IsCancellationRequested)
                await Task.Delay(5, CancellationToken.None).ConfigureAwait(false);
            rec.AbandonOutstanding();
        }
        finally
        {
            stopProgress.Cancel();
            await progressTask.ConfigureAwait(false);
        }
        ct.ThrowIfCancellationRequested();
        return rec.Summarize((windowEnd - windowStart) / f, conns.Reconnects);
    }

    // Waits until the server reports nothing running or queued, or the limit passes.
    private static async Task SettleAsync(FastServeClient client, TimeSpan limit, CancellationToken ct)
    {
        var clock = Stopwatch.StartNew();
        while (clock.Elapsed < limit)
        {
            LoadReport r;
            try { r = await client.GetLoadAsync(ct).WaitAsync(TimeSpan.FromSeconds(1), ct).ConfigureAwait(false); }
            catch (Exception e) when (e is TimeoutException or FastServeClientException) { return; }
            if (r.Running + r.Queued == 0) return;
            await Task.Delay(50, ct).ConfigureAwait(false);
        }
    }

    private static async Task ReportProgressAsync(Recorder rec, Action<BenchProgress> progress, long t0, long windowEnd, CancellationToken stop)
    {
        while (!stop.IsCancellationRequested)
        {
            double frac = Math.Clamp((Stopwatch.GetTimestamp() - t0) / (double)(windowEnd - t0), 0, 1);
            progress(rec.Snapshot(frac));
            try { await Task.Delay(200, stop).ConfigureAwait(false); }
            catch (OperationCanceledException) { break; }
        }
        progress(rec.Snapshot(1));
    }

    private static Task RunOpenAsync(BenchOptions o, ConnectionSet conns, CompletionRequest[] requests, Recorder rec,
        long t0, long windowStart, long windowEnd, CancellationToken ct)
    {
        var profile = o.Profile ?? new ConstantProfile(o.Rate!.Value, o.Duration.TotalSeconds);
        var arrivals = new ArrivalProcess(o.Arrival, o.Burstiness, profile, o.Warmup.TotalSeconds, o.Seed);
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        // A dedicated thread: timers and the thread pool are too coarse for sub-millisecond arrival gaps.
        var thread = new Thread(() =>
        {
            try
            {
                var pick = new Random(o.Seed ^ 0x5bd1e995);
                double f = Stopwatch.Frequency;
                while (!ct.IsCancellationRequested)
                {
                    long due = t0 + (long)(arrivals.Next() * f);
                    if (due >= windowEnd) break;
                    SleepUntil(due, ct);
                    Send(conns, requests[pick.Next(requests.Length)], rec, due, due >= windowStart);
                }
                SleepUntil(windowEnd, ct);
                done.SetResult();
            }
            catch (Exception e)
            {
                done.SetException(e);
            }
        })
        { IsBackground = true, Name = "fastserve-bench-arrivals", Priority = ThreadPriority.AboveNormal };
        thread.Start();
        return done.Task;
    }

    private static async Task RunClosedAsync(BenchOptions o, int concurrency, ConnectionSet conns, CompletionRequest[] requests, Recorder rec,
        long windowStart, long windowEnd, CancellationToken ct)
    {
        // Each of the C chains starts its next request from the previous one's completion, on the thread that
        // completed it (the connection's receive loop): no await, timer or thread hop per request, so the generator
        // stays cheap beside a server on the same machine.
        var loop = new ClosedLoop(conns, requests, rec, windowStart, windowEnd, concurrency, ct);
        for (int w = 0; w < concurrency; w++) new Chain(loop, new Random(o.Seed * 7919 + w)).Next();
        double f = Stopwatch.Frequency;
        long left = windowEnd + (long)(o.DrainLimit.TotalSeconds * f) - Stopwatch.GetTimestamp();
        if (left > 0)
        {
            try { await loop.AllEnded.Task.WaitAsync(TimeSpan.FromSeconds(left / f), ct).ConfigureAwait(false); }
            catch (Exception e) when (e is TimeoutException or OperationCanceledException) { }
        }
    }

    private sealed class ClosedLoop(ConnectionSet conns, CompletionRequest[] requests, Recorder rec, long windowStart, long windowEnd,
        int chains, CancellationToken ct)
    {
        public readonly ConnectionSet Conns = conns;
        public readonly CompletionRequest[] Requests = requests;
        public readonly Recorder Rec = rec;
        public readonly long WindowStart = windowStart, WindowEnd = windowEnd;
        public readonly CancellationToken Ct = ct;
        public readonly TaskCompletionSource AllEnded = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private int _live = chains;

        public void ChainEnded()
        {
            if (Interlocked.Decrement(ref _live) == 0) AllEnded.TrySetResult();
        }
    }

    // One closed-loop slot: one request in flight at a time, the next started when the last completes.
    private sealed class Chain(ClosedLoop loop, Random pick) : ICompletionObserver
    {
        [ThreadStatic] private static int t_depth;

        public void Next()
        {
            // A call that fails inside Start (connection gone) completes at once and would recurse here: past a few
            // levels, continue on the thread pool instead.
            if (t_depth > 8)
            {
                ThreadPool.UnsafeQueueUserWorkItem(static c => c.Next(), this, preferLocal: false);
                return;
            }
            t_depth++;
            try
            {
                long now = Stopwatch.GetTimestamp();
                if (now >= loop.WindowEnd || loop.Ct.IsCancellationRequested)
                {
                    loop.ChainEnded();
                    return;
                }
                var request = loop.Requests[pick.Next(loop.Requests.Length)];
                if (Send(loop.Conns, request, loop.Rec, now, now >= loop.WindowStart, this) is null)
                    _ = Task.Delay(10, CancellationToken.None).ContinueWith(static (_, c) => ((Chain)c!).Next(), this, TaskScheduler.Default);
            }
            finally
            {
                t_depth--;
            }
        }

        public void OnCompleted(CompletionCall call, CompletionResult result)
        {
            // A throttled call ends inside Start: going on at once would spin, refusing locally at CPU speed.
            if (result.ClientFailure == ClientFailure.Throttled)
                _ = Task.Delay(10, CancellationToken.None).ContinueWith(static (_, c) => ((Chain)c!).Next(), this, TaskScheduler.Default);
            else Next();
        }
    }

    // Starts one request (or records a connection_lost failure when no connection is up). Null in the latter case.
    // The outcome is recorded on the completing thread, then `then` (if any) hears of it.
    private static CompletionCall? Send(ConnectionSet conns, CompletionRequest request, Recorder rec, long intended, bool measured,
        ICompletionObserver? then = null)
    {
        var p = new Pending(rec, intended, measured, then);
        var client = conns.Pick();
        if (client is null)
        {
            var lost = new CompletionCall(null, 0, stream: false, collect: false) { StartedTimestamp = Stopwatch.GetTimestamp() };
            lost.Fail(ClientFailure.ConnectionLost, WireStatus.Unavailable, "connection_lost", "client.no_connection", "no connection to the server is up", retriable: true);
            rec.OnSent(p, Stopwatch.GetTimestamp() - intended);
            rec.OnDone(p, lost.Completion.Result);
            return null;
        }
        // Counted before Start: the call may complete (on the receive loop) before Start returns.
        rec.OnSent(p, Stopwatch.GetTimestamp() - intended);
        var call = client.Start(request, stream: true, observer: p);
        p.Call = call;
        return call;
    }

    // Sleeps in coarse steps, then yields, so sends land within tens of microseconds of their schedule.
    private static void SleepUntil(long due, CancellationToken ct)
    {
        while (!ct.IsCancellationRequested)
        {
            long left = due - Stopwatch.GetTimestamp();
            if (left <= 0) return;
            double ms = left * 1000.0 / Stopwatch.Frequency;
            if (ms > 2) Thread.Sleep((int)(ms - 1));
            else Thread.Yield();
        }
    }

    internal sealed class Pending(Recorder recorder, long intended, bool measured, ICompletionObserver? then) : ICompletionObserver
    {
        public readonly Recorder Recorder = recorder;
        public readonly long Intended = intended;
        public readonly bool Measured = measured;
        public CompletionCall? Call;

        public void OnCompleted(CompletionCall call, CompletionResult result)
        {
            Recorder.OnDone(this, result);
            then?.OnCompleted(call, result);
        }
        /// <summary>0 running, 1 recorded, 2 abandoned at the drain limit (guarded by the recorder's lock).</summary>
        public int State;
    }

    /// <summary>Collects outcomes; every member takes the lock.</summary>
    internal sealed class Recorder
    {
        private readonly object _lock = new();
        private readonly BenchOptions _o;
        private readonly SampleSet _ttft = new(seed: 1), _tpot = new(seed: 2), _e2e = new(seed: 3), _lag = new(seed: 4);
        private readonly SampleSet _admittedE2e = new(seed: 5), _rejection = new(seed: 6);
        private readonly Dictionary<string, long> _errors = new();
        private readonly HashSet<Pending> _outstanding = new(ReferenceEqualityComparer.Instance);
        private readonly double[] _serverSum = new double[ServerTimings.Names.Length];
        private readonly long[] _serverCount = new long[ServerTimings.Names.Length];
        private long _sentAll, _doneAll, _errorsAll;
        private long _sent, _ok, _good, _unfinished, _promptTokens, _completionTokens, _throttled, _admitted;
        private int _inFlight;

        public Recorder(BenchOptions o) => _o = o;

        public int OutstandingMeasured { get { lock (_lock) return _outstanding.Count; } }

        public void OnSent(Pending p, long lagTicks)
        {
            lock (_lock)
            {
                _sentAll++;
                _inFlight++;
                if (!p.Measured) return;
                _sent++;
                _outstanding.Add(p);
                _lag.Add(Math.Max(0, lagTicks) * 1000.0 / Stopwatch.Frequency);
            }
        }

        public void OnDone(Pending p, CompletionResult r)
        {
            double f = Stopwatch.Frequency;
            lock (_lock)
            {
                _doneAll++;
                _inFlight--;
                if (!r.IsOk) _errorsAll++;
                if (!p.Measured || p.State != 0) return;
                p.State = 1;
                _outstanding.Remove(p);
                _promptTokens += r.PromptTokens;
                _completionTokens += r.CompletionTokens;
                if (r.ClientFailure == ClientFailure.Throttled) _throttled++;
                else if (r.ClientFailure == ClientFailure.None)
                {
                    // The server's answer: admitted (the throttle's "accept", whatever came of it), or refused for load,
                    // timed from the actual send so the generator's own lag does not count as the server's.
                    if (AdaptiveThrottle.IsLoadRefusal(r.Status)) _rejection.Add((r.FinalTimestamp - r.StartedTimestamp) * 1000 / f);
                    else
                    {
                        _admitted++;
                        _admittedE2e.Add((r.FinalTimestamp - p.Intended) * 1000 / f);
                    }
                }
                if (!r.IsOk)
                {
                    _errors[r.StatusName] = _errors.GetValueOrDefault(r.StatusName) + 1;
                    return;
                }
                _ok++;
                double e2e = (r.FinalTimestamp - p.Intended) * 1000 / f;
                _e2e.Add(e2e);
                if (e2e <= _o.SloMs) _good++;
                if (r.FirstTokenTimestamp != 0) _ttft.Add((r.FirstTokenTimestamp - p.Intended) * 1000 / f);
                if (r.TimePerOutputToken is { } tpot) _tpot.Add(tpot.TotalMilliseconds);
                var st = r.ServerTimings;
                for (int i = 0; i < ServerTimings.Names.Length; i++)
                {
                    uint us = st[ServerTimings.Names[i].Slot];
                    if (us == 0) continue;
                    _serverSum[i] += us;
                    _serverCount[i]++;
                }
            }
        }

        /// <summary>Cancels measured requests still running and counts them as unfinished (infinitely late).</summary>
        public void AbandonOutstanding()
        {
            Pending[] left;
            lock (_lock)
            {
                left = _outstanding.ToArray();
                _outstanding.Clear();
                foreach (var p in left)
                {
                    p.State = 2;
                    _unfinished++;
                    _errors["unfinished"] = _errors.GetValueOrDefault("unfinished") + 1;
                    _e2e.Add(double.PositiveInfinity);
                    _admitted++;
                    _admittedE2e.Add(double.PositiveInfinity);
                    if (p.Call is not { FirstTokenTimestamp: not 0 }) _ttft.Add(double.PositiveInfinity);
                }
            }
            foreach (var p in left) p.Call?.Cancel();
        }

        public BenchProgress Snapshot(double fraction)
        {
            lock (_lock) return new BenchProgress(fraction, _sentAll, _doneAll, _errorsAll, _inFlight);
        }

        public BenchResult Summarize(double window, int reconnects)
        {
            lock (_lock)
            {
                var server = new Dictionary<string, double>();
                for (int i = 0; i < ServerTimings.Names.Length; i++)
                    server[ServerTimings.Names[i].Name] = _serverCount[i] == 0 ? double.NaN : _serverSum[i] / _serverCount[i];
                bool open = _o.Concurrency is null;
                return new BenchResult
                {
                    Mode = open ? "open" : "closed",
                    TargetRps = open ? (_o.Profile?.MeanRate ?? _o.Rate) : null,
                    Concurrency = _o.Concurrency,
                    Arrival = open ? (_o.Arrival == ArrivalKind.Gamma ? "gamma" : "poisson") : null,
                    Burstiness = open && _o.Arrival == ArrivalKind.Gamma ? _o.Burstiness : null,
                    Profile = _o.Profile?.Spec,
                    WindowSeconds = window,
                    SloMs = _o.SloMs,
                    MaxErrorRate = _o.MaxErrorRate,
                    Sent = _sent,
                    Ok = _ok,
                    Good = _good,
                    Unfinished = _unfinished,
                    Throttled = _throttled,
                    Admitted = _admitted,
                    Errors = new SortedDictionary<string, long>(_errors, StringComparer.Ordinal),
                    PromptTokensPerSecond = _promptTokens / window,
                    CompletionTokensPerSecond = _completionTokens / window,
                    Ttft = _ttft.Summarize(),
                    Tpot = _tpot.Summarize(),
                    EndToEnd = _e2e.Summarize(),
                    SendLag = _lag.Summarize(),
                    AdmittedEndToEnd = _admittedE2e.Summarize(),
                    Rejection = _rejection.Summarize(),
                    ServerMeanUs = server,
                    Reconnects = reconnects,
                };
            }
        }
    }
}
