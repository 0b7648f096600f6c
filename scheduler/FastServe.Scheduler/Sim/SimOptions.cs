namespace FastServe.Scheduler.Sim;

/// <summary>
/// Settings of a <see cref="SimStepExecutor"/>. Zero means "derive it" where said. Checked by the executor's
/// constructor (<c>sim.invalid_option</c>, path <c>SimOptions.&lt;Field&gt;</c>).
/// </summary>
public sealed record SimOptions
{
    /// <summary>Largest KV cache the executor derives from device memory, in blocks.</summary>
    public const int MaxDerivedKvBlocks = 1 << 20;

    /// <summary>Cap on the context length derived from the model config, in tokens.</summary>
    public const int MaxDerivedContextLength = 8192;

    /// <summary>Token slots per KV block.</summary>
    public int BlockSize { get; init; } = 16;

    /// <summary>Most rows (tokens) per step.</summary>
    public int MaxTokensPerStep { get; init; } = 8192;

    /// <summary>Most sequences (and so samples) per step.</summary>
    public int MaxSequencesPerStep { get; init; } = 256;

    /// <summary>Context limit in tokens; 0 = the model's max_position_embeddings capped at
    /// <see cref="MaxDerivedContextLength"/>. May not exceed max_position_embeddings.</summary>
    public int MaxContextLength { get; init; }

    /// <summary>KV cache blocks; 0 = what fits: (DeviceMemory · KvMemoryFraction − resident weight bytes) /
    /// (BlockSize · KV bytes per token), capped at <see cref="MaxDerivedKvBlocks"/>. An explicit count is taken as
    /// is (no memory check), so tests can use small caches.</summary>
    public int KvBlocks { get; init; }

    /// <summary>Wall-clock seconds per modelled device second: 1 = real time, 0.5 = twice as fast, 0 = no waiting.</summary>
    public double TimeScale { get; init; } = 1;

    /// <summary>Mean wall-clock seconds between device stalls (gaps drawn from an exponential distribution, seeded by
    /// <see cref="Seed"/>); 0 = never. Models a device that freezes now and then (a throttled GPU, a driver hiccup,
    /// a noisy neighbour) for load-balancing tests.</summary>
    public double StallEverySeconds { get; init; }

    /// <summary>Wall-clock seconds each stall lasts (not scaled by <see cref="TimeScale"/>).</summary>
    public double StallSeconds { get; init; } = 2;

    /// <summary>Seed of the pseudo-random tokens.</summary>
    public ulong Seed { get; init; }
}
