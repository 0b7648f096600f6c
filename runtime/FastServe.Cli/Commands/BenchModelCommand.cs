using System.CommandLine;
using System.Diagnostics;
using FastServe.Runtime;
using FastServe.Runtime.Backends;
using FastServe.Runtime.Backends.Cpu;
using FastServe.Runtime.Generation;
using FastServe.Runtime.Model;
using Spectre.Console;

namespace FastServe.Cli.Commands;

/// <summary>
/// <c>fastserve bench-model</c>: prefill and decode speed of one model on one backend, with the machine's own
/// limits measured in the same run: decode's achieved weight-read bandwidth against memory-copy bandwidth, and
/// prefill's GFLOP/s against the F32 FMA peak. <c>--compare</c> runs the model as stored and quantized to FP8 at
/// load side by side and prints the ratio.
/// </summary>
internal static class BenchModelCommand
{
    public static Command Create()
    {
        var m = new ModelOptions();
        var promptTokens = new Option<int>("--prompt-tokens") { Description = "Prompt length for the prefill measurement", DefaultValueFactory = _ => 128 };
        var decodeTokens = new Option<int>("--decode-tokens") { Description = "Decode steps to time (batch 1)", DefaultValueFactory = _ => 32 };
        var compare = new Option<bool>("--compare") { Description = "Run the model as stored and with --quantize fp8, side by side" };
        var kvDtype = new Option<string>("--kv-dtype") { Description = "KV cache storage: f32 or bf16 (default f32, bf16 on cuda)", DefaultValueFactory = _ => "f32" };
        var cmd = new Command("bench-model", "Measure prefill and decode speed against this machine's bandwidth and FMA peak.");
        m.AddTo(cmd);
        cmd.Add(promptTokens);
        cmd.Add(decodeTokens);
        cmd.Add(compare);
        cmd.Add(kvDtype);
        cmd.SetAction(r =>
        {
            bool json = r.GetValue(m.Json);
            int prompt = r.GetValue(promptTokens), decode = r.GetValue(decodeTokens);
            if (prompt < 1 || prompt > 8192) throw new FastServeException("args.invalid_prompt_tokens", "--prompt-tokens must be 1..8192", "--prompt-tokens");
            if (decode < 1 || decode > 4096) throw new FastServeException("args.invalid_decode_tokens", "--decode-tokens must be 1..4096", "--decode-tokens");
            var kv = m.ResolveKvDType(r, kvDtype);
            using var backend = m.CreateBackend(r);
            int threads = backend is CpuBackend cpu ? cpu.Threads : 1;

            // A GPU backend's reference is its own memory; no F32 FMA peak applies to its tensor cores (NaN: not shown).
            var (copyBw, fmaPeak) = backend is IDeviceProbe device
                ? Output.WithProgress("Measuring device memory bandwidth", json, p =>
                {
                    p(0, 1);
                    double bw = device.MeasureCopyBandwidth();
                    p(1, 1);
                    return (bw, double.NaN);
                })
                : Output.WithProgress("Measuring memory bandwidth and FMA peak", json, p =>
                {
                    p(0, 2);
                    double bw = MachineProbe.MeasureCopyBandwidth(threads);
                    p(1, 2);
                    double peak = MachineProbe.MeasureFmaPeak(threads);
                    p(2, 2);
                    return (bw, peak);
                });

            var variants = new List<(string Name, Fp8LoadOptions? Quantize)>();
            var q = m.QuantizeOptions(r);
            if (r.GetValue(compare)) { variants.Add(("as stored", null)); variants.Add(("fp8", q ?? new Fp8LoadOptions())); }
            else variants.Add((q is null ? "as stored" : "fp8", q));

            var results = new List<Result>();
            foreach (var (name, quant) in variants)
            {
                using var model = m.Load(r, quant);
                results.Add(Output.WithProgress($"Benchmarking ({name})", json, p => Measure(name, model, backend, prompt, decode, kv, p)));
            }

            if (json)
            {
                Output.WriteJson(w =>
                {
                    w.WriteString("backend", backend.Name);
                    w.WriteNumber("threads", threads);
                    if (backend is CpuBackend c) w.WriteString("isa", c.Isa);
                    w.WriteNumber("copy_bandwidth_gb_s", copyBw / 1e9);
                    if (double.IsFinite(fmaPeak)) w.WriteNumber("fma_peak_gflop_s", fmaPeak / 1e9);
                    else w.WriteNull("fma_peak_gflop_s");
                    w.WriteStartArray("runs");
                    foreach (var x in results)
                    {
                        w.WriteStartObject();
                        w.WriteString("weights", x.Name);
                        w.WriteNumber("prompt_tokens", x.PromptTokens);
                        w.WriteNumber("prefill_tokens_per_second", x.PrefillTps);
                        w.WriteNumber("prefill_gflop_s", x.PrefillFlops / 1e9);
                        if (double.IsFinite(fmaPeak)) w.WriteNumber("prefill_fraction_of_fma_peak", x.PrefillFlops / fmaPeak);
                        else w.WriteNull("prefill_fraction_of_fma_peak");
                        w.WriteNumber("decode_tokens", x.DecodeTokens);
                        w.WriteNumber("decode_tokens_per_second", x.DecodeTps);
                        w.WriteNumber("decode_bytes_per_token", x.BytesPerToken);
                        w.WriteNumber("decode_read_gb_s", x.DecodeBytesPerSecond / 1e9);
                        w.WriteNumber("decode_fraction_of_copy_bandwidth", x.DecodeBytesPerSecond / copyBw);
                        w.WriteEndObject();
                    }
                    w.WriteEndArray();
                    if (results.Count == 2) w.WriteNumber("fp8_decode_speedup", results[1].DecodeTps / results[0].DecodeTps);
                });
                return 0;
            }

            var t = new Table().AddColumns("weights", "prefill tok/s", "prefill GFLOP/s", "of FMA peak", "decode tok/s", "MB read/token", "decode GB/s", "of copy BW");
            foreach (var x in results)
                t.AddRow(x.Name, $"{x.PrefillTps:F1}", $"{x.PrefillFlops / 1e9:F1}", double.IsFinite(fmaPeak) ? $"{x.PrefillFlops / fmaPeak:P0}" : "n/a", $"{x.DecodeTps:F2}",
                    $"{x.BytesPerToken / 1e6:F1}", $"{x.DecodeBytesPerSecond / 1e9:F2}", $"{x.DecodeBytesPerSecond / copyBw:P0}");
            AnsiConsole.MarkupLine($"backend [bold]{backend.Name}[/]{(backend is CpuBackend cb ? $" ({cb.Isa})" : "")}, {threads} thread(s); " +
                (double.IsFinite(fmaPeak) ? $"memory copy {copyBw / 1e9:F2} GB/s, F32 FMA peak {fmaPeak / 1e9:F1} GFLOP/s (measured now)"
                                          : $"device memory copy {copyBw / 1e9:F0} GB/s (measured now)"));
            AnsiConsole.Write(t);
            if (results.Count == 2)
                AnsiConsole.MarkupLine($"FP8 decode is [bold]{results[1].DecodeTps / results[0].DecodeTps:F2}x[/] the as-stored decode tok/s.");
            return 0;
        });
        return cmd;
    }

