using System.Buffers;
using System.Threading.Channels;
using FastServe.Runtime.Generation;
using FastServe.Runtime.Tokenization;
using Microsoft.Extensions.ObjectPool;

namespace FastServe.Scheduler.Engine;

// Submitted: handed to the scheduler's channel but not yet taken in; Done: ended (or in the pool).
internal enum SeqState : byte { Submitted, Waiting, Running, Done }

/// <summary>
/// The engine's state for one request. Pooled: every field is reset on return, and <see cref="Uid"/> changes on
/// every reuse, so stale references (a queue entry, a step in flight, a late cancel) recognise they are stale by
/// comparing the uid they captured. Touched only by the scheduler thread after submission.
/// </summary>
internal sealed class Sequence
{
    private static long s_nextUid;

    public long Uid;
    public long ArrivalOrder;
    public Priority Priority;
    public long DeadlineTicks = long.MaxValue;
    public SeqState State;

    // Tokens: prompt then generated, Length known ones. Rented; capacity covers prompt + max tokens.
    public int[] Tokens = [];
    public int PromptLength;
    public int Length;
    public int Generated;
    // Rented block table; BlockCount live entries; capacity covers the context.
    public int[] Blocks = [];
    public int BlockCount;
    // Positions whose KV has been scheduled (including a step in flight).
    public int Computed;
    // Full blocks registered in the prefix cache, and the chain hash after them.
    public int CommittedBlocks;
    public ulong ChainHash;
    // Sampled tokens in steps not yet post-processed (at most 2 with overlap), and the newest one's sample index.
    public int Pending;
    public int PendingSample;
    // Id of the last step this sequence was scheduled into; -1 = none.
    public long ScheduledIn = -1;
    // Stable per-request key (seed and prompt) from which a simulated device derives tokens.
    public ulong SampleKey;

    public SamplingParams Sampling = null!;
    public Sampler? Sampler;
    public StopMatcher? Stop;
    public IncrementalDecoder? Decoder;
    public bool IgnoreEos;

    public ChannelWriter<TokenEvent>? Writer;
    public IRequestSink? Sink;
    public long SinkTag;
    public TaskCompletionSource<RequestResult> Completion = null!;
    public string? Id;

    public long Received, Admitted, FirstScheduled, FirstToken;
    public int CachedPromptTokens;
    public int Preemptions;
    public long WaitingTokensCounted; // tokens this sequence adds to the engine's waiting-token gauge
    public long WaitingWorkCounted;   // rows (prompt plus expected output) it adds to the work queued ahead of others
    public int ExpectedOutput;        // tokens it is expected to generate (OverloadControl.ExpectedOutput)
    public long RowsSpent;            // rows computed for it so far, recomputes included (wasted if it then misses its deadline)
    public double DeviceTicks;        // its share of the device time of every step that computed its rows (rows / step rows)

    public void Init(int capacityTokens, int capacityBlocks)
    {
        Uid = Interlocked.Increment(ref s_nextUid);
        State = SeqState.Submitted;
        Tokens = ArrayPool<int>.Shared.Rent(capacityTokens);
        Blocks = ArrayPool<int>.Shared.Rent(capacityBlocks);
    }

    public void Reset()
    {
        if (Tokens.Length > 0) ArrayPool<int>.Shared.Return(Tokens);
        if (Blocks.Length > 0) ArrayPool<int>.Shared.Return(Blocks);
        Tokens = [];
        Blocks = [];
        Uid = 0;
        ArrivalOrder = 0;
        Priority = Priority.Interactive;
        DeadlineTicks = long.MaxValue;
        State = SeqState.Done;
        PromptLength = Length = Generated = BlockCount = Computed = CommittedBlocks = 0;
        ChainHash = 0;
        Pending = 0;
        PendingSample = 0;
        ScheduledIn = -1;
        SampleKey = 0;
        Sampling = null!;
        Sampler = null;
        Stop = null;
        Decoder = null;
        IgnoreEos = false;
        Writer = null;
        Sink = null;
        Completion = null!;
        Id = null;
        Received = Admitted = FirstScheduled = FirstToken = 0;
        CachedPromptTokens = Preemptions = 0;
        WaitingTokensCounted = WaitingWorkCounted = RowsSpent = 0;
        DeviceTicks = 0;
        ExpectedOutput = 0;
    }

    /// <summary>Rows still to compute, counting a token in flight.</summary>
    public int Uncomputed => Length + Pending - Computed;

    internal sealed class Policy : PooledObjectPolicy<Sequence>
    {
        public override Sequence Create() => new();

        public override bool Return(Sequence obj)
        {
            obj.Reset();
            return true;
        }
    }
}
