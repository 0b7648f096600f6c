using System.Diagnostics;
using System.Globalization;
using System.Text;

namespace FastServe.Router.Canary;

/// <summary>
/// When <see cref="CanaryMonitor"/> rolls a canary back. Durations are milliseconds; rates are fractions (0.02 = 2 %).
/// <see cref="Validate"/> checks ranges.
/// </summary>
public sealed record CanaryOptions
{
    /// <summary>The sliding window the versions are compared over, split into ten buckets (so it covers between nine
    /// and ten tenths of this). Default 60,000.</summary>
    public int WindowMs { get; init; } = 60_000;
    /// <summary>Requests each of the canary and the stable version must have in the window before the canary is
    /// judged. Default 200.</summary>
    public int MinSamples { get; init; } = 200;
    /// <summary>Roll back when the canary's error rate exceeds the stable version's by more than this (absolute, a
    /// fraction). Default 0.02.</summary>
    public double MaxErrorRateDelta { get; init; } = 0.02;
    /// <summary>Roll back when the canary's P99 latency exceeds the stable version's times this (and by more than
    /// <see cref="MinP99DeltaMs"/>). Default 1.5.</summary>
    public double MaxP99Ratio { get; init; } = 1.5;
    /// <summary>P99 differences of this many milliseconds or less never roll back (fast models' P99s differ by
    /// large ratios of small amounts). Default 50.</summary>
    public double MinP99DeltaMs { get; init; } = 50;

    /// <summary>Throws <see cref="ArgumentOutOfRangeException"/> naming the first setting out of range: WindowMs
    /// 1,000 … 3,600,000; MinSamples 1 … 10,000,000; MaxErrorRateDelta 0 … 1; MaxP99Ratio 1 … 1,000; MinP99DeltaMs
    /// 0 … 600,000.</summary>
    public void Validate()
    {
        static void Range(double v, double lo, double hi, string name)
        {
            if (!(v >= lo && v <= hi)) throw new ArgumentOutOfRangeException(name, v, $"{name} must be between {lo} and {hi}");
        }
        Range(WindowMs, 1000, 3_600_000, nameof(WindowMs));
        Range(MinSamples, 1, 10_000_000, nameof(MinSamples));
        Range(MaxErrorRateDelta, 0, 1, nameof(MaxErrorRateDelta));
        Range(MaxP99Ratio, 1, 1000, nameof(MaxP99Ratio));
        Range(MinP99DeltaMs, 0, 600_000, nameof(MinP99DeltaMs));
    }
}

/// <summary>One version's requests within a <see cref="CanaryMonitor"/>'s window.</summary>
/// <param name="Samples">Requests recorded.</param>
/// <param name="Errors">Of them, those recorded as errors.</param>
/// <param name="ErrorRate">Errors / Samples; 0 with no samples.</param>
/// <param name="P50Ms">Median latency in milliseconds (within 2.5 %, see <see cref="CanaryMonitor"/>); 0 with no
/// samples.</param>
/// <param name="P99Ms">99th-percentile latency in milliseconds, likewise.</param>
public readonly record struct WindowStats(long Samples, long Errors, double ErrorRate, double P50Ms, double P99Ms);

/// <summary>A canary <see cref="CanaryMonitor.Evaluate"/> says to roll back (set its weight to 0), with the numbers
/// that decided it. Rates are fractions, latencies milliseconds, samples the requests in the window.</summary>
/// <param name="Version">The canary.</param>
/// <param name="Reason">For people and logs, e.g. "error rate 7.5 % vs stable 0.4 % (margin 2 %) over 60 s, 412 vs
/// 7,310 requests"; both rules, separated by "; ", when both fired.</param>
public sealed record RollbackDecision(string Version, string Reason, double CanaryErrorRate, double StableErrorRate,
    double CanaryP99Ms, double StableP99Ms, long CanarySamples, long StableSamples);

/// <summary>
/// Judges a model's canary versions against its stable version over a sliding window of
/// <see cref="CanaryOptions.WindowMs"/>: the router <see cref="Record"/>s every answered request's outcome and latency
/// under the version that served it, and its timer calls <see cref="Evaluate"/> with the current
/// <see cref="TrafficSplit"/> to learn which canaries to roll back. Times are <see cref="Stopwatch"/> ticks passed in
/// by the caller, so a synthetic clock makes it deterministic.
/// </summary>
/// <remarks>
/// <para>Each version keeps ten buckets of the window's tenth each; a bucket is reused (cleared) when the clock
/// reaches it again, so samples older than the window drop out without a timer. Latencies go into log-spaced
/// buckets growing by 5 % from 0.1 ms to 600 s (faster counts as 0.1 ms, slower as 600 s); a percentile is reported as
/// its bucket's geometric middle, within 2.5 % of the true value.</para>
/// <para>Thread-safe: one lock per monitor around every member. <see cref="Record"/> allocates nothing once its
/// version has been seen (about 13 KB per version, until <see cref="Reset"/>).</para>
/// </remarks>
public sealed class CanaryMonitor
{
    private const int Slots = 10;

