using System.Diagnostics;
using FastServe.Runtime;
using FastServe.Runtime.Backends;
using FastServe.Runtime.Formats;
using FastServe.Scheduler.Execution;

namespace FastServe.Scheduler.Sim;

/// <summary>
/// Effective rates of a GPU for the step cost model. Calibration and the arithmetic behind <see cref="H100Sxm"/>
/// are in docs/sim.md.
/// </summary>
public sealed record SimDeviceProfile
{
    public required string Name { get; init; }
    /// <summary>Achievable HBM bandwidth, bytes per second.</summary>
    public required double MemoryBandwidth { get; init; }
    /// <summary>Achieved dense matmul rate with FP8 weights (FP8 tensor cores), FLOP per second.</summary>
    public required double MatmulFlopsFp8 { get; init; }
    /// <summary>Achieved dense matmul rate with BF16 weights, FLOP per second.</summary>
    public required double MatmulFlopsBf16 { get; init; }
    /// <summary>Fixed cost of one step: launching a graph-captured forward, copying inputs and sampled ids, syncing.</summary>
    public required double StepOverheadSeconds { get; init; }
    /// <summary>Cost per sequence in a step (attention metadata, sampling).</summary>
    public required double PerSequenceSeconds { get; init; }
    /// <summary>Device memory, and the fraction of what the weights leave that the KV cache may take.</summary>
    public required long DeviceMemoryBytes { get; init; }
    public double KvMemoryFraction { get; init; } = 0.9;

    /// <summary>H100 SXM5 80 GB: 3.35 TB/s HBM3 peak (≈ 80% achievable), 1979/989 TFLOP/s dense FP8/BF16 peak
    /// (≈ 40% achieved on the skinny GEMMs of a 1B decode), ≈ 100 µs per graph-launched step.</summary>
    public static SimDeviceProfile H100Sxm { get; } = new()
    {
        Name = "h100-sxm",
        MemoryBandwidth = 2.68e12,
        MatmulFlopsFp8 = 0.40 * 1979e12,
        MatmulFlopsBf16 = 0.40 * 989e12,
        StepOverheadSeconds = 100e-6,
        PerSequenceSeconds = 0.5e-6,
        DeviceMemoryBytes = 80L << 30,
        KvMemoryFraction = 0.9,
    };
}

/// <summary>What the cost model needs of a model: bytes read per step and FLOPs per row.</summary>
public sealed record SimModelShape
{
    public required string Name { get; init; }
    public required int VocabSize { get; init; }
    public required int MaxContext { get; init; }
    public required int Layers { get; init; }
    public required int KvHeads { get; init; }
    public required int HeadDim { get; init; }
    /// <summary>True: attention and MLP projections in FP8 (1 byte per parameter), else BF16.</summary>
    public required bool Fp8 { get; init; }
    /// <summary>Parameters of the attention and MLP projections (all layers).</summary>
    public required long ProjectionParams { get; init; }
    /// <summary>Parameters of the output head (hidden × vocab), kept BF16.</summary>
    public required long LmHeadParams { get; init; }

    /// <summary>Weight bytes one step reads: projections at 1 or 2 bytes, the head at 2 (the embedding rows a step
    /// gathers are negligible).</summary>
    public long WeightBytes => ProjectionParams * (Fp8 ? 1 : 2) + LmHeadParams * 2;
    public double FlopsPerRow => 2.0 * ProjectionParams;
    public double LmHeadFlopsPerSample => 2.0 * LmHeadParams;
    /// <summary>K and V of one token across all layers in BF16: the KV cache is never quantized.</summary>
    public long KvBytesPerToken => 2L * Layers * KvHeads * HeadDim * 2;

    public static SimModelShape From(ModelConfig c, bool fp8, int maxContext = 8192)
    {
        long q = (long)c.HiddenSize * c.NumHeads * c.HeadDim, kv = (long)c.HiddenSize * c.NumKvHeads * c.HeadDim;
        long perLayer = 2 * q + 2 * kv + 3L * c.HiddenSize * c.IntermediateSize;
        return new SimModelShape
        {
            Name = $"{c.NumLayers}L-{c.HiddenSize}h",
            VocabSize = c.VocabSize,
            MaxContext = Math.Min(c.MaxPositionEmbeddings, maxContext),
            Layers = c.NumLayers,
            KvHeads = c.NumKvHeads,
            HeadDim = c.HeadDim,
            Fp8 = fp8,
            ProjectionParams = perLayer * c.NumLayers,
            LmHeadParams = (long)c.HiddenSize * c.VocabSize,
        };
    }
}

