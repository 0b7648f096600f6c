using FastServe.Protocol;
using FastServe.Scheduler.Engine;
using FastServe.Server.Ipc;
using Prometheus;

namespace FastServe.Server.Engine;

/// <summary>
/// The replica's Prometheus metrics (prometheus-net), served as text exposition at
/// <c>http://HOST:PORT/metrics</c> by the engine process. Per-request figures come from the workers (one
/// <see cref="ReportMsg"/> per finished request, over IPC), per-step figures from the engine's step hook, gauges
/// from engine stats and /proc at scrape time. Names follow Prometheus conventions (unit suffixes, _total).
/// </summary>
internal sealed class ServerMetrics : IDisposable
{
    private static readonly double[] LatencyBuckets =
        [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30];
    private static readonly double[] TpotBuckets =
        [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1];

    private readonly EngineHost _host;
    private readonly CollectorRegistry _registry = Metrics.NewCustomRegistry();
    private readonly MetricServer _server;
    private readonly Counter _requests, _promptTokens, _generationTokens, _preemptions, _steps, _rows, _wastedRows, _requestDevice;
    private readonly Histogram _queue, _ttft, _tpot, _e2e, _batchSeqs, _batchTokens, _stepSeconds, _deviceTime;
    private readonly Counter _deviceBusy, _deviceUnattributed;
    private readonly Counter _keyConnections, _keyRequests, _authRefused, _keyReloads, _keyReloadFailures, _httpRequests;
    private readonly Gauge _running, _waiting, _inflight, _kvUsage, _prefixHitRatio, _cpu, _ready, _deviceIdle, _queueWait, _queueBudget;

