using System.Runtime.InteropServices;

namespace FastServe.Interop;

/// <summary>
/// A retained primary context of one device (cuDevicePrimaryCtxRetain / cuDevicePrimaryCtxRelease). Every other
/// handle below holds a reference on it (<see cref="SafeHandle.DangerousAddRef"/>), so the context is released only
/// after the last stream, buffer and graph made in it, whatever order finalizers run in.
/// </summary>
internal sealed class CudaContextHandle : SafeHandle
{
    private CudaContextHandle(int device, nint context) : base(0, true)
    {
        Device = device;
        SetHandle(context);
    }

    public int Device { get; }
    public nint Context => handle;
    public override bool IsInvalid => handle == 0;

    public static unsafe CudaContextHandle Retain(int device)
    {
        nint ctx;
        CudaException.Check(CudaDriver.cuDevicePrimaryCtxRetain(&ctx, device), "cuDevicePrimaryCtxRetain");
        return new CudaContextHandle(device, ctx);
    }

    /// <summary>Makes the context current on the calling thread.</summary>
    public void MakeCurrent() => CudaException.Check(CudaDriver.cuCtxSetCurrent(handle), "cuCtxSetCurrent");

    protected override bool ReleaseHandle() => CudaDriver.cuDevicePrimaryCtxRelease_v2(Device) == CudaDriver.Success;
}

/// <summary>Base of handles owned by a context: keeps the context alive and current while releasing.</summary>
internal abstract class CudaOwnedHandle : SafeHandle
{
    private readonly CudaContextHandle _context;

    protected CudaOwnedHandle(CudaContextHandle context) : base(0, true)
    {
        bool added = false;
        context.DangerousAddRef(ref added);
        _context = context;
    }

    public override bool IsInvalid => handle == 0;

    protected sealed override bool ReleaseHandle()
    {
        // Finalizers and Dispose may run on a thread where the context is not current.
        bool ok = CudaDriver.cuCtxSetCurrent(_context.Context) == CudaDriver.Success && Free(handle);
        _context.DangerousRelease();
        return ok;
    }

    protected abstract bool Free(nint value);
}

/// <summary>A stream (cuStreamCreate, non-blocking with respect to the legacy default stream).</summary>
internal sealed class CudaStreamHandle : CudaOwnedHandle
{
    private CudaStreamHandle(CudaContextHandle context, nint stream) : base(context) => SetHandle(stream);

    public nint Stream => handle;

    public static unsafe CudaStreamHandle Create(CudaContextHandle context)
    {
        nint s;
        CudaException.Check(CudaDriver.cuStreamCreate(&s, CudaDriver.StreamNonBlocking), "cuStreamCreate");
        return new CudaStreamHandle(context, s);
    }

    protected override bool Free(nint value) => CudaDriver.cuStreamDestroy_v2(value) == CudaDriver.Success;
}

/// <summary>Device memory (cuMemAlloc). Zero-byte requests allocate one byte so every buffer has an address.</summary>
internal sealed class CudaDeviceMemory : CudaOwnedHandle
{
    private CudaDeviceMemory(CudaContextHandle context, nint ptr, long bytes) : base(context)
    {
        SetHandle(ptr);
        Bytes = bytes;
    }

    public nint Ptr => handle;
    public long Bytes { get; }

    public static unsafe CudaDeviceMemory Alloc(CudaContextHandle context, long bytes, string what)
    {
        nint p;
        int r = CudaDriver.cuMemAlloc_v2(&p, (nuint)Math.Max(1, bytes));
        if (r != CudaDriver.Success)
        {
            var e = CudaException.FromDriver("cuMemAlloc_v2", r);
            throw new CudaException(e.Code, "cuMemAlloc_v2", r, e.ErrorName, $"{bytes} bytes for {what}");
        }
        return new CudaDeviceMemory(context, p, bytes);
    }

    protected override bool Free(nint value) => CudaDriver.cuMemFree_v2(value) == CudaDriver.Success;
}

/// <summary>Page-locked host memory (cuMemAllocHost): the source and target of truly asynchronous copies.</summary>
internal sealed unsafe class CudaPinnedMemory : CudaOwnedHandle
{
    private CudaPinnedMemory(CudaContextHandle context, nint ptr, long bytes) : base(context)
    {
        SetHandle(ptr);
        Bytes = bytes;
    }

    public byte* Ptr => (byte*)handle;
    public long Bytes { get; }

    public static CudaPinnedMemory Alloc(CudaContextHandle context, long bytes, string what)
    {
        void* p;
        int r = CudaDriver.cuMemAllocHost_v2(&p, (nuint)Math.Max(1, bytes));
        if (r != CudaDriver.Success)
        {
            var e = CudaException.FromDriver("cuMemAllocHost_v2", r);
            throw new CudaException(e.Code, "cuMemAllocHost_v2", r, e.ErrorName, $"{bytes} pinned bytes for {what}");
        }
        return new CudaPinnedMemory(context, (nint)p, bytes);
    }

    protected override bool Free(nint value) => CudaDriver.cuMemFreeHost((void*)value) == CudaDriver.Success;
}

/// <summary>An instantiated graph (cuGraphInstantiateWithFlags); the template graph is destroyed once instantiated.</summary>
internal sealed class CudaGraphExecHandle : CudaOwnedHandle
{
    private CudaGraphExecHandle(CudaContextHandle context, nint exec) : base(context) => SetHandle(exec);

    public nint Exec => handle;

    /// <summary>Instantiates <paramref name="graph"/> and destroys it (the executable graph is independent of it).</summary>
    public static unsafe CudaGraphExecHandle Instantiate(CudaContextHandle context, nint graph)
    {
        nint exec;
        int r = CudaDriver.cuGraphInstantiateWithFlags(&exec, graph, 0);
        CudaDriver.cuGraphDestroy(graph);
        CudaException.Check(r, "cuGraphInstantiateWithFlags");
        return new CudaGraphExecHandle(context, exec);
    }

    protected override bool Free(nint value) => CudaDriver.cuGraphExecDestroy(value) == CudaDriver.Success;
}

/// <summary>An event (cuEventCreate) without timing: recorded after work on a stream, waited on by the host.</summary>
internal sealed class CudaEventHandle : CudaOwnedHandle
{
    private CudaEventHandle(CudaContextHandle context, nint evt) : base(context) => SetHandle(evt);

    public nint Event => handle;

    public static unsafe CudaEventHandle Create(CudaContextHandle context)
    {
        nint e;
        CudaException.Check(CudaDriver.cuEventCreate(&e, CudaDriver.EventDisableTiming), "cuEventCreate");
        return new CudaEventHandle(context, e);
    }

    protected override bool Free(nint value) => CudaDriver.cuEventDestroy_v2(value) == CudaDriver.Success;
}
