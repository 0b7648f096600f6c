using System.Collections.Concurrent;
using FastServe.Protocol;

namespace FastServe.Router;

/// <summary>Where a request goes: the pool of one model (null: any endpoint) and one version (null: any version).</summary>
internal readonly record struct PoolKey(string? Model, string? Version);

/// <summary>How a request's routing fields resolved (<see cref="ModelRoutes.Resolve"/>).</summary>
internal enum RouteOutcome : byte
{
    /// <summary>A pool to send it to.</summary>
    Pool,
    /// <summary>No endpoint serves the model (or version) it names, and every endpoint has said what it serves.</summary>
    NotFound,
    /// <summary>Nothing serves it yet, but some endpoint has not answered HELLO: it may be the one (retriable).</summary>
    NotYet,
}

/// <summary>
/// The router's view of which models and versions its endpoints serve (refreshed by the router's timer from their
/// HELLO_OKs), and the per-pool counters behind the pool metrics. Thread-safe: the model table is an immutable
/// snapshot swapped whole; pool counters are updated with interlocked operations.
/// </summary>
internal sealed class ModelRoutes
{
    private volatile Snapshot _snap = new([], false);
    private readonly ConcurrentDictionary<(string Model, string Version), PoolCounters> _pools = new();

    /// <summary>The model a request that names none goes to; null: the only model the fleet serves, else any endpoint.</summary>
    public string? DefaultModel { get; init; }

    private sealed record Snapshot((string Model, string Version)[] Pools, bool AllHelloed);

    /// <summary>Recomputes the model table from <paramref name="endpoints"/> (the router's timer, every 10 ms).</summary>
    public void Refresh(ReadOnlySpan<Endpoint> endpoints)
    {
        var pools = new List<(string, string)>(4);
        bool all = endpoints.Length > 0;
        foreach (var e in endpoints)
        {
            if (!e.HasHello) { all = false; continue; }
            var k = (e.Model, e.ModelVersion);
            if (!pools.Contains(k)) pools.Add(k);
        }
        var old = _snap;
        if (old.AllHelloed == all && old.Pools.AsSpan().SequenceEqual(pools.ToArray())) return;
        _snap = new Snapshot([.. pools], all);
    }

    /// <summary>The (model, version) pairs the endpoints serve now.</summary>
    public (string Model, string Version)[] Pools => _snap.Pools;

    /// <summary>Whether any endpoint serves <paramref name="model"/> (and <paramref name="version"/>, when given).</summary>
    public bool Knows(string model, string? version)
    {
        foreach (var (m, v) in _snap.Pools)
            if (m == model && (version is null || v == version)) return true;
        return false;
    }

    /// <summary>
    /// The pool for a request naming <paramref name="model"/> and <paramref name="version"/> (null or empty: none):
    /// a named model must be served by some endpoint (else <see cref="RouteOutcome.NotFound"/>, or
    /// <see cref="RouteOutcome.NotYet"/> while some endpoint has not said what it serves); a request naming none goes
    /// to <see cref="DefaultModel"/>, or to the fleet's only model, or to any endpoint when it serves several.
    /// </summary>
    public RouteOutcome Resolve(string? model, string? version, out PoolKey pool)
    {
        var snap = _snap;
        if (string.IsNullOrEmpty(model))
        {
            model = DefaultModel;
            if (model is null)
            {
                string? only = null;
                foreach (var (m, _) in snap.Pools)
                {
                    if (only is null) only = m;
                    else if (only != m) { only = null; break; }
                }
                model = only is { Length: > 0 } ? only : null;
            }
        }
        if (string.IsNullOrEmpty(version)) version = null;
        pool = new PoolKey(model, version);
        if (model is null) return RouteOutcome.Pool;
        if (Knows(model, version)) return RouteOutcome.Pool;
        return snap.AllHelloed ? RouteOutcome.NotFound : RouteOutcome.NotYet;
    }

    /// <summary>The counters of the pool of <paramref name="model"/> and <paramref name="version"/> (created on first use).</summary>
    public PoolCounters Counters(string model, string version) =>
        _pools.GetOrAdd((model, version), static _ => new PoolCounters());

    /// <summary>Every pool that has counted something, for the metrics.</summary>
    public IEnumerable<KeyValuePair<(string Model, string Version), PoolCounters>> AllCounters => _pools;
}

/// <summary>What one pool (model and version) has done, for metrics and cost: FINALs by outcome, device time and
/// tokens. Updated by the receive loops with interlocked adds.</summary>
internal sealed class PoolCounters
{
    public long Ok, Errors, Refused, DeviceMicros, CompletionTokens;

    /// <summary>Counts one attempt's FINAL from a replica of this pool.</summary>
    public void Record(WireStatus status, in FinalInfo f)
    {
        if (status == WireStatus.Ok) Interlocked.Increment(ref Ok);
        else if (IsModelError(status)) Interlocked.Increment(ref Errors);
        else Interlocked.Increment(ref Refused);
        Interlocked.Add(ref DeviceMicros, f.Timings[(int)Timing.Device]);
        Interlocked.Add(ref CompletionTokens, f.CompletionTokens);
    }

    /// <summary>A FINAL that counts against the version that sent it (a canary's error rate): a fault or a missed
    /// deadline. Refusals for load, cancellations and the client's own mistakes do not.</summary>
    public static bool IsModelError(WireStatus s) => s is WireStatus.Internal or WireStatus.DeadlineExceeded;
}
