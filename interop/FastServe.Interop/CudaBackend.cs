using System.Diagnostics.CodeAnalysis;
using FastServe.Runtime;
using FastServe.Runtime.Backends;

namespace FastServe.Interop;

/// <summary>
/// The <c>cuda</c> backend: every <see cref="IBackend"/> op is one call into libfastserve_cuda.so on one stream of
/// the device's primary context. Weights are uploaded once as stored (FP8 bytes plus per-row F32 scales, F16, BF16,
/// F32); activations are F32 and the paged KV cache BF16 in device memory. Ops are asynchronous;
/// <see cref="CopyToHost"/> downloads and waits. MatMul against FP8 weights is W8A8 (see
/// <see cref="QuantizesFp8Activations"/>).
/// </summary>
/// <remarks>
/// <para>Host arrays an op needs (tokens, positions, slots, block tables, row indices, CopyFromHost data) go through
/// <see cref="CudaStaging"/>, a pinned buffer copied to a device mirror on the stream, in op order: no allocation per
/// op once the largest step has been seen.</para>
/// <para>Errors: a shape mismatch throws <see cref="ArgumentException"/> (<c>OpChecks</c>, as every backend).
/// A failing CUDA call throws <see cref="CudaException"/> (<c>cuda.*</c>) and, except for arguments the kernel
/// library rejects before launching (<c>cuda.invalid_argument</c>), leaves the backend faulted: every later op
/// throws again, because the stream's work is lost and CUDA errors of a context are sticky.</para>
/// <para>Weights go up through pinned staging chunks, host reads overlapping the copies (<see cref="CudaWeightUploader"/>);
/// <see cref="WeightUpload"/> says what that achieved. Steps bracketed by <see cref="BeginStep"/> and
/// <see cref="EndStep"/> are recorded as CUDA graphs and replayed, captured lazily while steps run eagerly
/// (<see cref="CudaGraphRecorder"/>, <see cref="GraphCapturePolicy"/>, <see cref="GraphCapture"/>; docs/cuda.md).</para>
/// An instance is used by one thread at a time (any thread: the context is made current on a thread change).
/// </remarks>
public sealed unsafe class CudaBackend : BackendBase, IStepRecorder, IDeviceProbe
{
    private const long InitialStagingBytes = 1 << 20;
    private const int StagingAlignment = CudaStaging.Alignment;

    private readonly CudaContextHandle _context;
    private readonly CudaStreamHandle _streamHandle;
    private readonly nint _stream;
    private readonly Dictionary<RopeTable, CudaDeviceMemory> _invFreq = new(ReferenceEqualityComparer.Instance);
    private readonly CudaStaging _staging;
    private readonly CudaGraphRecorder _graphs;
    private readonly CudaWeightUploader _uploader;
    private CudaPinnedMemory _readback;
    private CudaDeviceMemory? _gatherScratch;
    private CudaDeviceMemory? _sampleScratch;
    private int _boundThread;
    private CudaException? _fault;
    private bool _disposed;

    // What each purpose last staged in the current staging epoch: arrays that repeat within a step are staged once.
    private StageCache _ropeCache, _slotCache, _attnCache, _gatherCache, _tokenCache, _sampleCache;

    private CudaBackend(CudaDeviceSummary device, CudaContextHandle context, CudaStreamHandle stream, FsCudaDeviceInfo info, UploadOptions upload, double captureDuty)
    {
        Device = device;
        _context = context;
        _streamHandle = stream;
        _stream = stream.Stream;
        DeviceName = info.NameString();
        Multiprocessors = info.Multiprocessors;
        RuntimeVersion = info.RuntimeVersion;
        Fp8TensorCores = info.Fp8TensorCores != 0;
        _staging = new CudaStaging(context, InitialStagingBytes);
        _readback = CudaPinnedMemory.Alloc(context, InitialStagingBytes, "readback");
        _graphs = new CudaGraphRecorder(this, context, _stream, new GraphCapturePolicy(dutyCycle: captureDuty));
        _uploader = new CudaWeightUploader(context, _stream, upload, Driver, () => Pending = true);
        _boundThread = Environment.CurrentManagedThreadId;
    }

