using Silk.NET.Vulkan;
using VkBuffer = Silk.NET.Vulkan.Buffer;

namespace FastServe.Vulkan;

/// <summary>Where a <see cref="VulkanBuffer"/> lives.</summary>
public enum VulkanMemory
{
    /// <summary>Device-local (GPU memory); mapped as well when the device's local memory is host-visible (lavapipe,
    /// integrated GPUs), so uploads are a memcpy.</summary>
    Device,

    /// <summary>Host-visible and coherent, persistently mapped: staging, readback and the per-step arena.</summary>
    Host,
}

/// <summary>
/// Kompute's tensor memory: one VkBuffer (storage, transfer source and destination) bound to its own allocation.
/// <see cref="Id"/> is unique for the process's lifetime (Vulkan handles are reused), so descriptor sets are cached
/// by it. Registered with its <see cref="VulkanManager"/>, which frees what is left at its disposal.
/// </summary>
public sealed unsafe class VulkanBuffer : IDisposable
{
    private static long _nextId;
    private readonly VulkanManager _m;
    private readonly DeviceMemory _memory;
    private bool _disposed;

    private VulkanBuffer(VulkanManager m, VkBuffer handle, DeviceMemory memory, ulong size, byte* mapped, string name)
    {
        _m = m;
        Handle = handle;
        _memory = memory;
        Size = size;
        Mapped = mapped;
        Name = name;
        Id = Interlocked.Increment(ref _nextId);
    }

    public long Id { get; }
    public VkBuffer Handle { get; }
    /// <summary>Bytes (the request rounded up to whole 4-byte words, at least one).</summary>
    public ulong Size { get; }
    /// <summary>Host address of the contents when the memory is host-visible, else null.</summary>
    public byte* Mapped { get; }
    public string Name { get; }

    /// <summary>Allocates <paramref name="bytes"/> (rounded up to a word) of <paramref name="kind"/> memory.</summary>
    /// <exception cref="VulkanException">vulkan.out_of_memory; vulkan.too_large beyond the device's storage-buffer range.</exception>
    public static VulkanBuffer Create(VulkanManager m, ulong bytes, VulkanMemory kind, string name)
    {
        ulong size = Math.Max(4, (bytes + 3) & ~3UL);
        if (size > m.Features.MaxStorageBufferRange)
            throw new VulkanException("vulkan.too_large", $"{name}: {size} bytes exceed the device's largest storage buffer ({m.Features.MaxStorageBufferRange} bytes)");
        var vk = m.Vk;
        var info = new BufferCreateInfo
        {
            SType = StructureType.BufferCreateInfo, Size = size, SharingMode = SharingMode.Exclusive,
            Usage = BufferUsageFlags.StorageBufferBit | BufferUsageFlags.TransferSrcBit | BufferUsageFlags.TransferDstBit,
        };
        VkBuffer buffer;
        VulkanException.Check(vk.CreateBuffer(m.Device, &info, null, &buffer), "vkCreateBuffer");
        DeviceMemory memory = default;
        try
        {
            MemoryRequirements req;
            vk.GetBufferMemoryRequirements(m.Device, buffer, &req);
            int type = kind == VulkanMemory.Device
                ? m.MemoryType(req.MemoryTypeBits, MemoryPropertyFlags.DeviceLocalBit, MemoryPropertyFlags.DeviceLocalBit)
                : m.MemoryType(req.MemoryTypeBits, MemoryPropertyFlags.HostVisibleBit | MemoryPropertyFlags.HostCoherentBit, MemoryPropertyFlags.HostCachedBit);
            if (type < 0 && kind == VulkanMemory.Device) type = m.MemoryType(req.MemoryTypeBits, 0, 0);
            if (type < 0) throw new VulkanException("vulkan.unsupported_device", $"{name}: no memory type for a {kind} buffer");
            var alloc = new MemoryAllocateInfo { SType = StructureType.MemoryAllocateInfo, AllocationSize = req.Size, MemoryTypeIndex = (uint)type };
            var r = vk.AllocateMemory(m.Device, &alloc, null, &memory);
            if (r != Result.Success)
                throw new VulkanException(VulkanException.CodeOf(r), $"{name}: vkAllocateMemory of {req.Size} bytes failed: {r}", "vkAllocateMemory", r);
            VulkanException.Check(vk.BindBufferMemory(m.Device, buffer, memory, 0), "vkBindBufferMemory");
            void* mapped = null;
            var flags = m.MemoryFlags(type);
            if ((flags & (MemoryPropertyFlags.HostVisibleBit | MemoryPropertyFlags.HostCoherentBit)) == (MemoryPropertyFlags.HostVisibleBit | MemoryPropertyFlags.HostCoherentBit))
                VulkanException.Check(vk.MapMemory(m.Device, memory, 0, Vk.WholeSize, 0, &mapped), "vkMapMemory");
            var b = new VulkanBuffer(m, buffer, memory, size, (byte*)mapped, name);
            m.Track(b);
            return b;
        }
        catch
        {
            if (memory.Handle != 0) vk.FreeMemory(m.Device, memory, null);
            vk.DestroyBuffer(m.Device, buffer, null);
            throw;
        }
    }

    /// <summary>Frees the buffer. The caller makes sure no submitted or recorded work still uses it.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        if (_m.Disposed) return;
        _m.Untrack(this);
        Destroy();
    }

    /// <summary>Frees the Vulkan objects (the manager calls it for buffers still alive at its disposal).</summary>
    internal void Destroy()
    {
        var vk = _m.Vk;
        vk.DestroyBuffer(_m.Device, Handle, null);
        vk.FreeMemory(_m.Device, _memory, null);
    }
}
