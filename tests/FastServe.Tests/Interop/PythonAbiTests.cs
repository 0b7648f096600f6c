using System.Diagnostics;
using System.Reflection;
using System.Text.Json;
using System.Text.RegularExpressions;
using FastServe.Interop;
using NUnit.Framework;

namespace FastServe.Tests.Interop;

/// <summary>
/// bench/gpu/fastserve_abi.py, through which the Python GPU scripts (ops_check.py, gemm_compare.py) see
/// native/include/fastserve_cuda.h: the table it parses from the header against the header's FS_API list and the C#
/// bindings (which DeviceInfoLayoutTests checks against the header), and its refusal of a library with another ABI
/// version or a missing export, in the scripts themselves too. Stand-in libraries are compiled with clang; no GPU.
/// </summary>
public partial class PythonAbiTests
{
    private static string GpuDir => Path.Combine(TestModels.RepoRoot, "bench", "gpu");
    private static string Header => Path.Combine(TestModels.RepoRoot, "native", "include", "fastserve_cuda.h");

    private static string Python()
    {
        foreach (var dir in (Environment.GetEnvironmentVariable("PATH") ?? "/usr/bin").Split(':'))
        {
            string p = Path.Combine(dir, "python3");
            if (File.Exists(p)) return p;
        }
        Assert.Ignore("python3 is not installed (./test.sh installs it)");
        return "";
    }

