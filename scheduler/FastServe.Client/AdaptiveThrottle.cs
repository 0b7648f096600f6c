using FastServe.Protocol;

namespace FastServe.Client;

/// <summary>
/// Settings of a client's adaptive throttle (docs/client.md, "Adaptive throttling"; Google SRE book, "Handling
/// Overload"). The throttle counts, over a sliding <see cref="Window"/>, the requests the application asked for and
/// those the server accepted, and refuses a new request locally with probability
/// max(0, (requests − <see cref="K"/>·accepts) / (requests + 1)).
/// </summary>
public sealed record AdaptiveThrottleOptions
{
    /// <summary>The book's multiplier: the client sends up to K times as many requests as the server accepts before it
    /// starts refusing locally. 0 turns the throttle off; otherwise at least 1 (below 1 it would refuse requests a
    /// healthy server accepts). Lower is more aggressive; 2 is the book's choice.</summary>
    public double K { get; init; } = 2;

    /// <summary>How far back requests and accepts count (the book uses 2 minutes). A whole number of
    /// <see cref="Bucket"/>s; the bucket being filled counts too, so the effective window is between
    /// Window − Bucket and Window.</summary>
    public TimeSpan Window { get; init; } = TimeSpan.FromMinutes(2);

    /// <summary>Granularity of the window: counts age out one bucket at a time.</summary>
    public TimeSpan Bucket { get; init; } = TimeSpan.FromSeconds(1);

    /// <summary>No local refusal while the window holds fewer requests than this (the book has no such floor). With a
    /// handful of requests the ratio is noise: a single refusal would otherwise refuse the next request half the time,
    /// and a client that sends rarely would be throttled by one unlucky answer.</summary>
    public int MinRequests { get; init; } = 10;

    /// <summary>Clock of the window (tests pass a manual one). Only <see cref="TimeProvider.GetTimestamp"/> is used.</summary>
    public TimeProvider Clock { get; init; } = TimeProvider.System;

    /// <summary>Seed of the local rejection draws; null seeds from <see cref="Random.Shared"/>.</summary>
    public ulong? Seed { get; init; }

    /// <summary>The defaults: K = 2, a 2-minute window of 1-second buckets, no refusal below 10 requests.</summary>
    public static readonly AdaptiveThrottleOptions Default = new();

    internal bool Enabled => K != 0;

    internal void Validate()
    {
        if (!(K == 0 || (K >= 1 && double.IsFinite(K)))) throw new ArgumentOutOfRangeException(nameof(K), "must be 0 (off) or at least 1");
        if (MinRequests < 0) throw new ArgumentOutOfRangeException(nameof(MinRequests), "must not be negative");
        if (Bucket < TimeSpan.FromMilliseconds(1)) throw new ArgumentOutOfRangeException(nameof(Bucket), "must be at least 1 ms");
        if (Window < Bucket || Window.Ticks % Bucket.Ticks != 0)
            throw new ArgumentOutOfRangeException(nameof(Window), "must be a whole number (at least 1) of buckets");
        if (Window.Ticks / Bucket.Ticks > 1 << 16) throw new ArgumentOutOfRangeException(nameof(Window), "must be at most 65536 buckets");
        ArgumentNullException.ThrowIfNull(Clock);
    }
}

