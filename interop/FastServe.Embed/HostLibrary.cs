using System.Runtime.InteropServices;
using FastServe.Interop;
using FastServe.Vulkan;

namespace FastServe.Embed;

/// <summary>
/// Where libfastserve.so itself lies, and the backends it registers there. The process's executable is the embedding
/// program's, so the CUDA kernel library and the Vulkan shaders (dist/libfastserve_cuda.so, dist/vulkan/, built beside
/// this one) are looked for next to this library first: the dynamic loader's dladdr names the file an exported function
/// came from.
/// </summary>
internal static unsafe partial class HostLibrary
{
    private static int _registered;

    /// <summary>Registers the "cuda" and "vulkan" backends once per process, told this library's directory (where
    /// libfastserve_cuda.so and vulkan/*.spv lie in dist/). Idempotent, any thread.</summary>
    public static void RegisterBackends()
    {
        if (Interlocked.Exchange(ref _registered, 1) == 1) return;
        string? dir = Directory();
        CudaBackend.Register(dir);
        VulkanBackend.Register(dir);
    }

    /// <summary>The directory of the shared object holding fs_abi_version, or null (not a published library: tests).</summary>
    public static string? Directory()
    {
        try
        {
            DlInfo info;
            if (dladdr((void*)(delegate* unmanaged<uint>)&Exports.AbiVersionExport, &info) == 0 || info.FileName == null) return null;
            string? file = Marshal.PtrToStringUTF8((nint)info.FileName);
            return string.IsNullOrEmpty(file) || !file.Contains('/') ? null : Path.GetDirectoryName(Path.GetFullPath(file));
        }
        catch (Exception)
        {
            return null; // no dladdr (not glibc/musl): the default candidates still apply
        }
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct DlInfo
    {
        public byte* FileName;
        public void* FileBase;
        public byte* SymbolName;
        public void* SymbolAddress;
    }

    [LibraryImport("libc.so.6")]
    private static partial int dladdr(void* address, DlInfo* info);
}
