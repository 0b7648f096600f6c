using System.Runtime.InteropServices;

namespace FastServe.Interop;

/// <summary>
/// The few CUDA Driver API calls the host needs (cuda.h), bound by the [LibraryImport] source generator: devices,
/// the primary context, one stream, events, device and pinned memory, async copies, and stream capture into graphs.
/// Every function returns a CUresult (0 = CUDA_SUCCESS) and never throws; <see cref="CudaException"/> turns a bad
/// result into an exception in one place. Handles are plain values: CUdevice is an int ordinal, CUdeviceptr,
/// CUcontext, CUstream, CUevent, CUgraph and CUgraphExec are <see cref="nint"/>. Versioned names (_v2) are the
/// symbols cuda.h maps the plain names to since CUDA 4.0/11.x; all exist in 11.8 through 13 drivers
/// (cuGraphInstantiateWithFlags since 11.4).
/// </summary>
internal static unsafe partial class CudaDriver
{
    private const string Lib = NativeLibraries.Driver;

    public const int Success = 0;
    public const int ErrorInvalidValue = 1;
    public const int ErrorOutOfMemory = 2;
    public const int ErrorNotInitialized = 3;
    public const int ErrorStubLibrary = 34;
    public const int ErrorInsufficientDriver = 35;
    public const int ErrorNoDevice = 100;
    public const int ErrorInvalidDevice = 101;
    public const int ErrorDeviceUnavailable = 46;
    public const int ErrorSystemDriverMismatch = 803;
    public const int ErrorCompatNotSupportedOnDevice = 804;

    public const int AttributeMultiprocessorCount = 16;
    public const int AttributeComputeCapabilityMajor = 75;
    public const int AttributeComputeCapabilityMinor = 76;

    public const uint StreamNonBlocking = 0x1;
    public const uint EventDefault = 0x0;
    public const uint EventDisableTiming = 0x2;
    public const int StreamCaptureModeThreadLocal = 1;

    static CudaDriver() => NativeLibraries.EnsureResolver();

    [LibraryImport(Lib)] public static partial int cuInit(uint flags);
    [LibraryImport(Lib)] public static partial int cuDriverGetVersion(int* version);
    [LibraryImport(Lib)] public static partial int cuDeviceGetCount(int* count);
    [LibraryImport(Lib)] public static partial int cuDeviceGet(int* device, int ordinal);
    [LibraryImport(Lib)] public static partial int cuDeviceGetName(byte* name, int len, int device);
    [LibraryImport(Lib)] public static partial int cuDeviceGetAttribute(int* value, int attribute, int device);
    [LibraryImport(Lib)] public static partial int cuDeviceTotalMem_v2(nuint* bytes, int device);

    [LibraryImport(Lib)] public static partial int cuDevicePrimaryCtxRetain(nint* context, int device);
    [LibraryImport(Lib)] public static partial int cuDevicePrimaryCtxRelease_v2(int device);
    [LibraryImport(Lib)] public static partial int cuCtxSetCurrent(nint context);

    [LibraryImport(Lib)] public static partial int cuStreamCreate(nint* stream, uint flags);
    [LibraryImport(Lib)] public static partial int cuStreamDestroy_v2(nint stream);
    [LibraryImport(Lib)] public static partial int cuStreamSynchronize(nint stream);

    [LibraryImport(Lib)] public static partial int cuEventCreate(nint* evt, uint flags);
    [LibraryImport(Lib)] public static partial int cuEventRecord(nint evt, nint stream);
    [LibraryImport(Lib)] public static partial int cuEventSynchronize(nint evt);
    [LibraryImport(Lib)] public static partial int cuEventElapsedTime(float* milliseconds, nint start, nint end);
    [LibraryImport(Lib)] public static partial int cuEventDestroy_v2(nint evt);

    [LibraryImport(Lib)] public static partial int cuMemAlloc_v2(nint* dptr, nuint bytes);
    [LibraryImport(Lib)] public static partial int cuMemFree_v2(nint dptr);
    [LibraryImport(Lib)] public static partial int cuMemAllocHost_v2(void** pp, nuint bytes);
    [LibraryImport(Lib)] public static partial int cuMemFreeHost(void* p);
    [LibraryImport(Lib)] public static partial int cuMemcpyHtoDAsync_v2(nint dst, void* src, nuint bytes, nint stream);
    [LibraryImport(Lib)] public static partial int cuMemcpyDtoHAsync_v2(void* dst, nint src, nuint bytes, nint stream);
    [LibraryImport(Lib)] public static partial int cuMemcpyDtoDAsync_v2(nint dst, nint src, nuint bytes, nint stream);
    [LibraryImport(Lib)] public static partial int cuMemsetD8Async(nint dst, byte value, nuint count, nint stream);

    [LibraryImport(Lib)] public static partial int cuStreamBeginCapture_v2(nint stream, int mode);
    [LibraryImport(Lib)] public static partial int cuStreamEndCapture(nint stream, nint* graph);
    [LibraryImport(Lib)] public static partial int cuGraphInstantiateWithFlags(nint* exec, nint graph, ulong flags);
    [LibraryImport(Lib)] public static partial int cuGraphLaunch(nint exec, nint stream);
    [LibraryImport(Lib)] public static partial int cuGraphExecDestroy(nint exec);
    [LibraryImport(Lib)] public static partial int cuGraphDestroy(nint graph);

    [LibraryImport(Lib)] public static partial int cuGetErrorName(int error, byte** name);
    [LibraryImport(Lib)] public static partial int cuGetErrorString(int error, byte** text);

    /// <summary>"CUDA_ERROR_OUT_OF_MEMORY" for 2, or "CUresult 999" when the driver does not know the value.</summary>
    public static string ErrorName(int result)
    {
        byte* s = null;
        return cuGetErrorName(result, &s) == Success && s != null ? Marshal.PtrToStringUTF8((nint)s) ?? $"CUresult {result}" : $"CUresult {result}";
    }

    /// <summary>The driver's description of a result ("out of memory"), or "" when it has none.</summary>
    public static string ErrorText(int result)
    {
        byte* s = null;
        return cuGetErrorString(result, &s) == Success && s != null ? Marshal.PtrToStringUTF8((nint)s) ?? "" : "";
    }
}
