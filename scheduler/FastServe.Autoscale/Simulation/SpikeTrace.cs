namespace FastServe.Autoscale.Simulation;

/// <summary>
/// A surge on top of another trace: from <c>At</c> the rate is multiplied by a factor that rises linearly from 1 to
/// <c>Factor</c> over <c>RiseSeconds</c>, holds for <c>HoldSeconds</c>, and falls back to 1 over <c>RiseSeconds</c>
/// (the "×2 within 60 s, lasting some minutes").
/// </summary>
public sealed class SpikeTrace(LoadTrace inner, double atSeconds, double factor = 2, double riseSeconds = 60, double holdSeconds = 600) : LoadTrace
{
    public override double DurationSeconds => inner.DurationSeconds;

    public override double Rate(double t)
    {
        double x = t - atSeconds, m;
        if (x <= 0 || x >= 2 * riseSeconds + holdSeconds) m = 1;
        else if (x < riseSeconds) m = 1 + (factor - 1) * x / riseSeconds;
        else if (x <= riseSeconds + holdSeconds) m = factor;
        else m = 1 + (factor - 1) * (2 * riseSeconds + holdSeconds - x) / riseSeconds;
        return inner.Rate(t) * m;
    }
}
