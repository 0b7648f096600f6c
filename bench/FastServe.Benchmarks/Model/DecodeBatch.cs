using System.Diagnostics;
using System.Text;
using System.Text.Json;
using FastServe.Runtime;
using FastServe.Runtime.Backends;
using FastServe.Runtime.Backends.Cpu;
using FastServe.Runtime.Formats;
using FastServe.Runtime.Generation;
using FastServe.Runtime.Model;
using Spectre.Console;

namespace FastServe.Benchmarks.Model;

/// <summary>
/// <c>decode-batch</c>: CPU decode throughput of a real model against batch size, measured the way an engine's
/// decode step runs. One <see cref="ModelRunner"/> over a paged KV cache holds the largest batch's sequences, each
/// prefilled with <c>context</c> random prompt tokens on its own block table (blocks interleaved between sequences,
/// so tables are scattered as an engine's allocator leaves them). For each batch size B: one warm-up step, then
/// <c>steps</c> timed steps of B rows (one decode token per sequence, logits for every row, each row's next token
/// its argmax). Every batch size restarts from the same prefilled state at the same position.
/// </summary>
/// <remarks>Exit codes: 0 done, 2 bad command line (<c>args.*</c>) or missing model directory (<c>model.not_found</c>),
/// 1 any other error (the model files, memory). Errors print one line, <c>error[code]: path: message</c>.</remarks>
internal static class DecodeBatch
{
    private const int BlockSize = 16;
    private const int Seed = 1234;

    /// <summary>KV caches larger than this are refused (<c>args.kv_too_large</c>): with a 1B model's weights
    /// (2.5 GB mapped plus 1.3 GB if quantized at load) it keeps the process well inside a 24 GiB machine.</summary>
    public const long MaxKvBytes = 8L << 30;

    public static int Run(string[] args)
    {
        try
        {
            var o = DecodeBatchOptions.Parse(args);
            if (o is null)
            {
                Console.WriteLine(DecodeBatchOptions.Usage);
                return 0;
            }
            return Measure(o);
        }
        catch (FastServeException e)
        {
            Console.Error.WriteLine(e.ToString());
            return e.Code.StartsWith("args.", StringComparison.Ordinal) || e.Code == "model.not_found" ? 2 : 1;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            Console.Error.WriteLine(new FastServeException("io.error", e.Message).ToString());
            return 1;
        }
    }

