using FastServe.Runtime.Backends;

namespace FastServe.Interop;

/// <summary>
/// The cuda backend's step recording (<see cref="IStepRecorder"/>) with CUDA graphs: a key's first step runs op by op
/// (it grows every buffer), a later one is captured from the stream, and the steps after it replay the graph
/// (<see cref="StepRecordings{T}"/>'s policy, with <see cref="GraphCapturePolicy"/> deciding when a due key is
/// captured). Nothing is captured at start-up (a key is captured only after it ran op by op, and the engine's warm-up
/// runs one decode step): steps run eagerly until their key's graph exists.
/// The backend's ops ask it what to do:
/// <list type="bullet">
/// <item><see cref="RecorderMode.Capturing"/>: ops issue their work as usual, into the stream's capture; the step's
/// readback ends the capture, instantiates the graph and launches it once to produce the step's result.</item>
/// <item><see cref="RecorderMode.Staging"/> (a replay): ops run no kernels; they check their arguments, set Rows and
/// write their host arrays into the staging buffer at the offsets the capture used, where the graph's copy nodes read
/// them, and fold what they would launch into a signature. The readback launches the graph if the signature is the
/// captured one.</item>
/// <item><see cref="RecorderMode.Discarding"/>: the step was refused (it differs from the recording, or a buffer would
/// have to grow while capturing); ops only set Rows until <see cref="EndStep"/> reports the refusal.</item>
/// </list>
/// Every buffer a graph may point at is reallocated only outside a recorded step, and each reallocation bumps the
/// backend's buffer generation, which starts every signature: a graph recorded before is refused, never run on freed
/// memory. Nothing here throws for a refusal.
/// <para>Captures happen on the thread that runs the steps, inside a real step of the key (the graph's first launch
/// produces that step's result), never on a second thread. Capture records whatever is issued to the stream, from any
/// thread, so a concurrent capture would need a stream of its own; in the thread-local capture mode used here the
/// driver would then allow it, provided the capturing thread made no unsafe call (cuMemAlloc, a synchronous copy). But
/// capturing a step means issuing its ops through this backend, and the ops share its single-threaded state with the
/// serving steps: the activation tensors and their row counts, the staging buffer whose offsets the graph bakes in,
/// the signature. A capture beside a serving step would race on all of it; a second set of buffers would double the
/// activations' memory. A capture costs its step about one graph instantiation; the duty cycle spreads those costs.
/// </para>
/// </summary>
internal sealed unsafe class CudaGraphRecorder : IDisposable
{
    private const ulong SignatureSeed = 14695981039346656037UL;

    private readonly CudaBackend _b;
    private readonly CudaContextHandle _context;
    private readonly nint _stream;
    private readonly StepRecordings<CudaGraph> _steps = new();
    private readonly GraphCapturePolicy _policy;
    private StepRecordings<CudaGraph>.Plan _plan;
    private int _key;
    private double _captureStart, _captureEnd;
    private bool _inStep, _refused;
    private ulong _signature;
    private CudaGraph? _replaying, _captured;

    public CudaGraphRecorder(CudaBackend backend, CudaContextHandle context, nint stream, GraphCapturePolicy policy)
    {
        _b = backend;
        _context = context;
        _stream = stream;
        _policy = policy;
    }

    /// <summary>What lazy capture has done (read on any thread; exact once steps are idle).</summary>
    public GraphCaptureStats Stats => _policy.Stats;

    /// <summary>The key an idle gap should capture next (<see cref="GraphCapturePolicy.NextIdleKey"/>), or -1.</summary>
    public int NextIdleKey() => _policy.NextIdleKey();

    private static double Now() => System.Diagnostics.Stopwatch.GetTimestamp() / (double)System.Diagnostics.Stopwatch.Frequency;

    public RecorderMode Mode { get; private set; }

    /// <summary>Ops launch nothing and copy nothing to the device (a replay stages, a refused step discards).</summary>
    public bool SkipsWork => Mode >= RecorderMode.Staging;