    /// <summary>Checks the environment (<see cref="CudaEnvironment.Check"/>), binds device <paramref name="ordinal"/>'s
    /// primary context to the calling thread, lets the kernel library check the device, and makes the stream.</summary>
    /// <exception cref="FastServeException">cuda.no_driver, cuda.no_device, cuda.unsupported_device, cuda.no_library,
    /// cuda.abi_mismatch, cuda.out_of_memory, cuda.error; cuda.invalid_upload_option for a bad
    /// FASTSERVE_CUDA_UPLOAD_* variable (<see cref="UploadOptions"/>), cuda.invalid_capture_duty for a bad
    /// FASTSERVE_CUDA_CAPTURE_DUTY (<see cref="GraphCapturePolicy.DutyCycleFromEnvironment"/>).</exception>
    public static CudaBackend Create(int ordinal = 0)
    {
        var upload = UploadOptions.FromEnvironment(Environment.GetEnvironmentVariable);
        double captureDuty = GraphCapturePolicy.DutyCycleFromEnvironment(Environment.GetEnvironmentVariable);
        var summary = CudaEnvironment.Check(ordinal);
        int dev;
        CudaException.Check(CudaDriver.cuDeviceGet(&dev, ordinal), "cuDeviceGet");
        var context = CudaContextHandle.Retain(dev);
        CudaStreamHandle? stream = null;
        try
        {
            context.MakeCurrent();
            int st = FastServeCuda.fs_cuda_init(ordinal);
            if (st != FsStatus.Ok) CudaException.ThrowKernels("fs_cuda_init", st);
            FsCudaDeviceInfo info = default;
            st = FastServeCuda.fs_cuda_device_info_get(ordinal, &info);
            if (st != FsStatus.Ok) CudaException.ThrowKernels("fs_cuda_device_info_get", st);
            stream = CudaStreamHandle.Create(context);
            return new CudaBackend(summary, context, stream, info, upload, captureDuty);
        }
        catch
        {
            stream?.Dispose();
            context.Dispose();
            throw;
        }
    }

    /// <summary>Makes "cuda" a name <see cref="BackendFactory"/> knows. Hosts call it once at startup; a host that is a
    /// shared library passes its own directory, where libfastserve_cuda.so is looked for first.</summary>
    public static void Register(string? hostLibraryDirectory = null)
    {
        if (hostLibraryDirectory is not null) NativeLibraries.SetHostLibraryDirectory(hostLibraryDirectory);
        BackendFactory.Register("cuda", new BackendFactory.Registration(_ => Create(), () => CudaEnvironment.Check()));
    }

    public override string Name => "cuda";

    /// <summary>True: FP8 MatMul quantizes each activation row to E4M3 (W8A8), as fs_cuda_matmul specifies.</summary>
    public override bool QuantizesFp8Activations => true;

    /// <summary>True: F16/BF16 MatMul runs on 16-bit tensor cores, activations rounded to the weight's type.</summary>
    public override bool RoundsActivationsTo16Bit => true;

    public CudaDeviceSummary Device { get; }
    public string DeviceName { get; }
    public int Multiprocessors { get; }
    /// <summary>CUDA runtime version the kernel library was built with (e.g. 12080).</summary>
    public int RuntimeVersion { get; }
    /// <summary>Whether the library has, and the device runs, the FP8 tensor-core path (sm_89+).</summary>
    public bool Fp8TensorCores { get; }

    /// <summary>Weight uploads so far: bytes, wall seconds, achieved GB/s, and where the host's time went. A session
    /// closes (and is counted) at the first call after the uploads that is not itself an upload.</summary>
    public WeightUploadStats WeightUpload => _uploader.Stats;

    /// <summary>Lazy CUDA graph capture so far: keys (decode batch sizes) with a graph, captures, capture seconds.</summary>
    public GraphCaptureStats GraphCapture => _graphs.Stats;

    /// <summary>The step key an idle gap should capture next (the due key that ran eagerly most often), or -1. For a
    /// caller that runs a dummy step of that key in a gap between steps; the engine does not yet.</summary>
    public int NextIdleCaptureKey() => _graphs.NextIdleKey();

    /// <summary>Bumped whenever a buffer a graph may reference (staging, its mirror, readback, scratch) is
    /// reallocated; it starts every graph's signature, so a graph recorded before is refused instead of reading freed
    /// memory.</summary>
    internal int BufferGeneration { get; private set; }

    /// <summary>Work was issued since the last synchronization.</summary>
    internal bool Pending { get; set; }

    // ---- recorded steps (CUDA graphs) --------------------------------------------------------------------------

    /// <summary>Fixes attention's block-table stride at <paramref name="maxBlocksPerSequence"/> (a graph bakes it
    /// in; until then each step uses its longest table) and drops earlier graphs.</summary>
    public void StartStepRecording(int maxBlocksPerSequence)
    {
        EnterSetup("StartStepRecording");
        _graphs.Start(maxBlocksPerSequence);
    }

    public void StopStepRecording() => _graphs.Stop();

    public bool BeginStep(int key)
    {
        Enter();
        return _graphs.BeginStep(key);
    }

    public StepOutcome EndStep() => _graphs.EndStep();


    // ---- weights and buffers ------------------------------------------------------------------------------------

