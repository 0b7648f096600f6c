using System.Globalization;
using FastServe.Runtime;
using FastServe.Runtime.Model;
using FastServe.Scheduler.Execution;
using FastServe.Scheduler.Sim;
using NUnit.Framework;

namespace FastServe.Tests.Sim;

public class SimCostModelTests
{
    internal static readonly SimModelShape OneBFp8 = SimModelShape.FromConfig(ModelMaker.ConfigFor(ModelPreset.OneB), DType.F8E4M3);
    internal static readonly SimModelShape OneBBf16 = SimModelShape.FromConfig(ModelMaker.ConfigFor(ModelPreset.OneB), DType.BF16);
    private static readonly SimDeviceProfile H100 = SimDeviceProfile.H100Sxm;

    private static SimStepCost Decode(SimModelShape s, int batch, int context) =>
        SimCostModel.Estimate(s, H100, batch, batch, batch, (long)batch * context, (long)batch * context);

    private static SimStepCost Prefill(SimModelShape s, int tokens) =>
        SimCostModel.Estimate(s, H100, tokens, 1, 1, tokens, SimCostModel.AttendedPairs(0, tokens));

    [Test]
    public void OneBShapeHasLlama32OneBFigures()
    {
        var s = OneBFp8;
        Assert.That(s.ProjectionParams, Is.EqualTo(973_078_528L));
        long norms = (2L * 16 + 1) * 2048;
        Assert.That(s.ProjectionParams + 128256L * 2048 + norms, Is.EqualTo(ModelPreset.OneB.ParameterCount));
        Assert.That(s.LmHeadBytes, Is.EqualTo(525_336_576L));
        Assert.That(s.KvBytesPerToken, Is.EqualTo(32_768L));
        Assert.That(s.FlopsPerRow, Is.EqualTo(2.0 * 973_078_528));
        Assert.That(s.LmHeadFlopsPerSample, Is.EqualTo(2.0 * 2048 * 128256));
        Assert.That(s.AttentionFlopsPerPair, Is.EqualTo(4.0 * 16 * 32 * 64));
        // FP8 layers: 1 byte per parameter + F32 per-channel scales + F32 norms; tied, so resident = layers + one embedding.
        long scales = 16L * (2048 + 512 + 512 + 2048 + 8192 + 8192 + 2048) * 4;
        Assert.That(s.LayerWeightBytes, Is.EqualTo(973_078_528L + scales + norms * 4));
        Assert.That(s.ResidentWeightBytes, Is.EqualTo(s.LayerWeightBytes + s.LmHeadBytes));
        Assert.That(OneBBf16.LayerWeightBytes, Is.EqualTo(2 * 973_078_528L + norms * 4));
    }

    [Test]
    public void UnsupportedWeightDTypeIsRejected()
    {
        var e = Assert.Throws<FastServeException>(() => SimModelShape.FromConfig(ModelMaker.ConfigFor(ModelPreset.OneB), DType.F32));
        Assert.That(e!.Code, Is.EqualTo("sim.unsupported_dtype"));
        Assert.That(SimModelShape.FromConfig(ModelMaker.ConfigFor(ModelPreset.OneB)).WeightDType, Is.EqualTo(DType.BF16), "unquantized config → BF16");
    }

    [Test]
    public void BatchOneDecodeIsOverheadPlusWeightBytesOverBandwidth()
    {
        var c = Decode(OneBFp8, 1, 1024);
        double expected = H100.StepOverhead + H100.PerSequenceOverhead
            + (OneBFp8.LayerWeightBytes + OneBFp8.LmHeadBytes) / H100.MemoryBandwidth
            + 1024.0 * 32768 / H100.MemoryBandwidth;
        Assert.That(c.Total, Is.EqualTo(expected).Within(1e-12));
        Assert.That(c.LayersComputeBound, Is.False);
        Assert.That(c.AttentionComputeBound, Is.False);
        // 100.6 µs + 1.498 GB / 2.68 TB/s + 33.5 MB / 2.68 TB/s ≈ 0.672 ms.
        Assert.That(c.Total, Is.EqualTo(0.672e-3).Within(0.005e-3));
    }

    [Test]
    public void Bf16IsSlowerThanFp8ByTheWeightBytesRatioAtSmallBatch()
    {
        foreach (int batch in new[] { 1, 8 })
        {
            var f = Decode(OneBFp8, batch, 512);
            var b = Decode(OneBBf16, batch, 512);
            Assert.That(b.Overhead, Is.EqualTo(f.Overhead));
            Assert.That(b.Attention, Is.EqualTo(f.Attention));
            Assert.That(b.LmHead, Is.EqualTo(f.LmHead), "the lm_head is BF16 in both");
            Assert.That(b.Layers / f.Layers, Is.EqualTo((double)OneBBf16.LayerWeightBytes / OneBFp8.LayerWeightBytes).Within(1e-12));
            Assert.That(b.Layers / f.Layers, Is.EqualTo(2.0).Within(0.01));
            Assert.That(b.Total, Is.GreaterThan(f.Total * 1.5));
        }
    }

