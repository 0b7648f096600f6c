using FastServe.Runtime;
using FastServe.Runtime.Backends;

namespace FastServe.Vulkan;

/// <summary>An F32 activation in one device buffer of MaxRows × Cols floats.</summary>
internal sealed class VulkanTensor : BackendTensor
{
    private readonly VulkanBackend _backend;

    public VulkanTensor(VulkanBackend backend, VulkanBuffer buffer, string name, int maxRows, int cols) : base(name, maxRows, cols)
    {
        _backend = backend;
        Buffer = buffer;
    }

    public VulkanBuffer Buffer { get; }

    public override void Dispose()
    {
        _backend.Release(Buffer);
        base.Dispose();
    }
}

/// <summary>A weight as stored on the device: <see cref="Data"/> holds the checkpoint's bytes unchanged (F32, F16,
/// BF16 or FP8 E4M3, read by the shaders as uint words; a vector is F32). <see cref="Scale"/> holds one F32 scale per
/// row for FP8 (a per-tensor scale repeated), <see cref="Bias"/> the F32 bias; both are the backend's shared dummy
/// buffer when absent, since every binding of a pipeline must name a buffer.</summary>
internal sealed class VulkanWeight : BackendWeight
{
    private readonly VulkanBackend _backend;

    public VulkanWeight(VulkanBackend backend, string name, DType dtype, int rows, int cols, bool isVector, VulkanBuffer data, VulkanBuffer? scale, VulkanBuffer? bias)
        : base(name, dtype, rows, cols, isVector)
    {
        _backend = backend;
        Data = data;
        OwnScale = scale;
        OwnBias = bias;
    }

    public VulkanBuffer Data { get; }
    public VulkanBuffer? OwnScale { get; }
    public VulkanBuffer? OwnBias { get; }
    public VulkanBuffer Scale => OwnScale ?? _backend.Dummy;
    public VulkanBuffer Bias => OwnBias ?? _backend.Dummy;

    /// <summary>The shaders' DTYPE specialization: 0 F32, 1 F16, 2 BF16, 3 FP8 E4M3.</summary>
    public int ShaderDType => DType switch { DType.F16 => 1, DType.BF16 => 2, DType.F8E4M3 => 3, _ => 0 };

    public override void Dispose()
    {
        _backend.Release(Data);
        if (OwnScale is not null) _backend.Release(OwnScale);
        if (OwnBias is not null) _backend.Release(OwnBias);
        base.Dispose();
    }
}

/// <summary>The paged cache: one K and one V buffer per layer, each [block][slot][kvHead][dim] of F32 or BF16 (two per
/// word), zeroed at allocation. Per-layer buffers keep each binding within the device's storage-buffer range.</summary>
internal sealed class VulkanKvCache : KvCache
{
    private readonly VulkanBackend _backend;

    public VulkanKvCache(VulkanBackend backend, KvCacheSpec spec, VulkanBuffer[] k, VulkanBuffer[] v) : base(spec)
    {
        _backend = backend;
        K = k;
        V = v;
    }

    public VulkanBuffer[] K { get; }
    public VulkanBuffer[] V { get; }

    public override void Dispose()
    {
        if (!Disposed)
        {
            foreach (var b in K) _backend.Release(b);
            foreach (var b in V) _backend.Release(b);
        }
        base.Dispose();
    }
}
