using FastServe.Runtime.Backends;
using FastServe.Runtime.Backends.Cpu;
using FastServe.Runtime.Backends.Reference;
using FastServe.Runtime.Model;
using NUnit.Framework;

namespace FastServe.Tests.Model;

public class ForwardTests
{
    private static int[] Prompt(int n, int seed = 1)
    {
        var r = new Random(seed);
        return Enumerable.Range(0, n).Select(_ => r.Next(100000)).ToArray();
    }

    private static (ModelRunner Runner, int[] Table) Runner(LoadedModel m, IBackend b, int ctx, int maxRows, int logitRows, KvDType kv = KvDType.F32)
    {
        var c = m.Config;
        int blocks = (ctx + 15) / 16;
        var spec = new KvCacheSpec(c.NumLayers, c.NumKvHeads, c.HeadDim, 16, blocks, kv);
        return (new ModelRunner(c, m.Weights, b, spec, maxRows, logitRows), Enumerable.Range(0, blocks).ToArray());
    }

    [Test]
    public void IncrementalDecodeEqualsRecomputingTheWholeSequence()
    {
        using var m = LoadedModel.Load(TestModels.Tiny);
        using var b = new CpuBackend(2);
        int vocab = m.Config.VocabSize;
        int[] seq = Prompt(23);

        // Incremental: prefill 10 tokens, then one token per step; keep the logits after every step.
        var (inc, table) = Runner(m, b, 64, 16, 1);
        using (inc)
        {
            var layout = new BatchLayout();
            var incLogits = new List<float[]>();
            var lg = new float[vocab];
            layout.AddSequence(0, 10, table);
            inc.Forward(seq.AsSpan(0, 10), layout, [9], lg);
            incLogits.Add((float[])lg.Clone());
            for (int p = 10; p < seq.Length; p++)
            {
                layout.Clear();
                layout.AddSequence(p, 1, table);
                inc.Forward(seq.AsSpan(p, 1), layout, [0], lg);
                incLogits.Add((float[])lg.Clone());
            }

            // Recompute: the whole sequence in one step, logits for every row from 9 on.
            var (full, table2) = Runner(m, b, 64, 32, 32);
            using (full)
            {
                layout.Clear();
                layout.AddSequence(0, seq.Length, table2);
                int[] rows = Enumerable.Range(9, seq.Length - 9).ToArray();
                var all = new float[rows.Length * vocab];
                full.Forward(seq, layout, rows, all);
                for (int i = 0; i < rows.Length; i++)
                {
                    double maxDiff = 0, maxAbs = 0;
                    for (int v = 0; v < vocab; v++)
                    {
                        maxDiff = Math.Max(maxDiff, Math.Abs(all[i * vocab + v] - incLogits[i][v]));
                        maxAbs = Math.Max(maxAbs, Math.Abs(all[i * vocab + v]));
                    }
                    Assert.That(maxDiff / maxAbs, Is.LessThan(1e-4), $"position {rows[i]}");
                }
            }
        }
    }

    [Test]
    public void CpuBackendMatchesScalarReferenceEndToEnd([Values(KvDType.F32, KvDType.BF16)] KvDType kv)
    {
        using var m = LoadedModel.Load(TestModels.Tiny);
        int vocab = m.Config.VocabSize;
        int[] seq = Prompt(12, 5);
        float[] Run(IBackend b)
        {
            var (r, table) = Runner(m, b, 32, 16, 1, kv);
            using (r)
            {
                var layout = new BatchLayout();
                layout.AddSequence(0, seq.Length, table);
                var lg = new float[vocab];
                r.Forward(seq, layout, [seq.Length - 1], lg);
                return lg;
            }
        }
        using var cpu = new CpuBackend(2);
        using var reference = new ReferenceBackend();
        var a = Run(cpu);
        var e = Run(reference);
        double maxDiff = a.Zip(e, (x, y) => Math.Abs(x - y)).Max(), maxAbs = e.Max(Math.Abs);
        TestContext.Out.WriteLine($"max |cpu - reference| / max |reference| = {maxDiff / maxAbs:E2}");
        Assert.That(maxDiff / maxAbs, Is.LessThan(1e-4));
    }
}
