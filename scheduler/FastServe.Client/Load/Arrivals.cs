using System.Globalization;

namespace FastServe.Client.Load;

/// <summary>
/// Offered load over time, in requests per second, for t in seconds from the start of the measured window. Before 0
/// (the warm-up) the rate is <c>Rate(0)</c>; after <see cref="Duration"/> it stays at <c>Rate(Duration)</c>.
/// </summary>
public abstract class RateProfile
{
    protected RateProfile(double duration, string spec)
    {
        if (!(duration > 0) || double.IsInfinity(duration)) throw new ArgumentOutOfRangeException(nameof(duration), "must be positive");
        Duration = duration;
        Spec = spec;
    }

    /// <summary>Seconds the profile spans (the measured window).</summary>
    public double Duration { get; }

    /// <summary>How the profile was given (<c>constant:R</c>, <c>ramp:FROM:TO</c>, <c>daily:MIN:MAX</c>).</summary>
    public string Spec { get; }

    /// <summary>Requests per second at <paramref name="t"/> seconds (clamped into [0, Duration]).</summary>
    public abstract double Rate(double t);

    /// <summary>Mean rate over the measured window.</summary>
    public virtual double MeanRate => Cumulative(Duration) / Duration;

    /// <summary>Expected arrivals in [0, t] (t ≥ 0), the integral of <see cref="Rate"/>.</summary>
    public abstract double Cumulative(double t);

    /// <summary>The t ≥ 0 at which <see cref="Cumulative"/> reaches <paramref name="arrivals"/>.</summary>
    public abstract double InverseCumulative(double arrivals);

    /// <summary>
    /// Parses <c>ramp:FROM:TO</c> (linear from FROM to TO req/s over the window) or <c>daily:MIN:MAX</c> (one day
    /// compressed into the window: a quiet night at MIN, a fast morning ramp, a busy day near MAX with a midday dip,
    /// an evening decline back to MIN).
    /// </summary>
    /// <exception cref="FormatException">The text is not one of those forms, or a rate is negative or not finite,
    /// or every rate is 0.</exception>
    public static RateProfile Parse(string spec, double duration)
    {
        ArgumentNullException.ThrowIfNull(spec);
        var parts = spec.Split(':');
        if (parts.Length != 3) throw new FormatException($"'{spec}' is not ramp:FROM:TO or daily:MIN:MAX");
        double a = ParseRate(parts[1], spec), b = ParseRate(parts[2], spec);
        if (a == 0 && b == 0) throw new FormatException($"'{spec}': at least one rate must be positive");
        return parts[0] switch
        {
            "ramp" => new RampProfile(a, b, duration),
            "daily" when a <= b => new DailyProfile(a, b, duration),
            "daily" => throw new FormatException($"'{spec}': MIN must not exceed MAX"),
            _ => throw new FormatException($"'{spec}' is not ramp:FROM:TO or daily:MIN:MAX"),
        };
    }

    private static double ParseRate(string s, string spec) =>
        double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out double r) && r >= 0 && double.IsFinite(r)
            ? r : throw new FormatException($"'{spec}': '{s}' is not a rate in requests per second");
}

/// <summary>A constant rate.</summary>
public sealed class ConstantProfile : RateProfile
{
    private readonly double _rate;

    public ConstantProfile(double rate, double duration) : base(duration, string.Create(CultureInfo.InvariantCulture, $"constant:{rate}"))
    {
        if (!(rate > 0) || double.IsInfinity(rate)) throw new ArgumentOutOfRangeException(nameof(rate), "must be positive");
        _rate = rate;
    }

    public override double Rate(double t) => _rate;
    public override double MeanRate => _rate;
    public override double Cumulative(double t) => _rate * Math.Max(0, t);
    public override double InverseCumulative(double arrivals) => Math.Max(0, arrivals) / _rate;
}

