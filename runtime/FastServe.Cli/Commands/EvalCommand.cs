using System.CommandLine;
using System.Diagnostics;
using System.Text.Json;
using FastServe.Client;
using FastServe.Eval;
using FastServe.Runtime;
using FastServe.Runtime.Model;
using FastServe.Runtime.Quantization;
using Spectre.Console;

namespace FastServe.Cli.Commands;

/// <summary>
/// <c>fastserve eval --data test.jsonl [--model DIR ...] [--quantize none|fp8 ...] [--scheme ...] [--kv-dtype ...]
/// [--host H --port P]</c>: judges grammar corrections (docs/eval.md). One run per combination of model, weight
/// format and KV dtype, through the batching engine, plus one against a running server when --host or --port is
/// given; every run and the copy-the-input baseline side by side in one table (or one JSON object). Bad data lines
/// get an error line each (stable code) and are left out; the runs go on.
/// </summary>
internal static class EvalCommand
{
    /// <summary>Most examples one run holds (the data is read once and judged by every run).</summary>
    public const int MaxExamples = 1_000_000;

    public static Command Create()
    {
        var e = new EngineCliOptions(offline: true);
        var data = new Option<string>("--data") { Description = "JSON Lines file, one {\"source\": ..., \"target\": ...} per line (e.g. tools/gec/data/test.jsonl)", Required = true };
        var models = new Option<string[]>("--model", "-m") { Description = "Model directory (repeatable). Default: the built-in default model, unless only a server is judged", DefaultValueFactory = _ => [] };
        var quantize = new Option<string[]>("--quantize") { Description = "Weights: none (as stored) or fp8 (repeatable: one run each)", DefaultValueFactory = _ => ["none"] };
        var scheme = new Option<string[]>("--scheme") { Description = "FP8 scale granularity for --quantize fp8: per-channel or per-tensor (repeatable)", DefaultValueFactory = _ => ["per-channel"] };
        var kv = new Option<string[]>("--kv-dtype") { Description = "KV cache storage: f32 or bf16 (repeatable; default f32, bf16 on cuda)", DefaultValueFactory = _ => ["f32"] };
        var host = new Option<string?>("--host") { Description = "Also judge the server (replica or router) at this host" };
        var port = new Option<int>("--port") { Description = "Also judge the server on this TCP port (host default 127.0.0.1)", DefaultValueFactory = _ => 7700 };
        var serverModel = new Option<string?>("--server-model") { Description = "The model (or a router's cascade tier) the server run's requests name" };
        var serverVersion = new Option<string?>("--server-model-version") { Description = "The model version the server run's requests name" };
        var limit = new Option<int>("--limit") { Description = "Use only the first N valid examples (0 = all)" };
        var maxTokens = new Option<int>("--max-tokens") { Description = "Most tokens generated per example", DefaultValueFactory = _ => 96 };
        var concurrency = new Option<int>("--concurrency") { Description = "Examples in flight at once in each run", DefaultValueFactory = _ => 256 };
        var results = new Option<string?>("--results") { Description = "Write every example's judgement, run by run, to this JSON Lines file" };
        var cascade = new Option<bool>("--cascade") { Description = "With two --model (cheap first, then strong): the cascade that escalates low-confidence cheap answers, at a range of thresholds" };
        var cmd = new Command("eval", "Judge grammar corrections: exact match, edit precision/recall/F0.5, copy rate and log-probabilities, for several models or settings side by side.");
        e.AddTo(cmd, variants: true);
        foreach (Option o in new Option[] { data, models, quantize, scheme, kv, host, port, serverModel, serverVersion, limit, maxTokens, concurrency, results, cascade }) cmd.Add(o);
        cmd.SetAction(r =>
        {
            bool json = e.Json(r);
            int n = r.GetValue(maxTokens), conc = r.GetValue(concurrency), lim = r.GetValue(limit);
            if (n < 1 || n > 4096) throw new FastServeException("args.invalid_max_tokens", "--max-tokens must be between 1 and 4096", "--max-tokens");
            if (conc < 1 || conc > 4096) throw new FastServeException("args.invalid_concurrency", "--concurrency must be between 1 and 4096", "--concurrency");
            if (lim < 0) throw new FastServeException("args.invalid_limit", "--limit must be ≥ 0", "--limit");
            bool server = r.GetResult(host) is { Implicit: false } || r.GetResult(port) is { Implicit: false };
            var variants = Variants(r, e, r.GetValue(models)!, r.GetValue(quantize)!, r.GetValue(scheme)!, r.GetValue(kv)!, r.GetResult(kv) is null or { Implicit: true }, server);
            var (examples, errors) = ReadData(r.GetValue(data)!, lim);
            var runs = new List<(string Label, EngineVariant? Variant, EvalSummary Summary)>();
            var judgedRuns = new List<EvalJudgement[]>();
            bool doCascade = r.GetValue(cascade);
            if (doCascade && (r.GetValue(models)!.Distinct().Count() != 2 || server))
                throw new FastServeException("args.invalid_cascade", "--cascade takes exactly two --model (the cheap one first, then the strong one) and no server", "--cascade");
            using var sink = r.GetValue(results) is { } path ? new ResultsFile(path) : null;
            foreach (var err in errors) sink?.WriteError(err);

            foreach (var v in variants)
            {
                string label = Label(v);
                using var session = e.Open(r, variant: v);
                var target = new EngineEvalTarget(session.Engine!, session.Model!.Tokenizer, n);
                var (summary, judged) = Run(label, target, examples, conc, sink, json);
                runs.Add((label, v, summary));
                judgedRuns.Add(judged);
            }
            if (server)
            {
                string h = r.GetValue(host) ?? "127.0.0.1";
                int p = ClientCommand.ParsePort(r.GetValue(port));
                string? sm = ClientCommand.CheckLabel(r.GetValue(serverModel), "--server-model");
                string? sv = ClientCommand.CheckLabel(r.GetValue(serverVersion), "--server-model-version");
                string label = $"server {h}:{p}{(sm is null ? "" : $" {sm}")}{(sv is null ? "" : $"@{sv}")}";
                var client = ClientCommand.Connect(h, p, new FastServeClientOptions { ClientName = "fastserve-eval" }, CancellationToken.None).GetAwaiter().GetResult();
                try
                {
                    runs.Add((label, null, Run(label, new ServerEvalTarget(client, n) { Model = sm, ModelVersion = sv }, examples, conc, sink, json).Item1));
                }
                finally { client.DisposeAsync().AsTask().GetAwaiter().GetResult(); }
            }
            var baseline = Baseline(examples);
            var cascades = doCascade ? Cascades(variants, runs, judgedRuns) : [];
            Report(r.GetValue(data)!, examples.Count, errors, runs, baseline, cascades, json);
            return 0;
        });
        return cmd;
    }

