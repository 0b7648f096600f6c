using System.Text.Json;
using FastServe.Runtime;
using FastServe.Runtime.Backends;
using FastServe.Runtime.Backends.Cpu;
using FastServe.Runtime.Generation;
using FastServe.Runtime.Model;
using FastServe.Vulkan;
using NUnit.Framework;
using Silk.NET.Vulkan;

namespace FastServe.Tests.Vulkan;

/// <summary>
/// The vulkan backend in process, on whatever Vulkan device the machine has (lavapipe on CI and dev machines):
/// the shipped models' greedy tokens equal the cpu backend's, a decode step after the first is one submission with
/// every descriptor set reused, and a device fault surfaces as its vulkan.* code on every later op. Skipped, saying
/// why, only where there is no Vulkan loader or device at all.
/// </summary>
[TestFixture, NonParallelizable]
public sealed class VulkanBackendTests
{
    internal static VulkanBackend CreateOrIgnore()
    {
        try { return VulkanBackend.Create(); }
        catch (VulkanException e) when (e.Code is "vulkan.no_loader" or "vulkan.no_device")
        {
            Assert.Ignore($"no Vulkan device here ({e.Code}: {e.Message}); install libvulkan1 and mesa-vulkan-drivers");
            throw;
        }
    }

    /// <summary>The first prompts of the model's held-out set, as its tokenizer encodes them.</summary>
    private static List<int[]> Prompts(string model, int count) =>
        File.ReadLines(Path.Combine(model, "reference_outputs.jsonl")).Take(count).Select(line =>
        {
            using var doc = JsonDocument.Parse(line);
            return doc.RootElement.GetProperty("prompt_ids").EnumerateArray().Select(x => x.GetInt32()).ToArray();
        }).ToList();

    /// <summary>RoPE's cos/sin table is kept between calls at the same positions (every layer's q and k in a step):
    /// calls at other positions, at the same positions again, and with another table must each match the reference.</summary>
    [Test]
    public void RopeAtChangingPositionsMatchesTheReference()
    {
        using var vulkan = CreateOrIgnore();
        using var reference = new FastServe.Runtime.Backends.Reference.ReferenceBackend();
        var rng = new Random(7);
        var a = new RopeTable(64, 10000);
        var b = new RopeTable(64, 500000);
        int[][] positions = [[0, 5, 9], [1, 6, 10], [0, 5, 9], [3000, 4, 77]];
        foreach (var (table, pos) in new[] { (a, positions[0]), (a, positions[1]), (a, positions[2]), (b, positions[2]), (b, positions[3]), (a, positions[3]) })
        {
            const int heads = 4;
            var data = new float[pos.Length * heads * 64];
            for (int i = 0; i < data.Length; i++) data[i] = (float)(rng.NextDouble() * 2 - 1);
            var got = new float[data.Length];
            var want = new float[data.Length];
            foreach (var (backend, output) in new (IBackend, float[])[] { (vulkan, got), (reference, want) })
            {
                using var t = backend.Alloc("x", pos.Length, heads * 64);
                backend.CopyFromHost(data, pos.Length, t);
                backend.Rope(t, heads, pos, table);
                backend.CopyToHost(t, output);
            }
            for (int i = 0; i < got.Length; i++)
                Assert.That(got[i], Is.EqualTo(want[i]).Within(1e-5f), $"theta {table.InvFreq[1]}, positions [{string.Join(", ", pos)}], element {i}");
        }
    }

    [TestCase("gec-tiny", KvDType.F32)]
    [TestCase("gec-tiny", KvDType.BF16)]
    [TestCase("gec-small", KvDType.F32)]
    public void GreedyTokensEqualTheCpuBackends(string name, KvDType kv)
    {
        string dir = Path.Combine(TestModels.RepoRoot, "models", name);
        using var vulkan = CreateOrIgnore();
        using var model = LoadedModel.Load(dir);
        using var cpu = new CpuBackend(2);
        var options = new GeneratorOptions { ContextLength = 256, KvDType = kv };
        using var gv = new Generator(model, vulkan, options);
        using var gc = new Generator(model, cpu, options);
        var p = new SamplingParams { MaxTokens = 24 };
        foreach (var prompt in Prompts(dir, 3))
        {
            var a = gv.Generate(prompt, p);
            var e = gc.Generate(prompt, p);
            Assert.That(a.TokenIds, Is.EqualTo(e.TokenIds), $"{name} on {vulkan.Features.Name}: vulkan \"{a.Text}\" vs cpu \"{e.Text}\"");
        }
    }

