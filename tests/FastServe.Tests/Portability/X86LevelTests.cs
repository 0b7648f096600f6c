using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics.X86;
using System.Text.Json;
using FastServe.Runtime.Backends;
using FastServe.Tests.Server;
using NUnit.Framework;

namespace FastServe.Tests.Portability;

/// <summary>
/// One distribution for every x86-64-v3 host (docs/portability.md): dist/fastserve is a launcher that execs
/// dist/fastserve-v4 (AVX-512) or dist/fastserve-v3 (AVX2 + FMA) by CPUID, and refuses older processors in one line.
/// Other processors are emulated with Debian's qemu-user (<c>qemu-x86_64 -cpu MODEL</c>), whose TCG has AVX2 but no
/// AVX-512. qemu-user does not follow execve: under it the launcher runs emulated (its CPUID is the model's) and the
/// build it execs runs natively, so the v3 build itself is emulated by running dist/fastserve-v3 under qemu directly.
/// Skipped, saying so, where qemu-x86_64 is absent (./test.sh installs qemu-user) or the host is not x86-64.
/// </summary>
[NonParallelizable]
public class X86LevelTests
{
    private const string Prompt = "Correct: She don't like apples.\nFixed:";

    private static string Launcher => DistBinary.Path;
    private static string Build(string level) => Path.Combine(Path.GetDirectoryName(Launcher)!, $"fastserve-{level}");
    private static string GecTiny => Path.Combine(TestModels.RepoRoot, "models", "gec-tiny");

    /// <summary>What this host runs, by the same rules as the .NET runtime (the tests run under the JIT, which probes).</summary>
    private static bool HostRunsV4 => Avx512F.IsSupported && Avx512BW.IsSupported && Avx512CD.IsSupported && Avx512DQ.IsSupported && Avx512F.VL.IsSupported;

    private static string Qemu
    {
        get
        {
            if (RuntimeInformation.ProcessArchitecture != Architecture.X64) Assert.Ignore("not an x86-64 host");
            foreach (var dir in (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries))
            {
                string q = Path.Combine(dir, "qemu-x86_64");
                if (File.Exists(q)) return q;
            }
            Assert.Ignore("qemu-x86_64 is not installed (Debian package qemu-user; ./test.sh installs it)");
            return "";
        }
    }

