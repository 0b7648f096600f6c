using Silk.NET.Vulkan;

namespace FastServe.Vulkan;

/// <summary>
/// Descriptor sets cached per (algorithm, buffers): an op on the same tensors as in the previous decode step binds the
/// set made then, so a step allocates and writes no descriptors once the first has run. Sets come from pools of
/// <see cref="SetsPerPool"/>; a full pool is followed by a new one. Keys use <see cref="VulkanBuffer.Id"/>, never reused,
/// so a set naming a freed buffer is simply never asked for again; sets live until the cache is disposed.
/// </summary>
internal sealed unsafe class VulkanDescriptors : IDisposable
{
    public const int MaxBindings = 12;
    private const uint SetsPerPool = 512;

    private readonly VulkanManager _m;
    private readonly Dictionary<Key, DescriptorSet> _sets = new();
    private readonly List<DescriptorPool> _pools = new();
    private uint _leftInPool;

    public VulkanDescriptors(VulkanManager m) => _m = m;

    /// <summary>Sets made so far (a step that makes none reuses everything).</summary>
    public int Count => _sets.Count;

    private readonly record struct Key(int Algorithm, Ids Buffers);

    [System.Runtime.CompilerServices.InlineArray(MaxBindings)]
    private struct Ids : IEquatable<Ids>
    {
        private long _first;

        public readonly bool Equals(Ids other) =>
            ((ReadOnlySpan<long>)this).SequenceEqual((ReadOnlySpan<long>)other);

        public override readonly bool Equals(object? obj) => obj is Ids o && Equals(o);

        public override readonly int GetHashCode()
        {
            var h = new HashCode();
            foreach (long id in (ReadOnlySpan<long>)this) h.Add(id);
            return h.ToHashCode();
        }
    }

    /// <summary>The set binding <paramref name="buffers"/> (whole) to bindings 0.. of <paramref name="alg"/>.</summary>
    public DescriptorSet Get(VulkanAlgorithm alg, ReadOnlySpan<VulkanBuffer> buffers)
    {
        if (buffers.Length != alg.Bindings || buffers.Length > MaxBindings)
            throw new ArgumentException($"{alg.Name}: {buffers.Length} buffers for {alg.Bindings} bindings");
        var ids = new Ids();
        for (int i = 0; i < buffers.Length; i++) ids[i] = buffers[i].Id;
        var key = new Key(alg.Id, ids);
        if (_sets.TryGetValue(key, out var set)) return set;
        set = Allocate(alg);
        var infos = stackalloc DescriptorBufferInfo[buffers.Length];
        var writes = stackalloc WriteDescriptorSet[buffers.Length];
        for (int i = 0; i < buffers.Length; i++)
        {
            infos[i] = new DescriptorBufferInfo { Buffer = buffers[i].Handle, Offset = 0, Range = Vk.WholeSize };
            writes[i] = new WriteDescriptorSet
            {
                SType = StructureType.WriteDescriptorSet, DstSet = set, DstBinding = (uint)i, DescriptorCount = 1,
                DescriptorType = DescriptorType.StorageBuffer, PBufferInfo = &infos[i],
            };
        }
        _m.Vk.UpdateDescriptorSets(_m.Device, (uint)buffers.Length, writes, 0, null);
        _sets.Add(key, set);
        return set;
    }

    private DescriptorSet Allocate(VulkanAlgorithm alg)
    {
        var vk = _m.Vk;
        if (_leftInPool == 0)
        {
            var size = new DescriptorPoolSize { Type = DescriptorType.StorageBuffer, DescriptorCount = SetsPerPool * MaxBindings };
            var dpci = new DescriptorPoolCreateInfo { SType = StructureType.DescriptorPoolCreateInfo, MaxSets = SetsPerPool, PoolSizeCount = 1, PPoolSizes = &size };
            DescriptorPool pool;
            VulkanException.Check(vk.CreateDescriptorPool(_m.Device, &dpci, null, &pool), "vkCreateDescriptorPool");
            _pools.Add(pool);
            _leftInPool = SetsPerPool;
        }
        var layout = alg.SetLayout;
        var ai = new DescriptorSetAllocateInfo { SType = StructureType.DescriptorSetAllocateInfo, DescriptorPool = _pools[^1], DescriptorSetCount = 1, PSetLayouts = &layout };
        DescriptorSet set;
        VulkanException.Check(vk.AllocateDescriptorSets(_m.Device, &ai, &set), "vkAllocateDescriptorSets");
        _leftInPool--;
        return set;
    }

    public void Dispose()
    {
        if (_m.Disposed) return;
        foreach (var p in _pools) _m.Vk.DestroyDescriptorPool(_m.Device, p, null);
        _pools.Clear();
        _sets.Clear();
    }
}