    private static int Measure(DecodeBatchOptions o)
    {
        if (!Directory.Exists(o.ModelDir)) throw new FastServeException("model.not_found", "model directory does not exist", o.ModelDir);
        var cfg = ModelConfig.Load(Path.Combine(o.ModelDir, "config.json"));

        int seqs = o.Batches[^1];
        int positions = o.Context + 1 + o.Steps; // prompt, warm-up step, timed steps
        if (positions > cfg.MaxPositionEmbeddings)
            throw new FastServeException("args.invalid_context",
                $"context + steps + 1 = {positions} exceeds the model's max_position_embeddings {cfg.MaxPositionEmbeddings}", "--context");
        int blocksPerSeq = (positions + BlockSize - 1) / BlockSize;
        var spec = new KvCacheSpec(cfg.NumLayers, cfg.NumKvHeads, cfg.HeadDim, BlockSize, seqs * blocksPerSeq, o.KvDType);
        if (spec.TotalBytes > MaxKvBytes)
            throw new FastServeException("args.kv_too_large",
                $"the KV cache for {seqs} sequences x {positions} positions would take {spec.TotalBytes / (double)(1L << 30):F1} GiB " +
                $"(limit {MaxKvBytes >> 30} GiB); lower --context, --steps or the largest batch" + (o.KvDType == KvDType.F32 ? ", or use --kv-dtype bf16" : ""),
                "--context");

        Status(o, $"loading {o.ModelDir}{(o.Quantize ? " (quantizing to FP8 at load)" : "")}; KV cache {seqs} sequences x {positions} positions, " +
            $"{o.KvDType} {spec.TotalBytes / (double)(1L << 20):F1} MiB");
        using var model = LoadedModel.Load(o.ModelDir, o.Quantize ? new Fp8LoadOptions() : null);
        using var backend = new CpuBackend(o.Threads);
        using var runner = new ModelRunner(cfg, model.Weights, backend, spec, Math.Max(256, seqs), seqs);
        var w = model.Weights;
        string weightsLabel = o.Quantize ? "fp8" : w.Layers[0].Q.DType.ToString().ToLowerInvariant();
        Status(o, $"loaded in {model.LoadTime.TotalSeconds:F1} s; {weightsLabel} matrices, {w.BytesPerToken / 1e6:F1} MB of weights per step; " +
            $"cpu {backend.Isa}, {backend.Threads} thread(s)");

        // Sequence s owns blocks s, s + seqs, s + 2·seqs, ...: no two neighbouring blocks belong to one sequence.
        var tables = new int[seqs][];
        for (int s = 0; s < seqs; s++)
        {
            tables[s] = new int[blocksPerSeq];
            for (int j = 0; j < blocksPerSeq; j++) tables[s][j] = j * seqs + s;
        }

        var rng = new Random(Seed);
        int vocab = Math.Min(cfg.VocabSize, model.Tokenizer.VocabCount);
        var prompts = new int[seqs][];
        for (int s = 0; s < seqs; s++) prompts[s] = RandomPrompt(rng, o.Context, vocab);

        var layout = new BatchLayout(seqs, runner.MaxTokensPerStep);
        var logits = new float[seqs * cfg.VocabSize];
        var firstDecodeToken = new int[seqs];
        var sw = Stopwatch.StartNew();
        Prefill(runner, layout, tables, prompts, o.Context, logits, firstDecodeToken);
        Status(o, $"prefilled {seqs} x {o.Context} tokens in {sw.Elapsed.TotalSeconds:F1} s");

        var rows = new List<Row>();
        var tokens = new int[seqs];
        var logitRows = Enumerable.Range(0, seqs).ToArray();
        var times = new double[o.Steps];
        long embedRow = (long)w.Embedding.Cols * w.Embedding.DType.SizeOf();
        foreach (int b in o.Batches)
        {
            firstDecodeToken.AsSpan(0, b).CopyTo(tokens);
            // Warm-up at position `context`, then timed steps at context+1 .. context+steps; earlier batch sizes'
            // K/V at these positions is overwritten before it is read.
            DecodeStep(runner, layout, tables, tokens, b, o.Context, logitRows, logits, cfg.VocabSize);
            for (int i = 0; i < o.Steps; i++)
                times[i] = DecodeStep(runner, layout, tables, tokens, b, o.Context + 1 + i, logitRows, logits, cfg.VocabSize);
            double median = Median(times);
            // Attention reads positions 0..pos of each row's sequence; averaged over the timed steps.
            double kvRead = b * spec.BytesPerToken * (o.Context + 2 + (o.Steps - 1) / 2.0);
            rows.Add(new Row(b, median, times.Min(), w.BytesPerToken + (b - 1) * embedRow, kvRead));
            Status(o, $"batch {b}: {median * 1e3:F2} ms/step");
        }

        int baseBatch = rows[0].Batch;
        double baseTps = rows[0].TokensPerSecond;
        if (o.Json) WriteJson(o, cfg, backend, spec, weightsLabel, baseBatch, baseTps, rows);
        else WriteTable(o, backend, spec, weightsLabel, baseBatch, baseTps, rows);
        return 0;
    }

    /// <summary>Runs every prompt through the model, packing sequences (and chunks of long ones) into steps of up
    /// to MaxTokensPerStep rows; each sequence's first decode token is the argmax after its last prompt token.</summary>
    private static void Prefill(ModelRunner runner, BatchLayout layout, int[][] tables, int[][] prompts, int context,
        float[] logits, int[] firstDecodeToken)
    {
        int cap = runner.MaxTokensPerStep, vocab = runner.VocabSize;
        var stepTokens = new int[cap];
        var logitRows = new List<int>();
        var finished = new List<int>();
        int seq = 0, done = 0;
        while (seq < prompts.Length)
        {
            layout.Clear();
            logitRows.Clear();
            finished.Clear();
            int rows = 0;
            while (seq < prompts.Length && rows < cap)
            {
                int n = Math.Min(context - done, cap - rows);
                layout.AddSequence(done, n, tables[seq]);
                prompts[seq].AsSpan(done, n).CopyTo(stepTokens.AsSpan(rows));
                rows += n;
                done += n;
                if (done == context)
                {
                    logitRows.Add(rows - 1);
                    finished.Add(seq);
                    seq++;
                    done = 0;
                }
            }
            runner.Forward(stepTokens.AsSpan(0, rows), layout, logitRows.ToArray(), logits);
            for (int i = 0; i < finished.Count; i++) firstDecodeToken[finished[i]] = Sampler.ArgMax(logits.AsSpan(i * vocab, vocab));
        }
    }

    /// <summary>One decode step over sequences 0..b-1 at <paramref name="pos"/>; returns the seconds Forward took
    /// and leaves each row's argmax in <paramref name="tokens"/> for the next step.</summary>
    private static double DecodeStep(ModelRunner runner, BatchLayout layout, int[][] tables, int[] tokens, int b, int pos,
        int[] logitRows, float[] logits, int vocab)
    {
        layout.Clear();
        for (int s = 0; s < b; s++) layout.AddSequence(pos, 1, tables[s]);
        long t0 = Stopwatch.GetTimestamp();
        runner.Forward(tokens.AsSpan(0, b), layout, logitRows.AsSpan(0, b), logits);
        double seconds = Stopwatch.GetElapsedTime(t0).TotalSeconds;
        for (int s = 0; s < b; s++) tokens[s] = Sampler.ArgMax(logits.AsSpan(s * vocab, vocab));
        return seconds;
    }

