using System.Diagnostics;
using System.Runtime.Intrinsics.X86;
using System.Text.Json;
using FastServe.Tests.Cli;
using NUnit.Framework;

namespace FastServe.Tests.Vulkan;

/// <summary>
/// The cooperative-matrix MatMul (native/vulkan/shaders/coopmat/matmul_coopmat.comp) run, not just compiled: on a
/// lavapipe that offers VK_KHR_cooperative_matrix (Debian 13 backports' Mesa; Debian 12's lacks it), fetched by
/// native/vulkan/lavapipe-coopmat.sh, whose wrapper runs the published executable on Debian 13's loader and libraries.
/// test.sh sets <see cref="WrapperVariable"/> to that wrapper when the cooperative-matrix shaders are built
/// (FASTSERVE_VULKAN_COOPMAT=1, as under CI); without it these tests are skipped, saying so.
/// check-backend passes every case with the path taken, and with it forced for every row count; the gec-small model
/// quantized to FP8 gives the cpu backend's greedy tokens with every MatMul on it, and so does the batching engine on
/// 24 requests at once (prefill and decode batches of 16 rows or more take the path by default).
/// </summary>
[NonParallelizable]
public sealed class VulkanCoopmatLavapipeTests
{
    /// <summary>The path of native/vulkan/lavapipe-coopmat.sh's with-lavapipe wrapper.</summary>
    public const string WrapperVariable = "FASTSERVE_LAVAPIPE_COOPMAT";

    private static string Wrapper()
    {
        string? w = Environment.GetEnvironmentVariable(WrapperVariable);
        if (string.IsNullOrEmpty(w))
            Assert.Ignore($"{WrapperVariable} is unset: no lavapipe with VK_KHR_cooperative_matrix (native/vulkan/lavapipe-coopmat.sh " +
                          "fetches one; test.sh sets it with FASTSERVE_VULKAN_COOPMAT=1, as CI does)");
        Assert.That(File.Exists(w), Is.True, $"{WrapperVariable}={w} does not exist");
        return w!;
    }

    // The wrapper runs an ELF file through another loader, so not dist/fastserve (the launcher execs a build, which
    // would run on the host's libraries) but the build the launcher would pick.
    private static string Build()
    {
        string dist = Path.GetDirectoryName(DistBinary.Path)!;
        foreach (string level in Avx512F.IsSupported && Avx512BW.IsSupported && Avx512CD.IsSupported && Avx512DQ.IsSupported && Avx512F.VL.IsSupported
                     ? ["v4", "v3"] : new[] { "v3" })
        {
            string exe = Path.Combine(dist, $"fastserve-{level}");
            if (File.Exists(exe)) return exe;
        }
        Assert.Fail($"no fastserve-v4 or fastserve-v3 this processor runs in {dist}");
        return "";
    }

    private static (int Code, string Out, string Err) Run(Dictionary<string, string> env, params string[] args)
    {
        string exe = Build();
        // The executable finds its shaders beside itself; under another loader "itself" is that loader.
        var vars = new Dictionary<string, string?>
        {
            ["FASTSERVE_VULKAN_SHADERS"] = Path.Combine(Path.GetDirectoryName(exe)!, "vulkan"),
            ["FASTSERVE_VULKAN_TILED"] = null,
            ["FASTSERVE_VULKAN_NO_COOPMAT"] = null,
        };
        foreach (var (k, v) in env) vars[k] = v;
        return CliTests.RunProgram(Wrapper(), [exe, .. args], vars, TimeSpan.FromMinutes(3));
    }

    private static JsonElement CheckBackend(Dictionary<string, string> env, params string[] extra)
    {
        var sw = Stopwatch.StartNew();
        var r = Run(env, ["check-backend", "--backend", "vulkan", "--json", .. extra]);
        TestContext.Out.WriteLine($"check-backend --backend vulkan {string.Join(' ', extra)}: {sw.Elapsed.TotalSeconds:F1} s");
        Assert.That(r.Code, Is.Zero, r.Err + r.Out);
        using var doc = JsonDocument.Parse(r.Out);
        var root = doc.RootElement.Clone();
        string device = root.GetProperty("device").GetString()!;
        TestContext.Out.WriteLine($"device: {device}");
        Assert.That(device, Does.Contain("Mesa").Or.Contain("llvmpipe"), "the wrapper's lavapipe");
        Assert.That(device, Does.Match(@"cooperative matrix \d+x\d+x\d+ f16 on subgroups of \d+ for f16 and fp8 weights"),
            "the cooperative-matrix path is offered and taken");
        Assert.That(device, Does.Not.Contain("refused"), "the driver built its pipeline");
        Assert.That(root.GetProperty("failed").GetInt32(), Is.Zero, r.Out);
        return root;
    }

