using Prometheus;

namespace FastServe.Router;

/// <summary>
/// A router's Prometheus metrics (prometheus-net), served as text exposition at <c>http://HOST:PORT/metrics</c>.
/// Everything but one histogram is read at scrape time from the router's own counters (<see cref="RouterHost.Stats"/>
/// and each <see cref="Endpoint"/>), so the request path pays nothing for them; the router-added latency histogram
/// costs one lock-free observe per request answered ok. Per-endpoint series carry the label
/// <c>endpoint</c> (its <c>host:port</c>) and disappear when the endpoint leaves the set.
/// </summary>
public sealed class RouterMetrics : IDisposable
{
    private readonly RouterHost _router;
    private readonly CollectorRegistry _registry = Metrics.NewCustomRegistry();
    private readonly MetricServer _server;
    private readonly Counter _requests, _completed, _rejected, _retries, _replays, _upstreamLost, _noEndpoint, _budgetExhausted, _upstreamOverloaded,
        _resumes, _resumeFailures;
    private readonly Histogram _added;
    private readonly Gauge _inFlight, _endpoints, _saturation, _epInFlight, _epReady, _epEjected, _epWeight, _fleetReady, _fleetConcurrency, _fleetRefused, _fleetDemand;
    private readonly Counter _epPicks, _epEjections;
    // Per pool (model, version), per tier and per burst mode: read at scrape time from the router's counters.
    private readonly Counter _poolFinals, _poolDevice, _poolTokens, _rollbacks, _modeChanges, _escalations, _shedBatch, _shadowPairs, _shadowMatches, _shadowDropped;
    private readonly Gauge _poolEndpoints, _poolCost, _mode, _splitShare;
    private readonly Histogram _shadowEdit, _shadowLength, _shadowLogprob, _shadowLatency;
    private readonly Counter _keyConnections, _keyRequests, _authRefused, _keyReloads, _keyReloadFailures, _tlsHandshakeFailures;
    private HashSet<string> _labelled = [];
    private readonly Counter _http;

    /// <summary>The HTTP front door's request counts (endpoint, status, count), read at scrape time into
    /// <c>fastserve_http_requests_total</c>; null = no HTTP front door.</summary>
    public Func<IEnumerable<(string Endpoint, int Status, long Count)>>? HttpRequests { get; set; }

