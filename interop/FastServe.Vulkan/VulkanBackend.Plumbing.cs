using System.Diagnostics.CodeAnalysis;
using System.Runtime.InteropServices;
using FastServe.Runtime;
using FastServe.Runtime.Backends;

namespace FastServe.Vulkan;

/// <summary>The vulkan backend's plumbing: faults, submission, buffers, uploads, the arena, pipelines and dispatch.</summary>
public sealed unsafe partial class VulkanBackend
{
    // ---- plumbing -----------------------------------------------------------------------------------------------

    private void Enter()
    {
        if (_fault is not null) ThrowFaulted();
        ObjectDisposedException.ThrowIf(_disposed, this);
    }

    /// <summary>Tests: leaves the backend as a failing call returning <paramref name="result"/> would.</summary>
    internal void InjectFault(Silk.NET.Vulkan.Result result) => _fault ??= VulkanException.From("injected", result);

    [DoesNotReturn]
    private void ThrowFaulted()
    {
        var f = _fault!;
        throw new VulkanException(f.Code, $"an earlier failure left the vulkan backend unusable: {f.Message}", f.Call, f.Result);
    }

    /// <summary>A failing Vulkan call faults the backend: what was recorded or submitted is lost.</summary>
    [DoesNotReturn]
    private void Fault(VulkanException e)
    {
        _fault ??= e;
        throw e;
    }

    private void Copy(VulkanBuffer src, ulong srcOffset, VulkanBuffer dst, ulong dstOffset, ulong bytes)
    {
        if (_step != StepMode.Eager && !Note(VulkanCommand.Copy(src, srcOffset, dst, dstOffset, bytes))) return;
        try { _cur.Copy(src, srcOffset, dst, dstOffset, bytes); }
        catch (VulkanException e) { Fault(e); }
    }

    private void Fill(VulkanBuffer b)
    {
        try { _seq.Fill(b, b.Size, 0); }
        catch (VulkanException e) { Fault(e); }
    }

    /// <summary>Submits what was recorded, waits, and recycles the arena.</summary>
    private void Flush()
    {
        // A recorded or replayed step is submitted whole at its readback: needing to submit earlier refuses it.
        if (_step != StepMode.Eager)
        {
            Refuse();
            return;
        }
        if (!_seq.Recording) return;
        try { _seq.SubmitAndWait(); }
        catch (VulkanException e) { Fault(e); }
        Submissions++;
        _arena.Reset();
    }

    private VulkanBuffer NewBuffer(ulong bytes, VulkanMemory kind, string name)
    {
        try { return VulkanBuffer.Create(_m, bytes, kind, name); }
        catch (VulkanException e) when (e.Code == "vulkan.out_of_memory" && _seq.Recording)
        {
            // Memory may be held only until the recorded work completes; not a fault by itself.
            Flush();
            return VulkanBuffer.Create(_m, bytes, kind, name);
        }
    }

    /// <summary>A buffer an op needs mid-step: failing to get one faults the backend, as the step cannot complete.</summary>
    private VulkanBuffer StepBuffer(ulong bytes, VulkanMemory kind, string name)
    {
        try { return NewBuffer(bytes, kind, name); }
        catch (VulkanException e)
        {
            Fault(e);
            throw;
        }
    }

    /// <summary>Frees a tensor's or weight's buffer once no recorded or submitted work can use it (errors ignored:
    /// the fault behind them is what gets reported, and the memory is released either way).</summary>
    internal void Release(VulkanBuffer b)
    {
        if (_disposed) return;
        if (_seq.Recording && _fault is null)
        {
            try { Flush(); }
            catch (VulkanException) { }
        }
        b.Dispose();
    }

    private void Upload(VulkanBuffer dst, byte* src, long bytes)
    {
        if (bytes == 0) return;
        if (dst.Mapped != null)
        {
            System.Buffer.MemoryCopy(src, dst.Mapped, (long)dst.Size, bytes);
            return;
        }
        Flush();
        _staging ??= NewBuffer(StagingBytes, VulkanMemory.Host, "staging");
        var staging = _staging;
        for (long done = 0; done < bytes;)
        {
            long chunk = Math.Min(bytes - done, (long)staging.Size);
            System.Buffer.MemoryCopy(src + done, staging.Mapped, (long)staging.Size, chunk);
            Copy(staging, 0, dst, (ulong)done, (ulong)chunk);
            Flush();
            done += chunk;
        }
    }

    private VulkanBuffer Scratch(ulong bytes)
    {
        if (_scratch is null || _scratch.Size < bytes)
        {
            if (_step != StepMode.Eager)
            {
                Refuse();
                return Dummy;
            }
            Flush(); // recorded work may use the old scratch
            _scratch?.Dispose();
            _scratch = null;
            _scratch = StepBuffer(bytes, VulkanMemory.Device, "scratch");
            _generation++;
        }
        return _scratch;
    }

    private int[] HostInts(int n)
    {
        if (_hostInts.Length < n) _hostInts = new int[Math.Max(n, _hostInts.Length * 2)];
        return _hostInts;
    }

