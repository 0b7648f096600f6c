using FastServe.Scheduler.Execution;

namespace FastServe.Scheduler.Engine;

/// <summary>An engine-side step: the device batch plus which sequence each sample belongs to (with the uid it
/// had, so a sequence that ended or was reused meanwhile is recognised) and the rows whose input token is the
/// output of the step before (filled in just before launch). Scheduler thread only; the device reads the batch
/// between launch and wait.</summary>
internal sealed class StepPlan
{
    public StepPlan(int maxTokens, int maxSeqs)
    {
        Batch = new StepBatch(maxTokens, maxSeqs);
        SampleSeq = new Sequence?[maxSeqs];
        SampleUid = new long[maxSeqs];
        PatchRow = new int[maxSeqs];
        PatchSample = new int[maxSeqs];
        RowSeq = new Sequence?[maxSeqs];
        RowUid = new long[maxSeqs];
    }

    public StepBatch Batch { get; }
    public long Id => Batch.Id;
    public Sequence?[] SampleSeq { get; }
    public long[] SampleUid { get; }
    public int[] PatchRow { get; }
    public int[] PatchSample { get; }
    public int PatchCount;
    /// <summary>The sequence (and its uid then) behind each of the batch's sequences, by layout index, so that the
    /// step's device time can be charged to the requests whose rows it computed.</summary>
    public Sequence?[] RowSeq { get; }
    public long[] RowUid { get; }
    public int PrefillRows;
    public long SchedulerCpuTicks;
    public long IdleGapTicks;
    /// <summary>From the previous step's end to this one's (0 when the device idled in between for lack of work).</summary>
    public long IntervalTicks;

    public void Clear(long id)
    {
        Batch.Clear();
        Batch.Id = id;
        PatchCount = 0;
        PrefillRows = 0;
        IdleGapTicks = 0;
    }

    public void AddPatch(int row, int sample)
    {
        PatchRow[PatchCount] = row;
        PatchSample[PatchCount] = sample;
        PatchCount++;
    }

    public void PatchFrom(StepBatch previous)
    {
        for (int i = 0; i < PatchCount; i++) Batch.Tokens[PatchRow[i]] = previous.OutToken[PatchSample[i]];
    }
}
