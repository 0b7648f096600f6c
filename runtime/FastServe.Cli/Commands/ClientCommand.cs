using System.CommandLine;
using System.Globalization;
using FastServe.Client;
using FastServe.Protocol;
using FastServe.Runtime;
using Spectre.Console;

namespace FastServe.Cli.Commands;

/// <summary>
/// <c>fastserve client [--host H] [--port P] ... "prompt"</c>: sends one completion to a replica (or router) over the
/// wire protocol and streams the answer to stdout; status, tokens, latencies and the server's timing go to stderr.
/// A status other than ok prints <c>error[status]: detail: message</c> and exits 1.
/// </summary>
internal static class ClientCommand
{
    /// <summary>Options shared with <c>bench</c>: where the server is.</summary>
    internal static Option<string> HostOption() => new("--host") { Description = "Server host name or address", DefaultValueFactory = _ => "127.0.0.1" };
    internal static Option<int> PortOption() => new("--port") { Description = "Server TCP port", DefaultValueFactory = _ => 7700 };

    public static Command Create()
    {
        var host = HostOption();
        var port = PortOption();
        var prompt = new Argument<string?>("prompt") { Description = "Prompt text (the server tokenizes it)", Arity = ArgumentArity.ZeroOrOne };
        var promptIds = new Option<string?>("--prompt-ids") { Description = "Prompt as comma-separated token ids (instead of text)" };
        var maxTokens = new Option<int>("--max-tokens", "-n") { Description = "Most tokens to generate", DefaultValueFactory = _ => 64 };
        var temperature = new Option<float>("--temperature") { Description = "Sampling temperature; 0 = greedy", DefaultValueFactory = _ => 0f };
        var topP = new Option<float>("--top-p") { Description = "Nucleus sampling mass (1 = off)", DefaultValueFactory = _ => 1f };
        var topK = new Option<int>("--top-k") { Description = "Keep the k most likely tokens (0 = off)" };
        var seed = new Option<ulong?>("--seed") { Description = "Random seed for sampling" };
        var stop = new Option<string[]>("--stop") { Description = "Stop string (repeatable, at most 8)", AllowMultipleArgumentsPerToken = false, DefaultValueFactory = _ => [] };
        var deadline = new Option<uint>("--deadline-ms") { Description = "Time the server may take from receipt to the last token, ms (0 = none)" };
        var priority = new Option<string>("--priority") { Description = "interactive or batch", DefaultValueFactory = _ => "interactive" };
        var ignoreEos = new Option<bool>("--ignore-eos") { Description = "Keep generating past EOS" };
        var timeout = new Option<double>("--connect-timeout") { Description = "Seconds allowed to connect and complete the handshake", DefaultValueFactory = _ => 10 };
        var json = new Option<bool>("--json") { Description = "Print one JSON object instead of streaming text" };
        var (model, modelVersion, routeKey) = RouteOptions();
        var logprobs = new Option<bool>("--logprobs") { Description = "Ask for the mean and lowest token log-probability of the answer (protocol 1.2)" };
        var topLogprobs = new Option<int?>("--top-logprobs") { Description = "Ask for every token's log-probability and its N most likely alternatives, 0 … 20 (protocol 1.4; with --json)" };

        var cmd = new Command("client", "Send one completion to a FastServe server and stream the answer.");
        foreach (Option o in new Option[] { host, port, promptIds, maxTokens, temperature, topP, topK, seed, stop, deadline, priority, ignoreEos, model, modelVersion, routeKey, logprobs, topLogprobs, timeout, json }) cmd.Add(o);
        cmd.Add(prompt);
        var security = new ClientSecurityOptions();
        security.AddTo(cmd);
        cmd.SetAction(async (r, ct) =>
        {
            bool asJson = r.GetValue(json);
            var (apiKey, tls) = security.Read(r);
            string? text = r.GetValue(prompt);
            string? ids = r.GetValue(promptIds);
            if ((text is null) == (ids is null))
                throw new FastServeException("args.prompt_required", "give exactly one of a prompt text or --prompt-ids", "prompt");
            int n = r.GetValue(maxTokens);
            if (n < 1) throw new FastServeException("args.invalid_max_tokens", "--max-tokens must be at least 1", "--max-tokens");
            var request = new CompletionRequest
            {
                Prompt = text,
                PromptIds = ids is null ? null : GenerateCommand.ParseIds(ids),
                Params = RequestParams.Default with
                {
                    MaxTokens = n,
                    Temperature = r.GetValue(temperature),
                    TopP = r.GetValue(topP),
                    TopK = r.GetValue(topK),
                    Seed = r.GetValue(seed),
                    DeadlineMs = r.GetValue(deadline),
                    Priority = ParsePriority(r.GetValue(priority)!),
                    IgnoreEos = r.GetValue(ignoreEos),
                    Logprobs = r.GetValue(logprobs),
                    TokenLogprobs = r.GetValue(topLogprobs).HasValue,
                    TopLogprobs = r.GetValue(topLogprobs) ?? 0,
                    Model = CheckLabel(r.GetValue(model), "--model"),
                    ModelVersion = CheckLabel(r.GetValue(modelVersion), "--model-version"),
                    RouteKey = r.GetValue(routeKey),
                },
                Stops = r.GetValue(stop) is { Length: > 0 } s ? s : null,
            };
            string h = r.GetValue(host)!;
            int p = ParsePort(r.GetValue(port));
            double connectSeconds = r.GetValue(timeout);
            if (!(connectSeconds > 0 && connectSeconds <= 3600))
                throw new FastServeException("args.invalid_timeout", "--connect-timeout must be between 0 and 3600 seconds", "--connect-timeout");

            await using var client = await Connect(h, p, new FastServeClientOptions
            {
                ClientName = "fastserve-cli",
                ConnectTimeout = TimeSpan.FromSeconds(connectSeconds),
                ApiKey = apiKey,
                Tls = tls,
            }, ct);
            var call = client.Start(request);
            // Ctrl+C: ask the server to stop; the FINAL (cancelled) still arrives and is reported.
            using var onCancel = ct.Register(call.Cancel);
            bool printed = false;
            if (!asJson)
            {
                await foreach (var d in call.Deltas.ReadAllAsync(CancellationToken.None))
                {
                    if (d.Text.Length == 0) continue;
                    Console.Out.Write(d.Text);
                    Console.Out.Flush();
                    printed = true;
                }
            }
            var res = await call.Completion;
            if (asJson)
            {
                Output.WriteJson(w => WriteJson(w, res, call.Id, client.Server));
                return res.IsOk ? 0 : 1;
            }
            if (printed) Console.Out.WriteLine();
            Output.Info(false, "[grey]" + Markup.Escape(Summary(res)) + "[/]");
            if (res.IsOk) return 0;
            string detail = string.IsNullOrEmpty(res.Detail) ? "" : res.Detail + ": ";
            Console.Error.WriteLine($"error[{res.StatusName}]: {detail}{res.Message}");
            return 1;
        });
        return cmd;
    }

