using System.CommandLine;
using System.Diagnostics;
using System.Text;
using System.Text.Json;
using FastServe.Runtime;
using FastServe.Runtime.Formats;
using FastServe.Runtime.Generation;
using FastServe.Runtime.Tokenization;
using FastServe.Scheduler.Engine;

namespace FastServe.Cli.Commands;

/// <summary>
/// <c>fastserve batch --input prompts.jsonl --output results.jsonl</c>: offline generation through the engine.
/// Every input line gets exactly one output line, in input order; a bad line gets an error object with a stable code
/// and the run goes on. Memory stays bounded: at most a window of requests is outstanding, and results are written
/// as soon as every earlier line's result is.
/// </summary>
internal static class BatchCommand
{
    /// <summary>Longest accepted input line.</summary>
    public const int MaxLineBytes = 1 << 20;

    public static Command Create()
    {
        var e = new EngineCliOptions(offline: true);
        var input = new Option<string>("--input", "-i") { Description = "JSON Lines file: one request per line ({\"prompt\": ...} or {\"prompt_ids\": [...]}, sampling fields)", Required = true };
        var output = new Option<string>("--output", "-o") { Description = "JSON Lines file to write, one result per input line, in input order", Required = true };
        var window = new Option<int>("--window") { Description = "Most requests outstanding at once (0 = the engine's waiting bound)" };
        var cmd = new Command("batch", "Generate for every request of a JSON Lines file through the batching engine.");
        e.AddTo(cmd);
        cmd.Add(input);
        cmd.Add(output);
        cmd.Add(window);
        cmd.SetAction(r => Run(r, e, r.GetValue(input)!, r.GetValue(output)!, r.GetValue(window)));
        return cmd;
    }

    private static int Run(ParseResult r, EngineCliOptions e, string inputPath, string outputPath, int window)
    {
        bool json = e.Json(r);
        if (!File.Exists(inputPath)) throw new FastServeException("batch.input_not_found", "the input file does not exist", inputPath);
        if (window < 0) throw new FastServeException("args.invalid_window", "--window must be ≥ 0", "--window");
        if (r.GetValue(e.Model.Backend) == "sim")
            throw new FastServeException("args.unknown_backend", "batch generates real text: use --backend cpu, reference, cuda or vulkan (sim is for bench-engine)", "--backend");
        long totalBytes = new FileInfo(inputPath).Length;
        using var session = e.Open(r);
        var engine = session.Engine!;
        var tokenizer = session.Model!.Tokenizer;
        if (window == 0) window = Math.Max(1, Math.Min(engine.Options.MaxWaitingRequests, 4096));

        var sw = Stopwatch.StartNew();
        var counts = new Counts();
        string tmp = outputPath + ".partial";
        Output.WithProgress("Generating", json, progress =>
        {
            using var inStream = File.OpenRead(inputPath);
            using var outStream = new FileStream(tmp, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 16);
            var pending = new Queue<Pending>();
            int index = 0;
            foreach (var line in JsonLines.Read(inStream, MaxLineBytes))
            {
                if (line.Blank) continue;
                var p = Submit(engine, tokenizer, index++, line);
                pending.Enqueue(p);
                while (pending.Count >= window) Write(engine, outStream, pending.Dequeue(), tokenizer, counts, pending);
                progress(inStream.Position, totalBytes);
            }
            while (pending.Count > 0) Write(engine, outStream, pending.Dequeue(), tokenizer, counts, pending);
            progress(totalBytes, totalBytes);
        });
        File.Move(tmp, outputPath, overwrite: true);
        double secs = sw.Elapsed.TotalSeconds;
        var stats = engine.GetStats();
        if (json)
        {
            Output.WriteJson(w =>
            {
                w.WriteString("output", outputPath);
                w.WriteNumber("requests", counts.Lines);
                w.WriteNumber("finished", counts.Finished);
                w.WriteNumber("errors", counts.Lines - counts.Finished);
                w.WriteNumber("generated_tokens", counts.Tokens);
                w.WriteNumber("seconds", secs);
                w.WriteNumber("requests_per_second", counts.Lines / secs);
                w.WriteNumber("generated_tokens_per_second", counts.Tokens / secs);
                w.WriteNumber("prefix_hit_rate", stats.PrefixHitRate);
                w.WriteNumber("preemptions", stats.Preemptions);
                w.WriteNumber("overload_waits", counts.OverloadWaits);
            });
        }
        else
        {
            Output.Info(false, $"[grey]{counts.Lines} requests ({counts.Finished} finished, {counts.Lines - counts.Finished} errors), " +
                $"{counts.Tokens} tokens in {secs:F2} s: {counts.Lines / secs:F1} req/s, {counts.Tokens / secs:F1} tok/s | " +
                $"prefix hit rate {stats.PrefixHitRate:P0}, {stats.Preemptions} preemptions → {Spectre.Console.Markup.Escape(outputPath)}[/]");
        }
        return 0;
    }