    private readonly Lock _lock = new();
    private readonly Dictionary<string, VersionWindow> _versions = new(StringComparer.Ordinal);   // under _lock
    private readonly long[] _merged = new long[LatencyBuckets.Count];                              // scratch, under _lock
    private readonly long _slotTicks;

    /// <summary>A monitor applying <paramref name="options"/> (validated here).</summary>
    public CanaryMonitor(CanaryOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        Options = options;
        _slotTicks = Math.Max(1, options.WindowMs * Stopwatch.Frequency / 1000 / Slots);
    }

    /// <summary>The thresholds it applies.</summary>
    public CanaryOptions Options { get; }

    /// <summary>
    /// One request that <paramref name="version"/> answered at <paramref name="now"/>: <paramref name="error"/> when
    /// it failed for the model's fault (the caller decides which statuses count), <paramref name="latencySeconds"/>
    /// its latency (negative or NaN counts as 0). A sample whose time is already a whole window older than what the
    /// version has recorded since is dropped.
    /// </summary>
    public void Record(string version, bool error, double latencySeconds, long now)
    {
        ArgumentNullException.ThrowIfNull(version);
        int bucket = LatencyBuckets.IndexOf(latencySeconds);
        long epoch = Epoch(now);
        lock (_lock)
        {
            if (!_versions.TryGetValue(version, out var w)) _versions.Add(version, w = new VersionWindow());
            w.Add(epoch, error, bucket);
        }
    }

    /// <summary>
    /// The canaries of <paramref name="split"/> to roll back now, in entry order; empty when none. A canary is judged
    /// when its weight is above 0 and both it and the stable version have at least
    /// <see cref="CanaryOptions.MinSamples"/> requests in the window. It is rolled back when its error rate exceeds the
    /// stable version's by more than <see cref="CanaryOptions.MaxErrorRateDelta"/>, or its P99 exceeds the stable
    /// version's × <see cref="CanaryOptions.MaxP99Ratio"/> and by more than <see cref="CanaryOptions.MinP99DeltaMs"/>.
    /// Allocates only for what it returns. The caller applies a decision (<see cref="TrafficSplit.WithWeight"/> to 0);
    /// a canary at weight 0 is not judged again.
    /// </summary>
    public IReadOnlyList<RollbackDecision> Evaluate(TrafficSplit split, long now)
    {
        ArgumentNullException.ThrowIfNull(split);
        List<RollbackDecision>? decisions = null;
        var o = Options;
        lock (_lock)
        {
            var stable = StatsLocked(split.Stable, now);
            if (stable.Samples < o.MinSamples) return [];
            var entries = split.Entries;
            for (int i = 1; i < entries.Count; i++)
            {
                if (entries[i].Weight == 0) continue;
                var c = StatsLocked(entries[i].Version, now);
                if (c.Samples < o.MinSamples) continue;
                bool errors = c.ErrorRate - stable.ErrorRate > o.MaxErrorRateDelta;
                bool slow = c.P99Ms > stable.P99Ms * o.MaxP99Ratio && c.P99Ms - stable.P99Ms > o.MinP99DeltaMs;
                if (!errors && !slow) continue;
                (decisions ??= []).Add(new RollbackDecision(entries[i].Version, Reason(errors, slow, c, stable),
                    c.ErrorRate, stable.ErrorRate, c.P99Ms, stable.P99Ms, c.Samples, stable.Samples));
            }
        }
        return decisions is null ? [] : decisions;
    }

    /// <summary><paramref name="version"/>'s requests in the window ending at <paramref name="now"/> (all zero for a
    /// version never recorded), for status output and metrics.</summary>
    public WindowStats Stats(string version, long now)
    {
        ArgumentNullException.ThrowIfNull(version);
        lock (_lock) return StatsLocked(version, now);
    }

    /// <summary>Forgets everything recorded for <paramref name="version"/> (e.g. when a rolled-back canary is
    /// redeployed) and frees its buckets.</summary>
    public void Reset(string version)
    {
        ArgumentNullException.ThrowIfNull(version);
        lock (_lock) _versions.Remove(version);
    }

    private WindowStats StatsLocked(string version, long now)
    {
        if (!_versions.TryGetValue(version, out var w)) return default;
        var (samples, errors) = w.Merge(Epoch(now), _merged);
        if (samples == 0) return default;
        return new WindowStats(samples, errors, errors / (double)samples,
            LatencyBuckets.Quantile(_merged, samples, 0.50) * 1000, LatencyBuckets.Quantile(_merged, samples, 0.99) * 1000);
    }

    // Which tenth of the window `now` falls in (floor division: ticks before 0 still count down).
    private long Epoch(long now) => Math.DivRem(now, _slotTicks, out long rem) - (rem < 0 ? 1 : 0);

