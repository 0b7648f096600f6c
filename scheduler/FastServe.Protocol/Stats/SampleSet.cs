namespace FastServe.Protocol.Stats;

/// <summary>
/// Latency samples with exact percentiles: the one percentile computation of FastServe's benchmarks
/// (<c>fastserve bench</c> in milliseconds, <c>fastserve bench-engine</c> in seconds). Keeps every sample up to
/// <see cref="Capacity"/>, then a uniform reservoir of that size (Vitter's algorithm R), so percentiles stay unbiased
/// estimates on very long runs. Not thread-safe.
/// </summary>
public sealed class SampleSet
{
    private readonly List<double> _values = new();
    private readonly Random _rng;
    private double _sum;
    private double _max = double.NegativeInfinity;

    public SampleSet(int capacity = 4_000_000, int seed = 12345)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(capacity, 1);
        Capacity = capacity;
        _rng = new Random(seed);
    }

    public int Capacity { get; }

    /// <summary>Samples offered (may exceed the number kept).</summary>
    public long Count { get; private set; }

    public void Add(double x)
    {
        Count++;
        _sum += x;
        if (x > _max) _max = x;
        if (_values.Count < Capacity) { _values.Add(x); return; }
        long j = _rng.NextInt64(Count);
        if (j < Capacity) _values[(int)j] = x;
    }

    /// <summary>Count, mean, P50/P90/P99/P99.9 and max (nearest-rank percentiles). NaN fields when empty; an
    /// infinite sample (a request that never finished) makes the mean and the upper percentiles infinite.</summary>
    public LatencySummary Summarize()
    {
        if (Count == 0) return LatencySummary.Empty;
        var sorted = _values.ToArray();
        Array.Sort(sorted);
        return new LatencySummary(Count, _sum / Count, Rank(sorted, 0.50), Rank(sorted, 0.90), Rank(sorted, 0.99), Rank(sorted, 0.999), _max);
    }

    /// <summary>The nearest-rank q-quantile of sorted values: the smallest value with at least q of the samples at or below it.</summary>
    public static double Rank(double[] sorted, double q)
    {
        if (sorted.Length == 0) return double.NaN;
        int i = (int)Math.Ceiling(q * sorted.Length) - 1;
        return sorted[Math.Clamp(i, 0, sorted.Length - 1)];
    }
}

/// <summary>A latency distribution, in the unit of its samples (NaN fields when there were no samples).</summary>
public readonly record struct LatencySummary(long Count, double Mean, double P50, double P90, double P99, double P999, double Max)
{
    public static readonly LatencySummary Empty = new(0, double.NaN, double.NaN, double.NaN, double.NaN, double.NaN, double.NaN);
}
