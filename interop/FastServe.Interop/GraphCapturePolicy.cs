namespace FastServe.Interop;

/// <summary>
/// When the cuda backend captures a decode step's graph, on top of <see cref="Runtime.Backends.StepRecordings{T}"/>
/// (which says a key may be recorded once it ran op by op). Nothing is captured at start-up: every key's steps run
/// eagerly until its graph exists, so the engine's warm-up (one decode step of batch 1) captures nothing and the
/// replica reports ready with no graph; a key is captured only
/// <list type="bullet">
/// <item>after <see cref="EagerStepsBeforeCapture"/> eager steps of it (the first grows every buffer the step needs,
/// so at least 1), and</item>
/// <item>when the device thread's capture duty cycle allows it: a capture that took c seconds is followed by at least
/// c·(1 − d)/d seconds without one (<see cref="DutyCycle"/> d), so a start under rising load, when every batch size
/// is new, spreads its captures over many steps instead of adding one capture's cost to each of a run of consecutive
/// steps. A key that is due but deferred runs eagerly (counted in <see cref="Deferred"/>).</item>
/// </list>
/// <see cref="NextIdleKey"/> names the key a caller with an idle gap should capture first (the one that ran eagerly
/// most often). Times are seconds on any monotonic clock. Used by one thread at a time.
/// </summary>
internal sealed class GraphCapturePolicy
{
    private readonly Dictionary<int, KeyState> _keys = [];
    private double _nextAllowed = double.NegativeInfinity;

    /// <exception cref="ArgumentOutOfRangeException">fewer than 1 eager step, or a duty cycle outside (0, 1].</exception>
    public GraphCapturePolicy(int eagerStepsBeforeCapture = 1, double dutyCycle = 0.25)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(eagerStepsBeforeCapture, 1);
        if (!(dutyCycle > 0 && dutyCycle <= 1)) throw new ArgumentOutOfRangeException(nameof(dutyCycle), dutyCycle, "the capture duty cycle must be in (0, 1]");
        EagerStepsBeforeCapture = eagerStepsBeforeCapture;
        DutyCycle = dutyCycle;
    }

    public int EagerStepsBeforeCapture { get; }
    public double DutyCycle { get; }

    /// <summary>The duty cycle <c>FASTSERVE_CUDA_CAPTURE_DUTY</c> sets (a number in (0, 1]; 1 captures every due key
    /// at once, as before the duty cycle existed), else 0.25.</summary>
    /// <exception cref="Runtime.FastServeException">cuda.invalid_capture_duty, naming the variable and the value.</exception>
    public static double DutyCycleFromEnvironment(Func<string, string?> get)
    {
        const string Name = "FASTSERVE_CUDA_CAPTURE_DUTY";
        string? v = get(Name);
        if (string.IsNullOrWhiteSpace(v)) return 0.25;
        if (double.TryParse(v.Trim(), System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out double d) && d > 0 && d <= 1) return d;
        throw new Runtime.FastServeException("cuda.invalid_capture_duty", $"{Name}={v}: expected a number greater than 0 and at most 1", Name);
    }

    /// <summary>Keys whose graph is captured now.</summary>
    public int CapturedKeys { get; private set; }
    /// <summary>Captures that produced a graph, since the start (a key dropped and captured again counts twice).</summary>
    public int Captures { get; private set; }
    /// <summary>Host time spent capturing (issuing the step into the capture, ending it, instantiating the graph), all
    /// attempts included.</summary>
    public double CaptureSeconds { get; private set; }
    public double LongestCaptureSeconds { get; private set; }
    /// <summary>Steps of a due key that ran eagerly because the duty cycle deferred their capture.</summary>
    public long Deferred { get; private set; }

    public GraphCaptureStats Stats => new(CapturedKeys, Captures, CaptureSeconds, LongestCaptureSeconds, Deferred);

    /// <summary>Whether a step of <paramref name="key"/>, which the shared policy would record now, is captured at
    /// <paramref name="now"/>; false: run it eagerly (and report it with <see cref="OnEager"/>).</summary>
    public bool ShouldCapture(int key, double now)
    {
        _keys.TryGetValue(key, out var k);
        if (k.Captured || k.Eager < EagerStepsBeforeCapture) return false;
        if (now < _nextAllowed)
        {
            Deferred++;
            return false;
        }
        return true;
    }

    /// <summary>A step of <paramref name="key"/> ran op by op.</summary>
    public void OnEager(int key)
    {
        ref var k = ref System.Runtime.InteropServices.CollectionsMarshal.GetValueRefOrAddDefault(_keys, key, out _);
        k.Eager++;
    }

    /// <summary>A capture of <paramref name="key"/> ran from <paramref name="start"/> to <paramref name="end"/>;
    /// <paramref name="captured"/>: it produced a graph (false: refused, the step then ran eagerly).</summary>
    public void OnCapture(int key, double start, double end, bool captured)
    {
        double took = Math.Max(0, end - start);
        CaptureSeconds += took;
        LongestCaptureSeconds = Math.Max(LongestCaptureSeconds, took);
        _nextAllowed = end + took * (1 - DutyCycle) / DutyCycle;
        ref var k = ref System.Runtime.InteropServices.CollectionsMarshal.GetValueRefOrAddDefault(_keys, key, out _);
        if (!captured)
        {
            k.Refusals++;
            return;
        }
        Captures++;
        if (k.Captured) return;
        k.Captured = true;
        CapturedKeys++;
    }

    /// <summary>The graph of <paramref name="key"/> was dropped (a replay refused it): the key runs eagerly again until
    /// it is captured anew.</summary>
    public void OnDropped(int key)
    {
        ref var k = ref System.Runtime.InteropServices.CollectionsMarshal.GetValueRefOrAddDefault(_keys, key, out _);
        k.Refusals++;
        if (!k.Captured) return;
        k.Captured = false;
        CapturedKeys--;
    }

    /// <summary>The key a caller with an idle gap should capture next: among keys due (enough eager steps, no graph,
    /// refused fewer than <see cref="Runtime.Backends.StepRecordings{T}.MaxRefusals"/> times), the one run eagerly
    /// most often, the smaller on a tie; -1 when none. Idle time delays no step, so the duty cycle does not apply.
    /// </summary>
    public int NextIdleKey()
    {
        int best = -1;
        long bestEager = -1;
        foreach (var (key, k) in _keys)
        {
            if (k.Captured || k.Eager < EagerStepsBeforeCapture || k.Refusals >= Runtime.Backends.StepRecordings<CudaGraph>.MaxRefusals) continue;
            if (k.Eager > bestEager || (k.Eager == bestEager && key < best))
            {
                best = key;
                bestEager = k.Eager;
            }
        }
        return best;
    }

    /// <summary>Forgets every key (recording restarted); the totals stay.</summary>
    public void Clear()
    {
        _keys.Clear();
        CapturedKeys = 0;
        _nextAllowed = double.NegativeInfinity;
    }

    private struct KeyState
    {
        public long Eager;
        public int Refusals;
        public bool Captured;
    }
}

/// <summary>What lazy graph capture has done so far (<see cref="GraphCapturePolicy"/>): keys with a graph now,
/// captures made, host seconds spent capturing (all attempts) and the longest one, and eager steps of due keys whose
/// capture the duty cycle deferred.</summary>
public readonly record struct GraphCaptureStats(int CapturedKeys, int Captures, double CaptureSeconds, double LongestCaptureSeconds, long Deferred);
