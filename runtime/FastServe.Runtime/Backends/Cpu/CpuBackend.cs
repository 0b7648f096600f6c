using System.Runtime.Intrinsics;
using FastServe.Runtime.Numerics;

namespace FastServe.Runtime.Backends.Cpu;

/// <summary>
/// The CPU backend: SIMD kernels (AVX-512, AVX2+FMA or portable Vector128, chosen at run time) spread over a
/// persistent <see cref="ComputePool"/>. Activations are F32 in 64-byte-aligned native memory; weights stay where
/// the caller mapped them (F32, F16, BF16, FP8 E4M3 dequantized inside the dot product); the KV cache is paged
/// (see <see cref="CpuKvCache"/> for its layout). Ops run synchronously on the calling thread plus the pool, so
/// every op has finished when it returns. After warm-up (scratch grown to the largest shapes seen) ops allocate
/// nothing on the managed heap.
/// </summary>
/// <remarks>
/// Error codes: <c>cpu.bad_thread_count</c> (threads outside 0..1024), <c>cpu.isa_unsupported</c> (a forced
/// <see cref="CpuIsa"/> this processor cannot run), <c>cpu.out_of_memory</c> (a native allocation failed; the path
/// names the tensor). Programming errors (shape mismatches, foreign tensors, token or block ids out of range) throw
/// <see cref="ArgumentException"/>.
/// </remarks>
public sealed unsafe class CpuBackend : BackendBase
{
    /// <summary>Element-wise ops smaller than this many elements run on the calling thread only.</summary>
    private const long ParallelElements = 1 << 15;

    private readonly ComputePool _pool;
    private readonly CpuIsa _isa;
    private readonly MatMulJob _matmul;
    private readonly ElementJob _elem;
    private readonly AttentionJob _attn;
    private readonly WorkerScratch _scratch;
    private float[] _probs = [];
    private bool _disposed;

    /// <param name="threads">Compute threads including the caller; 0 = <see cref="Environment.ProcessorCount"/>.</param>
    /// <param name="isa">Force a kernel path (tests, benchmarks); null = the best this processor supports.</param>
    /// <exception cref="FastServeException"><c>cpu.bad_thread_count</c>, <c>cpu.isa_unsupported</c>.</exception>
    public CpuBackend(int threads = 0, CpuIsa? isa = null)
    {
        if (threads < 0 || threads > 1024)
            throw new FastServeException("cpu.bad_thread_count", $"thread count must be 0 (all cores) to 1024, got {threads}", "threads");
        CpuIsa chosen = isa ?? CpuIsaInfo.Best;
        if (!CpuIsaInfo.IsSupported(chosen))
            throw new FastServeException("cpu.isa_unsupported",
                $"this processor cannot run the {chosen.Name()} kernels; supported: {string.Join(", ", CpuIsaInfo.Supported.Select(i => i.Name()))}", "isa");
        _isa = chosen;
        _pool = new ComputePool(threads == 0 ? Environment.ProcessorCount : threads);
        _scratch = new WorkerScratch(_pool.Threads);
        _matmul = new MatMulJob { Isa = chosen };
        _elem = new ElementJob { Isa = chosen, Scratch = _scratch };
        _attn = new AttentionJob { Isa = chosen, Scratch = _scratch };
    }

    public override string Name => "cpu";

    /// <summary>Threads that run each op (the caller included).</summary>
    public int Threads => _pool.Threads;

    /// <summary>Active kernel path: "avx512", "avx2" or "portable".</summary>
    public string Isa => _isa.Name();

    /// <summary>Active kernel path as an enum.</summary>
    public CpuIsa IsaLevel => _isa;

    public override BackendWeight LoadMatrix(MatrixWeight weight)
    {
        ArgumentNullException.ThrowIfNull(weight);
        if (weight.Data == null) throw new ArgumentException($"{weight.Name}: null data pointer");
        return new CpuWeight(weight) { Owner = this };
    }

