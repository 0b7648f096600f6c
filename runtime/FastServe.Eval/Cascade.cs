namespace FastServe.Eval;

/// <summary>
/// A two-tier cascade judged offline from two runs over the same examples: each request runs on the cheap model
/// first and is escalated to the strong one (whose answer the client then gets) when the cheap answer's confidence is
/// below a threshold. Confidence is the answer's least token log-probability: a low minimum or quantile separates
/// wrong answers better than the mean, which is biased by length (Gupta et al., "Language Model Cascades: Token-level
/// uncertainty and beyond", ICLR 2024). A cheap answer that failed, or carries no log-probabilities, is escalated.
/// Cost is device time: every request pays the cheap run, an escalated one the strong run too.
/// </summary>
public static class Cascade
{
    /// <summary>One threshold's outcome: the share escalated, the scores of the answers clients would get, and the
    /// mean device seconds per request.</summary>
    public sealed record Point(double Threshold, double EscalationRate, EvalSummary Summary, double DeviceSecondsPerRequest);

    /// <summary>The cascade at <paramref name="threshold"/>: escalate where the cheap answer's least token
    /// log-probability is below it (−∞: never; +∞: always).</summary>
    public static Point At(IReadOnlyList<EvalJudgement> cheap, IReadOnlyList<EvalJudgement> strong, double threshold)
    {
        if (cheap.Count != strong.Count) throw new ArgumentException("the two runs must judge the same examples", nameof(strong));
        var score = new EvalScore();
        int escalated = 0;
        double device = 0;
        for (int i = 0; i < cheap.Count; i++)
        {
            if (cheap[i].Example.Line != strong[i].Example.Line) throw new ArgumentException($"example {i} differs between the runs", nameof(strong));
            device += cheap[i].Output.DeviceSeconds;
            if (Escalates(cheap[i].Output, threshold))
            {
                escalated++;
                device += strong[i].Output.DeviceSeconds;
                score.Add(strong[i]);
            }
            else score.Add(cheap[i]);
        }
        int n = Math.Max(1, cheap.Count);
        return new Point(threshold, escalated / (double)n, score.Summarize(0), device / n);
    }

    /// <summary>Whether a cheap answer goes to the strong model at <paramref name="threshold"/>.</summary>
    public static bool Escalates(EvalOutput cheap, double threshold) =>
        !cheap.Finished || double.IsNaN(cheap.LogprobMin) || cheap.LogprobMin < threshold;

    /// <summary>Thresholds worth showing: never and always escalate, and the cheap run's least-log-probability
    /// quantiles at each <paramref name="step"/> (so escalation rates come out near 10 %, 20 %, ...).</summary>
    public static double[] Thresholds(IReadOnlyList<EvalJudgement> cheap, double step = 0.1)
    {
        var mins = cheap.Select(j => j.Output.LogprobMin).Where(x => !double.IsNaN(x)).Order().ToArray();
        var t = new List<double> { double.NegativeInfinity };
        if (mins.Length > 0)
            for (double q = step; q < 1 - 1e-9; q += step)
                t.Add(mins[Math.Clamp((int)(q * mins.Length + 1e-9), 0, mins.Length - 1)]);
        t.Add(double.PositiveInfinity);
        return [.. t.Distinct()];
    }
}