    [Test]
    public void LargePrefillIsComputeBound()
    {
        var f = Prefill(OneBFp8, 8192);
        var b = Prefill(OneBBf16, 8192);
        Assert.That(f.LayersComputeBound && b.LayersComputeBound, Is.True);
        Assert.That(f.AttentionComputeBound, Is.True);
        Assert.That(f.Layers, Is.EqualTo(8192 * OneBFp8.FlopsPerRow / H100.MatmulFlops).Within(1e-12));
        Assert.That(b.Layers / f.Layers, Is.EqualTo(H100.MatmulFlops / H100.MatmulFlopsBf16).Within(1e-9));
        Assert.That(f.LmHead, Is.EqualTo(OneBFp8.LmHeadBytes / H100.MemoryBandwidth).Within(1e-15), "one sampled row: lm_head is memory-bound");
        // Doubling the tokens of a compute-bound prefill about doubles the GEMM time.
        Assert.That(Prefill(OneBFp8, 4096).Layers * 2, Is.EqualTo(f.Layers).Within(1e-12));
    }

    [Test]
    public void StepWithoutSamplesSkipsTheLmHead()
    {
        var c = SimCostModel.Estimate(OneBFp8, H100, 512, 1, 0, 512, SimCostModel.AttendedPairs(0, 512));
        Assert.That(c.LmHead, Is.Zero);
        Assert.That(Prefill(OneBFp8, 512).Total - c.Total, Is.EqualTo(OneBFp8.LmHeadBytes / H100.MemoryBandwidth).Within(1e-12));
    }

    [Test]
    public void BatchFormAgreesWithCountForm()
    {
        var step = new StepBatch(64, 4);
        step.AddSequence(100, [1], [0, 1, 2, 3, 4, 5, 6]);
        step.AddSample(0, null, 1, 101, null);
        step.AddSequence(0, new int[40], [7, 8, 9]);          // a prefill chunk that ends its prompt
        step.AddSample(40, null, 2, 40, null);
        step.AddSequence(32, new int[16], [10, 11, 12]);      // a chunk that does not: no sample
        long context = 101 + 40 + 48;
        long pairs = 101 + SimCostModel.AttendedPairs(0, 40) + SimCostModel.AttendedPairs(32, 16);
        Assert.That(pairs, Is.EqualTo(101 + 40 * 41 / 2 + (33 + 48) * 16 / 2));
        double expected = SimCostModel.StepSeconds(OneBFp8, H100, 57, 3, 2, context, pairs);
        Assert.That(SimCostModel.StepSeconds(OneBFp8, H100, step), Is.EqualTo(expected));
    }

    [Test]
    public void PredictedTableMatchesDocs()
    {
        var lines = TableLines();
        TestContext.Out.WriteLine(string.Join('\n', lines));
        string? docs = FindDocs();
        Assert.That(docs, Is.Not.Null, "docs/sim.md not found above the test directory");
        string text = File.ReadAllText(docs!);
        foreach (string line in lines)
            Assert.That(text, Does.Contain(line), "docs/sim.md's table is stale: regenerate it from this test's output");
    }

    internal static List<string> TableLines()
    {
        var lines = new List<string>
        {
            "| step | context per sequence | FP8 step (ms) | FP8 tokens/s | FP8 bound by | BF16 step (ms) | BF16 tokens/s |",
            "| --- | ---: | ---: | ---: | --- | ---: | ---: |",
        };
        foreach (int context in new[] { 512, 2048 })
            foreach (int batch in new[] { 1, 8, 64, 256 })
                lines.Add(Row($"decode batch {batch}", context, batch, Decode(OneBFp8, batch, context), Decode(OneBBf16, batch, context)));
        foreach (int tokens in new[] { 512, 8192 })
            lines.Add(Row($"prefill {tokens} tokens", tokens, tokens, Prefill(OneBFp8, tokens), Prefill(OneBBf16, tokens)));
        return lines;
    }

    private static string Row(string name, int context, int tokens, SimStepCost f, SimStepCost b) =>
        string.Create(CultureInfo.InvariantCulture,
            $"| {name} | {context} | {f.Total * 1e3:F3} | {tokens / f.Total:F0} | {Bound(f)} | {b.Total * 1e3:F3} | {tokens / b.Total:F0} |");

    private static string Bound(SimStepCost c)
    {
        double max = Math.Max(Math.Max(c.Overhead, c.Layers), Math.Max(c.LmHead, c.Attention));
        if (max == c.Layers) return c.LayersComputeBound ? "GEMM FLOPs" : "weight bytes";
        if (max == c.Attention) return c.AttentionComputeBound ? "attention FLOPs" : "KV bytes";
        return max == c.LmHead ? "lm_head" : "overhead";
    }

    private static string? FindDocs()
    {
        for (var d = new DirectoryInfo(TestContext.CurrentContext.TestDirectory); d is not null; d = d.Parent)
        {
            string p = Path.Combine(d.FullName, "docs", "sim.md");
            if (File.Exists(p)) return p;
        }
        return null;
    }
}
