using FastServe.Runtime.Backends;
using FastServe.Runtime.Backends.Cpu;
using FastServe.Runtime.Model;
using FastServe.Runtime.Quantization;
using NUnit.Framework;

namespace FastServe.Tests.Model;

/// <summary>FP8 (per-channel, quantized at load) against the F32 weights of the same checkpoint, teacher-forced
/// over a fixed prompt set: logits cosine similarity and greedy top-1 agreement at every position.</summary>
public class Fp8QualityTests
{
    private static readonly string[] Prompts =
    [
        "Correct the grammar: She don't like apples and he go to school every days.",
        "Correct the grammar: Me and him was going to the store yesterday when it start to rain.",
        "Correct the grammar: There is many reasons why peoples enjoys reading books.",
        "Correct the grammar: I has been waiting here since two hours but nobody come.",
        "Correct the grammar: The informations you gave me was very helpful for my researchs.",
        "Correct the grammar: If I would have know, I would of told you earlier.",
        "Correct the grammar: Each of the students have their own laptop in class.",
        "Correct the grammar: He did not went to the party because he feel sick.",
    ];

    private static List<float[]> TeacherForcedLogits(LoadedModel m, IBackend b, int[] ids)
    {
        var c = m.Config;
        int blocks = (ids.Length + 15) / 16;
        var spec = new KvCacheSpec(c.NumLayers, c.NumKvHeads, c.HeadDim, 16, blocks, KvDType.F32);
        using var r = new ModelRunner(c, m.Weights, b, spec, ids.Length, ids.Length);
        var layout = new BatchLayout();
        layout.AddSequence(0, ids.Length, Enumerable.Range(0, blocks).ToArray());
        var all = new float[ids.Length * c.VocabSize];
        r.Forward(ids, layout, Enumerable.Range(0, ids.Length).ToArray(), all);
        return Enumerable.Range(0, ids.Length).Select(i => all.AsSpan(i * c.VocabSize, c.VocabSize).ToArray()).ToList();
    }

    [Test]
    public void PerChannelFp8TracksF32Logits()
    {
        using var f32 = LoadedModel.Load(TestModels.Small);
        using var fp8 = LoadedModel.Load(TestModels.Small, new Fp8LoadOptions(Fp8Scheme.PerChannel));
        using var b = new CpuBackend(2);
        int positions = 0, agree = 0;
        double minCos = 1, sumCos = 0, sumTop1Prob = 0;
        foreach (var p in Prompts)
        {
            int[] ids = f32.Tokenizer.Encode(p, addBos: true);
            var a = TeacherForcedLogits(f32, b, ids);
            var q = TeacherForcedLogits(fp8, b, ids);
            for (int i = 0; i < ids.Length; i++)
            {
                double cos = Cosine(a[i], q[i]);
                minCos = Math.Min(minCos, cos);
                sumCos += cos;
                int ta = ArgMax(a[i]), tq = ArgMax(q[i]);
                if (ta == tq) agree++;
                sumTop1Prob += Math.Exp(a[i][ta] - FastServe.Runtime.Generation.Sampler.LogSumExp(a[i]));
                positions++;
            }
        }
        double agreement = agree / (double)positions;
        TestContext.Out.WriteLine($"positions {positions}: mean cosine {sumCos / positions:F5}, min cosine {minCos:F5}, " +
            $"top-1 agreement {agreement:P2}, mean F32 top-1 probability {sumTop1Prob / positions:F3}");
        Assert.That(minCos, Is.GreaterThanOrEqualTo(0.99));
        Assert.That(agreement, Is.GreaterThanOrEqualTo(0.95));
    }

    internal static double Cosine(float[] a, float[] b)
    {
        double dot = 0, na = 0, nb = 0;
        for (int i = 0; i < a.Length; i++) { dot += (double)a[i] * b[i]; na += (double)a[i] * a[i]; nb += (double)b[i] * b[i]; }
        return dot / Math.Sqrt(na * nb);
    }

    private static int ArgMax(float[] x) => FastServe.Runtime.Generation.Sampler.ArgMax(x);
}
