using System.Diagnostics;
using FastServe.Runtime;
using FastServe.Runtime.Backends;
using FastServe.Runtime.Generation;
using FastServe.Scheduler.Execution;

namespace FastServe.Scheduler.Sim;

/// <summary>
/// A simulated GPU (<c>--backend sim</c>): no math. Each step occupies the device for the time
/// <see cref="SimCostModel"/> gives (scaled by <see cref="SimOptions.TimeScale"/>), steps queue one after another
/// like kernels on a stream, and sampled tokens are a hash of (seed, sample key, position), so a sequence gets the
/// same tokens however it is batched. It lets the engine run at GPU rates on a small CPU: a step costs a pass over
/// its sequences and samples, vectorised range checks over its tokens and block tables, and no allocation.
///
/// <see cref="Launch"/> validates the step (block tables cover the last position, block ids and tokens in range,
/// sample rows and positions consistent, limits respected); a violation is an engine bug and is thrown by
/// <see cref="Wait"/> as <see cref="InvalidOperationException"/> naming the step, the sequence or sample, and the
/// values. Launch itself throws <see cref="InvalidOperationException"/> when more than <see cref="MaxInFlight"/>
/// steps are in flight or the same batch is launched twice. One thread calls Launch and Wait.
/// </summary>
public sealed class SimStepExecutor : IStepExecutor
{
    private readonly SimModelShape _shape;
    private readonly SimDeviceProfile _profile;
    private readonly double _timeScale;
    private readonly ulong _seedMix;
    private readonly int _blockSize;
    private readonly double _ticksPerSecond = Stopwatch.Frequency;

    // In-flight steps, by slot; written and read by the launching thread only.
    private readonly StepBatch?[] _inFlight;
    private readonly long[] _endTicks;
    private readonly string?[] _error;
    private long _deviceFreeTicks;
    private readonly Random? _stallRng;
    private readonly double _stallMeanTicks;
    private readonly long _stallTicks;
    private long _nextStallTicks, _stalls;

    // Written by the launching thread; other threads may read a snapshot that mixes two steps.
    private long _steps, _rows, _samples;
    private double _busySeconds, _modelSeconds;
    private bool _disposed;