    /// <summary>Connects, turning client failures into the CLI's one-line errors.</summary>
    internal static async Task<FastServeClient> Connect(string host, int port, FastServeClientOptions options, CancellationToken ct)
    {
        try
        {
            return await FastServeClient.ConnectAsync(host, port, options, ct);
        }
        catch (FastServeClientException e)
        {
            throw new FastServeException(e.Code, e.Message, $"{host}:{port}");
        }
    }

    /// <summary>The routing options of <c>client</c> and <c>bench</c>: the model, version and routing key a request
    /// names (protocol 1.2).</summary>
    internal static (Option<string?> Model, Option<string?> Version, Option<string?> Key) RouteOptions() =>
        (new Option<string?>("--model") { Description = "Model the request names (a router sends it to that model's pool; a replica refuses another model's)" },
         new Option<string?>("--model-version") { Description = "Model version the request names (default: any, or the router's traffic split)" },
         new Option<string?>("--route-key") { Description = "Routing key: requests with the same key get the same version of a sticky split" });

    /// <summary>A model name or version from a flag: null when absent, else a valid label.</summary>
    internal static string? CheckLabel(string? s, string flag) =>
        s is null || RequestRules.IsModelLabel(s) ? s
        : throw new FastServeException("args.invalid_model_name", $"{flag} must be 1 to 64 letters, digits, '.', '_' or '-'", flag);

    internal static int ParsePort(int port) => port is >= 1 and <= 65535
        ? port : throw new FastServeException("args.invalid_port", "--port must be between 1 and 65535", "--port");

    internal static byte ParsePriority(string s) => s switch
    {
        "interactive" => 0,
        "batch" => 1,
        _ => throw new FastServeException("args.invalid_priority", $"--priority accepts interactive or batch, not '{s}'", "--priority"),
    };

