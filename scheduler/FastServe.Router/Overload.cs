using System.Diagnostics;

namespace FastServe.Router;

/// <summary>
/// A sum over a sliding window: <see cref="Slots"/> buckets of equal span; <see cref="Add"/> goes to the newest,
/// <see cref="Advance"/> moves on and drops the oldest from <see cref="Total"/>. The window is thus between
/// (Slots − 1) and Slots bucket spans long. Times are <see cref="Stopwatch"/> ticks passed in by the caller.
/// </summary>
/// <remarks>
/// Lock-free: <see cref="Add"/> and <see cref="TryTake"/> from any thread; <see cref="Advance"/> from one thread only
/// (the router's timer). A writer only ever touches the newest bucket, and <see cref="Advance"/> only clears the oldest,
/// so the two never meet unless a writer stalls for a whole window (then its amount lands one window late).
/// </remarks>
internal sealed class SlidingSum
{
    public const int Slots = 10;

    private readonly long[] _slots = new long[Slots];
    private readonly long _slotTicks;
    private long _total;            // the sum of _slots; Interlocked
    private int _current;           // written by Advance only
    private long _slotEnd;          // Advance only

    /// <summary>A window of <paramref name="windowTicks"/> (split into <see cref="Slots"/> buckets) starting at
    /// <paramref name="now"/>.</summary>
    public SlidingSum(long windowTicks, long now)
    {
        _slotTicks = Math.Max(1, windowTicks / Slots);
        _slotEnd = now + _slotTicks;
    }

    /// <summary>The sum of what was added (less what was taken) within the window.</summary>
    public long Total => Volatile.Read(ref _total);

    /// <summary>Adds <paramref name="amount"/> (may be negative) to the newest bucket.</summary>
    public void Add(long amount)
    {
        Interlocked.Add(ref _slots[Volatile.Read(ref _current)], amount);
        Interlocked.Add(ref _total, amount);
    }

    /// <summary>Takes <paramref name="amount"/> if <see cref="Total"/> + <paramref name="floor"/> covers it, atomically
    /// (concurrent takers never overdraw); false and nothing taken otherwise.</summary>
    public bool TryTake(long amount, long floor)
    {
        long t = Volatile.Read(ref _total);
        while (true)
        {
            if (t + floor < amount) return false;
            long seen = Interlocked.CompareExchange(ref _total, t - amount, t);
            if (seen == t) break;
            t = seen;
        }
        Interlocked.Add(ref _slots[Volatile.Read(ref _current)], -amount);
        return true;
    }

    /// <summary>Moves the window on to <paramref name="now"/>: every bucket span passed drops the oldest bucket.</summary>
    public void Advance(long now)
    {
        if (now < _slotEnd) return;
        long steps = Math.Min(Slots, (now - _slotEnd) / _slotTicks + 1);
        int cur = _current;
        for (long i = 0; i < steps; i++)
        {
            // Clear the oldest before writers move onto it: it becomes the newest.
            int next = (cur + 1) % Slots;
            Interlocked.Add(ref _total, -Interlocked.Exchange(ref _slots[next], 0));
            cur = next;
            Volatile.Write(ref _current, cur);
        }
        _slotEnd = now - (now - _slotEnd) % _slotTicks + _slotTicks;
    }
}

/// <summary>
/// The router's retry budget (docs/router.md, "Retries"), a token bucket in the manner of Finagle's RetryBudget and
/// gRPC's retry throttling: every request received deposits <see cref="RouterOptions.RetryBudgetRatio"/> of a
/// token, every retry withdraws one, and deposits and withdrawals expire after
/// <see cref="RouterOptions.OverloadWindowMs"/>, so the budget reflects recent traffic. A floor of
/// <see cref="RouterOptions.MinRetriesPerSecond"/> × the window in seconds lets a router with little traffic still
/// retry. Over any window, retries ≤ max(ratio × requests, floor): the floor is not added on top, so at any traffic
/// where the ratio's share exceeds it a saturated fleet is sent at most (1 + ratio) × the requests. A ratio of 0
/// allows no retry at all (the floor included). Lock-free; no allocation.
/// </summary>
internal sealed class RetryBudget
{
    // Fixed point: one token is Unit; a ratio resolves to 1e-6 of a token.
    private const long Unit = 1_000_000;

