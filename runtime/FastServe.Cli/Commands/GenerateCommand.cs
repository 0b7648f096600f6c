using System.CommandLine;
using System.Globalization;
using FastServe.Runtime;
using FastServe.Runtime.Backends;
using FastServe.Runtime.Generation;

namespace FastServe.Cli.Commands;

/// <summary><c>fastserve generate [--model DIR] "prompt"</c>: streams a completion and reports load, prefill and decode speed.</summary>
internal static class GenerateCommand
{
    public static Command Create()
    {
        var m = new ModelOptions();
        var prompt = new Argument<string?>("prompt") { Description = "Prompt text", Arity = ArgumentArity.ZeroOrOne };
        var promptIds = new Option<string?>("--prompt-ids") { Description = "Prompt as comma-separated token ids (instead of text)" };
        var maxTokens = new Option<int>("--max-tokens", "-n") { Description = "Most tokens to generate", DefaultValueFactory = _ => 64 };
        var temperature = new Option<float>("--temperature") { Description = "Sampling temperature; 0 = greedy", DefaultValueFactory = _ => 0f };
        var topK = new Option<int>("--top-k") { Description = "Keep the k most likely tokens (0 = off)" };
        var topP = new Option<float>("--top-p") { Description = "Nucleus sampling mass (1 = off)", DefaultValueFactory = _ => 1f };
        var seed = new Option<ulong?>("--seed") { Description = "Random seed for sampling" };
        var stop = new Option<string[]>("--stop") { Description = "Stop string (repeatable)", AllowMultipleArgumentsPerToken = false, DefaultValueFactory = _ => [] };
        var logprobs = new Option<int>("--logprobs") { Description = $"Report the top-N log-probabilities of each generated token (N <= {SamplingParams.MaxLogprobs})" };
        var ctx = new Option<int>("--ctx") { Description = "Context length in tokens (0 = model maximum, capped at 8192)" };
        var kvDtype = new Option<string>("--kv-dtype") { Description = "KV cache storage: f32 or bf16 (never quantized; default f32, bf16 on cuda)", DefaultValueFactory = _ => "f32" };
        var noBos = new Option<bool>("--no-bos") { Description = "Do not prepend the BOS token to a text prompt" };
        var ignoreEos = new Option<bool>("--ignore-eos") { Description = "Keep generating past EOS" };

        var cmd = new Command("generate", "Generate text from a prompt, streaming it as it is produced.");
        m.AddTo(cmd);
        foreach (Option o in new Option[] { promptIds, maxTokens, temperature, topK, topP, seed, stop, logprobs, ctx, kvDtype, noBos, ignoreEos }) cmd.Add(o);
        cmd.Add(prompt);
        cmd.SetAction(r =>
        {
            bool json = r.GetValue(m.Json);
            var sampling = new SamplingParams
            {
                MaxTokens = r.GetValue(maxTokens),
                Temperature = r.GetValue(temperature),
                TopK = r.GetValue(topK),
                TopP = r.GetValue(topP),
                Seed = r.GetValue(seed),
                Stop = r.GetValue(stop) ?? [],
                Logprobs = r.GetValue(logprobs),
                IgnoreEos = r.GetValue(ignoreEos),
            };
            sampling.Validate();
            var kv = m.ResolveKvDType(r, kvDtype);
            string? text = r.GetValue(prompt);
            string? ids = r.GetValue(promptIds);
            if ((text is null) == (ids is null))
                throw new FastServeException("args.prompt_required", "give exactly one of a prompt text or --prompt-ids", "prompt");

            // The backend first: a missing GPU or driver is reported before a model is loaded (or made).
            using var backend = m.CreateBackend(r);
            using var model = m.Load(r);
            int[] promptTokens = ids is not null ? ParseIds(ids) : model.Tokenizer.Encode(text!, addBos: !r.GetValue(noBos) && model.Tokenizer.BosId is not null);
            using var gen = new Generator(model, backend, new GeneratorOptions { ContextLength = r.GetValue(ctx), KvDType = kv });

            bool stream = !json;
            var result = gen.Generate(promptTokens, sampling, t =>
            {
                if (stream && t.Text.Length > 0) { Console.Out.Write(t.Text); Console.Out.Flush(); }
            });
            if (json)
            {
                Output.WriteJson(w =>
                {
                    w.WriteString("model", model.Directory);
                    w.WriteString("backend", backend.Name);
                    w.WriteStartArray("prompt_ids");
                    foreach (int t in result.PromptIds) w.WriteNumberValue(t);
                    w.WriteEndArray();
                    w.WriteStartArray("token_ids");
                    foreach (int t in result.TokenIds) w.WriteNumberValue(t);
                    w.WriteEndArray();
                    w.WriteString("text", result.Text);
                    w.WriteString("finish_reason", result.Finish.WireName());
                    w.WriteNumber("load_seconds", model.LoadTime.TotalSeconds);
                    w.WriteNumber("prefill_seconds", result.PrefillTime.TotalSeconds);
                    w.WriteNumber("prefill_tokens_per_second", result.PrefillTokensPerSecond);
                    w.WriteNumber("decode_tokens_per_second", result.DecodeTokensPerSecond);
                    if (sampling.Logprobs > 0)
                    {
                        w.WriteStartArray("logprobs");
                        foreach (var t in result.Tokens)
                        {
                            if (t.Id < 0) continue;
                            w.WriteStartObject();
                            w.WriteNumber("id", t.Id);
                            w.WriteString("token", model.Tokenizer.Decode([t.Id]));
                            w.WriteNumber("logprob", t.Logprob);
                            w.WriteStartArray("top");
                            foreach (var c in t.Top!)
                            {
                                w.WriteStartObject();
                                w.WriteNumber("id", c.Id);
                                w.WriteString("token", model.Tokenizer.Decode([c.Id]));
                                w.WriteNumber("logprob", c.Logprob);
                                w.WriteEndObject();
                            }
                            w.WriteEndArray();
                            w.WriteEndObject();
                        }
                        w.WriteEndArray();
                    }
                });
                return 0;
            }
            Console.Out.WriteLine();
            if (sampling.Logprobs > 0)
            {
                foreach (var t in result.Tokens)
                {
                    if (t.Id < 0) continue;
                    string tops = string.Join("  ", t.Top!.Select(c => $"{Escape(model.Tokenizer.Decode([c.Id]))}={c.Logprob:F3}"));
                    Console.Error.WriteLine($"{t.Id,7} {Escape(model.Tokenizer.Decode([t.Id])),-16} {t.Logprob,8:F3}   {tops}");
                }
            }
            Output.Info(false, $"[grey]{result.PromptIds.Length} prompt tokens, {result.TokenIds.Length} generated ({result.Finish.WireName()}) | " +
                $"load {model.LoadTime.TotalSeconds:F2} s | prefill {result.PrefillTokensPerSecond:F1} tok/s | decode {result.DecodeTokensPerSecond:F1} tok/s | " +
                $"{backend.Name}[/]");
            return 0;
        });
        return cmd;
    }

    internal static KvDType ParseKvDType(string s) => s switch
    {
        "f32" => KvDType.F32,
        "bf16" => KvDType.BF16,
        _ => throw new FastServeException("args.invalid_kv_dtype", $"--kv-dtype accepts f32 or bf16, not '{s}'", "--kv-dtype"),
    };

    internal static int[] ParseIds(string s)
    {
        var parts = s.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries);
        var ids = new int[parts.Length];
        for (int i = 0; i < parts.Length; i++)
            if (!int.TryParse(parts[i], NumberStyles.None, CultureInfo.InvariantCulture, out ids[i]))
                throw new FastServeException("args.invalid_prompt_ids", $"'{parts[i]}' is not a token id", "--prompt-ids");
        return ids;
    }


    private static string Escape(string s) => s.Replace("\n", "\\n").Replace("\r", "\\r").Replace("\t", "\\t");
}
