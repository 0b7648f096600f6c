using System.Runtime.InteropServices;

namespace FastServe.Interop;

/// <summary>
/// Bindings for every function of native/include/fastserve_cuda.h (ABI <see cref="AbiVersion"/>), one to one, with
/// the header's argument order. Types: fs_status and fs_dtype are <see cref="int"/> (see <see cref="FsStatus"/>,
/// <see cref="FsDType"/>); size_t is <see cref="nuint"/>; uint64_t is <see cref="ulong"/>; fs_stream and every device
/// pointer (the ops never take host memory) are <see cref="nint"/> CUstream / CUdeviceptr values; host out-parameters
/// are typed pointers. Nothing here throws: callers check the status and read <see cref="fs_cuda_last_error"/>.
/// DeviceInfoLayoutTests checks these bindings against the header (names, parameter and return types, the ABI
/// version); bench/gpu/fastserve_abi.py gives the Python scripts the same table, parsed from the header.
/// </summary>
internal static unsafe partial class FastServeCuda
{
    private const string Lib = NativeLibraries.Kernels;

    /// <summary>FS_CUDA_ABI_VERSION of the header these bindings were written against.</summary>
    public const int AbiVersion = 2;

    static FastServeCuda() => NativeLibraries.EnsureResolver();

    // ---- library and device
    [LibraryImport(Lib)] public static partial int fs_cuda_abi_version();
    [LibraryImport(Lib)] public static partial byte* fs_cuda_last_error();
    [LibraryImport(Lib)] public static partial int fs_cuda_device_count(int* count);
    [LibraryImport(Lib)] public static partial int fs_cuda_device_info_get(int device, FsCudaDeviceInfo* info);
    [LibraryImport(Lib)] public static partial int fs_cuda_init(int device);

    // ---- ops (asynchronous, on the given stream)
    [LibraryImport(Lib)]
    public static partial int fs_cuda_embedding(nint stream, nint table, int dtype, nint scale, int vocab, int cols, nint tokens, int n, nint dst);

    [LibraryImport(Lib)]
    public static partial int fs_cuda_rmsnorm(nint stream, nint x, nint gamma, float eps, int rows, int cols, nint dst);

    [LibraryImport(Lib)]
    public static partial int fs_cuda_add_rmsnorm(nint stream, nint residual, nint x, nint gamma, float eps, int rows, int cols, nint dst);

    [LibraryImport(Lib)]
    public static partial int fs_cuda_add(nint stream, nint acc, nint x, nuint n);

    [LibraryImport(Lib)]
    public static partial int fs_cuda_matmul(nint stream, nint x, int rows, int k, nint w, int dtype, nint wScale, int n, nint bias, nint dst);

    [LibraryImport(Lib)]
    public static partial int fs_cuda_rope(nint stream, nint x, int rows, int heads, int headDim, nint positions, nint invFreq);

    [LibraryImport(Lib)]
    public static partial int fs_cuda_silu_gate(nint stream, nint gate, nint up, nuint n, nint dst);

    [LibraryImport(Lib)]
    public static partial int fs_cuda_kv_store(nint stream, nint kCache, nint vCache, int kvHeads, int headDim, nint k, nint v, int rows, nint slots);

    [LibraryImport(Lib)]
    public static partial int fs_cuda_attention(nint stream, nint q, int rows, int heads, int kvHeads, int headDim, nint kCache, nint vCache,
        int blockSize, nint blockTables, int maxBlocks, nint seqOfRow, nint positions, nint dst);

    [LibraryImport(Lib)]
    public static partial int fs_cuda_gather_rows(nint stream, nint src, int cols, nint rowsIdx, int n, nint dst);

    [LibraryImport(Lib)]
    public static partial int fs_cuda_sample(nint stream, nint logits, int rows, int vocab, nint temperature, nint topP, nint topK, nint seeds,
        nint counters, nint workspace, nuint workspaceBytes, nint outTokens);

    [LibraryImport(Lib)]
    public static partial nuint fs_cuda_sample_workspace_bytes(int rows, int vocab);

    /// <summary>The calling thread's last error message from the library ("" when none).</summary>
    public static string LastError()
    {
        byte* s = fs_cuda_last_error();
        return s == null ? "" : Marshal.PtrToStringUTF8((nint)s) ?? "";
    }
}

/// <summary>fs_status values.</summary>
internal static class FsStatus
{
    public const int Ok = 0;
    public const int InvalidArgument = 1;
    public const int NoDevice = 2;
    public const int OutOfMemory = 3;
    public const int Unsupported = 4;
    public const int Cuda = 5;

    public static string Name(int status) => status switch
    {
        Ok => "FS_OK",
        InvalidArgument => "FS_ERR_INVALID_ARGUMENT",
        NoDevice => "FS_ERR_NO_DEVICE",
        OutOfMemory => "FS_ERR_OUT_OF_MEMORY",
        Unsupported => "FS_ERR_UNSUPPORTED",
        Cuda => "FS_ERR_CUDA",
        _ => $"fs_status {status}",
    };
}

/// <summary>fs_dtype values (weight storage types of fs_cuda_matmul and fs_cuda_embedding).</summary>
internal static class FsDType
{
    public const int F32 = 0;
    public const int F16 = 1;
    public const int BF16 = 2;
    public const int F8E4M3 = 3;
}

/// <summary>
/// fs_cuda_device_info, blittable, in the header's field order with C's natural alignment on LP64:
/// name at 0 (256 bytes), major 256, minor 260, multiprocessors 264, total_memory (size_t) 272 after 4 bytes of
/// padding, driver_version 280, runtime_version 284, fp8_tensor_cores 288, size 296 (padded to 8).
/// </summary>
[StructLayout(LayoutKind.Sequential)]
internal unsafe struct FsCudaDeviceInfo
{
    public const int NameBytes = 256;

    public fixed byte Name[NameBytes];
    public int Major;
    public int Minor;
    public int Multiprocessors;
    public nuint TotalMemory;
    public int DriverVersion;
    public int RuntimeVersion;
    public int Fp8TensorCores;

    /// <summary>The NUL-terminated name as a string.</summary>
    public string NameString()
    {
        fixed (byte* p = Name)
        {
            int n = 0;
            while (n < NameBytes && p[n] != 0) n++;
            return System.Text.Encoding.UTF8.GetString(p, n);
        }
    }
}