    public override BackendWeight LoadMatrix(MatrixWeight weight)
    {
        ArgumentNullException.ThrowIfNull(weight);
        if (weight.Data == null) throw new ArgumentException($"{weight.Name}: null data pointer");
        EnterUpload("LoadMatrix");
        CudaDeviceMemory? data = null, scale = null, bias = null;
        try
        {
            data = Upload(weight.Data, weight.ByteLength, weight.Name);
            if (weight.DType == DType.F8E4M3)
            {
                var s = weight.Scales!;
                var rows = new float[weight.Rows];
                for (int n = 0; n < rows.Length; n++) rows[n] = s[s.Length == 1 ? 0 : n];
                fixed (float* p = rows) scale = Upload((byte*)p, 4L * rows.Length, weight.Name + ".scale");
            }
            if (weight.Bias is { } b)
            {
                fixed (float* p = b) bias = Upload((byte*)p, 4L * b.Length, weight.Name + ".bias");
            }
            return new CudaWeight(weight.Name, weight.DType, weight.Rows, weight.Cols, false, data, scale, bias) { Owner = this };
        }
        catch
        {
            QuiesceUploads();
            data?.Dispose();
            scale?.Dispose();
            bias?.Dispose();
            throw;
        }
    }

    public override BackendWeight LoadVector(string name, ReadOnlySpan<float> values)
    {
        if (values.IsEmpty) throw new ArgumentException($"{name}: empty vector");
        EnterUpload("LoadVector");
        CudaDeviceMemory data;
        fixed (float* p = values) data = Upload((byte*)p, 4L * values.Length, name);
        return new CudaWeight(name, DType.F32, 1, values.Length, true, data, null, null) { Owner = this };
    }

    public override BackendTensor Alloc(string name, int maxRows, int cols)
    {
        OpChecks.Alloc(name, maxRows, cols);
        EnterSetup("Alloc");
        return new CudaTensor(_context, name, maxRows, cols) { Owner = this };
    }

    /// <summary>Allocates the BF16 paged cache, zeroed. An F32 cache is refused with <c>cuda.unsupported_kv_dtype</c>:
    /// the kernels store BF16 only (the CLI picks bf16 for --backend cuda unless told otherwise).</summary>
    public override KvCache AllocKvCache(KvCacheSpec spec)
    {
        OpChecks.AllocKvCache(spec);
        if (spec.DType != KvDType.BF16)
            throw new FastServeException("cuda.unsupported_kv_dtype", "the cuda backend keeps the KV cache in BF16; use --kv-dtype bf16", "kv_dtype");
        EnterSetup("AllocKvCache");
        var c = new CudaKvCache(_context, spec) { Owner = this };
        try
        {
            Driver(CudaDriver.cuMemsetD8Async(c.KBase, 0, (nuint)c.BufferBytes, _stream), "cuMemsetD8Async");
            Driver(CudaDriver.cuMemsetD8Async(c.VBase, 0, (nuint)c.BufferBytes, _stream), "cuMemsetD8Async");
            Sync("cuStreamSynchronize");
        }
        catch
        {
            c.Dispose();
            throw;
        }
        return c;
    }

    // ---- ops ----------------------------------------------------------------------------------------------------

    public override void Embedding(BackendWeight table, ReadOnlySpan<int> tokens, BackendTensor dst)
    {
        EmbeddingOperands(table, tokens, dst, out CudaWeight t, out CudaTensor d);
        Enter();
        nint tok = StageInts(tokens, ref _tokenCache);
        _graphs.Sign(1, t.Data, d.Ptr, tokens.Length, t.Cols);
        if (tokens.Length == 0 || _graphs.SkipsWork) return;
        Kernel(FastServeCuda.fs_cuda_embedding(_stream, t.Data, t.FsDTypeValue, t.Scale, t.Rows, t.Cols, tok, tokens.Length, d.Ptr), "fs_cuda_embedding");
    }

    public override void RmsNorm(BackendTensor x, BackendWeight gamma, float eps, BackendTensor dst)
    {
        RmsNormOperands(x, gamma, dst, out CudaTensor xs, out CudaWeight g, out CudaTensor d);
        Enter();
        _graphs.Sign(2, xs.Ptr, g.Data, d.Ptr, xs.Rows, BitConverter.SingleToInt32Bits(eps));
        if (xs.Rows == 0 || _graphs.SkipsWork) return;
        Kernel(FastServeCuda.fs_cuda_rmsnorm(_stream, xs.Ptr, g.Data, eps, xs.Rows, xs.Cols, d.Ptr), "fs_cuda_rmsnorm");
    }

    public override void AddRmsNorm(BackendTensor residual, BackendTensor x, BackendWeight gamma, float eps, BackendTensor dst)
    {
        AddRmsNormOperands(residual, x, gamma, dst, out CudaTensor res, out CudaTensor xs, out CudaWeight g, out CudaTensor d);
        Enter();
        _graphs.Sign(3, res.Ptr, xs.Ptr, g.Data, d.Ptr, res.Rows, BitConverter.SingleToInt32Bits(eps));
        if (res.Rows == 0 || _graphs.SkipsWork) return;
        Kernel(FastServeCuda.fs_cuda_add_rmsnorm(_stream, res.Ptr, xs.Ptr, g.Data, eps, res.Rows, res.Cols, d.Ptr), "fs_cuda_add_rmsnorm");
    }

