using System.CommandLine;
using System.Text.Json;
using FastServe.Protocol.Stats;
using FastServe.Runtime;
using FastServe.Scheduler.Engine;
using FastServe.Scheduler.Execution;
using FastServe.Scheduler.Load;
using Spectre.Console;

namespace FastServe.Cli.Commands;

/// <summary>
/// <c>fastserve bench-engine [--backend cpu|sim] (--rate R | --sweep)</c>: open-loop arrivals into the in-process
/// engine. A sweep finds the highest rate whose P99 end-to-end latency stays within the SLO: it doubles the rate
/// until a point fails, then bisects between the last pass and the first failure.
/// </summary>
internal static class BenchEngineCommand
{
    public static Command Create()
    {
        var e = new EngineCliOptions();
        var rate = new Option<double?>("--rate") { Description = "Offered load in requests per second (Poisson arrivals)" };
        var sweep = new Option<bool>("--sweep") { Description = "Search for the highest rate that meets the SLO" };
        var duration = new Option<double>("--duration") { Description = "Measured seconds per rate", DefaultValueFactory = _ => 10 };
        var warmup = new Option<double>("--warmup") { Description = "Seconds of load before measuring", DefaultValueFactory = _ => 2 };
        var inTokens = new Option<int>("--in") { Description = "Prompt tokens per request", DefaultValueFactory = _ => 50 };
        var outTokens = new Option<int>("--out") { Description = "Generated tokens per request", DefaultValueFactory = _ => 50 };
        var shared = new Option<int>("--shared-prefix") { Description = "Leading prompt tokens shared by every request (an instruction prefix)" };
        var slo = new Option<double>("--slo-ms") { Description = "P99 end-to-end target in milliseconds", DefaultValueFactory = _ => 1000 };
        var deadline = new Option<double?>("--deadline-ms") { Description = "Per-request deadline in milliseconds (none by default)" };
        var start = new Option<double?>("--sweep-start") { Description = "First rate of a sweep (default: 1 on cpu, 100 on sim)" };
        var batchFraction = new Option<double>("--batch-fraction") { Description = "Fraction of requests sent with priority batch (the rest interactive)" };
        var seed = new Option<int>("--seed") { Description = "Seed of arrivals and prompts", DefaultValueFactory = _ => 1 };
        var cmd = new Command("bench-engine", "Measure the engine under open-loop load: throughput, TTFT and end-to-end percentiles, goodput, scheduler cost.");
        e.AddTo(cmd);
        foreach (Option o in new Option[] { rate, sweep, duration, warmup, inTokens, outTokens, shared, slo, deadline, start, batchFraction, seed }) cmd.Add(o);
        cmd.SetAction(r =>
        {
            bool json = e.Json(r);
            double? fixedRate = r.GetValue(rate);
            bool doSweep = r.GetValue(sweep);
            if (fixedRate is null == !doSweep) throw new FastServeException("args.rate_or_sweep", "give exactly one of --rate R or --sweep", "--rate");
            if (fixedRate is { } fr && !(fr > 0 && fr <= 1e6)) throw new FastServeException("args.invalid_rate", "--rate must be between 0 and 1000000", "--rate");
            double dur = r.GetValue(duration), wu = r.GetValue(warmup), sloMs = r.GetValue(slo);
            if (!(dur >= 0.5 && dur <= 3600)) throw new FastServeException("args.invalid_duration", "--duration must be between 0.5 and 3600 seconds", "--duration");
            if (!(wu >= 0 && wu <= 600)) throw new FastServeException("args.invalid_warmup", "--warmup must be between 0 and 600 seconds", "--warmup");
            if (!(sloMs > 0 && sloMs <= 3_600_000)) throw new FastServeException("args.invalid_slo", "--slo-ms must be positive", "--slo-ms");
            int inT = r.GetValue(inTokens), outT = r.GetValue(outTokens), sh = r.GetValue(shared);
            if (inT < 1 || inT > 1 << 16) throw new FastServeException("args.invalid_in", "--in must be between 1 and 65536", "--in");
            if (outT < 1 || outT > 1 << 16) throw new FastServeException("args.invalid_out", "--out must be between 1 and 65536", "--out");
            if (sh < 0 || sh > inT) throw new FastServeException("args.invalid_shared_prefix", "--shared-prefix must be between 0 and --in", "--shared-prefix");
            double? dl = r.GetValue(deadline);
            if (dl is { } d && !(d > 0 && d <= 86_400_000)) throw new FastServeException("args.invalid_deadline", "--deadline-ms must be positive", "--deadline-ms");

            using var session = e.Open(r);
            var engine = session.Engine!;
            double bf = r.GetValue(batchFraction);
            if (!(bf >= 0 && bf <= 1)) throw new FastServeException("args.invalid_batch_fraction", "--batch-fraction must be between 0 and 1", "--batch-fraction");
            var baseOpts = new OpenLoopOptions
            {
                Rate = fixedRate ?? 1,
                Duration = TimeSpan.FromSeconds(dur),
                Warmup = TimeSpan.FromSeconds(wu),
                InputTokens = inT,
                OutputTokens = outT,
                SharedPrefixTokens = sh,
                SloSeconds = sloMs / 1000,
                Deadline = dl is { } x ? TimeSpan.FromMilliseconds(x) : null,
                Seed = r.GetValue(seed),
                BatchFraction = r.GetValue(batchFraction),
                DrainLimit = TimeSpan.FromSeconds(Math.Max(10, 3 * sloMs / 1000)),
            };
            var points = new List<OpenLoopResult>();
            OpenLoopResult RunAt(double rps) => Output.WithProgress($"{rps:F1} req/s", json, p =>
            {
                var res = OpenLoop.Run(engine, baseOpts with { Rate = rps }, frac => p((long)(frac * 1000), 1000));
                points.Add(res);
                if (!json) Output.Info(false, Line(res, baseOpts.SloSeconds));
                return res;
            });

            OpenLoopResult? best = null;
            if (!doSweep) best = RunAt(fixedRate!.Value);
            else
            {
                double lo = 0, hi = 0, rps = r.GetValue(start) ?? (session.Executor!.Name == "sim" ? 100 : 1);
                while (hi == 0 && rps <= 1e6)
                {
                    var res = RunAt(rps);
                    if (res.MeetsSlo(baseOpts.SloSeconds)) { lo = rps; best = res; rps *= 2; }
                    else hi = rps;
                }
                for (int i = 0; i < 4 && hi > 0 && lo > 0; i++)
                {
                    double mid = (lo + hi) / 2;
                    var res = RunAt(mid);
                    if (res.MeetsSlo(baseOpts.SloSeconds)) { lo = mid; best = res; } else hi = mid;
                }
            }

            if (json)
            {
                Output.WriteJson(w =>
                {
                    w.WriteString("backend", session.Executor!.Name);
                    w.WriteBoolean("overlap", engine.Overlap);
                    w.WriteNumber("max_batched_tokens", engine.MaxBatchedTokens);
                    w.WriteNumber("max_seqs", engine.MaxSeqs);
                    w.WriteNumber("in_tokens", inT);
                    w.WriteNumber("out_tokens", outT);
                    w.WriteNumber("slo_ms", sloMs);
                    if (session.Executor is ModelStepExecutor graphs)
                    {
                        // Over the whole run (warm-ups and every rate): how decode steps ran on a graph-capable backend.
                        w.WriteNumber("graph_captures", graphs.GraphCaptures);
                        w.WriteNumber("graph_replays", graphs.GraphReplays);
                        w.WriteNumber("graph_fallbacks", graphs.GraphFallbacks);
                        w.WriteNumber("graph_pad_rows", graphs.GraphPadRows);
                    }
                    w.WriteStartArray("points");
                    foreach (var p in points) WritePoint(w, p, baseOpts.SloSeconds);
                    w.WriteEndArray();
                    if (best is not null)
                    {
                        w.WritePropertyName("best");
                        WritePoint(w, best, baseOpts.SloSeconds);
                    }
                    else w.WriteNull("best");
                });
            }
            else
            {
                Output.Info(false, best is null
                    ? $"[red]no rate met P99 ≤ {sloMs:F0} ms[/]"
                    : $"[green]highest rate meeting P99 ≤ {sloMs:F0} ms: {best.OfferedRate:F1} req/s[/] (achieved {best.AchievedRate:F1}, {best.GeneratedTokensPerSecond:F0} tok/s, device idle {best.DeviceIdleFraction:P1})");
                if (session.Executor is ModelStepExecutor { GraphCaptures: > 0 } g)
                    Output.Info(false, $"CUDA graphs: {g.GraphCaptures} captured, {g.GraphReplays} decode steps replayed, {g.GraphFallbacks} fell back to op by op, {g.GraphPadRows} dummy rows padded batches to graph sizes");
            }
            return 0;
        });
        return cmd;
    }

