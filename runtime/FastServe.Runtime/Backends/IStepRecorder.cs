namespace FastServe.Runtime.Backends;

/// <summary>
/// Optional capability of a backend that can record the ops of a step once and replay the recording for later steps
/// of the same shape (the cuda backend: a CUDA graph, one launch instead of hundreds). The caller only brackets a
/// forward pass with <see cref="BeginStep"/> and <see cref="EndStep"/> and names its shape with a key; when to
/// record, when to replay, and when to give up on a key are the backend's business.
/// <list type="bullet">
/// <item>A step is its ops up to and including its readback (<see cref="IBackend.CopyToHost"/> or
/// <see cref="IBackend.Sample"/>), issued between <see cref="BeginStep"/> and <see cref="EndStep"/> on one thread.
/// Steps of one key must issue the same ops on the same tensors with the same row counts; only host inputs (tokens,
/// positions, block tables, sampling rows) may change.</item>
/// <item><see cref="EndStep"/> says how the step went. <see cref="StepOutcome.Refused"/>: the backend could not use
/// a recording (buffers grew since, the step differs from the recorded one, a buffer would have to grow while
/// recording) and nothing of the step ran; its outputs are unset. The caller issues the same ops again, without
/// <see cref="BeginStep"/>, and they run op by op. No refusal throws.</item>
/// <item>A key refused again and again stops being recorded: <see cref="BeginStep"/> then returns false and the
/// caller runs the step op by op (and needs no <see cref="EndStep"/>).</item>
/// </list>
/// </summary>
public interface IStepRecorder
{
    /// <summary>Turns recording on for a caller that will bracket steps, dropping earlier recordings.
    /// <paramref name="maxBlocksPerSequence"/> is the most KV blocks a sequence can hold: a recorded step bakes the
    /// attention block-table stride in, so every step uses at least this stride from now on.</summary>
    void StartStepRecording(int maxBlocksPerSequence);

    /// <summary>Drops every recording (the caller that started recording is done).</summary>
    void StopStepRecording();

    /// <summary>Begins a step of shape <paramref name="key"/> (≥ 0). False when the backend no longer records steps
    /// of this key: issue the ops as usual and do not call <see cref="EndStep"/>.</summary>
    bool BeginStep(int key);

    /// <summary>Ends the step begun by <see cref="BeginStep"/>, after its readback returned (or after an op threw: the
    /// step is then abandoned and refused).</summary>
    StepOutcome EndStep();
}

/// <summary>How a step bracketed by <see cref="IStepRecorder.BeginStep"/> ran.</summary>
public enum StepOutcome
{
    /// <summary>Op by op (a key's first step: it grows every buffer the step needs).</summary>
    Ran,
    /// <summary>Recorded, and the recording run once to produce the step's outputs.</summary>
    Recorded,
    /// <summary>An earlier recording replayed with this step's inputs.</summary>
    Replayed,
    /// <summary>Nothing ran; issue the step again op by op.</summary>
    Refused,
}

/// <summary>
/// The policy shared by step recorders: a key's first step runs op by op (it grows every buffer), its second is
/// recorded, later ones replay; a refused recording or replay is dropped, and a key refused
/// <see cref="MaxRefusals"/> times is no longer recorded. The backend supplies what a recording is.
/// Used by one thread at a time.
/// </summary>
public sealed class StepRecordings<TRecording> where TRecording : class, IDisposable
{
    public const int MaxRefusals = 3;

    private readonly Dictionary<int, Slot> _slots = [];
    private int _key = -1;

    /// <summary>What <see cref="Begin"/> decided for the current step.</summary>
    public enum Plan { Run, Record, Replay }

    /// <summary>Starts the step of <paramref name="key"/>: false when the key is given up; otherwise what to do, and
    /// the recording to replay when <paramref name="plan"/> is <see cref="Plan.Replay"/>.</summary>
    public bool Begin(int key, out Plan plan, out TRecording? recording)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(key);
        if (_key >= 0) throw new InvalidOperationException("a step is already in progress");
        _slots.TryGetValue(key, out var slot);
        recording = slot.Recording;
        plan = recording is not null ? Plan.Replay : slot.Seen > 0 ? Plan.Record : Plan.Run;
        if (recording is null && slot.Refusals >= MaxRefusals) return false;
        _key = key;
        return true;
    }

    /// <summary>Ends the current step: <paramref name="recorded"/> is the new recording of a
    /// <see cref="Plan.Record"/> step; <paramref name="refused"/> whether the backend refused the step.</summary>
    public StepOutcome End(Plan plan, bool refused, TRecording? recorded)
    {
        if (_key < 0) throw new InvalidOperationException("no step in progress");
        ref var slot = ref System.Runtime.InteropServices.CollectionsMarshal.GetValueRefOrAddDefault(_slots, _key, out _);
        _key = -1;
        if (refused)
        {
            recorded?.Dispose();
            slot.Recording?.Dispose();
            slot.Recording = null;
            slot.Refusals++;
            slot.Seen = 1; // the caller's op-by-op rerun warms the buffers up again
            return StepOutcome.Refused;
        }
        switch (plan)
        {
            case Plan.Record:
                slot.Recording = recorded ?? throw new ArgumentNullException(nameof(recorded));
                return StepOutcome.Recorded;
            case Plan.Replay:
                return StepOutcome.Replayed;
            default:
                slot.Seen++;
                return StepOutcome.Ran;
        }
    }

    /// <summary>Disposes every recording and forgets every key.</summary>
    public void Clear()
    {
        foreach (var s in _slots.Values) s.Recording?.Dispose();
        _slots.Clear();
        _key = -1;
    }

    private struct Slot
    {
        public TRecording? Recording;
        public int Seen;
        public int Refusals;
    }
}