    public override void Add(BackendTensor acc, BackendTensor x)
    {
        AddOperands(acc, x, out CudaTensor a, out CudaTensor b);
        Enter();
        long n = (long)a.Rows * a.Cols;
        _graphs.Sign(4, a.Ptr, b.Ptr, n);
        if (n == 0 || _graphs.SkipsWork) return;
        Kernel(FastServeCuda.fs_cuda_add(_stream, a.Ptr, b.Ptr, (nuint)n), "fs_cuda_add");
    }

    public override void MatMul(BackendTensor x, BackendWeight w, BackendTensor dst)
    {
        MatMulOperands(x, w, dst, out CudaTensor xs, out CudaWeight ws, out CudaTensor d);
        Enter();
        _graphs.Sign(5, xs.Ptr, ws.Data, d.Ptr, xs.Rows);
        if (xs.Rows == 0 || _graphs.SkipsWork) return;
        Kernel(FastServeCuda.fs_cuda_matmul(_stream, xs.Ptr, xs.Rows, xs.Cols, ws.Data, ws.FsDTypeValue, ws.Scale, ws.Rows, ws.Bias, d.Ptr), "fs_cuda_matmul");
    }

    public override void Rope(BackendTensor x, int heads, ReadOnlySpan<int> positions, RopeTable rope)
    {
        var xs = RopeOperand<CudaTensor>(x, heads, positions, rope);
        Enter();
        nint inv = InvFreq(rope);
        nint pos = StageInts(positions, ref _ropeCache);
        _graphs.Sign(6, xs.Ptr, inv, pos, xs.Rows, heads);
        if (xs.Rows == 0 || _graphs.SkipsWork) return;
        Kernel(FastServeCuda.fs_cuda_rope(_stream, xs.Ptr, xs.Rows, heads, rope.HeadDim, pos, inv), "fs_cuda_rope");
    }

    public override void SiluGate(BackendTensor gate, BackendTensor up, BackendTensor dst)
    {
        SiluGateOperands(gate, up, dst, out CudaTensor g, out CudaTensor u, out CudaTensor d);
        Enter();
        long n = (long)g.Rows * g.Cols;
        _graphs.Sign(7, g.Ptr, u.Ptr, d.Ptr, n);
        if (n == 0 || _graphs.SkipsWork) return;
        Kernel(FastServeCuda.fs_cuda_silu_gate(_stream, g.Ptr, u.Ptr, (nuint)n, d.Ptr), "fs_cuda_silu_gate");
    }

    public override void KvStore(KvCache cache, int layer, BackendTensor k, BackendTensor v, BatchLayout batch)
    {
        KvStoreOperands(cache, layer, k, v, batch, out CudaKvCache c, out CudaTensor ks, out CudaTensor vs);
        Enter();
        var spec = c.Spec;
        int rows = batch.TotalRows;
        var slots = _staging.HostInts(rows);
        int bs = spec.BlockSize;
        for (int s = 0; s < batch.SequenceCount; s++)
        {
            var table = batch.BlockTable(s);
            for (int i = 0; i < batch.RowCount(s); i++)
            {
                int pos = batch.StartPos(s) + i;
                slots[batch.RowStart(s) + i] = table[pos / bs] * bs + pos % bs;
            }
        }
        nint slotPtr = StageInts(slots.AsSpan(0, rows), ref _slotCache);
        _graphs.Sign(8, c.K(layer), ks.Ptr, vs.Ptr, slotPtr, rows);
        if (rows == 0 || _graphs.SkipsWork) return;
        Kernel(FastServeCuda.fs_cuda_kv_store(_stream, c.K(layer), c.V(layer), spec.KvHeads, spec.HeadDim, ks.Ptr, vs.Ptr, rows, slotPtr), "fs_cuda_kv_store");
    }

