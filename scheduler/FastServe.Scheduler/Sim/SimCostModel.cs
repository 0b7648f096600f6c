using FastServe.Scheduler.Execution;

namespace FastServe.Scheduler.Sim;

/// <summary>
/// Seconds one step of a <see cref="SimModelShape"/> takes on a <see cref="SimDeviceProfile"/>: a roofline per
/// kernel class, plus fixed costs.
/// <code>
/// overhead  = StepOverhead + PerSequenceOverhead · sequences
/// layers    = max(LayerWeightBytes / BW, rows · FlopsPerRow / F)            F = FP8 or BF16 rate per weight dtype
/// lm_head   = max(LmHeadBytes / BW, samples · LmHeadFlopsPerSample / Fbf16)  0 when the step samples nothing
/// attention = max(contextTokens · KvBytesPerToken / BW, attendedPairs · AttentionFlopsPerPair / Fbf16)
/// total     = overhead + layers + lm_head + attention
/// </code>
/// contextTokens = Σ over sequences of the context after the step (attention reads each sequence's KV once);
/// attendedPairs = Σ over rows of the positions the row attends to. See docs/sim.md. Pure functions; no allocation.
/// </summary>
public static class SimCostModel
{
    /// <summary>Cost of a step given by its counts. rows: tokens of the step; sequences: sequences in it; samples:
    /// rows sampled; contextTokens and attendedPairs as in the type's summary. Counts must be non-negative.</summary>
    public static SimStepCost Estimate(SimModelShape shape, SimDeviceProfile profile,
        int rows, int sequences, int samples, long contextTokens, long attendedPairs)
    {
        double bw = profile.MemoryBandwidth;
        double f = shape.IsFp8 ? profile.MatmulFlops : profile.MatmulFlopsBf16;
        double f16 = profile.MatmulFlopsBf16;

        double overhead = profile.StepOverhead + profile.PerSequenceOverhead * sequences;
        double layersMem = shape.LayerWeightBytes / bw;
        double layersCompute = rows * shape.FlopsPerRow / f;
        double lmHead = samples == 0 ? 0 : Math.Max(shape.LmHeadBytes / bw, samples * shape.LmHeadFlopsPerSample / f16);
        double kvMem = contextTokens * (double)shape.KvBytesPerToken / bw;
        double attentionCompute = attendedPairs * shape.AttentionFlopsPerPair / f16;
        return new SimStepCost(overhead, Math.Max(layersMem, layersCompute), lmHead, Math.Max(kvMem, attentionCompute),
            layersCompute > layersMem, attentionCompute > kvMem);
    }

    /// <summary>Seconds of a step given by its counts (see <see cref="Estimate(SimModelShape, SimDeviceProfile, int, int, int, long, long)"/>).</summary>
    public static double StepSeconds(SimModelShape shape, SimDeviceProfile profile,
        int rows, int sequences, int samples, long contextTokens, long attendedPairs) =>
        Estimate(shape, profile, rows, sequences, samples, contextTokens, attendedPairs).Total;

    /// <summary>Seconds of <paramref name="step"/> as laid out (rows, sequences, samples, positions).</summary>
    public static double StepSeconds(SimModelShape shape, SimDeviceProfile profile, StepBatch step)
    {
        var layout = step.Layout;
        long context = 0, pairs = 0;
        for (int s = 0; s < layout.SequenceCount; s++)
        {
            int start = layout.StartPos(s), rows = layout.RowCount(s);
            context += start + rows;
            pairs += AttendedPairs(start, rows);
        }
        return StepSeconds(shape, profile, layout.TotalRows, layout.SequenceCount, step.SampleCount, context, pairs);
    }

    /// <summary>Σ over rows at positions startPos..startPos+rows-1 of (position + 1): the causal attention work
    /// of one sequence's rows in a step.</summary>
    public static long AttendedPairs(int startPos, int rows) => (long)rows * startPos + (long)rows * (rows + 1) / 2;
}

/// <summary>Seconds of one step, by term (see <see cref="SimCostModel"/>).</summary>
/// <param name="Overhead">Fixed step cost plus per-sequence cost.</param>
/// <param name="Layers">Projection GEMMs of every layer: the larger of weight streaming and compute.</param>
/// <param name="LmHead">lm_head over the sampled rows (0 when none).</param>
/// <param name="Attention">KV streaming or attention compute, whichever is larger.</param>
/// <param name="LayersComputeBound">True when the projections are limited by FLOPs rather than bytes.</param>
/// <param name="AttentionComputeBound">True when attention is limited by FLOPs rather than KV bytes.</param>
public readonly record struct SimStepCost(double Overhead, double Layers, double LmHead, double Attention,
    bool LayersComputeBound, bool AttentionComputeBound)
{
    public double Total => Overhead + Layers + LmHead + Attention;
}
