using System.Collections.Concurrent;
using System.Diagnostics;
using System.Numerics;
using System.Runtime.ExceptionServices;
using FastServe.Runtime;
using FastServe.Runtime.Backends;
using FastServe.Runtime.Formats;
using FastServe.Runtime.Generation;
using FastServe.Runtime.Model;

namespace FastServe.Scheduler.Execution;

/// <summary>Shape of a <see cref="ModelStepExecutor"/>: step capacity and the paged KV cache.</summary>
public sealed record ModelExecutorOptions
{
    public int MaxTokensPerStep { get; init; } = 512;
    public int MaxSequencesPerStep { get; init; } = 64;
    /// <summary>Context length per sequence; 0 = the model's max_position_embeddings, capped at 8192.</summary>
    public int ContextLength { get; init; }
    public int BlockSize { get; init; } = 16;
    /// <summary>KV cache size in blocks; 0 = as many as <see cref="KvMemoryBytes"/> holds.</summary>
    public int KvBlocks { get; init; }
    /// <summary>Memory budget for the KV cache when <see cref="KvBlocks"/> is 0.</summary>
    public long KvMemoryBytes { get; init; } = 1L << 30;
    public KvDType KvDType { get; init; } = KvDType.F32;
    /// <summary>Let a backend that records steps (<see cref="IStepRecorder"/>: CUDA graphs on the cuda backend) record
    /// decode steps and replay them; false runs every step op by op (<c>--eager</c>).</summary>
    public bool StepGraphs { get; init; } = true;
    /// <summary>Largest decode batch (sequences) the backend may record; larger batches run op by op.</summary>
    public int MaxGraphBatch { get; init; } = 256;
    /// <summary>Pad a decode batch with dummy sequences up to its recorded size (1, 2, 4, then multiples of 8, as
    /// vLLM does), so at most 35 recordings cover 1 to 256 sequences and a size seen once still replays; false
    /// records one step per exact batch size.</summary>
    public bool PadGraphBatches { get; init; } = true;

    /// <summary>Errors: engine.invalid_option.</summary>
    public void Validate()
    {
        static void Bad(string name, string why) => throw new FastServeException("engine.invalid_option", why, name);
        if (MaxTokensPerStep < 1 || MaxTokensPerStep > 65536) Bad("max_batched_tokens", "max-batched-tokens must be between 1 and 65536 on this backend");
        if (MaxSequencesPerStep < 1 || MaxSequencesPerStep > 4096) Bad("max_seqs", "max-seqs must be between 1 and 4096 on this backend");
        if (BlockSize < 1 || BlockSize > 1024) Bad("block_size", "block size must be between 1 and 1024");
        if (KvBlocks < 0) Bad("kv_blocks", "kv blocks must be ≥ 0");
        if (KvMemoryBytes < 1 << 20) Bad("kv_memory", "the KV memory budget must be at least 1 MiB");
        if (MaxGraphBatch < 0 || MaxGraphBatch > 4096) Bad("max_graph_batch", "the largest graph batch must be between 0 and 4096");
    }
}

/// <summary>
/// Runs engine steps on a real backend (CPU, reference, CUDA) through <see cref="ModelRunner"/>, then draws each
/// requested row's token through <see cref="IBackend.Sample"/> by <see cref="CounterSampler"/>'s rules, keyed by the
/// sequence's <see cref="Sampler"/> (so only token ids leave a GPU; decode steps are bracketed for a backend that
/// records and replays steps, an <see cref="IStepRecorder"/>). Steps execute on a dedicated device
/// thread in launch order (the backend's compute pool fans each op out from there), so the scheduler thread is free
/// while a forward pass runs, as it would be with a GPU stream.
/// </summary>
public sealed class ModelStepExecutor : IStepExecutor
{
    private readonly ModelRunner _runner;
    private readonly float[] _logits;
    private readonly BlockingCollection<StepBatch> _queue = new(new ConcurrentQueue<StepBatch>(), 2);
    private readonly Thread _device;
    private readonly int _vocab;
    private readonly SampleRow[] _sampleRows;
    private readonly int[] _sampled;
    private readonly IStepRecorder? _recorder;
    private readonly int _largestRecorded;
    private readonly bool _padSteps;
    private readonly BatchLayout _padLayout = new();
    private readonly int[] _padTokens = [], _padRows = [], _padTable = [];

