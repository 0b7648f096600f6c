namespace FastServe.Autoscale.Simulation;

/// <summary>
/// One simulated run over time, in buckets of <see cref="SampleSeconds"/> (for <c>simulate-fleet --chart</c> and its
/// JSON): the offered rate, the replicas ready and paid for, and the P99 latency of the offered requests.
/// <para>
/// The P99 counts a refused request as never answered: when more than 1 % of a step's requests are refused its P99 is
/// infinite; otherwise it is the latency that served requests exceed with probability (1 % − r) ÷ (1 − r), r the
/// refused fraction, on the replica model's exponential wait. A bucket keeps its worst step.
/// </para>
/// </summary>
public sealed class FleetTimeline(double sampleSeconds = 60)
{
    private double _rate, _ready, _paid, _p99 = double.NaN;
    private int _n;
    private double _bucketStart;

    public double SampleSeconds { get; } = sampleSeconds > 0 ? sampleSeconds : throw new ArgumentOutOfRangeException(nameof(sampleSeconds));

    /// <summary>Start of each bucket, seconds.</summary>
    public List<double> Time { get; } = [];
    /// <summary>Mean offered rate, requests per second.</summary>
    public List<double> Rate { get; } = [];
    /// <summary>Mean ready replicas.</summary>
    public List<double> Ready { get; } = [];
    /// <summary>Mean replicas paid for (starting, ready and draining).</summary>
    public List<double> Paid { get; } = [];
    /// <summary>Worst step's P99 latency of offered requests, seconds (infinite past 1 % refused).</summary>
    public List<double> P99 { get; } = [];

    internal void Add(double t, double rate, int ready, int paid, in StepOutcome s, ReplicaModel m)
    {
        if (_n > 0 && t >= _bucketStart + SampleSeconds) Flush();
        if (_n == 0) _bucketStart = t;
        _n++;
        _rate += rate;
        _ready += ready;
        _paid += paid;
        double p99 = StepP99(rate, s, m);
        _p99 = double.IsNaN(_p99) ? p99 : Math.Max(_p99, p99);
    }

    internal void Finish()
    {
        if (_n > 0) Flush();
    }

    private void Flush()
    {
        Time.Add(_bucketStart);
        Rate.Add(_rate / _n);
        Ready.Add(_ready / _n);
        Paid.Add(_paid / _n);
        P99.Add(_p99);
        _rate = _ready = _paid = 0;
        _p99 = double.NaN;
        _n = 0;
    }

    internal static double StepP99(double offered, in StepOutcome s, ReplicaModel m)
    {
        if (offered <= 0) return m.BaseLatency;
        double r = s.Refused / offered;
        if (r >= 0.01) return double.PositiveInfinity;
        double wait = s.MeanLatency - m.BaseLatency;
        return wait <= 0 ? m.BaseLatency : m.BaseLatency + wait * Math.Log((1 - r) / (0.01 - r));
    }
}
