namespace FastServe.Autoscale.Simulation;

/// <summary>
/// Offered load as a function of simulated time: requests per second at a time in seconds since the trace's start.
/// Pure and deterministic, so that every policy of a comparison sees the same load.
/// </summary>
public abstract class LoadTrace
{
    /// <summary>Simulated seconds the trace covers; <see cref="Rate"/> past it is the last value.</summary>
    public abstract double DurationSeconds { get; }

    /// <summary>Offered requests per second at <paramref name="t"/> seconds (never negative).</summary>
    public abstract double Rate(double t);

    /// <summary>Highest rate over [from, to], sampled every <paramref name="step"/> seconds and at both ends.</summary>
    public double Peak(double from, double to, double step = 1)
    {
        double peak = Rate(to);
        for (double t = from; t < to; t += step) peak = Math.Max(peak, Rate(t));
        return peak;
    }

    /// <summary>This trace over its first <paramref name="seconds"/> only (the rate past its end is kept, so a
    /// shorter trace is extended at its last rate).</summary>
    public LoadTrace Take(double seconds) => new Window(this, seconds);

    private sealed class Window(LoadTrace inner, double seconds) : LoadTrace
    {
        public override double DurationSeconds => seconds;

        public override double Rate(double t) => inner.Rate(t);
    }
}

/// <summary>A trace linear between (time seconds, rate) points; before the first point the first rate, after the last
/// the last rate. Points must be in increasing time order.</summary>
public sealed class PiecewiseTrace : LoadTrace
{
    private readonly double[] _t, _r;

    public PiecewiseTrace(IReadOnlyList<(double T, double Rate)> points)
    {
        if (points.Count == 0) throw new ArgumentException("a trace needs at least one point", nameof(points));
        _t = new double[points.Count];
        _r = new double[points.Count];
        for (int i = 0; i < points.Count; i++)
        {
            if (i > 0 && !(points[i].T > points[i - 1].T)) throw new ArgumentException($"point {i}: times must increase", nameof(points));
            if (!(points[i].Rate >= 0) || double.IsInfinity(points[i].Rate)) throw new ArgumentException($"point {i}: the rate must be finite and not negative", nameof(points));
            (_t[i], _r[i]) = points[i];
        }
    }

    public override double DurationSeconds => _t[^1];

    public override double Rate(double t)
    {
        if (t <= _t[0]) return _r[0];
        if (t >= _t[^1]) return _r[^1];
        int i = Array.BinarySearch(_t, t);
        if (i >= 0) return _r[i];
        i = ~i; // _t[i - 1] < t < _t[i]
        double f = (t - _t[i - 1]) / (_t[i] - _t[i - 1]);
        return _r[i - 1] + f * (_r[i] - _r[i - 1]);
    }

    /// <summary>
    /// <c>daily:MIN:MAX</c>, 24 simulated hours: quiet night at MIN until 07:00, a morning ramp to 90 % of MAX by
    /// 07:30, MAX from 11:00, a midday dip to 75 % of MAX from 12:30 to 13:30, MAX again 14:00–18:00, an evening
    /// decline to MIN by 23:00. The hours are an assumption (a single-region consumer service), not a measurement.
    /// </summary>
    public static PiecewiseTrace Daily(double min, double max)
    {
        if (!(min >= 0) || !(max >= min) || double.IsInfinity(max)) throw new ArgumentException("daily needs 0 <= MIN <= MAX");
        const double H = 3600;
        return new PiecewiseTrace([
            (0, min), (7 * H, min), (7.5 * H, 0.9 * max), (11 * H, max), (12 * H, max), (12.5 * H, 0.75 * max),
            (13.5 * H, 0.75 * max), (14 * H, max), (18 * H, max), (23 * H, min), (24 * H, min),
        ]);
    }
}
