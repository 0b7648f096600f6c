using System.Diagnostics;

namespace FastServe.Scheduler.Engine;

/// <summary>
/// What the engine knows about its own speed, and the queue-time budget it derives from it: the numbers behind every
/// overload decision (<see cref="Admission.Submit"/> refusing at the door, <see cref="StepBuilder"/> dropping a queued
/// request before its prefill, the engine ending a running one that can no longer make its deadline).
///
/// The model (docs/engine.md, "Overload"): the engine drains <em>work</em>, counted in rows (a prompt token to
/// prefill or a token to generate), at a rate <see cref="RowsPerSecond"/> measured only while requests were queued,
/// i.e. at full batch. A queued request waits for the work ahead of it (<c>rows ahead / rate</c>); once running it
/// advances one token per step, so it needs <c>(prefill steps + expected output − 1) × step interval</c>, the step
/// interval predicted for the batch it will run in (<see cref="PredictStepSeconds"/>: a least-squares line through
/// recent steps' intervals against their rows, so a prediction for a fuller or emptier batch than the last one stays
/// true, and an estimate made under a flood does not lock out the requests an idle engine could serve). The
/// expected output is <c>max_tokens</c> when the request cannot end early (ignore_eos, or no EOS and no stop
/// strings), otherwise the smaller of <c>max_tokens</c> and the recent mean of generated tokens.
///
/// The queue budget for requests without a deadline follows CoDel as Facebook applies it to its RPC queues ("Fail at
/// Scale"): if the queue has not been empty at any point of the last <see cref="EngineOptions.QueueInterval"/>, a
/// request may wait at most <see cref="EngineOptions.QueueTarget"/>; if it has been empty, it may wait the interval.
/// One addition: an interval in which the budget turned a request away also counts as overloaded, since a queue held
/// short by refusals empties now and then without the overload having passed (without it the budget flaps between
/// target and interval every interval). A burst is absorbed; a standing overload keeps only a short queue, enough to
/// keep the batch full.
///
/// Threads: the scheduler thread writes every estimate (Volatile); submitter threads read them.
/// </summary>
internal sealed class OverloadControl
{
    private readonly long _targetTicks, _intervalTicks;
    private readonly int _maxTokensPerStep, _maxSeqs;
    private readonly bool _canEndEarly;   // the engine has EOS ids: requests may end before max_tokens

    private double _rowsPerSecond;        // work drained per second while a queue existed (EWMA)
    private double _stepBase, _stepPerRow; // step interval ≈ base + perRow · rows (decayed least squares; Volatile)
    private double _prefillRowsPerStep;    // prefill rows mixed into a step, recent mean (EWMA)
    private double _recentStepSeconds;     // the measured step interval, recent mean (EWMA; Volatile)
    private double _fastestStepSeconds;    // the shortest interval seen, drifting slowly up to forget an outlier (Volatile)
    private double _meanOutput;           // generated tokens of finished requests (EWMA); 0 = none seen
    private long _budgetTicks;            // the current queue budget for requests without a deadline; 0 = none

    // Scheduler thread only.
    private long _windowStart, _windowRows;
    private double _w, _wx, _wxx, _wy, _wxy;   // decayed sums of the fit: weight, rows, rows², interval, rows·interval
    private long _codelWindowStart, _codelRefusalsSeen;
    private bool _codelEmptied;
    private long _budgetRefusals;          // any thread (Interlocked): requests refused or dropped by the budget

    public OverloadControl(EngineOptions options, int maxTokensPerStep, int maxSeqs)
    {
        _maxSeqs = Math.Max(1, maxSeqs);
        double f = Stopwatch.Frequency;
        _targetTicks = (long)(options.QueueTarget.TotalSeconds * f);
        _intervalTicks = (long)(options.QueueInterval.TotalSeconds * f);
        _budgetTicks = _intervalTicks;
        _maxTokensPerStep = Math.Max(1, maxTokensPerStep);
        _canEndEarly = options.EosTokenIds.Count > 0;
    }