    /// <summary>A step is being recorded or replayed: no buffer may be allocated or grow.</summary>
    public bool Frozen => Mode != RecorderMode.Normal;

    /// <summary>Stride of the block tables passed to attention, when larger than the longest table of a step: a graph
    /// bakes the stride in. 0 until <see cref="Start"/>.</summary>
    public int MinAttentionBlocks { get; private set; }

    public void Start(int maxBlocksPerSequence)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(maxBlocksPerSequence);
        _steps.Clear();
        _policy.Clear();
        MinAttentionBlocks = maxBlocksPerSequence;
    }

    public void Stop()
    {
        _steps.Clear();
        _policy.Clear();
    }

    public bool BeginStep(int key)
    {
        if (_inStep) throw new InvalidOperationException("BeginStep: a step is already in progress");
        if (!_steps.Begin(key, out _plan, out var recording)) return false;
        if (_plan == StepRecordings<CudaGraph>.Plan.Record && !_policy.ShouldCapture(key, Now())) _plan = StepRecordings<CudaGraph>.Plan.Run;
        _key = key;
        _inStep = true;
        _refused = false;
        _captured = null;
        try
        {
            if (_plan == StepRecordings<CudaGraph>.Plan.Record)
            {
                _captureStart = Now(); // again below: waiting for earlier work is no part of the capture
                _b.Synchronize();
                _captureStart = Now();
                _captureEnd = double.NaN;
                _signature = SignatureSeed;
                _b.Driver(CudaDriver.cuStreamBeginCapture_v2(_stream, CudaDriver.StreamCaptureModeThreadLocal), "cuStreamBeginCapture_v2");
                Mode = RecorderMode.Capturing;
                Sign(0, _b.BufferGeneration);
            }
            else if (_plan == StepRecordings<CudaGraph>.Plan.Replay)
            {
                if (_b.Pending) _b.Synchronize(); // the previous launch may still read the staging buffer
                _b.ResetStaging();
                _signature = SignatureSeed;
                _replaying = recording;
                Mode = RecorderMode.Staging;
                Sign(0, _b.BufferGeneration);
            }
        }
        catch
        {
            EndStep();
            throw;
        }
        return true;
    }

    /// <summary>Ends the step: after its readback, or after an op threw (the step is then refused: nothing of it is
    /// left running or recorded).</summary>
    public StepOutcome EndStep()
    {
        if (!_inStep) throw new InvalidOperationException("EndStep: no step in progress");
        // A step whose readback never came (an op threw) ran nothing, or nothing that produced its result.
        bool refused = _refused || Mode != RecorderMode.Normal || (_plan == StepRecordings<CudaGraph>.Plan.Record && _captured is null);
        if (Mode == RecorderMode.Capturing) DiscardCapture();
        Mode = RecorderMode.Normal;
        _replaying = null;
        _inStep = false;
        _refused = false;
        var captured = _captured;
        _captured = null;
        // Host arrays staged for a step that never ran were not copied to the device: forget them.
        if (refused) _b.ResetStaging();
        var outcome = _steps.End(_plan, refused, captured);
        switch (_plan)
        {
            case StepRecordings<CudaGraph>.Plan.Record:
                bool ok = outcome == StepOutcome.Recorded;
                double end = ok ? _captureEnd : Now();
                _policy.OnCapture(_key, _captureStart, end, ok);
                if (ok) _b.OnGraphCaptured(_key, end - _captureStart, _policy.Stats);
                break;
            case StepRecordings<CudaGraph>.Plan.Replay:
                if (outcome == StepOutcome.Refused) _policy.OnDropped(_key);
                break;
            default:
                if (outcome == StepOutcome.Ran) _policy.OnEager(_key);
                break;
        }
        return outcome;
    }

    /// <summary>An op found it would have to grow a buffer (or upload a table) while the step is recorded or
    /// replayed: the step is refused; its remaining ops do nothing.</summary>
    public void Refuse()
    {
        int r = CudaDriver.Success;
        if (Mode == RecorderMode.Capturing)
        {
            nint graph;
            r = CudaDriver.cuStreamEndCapture(_stream, &graph);
            if (r == CudaDriver.Success && graph != 0) CudaDriver.cuGraphDestroy(graph);
        }
        Mode = RecorderMode.Discarding;
        _refused = true;
        _b.Driver(r, "cuStreamEndCapture");
    }

    /// <summary>The readback of a capturing step, after its device-to-host copy was captured: ends the capture and
    /// launches the graph once.</summary>
    public void FinishCapture(long readbackBytes)
    {
        nint graph;
        Mode = RecorderMode.Normal;
        _b.Driver(CudaDriver.cuStreamEndCapture(_stream, &graph), "cuStreamEndCapture");
        var exec = CudaGraphExecHandle.Instantiate(_context, graph);
        _captureEnd = Now();
        _captured = new CudaGraph(exec, _signature, readbackBytes);
        Launch(_captured);
    }

    /// <summary>The readback of a replayed step: launches the graph when the step is the captured one (same ops,
    /// tensors, row counts, table stride, staged sizes and readback size); otherwise refuses the step. True when
    /// launched.</summary>
    public bool TryLaunchReplay(long readbackBytes)
    {
        var graph = _replaying!;
        _replaying = null;
        if (graph.Signature != _signature || graph.ReadbackBytes != readbackBytes)
        {
            Mode = RecorderMode.Discarding;
            _refused = true;
            return false;
        }
        Mode = RecorderMode.Normal;
        Launch(graph);
        return true;
    }

    /// <summary>Folds what an op would launch into the step's signature (while capturing or staging).</summary>
    public void Sign(long a, long b = 0, long c = 0, long d = 0, long e = 0, long f = 0, long g = 0, long h8 = 0)
    {
        if (Mode is not (RecorderMode.Capturing or RecorderMode.Staging)) return;
        ulong h = _signature;
        ReadOnlySpan<long> values = [a, b, c, d, e, f, g, h8];
        foreach (long v in values) h = (h ^ (ulong)v) * 1099511628211UL;
        _signature = h;
    }

    /// <summary>After a fault: ends a capture in progress, ignoring errors (the fault is what gets reported).</summary>
    public void OnFault()
    {
        if (Mode == RecorderMode.Capturing) DiscardCapture();
        if (_inStep) _refused = true;
        Mode = RecorderMode.Normal;
    }

    private void Launch(CudaGraph graph)
    {
        _b.Driver(CudaDriver.cuGraphLaunch(graph.Exec.Exec, _stream), "cuGraphLaunch");
        _b.Pending = true;
    }

    private void DiscardCapture()
    {
        nint graph;
        if (CudaDriver.cuStreamEndCapture(_stream, &graph) == CudaDriver.Success && graph != 0) CudaDriver.cuGraphDestroy(graph);
        Mode = RecorderMode.Normal;
    }

    public void Dispose()
    {
        if (Mode == RecorderMode.Capturing) DiscardCapture();
        _captured?.Dispose();
        _steps.Clear();
    }
}

/// <summary>What the cuda backend's ops do, per <see cref="CudaGraphRecorder"/>.</summary>
internal enum RecorderMode { Normal, Capturing, Staging, Discarding }

/// <summary>An instantiated CUDA graph of one captured step, with what a replay must match: the ops' signature and the
/// bytes the step reads back.</summary>
internal sealed class CudaGraph : IDisposable
{
    internal CudaGraph(CudaGraphExecHandle exec, ulong signature, long readbackBytes)
    {
        Exec = exec;
        Signature = signature;
        ReadbackBytes = readbackBytes;
    }

    internal CudaGraphExecHandle Exec { get; }
    internal ulong Signature { get; }
    internal long ReadbackBytes { get; }

    public void Dispose() => Exec.Dispose();
}