    public override BackendWeight LoadVector(string name, ReadOnlySpan<float> values)
    {
        if (values.IsEmpty) throw new ArgumentException($"{name}: empty vector");
        return new CpuWeight(name, values) { Owner = this };
    }

    public override BackendTensor Alloc(string name, int maxRows, int cols)
    {
        OpChecks.Alloc(name, maxRows, cols);
        return new CpuTensor(name, maxRows, cols) { Owner = this };
    }

    public override KvCache AllocKvCache(KvCacheSpec spec)
    {
        OpChecks.AllocKvCache(spec);
        return new CpuKvCache(spec) { Owner = this };
    }

    public override void Embedding(BackendWeight table, ReadOnlySpan<int> tokens, BackendTensor dst)
    {
        EmbeddingOperands(table, tokens, dst, out CpuWeight t, out CpuTensor d);
        int es = t.DType.SizeOf();
        for (int i = 0; i < tokens.Length; i++)
        {
            int tok = tokens[i];
            float scale = t.Scale != null ? t.Scale[tok] : 1f;
            Dispatch.DecodeRow(_isa, t.DType, t.Data + (long)tok * t.Cols * es, scale, d.Row(i), t.Cols);
        }
    }

    public override void RmsNorm(BackendTensor x, BackendWeight gamma, float eps, BackendTensor dst)
    {
        RmsNormOperands(x, gamma, dst, out CpuTensor xs, out CpuWeight g, out CpuTensor d);
        RunRows(ElementOp.RmsNorm, xs.Rows, xs.Cols, xs.Data, null, d.Data, (float*)g.Data, eps);
    }

    public override void AddRmsNorm(BackendTensor residual, BackendTensor x, BackendWeight gamma, float eps, BackendTensor dst)
    {
        AddRmsNormOperands(residual, x, gamma, dst, out CpuTensor res, out CpuTensor xs, out CpuWeight g, out CpuTensor d);
        RunRows(ElementOp.RmsNorm, res.Rows, res.Cols, res.Data, xs.Data, d.Data, (float*)g.Data, eps);
    }

    public override void Add(BackendTensor acc, BackendTensor x)
    {
        AddOperands(acc, x, out CpuTensor a, out CpuTensor b);
        RunRange(ElementOp.Add, (long)a.Rows * a.Cols, a.Data, b.Data, null);
    }

    public override void SiluGate(BackendTensor gate, BackendTensor up, BackendTensor dst)
    {
        SiluGateOperands(gate, up, dst, out CpuTensor g, out CpuTensor u, out CpuTensor d);
        RunRange(ElementOp.SiluGate, (long)g.Rows * g.Cols, g.Data, u.Data, d.Data);
    }

    public override void MatMul(BackendTensor x, BackendWeight w, BackendTensor dst)
    {
        MatMulOperands(x, w, dst, out CpuTensor xs, out CpuWeight ws, out CpuTensor d);
        if (xs.Rows == 0) return;

        var job = _matmul;
        job.DType = ws.DType;
        job.Args = new MatMulArgs
        {
            X = xs.Data, Rows = xs.Rows, K = xs.Cols, W = ws.Data, N = ws.Rows,
            Scale = ws.Scale, Bias = ws.Bias, Dst = d.Data,
        };
        int perItem = MatMulRowsPerItem(ws.Rows, (long)ws.Cols * ws.DType.SizeOf(), _pool.Threads);
        job.RowsPerItem = perItem;
        _pool.Run(job, (ws.Rows + perItem - 1) / perItem);
    }