    [Test]
    public void DecodeStepsAfterTheFirstAreOneSubmissionWithCachedDescriptorSets()
    {
        using var vulkan = CreateOrIgnore();
        using var model = LoadedModel.Load(Path.Combine(TestModels.RepoRoot, "models", "gec-tiny"));
        using var g = new Generator(model, vulkan, new GeneratorOptions { ContextLength = 128 });
        int[] prompt = Prompts(Path.Combine(TestModels.RepoRoot, "models", "gec-tiny"), 1)[0];
        var p = new SamplingParams { MaxTokens = 16, IgnoreEos = true };
        g.Generate(prompt, p);
        int sets = vulkan.DescriptorSets;
        long before = vulkan.Submissions;
        var r = g.Generate(prompt, p);
        Assert.That(vulkan.DescriptorSets, Is.EqualTo(sets), "the second generation binds only sets made by the first");
        // Prefill (one chunk) plus one per decoded token after the first: each step submits once, at Sample.
        Assert.That(vulkan.Submissions - before, Is.EqualTo(r.TokenIds.Length));
    }

    /// <summary>IStepRecorder: a key's first decode step runs op by op, the second is recorded, later ones replay the
    /// recorded command buffer with their own inputs; the logits equal an eager backend's exactly, and a step of
    /// another shape under the same key is refused without running (then runs op by op, and the key is recorded
    /// anew).</summary>
    [Test]
    public void RecordedDecodeStepsReplayWithTheLogitsOfEagerOnes()
    {
        using var rec = CreateOrIgnore();
        using var eager = CreateOrIgnore();
        string dir = Path.Combine(TestModels.RepoRoot, "models", "gec-tiny");
        using var model = LoadedModel.Load(dir);
        var c = model.Config;
        const int blocks = 8;
        var spec = new KvCacheSpec(c.NumLayers, c.NumKvHeads, c.HeadDim, 16, blocks, KvDType.BF16);
        using var rr = new ModelRunner(c, model.Weights, rec, spec, 32, 2);
        using var re = new ModelRunner(c, model.Weights, eager, spec, 32, 2);
        rec.StartStepRecording(blocks);
        int[] table = Enumerable.Range(0, blocks).ToArray();
        int[] prompt = Prompts(dir, 1)[0];
        var layout = new BatchLayout();
        layout.AddSequence(0, prompt.Length, table);
        var a = new float[2 * c.VocabSize];
        var e = new float[2 * c.VocabSize];
        rr.Forward(prompt, layout, [prompt.Length - 1], a);
        re.Forward(prompt, layout, [prompt.Length - 1], e);
        int pos = prompt.Length, token = ArgMax(e.AsSpan(0, c.VocabSize));
        var outcomes = new List<StepOutcome>();
        for (int step = 0; step < 8; step++)
        {
            // Step 5 is two tokens under key 1: not the recorded shape.
            int count = step == 5 ? 2 : 1;
            int[] tokens = count == 1 ? [token] : [token, token];
            int[] rows = count == 1 ? [0] : [0, 1];
            layout.Clear();
            layout.AddSequence(pos, count, table);
            Array.Fill(a, float.NaN);
            Assert.That(rec.BeginStep(1), Is.True);
            StepOutcome o;
            try { rr.Forward(tokens, layout, rows, a); }
            finally { o = rec.EndStep(); }
            outcomes.Add(o);
            if (o == StepOutcome.Refused)
            {
                Assert.That(a, Has.All.NaN, "a refused step runs nothing");
                rr.Forward(tokens, layout, rows, a);
            }
            re.Forward(tokens, layout, rows, e);
            Assert.That(a.AsSpan(0, count * c.VocabSize).ToArray(), Is.EqualTo(e.AsSpan(0, count * c.VocabSize).ToArray()), $"step {step} ({o})");
            token = ArgMax(e.AsSpan((count - 1) * c.VocabSize, c.VocabSize));
            pos += count;
        }
        Assert.That(outcomes, Is.EqualTo(new[]
        {
            StepOutcome.Ran, StepOutcome.Recorded, StepOutcome.Replayed, StepOutcome.Replayed, StepOutcome.Replayed,
            StepOutcome.Refused, StepOutcome.Recorded, StepOutcome.Replayed, // the refused recording is dropped, then made again
        }));
    }

