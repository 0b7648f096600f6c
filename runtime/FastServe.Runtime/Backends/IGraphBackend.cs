namespace FastServe.Runtime.Backends;

/// <summary>
/// A backend that can record one step's ops as a graph and replay it with new inputs (CUDA graphs), so a decode
/// step costs one launch instead of hundreds. The engine's executor drives it; model code never sees it.
/// <list type="number">
/// <item>Run the step once normally (everything it needs then exists: buffers grown, tables uploaded).</item>
/// <item><see cref="BeginCapture"/>, issue the same ops: the step's readback (<see cref="IBackend.CopyToHost"/> or
/// <see cref="IBackend.Sample"/>) ends the recording, runs the graph once and returns the step's result;
/// <see cref="EndCapture"/> then hands the graph over.</item>
/// <item>Later steps of the same shape: <see cref="BeginReplay"/>, issue the ops (they only stage their host inputs
/// where the graph reads them), and the readback launches the graph.</item>
/// </list>
/// A replayed step that differs from the captured one (other ops, tensors, row counts, buffers reallocated since)
/// throws <see cref="InvalidOperationException"/> at its readback, before anything ran: the caller drops the graph
/// and runs the step normally. A capture that fails the same way is abandoned with <see cref="AbortCapture"/>.
/// </summary>
public interface IGraphBackend
{
    /// <summary>Smallest block-table stride attention uses. A graph bakes the stride in, so an executor that
    /// captures steps sets it to the most blocks a sequence can hold.</summary>
    int MinAttentionBlocks { get; set; }

    void BeginCapture();

    /// <summary>The graph the step's readback ended, already run once.</summary>
    IStepGraph EndCapture();

    /// <summary>Abandons a capture after an op threw; the backend returns to normal operation.</summary>
    void AbortCapture();

    void BeginReplay(IStepGraph graph);
}

/// <summary>A recorded step, valid for the backend that captured it.</summary>
public interface IStepGraph : IDisposable;