    /// <summary>Owns nothing it is given: dispose the backend and the model after this. Errors: engine.invalid_option,
    /// args.invalid_context.</summary>
    public ModelStepExecutor(ModelConfig config, ModelWeights weights, IBackend backend, ModelExecutorOptions? options = null)
    {
        options ??= new ModelExecutorOptions();
        options.Validate();
        int ctx = options.ContextLength > 0 ? options.ContextLength : Math.Min(config.MaxPositionEmbeddings, 8192);
        if (ctx < 2 || ctx > config.MaxPositionEmbeddings)
            throw new FastServeException("args.invalid_context", $"context length must be between 2 and {config.MaxPositionEmbeddings}", "ctx");
        MaxContextLength = ctx;
        var probe = new KvCacheSpec(config.NumLayers, config.NumKvHeads, config.HeadDim, options.BlockSize, 1, options.KvDType);
        long blocks = options.KvBlocks > 0 ? options.KvBlocks : options.KvMemoryBytes / (probe.BytesPerToken * options.BlockSize);
        int maxBlocks = int.MaxValue / options.BlockSize - 1;
        if (blocks < 1 || blocks > maxBlocks)
            throw new FastServeException("engine.invalid_option", $"the KV budget gives {blocks} blocks; need 1 to {maxBlocks}", "kv_memory");
        KvSpec = probe with { NumBlocks = (int)blocks };
        MaxTokensPerStep = options.MaxTokensPerStep;
        MaxSequencesPerStep = Math.Min(options.MaxSequencesPerStep, options.MaxTokensPerStep);
        _vocab = config.VocabSize;
        var cacheSpec = KvSpec;
        if (options.StepGraphs && backend is IStepRecorder recorder && options.MaxGraphBatch > 0)
        {
            _recorder = recorder;
            _largestRecorded = Math.Min(options.MaxGraphBatch, MaxSequencesPerStep);
            if (options.PadGraphBatches)
            {
                // Dummy sequences write their one token's K/V into a block past the ones the scheduler hands out.
                _padSteps = true;
                cacheSpec = KvSpec with { NumBlocks = KvSpec.NumBlocks + 1 };
                _padTable = [KvSpec.NumBlocks];
                _padTokens = new int[_largestRecorded];
                _padRows = new int[_largestRecorded];
            }
        }
        _runner = new ModelRunner(config, weights, backend, cacheSpec, MaxTokensPerStep, MaxSequencesPerStep);
        _recorder?.StartStepRecording((ctx + options.BlockSize - 1) / options.BlockSize);
        _logits = new float[(long)MaxSequencesPerStep * _vocab];
        _sampleRows = new SampleRow[MaxSequencesPerStep];
        _sampled = new int[MaxSequencesPerStep];
        Name = backend.Name;
        _device = new Thread(DeviceLoop) { IsBackground = true, Name = "fastserve-device" };
        _device.Start();
    }

    public string Name { get; }
    public int VocabSize => _vocab;
    public int MaxTokensPerStep { get; }
    public int MaxSequencesPerStep { get; }
    public int MaxContextLength { get; }
    public KvCacheSpec KvSpec { get; }
    public int MaxInFlight => 2;

    /// <summary>Decode steps the backend recorded (<see cref="IStepRecorder"/>: CUDA graphs on the cuda backend),
    /// steps that replayed a recording, and recordings or replays it refused (the step ran op by op instead); the
    /// names are those bench-engine reports. Read on any thread; exact once the executor is idle.</summary>
    public long GraphCaptures => Volatile.Read(ref _recorded);
    public long GraphReplays => Volatile.Read(ref _replayed);
    public long GraphFallbacks => Volatile.Read(ref _refused);
    /// <summary>Dummy rows added to decode batches to reach their recorded size (the compute padding costs).</summary>
    public long GraphPadRows => Volatile.Read(ref _padRowCount);
    private long _recorded, _replayed, _refused, _padRowCount;

    /// <summary>The batch size a decode step of <paramref name="n"/> sequences is recorded at: n itself without
    /// padding, else 1, 2, 4, then the next multiple of 8, never above <paramref name="largest"/> (the largest
    /// recorded batch, itself always a size), so at most 35 recordings cover 1 to 256 sequences.</summary>
    public static int GraphBatchSize(int n, int largest, bool pad = true)
    {
        if (!pad || n >= largest) return n;
        int b = n <= 4 ? (int)BitOperations.RoundUpToPowerOf2((uint)n) : (n + 7) & ~7;
        return Math.Min(b, largest);
    }

    public void Launch(StepBatch step)
    {
        step.Done.Reset();
        step.Error = null;
        step.LaunchTicks = Stopwatch.GetTimestamp();
        _queue.Add(step);
    }

    public void Wait(StepBatch step)
    {
        step.Done.Wait();
        step.Error?.Throw();
    }

    private void DeviceLoop()
    {
        try
        {
            foreach (var step in _queue.GetConsumingEnumerable())
            {
                step.StartTicks = Stopwatch.GetTimestamp();
                try { Run(step); }
                catch (Exception e) { step.Error = ExceptionDispatchInfo.Capture(e); }
                step.EndTicks = Stopwatch.GetTimestamp();
                step.Done.Set();
            }
        }
        catch (ObjectDisposedException) { }
    }