    private static List<EngineVariant> Variants(ParseResult r, EngineCliOptions e, string[] models, string[] quantize, string[] schemes, string[] kvs,
        bool kvImplicit, bool server)
    {
        if (models.Length == 0 && !server) models = [ModelOptions.ResolveDefault()];
        if (kvImplicit && r.GetValue(e.Model.Backend) == "cuda") kvs = ["bf16"];
        var weights = new List<Fp8LoadOptions?>();
        foreach (string q in quantize.Distinct())
        {
            if (q == "none") weights.Add(null);
            else if (q == "fp8") weights.AddRange(schemes.Distinct().Select(s => (Fp8LoadOptions?)new Fp8LoadOptions(ModelOptions.ParseScheme(s), QuantizeLayers.All)));
            else throw new FastServeException("args.invalid_quantize", $"--quantize accepts none or fp8, not '{q}'", "--quantize");
        }
        var list = new List<EngineVariant>();
        foreach (string m in models.Distinct())
        {
            if (!File.Exists(Path.Combine(m, "config.json"))) throw new FastServeException("model.not_found", "no config.json in the model directory", m);
            foreach (var w in weights)
                foreach (string k in kvs.Distinct())
                    list.Add(new EngineVariant(m, w, GenerateCommand.ParseKvDType(k)));
        }
        return list;
    }

