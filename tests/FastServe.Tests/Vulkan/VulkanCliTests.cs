using System.Diagnostics;
using System.Text.Json;
using FastServe.Protocol;
using FastServe.Tests.Cli;
using FastServe.Tests.Server;
using NUnit.Framework;

namespace FastServe.Tests.Vulkan;

/// <summary>
/// <c>--backend vulkan</c> through the published NativeAOT executable: check-backend passes every case, serve answers
/// a request, and a missing shader directory or Vulkan driver fails in one line with its code and a non-zero exit.
/// The checks that need a device are skipped, saying why, only where dist/fastserve finds none.
/// </summary>
[NonParallelizable]
public sealed class VulkanCliTests
{
    private static (int Code, string Out, string Err) Run(Dictionary<string, string> env, params string[] args)
    {
        var vars = new Dictionary<string, string?> { ["FASTSERVE_VULKAN_SHADERS"] = null };
        foreach (var (k, v) in env) vars[k] = v;
        return CliTests.RunProgram(DistBinary.Path, args, vars, TimeSpan.FromMinutes(2));
    }

    private static void IgnoreWithoutDevice((int Code, string Out, string Err) r)
    {
        if (r.Err.Contains("error[vulkan.no_loader]") || r.Err.Contains("error[vulkan.no_device]"))
            Assert.Ignore($"dist/fastserve finds no Vulkan device: {r.Err.Trim()}");
    }

    private static void AssertOneError((int Code, string Out, string Err) r, params string[] codes)
    {
        Assert.That(r.Code, Is.Not.Zero, r.Err);
        var lines = r.Err.TrimEnd().Split('\n');
        Assert.That(codes.Any(c => lines[0].StartsWith($"error[{c}]")), Is.True, r.Err);
        Assert.That(lines, Has.Length.EqualTo(1), r.Err);
        Assert.That(r.Err, Does.Not.Contain("   at "), "no stack trace");
        Assert.That(r.Err, Does.Not.Contain("fastserve serve:"), "serve fails before starting its processes");
    }

    [Test]
    public void CheckBackendPassesEveryCase()
    {
        var sw = Stopwatch.StartNew();
        var r = Run([], "check-backend", "--backend", "vulkan", "--json");
        IgnoreWithoutDevice(r);
        TestContext.Out.WriteLine($"check-backend --backend vulkan: {sw.Elapsed.TotalSeconds:F1} s");
        Assert.That(r.Code, Is.Zero, r.Err + r.Out);
        using var doc = JsonDocument.Parse(r.Out);
        var root = doc.RootElement;
        Assert.That(root.GetProperty("passed").GetBoolean(), Is.True, r.Out);
        Assert.That(root.GetProperty("failed").GetInt32(), Is.Zero);
        Assert.That(root.GetProperty("skipped").GetInt32(), Is.Zero, "the vulkan backend refuses no case (F32 and BF16 KV alike)");
        Assert.That(root.GetProperty("cases").GetInt32(), Is.GreaterThan(150));
        string device = root.GetProperty("device").GetString()!;
        TestContext.Out.WriteLine($"device: {device}");
        Assert.That(device, Does.Contain($"tiled GEMM from {FastServe.Vulkan.VulkanBackend.TiledMinRows} rows"));
    }

    /// <summary>Each MatMul shader on every MatMul case, whatever the rows: the shared-memory GEMV (what devices without
    /// subgroup arithmetic take), the subgroup GEMV, the tiled GEMM; check-backend's "device" names the one taken.</summary>
    [TestCase("1", "0", "shared-memory GEMV, no tiled GEMM")]
    [TestCase("0", "0", "subgroup GEMV, no tiled GEMM")]
    [TestCase("0", "1", "tiled GEMM from 1 rows")]
    public void EachMatMulPathPasses(string noSubgroups, string tiled, string path)
    {
        var env = new Dictionary<string, string> { ["FASTSERVE_VULKAN_NO_SUBGROUPS"] = noSubgroups, ["FASTSERVE_VULKAN_TILED"] = tiled };
        var r = Run(env, "check-backend", "--backend", "vulkan", "--op", "MatMul", "--json");
        IgnoreWithoutDevice(r);
        Assert.That(r.Code, Is.Zero, r.Err + r.Out);
        using var doc = JsonDocument.Parse(r.Out);
        Assert.That(doc.RootElement.GetProperty("device").GetString(), Does.Contain(path));
        Assert.That(doc.RootElement.GetProperty("cases").GetInt32(), Is.GreaterThan(50));
        Assert.That(doc.RootElement.GetProperty("failed").GetInt32(), Is.Zero);
    }

