using FastServe.Autoscale.Actuators;
using Prometheus;

namespace FastServe.Autoscale.Control;

/// <summary>
/// <c>fastserve autoscale --metrics-port</c>: the autoscaler's decisions as Prometheus metrics (prometheus-net), at
/// <c>http://HOST:PORT/metrics</c>, set from each tick's outcome.
/// </summary>
public sealed class AutoscaleMetrics : IDisposable
{
    private readonly CollectorRegistry _registry = Metrics.NewCustomRegistry();
    private readonly MetricServer _server;
    private readonly Gauge _desired, _ready, _starting, _draining, _panic, _demand, _stable, _panicDemand;
    private readonly Counter _ticks, _replicaEvents;

    /// <exception cref="System.Net.HttpListenerException">The port cannot be bound.</exception>
    public AutoscaleMetrics(string host, int port)
    {
        var f = Metrics.WithCustomRegistry(_registry);
        _desired = f.CreateGauge("fastserve_autoscale_desired_replicas", "Replicas the last decision asked for (ready plus starting).");
        _ready = f.CreateGauge("fastserve_autoscale_ready_replicas", "Replicas taking traffic, as the actuator counts them.");
        _starting = f.CreateGauge("fastserve_autoscale_starting_replicas", "Replicas started and not yet ready.");
        _draining = f.CreateGauge("fastserve_autoscale_draining_replicas", "Replicas on their way out.");
        _panic = f.CreateGauge("fastserve_autoscale_panic", "1 while the policy is in panic mode.");
        _demand = f.CreateGauge("fastserve_autoscale_demand", "This tick's demand in concurrency (in flight plus refusals by Little's law).");
        _stable = f.CreateGauge("fastserve_autoscale_stable_demand", "Mean demand over the stable window.");
        _panicDemand = f.CreateGauge("fastserve_autoscale_panic_demand", "Mean demand over the panic window.");
        _ticks = f.CreateCounter("fastserve_autoscale_ticks_total", "Ticks by action: up, down, none, hold, failed.", new CounterConfiguration { LabelNames = ["action"] });
        _replicaEvents = f.CreateCounter("fastserve_autoscale_replica_events_total", "Replica events by kind (replica.ready, replica.exited, ...).", new CounterConfiguration { LabelNames = ["event"] });
        _server = new MetricServer(host, port, "metrics/", _registry);
        _server.Start();
    }

    public void Record(in AutoscaleTick t)
    {
        _ticks.WithLabels(t.Action).Inc();
        if (t.SizeAfter is { } s)
        {
            _ready.Set(s.Ready);
            _starting.Set(s.Starting);
            _draining.Set(s.Draining);
        }
        if (t.Decision is { } d)
        {
            _desired.Set(d.Desired);
            _panic.Set(d.Panic ? 1 : 0);
            _demand.Set(d.Demand);
            _stable.Set(d.StableDemand);
            _panicDemand.Set(d.PanicDemand);
        }
    }

    public void Record(in ReplicaEvent e) => _replicaEvents.WithLabels(e.Event).Inc();

    public void Dispose() => _server.Dispose();
}