    /// <summary><paramref name="n"/> distinct token ids below <paramref name="vocab"/> (repeats only if n exceeds it).</summary>
    private static int[] RandomPrompt(Random rng, int n, int vocab)
    {
        var ids = new int[n];
        var seen = new HashSet<int>();
        for (int i = 0; i < n; i++)
        {
            int t;
            do t = rng.Next(vocab);
            while (seen.Count < vocab && !seen.Add(t));
            ids[i] = t;
        }
        return ids;
    }

    private static double Median(double[] x)
    {
        var s = (double[])x.Clone();
        Array.Sort(s);
        int m = s.Length / 2;
        return s.Length % 2 == 1 ? s[m] : (s[m - 1] + s[m]) / 2;
    }

    private sealed record Row(int Batch, double MedianSeconds, double MinSeconds, long WeightBytes, double KvBytes)
    {
        public double TokensPerSecond => Batch / MedianSeconds;
        public double WeightBytesPerSecond => WeightBytes / MedianSeconds;
    }

    private static void Status(DecodeBatchOptions o, string line)
    {
        if (!o.Json) Console.Error.WriteLine(line);
    }

    private static void WriteTable(DecodeBatchOptions o, CpuBackend backend, KvCacheSpec spec, string weightsLabel,
        int baseBatch, double baseTps, List<Row> rows)
    {
        Console.WriteLine($"decode-batch: {o.ModelDir}, {weightsLabel} weights, cpu {backend.Isa} x{backend.Threads}, " +
            $"context {o.Context}, KV {spec.DType.ToString().ToLowerInvariant()}; ms/step is the median of {o.Steps} steps");
        var t = new Table().AddColumns(
            new TableColumn("batch").RightAligned(), new TableColumn("ms/step").RightAligned(),
            new TableColumn("min ms").RightAligned(), new TableColumn("tok/s").RightAligned(),
            new TableColumn($"vs B={baseBatch}").RightAligned(), new TableColumn("weight GB/s").RightAligned(),
            new TableColumn("KV MB/step").RightAligned());
        foreach (var r in rows)
            t.AddRow($"{r.Batch}", $"{r.MedianSeconds * 1e3:F2}", $"{r.MinSeconds * 1e3:F2}", $"{r.TokensPerSecond:F1}",
                $"{r.TokensPerSecond / baseTps:F2}x", $"{r.WeightBytesPerSecond / 1e9:F2}", $"{r.KvBytes / 1e6:F1}");
        AnsiConsole.Write(t);
    }

    private static void WriteJson(DecodeBatchOptions o, ModelConfig cfg, CpuBackend backend, KvCacheSpec spec, string weightsLabel,
        int baseBatch, double baseTps, List<Row> rows)
    {
        using var ms = new MemoryStream();
        using (var w = new Utf8JsonWriter(ms, new JsonWriterOptions { Indented = true }))
        {
            w.WriteStartObject();
            w.WriteString("model", Path.GetFullPath(o.ModelDir));
            w.WriteString("weights", weightsLabel);
            w.WriteNumber("hidden_size", cfg.HiddenSize);
            w.WriteNumber("layers", cfg.NumLayers);
            w.WriteString("backend", backend.Name);
            w.WriteString("isa", backend.Isa);
            w.WriteNumber("threads", backend.Threads);
            w.WriteNumber("context", o.Context);
            w.WriteNumber("steps", o.Steps);
            w.WriteString("kv_dtype", spec.DType.ToString().ToLowerInvariant());
            w.WriteNumber("kv_cache_bytes", spec.TotalBytes);
            w.WriteNumber("speedup_base_batch", baseBatch);
            w.WriteStartArray("rows");
            foreach (var r in rows)
            {
                w.WriteStartObject();
                w.WriteNumber("batch", r.Batch);
                w.WriteNumber("step_ms_median", r.MedianSeconds * 1e3);
                w.WriteNumber("step_ms_min", r.MinSeconds * 1e3);
                w.WriteNumber("tokens_per_second", r.TokensPerSecond);
                w.WriteNumber("speedup", r.TokensPerSecond / baseTps);
                w.WriteNumber("weight_bytes_per_step", r.WeightBytes);
                w.WriteNumber("weight_read_gb_s", r.WeightBytesPerSecond / 1e9);
                w.WriteNumber("kv_read_bytes_per_step", r.KvBytes);
                w.WriteEndObject();
            }
            w.WriteEndArray();
            w.WriteEndObject();
        }
        Console.Out.WriteLine(Encoding.UTF8.GetString(ms.ToArray()));
    }
}
