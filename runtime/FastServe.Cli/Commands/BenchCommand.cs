using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using FastServe.Client;
using FastServe.Client.Load;
using FastServe.Protocol;
using FastServe.Runtime;
using Spectre.Console;

namespace FastServe.Cli.Commands;

/// <summary>
/// <c>fastserve bench [--host H] [--port P] (--rate R | --concurrency C | --profile ramp:A:B|daily:MIN:MAX | --sweep)</c>:
/// grammar-correction load against a replica or router over several connections, measured by
/// <see cref="LoadGenerator"/> (docs/client.md). A sweep runs increasing rates and reports the highest whose P99
/// end-to-end latency stays under the SLO with errors within the limit; <c>--chart</c> plots it.
/// </summary>
internal static class BenchCommand
{
    public static Command Create()
    {
        var host = ClientCommand.HostOption();
        var port = ClientCommand.PortOption();
        var connections = new Option<int>("--connections") { Description = "TCP connections; requests go round robin", DefaultValueFactory = _ => 8 };
        var rate = new Option<double?>("--rate") { Description = "Open loop: mean requests per second" };
        var concurrency = new Option<int?>("--concurrency") { Description = "Closed loop: requests kept in flight" };
        var profile = new Option<string?>("--profile") { Description = "Open loop with a changing rate over --duration: ramp:FROM:TO or daily:MIN:MAX" };
        var sweep = new Option<bool>("--sweep") { Description = "Run increasing rates and find the highest that meets the SLO" };
        var arrival = new Option<string>("--arrival") { Description = "Open-loop gaps: poisson or gamma", DefaultValueFactory = _ => "poisson" };
        var burstiness = new Option<double>("--burstiness") { Description = "--arrival gamma: squared CV of the gaps (> 1 burstier than Poisson)", DefaultValueFactory = _ => 1 };
        var duration = new Option<double>("--duration") { Description = "Measured seconds (per rate in a sweep)", DefaultValueFactory = _ => 30 };
        var warmup = new Option<double>("--warmup") { Description = "Seconds of load before measuring (excluded from the statistics)", DefaultValueFactory = _ => 5 };
        var drain = new Option<double>("--drain") { Description = "Seconds to wait after the window for measured requests; the rest count as unfinished", DefaultValueFactory = _ => 10 };
        var maxTokens = new Option<int>("--max-tokens") { Description = "Tokens generated per request", DefaultValueFactory = _ => 50 };
        var noIgnoreEos = new Option<bool>("--no-ignore-eos") { Description = "Stop at EOS (by default requests run to --max-tokens)" };
        var temperature = new Option<float>("--temperature") { Description = "Sampling temperature; 0 = greedy", DefaultValueFactory = _ => 0f };
        var deadline = new Option<uint>("--deadline-ms") { Description = "Per-request deadline, ms (0 = none)" };
        var noText = new Option<bool>("--no-text") { Description = "Ask the server for token ids only (no detokenized text)" };
        var whole = new Option<bool>("--whole")
        {
            Description = "Mark requests 'whole' (the output is used only with the final): a router may hold the output back and replay a request whose replica is lost mid-generation. TTFT through a router then measures the whole request",
        };
        var noThrottle = new Option<bool>("--no-throttle") { Description = "Turn off the client's adaptive throttling (on by default: requests the server keeps refusing for load are refused locally, as 'throttled')" };
        var throttleK = new Option<double>("--throttle-k") { Description = "Adaptive throttling's K: refuse locally once requests exceed K times the server's accepts (lower is more aggressive)", DefaultValueFactory = _ => 2 };
        var slo = new Option<double>("--slo-ms") { Description = "P99 end-to-end target, ms", DefaultValueFactory = _ => 1000 };
        var maxErrors = new Option<double>("--max-error-rate") { Description = "Largest share of failed or unfinished requests that still meets the SLO", DefaultValueFactory = _ => 0.01 };
        var seed = new Option<int>("--seed") { Description = "Seed of arrivals and prompt choice", DefaultValueFactory = _ => 1 };
        var sweepStart = new Option<double>("--sweep-start") { Description = "First rate of a sweep", DefaultValueFactory = _ => 10 };
        var sweepFactor = new Option<double>("--sweep-factor") { Description = "Multiply the rate by this between sweep points", DefaultValueFactory = _ => 2 };
        var sweepStep = new Option<double?>("--sweep-step") { Description = "Add this to the rate between sweep points (instead of --sweep-factor)" };
        var sweepMax = new Option<double>("--sweep-max") { Description = "Highest rate of the sweep grid", DefaultValueFactory = _ => 100_000 };
        var sweepFails = new Option<int>("--sweep-fails") { Description = "End the grid after this many failing rates in a row", DefaultValueFactory = _ => 2 };
        var sweepRefine = new Option<int>("--sweep-refine") { Description = "Bisection steps between the best rate and the next failing one", DefaultValueFactory = _ => 2 };
        var chart = new Option<string?>("--chart") { Description = "--sweep: write a PNG of latency percentiles against offered load" };
        var costPerHour = new Option<double?>("--cost-per-hour") { Description = "Price of an hour of the serving device; adds the device-time cost of 1,000 requests to the results" };
        var json = new Option<bool>("--json") { Description = "Print one JSON document instead of tables" };
        var outJson = new Option<string?>("--out-json") { Description = "Also write the JSON document to this file" };
        var prompt = new Option<string[]>("--prompt") { Description = "Use these prompts (repeatable) instead of the grammar-correction corpus, e.g. a one-token prompt to measure the frontend", AllowMultipleArgumentsPerToken = false };
        var (model, modelVersion, _) = ClientCommand.RouteOptions();

        var cmd = new Command("bench", "Load a FastServe server with grammar-correction requests: throughput, goodput, TTFT/TPOT/end-to-end percentiles, errors; sweeps for the highest rate meeting the SLO.");
        foreach (Option o in new Option[] { host, port, connections, rate, concurrency, profile, sweep, arrival, burstiness, duration, warmup, drain, maxTokens,
                     noIgnoreEos, temperature, deadline, noText, whole, noThrottle, throttleK, slo, maxErrors, seed, sweepStart, sweepFactor, sweepStep, sweepMax, sweepFails, sweepRefine,
                     chart, json, outJson, prompt, costPerHour, model, modelVersion }) cmd.Add(o);
        var security = new ClientSecurityOptions();
        security.AddTo(cmd);
        cmd.SetAction(async (r, ct) =>
        {
            // The generator's receive loops record outcomes and start follow-up requests without blocking, so they
            // can run on the epoll thread: no thread-pool hop per response, which keeps the generator's own CPU use
            // small beside a server on the same machine. Read once, before the first socket exists.
            Environment.SetEnvironmentVariable("DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS", "1");
            bool asJson = r.GetValue(json);
            double? fixedRate = r.GetValue(rate);
            int? conc = r.GetValue(concurrency);
            string? prof = r.GetValue(profile);
            bool doSweep = r.GetValue(sweep);
            int modes = (fixedRate is null ? 0 : 1) + (conc is null ? 0 : 1) + (prof is null ? 0 : 1) + (doSweep ? 1 : 0);
            if (modes != 1) throw new FastServeException("args.bench_mode", "give exactly one of --rate R, --concurrency C, --profile SPEC or --sweep", "--rate");
            if (fixedRate is { } fr && !(fr > 0 && fr <= 1e7)) throw new FastServeException("args.invalid_rate", "--rate must be between 0 and 10000000", "--rate");
            if (conc is { } c && (c < 1 || c > 1 << 20)) throw new FastServeException("args.invalid_concurrency", "--concurrency must be between 1 and 1048576", "--concurrency");
            double dur = r.GetValue(duration), wu = r.GetValue(warmup), dr = r.GetValue(drain), sloMs = r.GetValue(slo), maxErr = r.GetValue(maxErrors);
            if (!(dur >= 0.1 && dur <= 86_400)) throw new FastServeException("args.invalid_duration", "--duration must be between 0.1 and 86400 seconds", "--duration");
            if (!(wu >= 0 && wu <= 3600)) throw new FastServeException("args.invalid_warmup", "--warmup must be between 0 and 3600 seconds", "--warmup");
            if (!(dr >= 0 && dr <= 3600)) throw new FastServeException("args.invalid_drain", "--drain must be between 0 and 3600 seconds", "--drain");
            if (!(sloMs > 0 && sloMs <= 3_600_000)) throw new FastServeException("args.invalid_slo", "--slo-ms must be positive", "--slo-ms");
            if (!(maxErr >= 0 && maxErr <= 1)) throw new FastServeException("args.invalid_error_rate", "--max-error-rate must be between 0 and 1", "--max-error-rate");
            double? cost = r.GetValue(costPerHour);
            if (cost is { } cph && !(cph >= 0 && cph <= 1e6)) throw new FastServeException("args.invalid_cost", "--cost-per-hour must be between 0 and 1000000", "--cost-per-hour");
            int conns = r.GetValue(connections);
            if (conns < 1 || conns > 4096) throw new FastServeException("args.invalid_connections", "--connections must be between 1 and 4096", "--connections");
            int n = r.GetValue(maxTokens);
            if (n < 1) throw new FastServeException("args.invalid_max_tokens", "--max-tokens must be at least 1", "--max-tokens");
            var kind = r.GetValue(arrival) switch
            {
                "poisson" => ArrivalKind.Poisson,
                "gamma" => ArrivalKind.Gamma,
                var a => throw new FastServeException("args.invalid_arrival", $"--arrival accepts poisson or gamma, not '{a}'", "--arrival"),
            };
            double b = r.GetValue(burstiness);
            if (!(b > 0 && b <= 1000)) throw new FastServeException("args.invalid_burstiness", "--burstiness must be between 0 and 1000", "--burstiness");
            if (kind == ArrivalKind.Poisson && r.GetResult(burstiness) is { Implicit: false })
                throw new FastServeException("args.invalid_burstiness", "--burstiness needs --arrival gamma", "--burstiness");
            RateProfile? rp = null;
            if (prof is not null)
            {
                try { rp = RateProfile.Parse(prof, dur); }
                catch (FormatException e) { throw new FastServeException("args.invalid_profile", e.Message, "--profile"); }
                if (wu > 0 && !(rp.Rate(0) > 0))
                    throw new FastServeException("args.invalid_profile", "a profile starting at 0 req/s needs --warmup 0", "--profile");
            }
            double k = r.GetValue(throttleK);
            if (!(k >= 1 && k <= 1000)) throw new FastServeException("args.invalid_throttle_k", "--throttle-k must be between 1 and 1000", "--throttle-k");
            bool throttle = !r.GetValue(noThrottle);
            if (!throttle && r.GetResult(throttleK) is { Implicit: false })
                throw new FastServeException("args.invalid_throttle_k", "--throttle-k has no effect with --no-throttle", "--throttle-k");
            string? chartPath = r.GetValue(chart);
            if (chartPath is not null && !doSweep) throw new FastServeException("args.chart_needs_sweep", "--chart plots a sweep: add --sweep", "--chart");

            var prompts = r.GetValue(prompt);
            if (prompts is { Length: > 0 } && prompts.Any(string.IsNullOrEmpty))
                throw new FastServeException("args.invalid_prompt", "--prompt must not be empty", "--prompt");
            var (apiKey, tls) = security.Read(r);
            var options = new BenchOptions
            {
                Prompts = prompts is { Length: > 0 } ? prompts : null,
                Host = r.GetValue(host)!,
                Port = ClientCommand.ParsePort(r.GetValue(port)),
                Connections = conns,
                Rate = fixedRate,
                Concurrency = conc,
                Profile = rp,
                Arrival = kind,
                Burstiness = b,
                Duration = TimeSpan.FromSeconds(dur),
                Warmup = TimeSpan.FromSeconds(wu),
                DrainLimit = TimeSpan.FromSeconds(dr),
                Params = RequestParams.Default with
                {
                    MaxTokens = n,
                    IgnoreEos = !r.GetValue(noIgnoreEos),
                    Temperature = r.GetValue(temperature),
                    DeadlineMs = r.GetValue(deadline),
                    NoText = r.GetValue(noText),
                    Whole = r.GetValue(whole),
                    Model = ClientCommand.CheckLabel(r.GetValue(model), "--model"),
                    ModelVersion = ClientCommand.CheckLabel(r.GetValue(modelVersion), "--model-version"),
                },
                SloMs = sloMs,
                MaxErrorRate = maxErr,
                CostPerHour = cost,
                Seed = r.GetValue(seed),
                ClientOptions = new FastServeClientOptions
                {
                    ClientName = "fastserve-bench",
                    ApiKey = apiKey,
                    Tls = tls,
                    AdaptiveThrottling = throttle ? AdaptiveThrottleOptions.Default with { K = k } : null,
                },
            };
            SweepOptions? sweepOptions = null;
            if (doSweep)
            {
                sweepOptions = new SweepOptions
                {
                    Start = r.GetValue(sweepStart),
                    Factor = r.GetValue(sweepFactor),
                    Step = r.GetValue(sweepStep),
                    Max = r.GetValue(sweepMax),
                    StopAfterFailures = r.GetValue(sweepFails),
                    Refine = r.GetValue(sweepRefine),
                };
                try { _ = new SweepPlanner(sweepOptions); }
                catch (ArgumentOutOfRangeException e) { throw new FastServeException("args.invalid_sweep", e.Message, "--sweep"); }
            }

            string server = await ProbeServer(options, ct);
            var points = new List<BenchResult>();
            BenchResult? best;
            try
            {
                if (sweepOptions is null)
                {
                    var res = await RunWithProgress(Label(options, fixedRate), asJson, p => LoadGenerator.RunAsync(options, p, ct));
                    points.Add(res);
                    if (!asJson) Output.Info(false, Line(res, options.CostPerHour));
                    best = res.MeetsSlo ? res : null;
                }
                else
                {
                    var s = await Sweep.RunAsync(sweepOptions, rps => RunWithProgress(Label(options, rps), asJson,
                        p => LoadGenerator.RunAsync(options with { Rate = rps }, p, ct)), res =>
                    {
                        points.Add(res);
                        if (!asJson) Output.Info(false, Line(res, options.CostPerHour));
                    });
                    best = s.Best;
                }
            }
            catch (FastServeClientException e)
            {
                throw new FastServeException(e.Code, e.Message, $"{options.Host}:{options.Port}");
            }

            if (r.GetValue(outJson) is { } file)
            {
                using var fs = File.Create(file);
                using var w = new Utf8JsonWriter(fs, new JsonWriterOptions { Indented = true });
                w.WriteStartObject();
                BenchJson.WriteDocument(w, options, server, doSweep, points, best);
                w.WriteEndObject();
            }
            if (chartPath is not null) BenchChart.Write(chartPath, points, best, sloMs, $"{server} at {options.Host}:{options.Port}");
            if (asJson) Output.WriteJson(w => BenchJson.WriteDocument(w, options, server, doSweep, points, best));
            else
            {
                var stdout = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(Console.Out) });
                if (Console.IsOutputRedirected) stdout.Profile.Width = 240; // a file or pipe: keep one row per line
                stdout.Write(Table(points, doSweep ? best : null));
                if (doSweep)
                    Output.Info(false, best is null
                        ? $"[red]no rate met P99 < {sloMs:F0} ms with at most {maxErr:P1} errors[/]"
                        : $"[green]highest rate meeting P99 < {sloMs:F0} ms: {best.TargetRps:F1} req/s[/] (achieved {best.AchievedRps:F1}, goodput {best.GoodputRps:F1}, {best.CompletionTokensPerSecond:F0} tok/s out)");
                if (chartPath is not null) Output.Info(false, $"[grey]chart: {Markup.Escape(chartPath)}[/]");
            }
            return 0;
        });
        return cmd;
    }

    // Connects once to fail fast with a clear error and to learn the server's name.
    private static async Task<string> ProbeServer(BenchOptions o, CancellationToken ct)
    {
        await using var c = await ClientCommand.Connect(o.Host, o.Port, o.ClientOptions!, ct);
        return c.Server.ServerName;
    }

    private static string Label(BenchOptions o, double? rate) =>
        o.Concurrency is { } c ? $"concurrency {c}" : o.Profile is { } p ? p.Spec : $"{rate:F1} req/s";

    // Never blocks a thread on the run: with inline socket completions the continuations here may be running on a
    // socket event thread, and blocking that thread would stall every connection it serves.
    private static async Task<BenchResult> RunWithProgress(string label, bool json, Func<Action<BenchProgress>, Task<BenchResult>> run)
    {
        if (!Output.Interactive(json)) return await run(_ => { });
        BenchResult result = null!;
        await Output.Err.Progress()
            .AutoClear(true)
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new ElapsedTimeColumn())
            .StartAsync(async ctx =>
            {
                var task = ctx.AddTask(Markup.Escape(label), maxValue: 1000);
                result = await run(p =>
                {
                    task.Value = p.Fraction * 1000;
                    task.Description = Markup.Escape($"{label} | sent {p.Sent}, done {p.Completed}, in flight {p.InFlight}, errors {p.Errors}");
                });
                task.Value = task.MaxValue;
            });
        return result;
    }

    private static string Ms(double ms) => double.IsNaN(ms) ? "-" : double.IsPositiveInfinity(ms) ? "∞" : ms.ToString(ms < 10 ? "F2" : "F0", CultureInfo.InvariantCulture);

    private static string Line(BenchResult p, double? costPerHour)
    {
        string cost = costPerHour is { } c
            ? $" | device {p.ServerMeanUs.GetValueOrDefault("device", double.NaN) / 1000:F2} ms/request, {p.CostPer1000(c):G4} per 1,000 requests"
            : "";
        string target = p.TargetRps is { } t ? $"offered {t:F1} req/s" : $"concurrency {p.Concurrency}";
        string errors = p.Errors.Count == 0 ? "" : " | errors " + string.Join(", ", p.Errors.Select(e => $"{e.Key} {e.Value}"));
        string refusals = p.Throttled == 0 && p.Rejection.Count == 0 ? ""
            : $" | throttled {p.Throttled}, P99 admitted {Ms(p.AdmittedEndToEnd.P99)} ms, rejection p50/p99 {Ms(p.Rejection.P50)}/{Ms(p.Rejection.P99)} ms";
        return $"{(p.MeetsSlo ? "[green]pass[/]" : "[red]fail[/]")} {target} | achieved {p.AchievedRps:F1} req/s, goodput {p.GoodputRps:F1} | " +
            $"TTFT p50/p99 {Ms(p.Ttft.P50)}/{Ms(p.Ttft.P99)} ms | TPOT p50/p99 {Ms(p.Tpot.P50)}/{Ms(p.Tpot.P99)} ms | " +
            $"E2E p50/p90/p99/p99.9 {Ms(p.EndToEnd.P50)}/{Ms(p.EndToEnd.P90)}/{Ms(p.EndToEnd.P99)}/{Ms(p.EndToEnd.P999)} ms | " +
            $"{p.PromptTokensPerSecond:F0}/{p.CompletionTokensPerSecond:F0} tok/s in/out" + Markup.Escape(cost) + refusals + Markup.Escape(errors);
    }

    private static Table Table(List<BenchResult> points, BenchResult? best)
    {
        var t = new Table().Border(TableBorder.Rounded);
        foreach (var h in new[] { "req/s offered", "achieved", "goodput", "TTFT p50/p99", "TPOT p50/p99", "E2E p50/p90/p99/p99.9", "tok/s out", "errors",
                     "throttled", "P99 admitted", "reject p50/p99", "SLO" })
            t.AddColumn(new TableColumn(h).RightAligned());
        foreach (var p in points.OrderBy(p => p.TargetRps ?? 0))
        {
            string offered = p.TargetRps is { } rps ? rps.ToString("F1", CultureInfo.InvariantCulture) : $"C={p.Concurrency}";
            string slo = p.MeetsSlo ? (ReferenceEquals(p, best) ? "[green]best[/]" : "[green]pass[/]") : "[red]fail[/]";
            t.AddRow(offered, p.AchievedRps.ToString("F1", CultureInfo.InvariantCulture), p.GoodputRps.ToString("F1", CultureInfo.InvariantCulture),
                $"{Ms(p.Ttft.P50)}/{Ms(p.Ttft.P99)}", $"{Ms(p.Tpot.P50)}/{Ms(p.Tpot.P99)}",
                $"{Ms(p.EndToEnd.P50)}/{Ms(p.EndToEnd.P90)}/{Ms(p.EndToEnd.P99)}/{Ms(p.EndToEnd.P999)}",
                p.CompletionTokensPerSecond.ToString("F0", CultureInfo.InvariantCulture), p.ErrorRate.ToString("P2", CultureInfo.InvariantCulture),
                p.Throttled.ToString(CultureInfo.InvariantCulture), Ms(p.AdmittedEndToEnd.P99), $"{Ms(p.Rejection.P50)}/{Ms(p.Rejection.P99)}", slo);
        }
        t.Caption("latencies in ms, from each request's intended send time");
        return t;
    }
}
