using System.CommandLine;
using System.Globalization;
using FastServe.Autoscale;
using FastServe.Autoscale.Simulation;
using FastServe.Runtime;
using Spectre.Console;

namespace FastServe.Cli.Commands;

/// <summary>
/// <c>fastserve simulate-fleet</c>: runs the fleet autoscaler's policy, the HPA, Knative's KPA, static provisioning
/// and the next-minute oracle over one load trace and seed in the fluid fleet simulator (docs/autoscale.md), and
/// prints each one's SLO attainment, rejections, replica-hours and scale churn.
/// </summary>
internal static class SimulateFleetCommand
{
    public static Command Create()
    {
        var trace = new Option<string?>("--trace") { Description = "Synthetic trace: daily:MIN:MAX (24 h: quiet night at MIN, a 30-minute morning ramp, a day near MAX with a midday dip, an evening decline), requests per second" };
        var csv = new Option<string?>("--trace-csv") { Description = "Recorded trace: lines 'timestamp_seconds,rate', replayed linearly between points" };
        var spikes = new Option<double[]>("--spike-at-h") { Description = "Add a surge at this simulated hour (repeatable): the rate ×--spike-factor within 60 s, held --spike-minutes", AllowMultipleArgumentsPerToken = false };
        var spikeFactor = new Option<double>("--spike-factor") { Description = "Multiplier of a surge", DefaultValueFactory = _ => 2 };
        var spikeMinutes = new Option<double>("--spike-minutes") { Description = "How long a surge holds at its height", DefaultValueFactory = _ => 10 };
        var hours = new Option<double?>("--hours") { Description = "Simulated hours (default: the trace's length)" };
        var capacity = new Option<double>("--replica-capacity") { Description = "Requests per second one replica serves (166: the sim replica of docs/benchmarks.md, issue 16)", DefaultValueFactory = _ => 166 };
        var startDelay = new Option<double>("--start-delay-s") { Description = "Median replica start-up time in seconds (lognormal, sigma 0.3)", DefaultValueFactory = _ => 5 };
        var slo = new Option<double>("--slo-ms") { Description = "End-to-end latency objective in milliseconds", DefaultValueFactory = _ => 1000 };
        var target = new Option<double>("--target-concurrency") { Description = "Concurrency per replica the autoscaler, KPA and HPA aim for", DefaultValueFactory = _ => new AutoscaleOptions().TargetConcurrency };
        var seed = new Option<int>("--seed") { Description = "Seed of the start-up times", DefaultValueFactory = _ => 1 };
        var json = new Option<bool>("--json") { Description = "Print the report as JSON" };
        var chart = new Option<string?>("--chart") { Description = "Also draw FILE.png: load, ready replicas and P99 over time for every policy" };
        var timeline = new Option<bool>("--timeline") { Description = "With --json: add each policy's run over time (--sample-s buckets)" };
        var sample = new Option<double>("--sample-s") { Description = "Bucket of the chart and the timeline, seconds", DefaultValueFactory = _ => 60 };
        var cmd = new Command("simulate-fleet", "Simulate a fleet under a load trace: this autoscaler against the HPA, Knative's KPA, static provisioning and an oracle.");
        foreach (Option o in new Option[] { trace, csv, spikes, spikeFactor, spikeMinutes, hours, capacity, startDelay, slo, target, seed, json, chart, timeline, sample }) cmd.Add(o);
        cmd.SetAction(r =>
        {
            bool asJson = r.GetValue(json);
            LoadTrace load = Trace(r.GetValue(trace), r.GetValue(csv));
            double factor = r.GetValue(spikeFactor), minutes = r.GetValue(spikeMinutes);
            if (!(factor >= 0 && factor <= 1000)) throw new FastServeException("args.invalid_spike", "--spike-factor must be between 0 and 1000", "--spike-factor");
            if (!(minutes >= 0 && minutes <= 24 * 60)) throw new FastServeException("args.invalid_spike", "--spike-minutes must be between 0 and 1440", "--spike-minutes");
            foreach (double h in r.GetValue(spikes) ?? [])
            {
                if (!(h >= 0 && h <= 24 * 365)) throw new FastServeException("args.invalid_spike", "--spike-at-h must be between 0 and 8760 hours", "--spike-at-h");
                load = new SpikeTrace(load, h * 3600, factor, 60, minutes * 60);
            }
            if (r.GetValue(hours) is { } hrs)
            {
                if (!(hrs > 0 && hrs <= 24 * 31)) throw new FastServeException("args.invalid_hours", "--hours must be between 0 and 744", "--hours");
                load = load.Take(hrs * 3600);
            }
            double cap = r.GetValue(capacity), delay = r.GetValue(startDelay), sloMs = r.GetValue(slo), tc = r.GetValue(target);
            if (!(cap > 0 && cap <= 1e6)) throw new FastServeException("args.invalid_replica_capacity", "--replica-capacity must be between 0 and 1000000", "--replica-capacity");
            if (!(delay >= 0 && delay <= 3600)) throw new FastServeException("args.invalid_start_delay", "--start-delay-s must be between 0 and 3600", "--start-delay-s");
            if (!(sloMs > 0 && sloMs <= 3_600_000)) throw new FastServeException("args.invalid_slo", "--slo-ms must be positive", "--slo-ms");
            if (!(tc > 0 && tc <= 1e6)) throw new FastServeException("args.invalid_target_concurrency", "--target-concurrency must be between 0 and 1000000", "--target-concurrency");
            var model = new ReplicaModel { Capacity = cap, StartDelayMedian = delay, Slo = sloMs / 1000 };
            string? chartPath = r.GetValue(chart);
            bool withTimeline = r.GetValue(timeline);
            double sampleS = r.GetValue(sample);
            if (!(sampleS >= 1 && sampleS <= 86_400)) throw new FastServeException("args.invalid_sample", "--sample-s must be between 1 and 86400", "--sample-s");
            if (chartPath is not null && !chartPath.EndsWith(".png", StringComparison.OrdinalIgnoreCase))
                throw new FastServeException("args.invalid_chart", "--chart must name a .png file", "--chart");
            if (withTimeline && !asJson) throw new FastServeException("args.invalid_timeline", "--timeline goes with --json", "--timeline");
            var policies = FleetComparison.Policies(load, model, new AutoscaleOptions { MaxReplicas = 100_000, TargetConcurrency = tc });
            long perPolicy = new FleetSimulator(load, model, r.GetValue(seed)).Steps;
            FleetTimeline[]? timelines = chartPath is not null || withTimeline ? [.. policies.Select(_ => new FleetTimeline(sampleS))] : null;
            var results = Output.WithProgress($"simulating {policies.Length} policies × {load.DurationSeconds / 3600:G4} h", asJson, p =>
                FleetComparison.Run(load, model, r.GetValue(seed), policies, (i, d, _) => p(i * perPolicy + d, policies.Length * perPolicy), timelines));
            double oracle = results[^1].ReplicaHours;
            if (chartPath is not null)
                FleetChart.Write(chartPath, results, timelines!, model.Slo,
                    $"{load.DurationSeconds / 3600:G4} h, peak {timelines![0].Rate.Max():N0} req/s, target {tc:G4} in flight a replica, {delay:G3} s starts, seed {r.GetValue(seed)}");
            if (asJson) WriteJson(results, oracle, load, model, r.GetValue(seed), withTimeline ? timelines : null, chartPath);
            else WriteTable(results, oracle);
            return 0;
        });
        return cmd;
    }