    /// <summary>Rows (prompt tokens plus generated tokens) the engine drained per second while requests queued; 0
    /// before any queue was seen.</summary>
    public double RowsPerSecond => Volatile.Read(ref _rowsPerSecond);

    /// <summary>The step interval measured over the last few dozen steps: what running sequences see now. The engine
    /// ends a running request on this, not on a prediction, since ending it cannot be undone.</summary>
    public double RecentStepSeconds => Volatile.Read(ref _recentStepSeconds);

    /// <summary>The shortest step interval seen lately: what a request alone on an idle engine gets. Admission uses it
    /// when nothing runs, so that an estimate made under a flood (a full batch's slow steps) cannot refuse forever the
    /// requests an idle engine could serve: a request admitted alone refreshes the estimates.</summary>
    public double FastestStepSeconds => Volatile.Read(ref _fastestStepSeconds);

    /// <summary>Predicted seconds between consecutive steps (how long a running sequence waits for each token) once a
    /// request joins a batch of <paramref name="running"/> sequences, or a full batch when <paramref name="queued"/>:
    /// decode rows plus the recent prefill rows per step, through the fitted line. 0 before any step was measured.</summary>
    public double PredictStepSeconds(int running, bool queued)
    {
        double rows = (queued ? _maxSeqs : Math.Min(_maxSeqs, running + 1)) + Volatile.Read(ref _prefillRowsPerStep);
        rows = Math.Min(rows, _maxTokensPerStep);
        return Math.Max(0, Volatile.Read(ref _stepBase) + Volatile.Read(ref _stepPerRow) * rows);
    }

    /// <summary>The queue wait allowed now to a request without a deadline (Stopwatch ticks); 0 = unbounded. Submit
    /// refuses a request whose estimated wait exceeds it.</summary>
    public long BudgetTicks => Volatile.Read(ref _budgetTicks);

    /// <summary>How long a request without a deadline may actually wait before it is dropped from the queue: the
    /// interval, or the budget plus the target when that is longer. The door (<see cref="BudgetTicks"/>) holds the
    /// estimated wait to the budget; this is the hard limit behind it for when the estimate was wrong, loose enough
    /// that nearly every refusal is the immediate one at the door (the estimate's error is tens of milliseconds when
    /// completions come in waves). 0 = unbounded.</summary>
    public long DropTicks { get { long b = BudgetTicks; return b > 0 ? Math.Max(_intervalTicks, b + _targetTicks) : 0; } }

    /// <summary>Tokens a request is expected to generate.</summary>
    public int ExpectedOutput(int maxTokens, bool ignoreEos, bool hasStops)
    {
        if (ignoreEos || !(_canEndEarly || hasStops)) return maxTokens;
        double mean = Volatile.Read(ref _meanOutput);
        return mean <= 0 ? maxTokens : (int)Math.Clamp(Math.Ceiling(mean), 1, maxTokens);
    }

    /// <summary>Work, in rows, a request adds to the queue: its prompt to prefill and its expected output.</summary>
    public long WorkRows(int promptTokens, int expectedOutput) => promptTokens + (long)expectedOutput;

    /// <summary>Seconds to wait behind <paramref name="rowsAhead"/> rows of queued work (0 when nothing was measured).</summary>
    public double WaitSeconds(long rowsAhead)
    {
        double rate = RowsPerSecond;
        return rate <= 0 || rowsAhead <= 0 ? 0 : rowsAhead / rate;
    }

    /// <summary>Seconds a request needs once running: <paramref name="uncomputed"/> rows to prefill, then
    /// <paramref name="tokensLeft"/> tokens to generate, one per step (the prefill's last step makes the first), each
    /// step taking <paramref name="stepSeconds"/> (<see cref="PredictStepSeconds"/>).</summary>
    public double ServiceSeconds(int uncomputed, int tokensLeft, double stepSeconds)
    {
        int prefillSteps = uncomputed <= 1 ? 0 : (uncomputed + _maxTokensPerStep - 1) / _maxTokensPerStep;
        int steps = prefillSteps + Math.Max(0, tokensLeft - (prefillSteps > 0 ? 1 : 0));
        return steps * stepSeconds;
    }

