using System.Diagnostics;
using System.Reflection;
using System.Text.Json;
using FastServe.Runtime;
using FastServe.Runtime.Backends;
using FastServe.Runtime.Backends.Cpu;
using FastServe.Runtime.Backends.Reference;
using FastServe.Runtime.Numerics;
using FastServe.Tests.Backends;
using NUnit.Framework;

namespace FastServe.Tests.Interop;

/// <summary>
/// check-backend's soundness: the CPU backend passes every case with the documented tolerances, while a CPU backend
/// with one op subtly broken fails exactly that op's cases; the comparison rejects wrong values, NaN, wrong lengths
/// and wrong row counts; the W8A8 reference is exact where quantization is lossless and far enough from an
/// F32-activation product that skipping activation quantization fails.
/// </summary>
public class CheckBackendTests
{
    private static List<CheckResult> RunAll(IBackend backend, Func<BackendCheck.Case, bool>? only = null)
    {
        using var reference = new ReferenceBackend();
        return BackendCheck.Cases(7).Where(c => only?.Invoke(c) ?? true).Select(c => BackendCheck.Run(c, backend, reference)).ToList();
    }

    [Test]
    public void CpuBackendPassesEveryCase()
    {
        using var cpu = new CpuBackend(2);
        var results = RunAll(cpu);
        Assert.That(results, Has.Count.GreaterThan(100));
        var failed = results.Where(r => r.Outcome != CheckOutcome.Pass).Select(r => $"{r.Op} {r.Shape} {r.DType}: {r.MaxRelError:E2} > {r.Tolerance:E0} {r.Detail}").ToList();
        Assert.That(failed, Is.Empty);
        double worst = results.Max(r => r.MaxRelError / Math.Max(r.Tolerance, 1e-30));
        TestContext.Out.WriteLine($"{results.Count} cases; worst error/tolerance {worst:E2}");
    }

    [Test]
    public void EveryBackendOpIsCovered()
    {
        var ops = typeof(IBackend).GetMethods().Select(m => m.Name)
            .Except(["LoadMatrix", "LoadVector", "Alloc", "AllocKvCache", "Dispose", "get_Name", "get_QuantizesFp8Activations", "get_RoundsActivationsTo16Bit", "get_SamplesOnDevice"]).ToHashSet();
        var covered = BackendCheck.Cases(1).SelectMany(c => c.Op.Split('+')).ToHashSet();
        Assert.That(ops.Except(covered), Is.Empty, "IBackend ops with no check-backend case");
        var shapes = BackendCheck.Cases(1).Select(c => c.Shape).ToList();
        foreach (int rows in new[] { 1, 3, 17, 64 }) Assert.That(shapes, Has.Some.Contains($"rows={rows} "), $"rows {rows}");
        var dtypes = BackendCheck.Cases(1).Where(c => c.Op == "MatMul").Select(c => c.DType).Distinct();
        Assert.That(dtypes, Is.EquivalentTo(new[] { "f32", "f16", "bf16", "fp8-row", "fp8-tensor" }));
    }

    [Test]
    public void CasesAreDeterministicPerSeed()
    {
        using var cpu = new CpuBackend(1);
        using var reference = new ReferenceBackend();
        var c = BackendCheck.Cases(3).First(x => x.Op == "MatMul" && x.DType == "bf16");
        var (a1, _) = c.Run(cpu, reference);
        var (a2, _) = c.Run(cpu, reference);
        Assert.That(a2.Values, Is.EqualTo(a1.Values));
        var other = BackendCheck.Cases(4).First(x => x.Op == "MatMul" && x.DType == "bf16");
        Assert.That(other.Run(cpu, reference).Actual.Values, Is.Not.EqualTo(a1.Values));
    }

    public enum Mutation { MatMulRelative2e4, RopePositionPlusOne, AttentionDropsLastKey, SiluOneUlpBoost, RowsNotSet, ClaimsW8A8, GatherOffByOne, EmbeddingLastColumn, SampleNextCounter, SampleTopKPlusOne, ClaimsW16A16 }

