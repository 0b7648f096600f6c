using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using FastServe.Runtime;

[assembly: DisableRuntimeMarshalling]

namespace FastServe.Interop;

/// <summary>What <see cref="CudaEnvironment.Check"/> found: the device the backend would use and the kernel library.</summary>
public sealed record CudaDeviceSummary(int Ordinal, string Name, int Major, int Minor, long TotalMemory, int DriverVersion, string LibraryPath)
{
    public string ComputeCapability => $"{Major}.{Minor}";
}

/// <summary>
/// Finds out, without creating a context or touching device memory, whether a <see cref="CudaBackend"/> could run
/// here. Checks in order and throws at the first that fails, so the user is told the most basic thing missing:
/// driver (<c>cuda.no_driver</c>: libcuda absent, a stub, or older than CUDA 11.4), device (<c>cuda.no_device</c>),
/// compute capability (<c>cuda.unsupported_device</c>: below 8.0), kernel library (<c>cuda.no_library</c>, listing
/// every path tried), and its ABI (<c>cuda.abi_mismatch</c>: a different FS_CUDA_ABI_VERSION or a missing export).
/// </summary>
public static unsafe class CudaEnvironment
{
    /// <summary>Lowest compute capability the kernels target (bf16 and cp.async need sm_80).</summary>
    public const int MinComputeMajor = 8;

    /// <summary>cuGraphInstantiateWithFlags, the newest call bound here, needs an 11.4 driver.</summary>
    public const int MinDriverVersion = 11040;

    /// <summary>Every function of the kernel library, checked as exports before first use.</summary>
    internal static readonly string[] KernelExports =
    [
        "fs_cuda_abi_version", "fs_cuda_last_error", "fs_cuda_device_count", "fs_cuda_device_info_get", "fs_cuda_init",
        "fs_cuda_embedding", "fs_cuda_rmsnorm", "fs_cuda_add_rmsnorm", "fs_cuda_add", "fs_cuda_matmul", "fs_cuda_rope",
        "fs_cuda_silu_gate", "fs_cuda_kv_store", "fs_cuda_attention", "fs_cuda_gather_rows", "fs_cuda_sample",
        "fs_cuda_sample_workspace_bytes",
    ];

    /// <summary>Checks driver, device <paramref name="ordinal"/>, its compute capability, and the kernel library.</summary>
    /// <exception cref="FastServeException">cuda.no_driver, cuda.no_device, cuda.unsupported_device, cuda.no_library,
    /// cuda.abi_mismatch.</exception>
    public static CudaDeviceSummary Check(int ordinal = 0)
    {
        NativeLibraries.LoadDriver();
        int r = CudaDriver.cuInit(0);
        if (r == CudaDriver.ErrorNoDevice)
            throw new FastServeException("cuda.no_device", $"the NVIDIA driver sees no CUDA device{VisibleDevicesNote()}", "cuda");
        if (r != CudaDriver.Success)
        {
            var e = CudaException.FromDriver("cuInit", r);
            string code = e.Code == "cuda.error" ? "cuda.no_driver" : e.Code;
            throw new FastServeException(code, $"the NVIDIA driver failed to initialize: {e.Message}", "cuda");
        }
        int driver, count;
        CudaException.Check(CudaDriver.cuDriverGetVersion(&driver), "cuDriverGetVersion");
        if (driver < MinDriverVersion)
            throw new FastServeException("cuda.no_driver", $"the NVIDIA driver supports CUDA {Version(driver)}; the cuda backend needs {Version(MinDriverVersion)} or newer", "cuda");
        CudaException.Check(CudaDriver.cuDeviceGetCount(&count), "cuDeviceGetCount");
        if (count == 0) throw new FastServeException("cuda.no_device", $"the NVIDIA driver sees no CUDA device{VisibleDevicesNote()}", "cuda");
        if ((uint)ordinal >= (uint)count)
            throw new FastServeException("cuda.no_device", $"CUDA device {ordinal} does not exist; {count} visible{VisibleDevicesNote()}", "cuda");

        int dev, major, minor;
        nuint mem;
        CudaException.Check(CudaDriver.cuDeviceGet(&dev, ordinal), "cuDeviceGet");
        CudaException.Check(CudaDriver.cuDeviceGetAttribute(&major, CudaDriver.AttributeComputeCapabilityMajor, dev), "cuDeviceGetAttribute");
        CudaException.Check(CudaDriver.cuDeviceGetAttribute(&minor, CudaDriver.AttributeComputeCapabilityMinor, dev), "cuDeviceGetAttribute");
        CudaException.Check(CudaDriver.cuDeviceTotalMem_v2(&mem, dev), "cuDeviceTotalMem_v2");
        byte* nameBuf = stackalloc byte[256];
        CudaException.Check(CudaDriver.cuDeviceGetName(nameBuf, 256, dev), "cuDeviceGetName");
        string name = Marshal.PtrToStringUTF8((nint)nameBuf) ?? "?";
        if (major < MinComputeMajor)
            throw new FastServeException("cuda.unsupported_device",
                $"device {ordinal} ({name}) has compute capability {major}.{minor}; the cuda backend needs {MinComputeMajor}.0 or higher (Ampere, Ada, Hopper, Blackwell)", "cuda");

        nint lib = NativeLibraries.LoadKernels();
        string path = NativeLibraries.KernelPath ?? NativeLibraries.KernelFileName;
        var missing = KernelExports.Where(f => !NativeLibrary.TryGetExport(lib, f, out _)).ToList();
        if (missing.Count > 0)
            throw new FastServeException("cuda.abi_mismatch", $"the kernel library lacks {string.Join(", ", missing)}; rebuild it from this checkout", path);
        int abi = FastServeCuda.fs_cuda_abi_version();
        if (abi != FastServeCuda.AbiVersion)
            throw new FastServeException("cuda.abi_mismatch",
                $"the kernel library has ABI version {abi}, this fastserve needs {FastServeCuda.AbiVersion}; rebuild both from one checkout", path);
        return new CudaDeviceSummary(ordinal, name, major, minor, (long)mem, driver, path);
    }

    private static string Version(int v) => $"{v / 1000}.{v % 1000 / 10}";

    private static string VisibleDevicesNote() =>
        Environment.GetEnvironmentVariable("CUDA_VISIBLE_DEVICES") is { } v ? $" (CUDA_VISIBLE_DEVICES={v})" : "";
}
