using Silk.NET.Vulkan;

namespace FastServe.Vulkan;

/// <summary>
/// Kompute's sequence: one command buffer and its fence. Ops are recorded as they are issued (<see cref="Dispatch"/>,
/// <see cref="Copy"/>, <see cref="Fill"/>), each followed by a memory barrier so the next one sees its writes;
/// <see cref="SubmitAndWait"/> ends the recording, submits it to the compute queue and waits for the fence. A
/// failing submit or wait (device lost, memory exhausted) throws <see cref="VulkanException"/>; the owner treats it as
/// fatal. A reusable sequence (a recorded step, <see cref="VulkanStepRecording"/>) keeps its command buffer after the
/// first submission, and <see cref="Replay"/> submits it again.
/// </summary>
public sealed unsafe class VulkanSequence : IDisposable
{
    private readonly VulkanManager _m;
    private readonly CommandPool _pool;
    private readonly CommandBuffer _cmd;
    private readonly Fence _fence;
    private readonly bool _reusable;
    private bool _disposed;

    public VulkanSequence(VulkanManager m, bool reusable = false)
    {
        _m = m;
        _reusable = reusable;
        var vk = m.Vk;
        var cpci = new CommandPoolCreateInfo
        {
            SType = StructureType.CommandPoolCreateInfo, QueueFamilyIndex = m.QueueFamily, Flags = CommandPoolCreateFlags.ResetCommandBufferBit,
        };
        CommandPool pool;
        VulkanException.Check(vk.CreateCommandPool(m.Device, &cpci, null, &pool), "vkCreateCommandPool");
        _pool = pool;
        try
        {
            var cbai = new CommandBufferAllocateInfo { SType = StructureType.CommandBufferAllocateInfo, CommandPool = pool, Level = CommandBufferLevel.Primary, CommandBufferCount = 1 };
            CommandBuffer cmd;
            VulkanException.Check(vk.AllocateCommandBuffers(m.Device, &cbai, &cmd), "vkAllocateCommandBuffers");
            _cmd = cmd;
            var fci = new FenceCreateInfo { SType = StructureType.FenceCreateInfo };
            Fence fence;
            VulkanException.Check(vk.CreateFence(m.Device, &fci, null, &fence), "vkCreateFence");
            _fence = fence;
        }
        catch
        {
            vk.DestroyCommandPool(m.Device, pool, null);
            throw;
        }
    }

    /// <summary>Work is recorded and not yet submitted.</summary>
    public bool Recording { get; private set; }

    /// <summary>Commands recorded since the last submit (for statistics and tests).</summary>
    public int RecordedOps { get; private set; }

    private void Begin()
    {
        if (Recording) return;
        var bi = new CommandBufferBeginInfo { SType = StructureType.CommandBufferBeginInfo, Flags = _reusable ? 0 : CommandBufferUsageFlags.OneTimeSubmitBit };
        VulkanException.Check(_m.Vk.BeginCommandBuffer(_cmd, &bi), "vkBeginCommandBuffer");
        Recording = true;
        RecordedOps = 0;
    }

    /// <summary>Records a dispatch of <paramref name="alg"/> over (x, y, z) workgroups with the given descriptor set
    /// and push constants (exactly <see cref="VulkanAlgorithm.PushBytes"/> bytes).</summary>
    public void Dispatch(VulkanAlgorithm alg, DescriptorSet set, ReadOnlySpan<byte> push, uint x, uint y = 1, uint z = 1)
    {
        Begin();
        var vk = _m.Vk;
        vk.CmdBindPipeline(_cmd, PipelineBindPoint.Compute, alg.Pipeline);
        vk.CmdBindDescriptorSets(_cmd, PipelineBindPoint.Compute, alg.Layout, 0, 1, &set, 0, null);
        if (push.Length > 0)
        {
            fixed (byte* p = push) vk.CmdPushConstants(_cmd, alg.Layout, ShaderStageFlags.ComputeBit, 0, (uint)push.Length, p);
        }
        vk.CmdDispatch(_cmd, x, y, z);
        Barrier();
    }

