using FastServe.Runtime;

namespace FastServe.Scheduler.Sim;

/// <summary>
/// The figures of a GPU that the simulated device's cost model (<see cref="SimCostModel"/>) needs. All rates are
/// effective (what kernels achieve), not peak. See docs/sim.md for how <see cref="H100Sxm"/> was derived and how to
/// refit it against measured step times.
/// </summary>
/// <param name="Name">Short name, e.g. "h100-sxm".</param>
/// <param name="MemoryBandwidth">Achieved device-memory bandwidth, bytes/s (weights and KV are streamed at this rate).</param>
/// <param name="MatmulFlops">Achieved FP8 tensor-core rate for the projection GEMMs of FP8 weights, FLOP/s.</param>
/// <param name="MatmulFlopsBf16">Achieved BF16 tensor-core rate, FLOP/s: BF16 weights, the BF16 lm_head, attention.</param>
/// <param name="StepOverhead">Fixed seconds per step: launching the graph-captured forward, host↔device copies of
/// the inputs and sampled ids, kernel tails and the final sync.</param>
/// <param name="PerSequenceOverhead">Seconds per sequence of a step: attention metadata and sampling over the vocabulary.</param>
/// <param name="DeviceMemory">Device memory, bytes.</param>
/// <param name="KvMemoryFraction">Share of <paramref name="DeviceMemory"/> usable for weights plus KV cache
/// (the rest is left for activations, CUDA graphs and the driver), in (0, 1].</param>
public sealed record SimDeviceProfile(
    string Name,
    double MemoryBandwidth,
    double MatmulFlops,
    double MatmulFlopsBf16,
    double StepOverhead,
    double PerSequenceOverhead,
    long DeviceMemory,
    double KvMemoryFraction)
{
    /// <summary>
    /// NVIDIA H100 SXM5 80 GB, from public specifications (not measured): HBM3 3.35 TB/s × 0.80 = 2.68 TB/s;
    /// dense FP8 1979 TFLOP/s and BF16 989 TFLOP/s × 0.40 (skinny GEMMs) = 791.6 and 395.6 TFLOP/s;
    /// 100 µs per step; 0.6 µs per sequence; 80 GiB with 0.90 for weights and KV.
    /// </summary>
    public static readonly SimDeviceProfile H100Sxm = new(
        Name: "h100-sxm",
        MemoryBandwidth: 3.35e12 * 0.80,
        MatmulFlops: 1979e12 * 0.40,
        MatmulFlopsBf16: 989e12 * 0.40,
        StepOverhead: 100e-6,
        PerSequenceOverhead: 0.6e-6,
        DeviceMemory: 80L << 30,
        KvMemoryFraction: 0.90);

    /// <summary>Checks every figure is positive and finite (the fraction in (0, 1]); throws
    /// <see cref="FastServeException"/> <c>sim.invalid_profile</c> naming the field.</summary>
    public void Validate()
    {
        Positive(MemoryBandwidth, nameof(MemoryBandwidth));
        Positive(MatmulFlops, nameof(MatmulFlops));
        Positive(MatmulFlopsBf16, nameof(MatmulFlopsBf16));
        if (!(StepOverhead >= 0) || !double.IsFinite(StepOverhead)) throw Bad(nameof(StepOverhead), StepOverhead);
        if (!(PerSequenceOverhead >= 0) || !double.IsFinite(PerSequenceOverhead)) throw Bad(nameof(PerSequenceOverhead), PerSequenceOverhead);
        if (DeviceMemory <= 0) throw Bad(nameof(DeviceMemory), DeviceMemory);
        if (!(KvMemoryFraction > 0 && KvMemoryFraction <= 1)) throw Bad(nameof(KvMemoryFraction), KvMemoryFraction);
    }

    private void Positive(double v, string field)
    {
        if (!(v > 0) || !double.IsFinite(v)) throw Bad(field, v);
    }

    private FastServeException Bad(string field, double v) =>
        new("sim.invalid_profile", $"device profile '{Name}': {field} = {v} is out of range", $"SimDeviceProfile.{field}");
}
