using System.Diagnostics;
using FastServe.Protocol;

namespace FastServe.Router;

/// <summary>An endpoint's condition as one word (for logs and the stopped event).</summary>
public enum EndpointCondition : byte
{
    /// <summary>No connection has completed HELLO yet, or all of them broke.</summary>
    Down,
    /// <summary>Connected, but its load report does not say ready yet (or no report came).</summary>
    Starting,
    /// <summary>Connected and reporting ready: it takes new requests (unless ejected or congested).</summary>
    Ready,
    /// <summary>It reports draining: it finishes what it runs and takes nothing new.</summary>
    Draining,
    /// <summary>Ejected for repeated errors until its ejection period ends.</summary>
    Ejected,
    /// <summary>It left the endpoint source: its in-flight requests finish, then its connections close.</summary>
    Removed,
}

/// <summary>
/// One replica as this router sees it: address and weight, whether its connections are up, its last load report, the
/// requests this router has in flight on it, slow start and outlier ejection (docs/router.md). All times are
/// <see cref="Stopwatch"/> ticks passed in by the caller, so the rules can be checked with any clock.
/// </summary>
/// <remarks>
/// Thread-safe. State changes take a private lock; what the balancer reads on every pick (readiness, ejection,
/// congestion, in-flight, queued, report time) is kept in fields read without it.
/// </remarks>
public sealed class Endpoint
{
    private readonly Lock _lock = new();
    private readonly long _slowStartTicks, _freshTicks, _baseEjectTicks, _maxEjectTicks;
    private readonly int _ejectAfter;

    // Guarded by _lock.
    private int _connectionsUp;
    private LoadReport _report;
    private int _consecutiveErrors;
    private int _ejectionLevel;
    private long _ejections;
    private HelloOk _server;

    // Written under _lock (or atomically), read by the balancer without it.
    private volatile bool _ready, _draining, _removed, _congested, _exitedAfterDrain;
    private long _readySince, _reportAt, _ejectedUntil, _removedAt;
    private int _reportQueued, _reportWaitMs, _inFlight;
    private long _forwarded;
    private long _tokenTimeBits;     // a double; written by the receive loops of its connections
    private volatile string _model = "", _modelVersion = "";
    private volatile bool _helloed;

    /// <summary>An endpoint judged by the rules of <paramref name="options"/>.</summary>
    public Endpoint(EndpointSpec spec, RouterOptions options)
    {
        Spec = spec;
        Weight = spec.Weight;
        _slowStartTicks = RouterOptions.Ticks(options.SlowStartMs);
        _freshTicks = RouterOptions.Ticks(options.ReportFreshMs);
        _baseEjectTicks = RouterOptions.Ticks(options.BaseEjectionMs);
        _maxEjectTicks = RouterOptions.Ticks(options.MaxEjectionMs);
        _ejectAfter = options.EjectAfterErrors;
    }

    /// <summary>Where it is and its configured weight (as the endpoint source gave them).</summary>
    public EndpointSpec Spec { get; private set; }

    /// <summary><c>host:port</c>.</summary>
    public string Address => Spec.Address;

    /// <summary>Configured weight (&gt; 0); the effective weight adds slow start.</summary>
    public double Weight { get; private set; }

    /// <summary>The router's connections to it (none for an endpoint built without a router, as in tests).</summary>
    internal UpstreamConnection[] Connections { get; set; } = [];

    /// <summary>Smooth weighted round-robin state; owned by the <see cref="Balancer"/> (under its lock).</summary>
    internal double RoundRobinCurrent;

    /// <summary>Requests this router has sent to it and not yet seen end.</summary>
    public int InFlight => Volatile.Read(ref _inFlight);

    /// <summary>
    /// How fast the replica generates, in microseconds per output token: an exponentially weighted mean (weight 0.2
    /// on the newest) of its <c>ok</c> FINALs' (engine_finished − first_token) / (completion tokens − 1). 0 until one
    /// with two tokens or more has come. Kept across reconnects: a restarted replica runs on the same hardware.
    /// </summary>
    public double TokenTimeUs => BitConverter.Int64BitsToDouble(Volatile.Read(ref _tokenTimeBits));

    /// <summary>Requests this router has sent to it in total (attempts, retries included).</summary>
    public long Forwarded => Interlocked.Read(ref _forwarded);

    /// <summary>Connected (HELLO_OK on at least one connection) and its last load report says ready.</summary>
    public bool IsReady => _ready;

    /// <summary>Its last load report says draining.</summary>
    public bool IsDraining => _draining;

    /// <summary>It left the endpoint source.</summary>
    public bool IsRemoved => _removed;

    /// <summary>None of its connections can take another request now (unsent bytes over the soft limit, or the
    /// replica's per-connection in-flight limit reached).</summary>
    public bool IsCongested => _congested;

    /// <summary>Connections with a completed HELLO.</summary>
    public int ConnectionsUp { get { lock (_lock) return _connectionsUp; } }

    /// <summary>The replica's HELLO_OK (limits, context length); default until a connection has completed HELLO.</summary>
    public HelloOk Server { get { lock (_lock) return _server; } }

