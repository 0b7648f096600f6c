using System.Diagnostics;
using System.Reflection;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Text.RegularExpressions;
using FastServe.Interop;
using NUnit.Framework;

namespace FastServe.Tests.Interop;

/// <summary>
/// The C# side of native/include/fastserve_cuda.h: fs_cuda_device_info's layout (by hand, and as a C compiler lays it
/// out from the header itself when clang is present), the ABI version, and one binding per header function with the
/// header's parameter types. None of this needs a GPU or the kernel library.
/// </summary>
public partial class DeviceInfoLayoutTests
{
    private static string Header => Path.Combine(TestModels.RepoRoot, "native", "include", "fastserve_cuda.h");

    // LP64 by hand: char[256] at 0; three ints at 256, 260, 264; size_t aligned to 8 -> 272 (4 bytes of padding);
    // three ints at 280, 284, 288; the struct's alignment is 8, so 292 rounds up to 296.
    private static readonly (string Field, int Offset)[] Expected =
    [
        ("Name", 0), ("Major", 256), ("Minor", 260), ("Multiprocessors", 264), ("TotalMemory", 272),
        ("DriverVersion", 280), ("RuntimeVersion", 284), ("Fp8TensorCores", 288),
    ];

    [Test]
    public void DeviceInfoMatchesHandComputedLayout()
    {
        Assert.That(Marshal.SizeOf<FsCudaDeviceInfo>(), Is.EqualTo(296));
        Assert.That(Unsafe.SizeOf<FsCudaDeviceInfo>(), Is.EqualTo(296));
        foreach (var (field, offset) in Expected)
            Assert.That((int)Marshal.OffsetOf<FsCudaDeviceInfo>(field), Is.EqualTo(offset), field);
    }

    [Test]
    public unsafe void DeviceInfoFieldAddressesMatchOffsets()
    {
        FsCudaDeviceInfo info;
        byte* b = (byte*)&info;
        Assert.That((byte*)info.Name - b, Is.EqualTo(0));
        Assert.That((byte*)&info.Major - b, Is.EqualTo(256));
        Assert.That((byte*)&info.Multiprocessors - b, Is.EqualTo(264));
        Assert.That((byte*)&info.TotalMemory - b, Is.EqualTo(272));
        Assert.That((byte*)&info.Fp8TensorCores - b, Is.EqualTo(288));
    }

    [Test]
    public void DeviceInfoMatchesCompiledHeader()
    {
        string? clang = FakeCuda.Clang();
        if (clang is null) Assert.Ignore("clang is not installed; the hand-computed layout test still ran");
        string dir = TestModels.TempDir("layout");
        string src = Path.Combine(dir, "layout.c"), exe = Path.Combine(dir, "layout");
        File.WriteAllText(src, """
            #include <stdio.h>
            #include <stddef.h>
            #include "fastserve_cuda.h"
            int main(void) {
                printf("size %zu\n", sizeof(fs_cuda_device_info));
                printf("Name %zu\nMajor %zu\nMinor %zu\nMultiprocessors %zu\nTotalMemory %zu\n",
                    offsetof(fs_cuda_device_info, name), offsetof(fs_cuda_device_info, major), offsetof(fs_cuda_device_info, minor),
                    offsetof(fs_cuda_device_info, multiprocessors), offsetof(fs_cuda_device_info, total_memory));
                printf("DriverVersion %zu\nRuntimeVersion %zu\nFp8TensorCores %zu\n", offsetof(fs_cuda_device_info, driver_version),
                    offsetof(fs_cuda_device_info, runtime_version), offsetof(fs_cuda_device_info, fp8_tensor_cores));
                return 0;
            }
            """);
        FakeCuda.Run(clang, ["-I", Path.GetDirectoryName(Header)!, "-o", exe, src]);
        var lines = FakeCuda.Run(exe, []).Split('\n', StringSplitOptions.RemoveEmptyEntries)
            .Select(l => l.Split(' ')).ToDictionary(p => p[0], p => int.Parse(p[1]));
        Assert.That(lines["size"], Is.EqualTo(Marshal.SizeOf<FsCudaDeviceInfo>()), "sizeof");
        foreach (var (field, _) in Expected)
            Assert.That((int)Marshal.OffsetOf<FsCudaDeviceInfo>(field), Is.EqualTo(lines[field]), field);
    }

