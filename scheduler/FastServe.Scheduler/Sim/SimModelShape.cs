using FastServe.Runtime;
using FastServe.Runtime.Formats;

namespace FastServe.Scheduler.Sim;

/// <summary>
/// What the simulated device needs to know of a Llama-family model: bytes it streams and FLOPs it does per step.
/// Built from a <see cref="ModelConfig"/> and the dtype of the projection weights (FP8 E4M3, BF16 or F16).
/// The embedding and lm_head are BF16 (never quantized); the KV cache is BF16 (never quantized).
/// Immutable; every figure is computed once here.
/// </summary>
public sealed class SimModelShape
{
    private SimModelShape(ModelConfig c, DType weightDType)
    {
        Layers = c.NumLayers;
        Hidden = c.HiddenSize;
        Intermediate = c.IntermediateSize;
        Heads = c.NumHeads;
        KvHeads = c.NumKvHeads;
        HeadDim = c.HeadDim;
        VocabSize = c.VocabSize;
        MaxPositionEmbeddings = c.MaxPositionEmbeddings;
        TiedEmbeddings = c.TieWordEmbeddings;
        WeightDType = weightDType;

        long q = (long)Heads * HeadDim, kv = (long)KvHeads * HeadDim, h = Hidden, i = Intermediate;
        ProjectionParams = Layers * (h * q * 2 + h * kv * 2 + 3 * h * i);
        long outChannels = Layers * (q + 2 * kv + h + 2 * i + h);
        long scaleBytes = weightDType == DType.F8E4M3 ? outChannels * 4 : 0;   // per-output-channel F32 scales
        long biasBytes = c.AttentionBias ? Layers * (q + 2 * kv) * 4 : 0;
        long normBytes = (2L * Layers + 1) * h * 4;                            // norm gains are loaded as F32
        LayerWeightBytes = ProjectionParams * weightDType.SizeOf() + scaleBytes + biasBytes + normBytes;
        LmHeadBytes = (long)VocabSize * h * 2;
        ResidentWeightBytes = LayerWeightBytes + LmHeadBytes + (TiedEmbeddings ? 0 : LmHeadBytes);
        FlopsPerRow = 2.0 * ProjectionParams;
        LmHeadFlopsPerSample = 2.0 * h * VocabSize;
        AttentionFlopsPerPair = 4.0 * Layers * q;
        KvBytesPerToken = 2L * Layers * kv * 2;
    }

    /// <summary>
    /// The shape of <paramref name="config"/> with projection weights of <paramref name="weightDType"/>:
    /// <see cref="DType.F8E4M3"/> (FP8 GEMMs), <see cref="DType.BF16"/> or <see cref="DType.F16"/> (16-bit GEMMs).
    /// Throws <see cref="FastServeException"/> <c>sim.unsupported_dtype</c> for any other dtype.
    /// </summary>
    public static SimModelShape FromConfig(ModelConfig config, DType weightDType)
    {
        ArgumentNullException.ThrowIfNull(config);
        if (weightDType is not (DType.F8E4M3 or DType.BF16 or DType.F16))
            throw new FastServeException("sim.unsupported_dtype",
                $"the simulated device runs FP8 E4M3, BF16 or F16 weights, not {weightDType}", "dtype");
        return new SimModelShape(config, weightDType);
    }

    /// <summary>FP8 when <paramref name="config"/> carries a quantization_config, else BF16 (what a GPU backend loads).</summary>
    public static SimModelShape FromConfig(ModelConfig config) =>
        FromConfig(config, config.Quantization is not null ? DType.F8E4M3 : DType.BF16);

    public int Layers { get; }
    public int Hidden { get; }
    public int Intermediate { get; }
    public int Heads { get; }
    public int KvHeads { get; }
    public int HeadDim { get; }
    public int VocabSize { get; }
    public int MaxPositionEmbeddings { get; }
    public bool TiedEmbeddings { get; }

    /// <summary>Dtype of the attention and MLP projections.</summary>
    public DType WeightDType { get; }

    /// <summary>True when the projections run on FP8 tensor cores.</summary>
    public bool IsFp8 => WeightDType == DType.F8E4M3;

    /// <summary>Parameters of the q, k, v, o, gate, up and down projections of every layer.</summary>
    public long ProjectionParams { get; }

    /// <summary>Bytes every step streams for the layers: projections (1 byte/param FP8, 2 BF16/F16), FP8
    /// per-channel scales, q/k/v biases and norm gains.</summary>
    public long LayerWeightBytes { get; }

    /// <summary>BF16 lm_head bytes, streamed once by every step that samples (tied or not).</summary>
    public long LmHeadBytes { get; }

    /// <summary>Bytes the weights occupy on the device: layers, embedding, and lm_head when untied.</summary>
    public long ResidentWeightBytes { get; }

    /// <summary>Projection FLOPs per row (token) of a step: 2 × <see cref="ProjectionParams"/>.</summary>
    public double FlopsPerRow { get; }

    /// <summary>lm_head FLOPs per sampled row: 2 × hidden × vocabulary (only sampled rows reach the lm_head).</summary>
    public double LmHeadFlopsPerSample { get; }

    /// <summary>Attention FLOPs per (query row, attended position) pair: QKᵀ and PV, 2 × 2 × heads × headDim per layer.</summary>
    public double AttentionFlopsPerPair { get; }

    /// <summary>BF16 K plus V of one token over all layers: 2 × layers × kvHeads × headDim × 2 bytes.</summary>
    public long KvBytesPerToken { get; }
}