    private static LoadTrace Trace(string? spec, string? csvPath)
    {
        if (spec is null == csvPath is null) throw new FastServeException("args.invalid_trace", "give exactly one of --trace daily:MIN:MAX or --trace-csv FILE", "--trace");
        if (csvPath is not null)
        {
            var info = new FileInfo(csvPath);
            if (!info.Exists) throw new FastServeException("trace.not_found", "the trace file does not exist", csvPath);
            if (info.Length > TraceCsv.MaxBytes) throw new FastServeException("trace.invalid_csv", $"the trace file is over {TraceCsv.MaxBytes >> 20} MiB", csvPath);
            string text = File.ReadAllText(csvPath);
            try { return TraceCsv.Parse(text); }
            catch (FormatException e) { throw new FastServeException("trace.invalid_csv", e.Message, csvPath); }
        }
        var parts = spec!.Split(':');
        if (parts.Length == 3 && parts[0] == "daily"
            && double.TryParse(parts[1], NumberStyles.Float, CultureInfo.InvariantCulture, out double min)
            && double.TryParse(parts[2], NumberStyles.Float, CultureInfo.InvariantCulture, out double max)
            && min >= 0 && max >= min && max <= 1e8)
            return PiecewiseTrace.Daily(min, max);
        throw new FastServeException("args.invalid_trace", $"--trace must be daily:MIN:MAX with 0 <= MIN <= MAX <= 1e8 requests per second, not '{spec}'", "--trace");
    }