    [Test]
    public void AbiVersionMatchesHeader()
    {
        var m = AbiVersionRegex().Match(File.ReadAllText(Header));
        Assert.That(m.Success, "FS_CUDA_ABI_VERSION not found in the header");
        Assert.That(FastServeCuda.AbiVersion, Is.EqualTo(int.Parse(m.Groups[1].Value)));
    }

    /// <summary>Every FS_API function has a binding of the same name whose parameters map the header's C types:
    /// int → int, float → float, size_t → nuint, uint64_t → ulong, enums → int, pointers and fs_stream → nint or a pointer.</summary>
    [Test]
    public void EveryHeaderFunctionIsBoundWithMatchingTypes()
    {
        string text = CommentRegex().Replace(File.ReadAllText(Header), " ");
        var functions = FunctionRegex().Matches(text);
        Assert.That(functions, Has.Count.GreaterThanOrEqualTo(17));
        var bindings = typeof(FastServeCuda).GetMethods(BindingFlags.Public | BindingFlags.Static).Where(m => m.Name.StartsWith("fs_cuda_")).ToDictionary(m => m.Name);
        var exportNames = new List<string>();
        foreach (Match f in functions)
        {
            string name = f.Groups[2].Value;
            exportNames.Add(name);
            Assert.That(bindings.TryGetValue(name, out var method), $"{name} has no binding");
            Assert.That(method!.GetCustomAttribute<LibraryImportAttribute>()?.LibraryName, Is.EqualTo(NativeLibraries.Kernels), $"{name}: [LibraryImport] of the kernel library");
            Assert.That(Matches(f.Groups[1].Value.Trim(), method!.ReturnType), $"{name}: return type {method.ReturnType.Name} for {f.Groups[1].Value}");
            string args = Regex.Replace(f.Groups[3].Value, @"\s+", " ").Trim();
            var cParams = args is "void" or "" ? [] : args.Split(',').Select(p => p.Trim()).ToArray();
            var csParams = method.GetParameters();
            Assert.That(csParams, Has.Length.EqualTo(cParams.Length), $"{name}: parameter count");
            for (int i = 0; i < cParams.Length; i++)
                Assert.That(Matches(cParams[i], csParams[i].ParameterType), $"{name}: parameter {i} '{cParams[i]}' bound as {csParams[i].ParameterType.Name}");
        }
        Assert.That(bindings.Keys, Is.EquivalentTo(exportNames), "FastServeCuda binds exactly the header's functions, none it lacks");
        Assert.That(CudaEnvironmentExports(), Is.EquivalentTo(exportNames), "the export check lists exactly the header's functions");
    }

    private static IEnumerable<string> CudaEnvironmentExports() =>
        (string[])typeof(CudaEnvironment).GetField("KernelExports", BindingFlags.NonPublic | BindingFlags.Static)!.GetValue(null)!;

    private static bool Matches(string cDecl, Type t)
    {
        // The C type is the declaration without its parameter name.
        string c = Regex.Replace(cDecl, @"\b[a-z_][a-z0-9_]*$", "").Trim();
        if (c.Length == 0) c = cDecl; // a return type has no name
        if (c.Contains('*') || c == "fs_stream") return t == typeof(nint) || t.IsPointer;
        return c switch
        {
            "int" or "fs_status" or "fs_dtype" or "FS_API int" or "FS_API fs_status" => t == typeof(int),
            "float" => t == typeof(float),
            "size_t" or "FS_API size_t" => t == typeof(nuint),
            "uint64_t" => t == typeof(ulong),
            _ => false,
        };
    }

    [GeneratedRegex(@"#define\s+FS_CUDA_ABI_VERSION\s+(\d+)")]
    private static partial Regex AbiVersionRegex();

    [GeneratedRegex(@"/\*.*?\*/", RegexOptions.Singleline)]
    private static partial Regex CommentRegex();

    [GeneratedRegex(@"FS_API\s+((?:const\s+)?[a-z_0-9]+\s*\**)\s*(fs_cuda_[a-z_0-9]+)\s*\(([^)]*)\)\s*;")]
    private static partial Regex FunctionRegex();
}