    private static string Line(OpenLoopResult p, double slo) =>
        $"{(p.MeetsSlo(slo) ? "[green]pass[/]" : "[red]fail[/]")} offered {p.OfferedRate:F1} req/s | achieved {p.AchievedRate:F1} req/s, goodput {p.Goodput:F1} | " +
        $"TTFT p50/p99 {Ms(p.Ttft.P50)}/{Ms(p.Ttft.P99)} ms | E2E p50/p90/p99 {Ms(p.EndToEnd.P50)}/{Ms(p.EndToEnd.P90)}/{Ms(p.EndToEnd.P99)} ms | " +
        $"{p.MeanRowsPerStep:F1} rows/step, forward {p.ForwardPerStepMean * 1e3:F2} ms, scheduler CPU {p.SchedulerCpuPerStepMean * 1e6:F0} µs/step (p99 {p.SchedulerCpuPerStepP99 * 1e6:F0}) | " +
        $"device idle {p.DeviceIdleFraction:P1}" + (p.Overloaded + p.Unfinished + p.OtherErrors + p.DeadlineExceeded > 0
            ? $" | overloaded {p.Overloaded}, deadline {p.DeadlineExceeded}, unfinished {p.Unfinished}, errors {p.OtherErrors}; " +
              $"admitted E2E p99 {Ms(p.AdmittedEndToEnd.P99)} ms, wasted rows {p.WastedRows} of {p.RowsComputed} ({string.Join(", ", p.ErrorCodes.Select(c => $"{c.Key} {c.Value}"))})" : "");

