using FastServe.Runtime.Backends;
using NUnit.Framework;

namespace FastServe.Tests.Backends;

/// <summary>The scalar reference of the device sampler: Philox against Random123's published answers, the kept set
/// against an independent sort-based implementation, and the draws' frequencies against the distribution.</summary>
public class CounterSamplerTests
{
    // Known-answer vectors of philox4x32_10 from Random123's kat_vectors.
    [TestCase(0u, 0u, 0u, 0u, 0u, 0u, 0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u)]
    [TestCase(0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu)]
    [TestCase(0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u, 0xa4093822u, 0x299f31d0u, 0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u)]
    public void PhiloxMatchesRandom123(uint c0, uint c1, uint c2, uint c3, uint k0, uint k1, uint e0, uint e1, uint e2, uint e3)
    {
        Span<uint> c = [c0, c1, c2, c3];
        CounterSampler.Philox4x32x10(c, k0, k1);
        Assert.That(c.ToArray(), Is.EqualTo(new[] { e0, e1, e2, e3 }));
    }

    [Test]
    public void GreedyTakesTheLowestIdOfTheMaximumAndNeverNaN()
    {
        var probs = new float[8];
        float[] logits = [1, float.NaN, 3, -2, 3, float.NaN, 0, 3];
        Assert.That(CounterSampler.Sample(logits, new SampleRow(0, 1, 0, 1, 2), probs), Is.EqualTo(2));
        Assert.That(CounterSampler.Sample(logits, new SampleRow(0.7f, 1, 1, 1, 2), probs), Is.EqualTo(2), "top_k = 1 is the arg-max");
        float[] nan = [float.NaN, float.NaN, 5, float.NaN];
        Assert.That(CounterSampler.Sample(nan, new SampleRow(0, 1, 0, 0, 0), probs), Is.EqualTo(2));
        Assert.That(CounterSampler.Sample(nan, new SampleRow(1, 1, 0, 0, 0), probs), Is.EqualTo(2), "NaN logits have no probability");
        float[] allNeg = [float.NegativeInfinity, float.NegativeInfinity];
        Assert.That(CounterSampler.Sample(allNeg, new SampleRow(1, 1, 0, 0, 0), probs), Is.EqualTo(0));
    }

    [Test]
    public void SameSeedAndCounterSameTokenAndCountersSpreadTheDraws()
    {
        var rng = new Random(3);
        var logits = new float[500];
        for (int i = 0; i < logits.Length; i++) logits[i] = (float)(rng.NextDouble() * 4);
        var probs = new float[logits.Length];
        var row = new SampleRow(1.2f, 0.95f, 0, 42, 7);
        int t = CounterSampler.Sample(logits, row, probs);
        for (int i = 0; i < 5; i++) Assert.That(CounterSampler.Sample(logits, row, probs), Is.EqualTo(t));
        var seen = new HashSet<int>();
        for (ulong c = 0; c < 200; c++) seen.Add(CounterSampler.Sample(logits, row with { Counter = c }, probs));
        Assert.That(seen, Has.Count.GreaterThan(100), "200 counters of a flat distribution draw many different tokens");
    }

    /// <summary>Kept set = the shortest prefix, in (probability descending, id ascending) order, that holds top_k
    /// tokens or reaches top_p of the mass (at least one token); the draw walks it in id order. Implemented here by
    /// sorting, independently of the reference's radix select, on small vocabularies full of ties.</summary>
    [Test]
    public void KeptSetAndDrawMatchASortingImplementation()
    {
        var rng = new Random(11);
        var probs = new float[64];
        for (int trial = 0; trial < 3000; trial++)
        {
            int vocab = 1 + rng.Next(40);
            var logits = new float[vocab];
            int levels = 1 + rng.Next(6); // few distinct values: many ties
            for (int i = 0; i < vocab; i++) logits[i] = rng.Next(levels) * (float)(rng.NextDouble() < 0.5 ? 0.5 : 1.7) - 1f;
            if (rng.Next(10) == 0) logits[rng.Next(vocab)] = float.NaN;
            var row = new SampleRow(
                Temperature: rng.Next(8) == 0 ? 0 : (float)(0.2 + rng.NextDouble() * 2),
                TopP: rng.Next(3) == 0 ? 1f : (float)(0.05 + rng.NextDouble() * 0.95),
                TopK: rng.Next(3) == 0 ? 0 : 1 + rng.Next(vocab + 2),
                Seed: (ulong)rng.NextInt64(), Counter: (ulong)rng.Next(1000));
            Assert.That(CounterSampler.Sample(logits, row, probs), Is.EqualTo(BySorting(logits, row)), $"trial {trial}: {row}, logits [{string.Join(", ", logits)}]");
        }
    }