    private sealed class Counts
    {
        public long Lines, Finished, Tokens, OverloadWaits;
    }

    private sealed class Pending(int index, string? id, EngineRequest? request, RequestHandle? handle, string? errorCode, string? errorMessage)
    {
        public int Index => index;
        public string? Id => id;
        public EngineRequest? Request => request;
        public RequestHandle? Handle { get; set; } = handle;
        public string? ErrorCode => errorCode;
        public string? ErrorMessage => errorMessage;
        public SamplingParams? Sampling => Request?.Sampling;

        public bool Refused => Handle is { Completion.IsCompletedSuccessfully: true } h &&
            h.Completion.Result is { Status: RequestStatus.Overloaded, RetryAfter: not null };
    }

    private static Pending Submit(InferenceEngine engine, TextTokenizer tokenizer, int index, JsonLines.Line line)
    {
        if (line.TooLong) return new Pending(index, null, null, null, "batch.line_too_long", $"line {line.Number} is longer than {MaxLineBytes} bytes");
        try
        {
            var req = ParseRequest(line.Bytes.Span, tokenizer, line.Number);
            return new Pending(index, req.Id, req, engine.Submit(req), null, null);
        }
        catch (FastServeException ex)
        {
            return new Pending(index, null, null, null, ex.Code, ex.Path is null ? ex.Message : $"{ex.Path}: {ex.Message}");
        }
    }

