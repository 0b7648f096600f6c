using FastServe.Runtime;
using FastServe.Runtime.Generation;
using NUnit.Framework;

namespace FastServe.Tests.Generation;

public class SamplerTests
{
    private static float[] Logits(params float[] probs) => probs.Select(p => MathF.Log(p)).ToArray();

    [Test]
    public void GreedyPicksTheFirstMaximum()
    {
        var s = new Sampler(5, new SamplingParams());
        Assert.That(s.Sample([1f, 3f, 2f, 3f, 0f], 0, default, out _), Is.EqualTo(1));
    }

    [Test]
    public void SameSeedSameTokensAndFrequenciesFollowTheDistribution()
    {
        var logits = Logits(0.5f, 0.3f, 0.15f, 0.05f);
        var p = new SamplingParams { Temperature = 1, Seed = 42 };
        var s1 = new Sampler(4, p);
        var s2 = new Sampler(4, p);
        var counts = new int[4];
        for (int i = 0; i < 20000; i++)
        {
            int a = s1.Sample(logits, i, default, out _);
            Assert.That(s2.Sample(logits, i, default, out _), Is.EqualTo(a));
            counts[a]++;
        }
        double[] expected = [0.5, 0.3, 0.15, 0.05];
        for (int i = 0; i < 4; i++) Assert.That(counts[i] / 20000.0, Is.EqualTo(expected[i]).Within(0.015), $"token {i}");
    }

    [Test]
    public void TopPKeepsTheSmallestSetReachingP()
    {
        // Sorted mass: 0.5, 0.8, 0.95, 1.0 -> top_p 0.8 keeps tokens {0, 1} only, renormalized 0.625 / 0.375.
        var logits = Logits(0.3f, 0.05f, 0.5f, 0.15f);
        var s = new Sampler(4, new SamplingParams { Temperature = 1, TopP = 0.8f, Seed = 1 });
        var counts = new int[4];
        for (int i = 0; i < 20000; i++) counts[s.Sample(logits, i, default, out _)]++;
        Assert.That(counts[1] + counts[3], Is.Zero);
        Assert.That(counts[2] / 20000.0, Is.EqualTo(0.625).Within(0.015));
    }

    [Test]
    public void TopKThenTopPAndTemperature()
    {
        var logits = Logits(0.4f, 0.3f, 0.2f, 0.1f);
        var k1 = new Sampler(4, new SamplingParams { Temperature = 5, TopK = 1, Seed = 3 });
        for (int i = 0; i < 100; i++) Assert.That(k1.Sample(logits, i, default, out _), Is.EqualTo(0));
        var k2 = new Sampler(4, new SamplingParams { Temperature = 1, TopK = 2, Seed = 3 });
        var counts = new int[4];
        for (int i = 0; i < 20000; i++) counts[k2.Sample(logits, i, default, out _)]++;
        Assert.That(counts[2] + counts[3], Is.Zero);
        Assert.That(counts[0] / 20000.0, Is.EqualTo(0.4 / 0.7).Within(0.015));
        // A large vocabulary exercises the heap paths.
        var big = new float[5000];
        var r = new Random(9);
        for (int i = 0; i < big.Length; i++) big[i] = (float)r.NextDouble();
        big[1234] = 30;
        var s = new Sampler(big.Length, new SamplingParams { Temperature = 1, TopP = 0.5f, Seed = 5 });
        for (int i = 0; i < 50; i++) Assert.That(s.Sample(big, i, default, out _), Is.EqualTo(1234));
        var sk = new Sampler(big.Length, new SamplingParams { Temperature = 1, TopK = 100, TopP = 0.5f, Seed = 5 });
        Assert.That(sk.Sample(big, 0, default, out _), Is.EqualTo(1234));
    }

    [Test]
    public void LogprobsAreTheRawDistributionDescending()
    {
        var logits = Logits(0.1f, 0.6f, 0.3f);
        var s = new Sampler(3, new SamplingParams { Logprobs = 2 });
        var top = new TokenLogprob[2];
        int t = s.Sample(logits, 0, top, out float lp);
        Assert.That(t, Is.EqualTo(1));
        Assert.That(lp, Is.EqualTo(MathF.Log(0.6f)).Within(1e-5));
        Assert.That(top[0], Is.EqualTo(new TokenLogprob(1, top[0].Logprob)));
        Assert.That(top[1].Id, Is.EqualTo(2));
        Assert.That(top[1].Logprob, Is.EqualTo(MathF.Log(0.3f)).Within(1e-5));
    }

    [TestCase(-0.1f, 0, 1f, 1, 0, "temperature")]
    [TestCase(float.NaN, 0, 1f, 1, 0, "temperature")]
    [TestCase(1f, -1, 1f, 1, 0, "top_k")]
    [TestCase(1f, 0, 0f, 1, 0, "top_p")]
    [TestCase(1f, 0, 1.5f, 1, 0, "top_p")]
    [TestCase(1f, 0, 1f, 0, 0, "max_tokens")]
    [TestCase(1f, 0, 1f, 1, 21, "logprobs")]
    public void OutOfRangeParametersAreRejected(float t, int k, float p, int max, int lp, string name)
    {
        var sp = new SamplingParams { Temperature = t, TopK = k, TopP = p, MaxTokens = max, Logprobs = lp };
        var e = Assert.Throws<FastServeException>(sp.Validate)!;
        Assert.That(e.Code, Is.EqualTo("sampling.invalid"));
        Assert.That(e.Path, Is.EqualTo(name));
    }
}