    [Test]
    public void TopKDrawsFollowTheRenormalisedDistribution()
    {
        float[] logits = [2.0f, 1.0f, 0.5f, 0.0f, -1.0f, -3.0f, 0.2f, 1.5f];
        var probs = new float[8];
        var counts = new double[8];
        const int n = 40000;
        for (ulong c = 0; c < n; c++) counts[CounterSampler.Sample(logits, new SampleRow(1, 1, 4, 9, c), probs)]++;
        // The 4 largest: ids 0, 7, 1, 2.
        int[] keep = [0, 7, 1, 2];
        double z = keep.Sum(i => Math.Exp(logits[i]));
        for (int i = 0; i < 8; i++)
        {
            double expect = keep.Contains(i) ? Math.Exp(logits[i]) / z : 0;
            Assert.That(counts[i] / n, Is.EqualTo(expect).Within(0.01), $"token {i}");
        }
    }

    [Test]
    public void TopPKeepsTheSmallestNucleus()
    {
        float[] logits = [2.0f, 1.0f, 0.5f, 0.0f, -1.0f, -3.0f, 0.2f, 1.5f];
        var probs = new float[8];
        var p = logits.Select(v => Math.Exp(v)).ToArray();
        double z = p.Sum();
        var order = Enumerable.Range(0, 8).OrderByDescending(i => p[i]).ToArray();
        double acc = 0;
        var nucleus = new HashSet<int>();
        foreach (int i in order)
        {
            nucleus.Add(i);
            acc += p[i] / z;
            if (acc >= 0.6) break;
        }
        var seen = new HashSet<int>();
        for (ulong c = 0; c < 2000; c++) seen.Add(CounterSampler.Sample(logits, new SampleRow(1, 0.6f, 0, 5, c), probs));
        Assert.That(seen, Is.EquivalentTo(nucleus));
    }

    private static int BySorting(float[] logits, SampleRow row)
    {
        int vocab = logits.Length;
        int argmax = 0;
        float best = float.NegativeInfinity;
        bool found = false;
        for (int i = 0; i < vocab; i++)
        {
            if (float.IsNaN(logits[i])) continue;
            if (!found || logits[i] > best) { best = logits[i]; argmax = i; found = true; }
        }
        if (!(row.Temperature > 0) || !float.IsFinite(best)) return argmax;
        float invT = 1f / row.Temperature;
        var mass = new ulong[vocab];
        var bits = new uint[vocab];
        ulong total = 0;
        for (int i = 0; i < vocab; i++)
        {
            float e = float.IsNaN(logits[i]) ? 0f : MathF.Exp((logits[i] - best) * invT);
            bits[i] = BitConverter.SingleToUInt32Bits(e);
            mass[i] = (ulong)(e * 1099511627776f);
            total += mass[i];
        }
        bool useK = row.TopK > 0 && row.TopK < vocab, useP = row.TopP > 0 && row.TopP < 1;
        var keptIds = new HashSet<int>(Enumerable.Range(0, vocab));
        if (useK || useP)
        {
            ulong target = useP ? Math.Max(1UL, (ulong)(row.TopP * (double)total)) : ulong.MaxValue;
            var order = Enumerable.Range(0, vocab).OrderByDescending(i => bits[i]).ThenBy(i => i).ToArray();
            keptIds.Clear();
            ulong acc = 0;
            foreach (int i in order)
            {
                keptIds.Add(i);
                acc += mass[i];
                if ((useK && keptIds.Count >= row.TopK) || (useP && acc >= target)) break;
            }
        }
        ulong kept = 0;
        foreach (int i in keptIds) kept += mass[i];
        if (kept == 0) return argmax;
        ulong t = (ulong)(CounterSampler.Uniform(row.Seed, row.Counter) * kept);
        if (t >= kept) t = kept - 1;
        ulong run = 0;
        for (int i = 0; i < vocab; i++)
        {
            if (!keptIds.Contains(i)) continue;
            run += mass[i];
            if (t < run) return i;
        }
        throw new InvalidOperationException("unreachable");
    }
}
