using System.Diagnostics;
using FastServe.Tests.Cli;
using NUnit.Framework;

namespace FastServe.Tests.Interop;

/// <summary>
/// `--backend cuda` through the published NativeAOT executable on a machine without a GPU: every command that takes
/// a backend fails with one error line naming what is missing (then the paths tried, one per line, indented) and a
/// non-zero exit, before loading a model or starting processes. A stand-in driver and kernel library (FakeCuda)
/// drive the checks past the driver, which also proves the resolver and [LibraryImport] bindings work after AOT.
/// </summary>
[NonParallelizable]
public class CudaCliTests
{
    private static string Exe => DistBinary.Path;

    private static (int Code, string Out, string Err) Run(Dictionary<string, string> env, params string[] args)
    {
        var vars = new Dictionary<string, string?> { ["FASTSERVE_CUDA_LIB"] = null };
        foreach (var (k, v) in env) vars[k] = v;
        return CliTests.RunProgram(Exe, args, vars, TimeSpan.FromMinutes(1));
    }

    /// <summary>Every command that takes --backend, with what it needs to get as far as creating the backend.</summary>
    private static IEnumerable<TestCaseData> Commands()
    {
        yield return new TestCaseData((object)new[] { "generate", "--model", "@TINY", "--max-tokens", "2", "hi" }).SetArgDisplayNames("generate");
        yield return new TestCaseData((object)new[] { "bench-model", "--model", "@TINY", "--decode-tokens", "1", "--prompt-tokens", "1" }).SetArgDisplayNames("bench-model");
        yield return new TestCaseData((object)new[] { "batch", "--model", "@TINY", "--input", "@INPUT", "--output", "@OUTPUT" }).SetArgDisplayNames("batch");
        yield return new TestCaseData((object)new[] { "bench-engine", "--model", "@TINY", "--rate", "1", "--duration", "1", "--warmup", "0" }).SetArgDisplayNames("bench-engine");
        yield return new TestCaseData((object)new[] { "serve", "--model", "@TINY", "--port", "0", "--workers", "1" }).SetArgDisplayNames("serve");
        yield return new TestCaseData((object)new[] { "serve-engine", "--model", "@TINY", "--ipc", "@IPC" }).SetArgDisplayNames("serve-engine");
        yield return new TestCaseData((object)new[] { "check-backend" }).SetArgDisplayNames("check-backend");
    }

    private static string[] Args(string[] template)
    {
        string tmp = TestModels.TempDir("cudacli");
        string input = Path.Combine(tmp, "in.jsonl");
        File.WriteAllText(input, "{\"prompt\": \"hi\", \"max_tokens\": 2}\n");
        var args = template.Select(a => a switch
        {
            "@TINY" => TestModels.Tiny,
            "@INPUT" => input,
            "@OUTPUT" => Path.Combine(tmp, "out.jsonl"),
            "@IPC" => Path.Combine(tmp, "engine.sock"),
            _ => a,
        }).ToList();
        args.AddRange(["--backend", "cuda"]);
        return [.. args];
    }

    /// <summary>One error line with the code, first; what follows it is the list of paths tried, indented.</summary>
    private static void AssertOneError((int Code, string Out, string Err) r, string code)
    {
        Assert.That(r.Code, Is.Not.Zero, r.Err);
        var lines = r.Err.TrimEnd().Split('\n');
        Assert.That(lines[0], Does.StartWith($"error[{code}]"), r.Err);
        Assert.That(lines.Count(l => l.StartsWith("error[")), Is.EqualTo(1), r.Err);
        Assert.That(lines.Skip(1), Has.All.StartWith("  "), r.Err);
        Assert.That(r.Err, Does.Not.Contain("   at "), "no stack trace");
        Assert.That(r.Err, Does.Not.Contain("fastserve serve:"), "serve fails before starting its processes");
    }

    private static Dictionary<string, string> NoDriver() => new() { ["FASTSERVE_CUDA_DRIVER"] = "/nonexistent/libcuda.so.1" };

    [TestCaseSource(nameof(Commands))]
    public void NoDriverIsOneLine(string[] template)
    {
        var r = Run(NoDriver(), Args(template));
        AssertOneError(r, "cuda.no_driver");
        Assert.That(r.Err.TrimEnd().Split('\n')[1], Is.EqualTo("  /nonexistent/libcuda.so.1 ($FASTSERVE_CUDA_DRIVER): no such file"));
    }

    /// <summary>This machine as it is, with the default driver search: whatever is missing, one line naming it.
    /// (Where libcuda is absent that is cuda.no_driver and lists libcuda.so.1 and libcuda.so.)</summary>
    [Test]
    public void MachineAsItIsGetsOneLine()
    {
        var r = Run(new(), "check-backend", "--backend", "cuda");
        Assert.That(r.Code, Is.Not.Zero);
        string code = r.Err.Split('\n')[0].Split(']')[0].Replace("error[", "");
        Assert.That(code, Is.AnyOf("cuda.no_driver", "cuda.no_device", "cuda.unsupported_device", "cuda.no_library"), r.Err);
        AssertOneError(r, code);
        if (code == "cuda.no_driver") Assert.That(r.Err, Does.Contain("  libcuda.so.1 (default search): ").And.Contain("  libcuda.so (default search): "));
        TestContext.Out.WriteLine(r.Err);
    }

    [Test]
    public void NoDriverWithJsonIsAnErrorObject()
    {
        var r = Run(NoDriver(), "check-backend", "--backend", "cuda", "--json");
        Assert.That(r.Code, Is.Not.Zero);
        using var doc = System.Text.Json.JsonDocument.Parse(r.Out);
        Assert.That(doc.RootElement.GetProperty("error").GetProperty("code").GetString(), Is.EqualTo("cuda.no_driver"));
    }