    [Test]
    public void CheckBackendPassesEveryCaseOnTheCooperativeMatrixPath()
    {
        var root = CheckBackend([]);
        Assert.That(root.GetProperty("passed").GetBoolean(), Is.True);
        Assert.That(root.GetProperty("skipped").GetInt32(), Is.Zero);
        Assert.That(root.GetProperty("cases").GetInt32(), Is.GreaterThan(150));
    }

    /// <summary>From one row up (FASTSERVE_VULKAN_TILED=1: the GEMM branch, where f16 and fp8 weights take the
    /// cooperative matrix), so every MatMul case's shape runs on it, the 1- to 15-row ones included.</summary>
    [Test]
    public void EveryMatMulCasePassesWithTheCooperativeMatrixForcedForEveryRowCount()
    {
        var root = CheckBackend(new() { ["FASTSERVE_VULKAN_TILED"] = "1" }, "--op", "MatMul");
        Assert.That(root.GetProperty("device").GetString(), Does.Contain("tiled GEMM from 1 rows"));
        Assert.That(root.GetProperty("cases").GetInt32(), Is.GreaterThan(50));
    }

    [Test]
    public void GreedyTokensOfAnFp8ModelEqualTheCpuBackends()
    {
        string model = Path.Combine(TestModels.RepoRoot, "models", "gec-small");
        string[] prompts = ["Correct: She don't like apples.\nFixed:", "Correct: He go to school every days.\nFixed:", "Correct: They was happy yesterday.\nFixed:"];
        foreach (string prompt in prompts)
        {
            string[] args = ["generate", "--model", model, "--quantize", "fp8", "--max-tokens", "16", "--ignore-eos", "--json", prompt];
            var v = Run(new() { ["FASTSERVE_VULKAN_TILED"] = "1" }, [.. args, "--backend", "vulkan"]);
            Assert.That(v.Code, Is.Zero, v.Err);
            var c = CliTests.Run([.. args, "--backend", "cpu"]);
            Assert.That(c.Code, Is.Zero, c.Err);
            Assert.That(Tokens(v.Out), Is.EqualTo(Tokens(c.Out)), $"\"{prompt}\": vulkan {v.Out} vs cpu {c.Out}");
            Assert.That(Tokens(v.Out), Has.Length.EqualTo(16));
        }
    }

    /// <summary>The batching engine (fastserve batch) on the path: 24 requests prefilled together (one step of some 430
    /// rows) and decoded 24 rows a step, through recorded decode steps, give the cpu backend's greedy tokens.</summary>
    [Test]
    public void TheBatchingEngineGivesTheCpuBackendsTokens()
    {
        string model = Path.Combine(TestModels.RepoRoot, "models", "gec-small");
        string dir = TestModels.TempDir("coopbatch"), input = Path.Combine(dir, "in.jsonl");
        File.WriteAllLines(input, File.ReadLines(Path.Combine(model, "reference_outputs.jsonl")).Take(24).Select(line =>
        {
            using var doc = JsonDocument.Parse(line);
            return $"{{\"prompt_ids\": {doc.RootElement.GetProperty("prompt_ids").GetRawText()}, \"max_tokens\": 12, \"ignore_eos\": true}}";
        }));
        string[] args = ["batch", "--model", model, "--quantize", "fp8", "-i", input];
        var v = Run([], [.. args, "--backend", "vulkan", "-o", Path.Combine(dir, "vulkan.jsonl")]);
        Assert.That(v.Code, Is.Zero, v.Err + v.Out);
        var c = CliTests.Run([.. args, "--backend", "cpu", "-o", Path.Combine(dir, "cpu.jsonl")]);
        Assert.That(c.Code, Is.Zero, c.Err + c.Out);
        string[] vk = File.ReadAllLines(Path.Combine(dir, "vulkan.jsonl")), cpu = File.ReadAllLines(Path.Combine(dir, "cpu.jsonl"));
        Assert.That(vk, Has.Length.EqualTo(24));
        for (int i = 0; i < vk.Length; i++)
        {
            Assert.That(Tokens(vk[i]), Has.Length.EqualTo(12), vk[i]);
            Assert.That(Tokens(vk[i]), Is.EqualTo(Tokens(cpu[i])), $"request {i}: vulkan {vk[i]} vs cpu {cpu[i]}");
        }
    }

    private static int[] Tokens(string json)
    {
        using var doc = JsonDocument.Parse(json);
        return doc.RootElement.GetProperty("token_ids").EnumerateArray().Select(t => t.GetInt32()).ToArray();
    }
}