    /// <summary>Weight rows per work item: about 256 KiB of weights (long sequential streams, and the chunk stays in L2
    /// while activation tiles pass over it), a multiple of 4, but at least 4 items per thread
    /// when the matrix allows, so dynamic scheduling can even out the threads.</summary>
    internal static int MatMulRowsPerItem(int n, long rowBytes, int threads)
    {
        int rows = (int)Math.Clamp((256 * 1024 + rowBytes - 1) / Math.Max(1, rowBytes), 4, 1 << 20);
        rows = (rows + 3) & ~3;
        while (rows > 4 && (n + rows - 1) / rows < 4 * threads) rows = Math.Max(4, (rows / 2 + 3) & ~3);
        return rows;
    }

    public override void Rope(BackendTensor x, int heads, ReadOnlySpan<int> positions, RopeTable rope)
    {
        var xs = RopeOperand<CpuTensor>(x, heads, positions, rope);
        int dim = rope.HeadDim;
        if (xs.Rows == 0) return;
        _scratch.Ensure(dim);
        fixed (int* pos = positions)
        fixed (float* inv = rope.InvFreq)
        {
            var job = _elem;
            job.Heads = heads;
            job.Dim = dim;
            job.Positions = pos;
            job.InvFreq = inv;
            try
            {
                RunRows(ElementOp.Rope, xs.Rows, xs.Cols, xs.Data, null, null, null, 0);
            }
            finally
            {
                job.Positions = null;
                job.InvFreq = null;
            }
        }
    }

    public override void KvStore(KvCache cache, int layer, BackendTensor k, BackendTensor v, BatchLayout batch)
    {
        KvStoreOperands(cache, layer, k, v, batch, out CpuKvCache c, out CpuTensor ks, out CpuTensor vs);
        var spec = c.Spec;
        int dim = spec.HeadDim, bs = spec.BlockSize;
        bool bf16 = spec.DType == KvDType.BF16;
        for (int s = 0; s < batch.SequenceCount; s++)
        {
            ReadOnlySpan<int> table = batch.BlockTable(s);
            for (int i = 0; i < batch.RowCount(s); i++)
            {
                int row = batch.RowStart(s) + i, pos = batch.StartPos(s) + i;
                int block = table[pos / bs], slot = pos % bs;
                float* kr = ks.Row(row), vr = vs.Row(row);
                for (int h = 0; h < spec.KvHeads; h++)
                {
                    byte* kt = c.KTile(layer, block, h);
                    byte* vt = c.VTile(layer, block, h);
                    float* kh = kr + h * dim, vh = vr + h * dim;
                    if (bf16)
                    {
                        ushort* kd = (ushort*)kt, vd = (ushort*)vt + (long)slot * dim;
                        for (int j = 0; j < dim; j++)
                        {
                            kd[(long)j * bs + slot] = HalfFloats.F32ToBF16(kh[j]);
                            vd[j] = HalfFloats.F32ToBF16(vh[j]);
                        }
                    }
                    else
                    {
                        float* kd = (float*)kt;
                        for (int j = 0; j < dim; j++) kd[(long)j * bs + slot] = kh[j];
                        Buffer.MemoryCopy(vh, (float*)vt + (long)slot * dim, dim * 4L, dim * 4L);
                    }
                }
            }
        }
    }