    /// <summary>Starts serving <paramref name="router"/>'s metrics on <paramref name="host"/>:<paramref name="port"/>.</summary>
    /// <exception cref="System.Net.HttpListenerException">The port cannot be bound.</exception>
    public RouterMetrics(RouterHost router, string host, int port)
    {
        _router = router;
        var f = Metrics.WithCustomRegistry(_registry);
        _requests = f.CreateCounter("fastserve_router_requests_total", "Requests received from clients.");
        _completed = f.CreateCounter("fastserve_router_completed_total", "Requests answered with a FINAL (any status).");
        _rejected = f.CreateCounter("fastserve_router_rejected_total", "Requests refused by the router itself (bad frame, limits, draining).");
        _retries = f.CreateCounter("fastserve_router_retries_total", "Attempts beyond the first: requests refused or lost before any output, sent to another replica.");
        _replays = f.CreateCounter("fastserve_router_replays_total", "Retries of 'whole' requests whose lost attempt had produced output (held back, never passed on).");
        _upstreamLost = f.CreateCounter("fastserve_router_upstream_lost_total", "Requests that had streamed output when their replica's connection broke (ended router.upstream_lost).");
        _resumes = f.CreateCounter("fastserve_router_resumes_total",
            "Retries of requests that had streamed output: continued on another replica from the output already delivered (REQUEST flag resume).");
        _resumeFailures = f.CreateCounter("fastserve_router_resume_failures_total",
            "Streamed requests whose replica was lost and that could not be resumed, by reason (no_endpoint, deadline, attempts, too_large, stopping).",
            new CounterConfiguration { LabelNames = ["reason"] });
        _noEndpoint = f.CreateCounter("fastserve_router_no_endpoint_total", "Requests answered router.no_endpoint: no replica was eligible.");
        _budgetExhausted = f.CreateCounter("fastserve_router_retry_budget_exhausted_total",
            "Retries not made because the retry budget was spent: the replica's refusal (or router.upstream_lost) went to the client instead.");
        _upstreamOverloaded = f.CreateCounter("fastserve_router_upstream_overloaded_total", "FINALs with status overloaded received from replicas (every attempt's, retries included).");
        _saturation = f.CreateGauge("fastserve_router_fleet_saturation",
            "Of the FINALs replicas sent this router over the last overload window (10 s by default; every attempt's, any status), the fraction that were overloaded; 0 when none came. In [0, 1].");
        _fleetReady = f.CreateGauge("fastserve_router_fleet_ready_endpoints", "Endpoints that can be picked now.");
        _fleetConcurrency = f.CreateGauge("fastserve_router_fleet_concurrency", "Requests in flight or queued at the ready endpoints, from their latest load reports.");
        _fleetRefused = f.CreateGauge("fastserve_router_fleet_refused_per_second", "Overloaded answers from replicas per second over the overload window (retries included).");
        _fleetDemand = f.CreateGauge("fastserve_router_fleet_demand",
            "The autoscaler's signal: fleet concurrency plus refusals turned into concurrency by Little's law (refused per second x the replicas' mean answer time).");
        _inFlight = f.CreateGauge("fastserve_router_in_flight", "Requests in flight through this router.");
        _endpoints = f.CreateGauge("fastserve_router_endpoints", "Endpoints in the current set.");
        string[] ep = ["endpoint"];
        _epInFlight = f.CreateGauge("fastserve_router_endpoint_in_flight", "Requests this router has in flight on the endpoint.", new GaugeConfiguration { LabelNames = ep });
        _epReady = f.CreateGauge("fastserve_router_endpoint_eligible", "1 when the endpoint can be picked now (ready, not draining, not ejected).", new GaugeConfiguration { LabelNames = ep });
        _epEjected = f.CreateGauge("fastserve_router_endpoint_ejected", "1 while the endpoint is ejected for repeated errors.", new GaugeConfiguration { LabelNames = ep });
        _epWeight = f.CreateGauge("fastserve_router_endpoint_weight", "Effective weight (slow start applied; 0 when not ready).", new GaugeConfiguration { LabelNames = ep });
        _epPicks = f.CreateCounter("fastserve_router_endpoint_picks_total", "Requests sent to the endpoint (retries included).", new CounterConfiguration { LabelNames = ep });
        _epEjections = f.CreateCounter("fastserve_router_endpoint_ejections_total", "Times the endpoint was ejected.", new CounterConfiguration { LabelNames = ep });
        // 50 µs to about 1.6 s: a healthy router adds well under a millisecond; retries add whole attempts.
        _added = f.CreateHistogram("fastserve_router_added_seconds",
            "Time the router added to requests answered ok: from reading the REQUEST to writing the FINAL, less the replica's own time for the attempt that answered.",
            new HistogramConfiguration { Buckets = Histogram.ExponentialBuckets(50e-6, 2, 16) });
        router.AddedLatency = _added.Observe;
        string[] pool = ["model", "version"];
        _poolFinals = f.CreateCounter("fastserve_router_pool_finals_total", "FINALs from the replicas of a pool, every attempt's: ok, error (internal or deadline_exceeded: what counts against a canary) or refused (load, drain, client error).",
            new CounterConfiguration { LabelNames = ["model", "version", "outcome"] });
        _poolDevice = f.CreateCounter("fastserve_router_pool_device_seconds_total", "Device time the replicas of a pool reported for the requests they ran (FINAL's device slot), summed.", new CounterConfiguration { LabelNames = pool });
        _poolTokens = f.CreateCounter("fastserve_router_pool_completion_tokens_total", "Tokens generated by the replicas of a pool.", new CounterConfiguration { LabelNames = pool });
        _poolEndpoints = f.CreateGauge("fastserve_router_pool_endpoints", "Endpoints of a pool that can be picked now.", new GaugeConfiguration { LabelNames = pool });
        _poolCost = f.CreateGauge("fastserve_router_pool_cost_per_1000_requests", "Device cost of 1,000 requests answered ok by a pool, at --cost-per-hour (absent without it).", new GaugeConfiguration { LabelNames = pool });
        _splitShare = f.CreateGauge("fastserve_router_split_share", "A version's share of its model's traffic split (0 after a rollback).", new GaugeConfiguration { LabelNames = pool });
        _rollbacks = f.CreateCounter("fastserve_router_canary_rollbacks_total", "Canaries whose share the router set to 0 because they did worse than their stable version.");
        _mode = f.CreateGauge("fastserve_router_burst_mode", "The burst mode now: 0 normal, 1 surge, 2 emergency.");
        _modeChanges = f.CreateCounter("fastserve_router_burst_mode_changes_total", "Burst mode changes (automatic or pinned).");
        _escalations = f.CreateCounter("fastserve_router_tier_escalations_total", "Tier requests whose cheap answer was below the confidence threshold and ran again on the strong pool.");
        _shedBatch = f.CreateCounter("fastserve_router_shed_batch_total", "Batch-class requests refused because the burst mode sheds them.");
        string[] pair = ["model", "primary_version", "shadow_version"];
        _shadowPairs = f.CreateCounter("fastserve_router_shadow_pairs_total", "Shadow pairs compared (both answers ok).", new CounterConfiguration { LabelNames = pair });
        _shadowMatches = f.CreateCounter("fastserve_router_shadow_exact_matches_total", "Shadow pairs whose texts matched exactly.", new CounterConfiguration { LabelNames = pair });
        _shadowDropped = f.CreateCounter("fastserve_router_shadow_dropped_total", "Mirrors not compared: queue_full, saturated, burst_mode, failed.", new CounterConfiguration { LabelNames = ["reason"] });
        _shadowEdit = f.CreateHistogram("fastserve_router_shadow_token_edit_distance", "Token edit distance between a primary answer and its shadow's.",
            new HistogramConfiguration { LabelNames = pair, Buckets = [0, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89] });
        _shadowLength = f.CreateHistogram("fastserve_router_shadow_length_delta_tokens", "Shadow answer length minus primary answer length, tokens.",
            new HistogramConfiguration { LabelNames = pair, Buckets = [-32, -16, -8, -4, -2, -1, 0, 1, 2, 4, 8, 16, 32] });
        _shadowLogprob = f.CreateHistogram("fastserve_router_shadow_logprob_delta", "Shadow mean token log-probability minus the primary's.",
            new HistogramConfiguration { LabelNames = pair, Buckets = [-2, -1, -0.5, -0.25, -0.1, -0.05, 0, 0.05, 0.1, 0.25, 0.5, 1, 2] });
        _shadowLatency = f.CreateHistogram("fastserve_router_shadow_latency_delta_seconds", "Shadow end-to-end latency minus the primary's, seconds.",
            new HistogramConfiguration { LabelNames = pair, Buckets = [-1, -0.3, -0.1, -0.03, -0.01, 0, 0.01, 0.03, 0.1, 0.3, 1] });
        router.Mirror.OnPair = (m, pv, sv, d) =>
        {
            _shadowEdit.WithLabels(m, pv, sv).Observe(d.TokenEditDistance);
            _shadowLength.WithLabels(m, pv, sv).Observe(d.LengthDelta);
            if (double.IsFinite(d.LogprobDelta)) _shadowLogprob.WithLabels(m, pv, sv).Observe(d.LogprobDelta);
            _shadowLatency.WithLabels(m, pv, sv).Observe(d.LatencyDeltaSeconds);
        };
        _keyConnections = f.CreateCounter("fastserve_router_key_connections_total", "Client connections authenticated, by API key name (docs/security.md).", new CounterConfiguration { LabelNames = ["key"] });
        _keyRequests = f.CreateCounter("fastserve_router_key_requests_total", "REQUEST frames received, by the API key name of their connection.", new CounterConfiguration { LabelNames = ["key"] });
        _authRefused = f.CreateCounter("fastserve_router_auth_refused_total", "HELLOs refused unauthorized: reason key_required (no key) or invalid_key.", new CounterConfiguration { LabelNames = ["reason"] });
        _keyReloads = f.CreateCounter("fastserve_router_api_keys_reloads_total", "Times the API keys file changed and its keys were put in force.");
        _keyReloadFailures = f.CreateCounter("fastserve_router_api_keys_reload_failures_total", "Times a changed API keys file was refused (the previous keys stayed in force).");
        _tlsHandshakeFailures = f.CreateCounter("fastserve_router_tls_handshake_failures_total", "Client TLS handshakes that failed or timed out.");
        _http = f.CreateCounter("fastserve_http_requests_total", "Requests answered by the OpenAI-compatible HTTP front door (docs/http.md), by endpoint and HTTP status (499: the client went away first).",
            new CounterConfiguration { LabelNames = ["endpoint", "status"] });
        _registry.AddBeforeCollectCallback(Refresh);
        _server = new MetricServer(host, port, "metrics/", _registry);
        _server.Start();
    }