/// <summary>Options of a <see cref="SimStepExecutor"/>.</summary>
public sealed record SimOptions
{
    public int BlockSize { get; init; } = 16;
    public int MaxTokensPerStep { get; init; } = 8192;
    public int MaxSequencesPerStep { get; init; } = 512;
    /// <summary>KV blocks; 0 = what the device memory holds after the weights (capped at 1M blocks).</summary>
    public int KvBlocks { get; init; }
    /// <summary>Multiplies every step's modelled time: 1 = real time, 0 = no waiting (tests).</summary>
    public double TimeScale { get; init; } = 1;
    public ulong Seed { get; init; }

    /// <summary>Errors: engine.invalid_option.</summary>
    public void Validate()
    {
        static void Bad(string name, string why) => throw new FastServeException("engine.invalid_option", why, name);
        if (BlockSize < 1 || BlockSize > 1024) Bad("block_size", "block size must be between 1 and 1024");
        if (MaxTokensPerStep < 1 || MaxTokensPerStep > 1 << 20) Bad("max_batched_tokens", "max-batched-tokens must be between 1 and 1048576");
        if (MaxSequencesPerStep < 1 || MaxSequencesPerStep > 1 << 16) Bad("max_seqs", "max-seqs must be between 1 and 65536");
        if (KvBlocks < 0 || KvBlocks > 1 << 24) Bad("kv_blocks", "kv blocks must be between 0 and 16777216");
        if (!double.IsFinite(TimeScale) || TimeScale < 0 || TimeScale > 1000) Bad("time_scale", "time scale must be between 0 and 1000");
    }
}

/// <summary>
/// A simulated GPU: no math. Each step occupies the device for the time <see cref="StepSeconds"/> models (a roofline
/// over weight reads and matmul FLOPs, plus KV reads and fixed overheads), in launch order, and samples tokens as a
/// hash of (seed, request key, position): the same request gets the same tokens however it is batched. It lets the
/// engine, and everything built around it, run at GPU request rates on a machine without one. Per step it costs a
/// pass over the step's sequences and samples and allocates nothing.
/// </summary>
public sealed class SimStepExecutor : IStepExecutor
{
    private readonly SimModelShape _shape;
    private readonly SimDeviceProfile _profile;
    private readonly SimOptions _opt;
    private readonly double _matmulFlops;
    private long _deviceFreeAt;

    public SimStepExecutor(SimModelShape shape, SimDeviceProfile profile, SimOptions? options = null)
    {
        _opt = options ?? new SimOptions();
        _opt.Validate();
        _shape = shape;
        _profile = profile;
        _matmulFlops = shape.Fp8 ? profile.MatmulFlopsFp8 : profile.MatmulFlopsBf16;
        long blocks = _opt.KvBlocks;
        if (blocks == 0)
        {
            double kvBytes = (profile.DeviceMemoryBytes - shape.WeightBytes) * profile.KvMemoryFraction;
            blocks = Math.Clamp((long)(kvBytes / (shape.KvBytesPerToken * (double)_opt.BlockSize)), 1, 1 << 20);
        }
        KvSpec = new KvCacheSpec(shape.Layers, shape.KvHeads, shape.HeadDim, _opt.BlockSize, (int)blocks, KvDType.BF16);
    }

    public string Name => "sim";
    public int VocabSize => _shape.VocabSize;
    public int MaxTokensPerStep => _opt.MaxTokensPerStep;
    public int MaxSequencesPerStep => _opt.MaxSequencesPerStep;
    public int MaxContextLength => _shape.MaxContext;
    public KvCacheSpec KvSpec { get; }
    public int MaxInFlight => 2;
    public SimModelShape Shape => _shape;
    public SimDeviceProfile Profile => _profile;