    private static string Ms(TimeSpan? t) => t is { } x ? x.TotalMilliseconds.ToString("F1", CultureInfo.InvariantCulture) + " ms" : "-";

    private static string Summary(CompletionResult r)
    {
        var s = new System.Text.StringBuilder();
        s.Append(r.StatusName);
        if (r.IsOk) s.Append(" (").Append(r.FinishName).Append(')');
        s.Append(CultureInfo.InvariantCulture, $" | {r.PromptTokens} prompt tokens ({r.CachedPromptTokens} cached), {r.CompletionTokens} generated");
        if (r.Preemptions > 0) s.Append(CultureInfo.InvariantCulture, $", {r.Preemptions} preemptions");
        s.Append($" | TTFT {Ms(r.TimeToFirstToken)} | end-to-end {Ms(r.EndToEnd)} | {Ms(r.TimePerOutputToken)}/token");
        if (r.ClientFailure == ClientFailure.None)
        {
            s.Append(" | server:");
            foreach (var (slot, name) in ServerTimings.Names)
            {
                uint us = r.ServerTimings[slot];
                s.Append(' ').Append(name).Append(' ').Append(us == 0 ? "-" : (us / 1000.0).ToString("F2", CultureInfo.InvariantCulture) + " ms");
                if (slot != Timing.Device) s.Append(',');
            }
        }
        return s.ToString();
    }

    private static void WriteJson(System.Text.Json.Utf8JsonWriter w, CompletionResult r, ulong id, HelloOk server)
    {
        static void Ms(System.Text.Json.Utf8JsonWriter w, string name, TimeSpan? t)
        {
            if (t is { } x) w.WriteNumber(name, Math.Round(x.TotalMilliseconds, 3)); else w.WriteNull(name);
        }
        w.WriteString("server", server.ServerName);
        if (server.Model.Length > 0) { w.WriteString("server_model", server.Model); w.WriteString("server_model_version", server.ModelVersion); }
        w.WriteNumber("id", id);
        w.WriteString("status", r.StatusName);
        w.WriteString("finish_reason", r.FinishName);
        if (r.Detail is null) w.WriteNull("detail"); else w.WriteString("detail", r.Detail);
        if (r.Message is null) w.WriteNull("message"); else w.WriteString("message", r.Message);
        w.WriteBoolean("retriable", r.Retriable);
        if (r.RetryAfter is { } ra) w.WriteNumber("retry_after_ms", (long)ra.TotalMilliseconds); else w.WriteNull("retry_after_ms");
        w.WriteNumber("prompt_tokens", r.PromptTokens);
        w.WriteNumber("cached_prompt_tokens", r.CachedPromptTokens);
        w.WriteNumber("completion_tokens", r.CompletionTokens);
        w.WriteNumber("preemptions", r.Preemptions);
        w.WriteStartArray("token_ids");
        foreach (int t in r.Ids) w.WriteNumberValue(t);
        w.WriteEndArray();
        w.WriteString("text", r.Text);
        if (!double.IsNaN(r.LogprobMean)) { w.WriteNumber("logprob_mean", r.LogprobMean); w.WriteNumber("logprob_min", r.LogprobMin); }
        if (r.TokenLogprobs is { } tl)
        {
            w.WriteStartArray("token_logprobs");
            foreach (var t in tl)
            {
                w.WriteStartObject();
                w.WriteNumber("id", t.Id);
                w.WriteString("token", Utf8Text.Decode(t.Bytes));
                w.WriteNumber("logprob", t.Logprob);
                w.WriteStartArray("top");
                foreach (var a in t.Top)
                {
                    w.WriteStartObject();
                    w.WriteNumber("id", a.Id);
                    w.WriteString("token", Utf8Text.Decode(a.Bytes));
                    w.WriteNumber("logprob", a.Logprob);
                    w.WriteEndObject();
                }
                w.WriteEndArray();
                w.WriteEndObject();
            }
            w.WriteEndArray();
        }
        Ms(w, "ttft_ms", r.TimeToFirstToken);
        Ms(w, "e2e_ms", r.EndToEnd);
        Ms(w, "tpot_ms", r.TimePerOutputToken);
        w.WriteStartObject("server_timing_us");
        foreach (var (slot, name) in ServerTimings.Names)
        {
            uint us = r.ServerTimings[slot];
            if (us == 0) w.WriteNull(name); else w.WriteNumber(name, us);
        }
        w.WriteEndObject();
    }
}