    private static void WriteTable(FleetRunResult[] results, double oracle)
    {
        var table = new Table().AddColumns("policy", "within SLO", "over SLO", "rejected", "replica-hours", "vs oracle", "scale events", "reversals", "max replicas");
        foreach (var x in results)
            table.AddRow(x.Policy, $"{x.WithinSloFraction:P3}", $"{x.OverSloFraction:P3}", $"{x.RejectedFraction:P3}", $"{x.ReplicaHours:F0}",
                oracle > 0 ? $"{x.ReplicaHours / oracle:F2}" : "-", $"{x.ScaleEvents}", $"{x.Reversals}", $"{x.MaxReplicas}");
        var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(Console.Out) });
        if (Console.IsOutputRedirected) console.Profile.Width = 160; // a file or pipe gets the whole table, not 80 columns
        console.Write(table);
    }

    private static void WriteJson(FleetRunResult[] results, double oracle, LoadTrace load, ReplicaModel model, int seed, FleetTimeline[]? timelines, string? chart) => Output.WriteJson(w =>
    {
        if (chart is not null) w.WriteString("chart", chart); else w.WriteNull("chart");
        w.WriteNumber("hours", load.DurationSeconds / 3600);
        w.WriteNumber("replica_capacity_rps", model.Capacity);
        w.WriteNumber("start_delay_median_s", model.StartDelayMedian);
        w.WriteNumber("slo_ms", model.Slo * 1000);
        w.WriteNumber("seed", seed);
        w.WriteStartArray("policies");
        foreach (var x in results)
        {
            w.WriteStartObject();
            w.WriteString("policy", x.Policy);
            w.WriteNumber("offered", x.Offered);
            w.WriteNumber("within_slo_fraction", x.WithinSloFraction);
            w.WriteNumber("over_slo_fraction", x.OverSloFraction);
            w.WriteNumber("rejected_fraction", x.RejectedFraction);
            w.WriteNumber("replica_hours", x.ReplicaHours);
            if (oracle > 0) w.WriteNumber("replica_hours_vs_oracle", x.ReplicaHours / oracle); else w.WriteNull("replica_hours_vs_oracle");
            w.WriteNumber("scale_events", x.ScaleEvents);
            w.WriteNumber("reversals", x.Reversals);
            w.WriteNumber("max_replicas", x.MaxReplicas);
            if (timelines is not null) WriteTimeline(w, timelines[Array.IndexOf(results, x)]);
            w.WriteEndObject();
        }
        w.WriteEndArray();
    });

    private static void WriteTimeline(System.Text.Json.Utf8JsonWriter w, FleetTimeline t)
    {
        w.WriteStartObject("timeline");
        w.WriteNumber("sample_s", t.SampleSeconds);
        foreach (var (name, values, scale) in new[] { ("t_s", t.Time, 1.0), ("rate_rps", t.Rate, 1.0), ("ready", t.Ready, 1.0), ("paid", t.Paid, 1.0), ("p99_ms", t.P99, 1000.0) })
        {
            w.WriteStartArray(name);
            // An infinite P99 (over 1 % refused) is null: JSON has no infinity.
            foreach (double v in values) if (double.IsFinite(v)) w.WriteNumberValue(Math.Round(v * scale, 3)); else w.WriteNullValue();
            w.WriteEndArray();
        }
        w.WriteEndObject();
    }
}