    /// <summary>
    /// A simulated device running <paramref name="shape"/> on <paramref name="profile"/>. Errors
    /// (<see cref="FastServeException"/>): <c>sim.invalid_option</c> (an option out of range; path names it),
    /// <c>sim.invalid_profile</c>, <c>sim.insufficient_memory</c> (the derived KV cache cannot hold one sequence
    /// of the maximum context).
    /// </summary>
    public SimStepExecutor(SimModelShape shape, SimDeviceProfile profile, SimOptions options)
    {
        ArgumentNullException.ThrowIfNull(shape);
        ArgumentNullException.ThrowIfNull(profile);
        ArgumentNullException.ThrowIfNull(options);
        profile.Validate();
        _shape = shape;
        _profile = profile;

        if (options.BlockSize is < 1 or > 4096) throw BadOption(nameof(options.BlockSize), options.BlockSize, "between 1 and 4096");
        if (options.MaxTokensPerStep < 1) throw BadOption(nameof(options.MaxTokensPerStep), options.MaxTokensPerStep, "at least 1");
        if (options.MaxSequencesPerStep < 1) throw BadOption(nameof(options.MaxSequencesPerStep), options.MaxSequencesPerStep, "at least 1");
        if (options.MaxContextLength < 0 || options.MaxContextLength > shape.MaxPositionEmbeddings)
            throw BadOption(nameof(options.MaxContextLength), options.MaxContextLength, $"between 0 and the model's {shape.MaxPositionEmbeddings}");
        if (options.KvBlocks < 0) throw BadOption(nameof(options.KvBlocks), options.KvBlocks, "0 (derive) or more");
        if (!(options.TimeScale >= 0) || !double.IsFinite(options.TimeScale))
            throw BadOption(nameof(options.TimeScale), options.TimeScale, "finite and 0 or more");
        if (!(options.StallEverySeconds >= 0) || !double.IsFinite(options.StallEverySeconds))
            throw BadOption(nameof(options.StallEverySeconds), options.StallEverySeconds, "finite and 0 or more");
        if (!(options.StallSeconds >= 0) || options.StallSeconds > 3600)
            throw BadOption(nameof(options.StallSeconds), options.StallSeconds, "between 0 and 3600");

        _blockSize = options.BlockSize;
        _timeScale = options.TimeScale;
        if (options.StallEverySeconds > 0)
        {
            _stallRng = new Random((int)(options.Seed ^ (options.Seed >> 32)) ^ 0x51A11);
            _stallMeanTicks = options.StallEverySeconds * _ticksPerSecond;
            _stallTicks = (long)(options.StallSeconds * _ticksPerSecond);
            _nextStallTicks = Stopwatch.GetTimestamp() + StallGap();
        }
        _seedMix = Mix(options.Seed);
        MaxTokensPerStep = options.MaxTokensPerStep;
        MaxSequencesPerStep = options.MaxSequencesPerStep;
        MaxContextLength = options.MaxContextLength > 0
            ? options.MaxContextLength
            : Math.Min(shape.MaxPositionEmbeddings, SimOptions.MaxDerivedContextLength);

        int blocks = options.KvBlocks;
        if (blocks == 0)
        {
            long blocksForOneSequence = (MaxContextLength + _blockSize - 1) / _blockSize;
            double kvBytes = profile.DeviceMemory * profile.KvMemoryFraction - shape.ResidentWeightBytes;
            double derived = Math.Floor(kvBytes / ((double)_blockSize * shape.KvBytesPerToken));
            if (derived < blocksForOneSequence)
                throw new FastServeException("sim.insufficient_memory",
                    $"{profile.Name}: {profile.DeviceMemory * profile.KvMemoryFraction / 1e9:F2} GB usable holds {shape.ResidentWeightBytes / 1e9:F2} GB of weights " +
                    $"but not a KV cache for one sequence of {MaxContextLength} tokens", profile.Name);
            blocks = (int)Math.Min(derived, SimOptions.MaxDerivedKvBlocks);
        }
        KvSpec = new KvCacheSpec(shape.Layers, shape.KvHeads, shape.HeadDim, _blockSize, blocks, KvDType.BF16);

        _inFlight = new StepBatch?[MaxInFlight];
        _endTicks = new long[MaxInFlight];
        _error = new string?[MaxInFlight];
    }

    public string Name => "sim";
    public int VocabSize => _shape.VocabSize;
    public int MaxTokensPerStep { get; }
    public int MaxSequencesPerStep { get; }
    public int MaxContextLength { get; }
    public KvCacheSpec KvSpec { get; }
    public int MaxInFlight => 2;

    public SimModelShape Shape => _shape;
    public SimDeviceProfile Profile => _profile;

    /// <summary>Totals since construction, counted at launch.</summary>
    public SimDeviceStats Stats => new(_steps, _rows, _samples, _busySeconds, _modelSeconds);

    /// <summary>Modelled device seconds of <paramref name="step"/> (unscaled by TimeScale).</summary>
    public double TimeSeconds(StepBatch step) => SimCostModel.StepSeconds(_shape, _profile, step);

    /// <summary>Modelled device seconds of a step given by its counts (see <see cref="SimCostModel"/>).</summary>
    public double TimeSeconds(int rows, int sequences, int samples, long contextTokens, long attendedPairs) =>
        SimCostModel.StepSeconds(_shape, _profile, rows, sequences, samples, contextTokens, attendedPairs);

    public void Launch(StepBatch step)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        ArgumentNullException.ThrowIfNull(step);
        int slot = -1;
        for (int i = 0; i < _inFlight.Length; i++)
        {
            if (ReferenceEquals(_inFlight[i], step))
                throw new InvalidOperationException($"step {step.Id} is launched again while still in flight");
            if (slot < 0 && _inFlight[i] is null) slot = i;
        }
        if (slot < 0) throw new InvalidOperationException($"step {step.Id} launched while {MaxInFlight} steps are in flight");

