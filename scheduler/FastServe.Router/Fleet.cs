using System.Diagnostics;
using FastServe.Protocol;

namespace FastServe.Router;

/// <summary>
/// The current set of endpoints and the rules that need all of them: outlier ejection under the max-ejected cap, and
/// the aggregate load report a router gives its clients. Thread-safe: the set is an immutable array swapped whole.
/// </summary>
public sealed class Fleet
{
    private readonly Lock _ejectLock = new();
    private readonly int _maxEjectedPercent;
    private readonly Action<string>? _log;
    private volatile Endpoint[] _endpoints = [];

    /// <summary>A fleet judged by the rules of <paramref name="options"/> (its log gets ejection lines).</summary>
    public Fleet(RouterOptions options)
    {
        _maxEjectedPercent = options.MaxEjectedPercent;
        _log = options.Log;
    }

    /// <summary>The endpoints now (those that left the source are not in it).</summary>
    public Endpoint[] Endpoints => _endpoints;

    /// <summary>Replaces the set (the router does this when its endpoint source changes).</summary>
    public void Set(Endpoint[] endpoints) => _endpoints = endpoints;

    /// <summary>Most endpoints that may be ejected at once: the max-ejected percentage of the set, rounded down.</summary>
    public int MaxEjected => _endpoints.Length * _maxEjectedPercent / 100;

    /// <summary>Endpoints ejected at <paramref name="now"/>.</summary>
    public int EjectedCount(long now)
    {
        int n = 0;
        foreach (var e in _endpoints) if (e.IsEjected(now)) n++;
        return n;
    }

    /// <summary>
    /// Counts an error against <paramref name="e"/> (connection failure, timeout, <c>internal</c>/<c>unavailable</c>
    /// FINAL) and ejects it when its run of consecutive errors reaches the threshold, unless that would eject more
    /// than <see cref="MaxEjected"/> endpoints; then its run keeps counting and the next error tries again. An
    /// endpoint that left after draining (<see cref="Endpoint.ExitedAfterDrain"/>) or left the source counts nothing.
    /// Returns true when this error ejected it.
    /// </summary>
    public bool RecordError(Endpoint e, long now)
    {
        if (e.IsRemoved || e.ExitedAfterDrain || !e.CountError(now)) return false;
        long period;
        lock (_ejectLock)
        {
            if (EjectedCount(now) + 1 > MaxEjected) return false;
            period = e.Eject(now);
        }
        _log?.Invoke($"endpoint {e.Address} ejected for {period * 1000 / Stopwatch.Frequency} ms after repeated errors");
        return true;
    }

    /// <summary>A request on <paramref name="e"/> ended without an endpoint error: its error run ends.</summary>
    public static void RecordSuccess(Endpoint e) => e.RecordSuccess();

    /// <summary>
    /// The fleet as one replica, for a client's LOAD_QUERY: state <c>draining</c> when the router drains, else
    /// <c>ready</c> when any endpoint is eligible, <c>starting</c> when any is connected and neither draining nor gone
    /// (it will be ready soon), <c>unavailable</c> otherwise.
    /// Counts (workers, running, queued, in flight, max running) are sums over the connected endpoints' last
    /// reports; KV free is their mean; the estimated wait is the lowest among eligible endpoints (where a new request
    /// would go); the age is the oldest report's (time since it arrived plus the age it carried).
    /// </summary>
    public LoadReport Aggregate(long now, bool routerDraining)
    {
        bool anyEligible = false, anyStarting = false;
        int workers = 0, running = 0, queued = 0, inFlight = 0, maxRunning = 0, wait = int.MaxValue, age = 0, n = 0;
        double kv = 0;
        foreach (var e in _endpoints)
        {
            var (r, at) = e.LastReport;
            if (e.ConnectionsUp > 0 && !e.IsDraining && !e.IsRemoved) anyStarting = true;
            if (at == 0 || e.ConnectionsUp == 0) continue;
            n++;
            workers += r.Workers;
            running = Sat(running + (long)r.Running);
            queued = Sat(queued + (long)r.Queued);
            inFlight = Sat(inFlight + (long)r.InFlight);
            maxRunning = Sat(maxRunning + (long)r.MaxRunning);
            kv += r.KvFreeFraction;
            age = Math.Max(age, Sat((now - at) * 1000 / Stopwatch.Frequency + r.AgeMs));
            if (e.IsEligible(now))
            {
                anyEligible = true;
                wait = Math.Min(wait, r.EstimatedWaitMs);
            }
        }
        var state = routerDraining ? ReplicaState.Draining
            : anyEligible ? ReplicaState.Ready
            : anyStarting ? ReplicaState.Starting
            : ReplicaState.Unavailable;
        return new LoadReport(state, Math.Min(workers, ushort.MaxValue), running, queued, inFlight, n == 0 ? 0f : (float)(kv / n),
            anyEligible ? wait : 0, maxRunning, age);
    }

    /// <summary>The smallest context length among endpoints that have answered HELLO (0 = none has yet).</summary>
    public int ContextLength()
    {
        int ctx = 0;
        foreach (var e in _endpoints)
        {
            int c = e.Server.ContextLength;
            if (c > 0) ctx = ctx == 0 ? c : Math.Min(ctx, c);
        }
        return ctx;
    }

    /// <summary>The smallest max_prompt_tokens among endpoints that have answered HELLO (0 = none has yet).</summary>
    public int MaxPromptTokens()
    {
        int m = 0;
        foreach (var e in _endpoints)
        {
            int c = e.Server.MaxPromptTokens;
            if (c > 0) m = m == 0 ? c : Math.Min(m, c);
        }
        return m;
    }

    private static int Sat(long x) => (int)Math.Clamp(x, 0, int.MaxValue);
}