    /// <summary>Modelled device time of a step: overhead + per-sequence cost + max(weight bytes / bandwidth,
    /// matmul FLOPs / rate) + KV bytes attention reads / bandwidth.</summary>
    public double StepSeconds(int rows, int sequences, int samples, long contextTokens) =>
        _profile.StepOverheadSeconds
        + _profile.PerSequenceSeconds * sequences
        + Math.Max(_shape.WeightBytes / _profile.MemoryBandwidth, (rows * _shape.FlopsPerRow + samples * _shape.LmHeadFlopsPerSample) / _matmulFlops)
        + contextTokens * (double)_shape.KvBytesPerToken / _profile.MemoryBandwidth;

    public double StepSeconds(StepBatch step)
    {
        var l = step.Layout;
        long context = 0;
        for (int s = 0; s < l.SequenceCount; s++) context += l.StartPos(s) + l.RowCount(s);
        return StepSeconds(step.TokenCount, l.SequenceCount, step.SampleCount, context);
    }

    public void Launch(StepBatch step)
    {
        long now = Stopwatch.GetTimestamp();
        step.LaunchTicks = now;
        step.Error = null;
        if (Check(step) is { } problem)
        {
            step.Error = System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(new InvalidOperationException($"step {step.Id}: {problem}"));
            step.StartTicks = step.EndTicks = now;
            return;
        }
        long start = Math.Max(now, _deviceFreeAt);
        long end = start + (long)(StepSeconds(step) * _opt.TimeScale * Stopwatch.Frequency);
        step.StartTicks = start;
        step.EndTicks = end;
        _deviceFreeAt = end;
        for (int i = 0; i < step.SampleCount; i++)
        {
            ulong h = Mix(_opt.Seed ^ Mix(step.SampleKey[i] + (ulong)step.SamplePosition[i] * 0x9E3779B97F4A7C15UL));
            step.OutToken[i] = (int)(h % (ulong)_shape.VocabSize);
            step.OutLogprob[i] = -(float)((h >> 40) % 10000) / 1000f;
        }
    }

    public void Wait(StepBatch step)
    {
        step.Error?.Throw();
        SleepUntil(step.EndTicks);
    }

    // Sleeps the bulk (the OS wakes a little late), then yields the last ~1 ms: steps end within tens of
    // microseconds of their modelled time while an idle wait costs little CPU.
    private static void SleepUntil(long due)
    {
        while (true)
        {
            long left = due - Stopwatch.GetTimestamp();
            if (left <= 0) return;
            double ms = left * 1000.0 / Stopwatch.Frequency;
            if (ms > 1.2) Thread.Sleep((int)(ms - 1.0) is > 0 and var m ? m : 1);
            else Thread.Yield();
        }
    }

    // The engine's bugs surface here rather than as silent nonsense: every row maps to an allocated block.
    private string? Check(StepBatch step)
    {
        var l = step.Layout;
        if (step.TokenCount > MaxTokensPerStep) return $"{step.TokenCount} rows exceed {MaxTokensPerStep}";
        if (l.SequenceCount > MaxSequencesPerStep) return $"{l.SequenceCount} sequences exceed {MaxSequencesPerStep}";
        for (int s = 0; s < l.SequenceCount; s++)
        {
            int last = l.StartPos(s) + l.RowCount(s) - 1;
            if (l.StartPos(s) < 0 || last >= MaxContextLength) return $"sequence {s} spans positions {l.StartPos(s)}..{last}";
            var table = l.BlockTable(s);
            if (table.Length <= last / KvSpec.BlockSize) return $"sequence {s}: {table.Length} blocks cannot hold position {last}";
            for (int b = 0; b <= last / KvSpec.BlockSize; b++)
                if ((uint)table[b] >= (uint)KvSpec.NumBlocks) return $"sequence {s}: block id {table[b]} out of range";
        }
        for (int i = 0; i < step.TokenCount; i++)
            if ((uint)step.Tokens[i] >= (uint)VocabSize) return $"row {i}: token {step.Tokens[i]} outside the vocabulary";
        for (int i = 0; i < step.SampleCount; i++)
            if ((uint)step.SampleRow[i] >= (uint)step.TokenCount) return $"sample {i}: row {step.SampleRow[i]} outside the step";
        return null;
    }

    private static ulong Mix(ulong z)
    {
        z += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    public void Dispose() { }
}