/// <summary>
/// A profile given by a rate function, integrated once on a fine grid: the cumulative is exact at the grid points
/// and linear between them (the rate is taken as constant within each of the 8192 cells).
/// </summary>
public abstract class TabulatedProfile : RateProfile
{
    private const int Cells = 8192;
    private double[]? _cum;

    protected TabulatedProfile(double duration, string spec) : base(duration, spec) { }

    /// <summary>The rate at profile phase u = t / Duration in [0, 1].</summary>
    protected abstract double RateAtPhase(double u);

    public sealed override double Rate(double t) => RateAtPhase(Math.Clamp(t / Duration, 0, 1));

    private double[] Table()
    {
        if (_cum is not null) return _cum;
        var cum = new double[Cells + 1];
        double h = Duration / Cells;
        for (int i = 0; i < Cells; i++)
        {
            // Simpson's rule on each cell.
            double t0 = i * h;
            cum[i + 1] = cum[i] + h / 6 * (Rate(t0) + 4 * Rate(t0 + h / 2) + Rate(t0 + h));
        }
        return _cum = cum;
    }

    public sealed override double Cumulative(double t)
    {
        var cum = Table();
        if (t <= 0) return 0;
        if (t >= Duration) return cum[Cells] + (t - Duration) * Rate(Duration);
        double x = t / Duration * Cells;
        int i = Math.Min((int)x, Cells - 1);
        return cum[i] + (cum[i + 1] - cum[i]) * (x - i);
    }

    public sealed override double InverseCumulative(double arrivals)
    {
        var cum = Table();
        if (arrivals <= 0) return 0;
        if (arrivals >= cum[Cells])
        {
            double end = Rate(Duration);
            return end > 0 ? Duration + (arrivals - cum[Cells]) / end : double.PositiveInfinity;
        }
        int lo = 0, hi = Cells;
        while (hi - lo > 1)
        {
            int mid = (lo + hi) >> 1;
            if (cum[mid] <= arrivals) lo = mid; else hi = mid;
        }
        double span = cum[hi] - cum[lo];
        double frac = span > 0 ? (arrivals - cum[lo]) / span : 0;
        return (lo + frac) * Duration / Cells;
    }
}

/// <summary>Linear ramp from one rate to another over the window.</summary>
public sealed class RampProfile : TabulatedProfile
{
    private readonly double _from, _to;

    public RampProfile(double from, double to, double duration) : base(duration, string.Create(CultureInfo.InvariantCulture, $"ramp:{from}:{to}"))
    {
        _from = from;
        _to = to;
    }

    protected override double RateAtPhase(double u) => _from + (_to - _from) * u;
}

/// <summary>
/// One day compressed into the window (phase u = time of day / 24 h): night at MIN until 06:00, a fast morning ramp
/// to MAX by 08:00 (half a cosine), the working day near MAX with a 15 % midday dip, then a cosine decline from 18:00
/// back to MIN at midnight.
/// </summary>
public sealed class DailyProfile : TabulatedProfile
{
    private readonly double _min, _max;

    public DailyProfile(double min, double max, double duration) : base(duration, string.Create(CultureInfo.InvariantCulture, $"daily:{min}:{max}"))
    {
        _min = min;
        _max = max;
    }

    /// <summary>Load level in [0, 1] at phase u.</summary>
    public static double Level(double u)
    {
        const double MorningStart = 6 / 24.0, MorningEnd = 8 / 24.0, EveningStart = 18 / 24.0;
        if (u < MorningStart) return 0;
        if (u < MorningEnd) return (1 - Math.Cos(Math.PI * (u - MorningStart) / (MorningEnd - MorningStart))) / 2;
        if (u < EveningStart)
        {
            double s = Math.Sin(Math.PI * (u - MorningEnd) / (EveningStart - MorningEnd));
            return 1 - 0.15 * s * s;
        }
        return (1 + Math.Cos(Math.PI * (u - EveningStart) / (1 - EveningStart))) / 2;
    }

    protected override double RateAtPhase(double u) => _min + (_max - _min) * Level(u);
}