    /// <summary>Runs <paramref name="exe"/>, under <c>qemu-x86_64 -cpu <paramref name="cpu"/></c> unless it is null.
    /// qemu's own lines ("qemu-x86_64: warning: TCG doesn't support requested feature ...") are removed from stderr.</summary>
    private static (int Code, string Out, string Err) Run(string? cpu, string exe, params string[] args)
    {
        var psi = new ProcessStartInfo(cpu is null ? exe : Qemu) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        if (cpu is not null) foreach (var a in new[] { "-cpu", cpu, exe }) psi.ArgumentList.Add(a);
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(TimeSpan.FromMinutes(5))) { p.Kill(true); Assert.Fail($"{cpu ?? "native"}: {exe} {string.Join(' ', args)} timed out"); }
        string err = string.Join("", stderr.Result.Split('\n').Where(l => !l.StartsWith("qemu-x86_64: ") && l.Length > 0).Select(l => l + "\n"));
        return (p.ExitCode, stdout.Result, err);
    }

    private static JsonElement Json(string stdout)
    {
        using var doc = JsonDocument.Parse(stdout);
        return doc.RootElement.Clone();
    }

    [Test]
    public void DistHoldsTheLauncherAndBothBuildsAndPassesExitCodesThrough()
    {
        Assert.That(new FileInfo(Launcher).Length, Is.LessThan(1 << 20), "dist/fastserve should be the small launcher");
        foreach (var level in new[] { "v3", "v4" })
            Assert.That(new FileInfo(Build(level)).Length, Is.GreaterThan(1 << 20), $"dist/fastserve-{level} is missing or not a build");
        var version = Run(null, Launcher, "--version");
        Assert.That(version.Code, Is.Zero, version.Err);
        Assert.That(version.Out, Does.StartWith("1."));
        Assert.That(Run(null, Build("v3"), "--version").Out, Is.EqualTo(version.Out));
        if (HostRunsV4) Assert.That(Run(null, Build("v4"), "--version").Out, Is.EqualTo(version.Out));

        // The build's own exit status and output come back through the launcher: 2 for a bad command line, 1 for an error.
        var bad = Run(null, Launcher, "--no-such-option");
        Assert.That(bad.Code, Is.EqualTo(2), bad.Err);
        var missing = Run(null, Launcher, "generate", "--model", "/nonexistent/model", "--json", "x");
        Assert.That(missing.Code, Is.EqualTo(1), missing.Err);
        Assert.That(Json(missing.Out).GetProperty("error").GetProperty("code").GetString(), Is.EqualTo("model.not_found"));
    }

    [Test]
    public void VersionRunsOnHaswell()
    {
        string native = Run(null, Launcher, "--version").Out;
        var viaLauncher = Run("Haswell", Launcher, "--version");
        Assert.That(viaLauncher.Code, Is.Zero, viaLauncher.Err);
        Assert.That(viaLauncher.Out, Is.EqualTo(native));
        var emulated = Run("Haswell", Build("v3"), "--version");
        Assert.That(emulated.Code, Is.Zero, emulated.Err);
        Assert.That(emulated.Out, Is.EqualTo(native));
    }

    [Test]
    public void TheLauncherPicksTheBuildThisProcessorRuns()
    {
        static string Isa(string? cpu)
        {
            var r = Run(cpu, Launcher, "bench-model", "--model", GecTiny, "--prompt-tokens", "8", "--decode-tokens", "4", "--json");
            Assert.That(r.Code, Is.Zero, r.Err);
            return Json(r.Out).GetProperty("isa").GetString()!;
        }
        Assert.That(Isa(null), Is.EqualTo(HostRunsV4 ? "avx512" : "avx2"), "natively");
        Assert.That(Isa("Haswell"), Is.EqualTo("avx2"), "a Haswell gets fastserve-v3");
    }

    // Every op of the CPU backend on the AVX2 path against the scalar reference, all of it emulated: the whole default
    // case list (202 cases, about 30 s under qemu on a 2-core VM), not a subset.
    [Test]
    public void CheckBackendPassesOnTheAvx2PathOnHaswell()
    {
        var r = Run("Haswell", Build("v3"), "check-backend", "--backend", "cpu", "--json");
        Assert.That(r.Code, Is.Zero, r.Out + r.Err);
        var root = Json(r.Out);
        Assert.That(root.GetProperty("isa").GetString(), Is.EqualTo("avx2"));
        Assert.That(root.GetProperty("passed").GetBoolean(), Is.True);
        Assert.That(root.GetProperty("failed").GetInt32(), Is.Zero);
        Assert.That(root.GetProperty("cases").GetInt32(), Is.EqualTo(BackendCheck.Cases(1).Count));
    }

    [Test]
    public void GenerateOnHaswellMatchesTheSameBuildNatively()
    {
        string[] args = ["generate", "--model", GecTiny, "--max-tokens", "16", "--json", Prompt];
        var emulated = Run("Haswell", Build("v3"), args);
        Assert.That(emulated.Code, Is.Zero, emulated.Err);
        var native = Run(null, Build("v3"), args);
        Assert.That(native.Code, Is.Zero, native.Err);
        var e = Json(emulated.Out);
        Assert.That(e.GetProperty("text").GetString(), Is.EqualTo(" She doesn't like apples.\n"));
        Assert.That(e.GetProperty("token_ids").ToString(), Is.EqualTo(Json(native.Out).GetProperty("token_ids").ToString()));
    }

    [Test]
    public void ClientOnHaswellTalksToANativeReplica()
    {
        using var replica = ReplicaProcess.Start(["--model", GecTiny, "--workers", "1"], metrics: false, agent: false);
        // exec in place: the pid the test started is the build's process, with the launcher's argv[0].
        string exe = new FileInfo($"/proc/{replica.Proc.Id}/exe").LinkTarget ?? "";
        Assert.That(Path.GetFileName(exe), Is.EqualTo(HostRunsV4 ? "fastserve-v4" : "fastserve-v3"));
        string argv0 = File.ReadAllText($"/proc/{replica.Proc.Id}/cmdline").Split('\0')[0];
        Assert.That(argv0, Is.EqualTo(Launcher));

        string[] args = ["client", "--port", replica.Port.ToString(), "--max-tokens", "16", "--json", Prompt];
        var emulated = Run("Haswell", Build("v3"), args);
        Assert.That(emulated.Code, Is.Zero, emulated.Err);
        var native = Run(null, Launcher, args);
        Assert.That(native.Code, Is.Zero, native.Err);
        var e = Json(emulated.Out);
        Assert.That(e.GetProperty("status").GetString(), Is.EqualTo("ok"));
        Assert.That(e.GetProperty("text").GetString(), Is.EqualTo(" She doesn't like apples.\n"));
        Assert.That(e.GetProperty("token_ids").ToString(), Is.EqualTo(Json(native.Out).GetProperty("token_ids").ToString()));

        // SIGTERM reaches the build (no launcher process in between): it drains and exits 0.
        replica.Signal(15);
        Assert.That(replica.Proc.WaitForExit(15_000), Is.True, replica.Stderr);
        Assert.That(replica.Proc.ExitCode, Is.Zero, replica.Stderr);
    }

    [TestCase("Nehalem")]
    [TestCase("Westmere")]
    [TestCase("SandyBridge")]
    public void BelowV3IsOneErrorLineAndExitOne(string cpu)
    {
        var r = Run(cpu, Launcher, "--version");
        Assert.That(r.Code, Is.EqualTo(1), r.Err);
        Assert.That(r.Out, Is.Empty);
        Assert.That(r.Err.TrimEnd('\n').Split('\n'), Has.Length.EqualTo(1), r.Err);
        Assert.That(r.Err, Does.StartWith("error[cpu.unsupported]: this processor lacks AVX2, FMA, ").And.Contain("x86-64-v3"));

        var json = Run(cpu, Launcher, "serve", "--json");
        Assert.That(json.Code, Is.EqualTo(1), json.Err);
        Assert.That(Json(json.Out).GetProperty("error").GetProperty("code").GetString(), Is.EqualTo("cpu.unsupported"));
    }

    // The launcher must require exactly what the .NET runtime requires of fastserve-v3: a feature it forgets lets the
    // build abort ("The required instruction sets are not supported"), one too many locks a processor out. A Haswell
    // with one feature removed, for each x86-64-v3 feature and for two that v3 does not need.
    [TestCase("avx2", "AVX2")]
    [TestCase("fma", "FMA")]
    [TestCase("avx", "AVX")]
    [TestCase("f16c", "F16C")]
    [TestCase("movbe", "MOVBE")]
    [TestCase("abm", "LZCNT")]
    [TestCase("bmi1", "BMI1")]
    [TestCase("bmi2", "BMI2")]
    [TestCase("xsave", "OSXSAVE")]
    [TestCase("sse4.2", "SSE4.2")]
    [TestCase("popcnt", "POPCNT")]
    [TestCase("aes", null)]
    [TestCase("pclmulqdq", null)]
    public void TheLauncherRequiresWhatTheV3BuildRequires(string qemuFeature, string? named)
    {
        string cpu = $"Haswell,-{qemuFeature}";
        var build = Run(cpu, Build("v3"), "--version");
        var launcher = Run(cpu, Launcher, "--version");
        if (named is null)
        {
            Assert.That(build.Code, Is.Zero, $"fastserve-v3 should run without {qemuFeature}: {build.Err}");
            Assert.That(launcher.Code, Is.Zero, launcher.Err);
            return;
        }
        Assert.That(build.Code, Is.Not.Zero, $"fastserve-v3 ran without {qemuFeature}: the runtime does not need it");
        Assert.That(launcher.Code, Is.EqualTo(1), launcher.Err);
        Assert.That(launcher.Err, Does.StartWith("error[cpu.unsupported]: this processor lacks ").And.Contain(named));
    }
}
