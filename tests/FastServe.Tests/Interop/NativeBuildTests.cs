using System.Diagnostics;
using NUnit.Framework;

namespace FastServe.Tests.Interop;

/// <summary>
/// The CTests of the native build (native/CMakeLists.txt), run through ctest in the tree ./build.sh configures,
/// build/native: the smoke test loads dist/libfastserve_cuda.so as the host does and checks what needs no GPU (ABI
/// version, no device without a crash, argument errors), and the CPU test of the E4M3/BF16 conversions the kernels use.
/// They run what ./build.sh last built; without a CUDA compiler nothing is built and they are ignored.
/// </summary>
public class NativeBuildTests
{
    private static string BuildDir => Path.Combine(TestModels.RepoRoot, "build", "native");

    [TestCase("fastserve_cuda_smoke", "fastserve_cuda_smoke")]
    [TestCase("fastserve_cuda_convert", "fastserve_cuda_convert_test")]
    public void CTestPasses(string test, string executable)
    {
        if (!File.Exists(Path.Combine(BuildDir, "CTestTestfile.cmake")))
            Assert.Ignore($"no native build tree at {BuildDir}: run ./build.sh (with cmake installed) first");
        if (!File.Exists(Path.Combine(BuildDir, "native", executable)))
            Assert.Ignore($"{executable} was not built: the native build found no CUDA compiler (FASTSERVE_CUDA=1 ./build.sh installs one)");
        string? ctest = FindOnPath("ctest");
        if (ctest is null) Assert.Ignore("ctest (cmake) is not installed");

        var (code, output) = Run(ctest!, "--test-dir", BuildDir, "--output-on-failure", "--tests-regex", $"^{test}$");
        Assert.That(code, Is.Zero, output);
        Assert.That(output, Does.Contain("100% tests passed, 0 tests failed out of 1"), $"exactly one CTest named {test} ran and passed:\n{output}");
    }

    private static string? FindOnPath(string name) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries)
            .Select(d => Path.Combine(d, name)).FirstOrDefault(File.Exists);

    private static (int Code, string Output) Run(string exe, params string[] args)
    {
        var psi = new ProcessStartInfo(exe) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(TimeSpan.FromMinutes(2))) { p.Kill(true); Assert.Fail($"{exe} {string.Join(' ', args)} timed out"); }
        return (p.ExitCode, stdout.Result + stderr.Result);
    }
}