    /// <summary>The model name its last HELLO_OK declared (empty from a replica that declares none, or before any).</summary>
    public string Model => _model;

    /// <summary>The model version its last HELLO_OK declared (empty as <see cref="Model"/>).</summary>
    public string ModelVersion => _modelVersion;

    /// <summary>A connection to it has completed HELLO at least once, so <see cref="Model"/> is what it serves.</summary>
    public bool HasHello => _helloed;

    /// <summary>Whether it belongs to the pool of <paramref name="model"/> (null: every pool) and
    /// <paramref name="version"/> (null: every version of that model). A replica declaring no model is in no
    /// named model's pool.</summary>
    public bool Serves(string? model, string? version) =>
        model is null || (string.Equals(_model, model, StringComparison.Ordinal) && (version is null || string.Equals(_modelVersion, version, StringComparison.Ordinal)));

    /// <summary>The last load report and when it arrived (0 = none since the connections came up).</summary>
    public (LoadReport Report, long ReceivedAt) LastReport { get { lock (_lock) return (_report, _reportAt); } }

    /// <summary>Consecutive errors counted toward ejection.</summary>
    public int ConsecutiveErrors { get { lock (_lock) return _consecutiveErrors; } }

    /// <summary>How many ejections in a row count toward the doubling of the period (decays while it behaves).</summary>
    public int EjectionLevel { get { lock (_lock) return _ejectionLevel; } }

    /// <summary>Times this endpoint was ejected since it joined.</summary>
    public long Ejections { get { lock (_lock) return _ejections; } }

    /// <summary>Ejected at <paramref name="now"/>.</summary>
    public bool IsEjected(long now) => now < Volatile.Read(ref _ejectedUntil);

    /// <summary>When the current (or last) ejection ends; 0 = never ejected.</summary>
    public long EjectedUntil => Volatile.Read(ref _ejectedUntil);

    /// <summary>May take a new request at <paramref name="now"/>: ready, not draining, not ejected, not congested,
    /// not removed.</summary>
    public bool IsEligible(long now) => !_removed && CanServe(now);

    /// <summary>Ready, not draining, not ejected, not congested: whether or not it is still in the source's set (an
    /// endpoint that left serves as a fallback while no endpoint of the set is eligible).</summary>
    public bool CanServe(long now) => _ready && !_draining && !_congested && !IsEjected(now);

    /// <summary>When it left the source's set (Stopwatch ticks); 0 while it is in it.</summary>
    public long RemovedAt => Volatile.Read(ref _removedAt);

    /// <summary>The word for its condition at <paramref name="now"/>.</summary>
    public EndpointCondition Condition(long now)
    {
        if (_removed) return EndpointCondition.Removed;
        if (IsEjected(now)) return EndpointCondition.Ejected;
        if (_draining) return EndpointCondition.Draining;
        if (_ready) return EndpointCondition.Ready;
        lock (_lock) return _connectionsUp > 0 ? EndpointCondition.Starting : EndpointCondition.Down;
    }

    /// <summary>
    /// Weight × slow-start factor: the factor ramps linearly from 0.1 when the endpoint became ready to 1 after the
    /// slow-start time. 0 when not ready.
    /// </summary>
    public double EffectiveWeight(long now)
    {
        if (!_ready) return 0;
        if (_slowStartTicks <= 0) return Weight;
        double t = (now - Volatile.Read(ref _readySince)) / (double)_slowStartTicks;
        return Weight * (t >= 1 ? 1 : t <= 0 ? 0.1 : 0.1 + 0.9 * t);
    }

    /// <summary>
    /// Load score (lower is better): requests this router has in flight on it, plus, when its load report is fresh
    /// (arrived at most <see cref="RouterOptions.ReportFreshMs"/> ago), the report's queued count and its estimated
    /// wait w (ms) as the fraction w / (w + 1000). The fraction stays below 1, so it never outweighs a whole request;
    /// it orders endpoints with equal counts by how long their queue takes to drain (a slow replica's does longer).
    /// </summary>
    public double Score(long now)
    {
        double s = Volatile.Read(ref _inFlight);
        long at = Volatile.Read(ref _reportAt);
        if (at != 0 && now - at <= _freshTicks)
        {
            double wait = Volatile.Read(ref _reportWaitMs);
            s += Volatile.Read(ref _reportQueued) + wait / (wait + 1000);
        }
        return s;
    }

    // ---------------------------------------------------------------- state changes

    /// <summary>
    /// Its last connection closed while it reported <c>draining</c>: the replica left on purpose (drained and exited,
    /// a rolling update), so failing to reconnect is not an error of it, until a connection comes up again.
    /// </summary>
    public bool ExitedAfterDrain => _exitedAfterDrain;

    /// <summary>A connection completed HELLO (its HELLO_OK given).</summary>
    internal void OnConnectionUp(in HelloOk server, long now)
    {
        lock (_lock)
        {
            _exitedAfterDrain = false;
            _connectionsUp++;
            _server = server;
            _model = server.Model;
            _modelVersion = server.ModelVersion;
            _helloed = true;
            UpdateReadyLocked(now);
        }
    }

