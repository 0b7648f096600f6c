using System.Text.Json;
using FastServe.Client.Load;
using FastServe.Protocol.Stats;
using FastServe.Runtime.Formats;
using FastServe.Runtime.Model;
using FastServe.Runtime.Tokenization;
using NUnit.Framework;

namespace FastServe.Tests.Client;

/// <summary>The grammar-correction workload (the gec model's held-out sentences in its prompt format) and the arrival
/// processes of the load generator.</summary>
public class WorkloadTests
{
    // The built-in default model's tokenizer (gec-small: byte-level BPE from vocab.json + merges.txt), loaded as a
    // replica loads it; the workload is that model's prompt format.
    private static readonly Lazy<TextTokenizer> s_gec = new(() =>
    {
        string dir = DefaultModel.Resolve();
        var cfg = ModelConfig.Load(Path.Combine(dir, "config.json"));
        return TextTokenizer.Load(dir, cfg.BosTokenId, cfg.EosTokenIds.Count > 0 ? cfg.EosTokenIds : null);
    });

    [Test]
    public void CorpusIsTheHeldOutTestSetInTheModelsPromptFormat()
    {
        var sentences = GrammarCorpus.Sentences;
        string jsonl = Path.Combine(TestModels.RepoRoot, "tools", "gec", "data", "test.jsonl");
        var expected = File.ReadLines(jsonl).Where(l => l.Length > 0)
            .Select(l => { using var d = JsonDocument.Parse(l); return d.RootElement.GetProperty("source").GetString()!; }).ToArray();
        Assert.That(sentences, Is.EqualTo(expected), "the embedded file is tools/gec/data/test.jsonl, in file order");
        Assert.That(sentences.Count, Is.EqualTo(1200));
        Assert.That(sentences.Distinct(StringComparer.Ordinal).Count(), Is.EqualTo(sentences.Count), "sentences are distinct");
        Assert.That(sentences.All(s => s.Length > 10 && !s.Contains('\n') && s.Trim() == s), Is.True);
        Assert.That(GrammarCorpus.Prompt("She don't like apples."), Is.EqualTo("Correct: She don't like apples.\nFixed:"));
    }

    [Test]
    public void EveryPromptRoundTripsThroughTheDefaultModelsTokenizerIn10To38Tokens()
    {
        var tok = s_gec.Value;
        Assert.That(tok.BosId, Is.Not.Null);
        var counts = new List<int>();
        foreach (string p in GrammarCorpus.Prompts())
        {
            int[] ids = tok.Encode(p, addBos: true);
            Assert.That(ids[0], Is.EqualTo(tok.BosId), "the server prepends BOS");
            Assert.That(tok.Decode(ids.AsSpan(1)), Is.EqualTo(p), "round trip");
            counts.Add(ids.Length);
        }
        double mean = counts.Average();
        TestContext.Out.WriteLine($"prompt tokens with BOS: mean {mean:F1}, min {counts.Min()}, max {counts.Max()}");
        // Measured with gec-small's tokenizer: mean 17.9, min 10, max 38. The bounds leave room for a retrained
        // tokenizer, not for another prompt format.
        Assert.That(mean, Is.InRange(14.0, 22.0));
        Assert.That(counts.Min(), Is.GreaterThanOrEqualTo(8));
        Assert.That(counts.Max(), Is.LessThanOrEqualTo(48));
    }

    [TestCase("{\"source\": \"ok sentence.\"}\nnot json\n", "line 2: not JSON")]
    [TestCase("{\"target\": \"x\"}\n", "line 1: not an object")]
    [TestCase("[\"source\"]\n", "line 1: not an object")]
    [TestCase("{\"source\": 3}\n", "line 1: not an object")]
    [TestCase("\n\n", "no sentences")]
    public void MalformedCorpusLinesAreNamed(string text, string message) =>
        Assert.That(() => GrammarCorpus.Parse(new StringReader(text)),
            Throws.InstanceOf<InvalidDataException>().With.Message.Contains(message));

    private static double[] Gaps(ArrivalProcess a, int n)
    {
        var gaps = new double[n];
        double prev = 0;
        for (int i = 0; i < n; i++)
        {
            double t = a.Next();
            gaps[i] = t - prev;
            prev = t;
        }
        return gaps;
    }

    private static (double Mean, double Cv) Stats(double[] x)
    {
        double mean = x.Average();
        double var = x.Sum(v => (v - mean) * (v - mean)) / (x.Length - 1);
        return (mean, Math.Sqrt(var) / mean);
    }

    [Test]
    public void PoissonGapsHaveMeanOneOverRateAndCvOne()
    {
        var a = new ArrivalProcess(ArrivalKind.Poisson, 1, new ConstantProfile(200, 10), 0, seed: 3);
        var (mean, cv) = Stats(Gaps(a, 200_000));
        TestContext.Out.WriteLine($"poisson: mean gap {mean * 1000:F4} ms, CV {cv:F4}");
        Assert.That(mean, Is.EqualTo(1 / 200.0).Within(1.5).Percent);
        Assert.That(cv, Is.EqualTo(1.0).Within(0.015));
    }

    [TestCase(4.0)]
    [TestCase(0.25)]
    public void GammaGapsHaveCvSqrtB(double b)
    {
        var a = new ArrivalProcess(ArrivalKind.Gamma, b, new ConstantProfile(50, 10), 0, seed: 11);
        var (mean, cv) = Stats(Gaps(a, 400_000));
        TestContext.Out.WriteLine($"gamma B={b}: mean gap {mean * 1000:F4} ms, CV {cv:F4} (expected {Math.Sqrt(b):F4})");
        Assert.That(mean, Is.EqualTo(1 / 50.0).Within(2).Percent);
        Assert.That(cv, Is.EqualTo(Math.Sqrt(b)).Within(3).Percent);
    }

