using System.Runtime.InteropServices;

namespace FastServe.Runtime.Backends.Cpu;

/// <summary>64-byte-aligned native allocations (one cache line, one AVX-512 vector).</summary>
internal static unsafe class AlignedMemory
{
    public const int Alignment = 64;

    /// <summary>Allocates at least <paramref name="bytes"/> (plus <paramref name="pad"/> bytes that vector loads
    /// may read past the end), zeroed. Throws <c>cpu.out_of_memory</c> naming <paramref name="what"/> on failure.
    /// Zeroing is calloc's: a large block comes straight from fresh anonymous pages, which the kernel zeroes when
    /// each is first touched, so a 1 GiB KV cache costs nothing until it is used (clearing it up front took about
    /// half a second of a replica's start). The block's own pointer sits in the word before the aligned one.</summary>
    public static void* Alloc(long bytes, string what, int pad = 0)
    {
        nuint size = (nuint)Math.Max(1, bytes + pad);
        byte* raw;
        try
        {
            raw = (byte*)NativeMemory.AllocZeroed(size + Alignment + (nuint)sizeof(nint));
        }
        catch (OutOfMemoryException e)
        {
            throw new FastServeException("cpu.out_of_memory", $"cannot allocate {bytes} bytes", what, e);
        }
        byte* p = (byte*)(((nuint)raw + (nuint)sizeof(nint) + Alignment - 1) & ~(nuint)(Alignment - 1));
        ((nint*)p)[-1] = (nint)raw;
        return p;
    }

    public static void Free(ref void* p)
    {
        if (p is not null)
        {
            NativeMemory.Free((void*)((nint*)p)[-1]);
            p = null;
        }
    }
}

/// <summary>An F32 activation matrix in aligned native memory, rows packed (row stride = Cols).</summary>
internal sealed unsafe class CpuTensor : BackendTensor
{
    private void* _data;

    public CpuTensor(string name, int maxRows, int cols) : base(name, maxRows, cols)
    {
        // 64 spare bytes let a vector loop read one full vector past the last element.
        _data = AlignedMemory.Alloc((long)maxRows * cols * sizeof(float), name, AlignedMemory.Alignment);
    }

    public float* Data
    {
        get
        {
            ObjectDisposedException.ThrowIf(_data is null, this);
            return (float*)_data;
        }
    }

    public float* Row(int r) => Data + (long)r * Cols;

    public override void Dispose()
    {
        AlignedMemory.Free(ref _data);
        base.Dispose();
    }

    ~CpuTensor() => AlignedMemory.Free(ref _data);
}

/// <summary>
/// A weight as the CPU backend holds it: a pointer into the caller's <see cref="MatrixWeight"/> memory (never
/// copied), plus native copies of the per-row dequantization scale (FP8 per-tensor scales are expanded to one per
/// row) and bias, or an owned F32 vector for norm gains.
/// </summary>
internal sealed unsafe class CpuWeight : BackendWeight
{
    private void* _scale;
    private void* _bias;
    private void* _vector;

    public CpuWeight(MatrixWeight m) : base(m.Name, m.DType, m.Rows, m.Cols)
    {
        Data = m.Data;
        if (m.Scales is { } s)
        {
            _scale = AlignedMemory.Alloc(4L * m.Rows, m.Name);
            for (int n = 0; n < m.Rows; n++) ((float*)_scale)[n] = s[s.Length == 1 ? 0 : n];
        }
        if (m.Bias is { } b)
        {
            _bias = AlignedMemory.Alloc(4L * m.Rows, m.Name);
            b.CopyTo(new Span<float>(_bias, m.Rows));
        }
    }

    public CpuWeight(string name, ReadOnlySpan<float> values) : base(name, DType.F32, 1, values.Length, isVector: true)
    {
        _vector = AlignedMemory.Alloc(4L * values.Length, name, AlignedMemory.Alignment);
        values.CopyTo(new Span<float>(_vector, values.Length));
        Data = (byte*)_vector;
    }

    /// <summary>Row-major [Rows, Cols] elements of <see cref="BackendWeight.DType"/>.</summary>
    public byte* Data { get; private set; }

    /// <summary>Per-row scale (length Rows) or null.</summary>
    public float* Scale => (float*)_scale;

    /// <summary>Per-row bias (length Rows) or null.</summary>
    public float* Bias => (float*)_bias;


    public override void Dispose()
    {
        AlignedMemory.Free(ref _scale);
        AlignedMemory.Free(ref _bias);
        AlignedMemory.Free(ref _vector);
        Data = null;
        base.Dispose();
    }

    ~CpuWeight()
    {
        AlignedMemory.Free(ref _scale);
        AlignedMemory.Free(ref _bias);
        AlignedMemory.Free(ref _vector);
    }
}

/// <summary>
/// Paged KV cache. For each (layer, block, kvHead) the K tile is stored transposed, [headDim][blockSize], so a
/// decode step computes the scores of a whole block of positions with plain vector FMAs across slots (no
/// horizontal sums); the V tile is [blockSize][headDim], so the weighted sum of values is FMAs along headDim.
/// Both tiles of one (block, kvHead) are contiguous, so decode reads stream.
/// Element offset of a tile: ((layer · NumBlocks + block) · KvHeads + kvHead) · BlockSize · HeadDim.
/// </summary>
internal sealed unsafe class CpuKvCache : KvCache
{
    private void* _k;
    private void* _v;

    public CpuKvCache(KvCacheSpec spec) : base(spec)
    {
        ElementSize = spec.DType == KvDType.F32 ? 4 : 2;
        TileElements = (long)spec.BlockSize * spec.HeadDim;
        long bytes = (long)spec.Layers * spec.NumBlocks * spec.KvHeads * TileElements * ElementSize;
        // Vector loads of a partial block may run one vector past a tile's last row.
        _k = AlignedMemory.Alloc(bytes, "kv_cache.k", 128);
        try
        {
            _v = AlignedMemory.Alloc(bytes, "kv_cache.v", 128);
        }
        catch
        {
            AlignedMemory.Free(ref _k);
            throw;
        }
    }

    public int ElementSize { get; }
    public long TileElements { get; }

    public byte* KTile(int layer, int block, int kvHead) =>
        (byte*)_k + ((((long)layer * Spec.NumBlocks + block) * Spec.KvHeads + kvHead) * TileElements * ElementSize);

    public byte* VTile(int layer, int block, int kvHead) =>
        (byte*)_v + ((((long)layer * Spec.NumBlocks + block) * Spec.KvHeads + kvHead) * TileElements * ElementSize);

    public override void Dispose()
    {
        AlignedMemory.Free(ref _k);
        AlignedMemory.Free(ref _v);
        base.Dispose();
    }

    ~CpuKvCache()
    {
        AlignedMemory.Free(ref _k);
        AlignedMemory.Free(ref _v);
    }
}
