using System.Diagnostics.CodeAnalysis;
using System.Runtime.InteropServices;
using FastServe.Runtime;
using FastServe.Runtime.Backends;

namespace FastServe.Vulkan;

/// <summary>The vulkan backend's <see cref="IStepRecorder"/>: recorded decode steps (docs/vulkan.md, "Recorded decode
/// steps").</summary>
public sealed unsafe partial class VulkanBackend
{
    // ---- recorded steps -----------------------------------------------------------------------------------------

    /// <summary>Fixes attention's block-table stride at <paramref name="maxBlocksPerSequence"/> (a recording bakes the
    /// stride into its push constants) and drops earlier recordings.</summary>
    public void StartStepRecording(int maxBlocksPerSequence)
    {
        EnterSetup("StartStepRecording");
        _minAttentionBlocks = Math.Max(1, maxBlocksPerSequence);
        _recordings.Clear();
    }

    public void StopStepRecording()
    {
        if (_inStep) throw new InvalidOperationException("StopStepRecording: a step is in progress");
        _recordings.Clear();
    }

    /// <summary>Begins a step of <paramref name="key"/>: a key's first step runs op by op, its second is recorded into
    /// a command buffer of its own, later ones replay it with this step's host inputs (the ops are checked against
    /// the recorded commands; any difference, or a buffer that would have to grow, refuses the step).</summary>
    public bool BeginStep(int key)
    {
        EnterSetup("BeginStep");
        Flush(); // the arena restarts at 0, so a step's host inputs land where its recording reads them
        _arena.Reset();
        if (!_recordings.Begin(key, out _plan, out var replay)) return false;
        _inStep = true;
        _stepRead = false;
        _replayIndex = 0;
        switch (_plan)
        {
            case StepRecordings<VulkanStepRecording>.Plan.Record:
                try { _recording = new VulkanStepRecording(_m) { Generation = _generation }; }
                catch (VulkanException e)
                {
                    _inStep = false;
                    _recordings.End(_plan, refused: true, null);
                    Fault(e);
                }
                _cur = _recording.Sequence;
                _step = StepMode.Recording;
                break;
            case StepRecordings<VulkanStepRecording>.Plan.Replay:
                _replay = replay;
                _step = replay!.Generation == _generation ? StepMode.Replaying : StepMode.Refused;
                break;
            default:
                _step = StepMode.Eager;
                break;
        }
        return true;
    }

    /// <summary>Ends the step: <see cref="StepOutcome.Refused"/> when nothing ran (the caller issues the ops again),
    /// including a step whose ops threw before its readback.</summary>
    public StepOutcome EndStep()
    {
        if (!_inStep) throw new InvalidOperationException("EndStep without BeginStep");
        bool refused = _step == StepMode.Refused || !_stepRead;
        var recorded = _plan == StepRecordings<VulkanStepRecording>.Plan.Record ? _recording : null;
        _inStep = false;
        _step = StepMode.Eager;
        _cur = _seq;
        _recording = _replay = null;
        _arena.Reset();
        return _recordings.End(_plan, refused, recorded);
    }

    /// <summary>The current recorded step cannot run: nothing of it is submitted.</summary>
    private void Refuse()
    {
        if (_step is StepMode.Recording or StepMode.Replaying) _step = StepMode.Refused;
    }

    /// <summary>Inside a recorded step: appends the command to the recording, or checks it against the replayed one
    /// (a difference refuses the step). False when the command must not be issued (replaying, or refused).</summary>
    private bool Note(in VulkanCommand c)
    {
        switch (_step)
        {
            case StepMode.Recording:
                _recording!.Commands.Add(c);
                return true;
            case StepMode.Replaying:
                var list = _replay!.Commands;
                if (_replayIndex < list.Count && VulkanCommand.Same(list[_replayIndex], c)) _replayIndex++;
                else Refuse();
                return false;
            default:
                return false;
        }
    }

    // The readback that ends a recorded step: the recording is submitted (and kept) or replayed, then the tensor read.
    private void StepReadback(VulkanTensor s, Span<float> dst, int n)
    {
        ulong bytes = 4UL * (ulong)n;
        if (s.Buffer.Mapped == null && n > 0)
        {
            if (_readback is null || _readback.Size < bytes) Refuse(); // no buffer may grow inside a step
            else Copy(s.Buffer, 0, _readback, 0, bytes);
        }
        // What is read back is part of the step too.
        if (_step != StepMode.Refused) Note(new VulkanCommand { Kind = 3, A = s.Buffer.Id, E = bytes });
        if (_step == StepMode.Replaying && _replayIndex != _replay!.Commands.Count) Refuse();
        try
        {
            switch (_step)
            {
                case StepMode.Recording:
                    _recording!.Sequence.SubmitAndWait();
                    break;
                case StepMode.Replaying:
                    _replay!.Sequence.Replay();
                    break;
                default:
                    return; // refused: nothing ran, dst is left as it was
            }
        }
        catch (VulkanException e) { Fault(e); }
        Submissions++;
        _stepRead = true;
        if (n == 0) return;
        byte* from = s.Buffer.Mapped != null ? s.Buffer.Mapped : _readback!.Mapped;
        new ReadOnlySpan<float>(from, n).CopyTo(dst);
    }

    /// <summary>Ops that allocate or upload are not part of a step.</summary>
    private void EnterSetup(string what)
    {
        Enter();
        if (_inStep) throw new InvalidOperationException($"{what}: not allowed inside a recorded step");
    }
}