    public override void Attention(BackendTensor q, KvCache cache, int layer, BatchLayout batch, BackendTensor dst)
    {
        AttentionOperands(q, cache, layer, batch, dst, out CpuTensor qs, out CpuKvCache c, out CpuTensor d);
        var spec = c.Spec;
        int dim = spec.HeadDim;
        int heads = qs.Cols / dim;
        if (qs.Rows == 0) return;

        var job = _attn;
        job.EnsureRows(qs.Rows);
        int maxPos = 0;
        for (int s = 0; s < batch.SequenceCount; s++)
        {
            for (int i = 0; i < batch.RowCount(s); i++)
            {
                int row = batch.RowStart(s) + i;
                job.RowSeq[row] = s;
                job.RowPos[row] = batch.StartPos(s) + i;
            }
            if (batch.RowCount(s) > 0) maxPos = Math.Max(maxPos, batch.StartPos(s) + batch.RowCount(s) - 1);
        }
        int group = heads / spec.KvHeads;
        int bs = spec.BlockSize;
        // One score row per grouped head: every block's full width plus one vector of slack for partial lanes.
        int stride = ((maxPos / bs + 1) * bs + 16 + 15) & ~15;
        _scratch.Ensure((long)group * stride);
        job.Args = new AttentionArgs
        {
            Q = qs.Data, Dst = d.Data, QCols = qs.Cols, Dim = dim, Group = group, BlockSize = bs,
            Scale = 1f / MathF.Sqrt(dim), ScoreStride = stride, Cache = c, Layer = layer,
        };
        job.Batch = batch;
        job.KvHeads = spec.KvHeads;
        job.Bf16 = spec.DType == KvDType.BF16;
        try
        {
            _pool.Run(job, qs.Rows * spec.KvHeads);
        }
        finally
        {
            job.Batch = null;
            job.Args.Cache = null!;
        }
    }

    public override void GatherRows(BackendTensor src, ReadOnlySpan<int> rows, BackendTensor dst)
    {
        GatherRowsOperands(src, rows, dst, out CpuTensor s, out CpuTensor d);
        long bytes = s.Cols * 4L;
        for (int i = 0; i < rows.Length; i++)
        {
            if (rows[i] != i || !ReferenceEquals(s, d)) Buffer.MemoryCopy(s.Row(rows[i]), d.Row(i), bytes, bytes);
        }
    }

    public override void CopyToHost(BackendTensor src, Span<float> dst)
    {
        var s = CopyToHostOperand<CpuTensor>(src, dst);
        int n = s.Rows * s.Cols;
        new ReadOnlySpan<float>(s.Data, n).CopyTo(dst);
    }

    /// <summary>Draws straight from the logits' memory by <see cref="CounterSampler"/>'s rules (no copy).</summary>
    public override void Sample(BackendTensor logits, ReadOnlySpan<SampleRow> rows, Span<int> tokens)
    {
        var l = SampleOperand<CpuTensor>(logits, rows, tokens);
        if (_probs.Length < l.Cols) _probs = new float[l.Cols];
        CounterSampler.SampleRows(new ReadOnlySpan<float>(l.Data, l.Rows * l.Cols), l.Cols, rows, tokens, _probs);
    }

    public override void CopyFromHost(ReadOnlySpan<float> data, int rows, BackendTensor dst)
    {
        var d = CopyFromHostOperand<CpuTensor>(data, rows, dst);
        data.CopyTo(new Span<float>(d.Data, data.Length));
    }