    /// <summary>A KV cache layer larger than the device's largest storage buffer spans several buffers; attention over
    /// blocks in two of them gives exactly what it gives over the same K/V in a small cache.</summary>
    [TestCase(KvDType.F32)]
    [TestCase(KvDType.BF16)]
    public void AKvCacheLayerBeyondTheStorageBufferRangeSpansSegments(KvDType kv)
    {
        using var b = CreateOrIgnore();
        ulong range = b.Features.MaxStorageBufferRange;
        Assume.That(range, Is.LessThanOrEqualTo(256UL << 20), "a device with a small storage-buffer range (lavapipe: 128 MiB)");
        const int heads = 2, kvHeads = 1, dim = 64, bs = 16, rows = 20;
        int blockBytes = bs * kvHeads * dim * (kv == KvDType.F32 ? 4 : 2);
        int perSegment = (int)(range / (ulong)blockBytes), numBlocks = perSegment + 8;
        using var big = b.AllocKvCache(new KvCacheSpec(1, kvHeads, dim, bs, numBlocks, kv));
        using var small = b.AllocKvCache(new KvCacheSpec(1, kvHeads, dim, bs, 4, kv));
        var rng = new Random(5);
        float[] Random(int n) => Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
        using var q = b.Alloc("q", rows, heads * dim);
        using var k = b.Alloc("k", rows, kvHeads * dim);
        using var v = b.Alloc("v", rows, kvHeads * dim);
        using var o = b.Alloc("o", rows, heads * dim);
        b.CopyFromHost(Random(rows * heads * dim), rows, q);
        b.CopyFromHost(Random(rows * kvHeads * dim), rows, k);
        b.CopyFromHost(Random(rows * kvHeads * dim), rows, v);
        float[] Attend(KvCache cache, int[] table)
        {
            var layout = new BatchLayout();
            layout.AddSequence(0, rows, table);
            b.KvStore(cache, 0, k, v, layout);
            b.Attention(q, cache, 0, layout, o);
            var r = new float[rows * heads * dim];
            b.CopyToHost(o, r);
            return r;
        }
        var inSegments = Attend(big, [numBlocks - 1, perSegment - 1]); // the second segment's last block, the first's
        var plain = Attend(small, [2, 0]);
        Assert.That(inSegments, Is.EqualTo(plain));
        Assert.That(plain, Has.Some.Not.EqualTo(0f));
    }

    private static int ArgMax(ReadOnlySpan<float> v)
    {
        int best = 0;
        for (int i = 1; i < v.Length; i++) if (v[i] > v[best]) best = i;
        return best;
    }

    [Test]
    public void VulkanRegistersUnderItsName()
    {
        VulkanBackend.Register();
        Assert.That(BackendFactory.Names, Does.Contain("vulkan"));
    }

    [TestCase(Result.ErrorDeviceLost, "vulkan.device_lost")]
    [TestCase(Result.ErrorOutOfDeviceMemory, "vulkan.out_of_memory")]
    [TestCase(Result.ErrorOutOfHostMemory, "vulkan.out_of_memory")]
    [TestCase(Result.ErrorOutOfPoolMemory, "vulkan.out_of_memory")]
    [TestCase(Result.ErrorIncompatibleDriver, "vulkan.no_device")]
    [TestCase(Result.ErrorInitializationFailed, "vulkan.no_device")]
    [TestCase(Result.ErrorUnknown, "vulkan.error")]
    public void AVkResultMapsToItsStableCode(Result r, string code) => Assert.That(VulkanException.From("vkTest", r).Code, Is.EqualTo(code));

    [TestCase(Result.ErrorDeviceLost, "vulkan.device_lost")]
    [TestCase(Result.ErrorOutOfDeviceMemory, "vulkan.out_of_memory")]
    public void AFaultSurfacesAsItsCodeOnEveryLaterOp(Result result, string code)
    {
        using var vulkan = CreateOrIgnore();
        using var model = LoadedModel.Load(Path.Combine(TestModels.RepoRoot, "models", "gec-tiny"));
        using var g = new Generator(model, vulkan, new GeneratorOptions { ContextLength = 64 });
        vulkan.InjectFault(result);
        var e = Assert.Throws<VulkanException>(() => g.Generate([1, 2, 3], new SamplingParams { MaxTokens = 4 }))!;
        Assert.That(e.Code, Is.EqualTo(code));
        e = Assert.Throws<VulkanException>(() => g.Generate([1, 2, 3], new SamplingParams { MaxTokens = 4 }))!;
        Assert.That(e.Code, Is.EqualTo(code), "still faulted");
    }

    [Test]
    public void ATensorBeyondTheDevicesStorageBufferRangeIsRefusedWithACode()
    {
        using var vulkan = CreateOrIgnore();
        ulong range = vulkan.Features.MaxStorageBufferRange;
        int cols = 1 << 20;
        int rows = (int)Math.Min(int.MaxValue, range / (4UL * (ulong)cols) + 1);
        Assume.That((ulong)rows * (ulong)cols * 4UL, Is.GreaterThan(range));
        var e = Assert.Throws<VulkanException>(() => vulkan.Alloc("huge", rows, cols))!;
        Assert.That(e.Code, Is.EqualTo("vulkan.too_large"));
        using var t = vulkan.Alloc("small", 1, 8);
        Assert.That(t.Cols, Is.EqualTo(8), "the backend is still usable");
    }
}