/// <summary>
/// Client-side adaptive throttling (Google SRE book, "Handling Overload"): over a sliding window, <c>requests</c>
/// counts every request the application asked for (those refused here included) and <c>accepts</c> every server
/// answer that is not a refusal for load (<see cref="IsLoadRefusal"/>). <see cref="TryAdmit"/> refuses a new request
/// with probability max(0, (requests − K·accepts) / (requests + 1)) (0 while requests &lt;
/// <see cref="AdaptiveThrottleOptions.MinRequests"/>), so a client whose server refuses most of its
/// requests stops sending most of them, and sends again as accepts come back and old refusals age out.
/// </summary>
/// <remarks>
/// A request is counted when its outcome is known: at once when refused here, at its FINAL (<see cref="OnAnswer"/>)
/// or its failure to be sent (<see cref="OnUnanswered"/>) otherwise. The book counts at send time; then every request
/// in flight is a request without an accept, and a healthy server would be throttled whenever more than 1/K of the
/// window's requests are in flight: a fresh client's first burst, or generations longer than half the window.
/// Thread-safe and lock-free on the request path: counts live in a ring of per-bucket counters bumped with
/// <see cref="Interlocked"/>; the first caller in a new bucket takes a lock once to recycle the oldest bucket and to
/// re-add the finished ones. Allocates nothing per request. A count that races a bucket change may land in the next
/// bucket; the estimate is statistical anyway.
/// </remarks>
public sealed class AdaptiveThrottle
{
    private readonly double _k;
    private readonly long _minRequests;
    private readonly TimeProvider _clock;
    private readonly long _bucketTicks; // in the clock's timestamp units
    private readonly int _n;
    private readonly uint _defaultRetryAfterMs;

    // Per bucket: the bucket number it holds (timestamp / _bucketTicks, -1 = never used) and its counts. A slot's
    // stamp is written (under _rotate) only after its counts were zeroed, so a caller that sees the current stamp
    // counts into the current bucket.
    private readonly long[] _stamp;
    private readonly long[] _requests;
    private readonly long[] _accepts;

    // Sums over the window's finished buckets, for the bucket number _current: written under _rotate.
    private readonly object _rotate = new();
    private long _current = -1;
    private long _pastRequests, _pastAccepts;

    private long _throttled;
    private ulong _rng;
    private uint _lastRetryAfterMs;

    public AdaptiveThrottle(AdaptiveThrottleOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        _k = options.K;
        _minRequests = options.MinRequests;
        _clock = options.Clock;
        _bucketTicks = Math.Max(1, (long)(options.Bucket.TotalSeconds * _clock.TimestampFrequency));
        _n = (int)(options.Window.Ticks / options.Bucket.Ticks);
        _defaultRetryAfterMs = (uint)Math.Max(1, options.Bucket.TotalMilliseconds);
        _stamp = new long[_n];
        _requests = new long[_n];
        _accepts = new long[_n];
        Array.Fill(_stamp, -1L);
        _rng = options.Seed ?? (ulong)Random.Shared.NextInt64();
    }

    /// <summary>The multiplier K; 0 when off.</summary>
    public double K => _k;

    /// <summary>Requests refused by <see cref="TryAdmit"/> since the throttle was made.</summary>
    public long Throttled => Interlocked.Read(ref _throttled);

    /// <summary>Requests counted in the window now (those refused locally included).</summary>
    public long WindowRequests { get { int slot = Slot(); return Volatile.Read(ref _pastRequests) + Volatile.Read(ref _requests[slot]); } }

    /// <summary>Server accepts counted in the window now.</summary>
    public long WindowAccepts { get { int slot = Slot(); return Volatile.Read(ref _pastAccepts) + Volatile.Read(ref _accepts[slot]); } }

    /// <summary>The probability that the next request is refused locally: max(0, (requests − K·accepts) / (requests + 1));
    /// 0 below <see cref="AdaptiveThrottleOptions.MinRequests"/> requests, and when the throttle is off.</summary>
    public double RejectProbability
    {
        get
        {
            int slot = Slot();
            return Probability(Volatile.Read(ref _pastRequests) + Volatile.Read(ref _requests[slot]),
                Volatile.Read(ref _pastAccepts) + Volatile.Read(ref _accepts[slot]));
        }
    }

    /// <summary>The back-off hint given with a local refusal, ms: the server's last hint on a load refusal, else one
    /// bucket.</summary>
    public uint RetryAfterMs { get { uint h = Volatile.Read(ref _lastRetryAfterMs); return h != 0 ? h : _defaultRetryAfterMs; } }

