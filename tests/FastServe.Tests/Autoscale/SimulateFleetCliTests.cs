using System.Text.Json;
using FastServe.Tests.Cli;
using NUnit.Framework;

namespace FastServe.Tests.Autoscale;

/// <summary><c>fastserve simulate-fleet</c> through the published binary: the report, its timeline and chart, and
/// bad flags.</summary>
public class SimulateFleetCliTests
{
    [Test]
    public void JsonWithTimelineAndChart()
    {
        string png = Path.Combine(TestModels.TempDir("simulate-fleet"), "fleet.png");
        var r = CliTests.Run("simulate-fleet", "--trace", "daily:2000:20000", "--hours", "9", "--spike-at-h", "8", "--sample-s", "300",
            "--target-concurrency", "74", "--json", "--timeline", "--chart", png);
        Assert.That(r.Code, Is.Zero, r.Err);
        using var doc = JsonDocument.Parse(r.Out);
        var root = doc.RootElement;
        Assert.That(root.GetProperty("chart").GetString(), Is.EqualTo(png));
        var policies = root.GetProperty("policies").EnumerateArray().ToArray();
        Assert.That(policies.Select(p => p.GetProperty("policy").GetString()), Is.EqualTo(new[] { "autoscale", "hpa", "kpa", "static", "oracle" }));
        foreach (var p in policies)
        {
            var t = p.GetProperty("timeline");
            Assert.That(t.GetProperty("sample_s").GetDouble(), Is.EqualTo(300));
            foreach (var series in new[] { "t_s", "rate_rps", "ready", "paid", "p99_ms" })
                Assert.That(t.GetProperty(series).GetArrayLength(), Is.EqualTo(9 * 12), series);
            double peakRate = t.GetProperty("rate_rps").EnumerateArray().Max(v => v.GetDouble());
            Assert.That(peakRate, Is.GreaterThan(20000).And.LessThanOrEqualTo(40000), "the surge at 8 h doubles the day's rate");
        }
        var autoscale = policies[0].GetProperty("timeline");
        double nightReady = autoscale.GetProperty("ready")[0].GetDouble(), dayReady = autoscale.GetProperty("ready").EnumerateArray().Max(v => v.GetDouble());
        Assert.That(dayReady, Is.GreaterThan(5 * nightReady), "the fleet follows the morning ramp");
        Assert.That(policies[3].GetProperty("timeline").GetProperty("ready").EnumerateArray().Select(v => v.GetDouble()).Distinct().Count(), Is.EqualTo(1), "static never moves");
        byte[] head = File.ReadAllBytes(png).Take(8).ToArray();
        Assert.That(head, Is.EqualTo(new byte[] { 0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A }), "a PNG");
    }

    [TestCase(new[] { "--trace", "daily:1:2", "--chart", "x.svg" }, "args.invalid_chart")]
    [TestCase(new[] { "--trace", "daily:1:2", "--timeline" }, "args.invalid_timeline")]
    [TestCase(new[] { "--trace", "daily:1:2", "--sample-s", "0" }, "args.invalid_sample")]
    [TestCase(new[] { "--trace", "weekly:1:2" }, "args.invalid_trace")]
    [TestCase(new[] { "--trace-csv", "/nonexistent.csv" }, "trace.not_found")]
    public void BadFlagsAreOneClearError(string[] args, string code)
    {
        var r = CliTests.Run(["simulate-fleet", .. args]);
        Assert.That(r.Code, Is.Not.Zero);
        Assert.That(r.Err, Does.StartWith($"error[{code}]"), r.Err);
    }
}