    private sealed record Result(string Name, int PromptTokens, double PrefillTps, double PrefillFlops, int DecodeTokens, double DecodeTps, double BytesPerToken)
    {
        public double DecodeBytesPerSecond => BytesPerToken * DecodeTps;
    }

    private static Result Measure(string name, LoadedModel model, IBackend backend, int prompt, int decode, KvDType kvDtype, Action<long, long> progress)
    {
        var cfg = model.Config;
        int ctx = prompt + decode + 1;
        const int blockSize = 16;
        int blocks = (ctx + blockSize - 1) / blockSize;
        var table = Enumerable.Range(0, blocks).ToArray();
        var spec = new KvCacheSpec(cfg.NumLayers, cfg.NumKvHeads, cfg.HeadDim, blockSize, blocks, kvDtype);
        using var runner = new ModelRunner(cfg, model.Weights, backend, spec, Math.Min(prompt, 256), 1);
        var layout = new BatchLayout(1, runner.MaxTokensPerStep);
        var logits = new float[cfg.VocabSize];
        var rng = new Random(1234);
        var tokens = new int[prompt];
        for (int i = 0; i < prompt; i++) tokens[i] = rng.Next(Math.Min(cfg.VocabSize, model.Tokenizer.VocabCount));

        void Step(ReadOnlySpan<int> chunk, int pos)
        {
            layout.Clear();
            layout.AddSequence(pos, chunk.Length, table);
            runner.Forward(chunk, layout, [chunk.Length - 1], logits);
        }

        // Warm-up: touches every weight page (the checkpoint is memory-mapped) and every code path.
        Step(tokens.AsSpan(0, Math.Min(prompt, 8)), 0);
        Step([tokens[0]], Math.Min(prompt, 8));
        progress(1, 2 + decode);

        var sw = Stopwatch.StartNew();
        for (int pos = 0; pos < prompt; pos += runner.MaxTokensPerStep)
            Step(tokens.AsSpan(pos, Math.Min(runner.MaxTokensPerStep, prompt - pos)), pos);
        double prefillSec = sw.Elapsed.TotalSeconds;
        progress(2, 2 + decode);

        // Prefill FLOPs: every matrix once per token, lm_head once per chunk, attention QK and PV over the causal prefix.
        var w = model.Weights;
        long lmHead = 2L * w.LmHead.Rows * w.LmHead.Cols;
        double flops = (double)(w.MatMulFlopsPerToken - lmHead) * prompt + lmHead * Math.Ceiling(prompt / (double)runner.MaxTokensPerStep);
        flops += 4.0 * cfg.NumLayers * cfg.NumHeads * cfg.HeadDim * (prompt * (prompt + 1) / 2.0);

        int next = Sampler.ArgMax(logits);
        sw.Restart();
        for (int i = 0; i < decode; i++)
        {
            Step([next], prompt + i);
            next = Sampler.ArgMax(logits);
            progress(3 + i, 2 + decode);
        }
        double decodeSec = sw.Elapsed.TotalSeconds;
        double avgCtx = prompt + (decode + 1) / 2.0;
        double kvBytes = avgCtx * spec.BytesPerToken;
        return new Result(name, prompt, prompt / prefillSec, flops / prefillSec, decode, decode / decodeSec, w.BytesPerToken + kvBytes);
    }
}