    public override void Attention(BackendTensor q, KvCache cache, int layer, BatchLayout batch, BackendTensor dst)
    {
        AttentionOperands(q, cache, layer, batch, dst, out CudaTensor qs, out CudaKvCache c, out CudaTensor d);
        Enter();
        var spec = c.Spec;
        int rows = qs.Rows, seqs = batch.SequenceCount, bs = spec.BlockSize;
        int heads = qs.Cols / spec.HeadDim;

        // One staged array: seq_of_row [rows] | positions [rows] | block_tables [seqs, maxBlocks]. Only the blocks a
        // sequence reaches this step are copied (OpChecks validated exactly those); the rest of its row is 0.
        int maxBlocks = Math.Max(1, _graphs.MinAttentionBlocks);
        for (int s = 0; s < seqs; s++)
        {
            if (batch.RowCount(s) > 0) maxBlocks = Math.Max(maxBlocks, (batch.StartPos(s) + batch.RowCount(s) - 1) / bs + 1);
        }
        long total = 2L * rows + (long)seqs * maxBlocks;
        if (total > Array.MaxLength) throw new ArgumentException($"Attention: {seqs} sequences x {maxBlocks} blocks is too large");
        var a = _staging.HostInts((int)total);
        Array.Clear(a, 0, (int)total);
        for (int s = 0; s < seqs; s++)
        {
            int count = batch.RowCount(s);
            for (int i = 0; i < count; i++)
            {
                int row = batch.RowStart(s) + i;
                a[row] = s;
                a[rows + row] = batch.StartPos(s) + i;
            }
            if (count == 0) continue;
            int needed = (batch.StartPos(s) + count - 1) / bs + 1;
            batch.BlockTable(s)[..needed].CopyTo(a.AsSpan(2 * rows + s * maxBlocks));
        }
        nint basePtr = StageInts(a.AsSpan(0, (int)total), ref _attnCache);
        nint seqOfRow = basePtr, positions = basePtr + 4 * rows, tables = basePtr + 8 * rows;
        _graphs.Sign(9, qs.Ptr, c.K(layer), d.Ptr, basePtr, rows, heads, maxBlocks);
        if (rows == 0 || _graphs.SkipsWork) return;
        Kernel(FastServeCuda.fs_cuda_attention(_stream, qs.Ptr, rows, heads, spec.KvHeads, spec.HeadDim, c.K(layer), c.V(layer), bs,
            tables, maxBlocks, seqOfRow, positions, d.Ptr), "fs_cuda_attention");
    }

    public override void GatherRows(BackendTensor src, ReadOnlySpan<int> rows, BackendTensor dst)
    {
        GatherRowsOperands(src, rows, dst, out CudaTensor s, out CudaTensor d);
        Enter();
        bool inPlace = ReferenceEquals(s, d);
        if (inPlace)
        {
            // The kernel copies rows in parallel, so in place it could read a row another thread already overwrote:
            // gather into scratch, then copy back. Rows already in place (rows[i] == i) need nothing at all.
            bool identity = true;
            for (int i = 0; i < rows.Length && identity; i++) identity = rows[i] == i;
            if (identity)
            {
                _graphs.Sign(10, s.Ptr, rows.Length, 1);
                return;
            }
        }
        nint idx = StageInts(rows, ref _gatherCache);
        long bytes = (long)rows.Length * s.Cols * sizeof(float);
        nint target = d.Ptr;
        if (inPlace) target = GatherScratch(bytes);
        _graphs.Sign(10, s.Ptr, d.Ptr, idx, rows.Length);
        if (rows.Length == 0 || _graphs.SkipsWork) return;
        Kernel(FastServeCuda.fs_cuda_gather_rows(_stream, s.Ptr, s.Cols, idx, rows.Length, target), "fs_cuda_gather_rows");
        if (inPlace) Driver(CudaDriver.cuMemcpyDtoDAsync_v2(d.Ptr, target, (nuint)bytes, _stream), "cuMemcpyDtoDAsync_v2");
    }

    /// <summary>Downloads src's rows and waits for all issued work. In a recorded step this is where the capture
    /// ends or the replay launches; a refused step downloads nothing (<see cref="EndStep"/> says so).</summary>
    public override void CopyToHost(BackendTensor src, Span<float> dst)
    {
        var s = CopyToHostOperand<CudaTensor>(src, dst);
        Enter();
        int n = s.Rows * s.Cols;
        _graphs.Sign(11, s.Ptr, n);
        if (Readback(s.Ptr, 4L * n, 4L * s.MaxRows * s.Cols)) new ReadOnlySpan<float>(_readback.Ptr, n).CopyTo(dst);
    }

    /// <summary>True: <see cref="Sample"/> runs fs_cuda_sample on the stream and only the ids are downloaded.</summary>
    public override bool SamplesOnDevice => true;