    /// <summary>A request was refused or dropped for waiting beyond the budget.</summary>
    public void NoteBudgetRefusal() => Interlocked.Increment(ref _budgetRefusals);

    // ---- scheduler thread ---------------------------------------------------------------------------------------

    /// <summary>A step finished at <paramref name="now"/>, having computed <paramref name="rows"/> rows of which
    /// <paramref name="prefillRows"/> prefill; <paramref name="intervalTicks"/> since the previous step's end (0 after
    /// an idle wait); <paramref name="queued"/>: requests were waiting for admission.</summary>
    public void OnStep(long now, int rows, int prefillRows, long intervalTicks, bool queued)
    {
        double f = Stopwatch.Frequency;
        _prefillRowsPerStep = 0.95 * _prefillRowsPerStep + 0.05 * prefillRows;
        if (intervalTicks > 0)
        {
            double y = intervalTicks / f, prev = _recentStepSeconds;
            Volatile.Write(ref _recentStepSeconds, prev <= 0 ? y : 0.95 * prev + 0.05 * y);
            double fastest = _fastestStepSeconds;
            Volatile.Write(ref _fastestStepSeconds, fastest <= 0 || y < fastest ? y : fastest + 0.001 * (y - fastest));
            Fit(rows, y);
        }
        // The drain rate: measured only over windows that began with a queue, so it is what the engine can do at full
        // batch, not the arrival rate.
        if (_windowStart == 0)
        {
            if (queued) { _windowStart = now; _windowRows = 0; }
        }
        else
        {
            _windowRows += rows;
            double secs = (now - _windowStart) / f;
            if (secs >= 0.05)
            {
                double rate = _windowRows / secs, prev = _rowsPerSecond;
                Volatile.Write(ref _rowsPerSecond, prev <= 0 ? rate : 0.7 * prev + 0.3 * rate);
                _windowStart = queued ? now : 0;
                _windowRows = 0;
            }
        }
    }

    /// <summary>A request finished normally having generated <paramref name="generated"/> tokens.</summary>
    public void OnFinished(int generated)
    {
        double prev = _meanOutput;
        Volatile.Write(ref _meanOutput, prev <= 0 ? generated : 0.95 * prev + 0.05 * generated);
    }

    // Weighted least squares of interval against rows, older steps decaying by 1 % a step (a few hundred steps of
    // memory). With too little spread in rows to fix a slope, the line is flat at the mean interval.
    private void Fit(double x, double y)
    {
        const double Decay = 0.99;
        _w = Decay * _w + 1;
        _wx = Decay * _wx + x;
        _wxx = Decay * _wxx + x * x;
        _wy = Decay * _wy + y;
        _wxy = Decay * _wxy + x * y;
        double mx = _wx / _w, my = _wy / _w, varX = _wxx / _w - mx * mx;
        double slope = varX > 1.0 ? Math.Max(0, (_wxy / _w - mx * my) / varX) : 0;
        Volatile.Write(ref _stepPerRow, slope);
        Volatile.Write(ref _stepBase, my - slope * mx);
    }

    /// <summary>Once per loop iteration: <paramref name="queued"/> says whether any request is waiting for admission.
    /// Once per interval this decides the budget: the target if the queue never emptied during it, else the interval.</summary>
    public void ObserveQueue(long now, bool queued)
    {
        if (_intervalTicks <= 0) return;
        if (!queued) _codelEmptied = true;
        if (_codelWindowStart == 0) { _codelWindowStart = now; return; }
        if (now - _codelWindowStart < _intervalTicks) return;
        long refusals = Interlocked.Read(ref _budgetRefusals);
        bool overloaded = !_codelEmptied || refusals != _codelRefusalsSeen;
        Volatile.Write(ref _budgetTicks, overloaded ? _targetTicks : _intervalTicks);
        _codelRefusalsSeen = refusals;
        _codelWindowStart = now;
        _codelEmptied = !queued;
    }
}