    /// <summary>Decides a request the application asked for: true to send it (it is counted later, by
    /// <see cref="OnAnswer"/> or <see cref="OnUnanswered"/>), false to refuse it locally (counted now, as a request
    /// without an accept, and in <see cref="Throttled"/>). Always true when the throttle is off.</summary>
    public bool TryAdmit()
    {
        if (_k == 0) return true;
        int slot = Slot();
        double p = Probability(Volatile.Read(ref _pastRequests) + Volatile.Read(ref _requests[slot]),
            Volatile.Read(ref _pastAccepts) + Volatile.Read(ref _accepts[slot]));
        if (p <= 0 || NextUnit() >= p) return true;
        Interlocked.Increment(ref _requests[slot]);
        Interlocked.Increment(ref _throttled);
        return false;
    }

    /// <summary>Counts a sent request's server answer (its FINAL): a request, and an accept unless
    /// <see cref="IsLoadRefusal"/>; a refusal's retry-after hint (ms, 0 = none) becomes the hint of later local
    /// refusals.</summary>
    public void OnAnswer(WireStatus status, uint retryAfterMs)
    {
        if (_k == 0) return;
        int slot = Slot();
        Interlocked.Increment(ref _requests[slot]);
        if (!IsLoadRefusal(status)) Interlocked.Increment(ref _accepts[slot]);
        else if (retryAfterMs != 0) Volatile.Write(ref _lastRetryAfterMs, retryAfterMs);
    }

    /// <summary>Counts an admitted request that never reached the server (the send buffer was full): a request
    /// without an accept.</summary>
    public void OnUnanswered()
    {
        if (_k == 0) return;
        Interlocked.Increment(ref _requests[Slot()]);
    }

    /// <summary>
    /// Whether a server status refuses a request for load rather than answering it: <c>overloaded</c>,
    /// <c>too_many_requests</c> (the connection's in-flight cap), <c>draining</c> and <c>unavailable</c> (the server is
    /// not taking work). Every other FINAL (ok, cancelled, deadline_exceeded, bad_request, internal, ...) means the
    /// server took the request and counts as an accept.
    /// </summary>
    public static bool IsLoadRefusal(WireStatus status) =>
        status is WireStatus.Overloaded or WireStatus.TooManyRequests or WireStatus.Draining or WireStatus.Unavailable;

    private double Probability(long requests, long accepts)
    {
        if (_k == 0 || requests < _minRequests) return 0;
        return Math.Max(0, (requests - _k * accepts) / (requests + 1));
    }

    // The current bucket's slot, recycling buckets when the clock has moved into a new one.
    private int Slot()
    {
        long bucket = _clock.GetTimestamp() / _bucketTicks;
        int slot = (int)(bucket % _n);
        if (Volatile.Read(ref _stamp[slot]) != bucket) Rotate(bucket, slot);
        return slot;
    }

    private void Rotate(long bucket, int slot)
    {
        lock (_rotate)
        {
            // Time never goes back here: a caller that read the clock before another rotated further leaves it be.
            if (bucket <= _current) return;
            _current = bucket;
            Volatile.Write(ref _requests[slot], 0);
            Volatile.Write(ref _accepts[slot], 0);
            Volatile.Write(ref _stamp[slot], bucket);
            long r = 0, a = 0;
            for (int i = 0; i < _n; i++)
            {
                long s = Volatile.Read(ref _stamp[i]);
                if (s < bucket && s > bucket - _n)
                {
                    r += Volatile.Read(ref _requests[i]);
                    a += Volatile.Read(ref _accepts[i]);
                }
            }
            Volatile.Write(ref _pastRequests, r);
            Volatile.Write(ref _pastAccepts, a);
        }
    }

    // A uniform draw in [0, 1): SplitMix64 over an atomically advanced state, so concurrent callers never share a draw.
    private double NextUnit()
    {
        ulong z = Interlocked.Add(ref _rng, 0x9E3779B97F4A7C15UL);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        z ^= z >> 31;
        return (z >> 11) * (1.0 / (1UL << 53));
    }
}