    private readonly SlidingSum _balance, _deposits;  // deposits less withdrawals; deposits alone
    private readonly long _deposit, _reserve;

    public RetryBudget(double ratio, int minRetriesPerSecond, int windowMs, long now)
    {
        _balance = new SlidingSum(RouterOptions.Ticks(windowMs), now);
        _deposits = new SlidingSum(RouterOptions.Ticks(windowMs), now);
        _deposit = (long)Math.Round(ratio * Unit);
        _reserve = (long)minRetriesPerSecond * windowMs / 1000 * Unit;
    }

    /// <summary>Retries the budget allows now (whole tokens; the floor included).</summary>
    public long Available => _deposit == 0 ? 0 : Math.Max(0, (_balance.Total + Floor) / Unit);

    // What the floor adds to the balance: the part of it the window's deposits do not already cover.
    private long Floor => Math.Max(0, _reserve - _deposits.Total);

    /// <summary>A request was received.</summary>
    public void Deposit()
    {
        if (_deposit == 0) return;
        _balance.Add(_deposit);
        _deposits.Add(_deposit);
    }

    /// <summary>Takes one retry's token; false when the budget is spent (or retries are off).</summary>
    public bool TryWithdraw() => _deposit != 0 && _balance.TryTake(Unit, Floor);

    /// <summary>Expires what is older than the window (the router's timer).</summary>
    public void Advance(long now)
    {
        _balance.Advance(now);
        _deposits.Advance(now);
    }
}

/// <summary>
/// Fleet saturation as the router sees it: of the FINALs replicas sent it within the last
/// <see cref="RouterOptions.OverloadWindowMs"/> (every attempt's, retries included, whatever the status), the fraction
/// that were <c>overloaded</c>. 0 when none came in the window. Lock-free; no allocation.
/// </summary>
internal sealed class SaturationWindow
{
    private readonly SlidingSum _answers, _overloaded;
    private readonly double _windowSeconds;

    public SaturationWindow(int windowMs, long now)
    {
        _windowSeconds = windowMs / 1000.0;
        _answers = new SlidingSum(RouterOptions.Ticks(windowMs), now);
        _overloaded = new SlidingSum(RouterOptions.Ticks(windowMs), now);
    }

    /// <summary>A replica's FINAL arrived; <paramref name="overloaded"/> when its status was <c>overloaded</c>.</summary>
    public void Record(bool overloaded)
    {
        _answers.Add(1);
        if (overloaded) _overloaded.Add(1);
    }

    /// <summary>The fraction in [0, 1].</summary>
    public double Value
    {
        get
        {
            // Two sums read one after the other may disagree by an in-flight Add: clamp.
            long n = _answers.Total, o = _overloaded.Total;
            return n <= 0 ? 0 : Math.Clamp(o / (double)n, 0, 1);
        }
    }

    /// <summary>Overloaded answers per second over the window (retries' included, so up to the retry budget's share
    /// more than the refusals clients saw).</summary>
    public double OverloadedPerSecond => Math.Max(0, _overloaded.Total) / _windowSeconds;

    public void Advance(long now)
    {
        _answers.Advance(now);
        _overloaded.Advance(now);
    }
}

/// <summary>
/// The mean time a replica takes to answer a request (its own receipt-to-FINAL time, from the FINAL's timings), as an
/// exponentially weighted mean over answered requests: what turns refusals into the concurrency they would have added
/// (Little's law) for the fleet-demand signal. Lock-free: a lost update under a race only drops one sample.
/// </summary>
internal sealed class ServiceTime
{
    private long _bits;   // the mean, in seconds, as double bits; 0 = none yet

