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
    private readonly Counter _requests, _completed, _rejected, _retries, _replays, _upstreamLost, _noEndpoint, _budgetExhausted, _upstreamOverloaded;
    private readonly Histogram _added;
    private readonly Gauge _inFlight, _endpoints, _saturation, _epInFlight, _epReady, _epEjected, _epWeight, _fleetReady, _fleetConcurrency, _fleetRefused, _fleetDemand;
    private readonly Counter _epPicks, _epEjections;
    private HashSet<string> _labelled = [];

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
        _registry.AddBeforeCollectCallback(Refresh);
        _server = new MetricServer(host, port, "metrics/", _registry);
        _server.Start();
    }

    private void Refresh()
    {
        var st = _router.Stats;
        _requests.IncTo(st.Requests);
        _completed.IncTo(st.Completed);
        _rejected.IncTo(st.Rejected);
        _retries.IncTo(st.Retries);
        _replays.IncTo(st.Replays);
        _upstreamLost.IncTo(st.UpstreamLost);
        _noEndpoint.IncTo(st.NoEndpoint);
        _budgetExhausted.IncTo(st.BudgetExhausted);
        _upstreamOverloaded.IncTo(st.UpstreamOverloaded);
        _saturation.Set(st.Saturation);
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
    }

    /// <summary>Stops serving.</summary>
    public void Dispose()
    {
        _router.AddedLatency = null;
        _server.Dispose();
    }
}
