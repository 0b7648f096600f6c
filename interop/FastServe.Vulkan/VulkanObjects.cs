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

/// <summary>The paged cache: per layer, K and V each in up to <see cref="VulkanBackend.MaxKvSegments"/> buffers
/// ("segments") of <see cref="BlocksPerSegment"/> blocks, [block][slot][kvHead][dim] of F32 or BF16 (two per word),
/// zeroed at allocation. Segments keep every binding within the device's storage-buffer range (128 MiB on lavapipe);
/// a layer with fewer segments binds the backend's dummy buffer for the rest.</summary>
internal sealed class VulkanKvCache : KvCache
{
    private readonly VulkanBackend _backend;

    public VulkanKvCache(VulkanBackend backend, KvCacheSpec spec, int blocksPerSegment, VulkanBuffer[][] k, VulkanBuffer[][] v) : base(spec)
    {
        _backend = backend;
        BlocksPerSegment = blocksPerSegment;
        K = k;
        V = v;
    }

    public int BlocksPerSegment { get; }
    /// <summary>[layer][segment].</summary>
    public VulkanBuffer[][] K { get; }
    public VulkanBuffer[][] V { get; }

    /// <summary>Segment <paramref name="s"/> of a layer's K or V, or the dummy buffer past its last.</summary>
    public VulkanBuffer Segment(VulkanBuffer[] layer, int s) => s < layer.Length ? layer[s] : _backend.Dummy;

    public override void Dispose()
    {
        if (!Disposed)
        {
            foreach (var layer in K) foreach (var b in layer) _backend.Release(b);
            foreach (var layer in V) foreach (var b in layer) _backend.Release(b);
        }
        base.Dispose();
    }
}