    public double Seconds => BitConverter.Int64BitsToDouble(Volatile.Read(ref _bits));

    public void Observe(double seconds)
    {
        if (!(seconds > 0) || double.IsInfinity(seconds)) return;
        double prev = Seconds;
        double next = prev <= 0 ? seconds : 0.98 * prev + 0.02 * seconds;
        Volatile.Write(ref _bits, BitConverter.DoubleToInt64Bits(next));
    }
}

/// <summary>What the router sees of its fleet's load: the autoscaler's input (docs/autoscale.md).</summary>
/// <param name="Ready">Endpoints that can be picked now.</param>
/// <param name="Concurrency">Requests in flight or queued at the ready endpoints, as their latest load reports say.</param>
/// <param name="RefusedPerSecond">Overloaded answers per second over the overload window.</param>
/// <param name="ServiceSeconds">Mean time a replica takes to answer a request (0 before any answer).</param>
public readonly record struct FleetLoad(int Ready, double Concurrency, double RefusedPerSecond, double ServiceSeconds)
{
    /// <summary>Concurrency plus refusals turned into the concurrency they would have added (refused/s × seconds).</summary>
    public double Demand => Concurrency + RefusedPerSecond * ServiceSeconds;
}

/// <summary>
/// Retries waiting out their jitter delay, earliest first, serviced by the router's timer thread (one thread for all
/// of them, no timer object per retry). While a request waits here this queue owns it, as a connection's map does
/// while it runs: only the timer, taking it out, decides what happens next, so it is finished exactly once.
/// </summary>
internal sealed class RetryDelays
{
    private readonly Lock _lock = new();
    private readonly PriorityQueue<RoutedRequest, long> _queue = new();     // under _lock; grows, never shrinks
    private readonly ManualResetEventSlim _wake = new(false, 0);
    private bool _closed;                                                 // under _lock

    /// <summary>Requests waiting now.</summary>
    public int Count { get { lock (_lock) return _queue.Count; } }

    /// <summary>When the earliest is due (Stopwatch ticks); <see cref="long.MaxValue"/> when none waits.</summary>
    public long NextDue
    {
        get { lock (_lock) return _queue.TryPeek(out _, out long due) ? due : long.MaxValue; }
    }

    /// <summary>Queues <paramref name="req"/> until <paramref name="due"/> and wakes the timer if it is now the
    /// earliest. False once <see cref="Close"/> has run (the caller then finishes it itself).</summary>
    public bool TryAdd(RoutedRequest req, long due)
    {
        bool earliest;
        lock (_lock)
        {
            if (_closed) return false;
            earliest = !_queue.TryPeek(out _, out long first) || due < first;
            _queue.Enqueue(req, due);
        }
        if (earliest) _wake.Set();
        return true;
    }

    /// <summary>The earliest request due at <paramref name="now"/>, taken out; null when none is.</summary>
    public RoutedRequest? TakeDue(long now)
    {
        lock (_lock)
        {
            if (!_queue.TryPeek(out var req, out long due) || due > now) return null;
            _queue.Dequeue();
            return req;
        }
    }

    /// <summary>Blocks the timer for up to <paramref name="ticks"/>, less if a new earliest request arrives (or
    /// <see cref="Wake"/>).</summary>
    public void Wait(long ticks)
    {
        int ms = (int)Math.Clamp((ticks * 1000 + Stopwatch.Frequency - 1) / Stopwatch.Frequency, 1, 1000);
        _wake.Wait(ms);
        // Reset before the caller looks at the queue again, so an add after this is seen then or wakes the next wait.
        _wake.Reset();
    }

    public void Wake() => _wake.Set();

    /// <summary>No more adds; returns what still waits (to be finished by the caller).</summary>
    public RoutedRequest[] Close()
    {
        lock (_lock)
        {
            _closed = true;
            var left = new RoutedRequest[_queue.Count];
            for (int i = 0; i < left.Length; i++) left[i] = _queue.Dequeue();
            return left;
        }
    }
}
