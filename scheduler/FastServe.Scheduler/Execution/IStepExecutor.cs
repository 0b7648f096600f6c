using FastServe.Runtime.Backends;
using FastServe.Runtime.Generation;

namespace FastServe.Scheduler.Execution;

/// <summary>
/// The device as the engine sees it: it runs one step (a forward pass over a <see cref="StepBatch"/>, then the
/// sampling of one next token for each sequence that asks for one) asynchronously, in launch order, like a GPU
/// stream. The engine launches step N+1 before post-processing step N, so the device stays busy while the
/// scheduler thread works.
///
/// Contract:
/// <list type="bullet">
/// <item>Steps run strictly one after another, in launch order, each seeing the KV writes of every earlier step.
/// The engine relies on this to reuse a KV block as soon as its owner leaves, even if a step still in flight
/// writes to it: that step runs before any step of the block's next owner.</item>
/// <item>A step reads only its own <see cref="StepBatch"/> (tokens, layout with copied block tables, sampling
/// inputs), the weights and the KV cache. The scheduler may change its own state freely while a step runs; it does
/// not touch a launched batch until <see cref="Wait"/> returns.</item>
/// <item>At most <see cref="MaxInFlight"/> steps are launched and not yet waited for. <see cref="Launch"/> and
/// <see cref="Wait"/> are called by one thread (the engine's scheduler thread).</item>
/// <item>A failure inside a step (a bug, not bad input: input is checked before it gets here) is rethrown by
/// <see cref="Wait"/>.</item>
/// </list>
/// </summary>
public interface IStepExecutor : IDisposable
{
    /// <summary>"cpu", "reference", "sim", "cuda".</summary>
    string Name { get; }

    /// <summary>Output vocabulary size: sampled ids lie in 0..VocabSize-1.</summary>
    int VocabSize { get; }

    /// <summary>Most rows (tokens) one step may carry.</summary>
    int MaxTokensPerStep { get; }

    /// <summary>Most sequences one step may carry (and so most sampled tokens per step).</summary>
    int MaxSequencesPerStep { get; }

    /// <summary>Context length limit of the model (prompt plus output, in tokens).</summary>
    int MaxContextLength { get; }

    /// <summary>Shape of the paged KV cache the executor owns: the engine hands out its block ids.</summary>
    KvCacheSpec KvSpec { get; }

    /// <summary>How many steps may be in flight at once (2 lets the engine overlap).</summary>
    int MaxInFlight { get; }

    /// <summary>Starts <paramref name="step"/>; returns without waiting for it. Sets <see cref="StepBatch.LaunchTicks"/>.</summary>
    void Launch(StepBatch step);

    /// <summary>Blocks until <paramref name="step"/> (launched earlier) has finished; its outputs and device
    /// timestamps are then set.</summary>
    void Wait(StepBatch step);
}

/// <summary>
/// One step: every row's input token, the <see cref="BatchLayout"/> (which rows belong to which sequence, where
/// their KV goes), and the sequences whose last row is to be sampled. Owned by the engine and reused step after
/// step, so filling one allocates nothing once capacity is reached. The executor writes the outputs.
/// </summary>
public sealed class StepBatch
{
    public StepBatch(int maxTokens, int maxSequences)
    {
        Tokens = new int[maxTokens];
        Layout = new BatchLayout(maxSequences, maxTokens);
        SampleRow = new int[maxSequences];
        SampleSampler = new Sampler?[maxSequences];
        SampleKey = new ulong[maxSequences];
        SamplePosition = new int[maxSequences];
        SampleTop = new TokenLogprob[]?[maxSequences];
        OutToken = new int[maxSequences];
        OutLogprob = new float[maxSequences];
    }

    /// <summary>Step number, increasing from 0.</summary>
    public long Id { get; set; }

    /// <summary>Input token of each row, in row order; <see cref="TokenCount"/> of them are live.</summary>
    public int[] Tokens { get; }
    public int TokenCount => Layout.TotalRows;
    public BatchLayout Layout { get; }

    /// <summary>Sequences of this step that get a sampled token (prefill chunks that do not end a prompt get none).</summary>
    public int SampleCount { get; set; }

    /// <summary>Row of the step whose logits are sampled, per sample.</summary>
    public int[] SampleRow { get; }

    /// <summary>The sequence's sampler (real backends); null on executors that compute no logits.</summary>
    public Sampler?[] SampleSampler { get; }

    /// <summary>A stable id of the sampled sequence (the simulated device derives its tokens from it).</summary>
    public ulong[] SampleKey { get; }

    /// <summary>Position the sampled token will take in its sequence.</summary>
    public int[] SamplePosition { get; }

    /// <summary>Where to write the top log-probabilities (length = how many were asked), or null.</summary>
    public TokenLogprob[]?[] SampleTop { get; }

    /// <summary>Output: the sampled token, per sample.</summary>
    public int[] OutToken { get; }

    /// <summary>Output: the sampled token's log-probability (0 when the executor computes none).</summary>
    public float[] OutLogprob { get; }

    /// <summary><see cref="System.Diagnostics.Stopwatch"/> ticks: when the engine launched the step, when the
    /// device began it (later than launch when an earlier step was still running), and when it finished.</summary>
    public long LaunchTicks { get; set; }
    public long StartTicks { get; set; }
    public long EndTicks { get; set; }

    /// <summary>Set by an asynchronous executor when the step has finished (or failed, with <see cref="Error"/>).</summary>
    internal ManualResetEventSlim Done { get; } = new(false);
    internal System.Runtime.ExceptionServices.ExceptionDispatchInfo? Error { get; set; }

    /// <summary>Empties the step for reuse.</summary>
    public void Clear()
    {
        Layout.Clear();
        for (int i = 0; i < SampleCount; i++) { SampleSampler[i] = null; SampleTop[i] = null; }
        SampleCount = 0;
        Error = null;
        Done.Reset();
    }

    /// <summary>Appends a sequence's rows (tokens copied in) and returns its index in the layout.</summary>
    public int AddSequence(int startPos, ReadOnlySpan<int> tokens, ReadOnlySpan<int> blockTable)
    {
        int row = Layout.TotalRows;
        tokens.CopyTo(Tokens.AsSpan(row));
        Layout.AddSequence(startPos, tokens.Length, blockTable);
        return Layout.SequenceCount - 1;
    }

    /// <summary>Asks for a token to be sampled from the given row; returns the sample index.</summary>
    public int AddSample(int row, Sampler? sampler, ulong key, int position, TokenLogprob[]? top)
    {
        int i = SampleCount++;
        SampleRow[i] = row;
        SampleSampler[i] = sampler;
        SampleKey[i] = key;
        SamplePosition[i] = position;
        SampleTop[i] = top;
        return i;
    }
}