/// <summary>How inter-arrival gaps are drawn.</summary>
public enum ArrivalKind
{
    /// <summary>Exponential gaps: a Poisson process (coefficient of variation 1).</summary>
    Poisson,
    /// <summary>Gamma gaps with shape 1/B and mean 1/rate: coefficient of variation √B (B &gt; 1 is burstier).</summary>
    Gamma,
}

/// <summary>
/// Arrival times of an open-loop load: a renewal process with unit-mean gaps (exponential or gamma) run in
/// "operational time" and mapped through the profile's inverse cumulative rate, so the arrival rate follows the
/// profile and the burstiness (gap CV) is the same at every rate. Deterministic for a seed. Not thread-safe.
/// </summary>
public sealed class ArrivalProcess
{
    private readonly RateProfile _profile;
    private readonly double _warmup;
    private readonly double _rate0;
    private readonly Random _rng;
    private readonly double _shape;
    private double _operational;

    /// <param name="kind">Gap distribution.</param>
    /// <param name="burstiness">For <see cref="ArrivalKind.Gamma"/>: B &gt; 0, the squared CV of the gaps (1 = Poisson-like).</param>
    /// <param name="profile">Rate over the measured window.</param>
    /// <param name="warmup">Seconds before the window, at the profile's starting rate (&gt; 0 needed then).</param>
    /// <param name="seed">Random seed.</param>
    public ArrivalProcess(ArrivalKind kind, double burstiness, RateProfile profile, double warmup, int seed)
    {
        ArgumentNullException.ThrowIfNull(profile);
        if (kind == ArrivalKind.Gamma && !(burstiness > 0 && burstiness <= 1000)) throw new ArgumentOutOfRangeException(nameof(burstiness), "must be in (0, 1000]");
        if (!(warmup >= 0)) throw new ArgumentOutOfRangeException(nameof(warmup), "must not be negative");
        Kind = kind;
        _profile = profile;
        _warmup = warmup;
        _rate0 = profile.Rate(0);
        if (warmup > 0 && !(_rate0 > 0)) throw new ArgumentOutOfRangeException(nameof(warmup), "a warm-up needs a positive starting rate");
        _rng = new Random(seed);
        _shape = kind == ArrivalKind.Gamma ? 1 / burstiness : 1;
    }

    public ArrivalKind Kind { get; }

    /// <summary>The next arrival, in seconds from the start of the warm-up (non-decreasing).</summary>
    public double Next()
    {
        _operational += Kind == ArrivalKind.Poisson ? -Math.Log(1 - _rng.NextDouble()) : Gamma(_rng, _shape) / _shape;
        double warmupArrivals = _rate0 * _warmup;
        if (_operational < warmupArrivals) return _operational / _rate0;
        return _warmup + _profile.InverseCumulative(_operational - warmupArrivals);
    }

    /// <summary>A Gamma(shape, 1) draw (Marsaglia and Tsang; shapes below 1 through the U^(1/shape) boost).</summary>
    public static double Gamma(Random rng, double shape)
    {
        if (shape < 1)
        {
            double u = 1 - rng.NextDouble();
            return Gamma(rng, shape + 1) * Math.Pow(u, 1 / shape);
        }
        double d = shape - 1.0 / 3, c = 1 / Math.Sqrt(9 * d);
        while (true)
        {
            double x, v;
            do
            {
                x = Normal(rng);
                v = 1 + c * x;
            } while (v <= 0);
            v = v * v * v;
            double u = 1 - rng.NextDouble();
            if (u < 1 - 0.0331 * x * x * x * x) return d * v;
            if (Math.Log(u) < 0.5 * x * x + d * (1 - v + Math.Log(v))) return d * v;
        }
    }

    private static double Normal(Random rng)
    {
        double u1 = 1 - rng.NextDouble(), u2 = rng.NextDouble();
        return Math.Sqrt(-2 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2);
    }
}
