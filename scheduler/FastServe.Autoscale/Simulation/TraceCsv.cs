using System.Globalization;

namespace FastServe.Autoscale.Simulation;

/// <summary>Reads a recorded trace: one <c>timestamp_seconds,rate</c> line per point, times increasing, rates in
/// requests per second; blank lines and lines starting with <c>#</c> are skipped, and a first line that is not
/// numeric is taken as a header. Replayed linearly between points (<see cref="PiecewiseTrace"/>).</summary>
public static class TraceCsv
{
    /// <summary>The longest trace accepted: 31 days (a longer one would be a simulation that never ends).</summary>
    public const double MaxSeconds = 31 * 86400.0;

    /// <summary>The largest trace file read, in bytes.</summary>
    public const long MaxBytes = 64L << 20;

    /// <summary>Parses <paramref name="text"/>; a bad line throws a <see cref="FormatException"/> naming its 1-based
    /// line number and what is wrong.</summary>
    public static PiecewiseTrace Parse(string text)
    {
        var points = new List<(double, double)>();
        int line = 0;
        bool headerAllowed = true;
        foreach (var raw in text.Split('\n'))
        {
            line++;
            var s = raw.Trim();
            if (s.Length == 0 || s[0] == '#') continue;
            var parts = s.Split(',');
            bool tOk = double.TryParse(parts[0].Trim(), NumberStyles.Float, CultureInfo.InvariantCulture, out double t);
            if (!tOk && headerAllowed && parts.Length == 2) { headerAllowed = false; continue; }
            headerAllowed = false;
            if (parts.Length != 2) throw new FormatException($"line {line}: expected 'timestamp_seconds,rate', got {parts.Length} fields");
            if (!tOk || !double.IsFinite(t) || t < 0) throw new FormatException($"line {line}: the timestamp '{parts[0].Trim()}' is not a finite number of seconds >= 0");
            if (t > MaxSeconds) throw new FormatException($"line {line}: the timestamp {t} is past {MaxSeconds} s (31 days)");
            if (!double.TryParse(parts[1].Trim(), NumberStyles.Float, CultureInfo.InvariantCulture, out double r) || !double.IsFinite(r) || r < 0)
                throw new FormatException($"line {line}: the rate '{parts[1].Trim()}' is not a finite number >= 0");
            if (r > 1e9) throw new FormatException($"line {line}: the rate {r} is above 1e9 requests per second");
            if (points.Count > 0 && !(t > points[^1].Item1)) throw new FormatException($"line {line}: timestamp {t} does not increase (previous {points[^1].Item1})");
            points.Add((t, r));
        }
        if (points.Count < 2) throw new FormatException("the trace needs at least two points");
        return new PiecewiseTrace(points);
    }
}
