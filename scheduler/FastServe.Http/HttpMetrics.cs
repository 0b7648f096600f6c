using System.Collections.Concurrent;

namespace FastServe.Http;

/// <summary>
/// HTTP requests answered, by endpoint and status; the process's metrics exporter reads <see cref="Snapshot"/> into
/// <c>fastserve_http_requests_total{endpoint,status}</c>. Thread-safe, lock-free after a pair's first request.
/// </summary>
public sealed class HttpMetrics
{
    private readonly ConcurrentDictionary<(string Endpoint, int Status), Counter> _counts = new();

    private sealed class Counter { public long Value; }

    /// <summary>Counts one answered request. <paramref name="endpoint"/> is one of a fixed set of names (never the raw
    /// path, so clients cannot grow the label set).</summary>
    public void Count(string endpoint, int status) =>
        Interlocked.Increment(ref _counts.GetOrAdd((endpoint, status), static _ => new Counter()).Value);

    /// <summary>Every (endpoint, status, count) seen so far.</summary>
    public IEnumerable<(string Endpoint, int Status, long Count)> Snapshot()
    {
        foreach (var kv in _counts) yield return (kv.Key.Endpoint, kv.Key.Status, Interlocked.Read(ref kv.Value.Value));
    }
}
