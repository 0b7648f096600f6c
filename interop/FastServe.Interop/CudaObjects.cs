using FastServe.Runtime;
using FastServe.Runtime.Backends;

namespace FastServe.Interop;

/// <summary>An F32 activation matrix in device memory, rows packed (row stride = Cols).</summary>
internal sealed class CudaTensor : BackendTensor
{
    private readonly CudaDeviceMemory _mem;

    public CudaTensor(CudaContextHandle context, string name, int maxRows, int cols) : base(name, maxRows, cols) =>
        _mem = CudaDeviceMemory.Alloc(context, (long)maxRows * cols * sizeof(float), name);

    public nint Ptr
    {
        get
        {
            ObjectDisposedException.ThrowIf(_mem.IsClosed, this);
            return _mem.Ptr;
        }
    }


    public override void Dispose()
    {
        _mem.Dispose();
        base.Dispose();
    }
}

/// <summary>
/// A weight in device memory, uploaded once: the elements exactly as stored (F32, F16, BF16 or FP8 E4M3 bytes),
/// for FP8 one F32 scale per row (a per-tensor scale is expanded on upload), and an F32 bias when there is one.
/// Norm gains (<see cref="IBackend.LoadVector"/>) are F32 vectors.
/// </summary>
internal sealed class CudaWeight : BackendWeight
{
    private readonly CudaDeviceMemory _data;
    private readonly CudaDeviceMemory? _scale;
    private readonly CudaDeviceMemory? _bias;

    public CudaWeight(string name, DType dtype, int rows, int cols, bool isVector, CudaDeviceMemory data, CudaDeviceMemory? scale, CudaDeviceMemory? bias)
        : base(name, dtype, rows, cols, isVector)
    {
        _data = data;
        _scale = scale;
        _bias = bias;
    }


    public nint Data
    {
        get
        {
            ObjectDisposedException.ThrowIf(_data.IsClosed, this);
            return _data.Ptr;
        }
    }

    /// <summary>Per-row F32 scale (FP8 only), or 0.</summary>
    public nint Scale => _scale?.Ptr ?? 0;

    /// <summary>Per-row F32 bias, or 0.</summary>
    public nint Bias => _bias?.Ptr ?? 0;

    /// <summary>fs_dtype of the stored elements.</summary>
    public int FsDTypeValue => DType switch
    {
        DType.F32 => FsDType.F32,
        DType.F16 => FsDType.F16,
        DType.BF16 => FsDType.BF16,
        DType.F8E4M3 => FsDType.F8E4M3,
        _ => throw new InvalidOperationException($"{Name}: no fs_dtype for {DType}"),
    };

    public override void Dispose()
    {
        (Owner as CudaBackend)?.QuiesceUploads(); // copies into this weight may still be in flight
        _data.Dispose();
        _scale?.Dispose();
        _bias?.Dispose();
        base.Dispose();
    }
}

/// <summary>
/// The paged KV cache in device memory, BF16, in the header's layout: for each layer, K and V are
/// [NumBlocks, BlockSize, KvHeads, HeadDim]; layer l starts at l · <see cref="LayerBytes"/> in each buffer.
/// </summary>
internal sealed class CudaKvCache : KvCache
{
    private readonly CudaDeviceMemory _k;
    private readonly CudaDeviceMemory _v;

    public CudaKvCache(CudaContextHandle context, KvCacheSpec spec) : base(spec)
    {
        LayerBytes = (long)spec.NumBlocks * spec.BlockSize * spec.KvHeads * spec.HeadDim * sizeof(ushort);
        _k = CudaDeviceMemory.Alloc(context, LayerBytes * spec.Layers, "kv_cache.k");
        try
        {
            _v = CudaDeviceMemory.Alloc(context, LayerBytes * spec.Layers, "kv_cache.v");
        }
        catch
        {
            _k.Dispose();
            throw;
        }
    }

    public long LayerBytes { get; }

    /// <summary>Whole K and V buffers (for zeroing).</summary>
    public nint KBase => _k.Ptr;
    public nint VBase => _v.Ptr;
    public long BufferBytes => _k.Bytes;

    public nint K(int layer) => _k.Ptr + (nint)(layer * LayerBytes);
    public nint V(int layer) => _v.Ptr + (nint)(layer * LayerBytes);

    public override void Dispose()
    {
        _k.Dispose();
        _v.Dispose();
        base.Dispose();
    }
}