    private static Dictionary<string, string> Fake(params (string Key, string Value)[] extra)
    {
        string dir = FakeCuda.Directory ?? throw new IgnoreException("clang is not installed: no stand-in driver");
        var env = new Dictionary<string, string> { ["FASTSERVE_CUDA_DRIVER"] = Path.Combine(dir, "libcuda.so.1") };
        foreach (var (k, v) in extra) env[k] = v;
        return env;
    }

    [TestCaseSource(nameof(Commands))]
    public void NoDeviceIsOneLine(string[] template) =>
        AssertOneError(Run(Fake(("FAKE_CUDA_DEVICES", "0")), Args(template)), "cuda.no_device");

    [Test]
    public void DriverWithoutDevicesAtInit()
    {
        var r = Run(Fake(("FAKE_CUDA_INIT", "100")), "check-backend", "--backend", "cuda");
        AssertOneError(r, "cuda.no_device");
    }

    [Test]
    public void OldDriverIsNoDriver()
    {
        var r = Run(Fake(("FAKE_CUDA_DRIVER", "11020")), "check-backend", "--backend", "cuda");
        AssertOneError(r, "cuda.no_driver");
        Assert.That(r.Err, Does.Contain("11.2"));
    }

    [TestCaseSource(nameof(Commands))]
    public void OldGpuIsUnsupported(string[] template)
    {
        var r = Run(Fake(("FAKE_CUDA_MAJOR", "7")), Args(template));
        AssertOneError(r, "cuda.unsupported_device");
        Assert.That(r.Err, Does.Contain("Fake GPU").And.Contain("7.0"));
    }

    /// <summary>A library named by FASTSERVE_CUDA_LIB is that library or an error naming it, even where dist/ holds
    /// a built one (the resolver's order without the variable is checked in NativeLibraryResolverTests).</summary>
    [TestCaseSource(nameof(Commands))]
    public void MissingNamedLibraryIsNamedAndNothingElseIsLoaded(string[] template)
    {
        string missing = Path.Combine(TestModels.TempDir("nolib"), "libfastserve_cuda.so");
        var r = Run(Fake(("FASTSERVE_CUDA_LIB", missing)), Args(template));
        AssertOneError(r, "cuda.no_library");
        var lines = r.Err.TrimEnd().Split('\n');
        Assert.That(lines[1], Is.EqualTo($"  {missing} ($FASTSERVE_CUDA_LIB): no such file"));
        Assert.That(lines, Has.Length.EqualTo(2), r.Err);
    }

    [Test]
    public void NonLibraryFileIsNamedWithTheLoadersReason()
    {
        string notLib = Path.Combine(TestModels.TempDir("notlib"), "libfastserve_cuda.so");
        File.WriteAllText(notLib, new string('#', 4096));
        var r = Run(Fake(("FASTSERVE_CUDA_LIB", notLib)), "generate", "--model", TestModels.Tiny, "--backend", "cuda", "hi");
        AssertOneError(r, "cuda.no_library");
        Assert.That(r.Err.Split('\n')[1], Does.StartWith($"  {notLib} ($FASTSERVE_CUDA_LIB): ").And.Contain("ELF"));
    }

    [Test]
    public void OtherAbiVersionIsRefused()
    {
        var env = Fake(("FAKE_FS_ABI", "3"));
        env["FASTSERVE_CUDA_LIB"] = Path.Combine(FakeCuda.Directory!, "libfastserve_cuda.so");
        var r = Run(env, "check-backend", "--backend", "cuda");
        AssertOneError(r, "cuda.abi_mismatch");
        Assert.That(r.Err, Does.Contain("ABI version 3").And.Contain("needs 2"));
    }

    /// <summary>Past every check the backend is created: the context is retained and fs_cuda_init runs, and its
    /// refusal comes back with the library's own message.</summary>
    [Test]
    public void LibraryRefusingTheDeviceSaysWhy()
    {
        var env = Fake();
        env["FASTSERVE_CUDA_LIB"] = Path.Combine(FakeCuda.Directory!, "libfastserve_cuda.so");
        var r = Run(env, "check-backend", "--backend", "cuda");
        AssertOneError(r, "cuda.unsupported_device");
        Assert.That(r.Err, Does.Contain("fs_cuda_init failed: FS_ERR_UNSUPPORTED").And.Contain("no code for sm_90"));
    }

    /// <summary>The same refusal under serve passes the supervisor's checks and comes from the engine child: the
    /// supervisor stops with its error instead of restarting a child that can only refuse again.</summary>
    [Test]
    public void ServeStopsWhenItsEngineRefusesToStart()
    {
        var env = Fake();
        env["FASTSERVE_CUDA_LIB"] = Path.Combine(FakeCuda.Directory!, "libfastserve_cuda.so");
        var sw = Stopwatch.StartNew();
        var r = Run(env, Args(["serve", "--model", "@TINY", "--port", "0", "--workers", "1"]));
        Assert.That(r.Code, Is.EqualTo(1), r.Err);
        Assert.That(r.Err, Does.Contain("error[cuda.unsupported_device]").And.Contain("no code for sm_90"));
        Assert.That(r.Err, Does.Contain("refused to start"));
        Assert.That(r.Err, Does.Not.Contain("restarting"), "no restart loop");
        TestContext.Out.WriteLine($"serve stopped in {sw.ElapsedMilliseconds} ms:\n{r.Err}");
    }
}