    /// <summary>Records a buffer-to-buffer copy.</summary>
    public void Copy(VulkanBuffer src, ulong srcOffset, VulkanBuffer dst, ulong dstOffset, ulong bytes)
    {
        Begin();
        var region = new BufferCopy { SrcOffset = srcOffset, DstOffset = dstOffset, Size = bytes };
        _m.Vk.CmdCopyBuffer(_cmd, src.Handle, dst.Handle, 1, &region);
        Barrier();
    }

    /// <summary>Records filling the first <paramref name="bytes"/> (a multiple of 4) of <paramref name="dst"/> with a word.</summary>
    public void Fill(VulkanBuffer dst, ulong bytes, uint word)
    {
        Begin();
        _m.Vk.CmdFillBuffer(_cmd, dst.Handle, 0, bytes, word);
        Barrier();
    }

    // Every command's writes (shader or transfer) become visible to every later command's reads and writes.
    private void Barrier()
    {
        var b = new MemoryBarrier
        {
            SType = StructureType.MemoryBarrier,
            SrcAccessMask = AccessFlags.ShaderWriteBit | AccessFlags.TransferWriteBit,
            DstAccessMask = AccessFlags.ShaderReadBit | AccessFlags.ShaderWriteBit | AccessFlags.TransferReadBit | AccessFlags.TransferWriteBit,
        };
        var stages = PipelineStageFlags.ComputeShaderBit | PipelineStageFlags.TransferBit;
        _m.Vk.CmdPipelineBarrier(_cmd, stages, stages, 0, 1, &b, 0, null, 0, null);
        RecordedOps++;
    }

    /// <summary>Submits what was recorded and waits for it (nothing recorded: returns at once).</summary>
    /// <exception cref="VulkanException">vulkan.device_lost, vulkan.out_of_memory, vulkan.error.</exception>
    public void SubmitAndWait()
    {
        if (!Recording) return;
        Recording = false;
        var vk = _m.Vk;
        // The host reads results after the fence: make the device's writes visible to it.
        var b = new MemoryBarrier
        {
            SType = StructureType.MemoryBarrier, SrcAccessMask = AccessFlags.ShaderWriteBit | AccessFlags.TransferWriteBit, DstAccessMask = AccessFlags.HostReadBit,
        };
        vk.CmdPipelineBarrier(_cmd, PipelineStageFlags.ComputeShaderBit | PipelineStageFlags.TransferBit, PipelineStageFlags.HostBit, 0, 1, &b, 0, null, 0, null);
        VulkanException.Check(vk.EndCommandBuffer(_cmd), "vkEndCommandBuffer");
        Ended = _reusable;
        Submit();
    }

    /// <summary>A reusable sequence's commands were submitted once and can be again (<see cref="Replay"/>).</summary>
    public bool Ended { get; private set; }

    /// <summary>Submits a reusable sequence's recorded commands again and waits.</summary>
    public void Replay()
    {
        if (!Ended) throw new InvalidOperationException("nothing recorded to replay");
        Submit();
    }

    private void Submit()
    {
        var vk = _m.Vk;
        var cmd = _cmd;
        var si = new SubmitInfo { SType = StructureType.SubmitInfo, CommandBufferCount = 1, PCommandBuffers = &cmd };
        VulkanException.Check(vk.QueueSubmit(_m.Queue, 1, &si, _fence), "vkQueueSubmit");
        var fence = _fence;
        VulkanException.Check(vk.WaitForFences(_m.Device, 1, &fence, true, ulong.MaxValue), "vkWaitForFences");
        VulkanException.Check(vk.ResetFences(_m.Device, 1, &fence), "vkResetFences");
    }

    public void Dispose()
    {
        if (_disposed || _m.Disposed) return;
        _disposed = true;
        var vk = _m.Vk;
        vk.DeviceWaitIdle(_m.Device);
        vk.DestroyFence(_m.Device, _fence, null);
        vk.DestroyCommandPool(_m.Device, _pool, null);
    }
}