    private static string Label(EngineVariant v)
    {
        string name = Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath(v.ModelDir)));
        string weights = v.Quantize is null ? "stored" : v.Quantize.Scheme == Fp8Scheme.PerTensor ? "fp8 per-tensor" : "fp8 per-channel";
        return $"{name} · {weights} · kv {v.KvDType.ToString().ToLowerInvariant()}";
    }

    private static (List<EvalExample>, List<EvalDataError>) ReadData(string path, int limit)
    {
        if (!File.Exists(path)) throw new FastServeException("eval.data_not_found", "the data file does not exist", path);
        var examples = new List<EvalExample>();
        var errors = new List<EvalDataError>();
        using var s = File.OpenRead(path);
        foreach (var (ex, err) in EvalData.Read(s))
        {
            if (err is not null)
            {
                errors.Add(err);
                Console.Error.WriteLine(EvalData.Describe(err));
                continue;
            }
            if (limit > 0 && examples.Count == limit) break;
            if (examples.Count == MaxExamples) throw new FastServeException("eval.too_many_examples", $"the data has more than {MaxExamples} examples; use --limit", path);
            examples.Add(ex!);
        }
        if (examples.Count == 0) throw new FastServeException("eval.no_examples", "the data has no valid example", path);
        return (examples, errors);
    }

    private static (EvalSummary, EvalJudgement[]) Run(string label, IEvalTarget target, List<EvalExample> examples, int concurrency, ResultsFile? sink, bool json)
    {
        var score = new EvalScore();
        var judged = new EvalJudgement[examples.Count];
        var sw = Stopwatch.StartNew();
        Output.WithProgress(label, json, progress =>
        {
            long done = 0;
            using var gate = new SemaphoreSlim(concurrency);
            var tasks = new Task[examples.Count];
            for (int i = 0; i < examples.Count; i++)
            {
                gate.Wait();
                int k = i;
                tasks[i] = Task.Run(async () =>
                {
                    try
                    {
                        var output = await target.RunAsync(GecFormat.Prompt(examples[k].Source), CancellationToken.None).ConfigureAwait(false);
                        var j = EvalJudgement.Of(examples[k], output);
                        judged[k] = j;
                        score.Add(j);
                        progress(Interlocked.Increment(ref done), examples.Count);
                    }
                    finally { gate.Release(); }
                });
            }
            Task.WaitAll(tasks);
        });
        var summary = score.Summarize(sw.Elapsed.TotalSeconds);
        if (sink is not null) foreach (var j in judged) sink.Write(label, j);
        var failed = judged.Where(j => !j.Output.Finished).ToArray();
        if (failed.Length > 0)
            Console.Error.WriteLine($"{label}: {failed.Length} of {judged.Length} examples failed (first: line {failed[0].Example.Line}: " +
                $"{failed[0].Output.Status} {failed[0].Output.ErrorCode}: {failed[0].Output.Message}); they count as left unchanged");
        return (summary, judged);
    }

    private sealed record CascadeResult(string Cheap, string Strong, EvalSummary CheapAlone, EvalSummary StrongAlone,
        double CheapDevice, double StrongDevice, List<Cascade.Point> Points);

    // Pairs each run of the first model with the run of the second that has the same weights and KV dtype.
    private static List<CascadeResult> Cascades(List<EngineVariant> variants, List<(string Label, EngineVariant? Variant, EvalSummary Summary)> runs,
        List<EvalJudgement[]> judged)
    {
        var list = new List<CascadeResult>();
        string cheapModel = variants[0].ModelDir;
        for (int i = 0; i < variants.Count; i++)
        {
            var v = variants[i];
            if (v.ModelDir != cheapModel) continue;
            int k = variants.FindIndex(x => x.ModelDir != cheapModel && x.Quantize == v.Quantize && x.KvDType == v.KvDType);
            if (k < 0) continue;
            var points = Cascade.Thresholds(judged[i]).Select(t => Cascade.At(judged[i], judged[k], t)).ToList();
            list.Add(new CascadeResult(runs[i].Label, runs[k].Label, runs[i].Summary, runs[k].Summary,
                judged[i].Average(j => j.Output.DeviceSeconds), judged[k].Average(j => j.Output.DeviceSeconds), points));
        }
        return list;
    }

    // The do-nothing baseline: every sentence returned as it came.
    private static EvalSummary Baseline(List<EvalExample> examples)
    {
        var score = new EvalScore();
        foreach (var ex in examples) score.Add(EvalJudgement.Of(ex, new EvalOutput("finished", null, null, " " + ex.Source + "\n", "eos", 0, double.NaN, double.NaN)));
        return score.Summarize(0);
    }

    private static void Report(string data, int examples, List<EvalDataError> errors, List<(string Label, EngineVariant? Variant, EvalSummary Summary)> runs,
        EvalSummary baseline, List<CascadeResult> cascades, bool json)
    {
        if (json)
        {
            Output.WriteJson(w =>
            {
                w.WriteString("data", data);
                w.WriteNumber("examples", examples);
                w.WriteNumber("invalid_lines", errors.Count);
                w.WriteStartArray("errors");
                foreach (var err in errors.Take(100))
                {
                    w.WriteStartObject();
                    w.WriteNumber("line", err.Line);
                    w.WriteString("code", err.Code);
                    w.WriteString("message", err.Message);
                    w.WriteEndObject();
                }
                w.WriteEndArray();
                w.WriteStartArray("runs");
                foreach (var (label, v, s) in runs)
                {
                    w.WriteStartObject();
                    w.WriteString("label", label);
                    if (v is not null)
                    {
                        w.WriteString("target", "engine");
                        w.WriteString("model", v.ModelDir);
                        w.WriteString("weights", v.Quantize is null ? "stored" : "fp8");
                        if (v.Quantize is not null) w.WriteString("scheme", v.Quantize.Scheme == Fp8Scheme.PerTensor ? "per-tensor" : "per-channel");
                        w.WriteString("kv_dtype", v.KvDType.ToString().ToLowerInvariant());
                    }
                    else w.WriteString("target", "server");
                    WriteSummary(w, s);
                    w.WriteEndObject();
                }
                w.WriteEndArray();
                w.WriteStartObject("copy_baseline");
                WriteSummary(w, baseline);
                w.WriteEndObject();
                w.WriteStartArray("cascades");
                foreach (var c in cascades)
                {
                    w.WriteStartObject();
                    w.WriteString("cheap", c.Cheap);
                    w.WriteString("strong", c.Strong);
                    w.WriteNumber("cheap_device_ms_per_request", c.CheapDevice * 1000);
                    w.WriteNumber("strong_device_ms_per_request", c.StrongDevice * 1000);
                    w.WriteStartArray("points");
                    foreach (var pt in c.Points)
                    {
                        w.WriteStartObject();
                        if (double.IsFinite(pt.Threshold)) w.WriteNumber("threshold", pt.Threshold);
                        else w.WriteString("threshold", pt.Threshold > 0 ? "always" : "never");
                        w.WriteNumber("escalation_rate", pt.EscalationRate);
                        w.WriteNumber("exact_match", pt.Summary.ExactMatch);
                        w.WriteNumber("f05", pt.Summary.F05);
                        w.WriteNumber("device_ms_per_request", pt.DeviceSecondsPerRequest * 1000);
                        w.WriteEndObject();
                    }
                    w.WriteEndArray();
                    w.WriteEndObject();
                }
                w.WriteEndArray();
            });
            return;
        }
        var t = new Table().Border(TableBorder.Rounded)
            .AddColumn("run").AddColumn(new TableColumn("exact match").RightAligned()).AddColumn(new TableColumn("P").RightAligned())
            .AddColumn(new TableColumn("R").RightAligned()).AddColumn(new TableColumn("F0.5").RightAligned()).AddColumn(new TableColumn("copy rate").RightAligned())
            .AddColumn(new TableColumn("mean logprob").RightAligned()).AddColumn(new TableColumn("mean min logprob").RightAligned())
            .AddColumn(new TableColumn("failed").RightAligned()).AddColumn(new TableColumn("tok/s").RightAligned());
        foreach (var (label, _, s) in runs) t.AddRow(Row(label, s, true));
        t.AddRow(Row("copy the input (baseline)", baseline, false));
        // Redirected output has no width; a table for a file or a pipe is laid out unwrapped.
        if (Console.IsOutputRedirected) AnsiConsole.Profile.Width = 240;
        AnsiConsole.Write(t);
        Console.WriteLine($"{examples} examples from {data}" + (errors.Count > 0 ? $", {errors.Count} invalid lines left out" : "") +
            "; edits at the token level, F0.5 over the whole set");
        foreach (var c in cascades)
        {
            var ct = new Table().Border(TableBorder.Rounded).Title(Markup.Escape($"cascade: {c.Cheap} → {c.Strong}, escalate below the threshold (least token logprob)"))
                .AddColumn("escalate when min logprob <").AddColumn(new TableColumn("escalated").RightAligned()).AddColumn(new TableColumn("exact match").RightAligned())
                .AddColumn(new TableColumn("F0.5").RightAligned()).AddColumn(new TableColumn("device ms/request").RightAligned());
            foreach (var pt in c.Points)
                ct.AddRow(double.IsNegativeInfinity(pt.Threshold) ? "never (cheap alone)" : double.IsPositiveInfinity(pt.Threshold) ? "always" : $"{pt.Threshold:F3}",
                    $"{pt.EscalationRate:P1}", $"{pt.Summary.ExactMatch:P1}", $"{pt.Summary.F05:F3}", $"{pt.DeviceSecondsPerRequest * 1000:F2}");
            ct.AddRow("strong alone", "–", $"{c.StrongAlone.ExactMatch:P1}", $"{c.StrongAlone.F05:F3}", $"{c.StrongDevice * 1000:F2}");
            AnsiConsole.Write(ct);
        }
    }

    private static string[] Row(string label, EvalSummary s, bool generated) =>
    [
        Markup.Escape(label), $"{s.ExactMatch:P1}", $"{s.Precision:F3}", $"{s.Recall:F3}", $"{s.F05:F3}",
        double.IsNaN(s.CopyRate) ? "–" : $"{s.CopyRate:P1}",
        double.IsNaN(s.MeanLogprob) ? "–" : $"{s.MeanLogprob:F3}", double.IsNaN(s.MeanMinLogprob) ? "–" : $"{s.MeanMinLogprob:F3}",
        generated ? $"{s.Examples - s.Finished}" : "–", generated ? $"{s.TokensPerSecond:F0}" : "–",
    ];

    private static void WriteSummary(Utf8JsonWriter w, EvalSummary s)
    {
        w.WriteNumber("examples", s.Examples);
        w.WriteNumber("finished", s.Finished);
        w.WriteNumber("exact_match", s.ExactMatch);
        w.WriteNumber("precision", s.Precision);
        w.WriteNumber("recall", s.Recall);
        w.WriteNumber("f05", s.F05);
        w.WriteNumber("tp", s.Tp);
        w.WriteNumber("fp", s.Fp);
        w.WriteNumber("fn", s.Fn);
        Num(w, "copy_rate", s.CopyRate);
        w.WriteNumber("correct_inputs", s.CorrectInputs);
        Num(w, "mean_logprob", s.MeanLogprob);
        Num(w, "mean_min_logprob", s.MeanMinLogprob);
        w.WriteNumber("generated_tokens", s.GeneratedTokens);
        w.WriteNumber("seconds", s.Seconds);
        w.WriteNumber("tokens_per_second", s.TokensPerSecond);
    }

    private static void Num(Utf8JsonWriter w, string name, double v)
    {
        if (double.IsNaN(v)) w.WriteNull(name);
        else w.WriteNumber(name, v);
    }

    /// <summary>The per-example JSON Lines file: one line per (run, example) and one per invalid data line.</summary>
    private sealed class ResultsFile : IDisposable
    {
        private readonly FileStream _out;

        public ResultsFile(string path)
        {
            try { _out = new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.Read, 1 << 16); }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
            {
                throw new FastServeException("eval.results_unwritable", ex.Message, path);
            }
        }

        public void WriteError(EvalDataError e) => Line(w =>
        {
            w.WriteNumber("line", e.Line);
            w.WriteStartObject("error");
            w.WriteString("code", e.Code);
            w.WriteString("message", e.Message);
            w.WriteEndObject();
        });

        public void Write(string run, EvalJudgement j) => Line(w =>
        {
            var ex = j.Example;
            var o = j.Output;
            w.WriteString("run", run);
            w.WriteNumber("line", ex.Line);
            if (ex.Id is not null) w.WriteString("id", ex.Id);
            w.WriteString("source", ex.Source);
            w.WriteString("target", ex.Target);
            w.WriteString("output", j.Hypothesis);
            w.WriteBoolean("exact_match", j.ExactMatch);
            w.WriteNumber("reference_edits", j.ReferenceEdits);
            w.WriteNumber("hypothesis_edits", j.HypothesisEdits);
            w.WriteNumber("tp", j.Tp);
            w.WriteNumber("fp", j.Fp);
            w.WriteNumber("fn", j.Fn);
            w.WriteString("status", o.Status);
            if (o.Finish is not null) w.WriteString("finish_reason", o.Finish);
            if (o.ErrorCode is not null)
            {
                w.WriteStartObject("error");
                w.WriteString("code", o.ErrorCode);
                w.WriteString("message", o.Message ?? "");
                w.WriteEndObject();
            }
            w.WriteNumber("tokens", o.Tokens);
            w.WriteNumber("device_ms", o.DeviceSeconds * 1000);
            if (!double.IsNaN(o.LogprobSum) && o.Tokens > 0)
            {
                w.WriteNumber("mean_logprob", o.LogprobSum / o.Tokens);
                w.WriteNumber("min_logprob", o.LogprobMin);
            }
        });

        private void Line(Action<Utf8JsonWriter> body)
        {
            using (var w = new Utf8JsonWriter(_out, new JsonWriterOptions { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
            {
                w.WriteStartObject();
                body(w);
                w.WriteEndObject();
            }
            _out.WriteByte((byte)'\n');
        }

        public void Dispose() => _out.Dispose();
    }
}
