using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using FastServe.Protocol;
using FastServe.Protocol.Net;
using FastServe.Router.Canary;
using FastServe.Router.Shadow;

namespace FastServe.Router;

/// <summary>Counters of a router since it started.</summary>
/// <param name="Requests">REQUESTs accepted and forwarded (or answered by the router for want of an endpoint).</param>
/// <param name="Rejected">REQUESTs refused at once (malformed, over the connection's limit, router draining).</param>
/// <param name="Completed">Accepted requests whose FINAL has been sent (or dropped, the client having left).</param>
/// <param name="Retries">Sends after the first: refusals without output and lost connections.</param>
/// <param name="Replays">Of the retries, those of <c>whole</c> requests whose lost attempt had produced output (held
/// back, never passed on).</param>
/// <param name="UpstreamLost">Requests ended with <c>router.upstream_lost</c>.</param>
/// <param name="NoEndpoint">Requests ended with <c>router.no_endpoint</c>.</param>
/// <param name="InFlight">Accepted requests not yet completed.</param>
/// <param name="BudgetExhausted">Retries not made because the retry budget was spent (the refusal or loss was
/// passed to the client instead).</param>
/// <param name="UpstreamOverloaded">FINALs with status <c>overloaded</c> received from replicas (every attempt's).</param>
/// <param name="Saturation">Of the FINALs replicas sent within the last <see cref="RouterOptions.OverloadWindowMs"/>
/// (every attempt's, any status), the fraction that were <c>overloaded</c>; 0 when none came. In [0, 1].</param>
/// <param name="Resumes">Of the retries, those of requests that had streamed output: sent on to another replica to
/// continue from the output already delivered (REQUEST flag <c>resume</c>; docs/router.md, "Failover"), after their
/// replica was lost or refused them with a retriable status.</param>
/// <param name="ResumeFailures">Streamed requests whose replica was lost and that could not be resumed (they ended
/// <c>router.upstream_lost</c>, or <c>deadline_exceeded</c>); by reason in <see cref="RouterHost.ResumeFailuresBy"/>.</param>
public readonly record struct RouterStats(long Requests, long Rejected, long Completed, long Retries, long Replays, long UpstreamLost, long NoEndpoint, int InFlight,
    long BudgetExhausted, long UpstreamOverloaded, double Saturation, long Resumes = 0, long ResumeFailures = 0);

/// <summary>Why a streamed request whose replica was lost was not resumed elsewhere (metric label <c>reason</c>).</summary>
public enum ResumeFailure
{
    /// <summary>No eligible replica of protocol 1.3 or later in its pool could take it.</summary>
    NoEndpoint,
    /// <summary>Its deadline had passed.</summary>
    Deadline,
    /// <summary>It had been sent <see cref="RouterOptions.MaxAttempts"/> times already.</summary>
    Attempts,
    /// <summary>The resume frame (payload and delivered ids) is larger than the replica accepts.</summary>
    TooLarge,
    /// <summary>The router is stopping.</summary>
    Stopping,
}

/// <summary>
/// A fleet router (<c>fastserve route</c>, docs/router.md): a listener speaking the replica protocol to clients, a
/// <see cref="Fleet"/> of endpoints fed by an <see cref="IEndpointSource"/>, persistent multiplexed connections to
/// each endpoint, a <see cref="Balancer"/>, and the retry rules. Stateless: everything it knows comes from the source
/// and from the replicas' own reports.
/// </summary>
/// <remarks>
/// Use: construct, <see cref="StartAsync"/> (binds, reads the first endpoint set, connects), then
/// <see cref="BeginDrain"/> and await <see cref="Completion"/>, or <see cref="DisposeAsync"/> to stop at once.
/// </remarks>
public sealed class RouterHost : IAsyncDisposable
{
    private static readonly long TimerTick = Stopwatch.Frequency / 100;

    private readonly IEndpointSource _source;
    private readonly Balancer _balancer;
    private readonly CancellationTokenSource _cts = new();
    private readonly TaskCompletionSource _done = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly ConcurrentDictionary<long, DownstreamSession> _sessions = new();
    private readonly Lock _applyLock = new();
    private readonly List<Endpoint> _leaving = [];      // left the source, requests still running; under _applyLock
    // Those that left less than LeavingFallback ago: picked only when no endpoint of the set is eligible (a set swapped
    // whole must not leave a gap while the new endpoints connect). Rebuilt under _applyLock, read without it.
    private volatile Endpoint[] _fallback = [];
    private static readonly long LeavingFallback = 30 * Stopwatch.Frequency;
    private Socket? _listener;
    private Task _acceptTask = Task.CompletedTask, _sourceTask = Task.CompletedTask;
    private Thread? _timer;
    private volatile bool _draining, _stopped;
    private long _nextSession, _nextId;
    private readonly byte[]? _adminToken;
    private ConfigWatcher? _config;
    private long _escalations, _shedBatch;
    private long _requests, _rejected, _completed, _retries, _replays, _upstreamLost, _noEndpoint, _budgetExhausted, _upstreamOverloaded, _resumes;
    private readonly long[] _resumeFailures = new long[Enum.GetValues<ResumeFailure>().Length];
    private int _inFlight, _stopOnce;
    private readonly RetryBudget _budget;
    private readonly SaturationWindow _saturation;
    private readonly ServiceTime _serviceTime = new();
    private readonly RetryDelays _delays = new();
    private readonly long _jitterTicks;