    /// <summary>Appends a host array to the arena (submitting and, for an array larger than it, growing it when
    /// full) and returns its word offset.</summary>
    private uint Stage<T>(ReadOnlySpan<T> data) where T : unmanaged
    {
        if (_arena.TryPut(data, out uint off)) return off;
        if (_step != StepMode.Eager)
        {
            Refuse(); // the arena cannot be recycled or grown inside a recorded step
            return 0;
        }
        MakeRoom((ulong)data.Length * 4);
        _arena.TryPut(data, out off);
        return off;
    }

    private Span<uint> Reserve(int words, out uint off)
    {
        if (_arena.TryReserve(words, out off, out var space)) return space;
        if (_step != StepMode.Eager)
        {
            Refuse();
            return MemoryMarshal.Cast<int, uint>(HostInts(words).AsSpan(0, words)); // written, never read
        }
        MakeRoom((ulong)words * 4);
        _arena.TryReserve(words, out off, out space);
        return space;
    }

    private void MakeRoom(ulong bytes)
    {
        Flush();
        if (_arena.Buffer.Size < bytes)
        {
            try { _arena.Grow(bytes); }
            catch (VulkanException e) { Fault(e); }
            _generation++;
        }
    }

    private VulkanAlgorithm Algorithm(string shader, int variant, int bindings, uint pushBytes)
    {
        if (_algorithms.TryGetValue((shader, variant), out var a)) return a;
        try
        {
            if (!_spirv.TryGetValue(shader, out var code)) _spirv[shader] = code = VulkanShaders.Read(_shaderDir, shader);
            a = VulkanAlgorithm.Create(_m, shader, code, variant, bindings, pushBytes);
        }
        catch (VulkanException e) { Fault(e); }
        _algorithms[(shader, variant)] = a;
        return a;
    }

    /// <summary>Makes the cooperative-matrix pipeline of weight dtype <paramref name="variant"/> on first use, with the
    /// device's shape as constants 1-3, its workgroup size as constant 4, and full subgroups of the size the shape was
    /// picked for. A driver that refuses it, or a .spv that is not SPIR-V,
    /// turns the cooperative-matrix path off (MatMul takes the tiled GEMM, <see cref="MatMulPaths"/> says why) instead
    /// of faulting the backend: that shader has run on few devices. Device loss and exhausted memory still fault.</summary>
    private bool CoopPipeline(int variant)
    {
        if (_coop is not { } c) return false;
        if (_algorithms.ContainsKey((CoopMatrixShader, variant))) return true;
        try
        {
            if (!_spirv.TryGetValue(CoopMatrixShader, out var code)) _spirv[CoopMatrixShader] = code = VulkanShaders.Read(_shaderDir, CoopMatrixShader);
            _algorithms[(CoopMatrixShader, variant)] =
                VulkanAlgorithm.Create(_m, CoopMatrixShader, code, variant, 5, 5 * 4, [c.M, c.N, c.K, c.Threads], c.Subgroup);
            return true;
        }
        catch (VulkanException e) when (e.Code is "vulkan.error" or "vulkan.no_shaders")
        {
            _coop = null;
            MatMulPaths += $" (refused: {e.Message}; the tiled GEMM instead)";
            return false;
        }
        catch (VulkanException e)
        {
            Fault(e);
            return false;
        }
    }

    /// <summary>Records one dispatch: the pipeline of (shader, variant), the cached set of <paramref name="buffers"/>,
    /// the push constants.</summary>
    private void Run(string shader, int variant, ReadOnlySpan<VulkanBuffer> buffers, ReadOnlySpan<uint> push, uint x, uint y = 1, uint z = 1)
    {
        if (_step == StepMode.Refused) return;
        var alg = Algorithm(shader, variant, buffers.Length, (uint)push.Length * 4);
        Silk.NET.Vulkan.DescriptorSet set = default;
        try { set = _sets.Get(alg, buffers); }
        catch (VulkanException e) { Fault(e); }
        if (_step != StepMode.Eager && !Note(VulkanCommand.Dispatch(alg, set.Handle, push, x, y, z))) return;
        try { _cur.Dispatch(alg, set, MemoryMarshal.AsBytes(push), x, y, z); }
        catch (VulkanException e) { Fault(e); }
    }

    /// <summary>Workgroups of <see cref="Threads"/> for n elements, capped (the shaders loop with the stride).</summary>
    private static uint Groups(uint n) => Math.Clamp((n + Threads - 1) / Threads, 1, MaxGroups);

    private static uint RowGroups(int rows)
    {
        if ((uint)rows > MaxGroups)
            throw new FastServeException("vulkan.unsupported_shape", $"{rows} rows exceed the {MaxGroups} workgroups of a dispatch", "rows");
        return (uint)rows;
    }

    public override void Dispose()
    {
        if (_disposed) return;
        try { if (_fault is null) Flush(); }
        catch (VulkanException) { }
        _disposed = true;
        _recordings.Clear();
        foreach (var a in _algorithms.Values) a.Dispose();
        _sets.Dispose();
        _seq.Dispose();
        _m.Dispose(); // frees every buffer still alive (arena, staging, dummy, tensors not disposed)
    }
}