    /// <summary>The <c>reason</c> label of a <see cref="ResumeFailure"/>.</summary>
    public static string ResumeFailureName(ResumeFailure r) => r switch
    {
        ResumeFailure.NoEndpoint => "no_endpoint",
        ResumeFailure.Deadline => "deadline",
        ResumeFailure.Attempts => "attempts",
        ResumeFailure.TooLarge => "too_large",
        _ => "stopping",
    };

    private void Refresh()
    {
        if (HttpRequests is { } http)
            foreach (var (endpoint, status, count) in http()) _http.WithLabels(endpoint, status.ToString(System.Globalization.CultureInfo.InvariantCulture)).IncTo(count);
        var st = _router.Stats;
        _requests.IncTo(st.Requests);
        _completed.IncTo(st.Completed);
        _rejected.IncTo(st.Rejected);
        _retries.IncTo(st.Retries);
        _replays.IncTo(st.Replays);
        _upstreamLost.IncTo(st.UpstreamLost);
        _resumes.IncTo(st.Resumes);
        foreach (var reason in Enum.GetValues<ResumeFailure>())
            _resumeFailures.WithLabels(ResumeFailureName(reason)).IncTo(_router.ResumeFailuresBy(reason));
        _noEndpoint.IncTo(st.NoEndpoint);
        _budgetExhausted.IncTo(st.BudgetExhausted);
        _upstreamOverloaded.IncTo(st.UpstreamOverloaded);
        _saturation.Set(st.Saturation);
        if (_router.Options.ApiKeys is { } keys)
        {
            foreach (var u in keys.Usage)
            {
                _keyConnections.WithLabels(u.Name).IncTo(u.Connections);
                _keyRequests.WithLabels(u.Name).IncTo(u.Requests);
            }
            _authRefused.WithLabels("key_required").IncTo(keys.RefusedMissing);
            _authRefused.WithLabels("invalid_key").IncTo(keys.RefusedInvalid);
            _keyReloads.IncTo(keys.Reloads);
            _keyReloadFailures.IncTo(keys.ReloadFailures);
        }
        if (_router.Options.Tls is { } tls) _tlsHandshakeFailures.IncTo(tls.HandshakeFailures);
        var load = _router.Load();
        _fleetReady.Set(load.Ready);
        _fleetConcurrency.Set(load.Concurrency);
        _fleetRefused.Set(load.RefusedPerSecond);
        _fleetDemand.Set(load.Demand);
        _inFlight.Set(st.InFlight);
        long now = System.Diagnostics.Stopwatch.GetTimestamp();
        var set = _router.Fleet.Endpoints;
        _endpoints.Set(set.Length);
        var labelled = new HashSet<string>();
        foreach (var e in set)
        {
            string a = e.Address;
            labelled.Add(a);
            _epInFlight.WithLabels(a).Set(e.InFlight);
            _epReady.WithLabels(a).Set(e.IsEligible(now) ? 1 : 0);
            _epEjected.WithLabels(a).Set(e.IsEjected(now) ? 1 : 0);
            _epWeight.WithLabels(a).Set(e.EffectiveWeight(now));
            _epPicks.WithLabels(a).IncTo(e.Forwarded);
            _epEjections.WithLabels(a).IncTo(e.Ejections);
        }
        foreach (var gone in _labelled)
        {
            if (labelled.Contains(gone)) continue;
            _epInFlight.RemoveLabelled(gone);
            _epReady.RemoveLabelled(gone);
            _epEjected.RemoveLabelled(gone);
            _epWeight.RemoveLabelled(gone);
            _epPicks.RemoveLabelled(gone);
            _epEjections.RemoveLabelled(gone);
        }
        _labelled = labelled;
        RefreshTraffic(now);
    }

