using FastServe.Server.Ipc;

namespace FastServe.Server.Engine;

/// <summary>
/// The workers' counters (<see cref="WorkerCounters"/>) summed for the replica's /metrics. Each worker sends its
/// cumulative values; a worker that restarts (a new pid in its slot) starts again from zero, so what its previous
/// process had counted is kept aside and added in, and the totals never go down. Reload counts are the most any
/// current worker has seen (every worker reloads the same file). Thread-safe.
/// </summary>
internal sealed class ReplicaCounters
{
    private readonly object _lock = new();
    private readonly Dictionary<int, (int Pid, Dictionary<(CounterKind, string, string), long> Values)> _workers = new();
    private readonly Dictionary<(CounterKind, string, string), long> _retired = new();

    /// <summary>Worker slot <paramref name="index"/> (process <paramref name="pid"/>) reported <paramref name="values"/>.</summary>
    public void Update(int index, int pid, List<CounterValue> values)
    {
        lock (_lock)
        {
            if (_workers.TryGetValue(index, out var old) && old.Pid != pid)
                foreach (var (k, v) in old.Values)
                    if (!IsMax(k.Item1)) _retired[k] = _retired.GetValueOrDefault(k) + v;
            var now = new Dictionary<(CounterKind, string, string), long>(values.Count);
            foreach (var c in values) now[(c.Kind, c.A, c.B)] = c.Value;
            _workers[index] = (pid, now);
        }
    }

    /// <summary>The replica's totals: sums over workers (past processes included), maxima for reload counts.</summary>
    public Dictionary<(CounterKind Kind, string A, string B), long> Totals()
    {
        lock (_lock)
        {
            var t = new Dictionary<(CounterKind, string, string), long>(_retired);
            foreach (var w in _workers.Values)
                foreach (var (k, v) in w.Values)
                    t[k] = IsMax(k.Item1) ? Math.Max(t.GetValueOrDefault(k), v) : t.GetValueOrDefault(k) + v;
            return t;
        }
    }

    private static bool IsMax(CounterKind k) => k is CounterKind.KeyReloads or CounterKind.KeyReloadFailures;
}
