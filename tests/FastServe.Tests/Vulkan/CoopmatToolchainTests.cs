using System.Diagnostics;
using NUnit.Framework;

namespace FastServe.Tests.Vulkan;

/// <summary>
/// The scripts that fetch a toolchain from Debian 13 through tools/debian-fetch.sh (native/vulkan/glslc-coopmat.sh,
/// native/cuda12-check.sh, native/vulkan/lavapipe-coopmat.sh): with the mirror unreachable and nothing cached, each fails at once with its network code
/// (2) and one FAIL line on stdout, which is what build.sh and test.sh read. No network is used: the mirror is a
/// closed local port.
/// </summary>
public sealed class CoopmatToolchainTests
{
    [TestCase("native/vulkan/glslc-coopmat.sh", "glslc-coopmat")]
    [TestCase("native/cuda12-check.sh", "cuda12-check")]
    [TestCase("native/vulkan/lavapipe-coopmat.sh", "lavapipe-coopmat")]
    public void UnreachableMirrorWithEmptyCacheFailsWithTheNetworkCode(string script, string name)
    {
        string dir = Path.Combine(Path.GetTempPath(), $"fastserve-debfetch-{Guid.NewGuid():N}");
        try
        {
            var psi = new ProcessStartInfo("bash") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
            psi.ArgumentList.Add(Path.Combine(TestModels.RepoRoot, script));
            psi.ArgumentList.Add(dir);
            psi.Environment["FASTSERVE_DEBIAN_MIRROR"] = "http://127.0.0.1:9";
            foreach (var v in new[] { "FASTSERVE_DEBIAN_KEYRING", "FASTSERVE_DEBIAN_UNSIGNED", "FASTSERVE_CUDA12_UNSIGNED" })
                psi.Environment.Remove(v);
            using var p = Process.Start(psi)!;
            var stdout = p.StandardOutput.ReadToEndAsync();
            var stderr = p.StandardError.ReadToEndAsync();
            if (!p.WaitForExit(TimeSpan.FromMinutes(1))) { p.Kill(true); Assert.Fail($"{script} timed out"); }

            string[] lines = stdout.Result.TrimEnd('\n').Split('\n');
            Assert.That(lines, Has.Length.EqualTo(1), $"stdout: {stdout.Result}\nstderr: {stderr.Result}");
            Assert.That(lines[0], Does.StartWith($"{name}: FAIL (network): "), stderr.Result);
            Assert.That(p.ExitCode, Is.EqualTo(2), stderr.Result);
        }
        finally
        {
            if (Directory.Exists(dir)) Directory.Delete(dir, recursive: true);
        }
    }
}