    /// <summary>Draws one token per logits row on the device (fs_cuda_sample, <see cref="CounterSampler"/>'s rules)
    /// and downloads only the ids; waits like <see cref="CopyToHost"/>, and like it ends a capture or launches a
    /// replay, so a decode step that samples on the device can be a CUDA graph.</summary>
    public override void Sample(BackendTensor logits, ReadOnlySpan<SampleRow> rows, Span<int> tokens)
    {
        var l = SampleOperand<CudaTensor>(logits, rows, tokens);
        Enter();
        int n = rows.Length, vocab = l.Cols;
        // One staged array: temperature f32[n] | top_p f32[n] | top_k i32[n] | (pad to 8 bytes) seeds u64[n] |
        // counters u64[n]. Staged blocks start 256-byte aligned, so an even word offset is 8-byte aligned.
        int seeds = 3 * n + (n & 1), counters = seeds + 2 * n, words = counters + 2 * n;
        var a = _staging.HostInts(Math.Max(words, 1));
        for (int i = 0; i < n; i++)
        {
            var r = rows[i];
            a[i] = BitConverter.SingleToInt32Bits(r.Temperature);
            a[n + i] = BitConverter.SingleToInt32Bits(r.TopP);
            a[2 * n + i] = r.TopK;
            a[seeds + 2 * i] = (int)r.Seed;
            a[seeds + 2 * i + 1] = (int)(r.Seed >> 32);
            a[counters + 2 * i] = (int)r.Counter;
            a[counters + 2 * i + 1] = (int)(r.Counter >> 32);
        }
        if (n % 2 == 1) a[3 * n] = 0;
        nint p = StageInts(a.AsSpan(0, words), ref _sampleCache);
        long work = (long)FastServeCuda.fs_cuda_sample_workspace_bytes(n, vocab);
        long idsAt = (work + StagingAlignment - 1) & ~(long)(StagingAlignment - 1);
        // Sized for the tensor's capacity at once: each reallocation invalidates the graphs recorded before it.
        long fullWork = (long)FastServeCuda.fs_cuda_sample_workspace_bytes(l.MaxRows, vocab);
        nint scratch = SampleScratch(idsAt + 4L * n, ((fullWork + StagingAlignment - 1) & ~(long)(StagingAlignment - 1)) + 4L * l.MaxRows);
        nint ids = scratch + (nint)idsAt;
        _graphs.Sign(13, l.Ptr, n, vocab, p, scratch);
        if (n > 0 && !_graphs.SkipsWork)
        {
            Kernel(FastServeCuda.fs_cuda_sample(_stream, l.Ptr, n, vocab, p, p + 4 * n, p + 8 * n, p + 4 * seeds, p + 4 * counters,
                scratch, (nuint)work, ids), "fs_cuda_sample");
        }
        if (Readback(ids, 4L * n, 4L * l.MaxRows)) new ReadOnlySpan<int>(_readback.Ptr, n).CopyTo(tokens);
    }

    // Downloads `bytes` from `src` into the readback buffer and waits for all issued work; false when the step was
    // refused and nothing was downloaded. While capturing this is where the captured step ends (its graph is launched
    // once to produce this result); while replaying, where the graph is launched.
    private bool Readback(nint src, long bytes, long growTo)
    {
        switch (_graphs.Mode)
        {
            case RecorderMode.Capturing:
                if (bytes > _readback.Bytes)
                {
                    _graphs.Refuse();
                    return false;
                }
                if (bytes > 0) Driver(CudaDriver.cuMemcpyDtoHAsync_v2(_readback.Ptr, src, (nuint)bytes, _stream), "cuMemcpyDtoHAsync_v2");
                _graphs.FinishCapture(bytes);
                break;
            case RecorderMode.Staging:
                if (!_graphs.TryLaunchReplay(bytes)) return false;
                break;
            case RecorderMode.Discarding:
                return false;
            default:
                if (bytes > _readback.Bytes) GrowReadback(Math.Max(bytes, growTo));
                if (bytes > 0) Driver(CudaDriver.cuMemcpyDtoHAsync_v2(_readback.Ptr, src, (nuint)bytes, _stream), "cuMemcpyDtoHAsync_v2");
                break;
        }
        Synchronize();
        return true;
    }

    public override void CopyFromHost(ReadOnlySpan<float> data, int rows, BackendTensor dst)
    {
        var d = CopyFromHostOperand<CudaTensor>(data, rows, dst);
        Enter();
        long off;
        fixed (float* p = data) off = Stage((byte*)p, 4L * data.Length, d.Ptr);
        _graphs.Sign(12, d.Ptr, rows, off);
    }

    /// <summary>Copies 256 MiB device to device 20 times after a warm-up and counts read plus written bytes.</summary>
    public double MeasureCopyBandwidth()
    {
        EnterSetup("MeasureCopyBandwidth");
        const long bytes = 256L << 20;
        const int reps = 20;
        using var a = CudaDeviceMemory.Alloc(_context, bytes, "bandwidth probe");
        using var b = CudaDeviceMemory.Alloc(_context, bytes, "bandwidth probe");
        Driver(CudaDriver.cuMemsetD8Async(a.Ptr, 1, (nuint)bytes, _stream), "cuMemsetD8Async");
        Driver(CudaDriver.cuMemcpyDtoDAsync_v2(b.Ptr, a.Ptr, (nuint)bytes, _stream), "cuMemcpyDtoDAsync_v2");
        Sync("cuStreamSynchronize");
        long t0 = System.Diagnostics.Stopwatch.GetTimestamp();
        for (int i = 0; i < reps; i++)
        {
            Driver(i % 2 == 0 ? CudaDriver.cuMemcpyDtoDAsync_v2(b.Ptr, a.Ptr, (nuint)bytes, _stream)
                              : CudaDriver.cuMemcpyDtoDAsync_v2(a.Ptr, b.Ptr, (nuint)bytes, _stream), "cuMemcpyDtoDAsync_v2");
        }
        Sync("cuStreamSynchronize");
        double seconds = System.Diagnostics.Stopwatch.GetElapsedTime(t0).TotalSeconds;
        return 2.0 * bytes * reps / seconds;
    }

