using System.Runtime.InteropServices;

namespace FastServe.Vulkan;

/// <summary>
/// One command of a step as the backend issued it — what a replayed step must issue identically: a dispatch (pipeline,
/// descriptor set, group counts, push constants) or a copy (buffers by id, offsets, length). Host inputs live in the
/// arena at offsets the push constants carry, so equal commands read this step's inputs.
/// </summary>
[StructLayout(LayoutKind.Sequential)]
internal unsafe struct VulkanCommand
{
    public const int MaxPushWords = 8;
    public int Kind;       // 1 dispatch, 2 copy, 3 readback
    public int PushWords;
    public long A, B;      // dispatch: pipeline id, set handle; copy: source id, destination id
    public ulong C, D, E;  // dispatch: group counts x, y, z; copy: source offset, destination offset, bytes
    public fixed uint Push[MaxPushWords];

    public static VulkanCommand Dispatch(VulkanAlgorithm alg, ulong set, ReadOnlySpan<uint> push, uint x, uint y, uint z)
    {
        if (push.Length > MaxPushWords) throw new ArgumentException($"{alg.Name}: {push.Length} push-constant words");
        var c = new VulkanCommand { Kind = 1, A = alg.Id, B = (long)set, C = x, D = y, E = z, PushWords = push.Length };
        for (int i = 0; i < push.Length; i++) c.Push[i] = push[i];
        return c;
    }

    public static VulkanCommand Copy(VulkanBuffer src, ulong srcOffset, VulkanBuffer dst, ulong dstOffset, ulong bytes) =>
        new() { Kind = 2, A = src.Id, B = dst.Id, C = srcOffset, D = dstOffset, E = bytes };

    public static bool Same(in VulkanCommand a, in VulkanCommand b) =>
        MemoryMarshal.AsBytes(new ReadOnlySpan<VulkanCommand>(in a)).SequenceEqual(MemoryMarshal.AsBytes(new ReadOnlySpan<VulkanCommand>(in b)));
}

/// <summary>
/// A recorded step (<see cref="Runtime.Backends.IStepRecorder"/>): its own reusable command buffer, submitted once when
/// recorded and again for every replay, and the commands it holds, which a replayed step's ops must match one by one.
/// </summary>
internal sealed class VulkanStepRecording : IDisposable
{
    public VulkanStepRecording(VulkanManager m) => Sequence = new VulkanSequence(m, reusable: true);

    public VulkanSequence Sequence { get; }

    /// <summary>The backend's buffer generation when recorded: it must still be current to replay.</summary>
    public int Generation { get; init; }
    public List<VulkanCommand> Commands { get; } = [];

    public void Dispose() => Sequence.Dispose();
}
