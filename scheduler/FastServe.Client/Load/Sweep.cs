namespace FastServe.Client.Load;

/// <summary>How a sweep walks the offered rate.</summary>
public sealed record SweepOptions
{
    /// <summary>First rate, requests per second.</summary>
    public double Start { get; init; } = 10;
    /// <summary>Each grid rate is the previous one times this (used when <see cref="Step"/> is null); &gt; 1.</summary>
    public double Factor { get; init; } = 2;
    /// <summary>If set, each grid rate is the previous one plus this instead.</summary>
    public double? Step { get; init; }
    /// <summary>No grid rate above this.</summary>
    public double Max { get; init; } = 1e6;
    /// <summary>End the grid after this many failing points in a row (points past the knee help the chart).</summary>
    public int StopAfterFailures { get; init; } = 2;
    /// <summary>Bisection steps after the grid, between the best passing rate and the lowest failing rate above it.</summary>
    public int Refine { get; init; } = 2;

    internal void Validate()
    {
        if (!(Start > 0 && double.IsFinite(Start))) throw new ArgumentOutOfRangeException(nameof(Start), "must be positive");
        if (Step is null && !(Factor > 1 && double.IsFinite(Factor))) throw new ArgumentOutOfRangeException(nameof(Factor), "must be greater than 1");
        if (Step is { } s && !(s > 0 && double.IsFinite(s))) throw new ArgumentOutOfRangeException(nameof(Step), "must be positive");
        if (!(Max >= Start)) throw new ArgumentOutOfRangeException(nameof(Max), "must be at least Start");
        if (StopAfterFailures < 1) throw new ArgumentOutOfRangeException(nameof(StopAfterFailures), "must be at least 1");
        if (Refine < 0 || Refine > 20) throw new ArgumentOutOfRangeException(nameof(Refine), "must be in [0, 20]");
    }
}

/// <summary>
/// Decides the rates of a sweep from the outcomes so far: an increasing grid (geometric or arithmetic) until
/// <see cref="SweepOptions.StopAfterFailures"/> failures in a row or <see cref="SweepOptions.Max"/>, then bisection
/// between the best rate and the lowest failing rate above it. The best rate is the highest passing rate below every
/// failing rate tested (a lucky pass above a failure does not count). Not thread-safe.
/// </summary>
public sealed class SweepPlanner
{
    private readonly SweepOptions _o;
    private readonly List<(double Rate, bool Pass)> _history = new();
    private int _grid;
    private int _failRun;
    private bool _gridDone;
    private int _refined;
    private double? _pending;

    public SweepPlanner(SweepOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        _o = options;
    }

    public IReadOnlyList<(double Rate, bool Pass)> History => _history;

    /// <summary>The next rate to measure, or null when the sweep is over. Call <see cref="Report"/> before asking again.</summary>
    public double? Next()
    {
        if (_pending is not null) throw new InvalidOperationException("report the previous rate first");
        if (!_gridDone)
        {
            double rate = _o.Step is { } s ? _o.Start + _grid * s : _o.Start * Math.Pow(_o.Factor, _grid);
            if (rate <= _o.Max * (1 + 1e-9) && _failRun < _o.StopAfterFailures)
            {
                _grid++;
                return _pending = rate;
            }
            _gridDone = true;
        }
        if (_refined >= _o.Refine || BestRate is not { } lo || LowestFailAbove(lo) is not { } hi) return null;
        _refined++;
        return _pending = (lo + hi) / 2;
    }

    /// <summary>Records whether <paramref name="rate"/> met the service level.</summary>
    public void Report(double rate, bool pass)
    {
        if (_pending != rate) throw new InvalidOperationException($"{rate} is not the rate handed out");
        _pending = null;
        _history.Add((rate, pass));
        if (!_gridDone) _failRun = pass ? 0 : _failRun + 1;
    }

    /// <summary>The highest passing rate below every failing rate, or null when none passed.</summary>
    public double? BestRate
    {
        get
        {
            double minFail = double.PositiveInfinity;
            foreach (var (r, p) in _history) if (!p) minFail = Math.Min(minFail, r);
            double? best = null;
            foreach (var (r, p) in _history) if (p && r < minFail && (best is null || r > best)) best = r;
            return best;
        }
    }

    private double? LowestFailAbove(double rate)
    {
        double? low = null;
        foreach (var (r, p) in _history) if (!p && r > rate && (low is null || r < low)) low = r;
        return low;
    }
}

/// <summary>The points of a sweep in the order they ran and the best one (null when no rate met the SLO).</summary>
public sealed record SweepResult(IReadOnlyList<BenchResult> Points, BenchResult? Best);

/// <summary>Runs a sweep of open-loop rates (<c>fastserve bench --sweep</c>).</summary>
public static class Sweep
{
    /// <summary>Sweeps with any measurement function (a real run, or a model of one in tests).</summary>
    public static async Task<SweepResult> RunAsync(SweepOptions sweep, Func<double, Task<BenchResult>> measure, Action<BenchResult>? onPoint = null)
    {
        ArgumentNullException.ThrowIfNull(measure);
        var planner = new SweepPlanner(sweep);
        var points = new List<BenchResult>();
        while (planner.Next() is { } rate)
        {
            var r = await measure(rate).ConfigureAwait(false);
            points.Add(r);
            planner.Report(rate, r.MeetsSlo);
            onPoint?.Invoke(r);
        }
        BenchResult? best = null;
        if (planner.BestRate is { } b)
            for (int i = 0; i < points.Count; i++)
                if (planner.History[i].Rate == b) best = points[i];
        return new SweepResult(points, best);
    }

    /// <summary>Sweeps real open-loop runs: <paramref name="baseOptions"/> with <see cref="BenchOptions.Rate"/> set to each rate
    /// (a profile or concurrency in it is dropped).</summary>
    /// <param name="progress">Per run: its rate and its progress.</param>
    public static Task<SweepResult> RunAsync(BenchOptions baseOptions, SweepOptions sweep, Action<BenchResult>? onPoint = null,
        Action<double, BenchProgress>? progress = null, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(baseOptions);
        return RunAsync(sweep, rate => LoadGenerator.RunAsync(baseOptions with { Rate = rate, Profile = null, Concurrency = null },
            progress is null ? null : p => progress(rate, p), ct), onPoint);
    }
}
