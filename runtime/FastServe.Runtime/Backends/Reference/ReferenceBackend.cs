using FastServe.Runtime.Numerics;

namespace FastServe.Runtime.Backends.Reference;

/// <summary>
/// The scalar reference backend: the oracle that every other backend is checked against (op tests and the
/// check-backend command). Plain loops, no SIMD, no threads; dot products, norms and softmax accumulate in
/// <see cref="double"/> and round to F32 once at the end. FP8 weights are read as <c>scale · Fp8E4M3.Decode(q)</c>.
/// A BF16 KV cache stores values rounded with <see cref="HalfFloats.F32ToBF16"/>, exactly as a real BF16 cache would.
/// Activations and caches live in managed arrays, so each is limited to <see cref="Array.MaxLength"/> elements.
/// Slow by design: use it on test-sized shapes.
/// </summary>
/// <remarks>Error codes: <c>reference.too_large</c> when a tensor or KV cache exceeds the managed-array limit.
/// Misuse (wrong shapes, foreign tensors, token ids or block ids out of range) throws <see cref="ArgumentException"/>.</remarks>
public sealed class ReferenceBackend : BackendBase
{
    public override string Name => "reference";

    public override BackendWeight LoadMatrix(MatrixWeight weight)
    {
        ArgumentNullException.ThrowIfNull(weight);
        return new ReferenceWeight(weight) { Owner = this };
    }

    public override BackendWeight LoadVector(string name, ReadOnlySpan<float> values) => new ReferenceWeight(name, values.ToArray()) { Owner = this };

    public override BackendTensor Alloc(string name, int maxRows, int cols)
    {
        OpChecks.Alloc(name, maxRows, cols);
        long n = (long)maxRows * cols;
        if (n > Array.MaxLength)
            throw new FastServeException("reference.too_large", $"{maxRows}x{cols} activation exceeds the reference backend's array limit", name);
        return new ReferenceTensor(name, maxRows, cols) { Owner = this };
    }

    public override KvCache AllocKvCache(KvCacheSpec spec)
    {
        OpChecks.AllocKvCache(spec);
        long n = (long)spec.Layers * spec.NumBlocks * spec.BlockSize * spec.KvHeads * spec.HeadDim;
        if (n > Array.MaxLength)
            throw new FastServeException("reference.too_large", $"KV cache of {n} elements per K/V exceeds the reference backend's array limit", "kv_cache");
        return new ReferenceKvCache(spec, (int)n) { Owner = this };
    }

    public override void Embedding(BackendWeight table, ReadOnlySpan<int> tokens, BackendTensor dst)
    {
        EmbeddingOperands(table, tokens, dst, out ReferenceWeight t, out ReferenceTensor d);
        for (int i = 0; i < tokens.Length; i++)
        {
            int tok = tokens[i];
            for (int c = 0; c < t.Cols; c++) d.Data[i * d.Cols + c] = (float)t.Get(tok, c);
        }
    }

    public override void RmsNorm(BackendTensor x, BackendWeight gamma, float eps, BackendTensor dst)
    {
        RmsNormOperands(x, gamma, dst, out ReferenceTensor xs, out ReferenceWeight g, out ReferenceTensor d);
        for (int r = 0; r < xs.Rows; r++) NormRow(xs.Data, r * xs.Cols, g.Vector!, eps, d.Data, r * d.Cols, xs.Cols);
    }

    public override void AddRmsNorm(BackendTensor residual, BackendTensor x, BackendWeight gamma, float eps, BackendTensor dst)
    {
        AddRmsNormOperands(residual, x, gamma, dst, out ReferenceTensor res, out ReferenceTensor xs, out ReferenceWeight g, out ReferenceTensor d);
        for (int i = 0; i < res.Rows * res.Cols; i++) res.Data[i] += xs.Data[i];
        for (int r = 0; r < res.Rows; r++) NormRow(res.Data, r * res.Cols, g.Vector!, eps, d.Data, r * d.Cols, res.Cols);
    }

    private static void NormRow(float[] x, int xo, float[] gamma, float eps, float[] dst, int o, int cols)
    {
        double ss = 0;
        for (int c = 0; c < cols; c++) ss += (double)x[xo + c] * x[xo + c];
        double inv = 1.0 / Math.Sqrt(ss / cols + eps);
        for (int c = 0; c < cols; c++) dst[o + c] = (float)(x[xo + c] * inv * gamma[c]);
    }

