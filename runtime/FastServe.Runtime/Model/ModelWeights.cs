using System.Runtime.InteropServices;
using FastServe.Runtime.Backends;
using FastServe.Runtime.Formats;
using FastServe.Runtime.Numerics;
using FastServe.Runtime.Quantization;

namespace FastServe.Runtime.Model;

/// <summary>Host-side weights of one decoder layer, bound by Hugging Face tensor names.</summary>
public sealed class LayerWeights
{
    public required float[] InputNorm { get; init; }
    public required MatrixWeight Q { get; init; }
    public required MatrixWeight K { get; init; }
    public required MatrixWeight V { get; init; }
    public required MatrixWeight O { get; init; }
    public required float[] PostAttentionNorm { get; init; }
    public required MatrixWeight Gate { get; init; }
    public required MatrixWeight Up { get; init; }
    public required MatrixWeight Down { get; init; }

    public IEnumerable<MatrixWeight> Matrices => [Q, K, V, O, Gate, Up, Down];
}

/// <summary>
/// All weights of a Llama-family checkpoint as host views: pointers into the memory-mapped safetensors files,
/// except FP8 matrices quantized at load time, whose bytes live in native buffers owned here (the original
/// higher-precision bytes stay mapped, untouched, and no dequantized copy exists anywhere).
/// </summary>
public sealed class ModelWeights : IDisposable
{
    private readonly List<nint> _owned = [];

    private ModelWeights() { }

    public required MatrixWeight Embedding { get; init; }
    public required MatrixWeight LmHead { get; init; }
    public required float[] FinalNorm { get; init; }
    public required LayerWeights[] Layers { get; init; }

    /// <summary>Bytes one decode step reads from weights (every matrix once, plus one embedding row).</summary>
    public long BytesPerToken
    {
        get
        {
            long b = LmHead.BytesRead + (long)Embedding.Cols * Embedding.DType.SizeOf();
            foreach (var l in Layers)
                foreach (var m in l.Matrices) b += m.BytesRead;
            return b;
        }
    }

    /// <summary>Multiply-adds per token in the matrices (2 FLOP each).</summary>
    public long MatMulFlopsPerToken
    {
        get
        {
            long f = 2L * LmHead.Rows * LmHead.Cols;
            foreach (var l in Layers)
                foreach (var m in l.Matrices) f += 2L * m.Rows * m.Cols;
            return f;
        }
    }

    /// <summary>Binds (and optionally quantizes) every tensor the architecture needs, checking shapes.</summary>
    /// <param name="quantize">When set, attention/MLP projections stored in F32/F16/BF16 are quantized to FP8 here.</param>
    /// <param name="progress">(matrices done, matrices total).</param>
    public static ModelWeights Bind(Checkpoint ckpt, ModelConfig cfg, Fp8LoadOptions? quantize, Action<long, long>? progress = null)
    {
        var owned = new List<nint>();
        try
        {
            int h = cfg.HiddenSize, qDim = cfg.NumHeads * cfg.HeadDim, kvDim = cfg.NumKvHeads * cfg.HeadDim;
            int total = cfg.NumLayers * 7 + 2, done = 0;
            var binder = new Binder(ckpt, quantize, owned);

            var embed = binder.Matrix("model.embed_tokens.weight", cfg.VocabSize, h, allowFp8: false, quantizable: false);
            progress?.Invoke(++done, total);
            var layers = new LayerWeights[cfg.NumLayers];
            for (int i = 0; i < layers.Length; i++)
            {
                string p = $"model.layers.{i}.";
                MatrixWeight M(string name, int rows, int cols, bool bias = false)
                {
                    var m = binder.Matrix(p + name + ".weight", rows, cols, allowFp8: true, quantizable: true,
                        biasName: bias ? p + name + ".bias" : null);
                    progress?.Invoke(++done, total);
                    return m;
                }
                layers[i] = new LayerWeights
                {
                    InputNorm = binder.Vector(p + "input_layernorm.weight", h),
                    Q = M("self_attn.q_proj", qDim, h, cfg.AttentionBias),
                    K = M("self_attn.k_proj", kvDim, h, cfg.AttentionBias),
                    V = M("self_attn.v_proj", kvDim, h, cfg.AttentionBias),
                    O = M("self_attn.o_proj", h, qDim),
                    PostAttentionNorm = binder.Vector(p + "post_attention_layernorm.weight", h),
                    Gate = M("mlp.gate_proj", cfg.IntermediateSize, h),
                    Up = M("mlp.up_proj", cfg.IntermediateSize, h),
                    Down = M("mlp.down_proj", h, cfg.IntermediateSize),
                };
            }
            MatrixWeight lmHead = cfg.TieWordEmbeddings || !ckpt.TryGet("lm_head.weight", out _)
                ? embed
                : binder.Matrix("lm_head.weight", cfg.VocabSize, h, allowFp8: true, quantizable: false);
            progress?.Invoke(++done, total);
            var w = new ModelWeights
            {
                Embedding = embed,
                LmHead = lmHead,
                FinalNorm = binder.Vector("model.norm.weight", h),
                Layers = layers,
            };
            w._owned.AddRange(owned);
            return w;
        }
        catch
        {
            foreach (nint p in owned) unsafe { NativeMemory.AlignedFree((void*)p); }
            throw;
        }
    }

