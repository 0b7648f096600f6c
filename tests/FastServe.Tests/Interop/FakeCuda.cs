using System.Diagnostics;
using FastServe.Interop;
using NUnit.Framework;

namespace FastServe.Tests.Interop;

/// <summary>
/// Test fixtures for machines without a GPU: a stand-in libcuda.so.1 and libfastserve_cuda.so compiled with clang,
/// whose answers are set by environment variables, so the published executable's cuda checks can be driven past the
/// driver (device count, compute capability, kernel library, ABI, library init). They implement only what those
/// checks call; nothing here computes anything.
/// </summary>
internal static class FakeCuda
{
    private static readonly Lazy<string?> _dir = new(Build);

    public static string? Clang()
    {
        foreach (var dir in (Environment.GetEnvironmentVariable("PATH") ?? "/usr/bin").Split(':'))
        {
            string p = Path.Combine(dir, "clang");
            if (File.Exists(p)) return p;
        }
        return null;
    }

    /// <summary>Directory holding libcuda.so.1 (FASTSERVE_CUDA_DRIVER points at it) and libfastserve_cuda.so, or
    /// null without clang.</summary>
    public static string? Directory => _dir.Value;

    public static string Run(string exe, string[] args)
    {
        var psi = new ProcessStartInfo(exe) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var o = p.StandardOutput.ReadToEndAsync();
        var e = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(TimeSpan.FromMinutes(2))) { p.Kill(true); Assert.Fail($"{exe} timed out"); }
        Assert.That(p.ExitCode, Is.Zero, $"{exe} {string.Join(' ', args)}: {e.Result}");
        return o.Result;
    }

    private static string? Build()
    {
        string? clang = Clang();
        if (clang is null) return null;
        string dir = TestModels.TempDir("fakecuda");
        string driver = Path.Combine(dir, "driver.c"), kernels = Path.Combine(dir, "kernels.c");
        File.WriteAllText(driver, """
            #include <stdlib.h>
            #include <string.h>
            #include <stddef.h>
            static int env(const char* name, int dflt) { const char* v = getenv(name); return v ? atoi(v) : dflt; }
            int cuInit(unsigned flags) { (void)flags; return env("FAKE_CUDA_INIT", 0); }
            int cuDriverGetVersion(int* v) { *v = env("FAKE_CUDA_DRIVER", 12080); return 0; }
            int cuDeviceGetCount(int* n) { *n = env("FAKE_CUDA_DEVICES", 1); return 0; }
            int cuDeviceGet(int* d, int ordinal) { *d = ordinal; return 0; }
            int cuDeviceGetAttribute(int* v, int attr, int dev) {
                (void)dev;
                *v = attr == 75 ? env("FAKE_CUDA_MAJOR", 9) : attr == 76 ? 0 : 132;
                return 0;
            }
            int cuDeviceTotalMem_v2(size_t* b, int dev) { (void)dev; *b = (size_t)80 << 30; return 0; }
            int cuDeviceGetName(char* name, int len, int dev) { (void)dev; strncpy(name, "Fake GPU", (size_t)len); return 0; }
            int cuDevicePrimaryCtxRetain(void** ctx, int dev) { (void)dev; *ctx = (void*)0x1000; return 0; }
            int cuDevicePrimaryCtxRelease_v2(int dev) { (void)dev; return 0; }
            int cuCtxSetCurrent(void* ctx) { (void)ctx; return 0; }
            int cuGetErrorName(int e, const char** s) { *s = e == 100 ? "CUDA_ERROR_NO_DEVICE" : "CUDA_ERROR_UNKNOWN"; return 0; }
            int cuGetErrorString(int e, const char** s) { *s = e == 100 ? "no CUDA-capable device is detected" : "unknown error"; return 0; }
            """);
        File.WriteAllText(kernels, $$"""
            #include <stdlib.h>
            #include <stddef.h>
            static int env(const char* name, int dflt) { const char* v = getenv(name); return v ? atoi(v) : dflt; }
            int fs_cuda_abi_version(void) { return env("FAKE_FS_ABI", {{FastServeCuda.AbiVersion}}); }
            const char* fs_cuda_last_error(void) { return "this build of the kernels has no code for sm_90 (fake library)"; }
            int fs_cuda_device_count(int* n) { *n = 1; return 0; }
            int fs_cuda_device_info_get(int d, void* info) { (void)d; (void)info; return 4; }
            int fs_cuda_init(int device) { (void)device; return 4; }
            #define STUB(name) int name(void) { return 4; }
            STUB(fs_cuda_embedding) STUB(fs_cuda_rmsnorm) STUB(fs_cuda_add_rmsnorm) STUB(fs_cuda_add) STUB(fs_cuda_matmul)
            STUB(fs_cuda_rope) STUB(fs_cuda_silu_gate) STUB(fs_cuda_kv_store) STUB(fs_cuda_attention) STUB(fs_cuda_gather_rows)
            STUB(fs_cuda_sample)
            size_t fs_cuda_sample_workspace_bytes(int rows, int vocab) { (void)rows; (void)vocab; return 0; }
            """);
        Run(clang, ["-shared", "-fPIC", "-o", Path.Combine(dir, "libcuda.so.1"), driver]);
        Run(clang, ["-shared", "-fPIC", "-o", Path.Combine(dir, "libfastserve_cuda.so"), kernels]);
        return dir;
    }
}