        long launch = Stopwatch.GetTimestamp();
        string? error = Validate(step, out long context, out long pairs);
        double seconds = 0;
        if (error is null)
        {
            seconds = SimCostModel.StepSeconds(_shape, _profile, step.TokenCount, step.Layout.SequenceCount, step.SampleCount, context, pairs);
            WriteSamples(step);
        }
        double scaled = seconds * _timeScale;
        long start = Math.Max(launch, _deviceFreeTicks);
        if (_stallRng is not null && start >= _nextStallTicks)
        {
            // The device freezes before this step: it and everything queued behind it wait out the stall.
            start += _stallTicks;
            _nextStallTicks = start + StallGap();
            _stalls++;
        }
        long end = start + (long)(scaled * _ticksPerSecond);
        _deviceFreeTicks = end;
        step.LaunchTicks = launch;
        step.StartTicks = start;
        step.EndTicks = end;

        _inFlight[slot] = step;
        _endTicks[slot] = end;
        _error[slot] = error;
        _steps++;
        _rows += step.TokenCount;
        _samples += step.SampleCount;
        _modelSeconds += seconds;
        _busySeconds += scaled;
    }

    public void Wait(StepBatch step)
    {
        ArgumentNullException.ThrowIfNull(step);
        int slot = Array.IndexOf(_inFlight, step);
        if (slot < 0) throw new InvalidOperationException($"step {step.Id} was not launched, or was already waited for");
        if (_timeScale > 0 || _stallRng is not null) PreciseWait.Until(_endTicks[slot]);
        string? error = _error[slot];
        _inFlight[slot] = null;
        _error[slot] = null;
        if (error is not null) throw new InvalidOperationException(error);
    }

    public void Dispose() => _disposed = true;

    /// <summary>Stalls injected so far (<see cref="SimOptions.StallEverySeconds"/>).</summary>
    public long Stalls => _stalls;

    private long StallGap() => (long)(-Math.Log(1 - _stallRng!.NextDouble()) * _stallMeanTicks);

    /// <summary>The token the simulated device samples for (<paramref name="key"/>, <paramref name="position"/>):
    /// a SplitMix64 hash of seed, key and position, modulo <paramref name="vocabSize"/>.</summary>
    public static int SampleToken(ulong seed, ulong key, int position, int vocabSize) =>
        (int)(Hash(Mix(seed), key, position) % (ulong)vocabSize);

    /// <summary>The log-probability reported with <see cref="SampleToken"/>: deterministic, in (-10, 0).</summary>
    public static float SampleLogprob(ulong seed, ulong key, int position) => LogprobOf(Hash(Mix(seed), key, position));

    // Null when the step is well formed, else what is wrong (built only then: the valid path allocates nothing).
    private string? Validate(StepBatch step, out long context, out long pairs)
    {
        context = 0;
        pairs = 0;
        var layout = step.Layout;
        int rows = layout.TotalRows, seqs = layout.SequenceCount, samples = step.SampleCount;
        if (seqs == 0) return $"step {step.Id} has no sequences";
        if (rows > MaxTokensPerStep) return $"step {step.Id} has {rows} rows, more than MaxTokensPerStep {MaxTokensPerStep}";
        if (seqs > MaxSequencesPerStep) return $"step {step.Id} has {seqs} sequences, more than MaxSequencesPerStep {MaxSequencesPerStep}";
        if (samples < 0 || samples > seqs) return $"step {step.Id} asks for {samples} samples from {seqs} sequences";

        int bad = step.Tokens.AsSpan(0, rows).IndexOfAnyExceptInRange(0, VocabSize - 1);
        if (bad >= 0) return $"step {step.Id}: row {bad} has token {step.Tokens[bad]}, outside the vocabulary 0..{VocabSize - 1}";

        int maxBlock = KvSpec.NumBlocks - 1;
        for (int s = 0; s < seqs; s++)
        {
            int start = layout.StartPos(s), n = layout.RowCount(s);
            long end = (long)start + n;
            if (start < 0 || n < 1) return $"step {step.Id}: sequence {s} has start position {start} and {n} rows";
            if (end > MaxContextLength) return $"step {step.Id}: sequence {s} reaches position {end - 1}, past MaxContextLength {MaxContextLength}";
            var table = layout.BlockTable(s);
            int needed = (int)((end + _blockSize - 1) / _blockSize);
            if (table.Length < needed)
                return $"step {step.Id}: sequence {s} (start {start}, {n} rows) needs {needed} blocks of {_blockSize} but its block table has {table.Length}";
            int b = table[..needed].IndexOfAnyExceptInRange(0, maxBlock);
            if (b >= 0) return $"step {step.Id}: sequence {s} block table entry {b} is block {table[b]}, outside 0..{maxBlock}";
            context += end;
            pairs += SimCostModel.AttendedPairs(start, n);
        }

        var positions = layout.Positions;
        for (int i = 0; i < samples; i++)
        {
            int row = step.SampleRow[i];
            if ((uint)row >= (uint)rows) return $"step {step.Id}: sample {i} reads row {row}, outside the step's {rows} rows";
            if (step.SamplePosition[i] != positions[row] + 1)
                return $"step {step.Id}: sample {i} is for position {step.SamplePosition[i]} but row {row} is at position {positions[row]} (so samples position {positions[row] + 1})";
        }
        return null;
    }

    private void WriteSamples(StepBatch step)
    {
        for (int i = 0; i < step.SampleCount; i++)
        {
            ulong key = step.SampleKey[i];
            int position = step.SamplePosition[i];
            ulong h = Hash(_seedMix, key, position);
            int token = (int)(h % (ulong)VocabSize);
            float logprob = LogprobOf(h);
            step.OutToken[i] = token;
            step.OutLogprob[i] = logprob;
            if (step.SampleTop[i] is { Length: > 0 } top) WriteTop(top, token, logprob, key, position);
        }
    }

    // The sampled token is the most likely; the others take geometric shares of a mass that stays below both the
    // sampled token's probability and what is left of 1, so the list is descending and sums to less than 1.
    private void WriteTop(TokenLogprob[] top, int token, float logprob, ulong key, int position)
    {
        top[0] = new TokenLogprob(token, logprob);
        double p = Math.Exp(logprob);
        double mass = Math.Min(p, 1 - p);
        for (int j = 1; j < top.Length; j++)
        {
            int id = (int)(Hash(_seedMix, key ^ ((ulong)j * 0xD1B54A32D192ED03UL), position) % (ulong)VocabSize);
            for (int k = 0; k < j; k++)
            {
                if (top[k].Id == id) { id = (id + 1) % VocabSize; k = -1; }
            }
            top[j] = new TokenLogprob(id, (float)Math.Log(mass * Math.ScaleB(1.0, -j)));
        }
    }

    private static ulong Hash(ulong seedMix, ulong key, int position) =>
        Mix(Mix(seedMix ^ key) + (ulong)(uint)position * 0x9E3779B97F4A7C15UL);

    // 24 high bits u → -(u + 1) · 10 / (2^24 + 1): strictly inside (-10, 0).
    private static float LogprobOf(ulong h) => (float)(-(double)((h >> 40) + 1) * (10.0 / ((1 << 24) + 1)));

    private static ulong Mix(ulong z)
    {
        z += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    private static FastServeException BadOption(string field, double value, string expected) =>
        new("sim.invalid_option", $"SimOptions.{field} = {value} must be {expected}", $"SimOptions.{field}");
}

/// <summary>Totals of a <see cref="SimStepExecutor"/>: steps launched, rows and samples they carried,
/// wall-clock seconds the simulated device was busy (scaled by TimeScale) and modelled GPU seconds (unscaled).</summary>
public readonly record struct SimDeviceStats(long Steps, long Rows, long Samples, double BusySeconds, double ModelSeconds);