    public void Dispose()
    {
        foreach (nint p in _owned) unsafe { NativeMemory.AlignedFree((void*)p); }
        _owned.Clear();
    }

    private sealed unsafe class Binder(Checkpoint ckpt, Fp8LoadOptions? quantize, List<nint> owned)
    {
        public float[] Vector(string name, int length)
        {
            var t = ckpt.Get(name);
            if (t.Shape.Length != 1 || t.Shape[0] != length)
                throw ShapeError(t, $"[{length}]");
            if (t.DType is not (DType.F32 or DType.F16 or DType.BF16))
                throw new FastServeException("checkpoint.unsupported_dtype", $"{name}: norm weights must be F32, F16 or BF16, not {t.DType.SafeTensorsName()}", ckpt.Directory);
            var v = new float[length];
            HalfFloats.ToF32(t.DType, t.Data, v);
            return v;
        }

        public MatrixWeight Matrix(string name, int rows, int cols, bool allowFp8, bool quantizable, string? biasName = null)
        {
            var t = ckpt.Get(name);
            if (t.Shape.Length != 2 || t.Shape[0] != rows || t.Shape[1] != cols)
                throw ShapeError(t, $"[{rows}, {cols}]");
            float[]? bias = null;
            if (biasName is not null) bias = Vector(biasName, rows);

            switch (t.DType)
            {
                case DType.F32 or DType.F16 or DType.BF16:
                    if (quantizable && quantize is { } q && Fp8Quantizer.IsTarget(name, q.Layers))
                    {
                        long n = (long)rows * cols;
                        byte* buf = (byte*)NativeMemory.AlignedAlloc((nuint)n, 64);
                        owned.Add((nint)buf);
                        var scales = new float[q.Scheme == Fp8Scheme.PerChannel ? rows : 1];
                        Fp8Quantizer.Quantize(t, q.Scheme, new Span<byte>(buf, checked((int)n)), scales);
                        return new MatrixWeight(name, DType.F8E4M3, rows, cols, buf, scales, bias);
                    }
                    return new MatrixWeight(name, t.DType, rows, cols, t.Data, null, bias);
                case DType.F8E4M3 when allowFp8:
                    return new MatrixWeight(name, DType.F8E4M3, rows, cols, t.Data, Scales(name, rows), bias);
                default:
                    throw new FastServeException("checkpoint.unsupported_dtype",
                        $"{name}: {t.DType.SafeTensorsName()} is not supported for this tensor", ckpt.Directory);
            }
        }

        private float[] Scales(string weightName, int rows)
        {
            string scaleName = weightName + "_scale";
            if (!ckpt.TryGet(scaleName, out var s))
                throw new FastServeException("checkpoint.missing_tensor", $"{weightName} is F8_E4M3 but {scaleName} is missing", ckpt.Directory);
            long n = s.ElementCount;
            bool perTensor = n == 1;
            bool perChannel = n == rows && (s.Shape.Length == 1 || (s.Shape.Length == 2 && s.Shape[1] == 1));
            if (!perTensor && !perChannel)
                throw ShapeError(s, $"[{rows}, 1] or []");
            if (s.DType is not (DType.F32 or DType.F16 or DType.BF16))
                throw new FastServeException("checkpoint.unsupported_dtype", $"{scaleName}: scales must be F32, F16 or BF16", ckpt.Directory);
            var v = new float[n];
            HalfFloats.ToF32(s.DType, s.Data, v);
            foreach (float x in v)
                if (!float.IsFinite(x) || x <= 0)
                    throw new FastServeException("checkpoint.invalid_scale", $"{scaleName} holds a non-positive or non-finite scale ({x})", ckpt.Directory);
            return v;
        }

        private FastServeException ShapeError(TensorView t, string expected) =>
            new("checkpoint.shape_mismatch", $"{t.Name} has shape [{string.Join(", ", t.Shape)}], config.json implies {expected}", ckpt.Directory);
    }
}

/// <summary>Quantize-at-load settings (<c>--quantize fp8</c>).</summary>
public sealed record Fp8LoadOptions(Fp8Scheme Scheme = Fp8Scheme.PerChannel, QuantizeLayers Layers = QuantizeLayers.All);