    /// <summary>A connection that had completed HELLO broke or closed. With none left the last report is forgotten,
    /// so the endpoint is ready again only after a fresh report says so.</summary>
    internal void OnConnectionDown(long now)
    {
        lock (_lock)
        {
            if (_connectionsUp > 0) _connectionsUp--;
            if (_connectionsUp == 0)
            {
                _exitedAfterDrain = _draining;
                _report = default;
                Volatile.Write(ref _reportAt, 0);
                Volatile.Write(ref _reportQueued, 0);
                Volatile.Write(ref _reportWaitMs, 0);
                _draining = false;
            }
            UpdateReadyLocked(now);
        }
    }

    /// <summary>An <c>ok</c> FINAL measured <paramref name="us"/> microseconds per output token.</summary>
    internal void OnTokenTime(double us)
    {
        if (!(us > 0) || !double.IsFinite(us)) return;
        // Two connections may race here; losing one sample of a running mean is harmless.
        double old = TokenTimeUs;
        Volatile.Write(ref _tokenTimeBits, BitConverter.DoubleToInt64Bits(old == 0 ? us : old + 0.2 * (us - old)));
    }

    /// <summary>A LOAD_REPORT arrived at <paramref name="now"/>.</summary>
    internal void OnLoadReport(in LoadReport report, long now)
    {
        lock (_lock)
        {
            _report = report;
            Volatile.Write(ref _reportQueued, report.Queued);
            Volatile.Write(ref _reportWaitMs, Math.Max(0, report.EstimatedWaitMs));
            Volatile.Write(ref _reportAt, now);
            _draining = report.State == ReplicaState.Draining;
            UpdateReadyLocked(now);
        }
    }

    private void UpdateReadyLocked(long now)
    {
        bool ready = _connectionsUp > 0 && Volatile.Read(ref _reportAt) != 0 && _report.State == ReplicaState.Ready;
        if (ready && !_ready)
        {
            // Slow start restarts at every transition to ready (first contact, or back after a failure).
            Volatile.Write(ref _readySince, now);
            RoundRobinCurrent = 0;
        }
        _ready = ready;
    }

    /// <summary>A request was sent to it.</summary>
    internal void AddInFlight()
    {
        Interlocked.Increment(ref _inFlight);
        Interlocked.Increment(ref _forwarded);
    }

    /// <summary>A request sent to it ended (FINAL, or its connection broke).</summary>
    internal void RemoveInFlight() => Interlocked.Decrement(ref _inFlight);

    internal void SetCongested(bool congested)
    {
        if (_congested != congested) _congested = congested;
    }

    internal void MarkRemoved(long now)
    {
        Volatile.Write(ref _removedAt, now);
        _removed = true;
    }

    /// <summary>The source gave it again before its connections were closed: back in the set as it was.</summary>
    internal void Revive()
    {
        _removed = false;
        Volatile.Write(ref _removedAt, 0);
    }

    /// <summary>The source gave it again with another weight.</summary>
    internal void Update(EndpointSpec spec)
    {
        Spec = spec;
        Weight = spec.Weight;
    }

    /// <summary>A success (a FINAL other than <c>internal</c>/<c>unavailable</c>): the error run ends.</summary>
    internal void RecordSuccess()
    {
        // Read first: the common case (no errors) writes nothing and takes no lock.
        if (Volatile.Read(ref _consecutiveErrors) == 0) return;
        lock (_lock) _consecutiveErrors = 0;
    }

    /// <summary>Counts an error; true when the run of consecutive errors has reached the ejection threshold (the
    /// caller, <see cref="Fleet"/>, decides whether the max-ejected cap lets it eject).</summary>
    internal bool CountError(long now)
    {
        lock (_lock)
        {
            if (IsEjected(now)) return false;
            _consecutiveErrors++;
            return _consecutiveErrors >= _ejectAfter;
        }
    }

    /// <summary>
    /// Ejects until now + period, where the period is the base doubled once per ejection level (capped). The level goes
    /// up by one per ejection and down by one for every cap-long stretch without one, so an endpoint that keeps
    /// failing backs off up to the cap and one that recovered starts again from the base.
    /// </summary>
    internal long Eject(long now)
    {
        lock (_lock)
        {
            long lastEnd = Volatile.Read(ref _ejectedUntil);
            if (lastEnd != 0 && now > lastEnd) _ejectionLevel = (int)Math.Max(0, _ejectionLevel - (now - lastEnd) / _maxEjectTicks);
            _ejectionLevel = Math.Min(_ejectionLevel + 1, 62);
            long period = _baseEjectTicks;
            for (int i = 1; i < _ejectionLevel && period < _maxEjectTicks; i++) period *= 2;
            period = Math.Min(period, _maxEjectTicks);
            Volatile.Write(ref _ejectedUntil, now + period);
            _consecutiveErrors = 0;
            _ejections++;
            return period;
        }
    }

    /// <inheritdoc/>
    public override string ToString() => Address;
}