    // Every token is drawn by CounterSampler's rules, keyed by its sequence's seed and the position it will take,
    // through the backend's Sample (on a GPU only the ids come back). A step in which some sequence wants
    // log-probabilities downloads the logits instead and draws on the host by the same rules, so a seeded request gets
    // the same tokens on every backend, alone or batched, whichever way its steps went.
    private void Run(StepBatch step)
    {
        int n = step.SampleCount;
        bool logprobs = false;
        for (int i = 0; i < n; i++)
        {
            var sampler = SamplerOf(step, i);
            _sampleRows[i] = sampler.Row(step.SamplePosition[i]);
            logprobs |= step.SampleTop[i] is not null || sampler.Params.Logprobs > 0;
        }
        var tokens = step.Tokens.AsSpan(0, step.TokenCount);
        var rows = step.SampleRow.AsSpan(0, n);
        if (!logprobs)
        {
            if (_recorder is not null && n <= _largestRecorded && step.TokenCount == n && step.Layout.SequenceCount == n) RunRecordedDecode(step, n);
            else ForwardSampled(tokens, step.Layout, rows, n);
            for (int i = 0; i < n; i++) { step.OutToken[i] = _sampled[i]; step.OutLogprob[i] = 0; }
            return;
        }
        _runner.Forward(tokens, step.Layout, rows, _logits);
        for (int i = 0; i < n; i++)
        {
            var row = _logits.AsSpan(i * _vocab, _vocab);
            step.OutToken[i] = SamplerOf(step, i).Sample(row, step.SamplePosition[i], step.SampleTop[i], out step.OutLogprob[i]);
        }
    }

    // A decode step of n sequences (one row each, every row sampled by the backend) has the same ops, tensors and
    // staged sizes as every other of its size b (n padded with dummy sequences), so the backend may record it once
    // and replay it, keyed by b. A step it refuses ran nothing and runs again op by op; a size it has given up on
    // runs unpadded.
    private void RunRecordedDecode(StepBatch step, int n)
    {
        int b = GraphBatchSize(n, _largestRecorded, _padSteps);
        if (!_recorder!.BeginStep(b))
        {
            ForwardSampled(step.Tokens.AsSpan(0, n), step.Layout, step.SampleRow.AsSpan(0, n), n);
            return;
        }
        var (tokenArray, layout, rowArray) = b == n ? (step.Tokens, step.Layout, step.SampleRow) : Pad(step, n, b);
        var tokens = tokenArray.AsSpan(0, b);
        var rows = rowArray.AsSpan(0, b);
        _padRowCount += b - n;  // every way on from here runs the padded step
        StepOutcome outcome;
        try { ForwardSampled(tokens, layout, rows, b); }
        finally { outcome = _recorder.EndStep(); }
        switch (outcome)
        {
            case StepOutcome.Recorded: _recorded++; break;
            case StepOutcome.Replayed: _replayed++; break;
            case StepOutcome.Refused:
                _refused++;
                ForwardSampled(tokens, layout, rows, b);
                break;
        }
    }

    // The step's n decode sequences followed by b − n dummies: token 0 at position 0 in the reserved block, drawn
    // greedily (their tokens are dropped). Their rows come after every real row, so the real rows' logits, K/V and
    // draws are the ones an unpadded step computes.
    private (int[] Tokens, BatchLayout Layout, int[] Rows) Pad(StepBatch step, int n, int b)
    {
        _padLayout.Clear();
        var layout = step.Layout;
        for (int s = 0; s < n; s++) _padLayout.AddSequence(layout.StartPos(s), layout.RowCount(s), layout.BlockTable(s));
        for (int s = n; s < b; s++) _padLayout.AddSequence(0, 1, _padTable);
        step.Tokens.AsSpan(0, n).CopyTo(_padTokens);
        _padTokens.AsSpan(n, b - n).Clear();
        step.SampleRow.AsSpan(0, n).CopyTo(_padRows);
        for (int i = n; i < b; i++) _padRows[i] = i;
        _sampleRows.AsSpan(n, b - n).Fill(PadDraw);
        return (_padTokens, _padLayout, _padRows);
    }

    // A forward pass whose first n tokens are drawn by the backend into _sampled (their rows already in _sampleRows).
    private void ForwardSampled(ReadOnlySpan<int> tokens, BatchLayout layout, ReadOnlySpan<int> rows, int n) =>
        _runner.ForwardSample(tokens, layout, rows, _sampleRows.AsSpan(0, n), _sampled);

    private static readonly SampleRow PadDraw = new(Temperature: 0, TopP: 1, TopK: 0, Seed: 0, Counter: 0);

    private static Sampler SamplerOf(StepBatch step, int i) =>
        step.SampleSampler[i] ?? throw new InvalidOperationException($"sample {i} of step {step.Id} has no sampler");

    public void Dispose()
    {
        _queue.CompleteAdding();
        _device.Join();
        _queue.Dispose();
        _recorder?.StopStepRecording();
        _runner.Dispose();
    }
}