    public ServerMetrics(EngineHost host, string hostname, int port)
    {
        _host = host;
        var f = Metrics.WithCustomRegistry(_registry);
        _requests = f.CreateCounter("fastserve_requests_total", "Requests by final status (the protocol's status names).", new CounterConfiguration { LabelNames = ["status"] });
        _promptTokens = f.CreateCounter("fastserve_prompt_tokens_total", "Prompt tokens of finished requests.");
        _generationTokens = f.CreateCounter("fastserve_generation_tokens_total", "Tokens generated for finished requests.");
        _preemptions = f.CreateCounter("fastserve_preemptions_total", "Sequences preempted (KV dropped, recomputed later).");
        _steps = f.CreateCounter("fastserve_engine_steps_total", "Forward steps run by the engine.");
        _rows = f.CreateCounter("fastserve_engine_rows_total", "Rows (prompt tokens prefilled plus tokens generated) the engine computed.");
        _wastedRows = f.CreateCounter("fastserve_engine_wasted_rows_total", "Of those rows, the ones spent on requests that then missed their deadline: work admission control failed to save.");
        _queue = f.CreateHistogram("fastserve_request_queue_seconds", "Receipt to first scheduled on the device.", new HistogramConfiguration { Buckets = LatencyBuckets });
        _ttft = f.CreateHistogram("fastserve_time_to_first_token_seconds", "Receipt to the first token sent to the client.", new HistogramConfiguration { Buckets = LatencyBuckets });
        _tpot = f.CreateHistogram("fastserve_time_per_output_token_seconds", "Mean time between output tokens of a request after the first.", new HistogramConfiguration { Buckets = TpotBuckets });
        _e2e = f.CreateHistogram("fastserve_request_duration_seconds", "Receipt to the final frame (end to end inside the replica).", new HistogramConfiguration { Buckets = LatencyBuckets });
        _batchSeqs = f.CreateHistogram("fastserve_batch_size_sequences", "Sequences in one forward step.", new HistogramConfiguration { Buckets = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512] });
        _batchTokens = f.CreateHistogram("fastserve_batch_size_tokens", "Rows (decode plus prefill tokens) in one forward step.", new HistogramConfiguration { Buckets = [1, 4, 16, 64, 128, 256, 512, 1024, 2048, 4096, 8192] });
        _stepSeconds = f.CreateHistogram("fastserve_step_seconds", "Device time of one forward step.", new HistogramConfiguration { Buckets = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1] });
        _deviceTime = f.CreateHistogram("fastserve_request_device_seconds", "Device time one request cost: its token-weighted share of every step that computed its rows.", new HistogramConfiguration { Buckets = TpotBuckets });
        _requestDevice = f.CreateCounter("fastserve_request_device_seconds_total", "Device time charged to requests, summed (with fastserve_device_unattributed_seconds_total, the device busy time).");
        _deviceBusy = f.CreateCounter("fastserve_device_busy_seconds_total", "Device time running steps since start.");
        _deviceUnattributed = f.CreateCounter("fastserve_device_unattributed_seconds_total", "Device time of rows no request paid for (computed for a request that had already ended), since start.");
        _running = f.CreateGauge("fastserve_requests_running", "Sequences in the running batch.");
        _waiting = f.CreateGauge("fastserve_requests_waiting", "Requests queued for admission.");
        _inflight = f.CreateGauge("fastserve_requests_in_flight", "Requests submitted by workers and not yet finished.");
        _kvUsage = f.CreateGauge("fastserve_kv_cache_usage_ratio", "Fraction of KV-cache blocks held by requests.");
        _prefixHitRatio = f.CreateGauge("fastserve_prefix_cache_hit_ratio", "Prefix-cache block hits over lookups since start.");
        _deviceIdle = f.CreateGauge("fastserve_device_idle_ratio", "Device idle time between steps over busy plus idle, since start.");
        _queueWait = f.CreateGauge("fastserve_estimated_queue_wait_seconds", "The engine's estimate of how long an interactive request arriving now would wait for admission.");
        _queueBudget = f.CreateGauge("fastserve_queue_budget_seconds", "Queue wait allowed now to requests without a deadline (CoDel: the target while the queue stands, the interval otherwise; 0 = none).");
        _ready = f.CreateGauge("fastserve_ready", "1 when the replica is ready, 0 when starting or draining.");
        _cpu = f.CreateGauge("fastserve_process_cpu_seconds_total", "CPU time (user + system) of each replica process.", new GaugeConfiguration { LabelNames = ["role", "index"] });
        // What the workers count (WorkerCounters), summed over them: the same names as the router's, less its prefix.
        _keyConnections = f.CreateCounter("fastserve_key_connections_total", "Client connections authenticated, by API key name (docs/security.md).", new CounterConfiguration { LabelNames = ["key"] });
        _keyRequests = f.CreateCounter("fastserve_key_requests_total", "Requests (binary REQUESTs and HTTP requests) by the API key name they came with.", new CounterConfiguration { LabelNames = ["key"] });
        _authRefused = f.CreateCounter("fastserve_auth_refused_total", "HELLOs and HTTP requests refused: reason key_required (no key) or invalid_key.", new CounterConfiguration { LabelNames = ["reason"] });
        _keyReloads = f.CreateCounter("fastserve_api_keys_reloads_total", "Times the API keys file changed and its keys were put in force (the most any worker has seen).");
        _keyReloadFailures = f.CreateCounter("fastserve_api_keys_reload_failures_total", "Times a changed API keys file was refused (the previous keys stayed in force).");
        _httpRequests = f.CreateCounter("fastserve_http_requests_total", "HTTP requests answered by the workers' front door (docs/http.md), by endpoint and status (499: the client went away first).", new CounterConfiguration { LabelNames = ["endpoint", "status"] });
        foreach (var s in WireNames.All) _requests.WithLabels(WireNames.Of(s));
        // The model this replica declares, as labels to join the other series on (cost per model and version).
        f.CreateGauge("fastserve_model_info", "1, labelled with the model name and version this replica declares.", new GaugeConfiguration { LabelNames = ["model", "version"] })
            .WithLabels(host.Options.ModelName, host.Options.ModelVersion).Set(1);
        _registry.AddBeforeCollectCallback(Refresh);
        _server = new MetricServer(hostname, port, "metrics/", _registry);
        _server.Start();
    }

    /// <summary>A worker's record of one finished request.</summary>
    public void ObserveRequest(in ReportMsg r)
    {
        _requests.WithLabels(WireNames.Of((WireStatus)r.Status)).Inc();
        _promptTokens.Inc(r.PromptTokens);
        _generationTokens.Inc(r.CompletionTokens);
        if (float.IsFinite(r.QueueSeconds)) _queue.Observe(r.QueueSeconds);
        if (float.IsFinite(r.TtftSeconds)) _ttft.Observe(r.TtftSeconds);
        if (float.IsFinite(r.TpotSeconds)) _tpot.Observe(r.TpotSeconds);
        if (float.IsFinite(r.E2eSeconds)) _e2e.Observe(r.E2eSeconds);
        if (r.DeviceSeconds > 0)
        {
            _deviceTime.Observe(r.DeviceSeconds);
            _requestDevice.Inc(r.DeviceSeconds);
        }
    }

    public void ObserveStep(in StepRecord s)
    {
        _steps.Inc();
        _batchSeqs.Observe(s.Sequences);
        _batchTokens.Observe(s.Rows);
        _stepSeconds.Observe(s.ForwardSeconds);
    }

    private long _lastPreemptions;

    private void Refresh()
    {
        var load = _host.CurrentLoad();
        _inflight.Set(load.InFlight);
        _ready.Set(load.State == (byte)ReplicaState.Ready ? 1 : 0);
        if (_host.Engine is { } e)
        {
            var s = e.GetStats();
            _running.Set(s.RunningRequests);
            _waiting.Set(s.WaitingRequests);
            _kvUsage.Set(s.KvBlocksTotal == 0 ? 0 : s.KvBlocksUsed / (double)s.KvBlocksTotal);
            _prefixHitRatio.Set(s.PrefixHitRate);
            _deviceIdle.Set(s.DeviceIdleFraction);
            _deviceBusy.IncTo(s.DeviceBusySeconds);
            _deviceUnattributed.IncTo(s.DeviceUnattributedSeconds);
            _rows.IncTo(s.RowsComputed);
            _wastedRows.IncTo(s.WastedRows);
            _queueWait.Set(e.EstimatedQueueWait(Priority.Interactive).TotalSeconds);
            _queueBudget.Set(e.QueueBudget.TotalSeconds);
            long p = s.Preemptions;
            if (p > _lastPreemptions) { _preemptions.Inc(p - _lastPreemptions); _lastPreemptions = p; }
        }
        foreach (var ((kind, a, b), v) in _host.WorkerCounters.Totals())
        {
            switch (kind)
            {
                case CounterKind.KeyConnections: _keyConnections.WithLabels(a).IncTo(v); break;
                case CounterKind.KeyRequests: _keyRequests.WithLabels(a).IncTo(v); break;
                case CounterKind.AuthRefused: _authRefused.WithLabels(a).IncTo(v); break;
                case CounterKind.KeyReloads: _keyReloads.IncTo(v); break;
                case CounterKind.KeyReloadFailures: _keyReloadFailures.IncTo(v); break;
                case CounterKind.HttpRequests: _httpRequests.WithLabels(a, b).IncTo(v); break;
            }
        }
        SetCpu("engine", "0", Environment.ProcessId);
        int parent = Native.GetParentPid();
        if (parent > 1) SetCpu("supervisor", "0", parent);
        foreach (var l in _host.Links())
            if (l.Index >= 0) SetCpu("worker", l.Index.ToString(System.Globalization.CultureInfo.InvariantCulture), l.Pid);
    }

    private void SetCpu(string role, string index, int pid)
    {
        double v = Native.ProcessCpuSeconds(pid);
        if (!double.IsNaN(v)) _cpu.WithLabels(role, index).Set(v);
    }

    public void Dispose() => _server.Dispose();
}