    /// <summary>Each mutation breaks one op slightly; exactly that op's cases must fail and the rest still pass.</summary>
    [TestCase(Mutation.MatMulRelative2e4, "MatMul")]
    [TestCase(Mutation.RopePositionPlusOne, "Rope")]
    [TestCase(Mutation.AttentionDropsLastKey, "KvStore+Attention")]
    [TestCase(Mutation.SiluOneUlpBoost, "SiluGate")]
    [TestCase(Mutation.RowsNotSet, "RmsNorm")]
    [TestCase(Mutation.ClaimsW8A8, "MatMul")]
    [TestCase(Mutation.GatherOffByOne, "GatherRows")]
    [TestCase(Mutation.EmbeddingLastColumn, "Embedding")]
    [TestCase(Mutation.SampleNextCounter, "Sample")]
    [TestCase(Mutation.SampleTopKPlusOne, "Sample")]
    [TestCase(Mutation.ClaimsW16A16, "MatMul")]
    public void MutatedCpuOpFailsItsCases(Mutation mutation, string op)
    {
        using var broken = new MutatedBackend(new CpuBackend(2), mutation);
        var results = RunAll(broken);
        var mine = results.Where(r => r.Op == op).ToList();
        var others = results.Where(r => r.Op != op).ToList();
        int failing = mine.Count(r => r.Outcome == CheckOutcome.Fail);
        if (mutation == Mutation.ClaimsW8A8)
        {
            // Only the FP8 cases change: their expected values become the W8A8 ones.
            Assert.That(mine.Where(r => r.DType.StartsWith("fp8")), Has.All.Matches<CheckResult>(r => r!.Outcome == CheckOutcome.Fail));
            Assert.That(mine.Where(r => !r.DType.StartsWith("fp8")), Has.All.Matches<CheckResult>(r => r!.Outcome == CheckOutcome.Pass));
        }
        else if (mutation == Mutation.RowsNotSet)
        {
            Assert.That(mine.Where(r => r.Shape.Contains("in-place")), Has.All.Matches<CheckResult>(r => r!.Outcome == CheckOutcome.Pass), "in place Rows is already right");
            Assert.That(mine.Where(r => !r.Shape.Contains("in-place")), Has.All.Matches<CheckResult>(r => r!.Outcome == CheckOutcome.Fail && r.Detail!.Contains("Rows")));
        }
        else if (mutation == Mutation.ClaimsW16A16)
        {
            // The expected BF16 values now come from BF16-rounded activations: an F32-activation product is off by
            // about 2^-9 of each term, far above the MatMul tolerance wherever k is large.
            Assert.That(mine.Where(r => r.DType == "bf16" && !r.Shape.Contains("k=67 ")), Has.All.Matches<CheckResult>(r => r!.Outcome == CheckOutcome.Fail));
            Assert.That(mine.Where(r => r.DType is "f32" || r.DType.StartsWith("fp8")), Has.All.Matches<CheckResult>(r => r!.Outcome == CheckOutcome.Pass));
        }
        else if (mutation == Mutation.SampleTopKPlusOne)
        {
            // One more kept token changes a draw only now and then, and only where top-k binds.
            Assert.That(failing, Is.GreaterThanOrEqualTo(2), $"{failing} of {mine.Count} Sample cases failed");
            Assert.That(mine.Where(r => r.Shape.StartsWith("greedy") || r.Shape.StartsWith("top-p") || r.Shape.StartsWith("full")),
                Has.All.Matches<CheckResult>(r => r!.Outcome == CheckOutcome.Pass), "cases without top-k are unaffected");
        }
        else
        {
            Assert.That(failing, Is.GreaterThanOrEqualTo(mine.Count / 2), $"{mutation}: {failing} of {mine.Count} {op} cases failed");
        }
        Assert.That(others.Where(r => r.Outcome == CheckOutcome.Fail).Select(r => $"{r.Op} {r.Shape}"), Is.Empty);
    }

    [Test]
    public void CompareRejectsWrongValuesNaNAndLengths()
    {
        float[] expected = [1f, -2f, 4f, 0.5f];
        Assert.That(BackendCheck.Compare(expected, expected), Is.EqualTo((0.0, 0.0, 0.0)));
        float[] off = [1f, -2f, 4f + 4e-4f, 0.5f];
        var (abs, rel, nrmse) = BackendCheck.Compare(off, expected);
        Assert.That(abs, Is.EqualTo(4e-4).Within(1e-6));
        Assert.That(rel, Is.EqualTo(1e-4).Within(1e-6), "relative to the largest reference magnitude (4)");
        Assert.That(nrmse, Is.GreaterThan(0).And.LessThan(rel));
        var judged = BackendCheck.Judge("op", "s", "f32", 5e-5, new(off, 1), new(expected, 1));
        Assert.That(judged.Outcome, Is.EqualTo(CheckOutcome.Fail));
        Assert.That(BackendCheck.Judge("op", "s", "f32", 2e-4, new(off, 1), new(expected, 1)).Outcome, Is.EqualTo(CheckOutcome.Pass));
        Assert.That(BackendCheck.Judge("op", "s", "f32", 1, new([1f, float.NaN, 4f, 0.5f], 1), new(expected, 1)).Detail, Is.EqualTo("non-finite output"));
        Assert.That(BackendCheck.Judge("op", "s", "f32", 1, new([1f, -2f, 4f], 1), new(expected, 1)).Outcome, Is.EqualTo(CheckOutcome.Fail));
        Assert.That(BackendCheck.Judge("op", "s", "f32", 1, new(expected, 2), new(expected, 1)).Detail, Does.Contain("Rows"));
        Assert.That(BackendCheck.Judge("op", "s", "f32", 0, new(expected, 1), new(expected, 1)).Outcome, Is.EqualTo(CheckOutcome.Pass), "exact passes a zero tolerance");
    }