    private string Reason(bool errors, bool slow, in WindowStats c, in WindowStats s)
    {
        var inv = CultureInfo.InvariantCulture;
        var o = Options;
        var sb = new StringBuilder();
        if (errors)
            sb.Append(inv, $"error rate {Percent(c.ErrorRate)} vs stable {Percent(s.ErrorRate)} (margin {Percent(o.MaxErrorRateDelta)})");
        if (slow)
        {
            if (errors) sb.Append("; ");
            sb.Append(inv, $"P99 {Ms(c.P99Ms)} ms vs stable {Ms(s.P99Ms)} ms (limit ×{o.MaxP99Ratio:0.##} and +{Ms(o.MinP99DeltaMs)} ms)");
        }
        sb.Append(inv, $" over {o.WindowMs / 1000.0:0.#} s, {c.Samples:N0} vs {s.Samples:N0} requests");
        return sb.ToString();

        static string Percent(double f) => (f * 100).ToString("0.##", CultureInfo.InvariantCulture) + " %";
        static string Ms(double ms) => ms.ToString(ms >= 100 ? "N0" : "0.#", CultureInfo.InvariantCulture);
    }

    // One version's ten buckets. Owned by the monitor's lock.
    private sealed class VersionWindow
    {
        private readonly long[] _epoch = new long[Slots];            // which window tenth each slot holds
        private readonly long[] _count = new long[Slots];
        private readonly long[] _errors = new long[Slots];
        private readonly int[] _latency = new int[Slots * LatencyBuckets.Count];

        public VersionWindow() => Array.Fill(_epoch, long.MinValue);

        public void Add(long epoch, bool error, int bucket)
        {
            int slot = (int)(((epoch % Slots) + Slots) % Slots);
            long held = _epoch[slot];
            if (held > epoch) return;   // a whole window older than what this slot already holds
            if (held < epoch)
            {
                _epoch[slot] = epoch;
                _count[slot] = 0;
                _errors[slot] = 0;
                Array.Clear(_latency, slot * LatencyBuckets.Count, LatencyBuckets.Count);
            }
            _count[slot]++;
            if (error) _errors[slot]++;
            _latency[slot * LatencyBuckets.Count + bucket]++;
        }

        // Sums the slots within the window ending in epoch `current` (and any ahead of it: a Record racing with a
        // reader whose clock was read a little earlier) into `histogram`.
        public (long Samples, long Errors) Merge(long current, long[] histogram)
        {
            Array.Clear(histogram);
            long samples = 0, errors = 0;
            for (int slot = 0; slot < Slots; slot++)
            {
                if (_epoch[slot] <= current - Slots || _count[slot] == 0) continue;
                samples += _count[slot];
                errors += _errors[slot];
                var row = _latency.AsSpan(slot * LatencyBuckets.Count, LatencyBuckets.Count);
                for (int b = 0; b < row.Length; b++) histogram[b] += row[b];
            }
            return (samples, errors);
        }
    }
}

/// <summary>Log-spaced latency buckets: bucket 0 is [0, 0.1 ms), bucket i ≥ 1 is [0.1 ms × 1.05^(i−1), 0.1 ms ×
/// 1.05^i), the last catches everything from about 605 s up.</summary>
internal static class LatencyBuckets
{
    public const double MinSeconds = 1e-4;
    public const double Growth = 1.05;
    /// <summary>Buckets in all: underflow, 320 spans of 5 % (0.1 ms up to about 605 s), overflow.</summary>
    public const int Count = 322;

    private static readonly double InverseLogGrowth = 1 / Math.Log(Growth);
    private static readonly double[] Middle = BuildMiddles();

    public static int IndexOf(double seconds)
    {
        if (!(seconds >= MinSeconds)) return 0;   // NaN and negatives too
        double i = 1 + Math.Floor(Math.Log(seconds / MinSeconds) * InverseLogGrowth);
        return i >= Count - 1 ? Count - 1 : (int)i;
    }

    /// <summary>The value in seconds (a bucket's geometric middle) below or at which a fraction <paramref name="q"/>
    /// of the <paramref name="samples"/> counted in <paramref name="histogram"/> lie.</summary>
    public static double Quantile(ReadOnlySpan<long> histogram, long samples, double q)
    {
        long rank = Math.Max(1, (long)Math.Ceiling(q * samples));
        long seen = 0;
        for (int b = 0; b < histogram.Length; b++)
        {
            seen += histogram[b];
            if (seen >= rank) return Middle[b];
        }
        return Middle[^1];
    }

    private static double[] BuildMiddles()
    {
        var m = new double[Count];
        m[0] = MinSeconds / 2;
        for (int i = 1; i < Count - 1; i++) m[i] = MinSeconds * Math.Pow(Growth, i - 0.5);
        m[Count - 1] = MinSeconds * Math.Pow(Growth, Count - 2);   // overflow: its lower edge
        return m;
    }
}
