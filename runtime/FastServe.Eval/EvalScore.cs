namespace FastServe.Eval;

/// <summary>What a target produced for one example.</summary>
/// <param name="Status">"finished", or the failure's status name (overloaded, failed, connection_lost, ...).</param>
/// <param name="ErrorCode">The failure's stable code; null when finished.</param>
/// <param name="Text">The generated text (EOS contributes none).</param>
/// <param name="Finish">Why generation ended when finished: stop (EOS), length, ...</param>
/// <param name="Tokens">Tokens generated, EOS included.</param>
/// <param name="LogprobSum">Sum of the generated tokens' log-probabilities (natural log); NaN when the target does
/// not report them (a server: the wire protocol carries none).</param>
/// <param name="LogprobMin">The least of them; NaN as above or with no token.</param>
/// <param name="DeviceSeconds">The device time the request cost (the engine's token-weighted share of its steps, or
/// FINAL's <c>device</c> slot from a server); 0 when unknown.</param>
public sealed record EvalOutput(string Status, string? ErrorCode, string? Message, string Text, string? Finish, int Tokens,
    double LogprobSum, double LogprobMin, double DeviceSeconds = 0)
{
    public bool Finished => Status == "finished";
}

/// <summary>One example's judgement.</summary>
public sealed record EvalJudgement(EvalExample Example, EvalOutput Output, string Hypothesis, bool ExactMatch,
    int ReferenceEdits, int HypothesisEdits, int Tp, int Fp, int Fn)
{
    /// <summary>Judges <paramref name="output"/> against <paramref name="example"/>'s reference. An example the target
    /// failed counts as having made no edit (the input is left as it was), so failures cost recall, never precision.</summary>
    public static EvalJudgement Of(EvalExample example, EvalOutput output)
    {
        string hyp = output.Finished ? GecFormat.ParseAnswer(output.Text) : example.Source;
        var src = Edits.Tokenize(example.Source);
        var gold = Edits.Extract(src, Edits.Tokenize(example.Target));
        var mine = Edits.Extract(src, Edits.Tokenize(hyp));
        var (tp, fp, fn) = Edits.Compare(mine, gold);
        return new EvalJudgement(example, output, hyp, output.Finished && hyp == example.Target, gold.Count, mine.Count, tp, fp, fn);
    }
}

/// <summary>
/// The scores of one run over a data set, accumulated one judgement at a time (thread-safe).
/// <list type="bullet">
/// <item>Exact match: the corrected sentence equals the reference, character for character.</item>
/// <item>Edit precision, recall and F0.5, over the whole set (corpus-level, as ERRANT and the CoNLL-2014 / BEA-2019
/// shared tasks compute them): P = TP / (TP + FP), 1 when there is no hypothesis edit; R = TP / (TP + FN), 1 when
/// there is no reference edit; F0.5 = 1.25·P·R / (0.25·P + R), 0 when P and R are 0.</item>
/// <item>Copy rate: among the examples whose reference is the source unchanged, the share answered unchanged.</item>
/// <item>Log-probabilities: the mean over every generated token (EOS included), and the mean over examples of each
/// example's least token log-probability (a confidence signal: a low minimum marks an answer the model hesitated on).</item>
/// </list>
/// </summary>
public sealed class EvalScore
{
    private readonly Lock _lock = new();
    private long _examples, _finished, _exact, _tp, _fp, _fn, _correct, _copied, _tokens, _lpTokens, _lpExamples;
    private double _lpSum, _lpMinSum;

    public void Add(EvalJudgement j)
    {
        lock (_lock)
        {
            _examples++;
            if (j.Output.Finished) _finished++;
            if (j.ExactMatch) _exact++;
            _tp += j.Tp;
            _fp += j.Fp;
            _fn += j.Fn;
            if (j.Example.IsCorrect)
            {
                _correct++;
                if (j.Output.Finished && j.Hypothesis == j.Example.Source) _copied++;
            }
            _tokens += j.Output.Tokens;
            if (!double.IsNaN(j.Output.LogprobSum) && j.Output.Tokens > 0)
            {
                _lpSum += j.Output.LogprobSum;
                _lpTokens += j.Output.Tokens;
                _lpMinSum += j.Output.LogprobMin;
                _lpExamples++;
            }
        }
    }

    /// <summary>The scores so far; <paramref name="seconds"/> is the run's wall time (for tokens/s).</summary>
    public EvalSummary Summarize(double seconds)
    {
        lock (_lock)
        {
            double p = _tp + _fp == 0 ? 1 : (double)_tp / (_tp + _fp);
            double r = _tp + _fn == 0 ? 1 : (double)_tp / (_tp + _fn);
            return new EvalSummary(
                Examples: _examples,
                Finished: _finished,
                ExactMatch: _examples == 0 ? 0 : (double)_exact / _examples,
                Precision: p,
                Recall: r,
                F05: FBeta(p, r, 0.5),
                Tp: _tp, Fp: _fp, Fn: _fn,
                CopyRate: _correct == 0 ? double.NaN : (double)_copied / _correct,
                CorrectInputs: _correct,
                MeanLogprob: _lpTokens == 0 ? double.NaN : _lpSum / _lpTokens,
                MeanMinLogprob: _lpExamples == 0 ? double.NaN : _lpMinSum / _lpExamples,
                GeneratedTokens: _tokens,
                Seconds: seconds,
                TokensPerSecond: seconds > 0 ? _tokens / seconds : 0);
        }
    }

    /// <summary>F-beta of precision <paramref name="p"/> and recall <paramref name="r"/>; 0 when both are 0.</summary>
    public static double FBeta(double p, double r, double beta)
    {
        double b2 = beta * beta;
        return p + r == 0 ? 0 : (1 + b2) * p * r / (b2 * p + r);
    }
}

/// <summary>The scores of one run (see <see cref="EvalScore"/>); NaN where there was nothing to measure.</summary>
public sealed record EvalSummary(long Examples, long Finished, double ExactMatch, double Precision, double Recall, double F05,
    long Tp, long Fp, long Fn, double CopyRate, long CorrectInputs, double MeanLogprob, double MeanMinLogprob,
    long GeneratedTokens, double Seconds, double TokensPerSecond);