    [Test]
    public unsafe void W8A8ReferenceIsExactWhenActivationsQuantizeLosslessly()
    {
        var rng = new Random(5);
        const int rows = 3, k = 37, n = 11;
        var codes = new byte[n * k];
        for (int i = 0; i < codes.Length; i++) { byte c; do c = (byte)rng.Next(256); while ((c & 0x7F) == 0x7F); codes[i] = c; }
        var scales = Enumerable.Range(0, n).Select(i => 0.01f + i * 0.001f).ToArray();
        // Each row: s · (E4M3 values with one exactly ±448), so x / s is an E4M3 value and quantization is lossless.
        var x = new float[rows * k];
        for (int r = 0; r < rows; r++)
        {
            float s = 0.25f * (r + 1);
            for (int i = 0; i < k; i++)
            {
                byte c; do c = (byte)rng.Next(256); while ((c & 0x7F) >= 0x7E);
                x[r * k + i] = s * Fp8E4M3.Decode(c);
            }
            x[r * k + 5] = s * 448f;
        }
        fixed (byte* p = codes)
        {
            var w = new MatrixWeight("w", DType.F8E4M3, n, k, p, scales, Enumerable.Range(0, n).Select(i => 0.1f * i).ToArray());
            using var reference = new ReferenceBackend();
            using var weight = reference.LoadMatrix(w);
            using var xt = reference.Alloc("x", rows, k);
            using var dst = reference.Alloc("dst", rows, n);
            reference.CopyFromHost(x, rows, xt);
            reference.MatMul(xt, weight, dst);
            var f32 = new float[rows * n];
            reference.CopyToHost(dst, f32);
            var w8a8 = BackendCheck.W8A8Reference(x, rows, k, w);
            Assert.That(BackendCheck.Compare(w8a8, f32).MaxRel, Is.LessThan(1e-6));

            // Random activations: quantizing them moves the result far beyond the W8A8 tolerance, so a backend that
            // claimed W8A8 but kept F32 activations (or the reverse) fails.
            var xr = Enumerable.Range(0, rows * k).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
            reference.CopyFromHost(xr, rows, xt);
            reference.MatMul(xt, weight, dst);
            reference.CopyToHost(dst, f32);
            double gap = BackendCheck.Compare(BackendCheck.W8A8Reference(xr, rows, k, w), f32).MaxRel;
            Assert.That(gap, Is.GreaterThan(5 * BackendCheck.Tolerances.MatMulW8A8), $"activation quantization changes results by {gap:E2}");
        }
    }