    public override void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        _pool.Dispose();
        _scratch.Dispose();
    }

    private void RunRows(ElementOp op, int rows, int cols, float* a, float* b, float* c, float* gamma, float eps)
    {
        var job = _elem;
        job.Op = op;
        job.A = a;
        job.B = b;
        job.C = c;
        job.Gamma = gamma;
        job.Eps = eps;
        job.Cols = cols;
        job.Total = rows;
        long elements = (long)rows * cols;
        int perItem = elements < ParallelElements ? rows : (int)Math.Max(1, Math.Min(rows, (ParallelElements / 2) / cols));
        job.PerItem = perItem;
        _pool.Run(job, (rows + perItem - 1) / perItem);
    }

    private void RunRange(ElementOp op, long total, float* a, float* b, float* c)
    {
        if (total == 0) return;
        var job = _elem;
        job.Op = op;
        job.A = a;
        job.B = b;
        job.C = c;
        job.Total = total;
        int perItem = (int)Math.Min(total, ParallelElements / 2);
        job.PerItem = perItem;
        _pool.Run(job, (int)((total + perItem - 1) / perItem));
    }

    private enum ElementOp { RmsNorm, Add, SiluGate, Rope }

    /// <summary>Row-ranged (norms, RoPE) and element-ranged (add, SiLU gate) ops.</summary>
    private sealed class ElementJob : ComputeJob
    {
        public CpuIsa Isa;
        public ElementOp Op;
        public float* A, B, C, Gamma, InvFreq;
        public int* Positions;
        public float Eps;
        public int Cols, Heads, Dim, PerItem;
        public long Total;
        public WorkerScratch Scratch = null!;

        public override void Execute(int item, int worker)
        {
            long lo = (long)item * PerItem, hi = Math.Min(Total, lo + PerItem);
            switch (Isa)
            {
                case CpuIsa.Avx512: Run<Simd512, Vector512<float>>(lo, hi, worker); break;
                case CpuIsa.Avx2: Run<Simd256, Vector256<float>>(lo, hi, worker); break;
                default: Run<Simd128, Vector128<float>>(lo, hi, worker); break;
            }
        }

        private void Run<TOps, TVec>(long lo, long hi, int worker) where TOps : ISimd<TVec> where TVec : struct
        {
            switch (Op)
            {
                case ElementOp.RmsNorm: ElementwiseKernel<TOps, TVec>.RmsNorm(A, Gamma, Eps, C, Cols, (int)lo, (int)hi, B); break;
                case ElementOp.Add: ElementwiseKernel<TOps, TVec>.Add(A, B, lo, hi); break;
                case ElementOp.SiluGate: ElementwiseKernel<TOps, TVec>.SiluGate(A, B, C, lo, hi); break;
                case ElementOp.Rope: ElementwiseKernel<TOps, TVec>.Rope(A, Cols, Heads, Dim, Positions, InvFreq, (int)lo, (int)hi, Scratch.Get(worker)); break;
            }
        }
    }

    private sealed class MatMulJob : ComputeJob
    {
        public CpuIsa Isa;
        public DType DType;
        public MatMulArgs Args;
        public int RowsPerItem;

        public override void Execute(int item, int worker)
        {
            int n0 = item * RowsPerItem, n1 = Math.Min(Args.N, n0 + RowsPerItem);
            switch (Isa)
            {
                case CpuIsa.Avx512: Run<Simd512, Vector512<float>>(n0, n1); break;
                case CpuIsa.Avx2: Run<Simd256, Vector256<float>>(n0, n1); break;
                default: Run<Simd128, Vector128<float>>(n0, n1); break;
            }
        }

        private void Run<TOps, TVec>(int n0, int n1) where TOps : ISimd<TVec> where TVec : struct
        {
            switch (DType)
            {
                case DType.F32: MatMulKernel<TOps, TVec, WeightF32>.Run(Args, n0, n1); break;
                case DType.F16: MatMulKernel<TOps, TVec, WeightF16>.Run(Args, n0, n1); break;
                case DType.BF16: MatMulKernel<TOps, TVec, WeightBf16>.Run(Args, n0, n1); break;
                case DType.F8E4M3: MatMulKernel<TOps, TVec, WeightFp8>.Run(Args, n0, n1); break;
                default: throw new InvalidOperationException($"MatMul: no kernel for {DType}");
            }
        }
    }

    private sealed class AttentionJob : ComputeJob
    {
        public CpuIsa Isa;
        public AttentionArgs Args;
        public BatchLayout? Batch;
        public int KvHeads;
        public bool Bf16;
        public int[] RowSeq = new int[16];
        public int[] RowPos = new int[16];
        public WorkerScratch Scratch = null!;

        public void EnsureRows(int rows)
        {
            if (RowSeq.Length >= rows) return;
            int n = Math.Max(rows, RowSeq.Length * 2);
            RowSeq = new int[n];
            RowPos = new int[n];
        }

        public override void Execute(int item, int worker)
        {
            int row = item / KvHeads, kvHead = item % KvHeads;
            ReadOnlySpan<int> table = Batch!.BlockTable(RowSeq[row]);
            float* scores = Scratch.Get(worker);
            int pos = RowPos[row];
            switch (Isa)
            {
                case CpuIsa.Avx512:
                    if (Bf16) AttentionKernel<Simd512, Vector512<float>, WeightBf16>.Run(Args, row, pos, kvHead, table, scores);
                    else AttentionKernel<Simd512, Vector512<float>, WeightF32>.Run(Args, row, pos, kvHead, table, scores);
                    break;
                case CpuIsa.Avx2:
                    if (Bf16) AttentionKernel<Simd256, Vector256<float>, WeightBf16>.Run(Args, row, pos, kvHead, table, scores);
                    else AttentionKernel<Simd256, Vector256<float>, WeightF32>.Run(Args, row, pos, kvHead, table, scores);
                    break;
                default:
                    if (Bf16) AttentionKernel<Simd128, Vector128<float>, WeightBf16>.Run(Args, row, pos, kvHead, table, scores);
                    else AttentionKernel<Simd128, Vector128<float>, WeightF32>.Run(Args, row, pos, kvHead, table, scores);
                    break;
            }
        }
    }
}