    private static (int Code, string Out, string Err) Run(string script, Dictionary<string, string>? env, params string[] args)
    {
        var psi = new ProcessStartInfo(Python()) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add(Path.Combine(GpuDir, script));
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.Environment.Remove("FAKE_FS_ABI");
        if (env is not null) foreach (var (k, v) in env) psi.Environment[k] = v;
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(TimeSpan.FromMinutes(1))) { p.Kill(true); Assert.Fail($"{script} timed out"); }
        return (p.ExitCode, stdout.Result, stderr.Result);
    }

    private static string FakeLibrary()
    {
        string? dir = FakeCuda.Directory;
        if (dir is null) Assert.Ignore("clang is not installed; the stand-in library cannot be built");
        return Path.Combine(dir!, "libfastserve_cuda.so");
    }

    [Test]
    public void TableMatchesTheHeaderAndTheCSharpBindings()
    {
        var r = Run("fastserve_abi.py", null, "--json");
        Assert.That(r.Code, Is.Zero, r.Err);
        using var doc = JsonDocument.Parse(r.Out);
        var root = doc.RootElement;
        Assert.That(root.GetProperty("abi_version").GetInt32(), Is.EqualTo(FastServeCuda.AbiVersion));

        string header = CommentRegex().Replace(File.ReadAllText(Header), " ");
        var declared = FunctionRegex().Matches(header).Select(m => (Name: m.Groups[1].Value, Args: m.Groups[2].Value)).ToList();
        var functions = root.GetProperty("functions");
        Assert.That(functions.EnumerateObject().Select(f => f.Name), Is.EqualTo(declared.Select(d => d.Name)), "the header's FS_API functions, in order");

        var bindings = typeof(FastServeCuda).GetMethods(BindingFlags.Public | BindingFlags.Static).ToDictionary(m => m.Name);
        foreach (var (name, cArgs) in declared)
        {
            var f = functions.GetProperty(name);
            var argtypes = f.GetProperty("argtypes").EnumerateArray().Select(a => a.GetString()!).ToArray();
            string flat = Regex.Replace(cArgs, @"\s+", " ").Trim();
            int count = flat is "" or "void" ? 0 : flat.Split(',').Length;
            Assert.That(argtypes, Has.Length.EqualTo(count), $"{name}: argument count against the header");
            var method = bindings[name];
            var csParams = method.GetParameters();
            Assert.That(argtypes, Has.Length.EqualTo(csParams.Length), $"{name}: argument count against FastServeCuda");
            for (int i = 0; i < argtypes.Length; i++)
                Assert.That(Same(argtypes[i], csParams[i].ParameterType), $"{name}: argument {i} is {argtypes[i]} in Python, {csParams[i].ParameterType.Name} in C#");
            string restype = f.GetProperty("restype").GetString()!;
            Assert.That(Same(restype, method.ReturnType), $"{name}: returns {restype} in Python, {method.ReturnType.Name} in C#");
        }

        var constants = root.GetProperty("constants");
        Assert.That(constants.GetProperty("FS_OK").GetInt32(), Is.EqualTo(FsStatus.Ok));
        Assert.That(constants.GetProperty("FS_ERR_UNSUPPORTED").GetInt32(), Is.EqualTo(FsStatus.Unsupported));
        Assert.That(constants.GetProperty("FS_ERR_CUDA").GetInt32(), Is.EqualTo(FsStatus.Cuda));
        Assert.That(constants.GetProperty("FS_F32").GetInt32(), Is.EqualTo(FsDType.F32));
        Assert.That(constants.GetProperty("FS_F16").GetInt32(), Is.EqualTo(FsDType.F16));
        Assert.That(constants.GetProperty("FS_BF16").GetInt32(), Is.EqualTo(FsDType.BF16));
        Assert.That(constants.GetProperty("FS_F8E4M3").GetInt32(), Is.EqualTo(FsDType.F8E4M3));
    }

    /// <summary>A ctypes type name against the C# binding's type, as both map the header's C types.</summary>
    private static bool Same(string ctype, Type t) => ctype switch
    {
        "c_void_p" => t == typeof(nint) || t.IsPointer,
        "c_char_p" => t == typeof(byte).MakePointerType(),
        "c_int" => t == typeof(int),
        "c_float" => t == typeof(float),
        "c_ulong" => t == typeof(nuint) || t == typeof(ulong), // size_t and uint64_t: ctypes names both c_ulong on LP64
        _ => false,
    };

    [Test]
    public void ALibraryOfTheHeadersVersionIsAccepted()
    {
        string lib = FakeLibrary();
        var r = Run("fastserve_abi.py", null, "--lib", lib);
        Assert.That(r.Code, Is.Zero, r.Err);
        Assert.That(r.Out, Does.Contain($"ABI version {FastServeCuda.AbiVersion}, 17 functions: ok"));
    }

    [TestCase("fastserve_abi.py", 1)]
    [TestCase("ops_check.py", 2)]
    [TestCase("gemm_compare.py", 2)]
    public void AnotherAbiVersionIsRefused(string script, int code)
    {
        string lib = FakeLibrary();
        int other = FastServeCuda.AbiVersion + 1;
        var r = Run(script, new() { ["FAKE_FS_ABI"] = $"{other}" }, "--lib", lib);
        Assert.That(r.Code, Is.EqualTo(code), r.Out + r.Err);
        string prefix = Path.GetFileNameWithoutExtension(script);
        Assert.That(r.Err, Does.StartWith($"{prefix}: {lib} has ABI version {other}, but ")
            .And.Contain($"(FS_CUDA_ABI_VERSION) is {FastServeCuda.AbiVersion}: rebuild the library from this checkout"));
    }

    [TestCase("fastserve_abi.py", 1)]
    [TestCase("ops_check.py", 2)]
    [TestCase("gemm_compare.py", 2)]
    public void AMissingExportIsRefused(string script, int code)
    {
        string? clang = FakeCuda.Clang();
        if (clang is null) Assert.Ignore("clang is not installed; the stand-in library cannot be built");
        string dir = TestModels.TempDir("pyabi");
        string src = Path.Combine(dir, "partial.c"), lib = Path.Combine(dir, "libpartial.so");
        File.WriteAllText(src, $"int fs_cuda_abi_version(void) {{ return {FastServeCuda.AbiVersion}; }}\nconst char* fs_cuda_last_error(void) {{ return \"\"; }}\n");
        FakeCuda.Run(clang, ["-shared", "-fPIC", "-o", lib, src]);
        var r = Run(script, null, "--lib", lib);
        Assert.That(r.Code, Is.EqualTo(code), r.Out + r.Err);
        Assert.That(r.Err, Does.Contain($"{lib} lacks fs_cuda_device_count, fs_cuda_device_info_get, fs_cuda_init,").And.Contain("fs_cuda_sample_workspace_bytes of "));
    }

    /// <summary>The kernel library this checkout built (where a CUDA toolkit exists: always under CI) passes the check.</summary>
    [Test]
    public void TheBuiltLibraryMatches()
    {
        string lib = Path.Combine(TestModels.RepoRoot, "dist", "libfastserve_cuda.so");
        if (!File.Exists(lib)) Assert.Ignore($"{lib} was not built (no CUDA toolkit; FASTSERVE_CUDA=1 ./build.sh installs one)");
        var r = Run("fastserve_abi.py", null, "--lib", lib);
        Assert.That(r.Code, Is.Zero, r.Err);
    }

    [GeneratedRegex(@"/\*.*?\*/", RegexOptions.Singleline)]
    private static partial Regex CommentRegex();

    [GeneratedRegex(@"FS_API\s+(?:const\s+)?[a-z_0-9]+\s*\**\s*(fs_cuda_[a-z_0-9]+)\s*\(([^)]*)\)\s*;")]
    private static partial Regex FunctionRegex();
}