    // ---- plumbing -----------------------------------------------------------------------------------------------

    /// <summary>Before every op: refuse after a fault, make the context current if the thread changed, and close an
    /// upload session (its last copies are waited for once, here, rather than after each weight).</summary>
    private void Enter()
    {
        EnterThread();
        if (_uploader.Active) FinishUploads();
    }

    private void EnterThread()
    {
        if (_fault is not null) ThrowFaulted();
        ObjectDisposedException.ThrowIf(_disposed, this);
        int t = Environment.CurrentManagedThreadId;
        if (t != _boundThread) Bind(t);
    }

    private void EnterSetup(string what)
    {
        Enter();
        if (_graphs.Frozen) throw new InvalidOperationException($"{what}: not allowed inside a recorded or replayed step");
    }

    private void EnterUpload(string what)
    {
        EnterThread();
        if (_graphs.Frozen) throw new InvalidOperationException($"{what}: not allowed inside a recorded or replayed step");
    }

    private void FinishUploads()
    {
        var s = _uploader.Finish();
        if (s.Bytes >= CudaLog.UploadBytesWorthReporting)
            CudaLog.Write(CudaLog.Upload(s, _uploader.Chunks, _uploader.ChunkBytes, _uploader.StagingSeconds, _uploader.CopyThreads));
    }

    /// <summary>Before device memory that uploads may still write is freed: waits for them (errors ignored: the fault
    /// that caused them is what gets reported, and the memory has to be released either way).</summary>
    internal void QuiesceUploads()
    {
        if (!_uploader.Active || _disposed) return;
        if (_fault is not null)
        {
            _uploader.Abandon();
            return;
        }
        try { Enter(); }
        catch (CudaException) { _uploader.Abandon(); }
    }

    /// <summary>A step's graph was captured (<see cref="CudaGraphRecorder"/>): one line in the log.</summary>
    internal void OnGraphCaptured(int key, double seconds, GraphCaptureStats s) => CudaLog.Write(CudaLog.Capture(key, seconds, s));

    private void Bind(int thread)
    {
        Driver(CudaDriver.cuCtxSetCurrent(_context.Context), "cuCtxSetCurrent");
        _boundThread = thread;
    }

    [DoesNotReturn]
    private void ThrowFaulted()
    {
        var f = _fault!;
        throw new CudaException(f.Code, f.Call, f.Result, f.ErrorName, "an earlier failure left the cuda backend unusable");
    }

    /// <summary>A failing driver call faults the backend: its stream's work is lost.</summary>
    internal void Driver(int result, string call)
    {
        if (result != CudaDriver.Success) Fault(CudaException.FromDriver(call, result));
    }

    /// <summary>A kernel-library status: arguments it rejects before launching leave the stream intact.</summary>
    private void Kernel(int status, string call)
    {
        Pending = true;
        if (status == FsStatus.Ok) return;
        if (status == FsStatus.InvalidArgument) CudaException.ThrowKernels(call, status);
        Fault(CudaException.FromKernels(call, status));
    }

    [DoesNotReturn]
    private void Fault(CudaException e)
    {
        _fault ??= e;
        _uploader.Abandon();
        _graphs.OnFault();
        throw e;
    }

    /// <summary>Waits for the stream, then recycles the staging buffer.</summary>
    internal void Synchronize()
    {
        Driver(CudaDriver.cuStreamSynchronize(_stream), "cuStreamSynchronize");
        Pending = false;
        _staging.Reset();
    }

    /// <summary>Recycles the staging buffer: only when the stream reads nothing staged (after a synchronization, or
    /// when nothing was launched since).</summary>
    internal void ResetStaging() => _staging.Reset();

    private void Sync(string call)
    {
        Driver(CudaDriver.cuStreamSynchronize(_stream), call);
        Pending = false;
    }

    /// <summary>Copies host bytes into the staging buffer and (unless a replay stages them for its graph) enqueues their
    /// copy to <paramref name="target"/>, or to the same offset of the device mirror when target is 0. Returns the
    /// offset; -1 when the step was refused (the buffer would have to grow while recorded or replayed).</summary>
    private long Stage(byte* src, long bytes, nint target)
    {
        if (_graphs.Mode == RecorderMode.Discarding) return -1;
        long off = _staging.TryReserve(bytes);
        if (off < 0)
        {
            if (_graphs.Frozen)
            {
                _graphs.Refuse();
                return -1;
            }
            Synchronize();
            if (_staging.Grow(bytes)) BufferGeneration++;
            off = _staging.TryReserve(bytes);
        }
        if (bytes > 0) Buffer.MemoryCopy(src, _staging.Host(off), _staging.Capacity - off, bytes);
        if (bytes > 0 && !_graphs.SkipsWork)
        {
            Driver(CudaDriver.cuMemcpyHtoDAsync_v2(target != 0 ? target : _staging.Device(off), _staging.Host(off), (nuint)bytes, _stream), "cuMemcpyHtoDAsync_v2");
            Pending = true;
        }
        return off;
    }