    /// <summary>A router over the endpoints <paramref name="source"/> gives, with <paramref name="options"/>.</summary>
    /// <exception cref="ArgumentOutOfRangeException">An option is out of range.</exception>
    public RouterHost(RouterOptions options, IEndpointSource source)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(source);
        options.Validate();
        Options = options;
        SessionOptions = DownstreamSession.SessionOptionsOf(options);
        _source = source;
        Fleet = new Fleet(options);
        Routes = new ModelRoutes { DefaultModel = options.DefaultModel };
        Traffic = new TrafficControl(options.Canary, options.Burst, options.BurstPolicies, options.OnEvent, options.Log);
        Mirror = new ShadowMirror(options.ShadowMaxInFlight, options.ShadowLogPath is { } sl ? new ShadowLog(sl) : null);
        _adminToken = options.AdminToken is { Length: > 0 } t ? System.Text.Encoding.UTF8.GetBytes(t) : null;
        _balancer = new Balancer(options.Policy, options.Seed is { } s ? new Random(s) : new Random());
        long now = Stopwatch.GetTimestamp();
        _budget = new RetryBudget(options.RetryBudgetRatio, options.MinRetriesPerSecond, options.OverloadWindowMs, now);
        _saturation = new SaturationWindow(options.OverloadWindowMs, now);
        _jitterTicks = RouterOptions.Ticks(options.RetryJitterMs);
    }

    /// <summary>The settings it runs with.</summary>
    public RouterOptions Options { get; }

    /// <summary>What every client session runs with (built from <see cref="Options"/>).</summary>
    internal FrameSessionOptions SessionOptions { get; }

    /// <summary>The endpoints and their state.</summary>
    public Fleet Fleet { get; }

    /// <summary>Which models and versions the endpoints serve, and the per-pool counters.</summary>
    internal ModelRoutes Routes { get; }

    /// <summary>Splits, shadows, tiers, canary judgement and burst modes.</summary>
    internal TrafficControl Traffic { get; }

    /// <summary>Shadow traffic: mirrors in flight, comparisons, the shadow log.</summary>
    internal ShadowMirror Mirror { get; }

    /// <summary>Requests a tier sent on from its cheap pool to its strong pool.</summary>
    public long Escalations => Interlocked.Read(ref _escalations);

    /// <summary>Requests of the <c>batch</c> class refused because the burst mode sheds them.</summary>
    public long ShedBatch => Interlocked.Read(ref _shedBatch);

    /// <summary>The bound client port (after <see cref="StartAsync"/>).</summary>
    public int Port { get; private set; }

    /// <summary>Draining: new requests are refused with <c>draining</c>, running ones finish.</summary>
    public bool IsDraining => _draining;

    /// <summary>Completes when the router has stopped (drained, or disposed).</summary>
    public Task Completion => _done.Task;

    /// <summary>Counters so far.</summary>
    public RouterStats Stats => new(Interlocked.Read(ref _requests), Interlocked.Read(ref _rejected), Interlocked.Read(ref _completed),
        Interlocked.Read(ref _retries), Interlocked.Read(ref _replays), Interlocked.Read(ref _upstreamLost), Interlocked.Read(ref _noEndpoint),
        Volatile.Read(ref _inFlight), Interlocked.Read(ref _budgetExhausted), Interlocked.Read(ref _upstreamOverloaded), _saturation.Value,
        Interlocked.Read(ref _resumes), ResumeFailuresTotal());

    /// <summary>Streamed requests that could not be resumed after their replica was lost, for one reason.</summary>
    public long ResumeFailuresBy(ResumeFailure reason) => Interlocked.Read(ref _resumeFailures[(int)reason]);

    private long ResumeFailuresTotal()
    {
        long n = 0;
        for (int i = 0; i < _resumeFailures.Length; i++) n += Interlocked.Read(ref _resumeFailures[i]);
        return n;
    }

    /// <summary>The fleet's load as this router sees it now: the autoscaler's signal (docs/autoscale.md).</summary>
    public FleetLoad Load()
    {
        long now = Stopwatch.GetTimestamp();
        int ready = 0;
        double concurrency = 0;
        foreach (var e in Fleet.Endpoints)
        {
            if (!e.IsEligible(now)) continue;
            ready++;
            concurrency += e.LastReport.Report.InFlight;
        }
        return new FleetLoad(ready, concurrency, _saturation.OverloadedPerSecond, _serviceTime.Seconds);
    }

    /// <summary>Whether a request sent now can be routed: not draining and at least one eligible endpoint (the HTTP
    /// front door's <c>GET /ready</c>).</summary>
    public bool CanServe()
    {
        if (_draining || _stopped) return false;
        long now = Stopwatch.GetTimestamp();
        foreach (var e in Fleet.Endpoints) if (e.IsEligible(now)) return true;
        return false;
    }

    /// <summary>The model names the fleet's endpoints declare (the HTTP front door's <c>GET /v1/models</c>).</summary>
    public IReadOnlyList<string> ServedModels() => Routes.Pools.Select(p => p.Model).Where(m => m.Length > 0).Distinct().ToArray();

    /// <summary>Retries the retry budget allows now (see <see cref="RouterOptions.RetryBudgetRatio"/>).</summary>
    internal long RetryBudgetAvailable => _budget.Available;

    /// <summary>Retries waiting out their jitter delay now.</summary>
    internal int DelayedRetries => _delays.Count;

    /// <summary>The jitter draw, uniform in [0, 1); tests pin it. Called on receive loops, so it must be thread-safe.</summary>
    internal Func<double> JitterUnit { get; set; } = Random.Shared.NextDouble;

    /// <summary>
    /// Called once per request answered <c>ok</c> by a replica, with the seconds the router added: from reading the
    /// client's REQUEST to writing the FINAL, less the replica's own time for the attempt that answered (its FINAL's
    /// <c>final_sent</c> slot). Failed attempts before it count as added. May be set at any time; it runs on a
    /// receive loop, so it must be quick (a histogram's observe).
    /// </summary>
    internal Action<double>? AddedLatency { get; set; }

    internal void Log(string message) => Options.Log?.Invoke(message);

    /// <summary>
    /// Binds the listener, takes the source's first endpoint set and starts connecting to it, then accepts clients.
    /// Returns once listening (endpoints become ready on their own; LOAD_QUERY says when one is).
    /// </summary>
    /// <exception cref="SocketException">The address cannot be bound.</exception>
    /// <exception cref="EndpointSourceException">The source gives no endpoint set.</exception>
    public async Task StartAsync()
    {
        var enumerator = _source.WatchAsync(_cts.Token).GetAsyncEnumerator(_cts.Token);
        if (!await enumerator.MoveNextAsync().ConfigureAwait(false))
        {
            await enumerator.DisposeAsync().ConfigureAwait(false);
            throw new EndpointSourceException("route.no_endpoints", $"the endpoint source {_source.Description} gave no endpoints");
        }
        var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            listener.Bind(new IPEndPoint(IPAddress.Parse(Options.Host), Options.Port));
            listener.Listen(1024);
        }
        catch
        {
            listener.Dispose();
            await enumerator.DisposeAsync().ConfigureAwait(false);
            throw;
        }
        _listener = listener;
        Port = ((IPEndPoint)listener.LocalEndPoint!).Port;
        if (Options.ConfigPath is { } cfg) _config = new ConfigWatcher(cfg, Traffic);
        Apply(enumerator.Current);
        _sourceTask = WatchSourceAsync(enumerator);
        _timer = new Thread(TimerLoop) { IsBackground = true, Name = "fastserve-route-timer" };
        _timer.Start();
        _acceptTask = AcceptLoopAsync(listener);
    }

    private async Task WatchSourceAsync(IAsyncEnumerator<IReadOnlyList<EndpointSpec>> e)
    {
        try
        {
            while (await e.MoveNextAsync().ConfigureAwait(false)) Apply(e.Current);
        }
        catch (OperationCanceledException) { }
        catch (Exception ex)
        {
            Log($"endpoint source {_source.Description} failed: {ex.GetType().Name}: {ex.Message}; keeping the current endpoints");
        }
        finally
        {
            await e.DisposeAsync().ConfigureAwait(false);
        }
    }

    // A new full endpoint set: endpoints keep their state across sets (matched by address); new ones connect;
    // those that left take no new requests and close once their requests are done.
    private void Apply(IReadOnlyList<EndpointSpec> specs)
    {
        lock (_applyLock)
        {
            if (_stopped) return;
            var current = Fleet.Endpoints;
            var next = new Endpoint[specs.Count];
            int added = 0, removed = 0;
            for (int i = 0; i < specs.Count; i++)
            {
                var spec = specs[i];
                var e = Array.Find(current, x => string.Equals(x.Address, spec.Address, StringComparison.OrdinalIgnoreCase));
                if (e is null && _leaving.FindIndex(x => string.Equals(x.Address, spec.Address, StringComparison.OrdinalIgnoreCase)) is var back and >= 0)
                {
                    // Back before its connections closed: keep them (and its state) rather than connect afresh.
                    e = _leaving[back];
                    _leaving.RemoveAt(back);
                    e.Revive();
                    e.Update(spec);
                    added++;
                }
                else if (e is null)
                {
                    e = new Endpoint(spec, Options);
                    var conns = new UpstreamConnection[Options.ConnectionsPerEndpoint];
                    for (int k = 0; k < conns.Length; k++) conns[k] = new UpstreamConnection(this, e, k);
                    e.Connections = conns;
                    foreach (var c in conns) c.Start();
                    added++;
                }
                else e.Update(spec);
                next[i] = e;
            }
            long now = Stopwatch.GetTimestamp();
            foreach (var e in current)
            {
                if (Array.IndexOf(next, e) >= 0) continue;
                e.MarkRemoved(now);
                _leaving.Add(e);
                removed++;
            }
            Fleet.Set(next);
            _fallback = [.. _leaving];
            if (added + removed > 0)
                Log($"endpoints: {next.Length} ({string.Join(", ", next.Select(x => x.Address))}){(current.Length > 0 ? $"; {added} added, {removed} leaving" : "")}");
        }
    }

    private async Task AcceptLoopAsync(Socket listener)
    {
        while (true)
        {
            Socket s;
            try
            {
                s = await listener.AcceptAsync().ConfigureAwait(false);
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException)
            {
                if (_draining || _stopped) return;
                // A transient accept failure (out of descriptors): wait a moment rather than spin.
                Log($"accept failed: {e.Message}");
                await Task.Delay(50).ConfigureAwait(false);
                continue;
            }
            if (_draining || _stopped) { s.Dispose(); continue; }
            s.NoDelay = true;
            if (Options.Tls is { } tls) _ = AcceptTlsAsync(s, tls);
            else StartSession(s, null, trusted: false);
        }
    }

    // The TLS handshake runs off the accept loop, within the HELLO timeout; a failed one closes the socket.
    private async Task AcceptTlsAsync(Socket s, Protocol.Security.CertificateSource tls)
    {
        var ssl = await tls.AcceptAsync(s, TimeSpan.FromMilliseconds(Options.HelloTimeoutMs)).ConfigureAwait(false);
        if (ssl is null || _draining || _stopped) { ssl?.Dispose(); s.Dispose(); return; }
        StartSession(s, ssl, trusted: false);
    }

    /// <summary>
    /// Starts a client session on an in-process connection (the server end of a socket pair from the HTTP front door,
    /// docs/http.md), as if accepted from the listener: the same request rules, routing and overload control; its HELLO
    /// skips the API key check (the front door authenticated its caller) and it has no TLS. False (the socket disposed)
    /// when the router is draining or stopped.
    /// </summary>
    public bool AcceptLocal(Socket s)
    {
        if (_draining || _stopped) { s.Dispose(); return false; }
        StartSession(s, null, trusted: true);
        return true;
    }

    private void StartSession(Socket s, Stream? stream, bool trusted)
    {
        var session = new DownstreamSession(this, s, Interlocked.Increment(ref _nextSession), stream, trusted);
        _sessions[session.Id] = session;
        session.Start();
    }

    internal void OnSessionClosed(DownstreamSession s) => _sessions.TryRemove(s.Id, out _);

    internal void CountRejected() => Interlocked.Increment(ref _rejected);

    /// <summary>The fleet's aggregate load report (see <see cref="Fleet.Aggregate"/>).</summary>
    internal LoadReport CurrentLoad(long now) => Fleet.Aggregate(now, _draining);

    // ---------------------------------------------------------------- requests

    private enum SendResult : byte { Sent, NoEndpoint, TooLarge, Cancelled }

    /// <summary>Where a request goes and what the router changes in it, or why it is refused at once.</summary>
    internal readonly record struct RouteDecision(PoolKey Pool, RequestShaping Shaping, TierRule? Tier, ShadowRule? Shadow,
        WireStatus RejectStatus = WireStatus.Ok, string RejectCode = "", string RejectMessage = "", uint RetryAfterMs = 0, bool DrawnVersion = false)
    {
        public bool Rejected => RejectStatus != WireStatus.Ok;

        public static RouteDecision Reject(WireStatus s, string code, string message, uint retryAfterMs = 0) =>
            new(default, default, null, null, s, code, message, retryAfterMs);
    }

    /// <summary>
    /// Decides a request's route (docs/router.md, "Models, versions and traffic"): the burst mode's shedding of the
    /// batch class; a tier name becomes its cheap pool; the named (or default) model and version resolve to a pool
    /// (<c>not_found</c> when nothing serves them); a split model without a named version draws one (by the routing
    /// key when the split is sticky); the mode's caps and deadline rules, and whether this request is mirrored.
    /// </summary>
    internal RouteDecision Decide(in RequestView v)
    {
        var table = Traffic.Table;
        var policy = Traffic.Policy;
        if (policy.ShedBatch && v.Priority == 1)
        {
            Interlocked.Increment(ref _shedBatch);
            return RouteDecision.Reject(WireStatus.Overloaded, "router.shed_batch",
                $"the fleet is in {Burst.BurstModeNames.Of(Traffic.Burst.Mode)} mode and sheds the batch class", 1000);
        }
        string? model = v.Model.IsEmpty ? null : Utf8Text.Decode(v.Model);
        string? version = v.ModelVersion.IsEmpty ? null : Utf8Text.Decode(v.ModelVersion);
        TierRule? tier = null;
        if (model is not null && version is null && table.Tiers.TryGetValue(model, out var t))
        {
            // With escalation off (a burst mode), the tier still answers, from its cheap pool alone.
            tier = policy.EscalationOn ? t : null;
            model = t.CheapModel;
            version = t.CheapVersion;
        }
        switch (Routes.Resolve(model, version, out var pool))
        {
            case RouteOutcome.NotFound:
                return version is null
                    ? RouteDecision.Reject(WireStatus.NotFound, "router.model_not_found", $"no replica serves model '{pool.Model}'")
                    : RouteDecision.Reject(WireStatus.NotFound, "router.version_not_found", $"no replica serves version '{version}' of model '{pool.Model}'");
            case RouteOutcome.NotYet:
                return RouteDecision.Reject(WireStatus.Unavailable, "router.no_endpoint",
                    $"no replica serving '{pool.Model}' is known yet; some have not answered", (uint)Options.NoEndpointRetryAfterMs);
        }
        bool drawnVersion = false;
        if (pool is { Model: { } m, Version: null } && table.Splits.TryGetValue(m, out var split))
        {
            string drawn = split.Sticky && !v.RouteKey.IsEmpty ? split.Pick(TrafficSplit.HashKey(v.RouteKey)) : split.Pick(JitterUnit());
            // A split naming a version no replica serves (yet) leaves the request to the whole model.
            if (Routes.Knows(m, drawn)) { pool = pool with { Version = drawn }; drawnVersion = true; }
        }
        ShadowRule? shadow = null;
        if (tier is null && pool.Model is { } pm && table.Shadows.TryGetValue(pm, out var sr)
            && sr.Version != pool.Version && JitterUnit() * 100 < sr.Percent)
        {
            if (policy.ShadowOn) shadow = sr;
            else Mirror.Drop(ShadowDrop.BurstMode);
        }
        var shaping = new RequestShaping(policy, Logprobs: tier is not null || shadow is not null);
        return new RouteDecision(pool, shaping, tier, shadow, DrawnVersion: drawnVersion);
    }

    /// <summary>A new request from a session (already registered there): forward it, or answer it at once.</summary>
    internal void Admit(RoutedRequest req, long now, HashSet<UpstreamConnection> touched, ShadowRule? shadow = null)
    {
        Interlocked.Increment(ref _requests);
        Interlocked.Increment(ref _inFlight);
        _budget.Deposit();
        // The mirror is made before the request leaves: once it has, its replica may answer (and the router release
        // it) before this thread looks at it again.
        var mirror = shadow is null ? null : PrepareMirror(req, shadow, now);
        switch (Forward(req, now, touched))
        {
            case SendResult.Sent:
                if (mirror is not null) SendMirror(req, mirror, now, touched);
                return;
            case SendResult.TooLarge: DropMirror(req, mirror, ShadowDrop.Failed); FinishTooLarge(req); return;
            case SendResult.Cancelled:
                DropMirror(req, mirror, ShadowDrop.Failed);
                FinishWith(req, WireStatus.Cancelled, false, 0, "request.cancelled", "cancelled before it reached a replica");
                return;
            default: DropMirror(req, mirror, ShadowDrop.Failed); FinishNoEndpoint(req); return;
        }
    }

    // A mirror of a request about to be forwarded, for its model's shadow version, with a slot reserved; null (and
    // counted) when too many mirrors are out.
    private RoutedRequest? PrepareMirror(RoutedRequest primary, ShadowRule rule, long now)
    {
        if (primary.Pool.Model is not { } model || !Mirror.TryReserve()) return null;
        var pair = new ShadowPair(model, rule.Version, ShadowMirror.PromptOf(primary.Payload), primary.Received);
        primary.Pair = pair;
        return RoutedRequest.MirrorOf(primary, new PoolKey(model, rule.Version), pair, now);
    }

    // Sends a mirror, fire and forget: never waited for, never retried; dropped (and counted) when the shadow pool
    // has no replica that can take it without queueing.
    private void SendMirror(RoutedRequest primary, RoutedRequest mirror, long now, HashSet<UpstreamConnection> touched)
    {
        var pool = mirror.Pool;
        var e = _balancer.Pick(Fleet.Endpoints, now, model: pool.Model, version: pool.Version);
        if (e is null || e.LastReport.Report.Queued > 0 || ChooseConnection(e) is not { } conn || mirror.Length > conn.MaxFrame)
        {
            DropMirror(primary, mirror, ShadowDrop.Saturated);
            return;
        }
        ulong rid = (ulong)Interlocked.Increment(ref _nextId);
        lock (mirror.Lock)
        {
            mirror.Upstream = conn;
            mirror.RouterId = rid;
            mirror.Attempts = 1;
        }
        if (!conn.TrySend(mirror, rid, touched)) DropMirror(primary, mirror, ShadowDrop.Saturated);
    }

    private void DropMirror(RoutedRequest primary, RoutedRequest? mirror, ShadowDrop why)
    {
        if (mirror is null) return;
        primary.Pair = null;    // the primary may be finishing meanwhile: then its pair is simply never completed
        mirror.Release();
        Mirror.Release();
        Mirror.Drop(why);
    }

    // A mirror's FINAL: its side of the pair; the comparison when the primary has ended too.
    private void OnShadowFinal(RoutedRequest mirror, WireStatus status, in FinalInfo f, string version, long now)
    {
        if (mirror.Pair is { } pair && pair.Finish(true, status, f, version, now)) Mirror.Complete(pair);
        mirror.Release();
        Mirror.Release();
    }

    // Picks an endpoint and sends the request there (a retry avoids endpoints it already tried while others exist).
    private SendResult Forward(RoutedRequest req, long now, HashSet<UpstreamConnection>? touched)
    {
        var endpoints = Fleet.Endpoints;
        for (int round = 0; round <= endpoints.Length; round++)
        {
            Endpoint? e;
            lock (req.Lock)
            {
                if (req.Cancelled) return SendResult.Cancelled;
                var tried = req.Tried.AsSpan(0, req.TriedCount);
                var pool = req.Pool;
                // A request that has streamed can only be resumed, which replicas of protocol 1.3 on understand; one
                // that asks for per-token log-probabilities needs 1.4.
                ushort minMinor = req.TokenLogprobs ? TokenLogprobsMinor : req.Streamed ? ResumeMinor : (ushort)0;
                e = _balancer.Pick(endpoints, now, tried, model: pool.Model, version: pool.Version, minMinor: minMinor);
                // A version the split drew (not one the client named) whose replicas cannot take it now (ejected,
                // draining, down): the model's other versions can.
                if (e is null && req.DrawnVersion) e = _balancer.Pick(endpoints, now, tried, model: pool.Model, minMinor: minMinor);
                if (e is null && _fallback is { Length: > 0 } fallback)
                    e = _balancer.Pick(fallback, now, tried, leaving: true, model: pool.Model, version: pool.Version, minMinor: minMinor);
            }
            if (e is null) return SendResult.NoEndpoint;
            var conn = ChooseConnection(e);
            if (conn is null)
            {
                // Every connection to it is backed up or full: out of the draw until the timer sees room again.
                e.SetCongested(true);
                continue;
            }
            if (req.SendLength > conn.MaxFrame) return SendResult.TooLarge;
            ulong rid = (ulong)Interlocked.Increment(ref _nextId);
            lock (req.Lock)
            {
                if (req.Cancelled) return SendResult.Cancelled;
                if (req.Attempts > 0)
                {
                    req.RewriteDeadline(now);
                    req.DropHeld();
                }
                req.Upstream = conn;
                req.RouterId = rid;
                req.Attempts++;
                req.AddTried(e);
            }
            if (conn.TrySend(req, rid, touched))
            {
                bool cancelled;
                lock (req.Lock) cancelled = req.Cancelled;
                // A CANCEL that raced this send may have gone to the previous replica: repeat it here.
                if (cancelled) conn.SendCancel(rid);
                return SendResult.Sent;
            }
            lock (req.Lock)
            {
                req.Attempts--;
                req.Upstream = null;
            }
        }
        return SendResult.NoEndpoint;
    }

    // The connection of the endpoint with the fewest requests among those that can take one.
    private static UpstreamConnection? ChooseConnection(Endpoint e)
    {
        UpstreamConnection? best = null;
        foreach (var c in e.Connections)
            if (c.IsUsable() && (best is null || c.InFlight < best.InFlight)) best = c;
        return best;
    }

    private bool CanRetry(RoutedRequest req, long now)
    {
        // A request that has streamed is retried as a resume (Forward sends what was delivered with it).
        if (req.Session.IsClosed || _stopped) return false;
        if (req.DeadlineAt != 0 && now >= req.DeadlineAt) return false;
        lock (req.Lock) return !req.Cancelled && req.Attempts < Options.MaxAttempts;
    }

    /// <summary>A FINAL from a replica for <paramref name="req"/> (already out of the connection's map).</summary>
    internal void OnFinal(UpstreamConnection conn, RoutedRequest req, byte flags, ReadOnlySpan<byte> payload, long now, HashSet<DownstreamSession> touched)
    {
        var status = FinalInfo.TryParse(payload, out var f, out _, out _) ? f.Status : WireStatus.Internal;
        if (status is WireStatus.Internal or WireStatus.Unavailable) Fleet.RecordError(conn.Endpoint, now);
        else Fleet.RecordSuccess(conn.Endpoint);
        _saturation.Record(status == WireStatus.Overloaded);
        if (status == WireStatus.Overloaded) Interlocked.Increment(ref _upstreamOverloaded);
        var ep = conn.Endpoint;
        Routes.Counters(ep.Model, ep.ModelVersion).Record(status, f);
        if (req.IsShadow)
        {
            OnShadowFinal(req, status, f, ep.ModelVersion, now);
            return;
        }
        if (status == WireStatus.Ok) _serviceTime.Observe(f.Timings[(int)Timing.FinalSent] / 1e6);
        if (status == WireStatus.Ok && f.CompletionTokens >= 2)
        {
            uint first = f.Timings[(int)Timing.FirstToken], end = f.Timings[(int)Timing.EngineFinished];
            if (first > 0 && end > first) conn.Endpoint.OnTokenTime((end - first) / (double)(f.CompletionTokens - 1));
        }
        // Refused without output passed on (overloaded, draining, unavailable, too many on that connection): try
        // elsewhere, if the budget allows; a refusal for want of capacity after a jitter delay.
        if (WireNames.IsRetriable(status) && CanRetry(req, now))
        {
            if (!_budget.TryWithdraw()) Interlocked.Increment(ref _budgetExhausted);
            else
            {
                long delay = JitterDelay(req, status, f.RetryAfterMs, now);
                if (delay > 0 && WaitThenRetry(req, flags, payload, now + delay)) return;
                // Not queued (no delay, or the router is stopping and the queue closed).
                if (!_stopped)
                {
                    CountRetry(req);
                    if (Forward(req, now, null) == SendResult.Sent) return;
                }
            }
            // Nowhere else to go, or no budget: the replica's own answer (retriable, with its retry-after) is the best one.
        }
        // A tier's cheap answer with a token below the threshold goes on to the strong pool, while one can take it;
        // its output was held, so the client sees only the strong answer.
        if (status == WireStatus.Ok && req.Tier is { } tier && !req.Escalated && !req.Streamed && Traffic.Policy.EscalationOn
            && f.HasLogprobs && f.LogprobMin < tier.Threshold && StrongCanServe(tier, now))
        {
            req.Escalated = true;
            req.DrawnVersion = false;
            req.PriorDeviceUs += f.Timings[(int)Timing.Device];
            req.Pool = new PoolKey(tier.StrongModel, tier.StrongVersion);
            Interlocked.Increment(ref _escalations);
            if (Forward(req, now, null) == SendResult.Sent) return;
            FinishNoEndpoint(req);
            return;
        }
        if (status != WireStatus.Cancelled && ep.Model.Length > 0)
            Traffic.RecordOutcome(ep.Model, ep.ModelVersion, PoolCounters.IsModelError(status), (now - req.Received) / (double)Stopwatch.Frequency, now);
        if (req.Pair is { } pair && pair.Finish(false, status, f, ep.ModelVersion, now)) Mirror.Complete(pair);
        if (!TryFinish(req, out var s)) return;
        if (s is not null)
        {
            lock (s.Out.Lock)
            {
                req.PassHeld(s.Out.Writer);
                if (req.PriorDeviceUs == 0) FrameCopy.Write(s.Out.Writer, FrameType.Final, flags, req.ClientId, payload);
                else WriteFinalWithDevice(s.Out.Writer, flags, req.ClientId, payload, req.PriorDeviceUs);
            }
            touched.Add(s);
        }
        if (status == WireStatus.Ok && AddedLatency is { } observe)
        {
            long added = Stopwatch.GetTimestamp() - req.Received - f.Timings[(int)Timing.FinalSent] * Stopwatch.Frequency / 1_000_000;
            observe(Math.Max(added, 0) / (double)Stopwatch.Frequency);
        }
        Completed(req);
    }

    // Whether a tier's strong pool has an endpoint that can take a request now.
    private bool StrongCanServe(TierRule tier, long now)
    {
        foreach (var e in Fleet.Endpoints)
            if (e.Serves(tier.StrongModel, tier.StrongVersion) && e.IsEligible(now)) return true;
        return false;
    }

    // The FINAL of an escalated request: the strong attempt's, with the cheap attempt's device time added to its
    // device slot, so the client (and the bench's cost figures) see what the whole answer cost.
    private static void WriteFinalWithDevice(System.Buffers.IBufferWriter<byte> w, byte flags, ulong id, ReadOnlySpan<byte> payload, uint priorUs)
    {
        var copy = System.Buffers.ArrayPool<byte>.Shared.Rent(payload.Length);
        try
        {
            payload.CopyTo(copy);
            int at = 24 + 4 * (int)Timing.Device;
            if (payload.Length >= at + 4)
            {
                uint d = System.Buffers.Binary.BinaryPrimitives.ReadUInt32LittleEndian(copy.AsSpan(at));
                System.Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(copy.AsSpan(at), (uint)Math.Min(uint.MaxValue, (ulong)d + priorUs));
            }
            FrameCopy.Write(w, FrameType.Final, flags, id, copy.AsSpan(0, payload.Length));
        }
        finally { System.Buffers.ArrayPool<byte>.Shared.Return(copy); }
    }

    private void CountRetry(RoutedRequest req)
    {
        Interlocked.Increment(ref _retries);
        if (req.HeldBytes > 0) Interlocked.Increment(ref _replays);
        if (req.Streamed) Interlocked.Increment(ref _resumes);
    }

    /// <summary>
    /// The jitter before retrying a refusal (Stopwatch ticks): full jitter, uniform in [0, min(RetryJitterMs, the
    /// replica's retry_after)] for <c>overloaded</c> and <c>too_many_requests</c>, so requests refused together do not
    /// come back together; at most half the time left to the deadline. 0 for other refusals (<c>draining</c>,
    /// <c>unavailable</c> say nothing of the other replicas' load) and when jitter is off.
    /// </summary>
    private long JitterDelay(RoutedRequest req, WireStatus status, uint retryAfterMs, long now) =>
        status is WireStatus.Overloaded or WireStatus.TooManyRequests
            ? JitterTicks(_jitterTicks, retryAfterMs, now, req.DeadlineAt, JitterUnit())
            : 0;

    /// <summary>The rule of <see cref="JitterDelay"/> for a draw <paramref name="unit"/> in [0, 1).</summary>
    internal static long JitterTicks(long capTicks, uint retryAfterMs, long now, long deadlineAt, double unit)
    {
        if (capTicks <= 0) return 0;
        long bound = retryAfterMs == 0 ? capTicks : Math.Min(capTicks, (long)retryAfterMs * Stopwatch.Frequency / 1000);
        long d = (long)(Math.Clamp(unit, 0, 1) * bound);
        return deadlineAt == 0 ? d : Math.Min(d, Math.Max(0, deadlineAt - now) / 2);
    }

    // Puts a refused request in the delay queue (which owns it from now on) with a copy of the refusal; false when
    // the router is stopping (the queue is closed; the caller still owns it).
    private bool WaitThenRetry(RoutedRequest req, byte flags, ReadOnlySpan<byte> payload, long due)
    {
        req.KeepRefusal(flags, payload);
        // The old attempt is over: a CANCEL meanwhile has nothing to reach; the timer sees the mark and finishes it.
        lock (req.Lock) req.Upstream = null;
        return _delays.TryAdd(req, due);
    }

    // The timer thread: a request's jitter delay is over.
    private void RetryAfterDelay(RoutedRequest req, long now)
    {
        bool cancelled;
        lock (req.Lock) cancelled = req.Cancelled;
        if (cancelled || req.Session.IsClosed)
        {
            FinishWith(req, WireStatus.Cancelled, false, 0, "request.cancelled", "cancelled while waiting to be retried");
            return;
        }
        // A late wake-up (or a stop) must not send it past its deadline: the replica's refusal is the answer then.
        if (_stopped || (req.DeadlineAt != 0 && now >= req.DeadlineAt))
        {
            FinishWithRefusal(req);
            return;
        }
        CountRetry(req);
        switch (Forward(req, now, null))
        {
            case SendResult.Sent: return;
            case SendResult.TooLarge: FinishTooLarge(req); return;
            case SendResult.Cancelled: FinishWith(req, WireStatus.Cancelled, false, 0, "request.cancelled", "cancelled while being retried"); return;
            default: FinishWithRefusal(req); return;
        }
    }

    // The replica's refusal kept while the retry waited, as the client's FINAL.
    private void FinishWithRefusal(RoutedRequest req)
    {
        if (!TryFinish(req, out var s)) return;
        if (s is not null)
        {
            lock (s.Out.Lock)
            {
                req.PassHeld(s.Out.Writer);
                req.PassRefusal(s.Out.Writer);
            }
            s.Out.Flush();
        }
        Completed(req);
    }

    /// <summary>A connection broke with these requests on it (already out of its map).</summary>
    internal void OnUpstreamLost(UpstreamConnection conn, RoutedRequest[] left, long now)
    {
        foreach (var req in left)
        {
            if (req.IsShadow)
            {
                // A mirror is never retried: its comparison is lost.
                req.Release();
                Mirror.Release();
                Mirror.Drop(ShadowDrop.Failed);
                continue;
            }
            bool cancelled;
            lock (req.Lock) cancelled = req.Cancelled;
            if (cancelled || req.Session.IsClosed)
            {
                FinishWith(req, WireStatus.Cancelled, false, 0, "request.cancelled", "cancelled; the replica's connection broke before it confirmed");
                continue;
            }
            if (req.Streamed)
            {
                Resume(conn, req, now);
                continue;
            }
            // A mass disconnect draws on the budget too: it must not double the load on the replicas left.
            bool spent = false;
            if (CanRetry(req, now))
            {
                if (_budget.TryWithdraw())
                {
                    CountRetry(req);
                    switch (Forward(req, now, null))
                    {
                        case SendResult.Sent: continue;
                        case SendResult.TooLarge: FinishTooLarge(req); continue;
                        case SendResult.Cancelled: FinishWith(req, WireStatus.Cancelled, false, 0, "request.cancelled", "cancelled while being retried"); continue;
                        default: FinishNoEndpoint(req); continue;
                    }
                }
                spent = true;
            }
            if (req.DeadlineAt != 0 && now >= req.DeadlineAt)
            {
                FinishWith(req, WireStatus.DeadlineExceeded, false, 0, "request.deadline_exceeded", "the deadline passed before a replica could finish it");
                continue;
            }
            Interlocked.Increment(ref _upstreamLost);
            if (spent) Interlocked.Increment(ref _budgetExhausted);
            int attempts;
            lock (req.Lock) attempts = req.Attempts;
            FinishWith(req, WireStatus.Unavailable, true, 0, "router.upstream_lost",
                $"the connection to replica {conn.Endpoint.Address} broke before any output was passed on, after {attempts} attempt(s){(spent ? "; the retry budget is spent" : "")}");
        }
    }

    /// <summary>Protocol minor from which replicas take REQUEST flag <c>resume</c>.</summary>
    internal const ushort ResumeMinor = 3;
    internal const ushort TokenLogprobsMinor = 4;

    /// <summary>
    /// A streamed request whose replica was lost: sent on to another replica (protocol 1.3 or later, in its pool) with
    /// the ids and text bytes already delivered, so it continues where the client's stream stopped and the client sees
    /// one stream and one FINAL. A resume adds no work the lost replica had not been doing, so it does not draw on the
    /// retry budget; the request's attempt limit and deadline still bound it. Otherwise it ends
    /// <c>router.upstream_lost</c> (or <c>deadline_exceeded</c> past its deadline).
    /// </summary>
    private void Resume(UpstreamConnection conn, RoutedRequest req, long now)
    {
        ResumeFailure why;
        if (_stopped) why = ResumeFailure.Stopping;
        else if (req.DeadlineAt != 0 && now >= req.DeadlineAt) why = ResumeFailure.Deadline;
        else
        {
            int attempts;
            lock (req.Lock) attempts = req.Attempts;
            if (attempts >= Options.MaxAttempts) why = ResumeFailure.Attempts;
            else
            {
                switch (Forward(req, now, null))
                {
                    case SendResult.Sent:
                        CountRetry(req);
                        return;
                    case SendResult.Cancelled:
                        FinishWith(req, WireStatus.Cancelled, false, 0, "request.cancelled", "cancelled while being resumed");
                        return;
                    case SendResult.TooLarge: why = ResumeFailure.TooLarge; break;
                    default: why = ResumeFailure.NoEndpoint; break;
                }
            }
        }
        Interlocked.Increment(ref _resumeFailures[(int)why]);
        if (why == ResumeFailure.Deadline)
        {
            FinishWith(req, WireStatus.DeadlineExceeded, false, 0, "request.deadline_exceeded", "the deadline passed before a replica could finish it");
            return;
        }
        Interlocked.Increment(ref _upstreamLost);
        string reason = why switch
        {
            ResumeFailure.Attempts => $"it was sent {Options.MaxAttempts} times already",
            ResumeFailure.TooLarge => "the resumed request is larger than the replicas accept",
            ResumeFailure.Stopping => "the router is stopping",
            _ => "no replica of protocol 1.3 or later can take it",
        };
        FinishWith(req, WireStatus.Unavailable, true, 0, "router.upstream_lost",
            $"the connection to replica {conn.Endpoint.Address} broke after the request had streamed output, and it cannot be resumed: {reason}");
    }

    /// <summary>Marks the client's request cancelled and forwards CANCEL to the replica running it.</summary>
    internal static void CancelUpstream(RoutedRequest req)
    {
        UpstreamConnection? conn;
        ulong rid;
        lock (req.Lock)
        {
            if (req.Done) return;
            req.Cancelled = true;
            conn = req.Upstream;
            rid = req.RouterId;
        }
        conn?.SendCancel(rid);
    }

    private void FinishNoEndpoint(RoutedRequest req)
    {
        Interlocked.Increment(ref _noEndpoint);
        FinishWith(req, WireStatus.Unavailable, true, (uint)Options.NoEndpointRetryAfterMs, "router.no_endpoint", "no replica is ready to take the request");
    }

    private void FinishTooLarge(RoutedRequest req) =>
        FinishWith(req, WireStatus.TooLarge, false, 0, "router.frame_too_large", "the request is larger than the replicas accept");

    // A FINAL made by the router (cold paths: refusals and losses); sent at once.
    private void FinishWith(RoutedRequest req, WireStatus status, bool retriable, uint retryAfterMs, string detail, string message)
    {
        if (!TryFinish(req, out var s)) return;
        if (s is not null)
        {
            var f = new FinalInfo { Status = status, Retriable = retriable, RetryAfterMs = retryAfterMs };
            lock (s.Out.Lock) FrameWriter.Final(s.Out.Writer, req.ClientId, f, detail, message);
            s.Out.Flush();
        }
        Completed(req);
    }

    // The one way a request ends: marked done (false if something else already ended it) and its client id freed;
    // `open` is the client's session to write the FINAL to, null when that connection is closed.
    private static bool TryFinish(RoutedRequest req, out DownstreamSession? open)
    {
        open = null;
        if (!MarkDone(req)) return false;
        var s = req.Session;
        s.Finished(req.ClientId);
        if (!s.IsClosed) open = s;
        return true;
    }

    private static bool MarkDone(RoutedRequest req)
    {
        lock (req.Lock)
        {
            if (req.Done) return false;
            req.Done = true;
            req.Upstream = null;
            return true;
        }
    }

    private void Completed(RoutedRequest req)
    {
        req.Release();
        Interlocked.Increment(ref _completed);
        Interlocked.Decrement(ref _inFlight);
    }

    // ---------------------------------------------------------------- timer, drain, stop

    // Every 10 ms: session timeouts, congestion, liveness, the overload windows; in between, wakes for delayed retries
    // as they fall due.
    private void TimerLoop()
    {
        long tick = 0, next = Stopwatch.GetTimestamp() + TimerTick;
        while (!_stopped)
        {
            long now = Stopwatch.GetTimestamp();
            long wake = Math.Min(next, _delays.NextDue);
            if (wake > now) _delays.Wait(wake - now);
            now = Stopwatch.GetTimestamp();
            while (!_stopped && _delays.TakeDue(now) is { } due) RetryAfterDelay(due, now);
            if (now < next) continue;
            next = now + TimerTick;
            _budget.Advance(now);
            _saturation.Advance(now);
            foreach (var kv in _sessions) kv.Value.OnTimer(now, tick % 25 == 0);
            Routes.Refresh(Fleet.Endpoints);
            ObserveBurstLoad(now);
            if (tick % 100 == 0) Traffic.EvaluateCanaries(now);
            if (tick % 100 == 50) Mirror.Tick(now);
            foreach (var e in Fleet.Endpoints)
            {
                // Congestion clears once any connection has room again.
                if (e.IsCongested && ChooseConnection(e) is not null) e.SetCongested(false);
                if (tick % 10 == 0) foreach (var c in e.Connections) c.CheckAlive(now);
            }
            if (tick % 10 == 0) ReapLeaving();
            tick++;
        }
    }

    // The burst controller's input: the mean estimated wait of the eligible endpoints and the fleet's utilisation
    // (running plus queued over the batch capacity), from their latest load reports.
    private void ObserveBurstLoad(long now)
    {
        double wait = 0, busy = 0, cap = 0;
        int n = 0;
        foreach (var e in Fleet.Endpoints)
        {
            if (!e.IsEligible(now)) continue;
            var r = e.LastReport.Report;
            n++;
            wait += r.EstimatedWaitMs;
            busy += r.Running + r.Queued;
            cap += r.MaxRunning;
        }
        Traffic.ObserveLoad(n == 0 ? 0 : wait / n, cap == 0 ? 0 : busy / cap, now);
    }

    /// <summary>Runs an ADMIN command whose token was checked (docs/router.md, "Admin commands"): the JSON answer, or
    /// null and why not.</summary>
    internal string? Admin(string command, out string error) => Traffic.Execute(command, StatusJson, out error);

    /// <summary>Whether <paramref name="token"/> is the admin token (constant time; false when none is set).</summary>
    internal bool CheckAdminToken(ReadOnlySpan<byte> token) =>
        _adminToken is not null && System.Security.Cryptography.CryptographicOperations.FixedTimeEquals(token, _adminToken);

    /// <summary>The router's routing state as one JSON object: pools with their endpoints, the traffic rules and
    /// canary windows, the burst mode, shadow and cascade counters.</summary>
    internal string StatusJson(long now)
    {
        var buf = new System.Buffers.ArrayBufferWriter<byte>(2048);
        using (var w = new System.Text.Json.Utf8JsonWriter(buf))
        {
            w.WriteStartObject();
            w.WriteBoolean("ok", true);
            w.WriteStartArray("pools");
            foreach (var (m, v) in Routes.Pools)
            {
                int total = 0, eligible = 0;
                foreach (var e in Fleet.Endpoints)
                {
                    if (!e.HasHello || e.Model != m || e.ModelVersion != v) continue;
                    total++;
                    if (e.IsEligible(now)) eligible++;
                }
                w.WriteStartObject();
                w.WriteString("model", m);
                w.WriteString("version", v);
                w.WriteNumber("endpoints", total);
                w.WriteNumber("eligible", eligible);
                w.WriteEndObject();
            }
            w.WriteEndArray();
            Traffic.WriteState(w, now);
            w.WriteNumber("escalations", Escalations);
            w.WriteNumber("shed_batch", ShedBatch);
            w.WriteNumber("shadow_in_flight", Mirror.InFlight);
            w.WriteStartObject("shadow_dropped");
            foreach (var d in Enum.GetValues<ShadowDrop>()) w.WriteNumber(ShadowDropNames.Of(d), Mirror.Dropped(d));
            w.WriteEndObject();
            w.WriteEndObject();
        }
        return System.Text.Encoding.UTF8.GetString(buf.WrittenSpan);
    }

    // Endpoints that left the source close once nothing of theirs is in flight, unless they are still the fallback:
    // no endpoint of the set is eligible and they left less than LeavingFallback ago.
    private void ReapLeaving()
    {
        List<Endpoint>? done = null;
        lock (_applyLock)
        {
            if (_leaving.Count == 0) return;
            long now = Stopwatch.GetTimestamp();
            bool setServes = false;
            foreach (var e in Fleet.Endpoints) setServes |= e.IsEligible(now);
            for (int i = _leaving.Count - 1; i >= 0; i--)
            {
                var e = _leaving[i];
                bool fallback = !setServes && now - e.RemovedAt < LeavingFallback;
                if (e.InFlight > 0 || fallback) continue;
                (done ??= []).Add(e);
                _leaving.RemoveAt(i);
            }
            var keep = new List<Endpoint>(_leaving.Count);
            foreach (var e in _leaving) if (now - e.RemovedAt < LeavingFallback) keep.Add(e);
            _fallback = [.. keep];
        }
        if (done is null) return;
        foreach (var e in done)
        {
            Log($"endpoint {e.Address}: left the source and has nothing in flight; closing its connections");
            foreach (var c in e.Connections) _ = c.StopAsync();
        }
    }

    /// <summary>
    /// Starts draining: the listener closes, new requests on open connections are refused with <c>draining</c>
    /// (retriable, detail <c>router.draining</c>), and once nothing is in flight (or the grace period is over) every
    /// connection closes and <see cref="Completion"/> completes.
    /// </summary>
    public void BeginDrain()
    {
        if (_draining || _stopped) return;
        _draining = true;
        Log($"draining: finishing {Volatile.Read(ref _inFlight)} request(s) in flight for up to {Options.GraceMs / 1000.0:F0} s");
        _listener?.Dispose();
        _ = Task.Run(async () =>
        {
            var until = Stopwatch.GetTimestamp() + RouterOptions.Ticks(Options.GraceMs);
            while (Volatile.Read(ref _inFlight) > 0 && Stopwatch.GetTimestamp() < until) await Task.Delay(10).ConfigureAwait(false);
            // Give the last frames a moment to leave before the connections close.
            await Task.Delay(50).ConfigureAwait(false);
            await StopAsync().ConfigureAwait(false);
        });
    }

    private async Task StopAsync()
    {
        if (Interlocked.Exchange(ref _stopOnce, 1) != 0)
        {
            await _done.Task.ConfigureAwait(false);
            return;
        }
        _stopped = true;
        _listener?.Dispose();
        _cts.Cancel();
        foreach (var kv in _sessions) kv.Value.Close("router stopped");
        var stops = new List<Task>();
        lock (_applyLock)
        {
            foreach (var e in Fleet.Endpoints.Concat(_leaving))
                foreach (var c in e.Connections) stops.Add(c.StopAsync());
            _leaving.Clear();
        }
        try { await Task.WhenAll([.. stops, _acceptTask, _sourceTask]).ConfigureAwait(false); }
        catch (Exception e) when (e is SocketException or ObjectDisposedException or OperationCanceledException) { }
        _delays.Wake();
        _timer?.Join();
        // Retries still waiting out their delay: their clients are gone; each is finished once, here.
        foreach (var req in _delays.Close()) FinishWithRefusal(req);
        _config?.Dispose();
        Options.ApiKeys?.Dispose();
        Options.Tls?.Dispose();
        await Mirror.DisposeAsync().ConfigureAwait(false);
        Log("stopped");
        _done.TrySetResult();
    }

    /// <summary>Stops at once: connections close, requests in flight are dropped.</summary>
    public async ValueTask DisposeAsync()
    {
        await StopAsync().ConfigureAwait(false);
        _cts.Dispose();
    }
}