    public override void Add(BackendTensor acc, BackendTensor x)
    {
        AddOperands(acc, x, out ReferenceTensor a, out ReferenceTensor b);
        for (int i = 0; i < a.Rows * a.Cols; i++) a.Data[i] += b.Data[i];
    }

    public override void MatMul(BackendTensor x, BackendWeight w, BackendTensor dst)
    {
        MatMulOperands(x, w, dst, out ReferenceTensor xs, out ReferenceWeight ws, out ReferenceTensor d);
        if (ws.Matrix is null) throw new ArgumentException($"MatMul: {w.Name} is a vector, not a matrix");
        float[]? bias = ws.Matrix.Bias;
        for (int r = 0; r < xs.Rows; r++)
        {
            for (int n = 0; n < ws.Rows; n++)
            {
                double acc = 0;
                for (int k = 0; k < ws.Cols; k++) acc += (double)xs.Data[r * xs.Cols + k] * ws.Get(n, k);
                if (bias is not null) acc += bias[n];
                d.Data[r * d.Cols + n] = (float)acc;
            }
        }
    }

    public override void Rope(BackendTensor x, int heads, ReadOnlySpan<int> positions, RopeTable rope)
    {
        var xs = RopeOperand<ReferenceTensor>(x, heads, positions, rope);
        int dim = rope.HeadDim, half = dim / 2;
        for (int r = 0; r < xs.Rows; r++)
        {
            for (int i = 0; i < half; i++)
            {
                float angle = (float)positions[r] * rope.InvFreq[i];
                double cos = MathF.Cos(angle), sin = MathF.Sin(angle);
                for (int h = 0; h < heads; h++)
                {
                    int o = r * xs.Cols + h * dim + i;
                    double a = xs.Data[o], b = xs.Data[o + half];
                    xs.Data[o] = (float)(a * cos - b * sin);
                    xs.Data[o + half] = (float)(b * cos + a * sin);
                }
            }
        }
    }

    public override void SiluGate(BackendTensor gate, BackendTensor up, BackendTensor dst)
    {
        SiluGateOperands(gate, up, dst, out ReferenceTensor g, out ReferenceTensor u, out ReferenceTensor d);
        for (int i = 0; i < g.Rows * g.Cols; i++)
        {
            double z = g.Data[i];
            d.Data[i] = (float)(z / (1.0 + Math.Exp(-z)) * u.Data[i]);
        }
    }

    public override void KvStore(KvCache cache, int layer, BackendTensor k, BackendTensor v, BatchLayout batch)
    {
        KvStoreOperands(cache, layer, k, v, batch, out ReferenceKvCache c, out ReferenceTensor ks, out ReferenceTensor vs);
        var spec = c.Spec;
        int width = spec.KvHeads * spec.HeadDim;
        for (int s = 0; s < batch.SequenceCount; s++)
        {
            for (int i = 0; i < batch.RowCount(s); i++)
            {
                int row = batch.RowStart(s) + i;
                int pos = batch.StartPos(s) + i;
                int off = c.SlotOffset(layer, Block(batch, s, pos, spec), pos % spec.BlockSize);
                for (int j = 0; j < width; j++)
                {
                    c.Write(c.K, c.K16, off + j, ks.Data[row * width + j]);
                    c.Write(c.V, c.V16, off + j, vs.Data[row * width + j]);
                }
            }
        }
    }

    public override void Attention(BackendTensor q, KvCache cache, int layer, BatchLayout batch, BackendTensor dst)
    {
        AttentionOperands(q, cache, layer, batch, dst, out ReferenceTensor qs, out ReferenceKvCache c, out ReferenceTensor d);
        var spec = c.Spec;
        int dim = spec.HeadDim;
        int heads = qs.Cols / dim;
        int group = heads / spec.KvHeads;
        double scale = 1.0 / Math.Sqrt(dim);
        for (int s = 0; s < batch.SequenceCount; s++)
        {
            for (int i = 0; i < batch.RowCount(s); i++)
            {
                int row = batch.RowStart(s) + i;
                int pos = batch.StartPos(s) + i;
                var scores = new double[pos + 1];
                for (int h = 0; h < heads; h++)
                {
                    int kvh = h / group;
                    int qo = row * qs.Cols + h * dim;
                    double max = double.NegativeInfinity;
                    for (int p = 0; p <= pos; p++)
                    {
                        int off = c.SlotOffset(layer, Block(batch, s, p, spec), p % spec.BlockSize) + kvh * dim;
                        double dot = 0;
                        for (int j = 0; j < dim; j++) dot += (double)qs.Data[qo + j] * c.Read(c.K, c.K16, off + j);
                        scores[p] = dot * scale;
                        max = Math.Max(max, scores[p]);
                    }
                    double sum = 0;
                    for (int p = 0; p <= pos; p++)
                    {
                        scores[p] = Math.Exp(scores[p] - max);
                        sum += scores[p];
                    }
                    for (int j = 0; j < dim; j++)
                    {
                        double acc = 0;
                        for (int p = 0; p <= pos; p++)
                        {
                            int off = c.SlotOffset(layer, Block(batch, s, p, spec), p % spec.BlockSize) + kvh * dim;
                            acc += scores[p] * c.Read(c.V, c.V16, off + j);
                        }
                        d.Data[row * d.Cols + h * dim + j] = (float)(acc / sum);
                    }
                }
            }
        }
    }