    [Test]
    public void ServeAnswersARequestAndABenchRun()
    {
        var probe = Run([], "check-backend", "--backend", "vulkan", "--op", "Add");
        IgnoreWithoutDevice(probe);
        // No queue budget (--queue-interval-ms 0): the test is about the backend serving, and lavapipe's speed depends on
        // the machine (a 2-core AMD EPYC without AVX-512 prefills gec-tiny at about 100 tok/s), so a budget would turn a
        // slow machine into overload refusals.
        using var r = ReplicaProcess.Start(["--backend", "vulkan", "--model", Path.Combine(TestModels.RepoRoot, "models", "gec-tiny"), "--workers", "1",
            "--queue-interval-ms", "0"],
            metrics: false, agent: false);
        using var c = RawConnection.Open(r.Port);
        c.Request(1, "Correct: She don't like apples.\nFixed:", 8);
        Assert.That(c.Collect([1]), Is.True, r.Stderr);
        var o = c.Outcomes[1];
        Assert.That(o.Final.Status, Is.EqualTo(WireStatus.Ok), o.Message + r.Stderr);
        Assert.That(o.Ids, Has.Count.EqualTo(8));

        // fastserve bench against it: an open loop well under lavapipe's capacity; every request sent ends ok.
        var b = CliTests.Run("bench", "--port", r.Port.ToString(), "--connections", "2", "--rate", "10", "--duration", "1",
            "--warmup", "0.2", "--drain", "10", "--max-tokens", "8", "--json");
        Assert.That(b.Code, Is.Zero, b.Err + r.Stderr);
        using var doc = JsonDocument.Parse(b.Out);
        var p = doc.RootElement.GetProperty("points")[0];
        Assert.That(p.GetProperty("sent").GetInt64(), Is.GreaterThanOrEqualTo(5));
        Assert.That(p.GetProperty("ok").GetInt64(), Is.EqualTo(p.GetProperty("sent").GetInt64()), b.Out);
    }

    private static IEnumerable<TestCaseData> Commands()
    {
        string tiny = Path.Combine(TestModels.RepoRoot, "models", "gec-tiny");
        yield return new TestCaseData((object)new[] { "generate", "--model", tiny, "--max-tokens", "2", "hi" }).SetArgDisplayNames("generate");
        yield return new TestCaseData((object)new[] { "serve", "--model", tiny, "--port", "0", "--workers", "1" }).SetArgDisplayNames("serve");
        yield return new TestCaseData((object)new[] { "check-backend" }).SetArgDisplayNames("check-backend");
    }

    [TestCaseSource(nameof(Commands))]
    public void AnEmptyShaderDirectoryIsOneLine(string[] args)
    {
        string empty = TestModels.TempDir("vkshaders");
        var r = Run(new() { ["FASTSERVE_VULKAN_SHADERS"] = empty }, [.. args, "--backend", "vulkan"]);
        AssertOneError(r, "vulkan.no_shaders");
        Assert.That(r.Err, Does.Contain(empty).And.Contain("FASTSERVE_VULKAN_SHADERS").And.Contain("lacks"));
    }

    [TestCaseSource(nameof(Commands))]
    public void NoVulkanDriverIsOneLine(string[] args)
    {
        var env = new Dictionary<string, string> { ["VK_ICD_FILENAMES"] = "/nonexistent/icd.json", ["VK_DRIVER_FILES"] = "/nonexistent/icd.json" };
        var r = Run(env, [.. args, "--backend", "vulkan"]);
        AssertOneError(r, "vulkan.no_device", "vulkan.no_loader");
    }
}