    [Test]
    [NonParallelizable]
    public void CliCheckBackendCpuPassesAndPrintsJson()
    {
        string exe = DistBinary.Path;
        var psi = new ProcessStartInfo(exe) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in new[] { "check-backend", "--backend", "cpu", "--threads", "2", "--seed", "11", "--json" }) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(TimeSpan.FromMinutes(3))) { p.Kill(true); Assert.Fail("check-backend timed out"); }
        Assert.That(p.ExitCode, Is.Zero, stdout.Result + stderr.Result);
        using var doc = JsonDocument.Parse(stdout.Result);
        var root = doc.RootElement;
        Assert.That(root.GetProperty("backend").GetString(), Is.EqualTo("cpu"));
        Assert.That(root.GetProperty("passed").GetBoolean(), Is.True);
        Assert.That(root.GetProperty("failed").GetInt32(), Is.Zero);
        var results = root.GetProperty("results");
        Assert.That(results.GetArrayLength(), Is.EqualTo(root.GetProperty("cases").GetInt32()).And.EqualTo(BackendCheck.Cases(11).Count));
        foreach (var r in results.EnumerateArray())
        {
            Assert.That(r.GetProperty("result").GetString(), Is.EqualTo("pass"));
            Assert.That(r.GetProperty("max_rel_error").GetDouble(), Is.LessThanOrEqualTo(r.GetProperty("tolerance").GetDouble()));
        }
    }

    /// <summary>A CPU backend with one op broken on purpose; every other op is the CPU's own.</summary>
    private sealed class MutatedBackend(CpuBackend inner, Mutation mutation) : ForwardingBackend(inner)
    {
        public override string Name => "mutated-cpu";
        public override bool QuantizesFp8Activations => mutation == Mutation.ClaimsW8A8;
        public override bool RoundsActivationsTo16Bit => mutation == Mutation.ClaimsW16A16;
        public override void Dispose() => inner.Dispose();

        public override void Sample(BackendTensor logits, ReadOnlySpan<SampleRow> rows, Span<int> tokens)
        {
            var changed = rows.ToArray();
            for (int i = 0; i < changed.Length; i++)
            {
                if (mutation == Mutation.SampleNextCounter) changed[i] = changed[i] with { Counter = changed[i].Counter + 1 };
                if (mutation == Mutation.SampleTopKPlusOne && changed[i].TopK > 0) changed[i] = changed[i] with { TopK = changed[i].TopK + 1 };
            }
            CounterSampler.SampleOnHost(inner, logits, changed, tokens);
        }

        public override void Embedding(BackendWeight table, ReadOnlySpan<int> tokens, BackendTensor dst)
        {
            inner.Embedding(table, tokens, dst);
            if (mutation == Mutation.EmbeddingLastColumn) Edit(dst, v => { for (int r = 0; r < dst.Rows; r++) v[r * dst.Cols + dst.Cols - 1] = 0; });
        }

        public override void RmsNorm(BackendTensor x, BackendWeight gamma, float eps, BackendTensor dst)
        {
            int before = dst.Rows;
            inner.RmsNorm(x, gamma, eps, dst);
            if (mutation == Mutation.RowsNotSet && !ReferenceEquals(x, dst)) dst.Rows = before;
        }

        public override void MatMul(BackendTensor x, BackendWeight w, BackendTensor dst)
        {
            inner.MatMul(x, w, dst);
            // 2e-4 of the largest output on one element: twice the F32 MatMul tolerance.
            if (mutation == Mutation.MatMulRelative2e4) Edit(dst, v => { float m = v.Max(MathF.Abs); v[v.Length / 2] += 2e-4f * m; });
        }

        public override void Rope(BackendTensor x, int heads, ReadOnlySpan<int> positions, RopeTable rope)
        {
            if (mutation != Mutation.RopePositionPlusOne) { inner.Rope(x, heads, positions, rope); return; }
            var shifted = positions.ToArray();
            for (int i = 0; i < shifted.Length; i++) shifted[i]++;
            inner.Rope(x, heads, shifted, rope);
        }

        public override void SiluGate(BackendTensor gate, BackendTensor up, BackendTensor dst)
        {
            inner.SiluGate(gate, up, dst);
            // 1 + 2e-5 on every value: a silu with a slightly wrong constant.
            if (mutation == Mutation.SiluOneUlpBoost) Edit(dst, v => { for (int i = 0; i < v.Length; i++) v[i] *= 1 + 2e-5f; });
        }

        public override void Attention(BackendTensor q, KvCache cache, int layer, BatchLayout batch, BackendTensor dst)
        {
            if (mutation != Mutation.AttentionDropsLastKey) { inner.Attention(q, cache, layer, batch, dst); return; }
            // Attend as if each row sat one position earlier (a missing causal "<="): rows at position 0 see nothing new,
            // so compute those normally and the others one short.
            var shorter = new BatchLayout();
            for (int s = 0; s < batch.SequenceCount; s++) shorter.AddSequence(Math.Max(0, batch.StartPos(s) - 1), batch.RowCount(s), batch.BlockTable(s));
            inner.Attention(q, cache, layer, shorter, dst);
        }

        public override void GatherRows(BackendTensor src, ReadOnlySpan<int> rows, BackendTensor dst)
        {
            if (mutation != Mutation.GatherOffByOne || ReferenceEquals(src, dst)) { inner.GatherRows(src, rows, dst); return; }
            var r = rows.ToArray();
            r[0] = (r[0] + 1) % src.Rows;
            inner.GatherRows(src, r, dst);
        }

        private void Edit(BackendTensor t, Action<float[]> change)
        {
            var v = new float[t.Rows * t.Cols];
            inner.CopyToHost(t, v);
            change(v);
            inner.CopyFromHost(v, t.Rows, t);
        }
    }
}