    public override void GatherRows(BackendTensor src, ReadOnlySpan<int> rows, BackendTensor dst)
    {
        GatherRowsOperands(src, rows, dst, out ReferenceTensor s, out ReferenceTensor d);
        for (int i = 0; i < rows.Length; i++) Array.Copy(s.Data, rows[i] * s.Cols, d.Data, i * d.Cols, s.Cols);
    }

    public override void CopyToHost(BackendTensor src, Span<float> dst)
    {
        var s = CopyToHostOperand<ReferenceTensor>(src, dst);
        int n = s.Rows * s.Cols;
        s.Data.AsSpan(0, n).CopyTo(dst);
    }

    public override void CopyFromHost(ReadOnlySpan<float> data, int rows, BackendTensor dst)
    {
        var d = CopyFromHostOperand<ReferenceTensor>(data, rows, dst);
        data.CopyTo(d.Data);
    }

    public override void Dispose()
    {
    }

    /// <summary>Block holding position <paramref name="pos"/> of sequence <paramref name="seq"/>; the op has already
    /// checked (<see cref="OpChecks"/>) that the table covers it with a valid id.</summary>
    private static int Block(BatchLayout batch, int seq, int pos, KvCacheSpec spec) => batch.BlockTable(seq)[pos / spec.BlockSize];

    private sealed class ReferenceTensor(string name, int maxRows, int cols) : BackendTensor(name, maxRows, cols)
    {
        public readonly float[] Data = new float[(long)maxRows * cols];
    }

    private sealed unsafe class ReferenceWeight : BackendWeight
    {
        public ReferenceWeight(MatrixWeight m) : base(m.Name, m.DType, m.Rows, m.Cols) => Matrix = m;

        public ReferenceWeight(string name, float[] values) : base(name, DType.F32, 1, values.Length, isVector: true) => Vector = values;

        public MatrixWeight? Matrix { get; }
        public float[]? Vector { get; }

        /// <summary>Element (n, k) of the matrix, dequantized, in double.</summary>
        public double Get(int n, int k)
        {
            if (Matrix is null) return Vector![k];
            byte* p = Matrix.Data + ((long)n * Cols + k) * DType.SizeOf();
            return DType switch
            {
                DType.F32 => *(float*)p,
                DType.F16 => HalfFloats.F16ToF32(*(ushort*)p),
                DType.BF16 => HalfFloats.BF16ToF32(*(ushort*)p),
                DType.F8E4M3 => (double)Matrix.Scales![Matrix.Scales.Length == 1 ? 0 : n] * Fp8E4M3.Decode(*p),
                _ => throw new ArgumentException($"{Name}: unsupported dtype {DType}"),
            };
        }
    }

    private sealed class ReferenceKvCache : KvCache
    {
        public readonly float[]? K, V;
        public readonly ushort[]? K16, V16;

        public ReferenceKvCache(KvCacheSpec spec, int elements) : base(spec)
        {
            if (spec.DType == KvDType.F32)
            {
                K = new float[elements];
                V = new float[elements];
            }
            else
            {
                K16 = new ushort[elements];
                V16 = new ushort[elements];
            }
        }

        /// <summary>Offset of (layer, block, slot, kvHead 0, dim 0) in the [layer][block][slot][kvHead][dim] layout.</summary>
        public int SlotOffset(int layer, int block, int slot) =>
            (((layer * Spec.NumBlocks) + block) * Spec.BlockSize + slot) * Spec.KvHeads * Spec.HeadDim;

        public void Write(float[]? f, ushort[]? h, int i, float value)
        {
            if (f is not null) f[i] = value;
            else h![i] = HalfFloats.F32ToBF16(value);
        }

        public double Read(float[]? f, ushort[]? h, int i) => f is not null ? f[i] : HalfFloats.BF16ToF32(h![i]);
    }
}