    [Test]
    public void GammaSamplerMatchesItsMomentsForSmallAndLargeShapes()
    {
        var rng = new Random(1);
        foreach (double k in new[] { 0.1, 0.5, 1, 3, 20 })
        {
            var x = Enumerable.Range(0, 200_000).Select(_ => ArrivalProcess.Gamma(rng, k)).ToArray();
            double mean = x.Average(), var = x.Sum(v => (v - mean) * (v - mean)) / (x.Length - 1);
            Assert.That(mean, Is.EqualTo(k).Within(3).Percent, $"mean, shape {k}");
            Assert.That(var, Is.EqualTo(k).Within(6).Percent, $"variance, shape {k}");
            Assert.That(x.All(v => v >= 0 && double.IsFinite(v)), Is.True);
        }
    }

    [Test]
    public void WarmupRunsAtTheStartingRateThenTheProfileIsFollowed()
    {
        // Ramp 100 → 300 req/s over 20 s after 5 s of warm-up at 100: 500 + 20 × 200 = 4500 arrivals expected.
        var profile = RateProfile.Parse("ramp:100:300", 20);
        var a = new ArrivalProcess(ArrivalKind.Poisson, 1, profile, 5, seed: 9);
        var times = new List<double>();
        for (double t = a.Next(); t < 25; t = a.Next()) times.Add(t);
        Assert.That(times.Count(t => t < 5), Is.EqualTo(500).Within(70));
        Assert.That(times.Count, Is.EqualTo(4500).Within(200));
        // The last 2 s of the ramp run near 290 req/s, the first 2 s after warm-up near 110.
        Assert.That(times.Count(t => t >= 23) / 2.0, Is.EqualTo(290).Within(30));
        Assert.That(times.Count(t => t >= 5 && t < 7) / 2.0, Is.EqualTo(110).Within(20));
        Assert.That(profile.MeanRate, Is.EqualTo(200).Within(0.01));
    }

    [Test]
    public void DailyProfileHasANightAFastMorningRampAndAPeak()
    {
        var d = (DailyProfile)RateProfile.Parse("daily:10:1000", 240); // one "hour" is 10 s
        Assert.That(d.Rate(0), Is.EqualTo(10).Within(1e-9));
        Assert.That(d.Rate(50), Is.EqualTo(10).Within(1e-9), "05:00 is night");
        Assert.That(d.Rate(80), Is.EqualTo(1000).Within(1e-6), "08:00 is the peak");
        Assert.That(d.Rate(70), Is.EqualTo(505).Within(1), "07:00 is half way up the morning ramp");
        Assert.That(d.Rate(130), Is.InRange(850.0, 880.0), "the midday dip");
        Assert.That(d.Rate(239.9), Is.LessThan(15), "back to night at midnight");
        // Steepest rise in the morning: the ramp takes 2 "hours", the evening decline 6.
        double morning = (d.Rate(75) - d.Rate(65)) / 10, evening = (d.Rate(205) - d.Rate(215)) / 10;
        Assert.That(morning, Is.GreaterThan(2.5 * evening));
        // Arrivals follow the cumulative rate.
        var a = new ArrivalProcess(ArrivalKind.Poisson, 1, d, 0, seed: 2);
        int n = 0;
        for (double t = a.Next(); t < 240; t = a.Next()) n++;
        Assert.That(n, Is.EqualTo(d.Cumulative(240)).Within(3).Percent);
        Assert.That(d.InverseCumulative(d.Cumulative(123.4)), Is.EqualTo(123.4).Within(1e-6));
    }

    [TestCase("ramp:1")]
    [TestCase("ramp:a:b")]
    [TestCase("ramp:-1:5")]
    [TestCase("daily:9:3")]
    [TestCase("hourly:1:2")]
    [TestCase("ramp:0:0")]
    public void BadProfilesAreRejected(string spec) =>
        Assert.That(() => RateProfile.Parse(spec, 10), Throws.InstanceOf<FormatException>());

    [Test]
    public void PercentilesAreNearestRankAndTheReservoirStaysUnbiased()
    {
        var s = new SampleSet();
        for (int i = 1; i <= 1000; i++) s.Add(i);
        var sum = s.Summarize();
        Assert.That((sum.P50, sum.P90, sum.P99, sum.P999, sum.Max, sum.Count), Is.EqualTo((500.0, 900.0, 990.0, 999.0, 1000.0, 1000L)));
        Assert.That(sum.Mean, Is.EqualTo(500.5));
        for (int i = 0; i < 2; i++) s.Add(double.PositiveInfinity);
        var withLate = s.Summarize();
        Assert.That((withLate.P999, withLate.Max, withLate.Mean), Is.EqualTo((double.PositiveInfinity, double.PositiveInfinity, double.PositiveInfinity)));
        Assert.That(withLate.P99, Is.EqualTo(992.0));

        var r = new SampleSet(capacity: 10_000);
        for (int i = 0; i < 1_000_000; i++) r.Add(i % 1000);
        var rs = r.Summarize();
        Assert.That(rs.Count, Is.EqualTo(1_000_000));
        Assert.That(rs.P50, Is.EqualTo(500).Within(25));
        Assert.That(rs.P99, Is.EqualTo(990).Within(5));
        Assert.That(rs.Mean, Is.EqualTo(499.5).Within(1e-6), "the mean covers every sample");
        Assert.That(LatencySummary.Empty.P50, Is.NaN);
    }
}