    /// <summary>Stages ints for a kernel and returns their device address; when the same values were staged for the
    /// same purpose since the last reset, returns that copy instead. 0 once the step is refused.</summary>
    private nint StageInts(ReadOnlySpan<int> data, ref StageCache cache)
    {
        if (_graphs.Mode == RecorderMode.Discarding) return 0;
        if (_staging.TryReuse(data, ref cache, out long reused))
        {
            _graphs.Sign(-1, reused);
            return _staging.Device(reused);
        }
        long off;
        fixed (int* p = data) off = Stage((byte*)p, 4L * data.Length, 0);
        if (off < 0) return 0;
        _staging.Remember(data, ref cache, off);
        _graphs.Sign(-2, off, data.Length);
        return _staging.Device(off);
    }

    private void GrowReadback(long bytes)
    {
        Sync("cuStreamSynchronize");
        var grown = CudaPinnedMemory.Alloc(_context, Math.Max(bytes, _readback.Bytes * 2), "readback");
        _readback.Dispose();
        _readback = grown;
        BufferGeneration++;
    }

    // Scratch that may have to grow: inside a recorded or replayed step it cannot, so the step is refused (0 returned;
    // the refused step launches nothing).
    private nint SampleScratch(long bytes, long growTo)
    {
        if (_sampleScratch is not null && _sampleScratch.Bytes >= bytes) return _sampleScratch.Ptr;
        if (_graphs.Frozen)
        {
            _graphs.Refuse();
            return 0;
        }
        Sync("cuStreamSynchronize");
        long size = Math.Max(Math.Max(bytes, growTo), 2 * (_sampleScratch?.Bytes ?? 0));
        _sampleScratch?.Dispose();
        _sampleScratch = null;
        BufferGeneration++;
        _sampleScratch = CudaDeviceMemory.Alloc(_context, size, "sampling workspace");
        return _sampleScratch.Ptr;
    }

    private nint GatherScratch(long bytes)
    {
        if (_gatherScratch is not null && _gatherScratch.Bytes >= bytes) return _gatherScratch.Ptr;
        if (_graphs.Frozen)
        {
            _graphs.Refuse();
            return 0;
        }
        Sync("cuStreamSynchronize");
        long size = Math.Max(bytes, 2 * (_gatherScratch?.Bytes ?? 0));
        _gatherScratch?.Dispose();
        _gatherScratch = null;
        BufferGeneration++;
        _gatherScratch = CudaDeviceMemory.Alloc(_context, size, "gather scratch");
        return _gatherScratch.Ptr;
    }

    /// <summary>The device copy of a RoPE table's inverse frequencies, uploaded on first use (outside recorded steps:
    /// a first use inside one refuses the step and returns 0).</summary>
    private nint InvFreq(RopeTable rope)
    {
        if (_invFreq.TryGetValue(rope, out var m)) return m.Ptr;
        if (_graphs.Frozen)
        {
            _graphs.Refuse();
            return 0;
        }
        var mem = CudaDeviceMemory.Alloc(_context, 4L * rope.InvFreq.Length, "rope.inv_freq");
        _invFreq[rope] = mem;
        fixed (float* p = rope.InvFreq) Stage((byte*)p, 4L * rope.InvFreq.Length, mem.Ptr);
        return mem.Ptr;
    }

    /// <summary>Device memory for a weight and the upload of <paramref name="bytes"/> from <paramref name="src"/> into
    /// it (<see cref="CudaWeightUploader"/>): the source has been read when this returns, the copy completes in stream
    /// order.</summary>
    private CudaDeviceMemory Upload(byte* src, long bytes, string what)
    {
        var mem = CudaDeviceMemory.Alloc(_context, bytes, what);
        try
        {
            _uploader.Upload(src, bytes, mem.Ptr);
        }
        catch
        {
            QuiesceUploads();
            mem.Dispose();
            throw;
        }
        return mem;
    }

    public override void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        // Errors are ignored here: a faulted context still has to release its memory.
        CudaDriver.cuCtxSetCurrent(_context.Context);
        _graphs.Dispose();
        CudaDriver.cuStreamSynchronize(_stream);
        _uploader.Abandon();
        _uploader.Dispose();
        foreach (var m in _invFreq.Values) m.Dispose();
        _invFreq.Clear();
        _gatherScratch?.Dispose();
        _sampleScratch?.Dispose();
        _staging.Dispose();
        _readback.Dispose();
        _streamHandle.Dispose();
        _context.Dispose();
    }
}