    private void RefreshTraffic(long now)
    {
        double cph = _router.Options.CostPerHour;
        foreach (var (key, c) in _router.Routes.AllCounters)
        {
            string m = key.Model, v = key.Version;
            long ok = Interlocked.Read(ref c.Ok);
            _poolFinals.WithLabels(m, v, "ok").IncTo(ok);
            _poolFinals.WithLabels(m, v, "error").IncTo(Interlocked.Read(ref c.Errors));
            _poolFinals.WithLabels(m, v, "refused").IncTo(Interlocked.Read(ref c.Refused));
            double device = Interlocked.Read(ref c.DeviceMicros) / 1e6;
            _poolDevice.WithLabels(m, v).IncTo(device);
            _poolTokens.WithLabels(m, v).IncTo(Interlocked.Read(ref c.CompletionTokens));
            if (cph > 0 && ok > 0) _poolCost.WithLabels(m, v).Set(device / 3600 * cph / ok * 1000);
        }
        foreach (var (m, v) in _router.Routes.Pools)
        {
            int eligible = 0;
            foreach (var e in _router.Fleet.Endpoints) if (e.HasHello && e.Model == m && e.ModelVersion == v && e.IsEligible(now)) eligible++;
            _poolEndpoints.WithLabels(m, v).Set(eligible);
        }
        var traffic = _router.Traffic;
        foreach (var (model, split) in traffic.Table.Splits)
            foreach (var entry in split.Entries) _splitShare.WithLabels(model, entry.Version).Set(split.Share(entry.Version));
        _rollbacks.IncTo(traffic.Rollbacks);
        _modeChanges.IncTo(traffic.ModeChanges);
        _mode.Set((int)traffic.Burst.Mode);
        _escalations.IncTo(_router.Escalations);
        _shedBatch.IncTo(_router.ShedBatch);
        var mirror = _router.Mirror;
        foreach (var (m, p, s, pairs, matches) in mirror.PairTotals())
        {
            _shadowPairs.WithLabels(m, p, s).IncTo(pairs);
            _shadowMatches.WithLabels(m, p, s).IncTo(matches);
        }
        foreach (var d in Enum.GetValues<Shadow.ShadowDrop>()) _shadowDropped.WithLabels(Shadow.ShadowDropNames.Of(d)).IncTo(mirror.Dropped(d));
    }

    /// <summary>Stops serving.</summary>
    public void Dispose()
    {
        _router.AddedLatency = null;
        _router.Mirror.OnPair = null;
        _server.Dispose();
    }
}