    /// <summary>Parses one request line. Errors: batch.invalid_json, batch.invalid_field, batch.unknown_field,
    /// batch.prompt_required, and sampling.invalid from the sampling fields.</summary>
    internal static EngineRequest ParseRequest(ReadOnlySpan<byte> utf8, TextTokenizer tokenizer, long lineNumber)
    {
        string where = $"line {lineNumber}";
        JsonDocument doc;
        try { doc = JsonDocument.Parse(utf8.ToArray(), new JsonDocumentOptions { MaxDepth = 8 }); }
        catch (JsonException ex) { throw new FastServeException("batch.invalid_json", $"not a JSON object: {ex.Message}", where); }
        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object) throw new FastServeException("batch.invalid_json", "each line must be a JSON object", where);
            string? text = null, id = null;
            int[]? ids = null;
            var sp = new SamplingParams { MaxTokens = 64 };
            var priority = Priority.Batch;
            TimeSpan? deadline = null;
            bool addBos = true;
            foreach (var f in doc.RootElement.EnumerateObject())
            {
                var v = f.Value;
                string name = f.Name;
                switch (name)
                {
                    case "prompt": text = Str(v, name, where); break;
                    case "prompt_ids": ids = IntArray(v, name, where); break;
                    case "id": id = v.ValueKind == JsonValueKind.Number ? v.GetRawText() : Str(v, name, where); break;
                    case "max_tokens": sp = sp with { MaxTokens = Int(v, name, where) }; break;
                    case "temperature": sp = sp with { Temperature = (float)Num(v, name, where) }; break;
                    case "top_k": sp = sp with { TopK = Int(v, name, where) }; break;
                    case "top_p": sp = sp with { TopP = (float)Num(v, name, where) }; break;
                    case "seed":
                        if (v.ValueKind != JsonValueKind.Number || !v.TryGetUInt64(out ulong seed)) throw Bad(name, "must be a non-negative integer", where);
                        sp = sp with { Seed = seed };
                        break;
                    case "stop":
                        sp = sp with { Stop = v.ValueKind == JsonValueKind.String ? [v.GetString()!] : StrArray(v, name, where) };
                        break;
                    case "logprobs": sp = sp with { Logprobs = Int(v, name, where) }; break;
                    case "ignore_eos": sp = sp with { IgnoreEos = Bool(v, name, where) }; break;
                    case "add_bos": addBos = Bool(v, name, where); break;
                    case "priority":
                        priority = Str(v, name, where) switch
                        {
                            "interactive" => Priority.Interactive,
                            "batch" => Priority.Batch,
                            _ => throw Bad(name, "must be \"interactive\" or \"batch\"", where),
                        };
                        break;
                    case "deadline_ms":
                        double ms = Num(v, name, where);
                        if (!(ms > 0 && ms <= 86_400_000)) throw Bad(name, "must be between 0 and 86400000", where);
                        deadline = TimeSpan.FromMilliseconds(ms);
                        break;
                    default:
                        throw new FastServeException("batch.unknown_field", $"unknown field \"{Truncate(name)}\"", where);
                }
            }
            if ((text is null) == (ids is null)) throw new FastServeException("batch.prompt_required", "give exactly one of \"prompt\" or \"prompt_ids\"", where);
            sp.Validate();
            int[] prompt = ids ?? tokenizer.Encode(text!, addBos: addBos && tokenizer.BosId is not null);
            return new EngineRequest { Prompt = prompt, Sampling = sp, Priority = priority, Deadline = deadline, Id = id };
        }
    }

    private static void Write(InferenceEngine engine, Stream output, Pending p, TextTokenizer tokenizer, Counts counts, Queue<Pending> later)
    {
        counts.Lines++;
        RequestResult? res = p.Handle?.Completion.GetAwaiter().GetResult();
        // Offline work is never dropped for load: an overloaded answer is retried after the engine's hint, and with
        // it every later line already refused, so a refused backlog goes back to the engine as one batch rather than
        // one request per wait.
        while (res is { Status: RequestStatus.Overloaded, RetryAfter: { } wait } && p.Request is not null)
        {
            counts.OverloadWaits++;
            Thread.Sleep(wait);
            p.Handle = engine.Submit(p.Request);
            foreach (var q in later)
                if (q.Refused) q.Handle = engine.Submit(q.Request!);
            res = p.Handle.Completion.GetAwaiter().GetResult();
        }
        var buf = new MemoryStream();
        using (var w = new Utf8JsonWriter(buf, new JsonWriterOptions { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            w.WriteStartObject();
            w.WriteNumber("index", p.Index);
            if (p.Id is not null) w.WriteString("id", p.Id);
            if (res is null)
            {
                w.WriteString("status", "invalid");
                WriteError(w, p.ErrorCode!, p.ErrorMessage!);
            }
            else
            {
                w.WriteString("status", StatusNames.Of(res.Status));
                if (res.Finish is { } f) w.WriteString("finish_reason", f.WireName());
                if (res.ErrorCode is not null) WriteError(w, res.ErrorCode, res.Message ?? "");
                if (res.RetryAfter is { } ra) w.WriteNumber("retry_after_ms", Math.Round(ra.TotalMilliseconds));
                w.WriteString("text", Text(tokenizer, res.OutputTokens, p.Sampling!, res.Finish));
                w.WriteStartArray("token_ids");
                foreach (int t in res.OutputTokens) w.WriteNumberValue(t);
                w.WriteEndArray();
                w.WriteNumber("prompt_tokens", res.PromptTokens);
                w.WriteNumber("cached_prompt_tokens", res.CachedPromptTokens);
                w.WriteNumber("completion_tokens", res.OutputTokens.Length);
                var ts = res.Timestamps;
                if (!double.IsNaN(ts.TimeToFirstToken)) w.WriteNumber("ttft_ms", Math.Round(ts.TimeToFirstToken * 1000, 3));
                w.WriteNumber("latency_ms", Math.Round(ts.EndToEnd * 1000, 3));
                w.WriteNumber("device_ms", Math.Round(res.DeviceTime.TotalMilliseconds, 3));
                if (res.Status == RequestStatus.Finished) counts.Finished++;
                counts.Tokens += res.OutputTokens.Length;
            }
            w.WriteEndObject();
        }
        buf.WriteByte((byte)'\n');
        buf.Position = 0;
        buf.CopyTo(output);
    }

    private static void WriteError(Utf8JsonWriter w, string code, string message)
    {
        w.WriteStartObject("error");
        w.WriteString("code", code);
        w.WriteString("message", message);
        w.WriteEndObject();
    }

    /// <summary>The output text exactly as <see cref="Generator"/> builds it: EOS contributes no text, stop strings
    /// are cut, and held-back bytes are flushed unless a stop string ended generation.</summary>
    internal static string Text(TextTokenizer tokenizer, int[] ids, SamplingParams p, FinishReason? finish)
    {
        var dec = tokenizer.CreateDecoder();
        var stop = new StopMatcher(p.Stop);
        var sb = new StringBuilder();
        foreach (int id in ids)
        {
            bool eos = !p.IgnoreEos && tokenizer.IsEos(id);
            if (!eos) sb.Append(stop.Append(dec.Append(id)));
        }
        if (finish != FinishReason.Stop)
        {
            sb.Append(stop.Append(dec.Flush()));
            sb.Append(stop.Flush());
        }
        return sb.ToString();
    }

    private static FastServeException Bad(string field, string why, string where) =>
        new("batch.invalid_field", $"\"{field}\" {why}", where);

    private static string Truncate(string s) => s.Length <= 64 ? s : s[..64] + "…";

    private static string Str(JsonElement v, string name, string where) =>
        v.ValueKind == JsonValueKind.String ? v.GetString()! : throw Bad(name, "must be a string", where);

    private static bool Bool(JsonElement v, string name, string where) =>
        v.ValueKind is JsonValueKind.True or JsonValueKind.False ? v.GetBoolean() : throw Bad(name, "must be true or false", where);

    private static double Num(JsonElement v, string name, string where) =>
        v.ValueKind == JsonValueKind.Number && v.TryGetDouble(out double d) && double.IsFinite(d) ? d : throw Bad(name, "must be a number", where);

    private static int Int(JsonElement v, string name, string where) =>
        v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out int i) ? i : throw Bad(name, "must be an integer", where);

    private static int[] IntArray(JsonElement v, string name, string where)
    {
        if (v.ValueKind != JsonValueKind.Array) throw Bad(name, "must be an array of token ids", where);
        var r = new int[v.GetArrayLength()];
        int k = 0;
        foreach (var x in v.EnumerateArray())
            r[k++] = x.ValueKind == JsonValueKind.Number && x.TryGetInt32(out int i) ? i : throw Bad(name, "must be an array of token ids", where);
        return r;
    }

    private static string[] StrArray(JsonElement v, string name, string where)
    {
        if (v.ValueKind != JsonValueKind.Array) throw Bad(name, "must be a string or an array of strings", where);
        return [.. v.EnumerateArray().Select(x => x.ValueKind == JsonValueKind.String ? x.GetString()! : throw Bad(name, "must be a string or an array of strings", where))];
    }
}
