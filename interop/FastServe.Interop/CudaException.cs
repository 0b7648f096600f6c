using System.Diagnostics.CodeAnalysis;
using FastServe.Runtime;

namespace FastServe.Interop;

/// <summary>
/// A CUDA driver or kernel-library failure. <see cref="FastServeException.Code"/> is stable (docs/errors.md):
/// <c>cuda.no_driver</c>, <c>cuda.no_device</c>, <c>cuda.out_of_memory</c>, <c>cuda.unsupported_device</c>,
/// <c>cuda.invalid_argument</c> (the kernel library refused arguments the runtime's checks accepted) or
/// <c>cuda.error</c> (anything else: a fault, a lost device, a launch failure). <see cref="ErrorName"/> is the
/// driver's (<c>CUDA_ERROR_ILLEGAL_ADDRESS</c>) or the library's (<c>FS_ERR_CUDA</c>) name of it, <see cref="Call"/>
/// the function that reported it.
/// </summary>
public sealed class CudaException : FastServeException
{
    public CudaException(string code, string call, int result, string errorName, string message)
        : base(code, $"{call} failed: {errorName}{(message.Length > 0 ? $" ({message})" : "")}", "cuda")
    {
        Call = call;
        Result = result;
        ErrorName = errorName;
    }

    /// <summary>The CUDA Driver API or fastserve_cuda function that failed.</summary>
    public string Call { get; }

    /// <summary>The CUresult or fs_status value.</summary>
    public int Result { get; }

    /// <summary>CUDA_ERROR_* or FS_ERR_* name of <see cref="Result"/>.</summary>
    public string ErrorName { get; }

    /// <summary>Maps a CUresult to its stable code.</summary>
    internal static string DriverCode(int result) => result switch
    {
        CudaDriver.ErrorOutOfMemory => "cuda.out_of_memory",
        CudaDriver.ErrorNoDevice or CudaDriver.ErrorInvalidDevice or CudaDriver.ErrorDeviceUnavailable => "cuda.no_device",
        CudaDriver.ErrorInsufficientDriver or CudaDriver.ErrorStubLibrary or CudaDriver.ErrorSystemDriverMismatch
            or CudaDriver.ErrorCompatNotSupportedOnDevice => "cuda.no_driver",
        _ => "cuda.error",
    };

    /// <summary>Maps an fs_status to its stable code.</summary>
    internal static string KernelCode(int status) => status switch
    {
        FsStatus.InvalidArgument => "cuda.invalid_argument",
        FsStatus.NoDevice => "cuda.no_device",
        FsStatus.OutOfMemory => "cuda.out_of_memory",
        FsStatus.Unsupported => "cuda.unsupported_device",
        _ => "cuda.error",
    };

    internal static CudaException FromDriver(string call, int result) =>
        new(DriverCode(result), call, result, CudaDriver.ErrorName(result), CudaDriver.ErrorText(result));

    internal static CudaException FromKernels(string call, int status) =>
        new(KernelCode(status), call, status, FsStatus.Name(status), FastServeCuda.LastError());

    /// <summary>Throws for a failed CUresult. Small and inlinable; the throw lives in the helper below.</summary>
    internal static void Check(int result, string call)
    {
        if (result != CudaDriver.Success) ThrowDriver(call, result);
    }

    [DoesNotReturn]
    internal static void ThrowDriver(string call, int result) => throw FromDriver(call, result);

    [DoesNotReturn]
    internal static void ThrowKernels(string call, int status) => throw FromKernels(call, status);
}