/// <summary>Per-thread native float scratch, grown (by the dispatching thread, before a run) and never shrunk.</summary>
internal sealed unsafe class WorkerScratch : IDisposable
{
    private readonly nint[] _buffers;
    private long _capacity;

    public WorkerScratch(int threads) => _buffers = new nint[threads];

    public float* Get(int worker) => (float*)_buffers[worker];

    /// <summary>Makes every thread's buffer hold at least <paramref name="floats"/> floats.</summary>
    public void Ensure(long floats)
    {
        if (floats <= _capacity) return;
        long cap = Math.Max(floats, _capacity * 2);
        for (int i = 0; i < _buffers.Length; i++)
        {
            void* p = (void*)_buffers[i];
            AlignedMemory.Free(ref p);
            _buffers[i] = 0;
        }
        _capacity = 0;
        for (int i = 0; i < _buffers.Length; i++) _buffers[i] = (nint)AlignedMemory.Alloc(cap * 4, "cpu.scratch", AlignedMemory.Alignment);
        _capacity = cap;
    }

    public void Dispose()
    {
        for (int i = 0; i < _buffers.Length; i++)
        {
            void* p = (void*)_buffers[i];
            AlignedMemory.Free(ref p);
            _buffers[i] = 0;
        }
        _capacity = 0;
    }
}

/// <summary>ISA × dtype dispatch for the single-threaded helpers.</summary>
internal static unsafe class Dispatch
{
    public static void DecodeRow(CpuIsa isa, DType dtype, byte* src, float scale, float* dst, int cols)
    {
        switch (isa)
        {
            case CpuIsa.Avx512: DecodeRow<Simd512, Vector512<float>>(dtype, src, scale, dst, cols); break;
            case CpuIsa.Avx2: DecodeRow<Simd256, Vector256<float>>(dtype, src, scale, dst, cols); break;
            default: DecodeRow<Simd128, Vector128<float>>(dtype, src, scale, dst, cols); break;
        }
    }

    private static void DecodeRow<TOps, TVec>(DType dtype, byte* src, float scale, float* dst, int cols) where TOps : ISimd<TVec> where TVec : struct
    {
        switch (dtype)
        {
            case DType.F32: ElementwiseKernel<TOps, TVec>.DecodeRow<WeightF32>(src, scale, dst, cols); break;
            case DType.F16: ElementwiseKernel<TOps, TVec>.DecodeRow<WeightF16>(src, scale, dst, cols); break;
            case DType.BF16: ElementwiseKernel<TOps, TVec>.DecodeRow<WeightBf16>(src, scale, dst, cols); break;
            case DType.F8E4M3: ElementwiseKernel<TOps, TVec>.DecodeRow<WeightFp8>(src, scale, dst, cols); break;
            default: throw new ArgumentException($"no decoder for {dtype}");
        }
    }
}