    private static string Ms(double s) => double.IsNaN(s) ? "-" : double.IsPositiveInfinity(s) ? "∞" : (s * 1000).ToString("F0");

    private static void WritePoint(Utf8JsonWriter w, OpenLoopResult p, double slo)
    {
        static void Num(Utf8JsonWriter w, string name, double v)
        {
            if (double.IsFinite(v)) w.WriteNumber(name, v); else w.WriteNull(name);
        }
        static void Pct(Utf8JsonWriter w, string name, LatencySummary q)
        {
            w.WriteStartObject(name);
            Num(w, "p50_ms", q.P50 * 1000);
            Num(w, "p90_ms", q.P90 * 1000);
            Num(w, "p99_ms", q.P99 * 1000);
            Num(w, "max_ms", q.Max * 1000);
            w.WriteNumber("count", q.Count);
            w.WriteEndObject();
        }
        w.WriteStartObject();
        w.WriteBoolean("meets_slo", p.MeetsSlo(slo));
        Num(w, "offered_rps", p.OfferedRate);
        Num(w, "achieved_rps", p.AchievedRate);
        Num(w, "goodput_rps", p.Goodput);
        Num(w, "generated_tokens_per_second", p.GeneratedTokensPerSecond);
        w.WriteNumber("arrived", p.Arrived);
        w.WriteNumber("finished", p.Finished);
        w.WriteNumber("overloaded", p.Overloaded);
        w.WriteNumber("deadline_exceeded", p.DeadlineExceeded);
        w.WriteNumber("unfinished", p.Unfinished);
        w.WriteNumber("errors", p.OtherErrors);
        Pct(w, "ttft", p.Ttft);
        Pct(w, "e2e", p.EndToEnd);
        Pct(w, "queue_wait", p.QueueWait);
        w.WriteNumber("steps", p.Steps);
        Num(w, "mean_rows_per_step", p.MeanRowsPerStep);
        Num(w, "mean_sequences_per_step", p.MeanSequencesPerStep);
        Num(w, "forward_ms_per_step", p.ForwardPerStepMean * 1000);
        Num(w, "scheduler_cpu_us_per_step", p.SchedulerCpuPerStepMean * 1e6);
        Num(w, "scheduler_cpu_us_per_step_p99", p.SchedulerCpuPerStepP99 * 1e6);
        Num(w, "device_idle_fraction", p.DeviceIdleFraction);
        Num(w, "prefix_hit_rate", p.PrefixHitRate);
        w.WriteNumber("preemptions", p.Preemptions);
        Pct(w, "e2e_admitted", p.AdmittedEndToEnd);
        w.WriteStartObject("error_codes");
        foreach (var (code, n) in p.ErrorCodes) w.WriteNumber(code, n);
        w.WriteEndObject();
        w.WriteNumber("rows_computed", p.RowsComputed);
        w.WriteNumber("wasted_rows", p.WastedRows);
        w.WriteNumber("interactive_arrived", p.InteractiveArrived);
        w.WriteNumber("interactive_good", p.InteractiveGood);
        w.WriteNumber("batch_arrived", p.BatchArrived);
        w.WriteNumber("batch_good", p.BatchGood);
        Num(w, "allocated_bytes_per_token", p.AllocatedBytesPerToken);
        w.WriteEndObject();
    }
}
