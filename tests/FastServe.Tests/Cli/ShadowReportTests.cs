using System.Text;
using System.Text.Json;
using FastServe.Router.Shadow;
using NUnit.Framework;

namespace FastServe.Tests.Cli;

/// <summary>The shadow log reader behind <c>fastserve shadow-report</c>, in process: hostile lines, grouping,
/// percentiles, examples, bounded storage.</summary>
public class ShadowReportTests
{
    internal static string PairLine(string model = "gec", string primary = "a1b2", string shadow = "c3d4", int edit = 3, bool exact = false,
        int length = -1, string logprob = "-0.12", string latency = "4.2", string time = "2026-12-06T12:00:00.000Z", string prompt = "p") =>
        $$"""{"type":"pair","time":"{{time}}","model":"{{model}}","primary_version":"{{primary}}","shadow_version":"{{shadow}}","prompt":"{{prompt}}","primary_text":"x","shadow_text":"y","exact_match":{{(exact ? "true" : "false")}},"token_edit_distance":{{edit}},"length_delta":{{length}},"logprob_delta":{{logprob}},"latency_delta_ms":{{latency}},"primary_tokens":12,"shadow_tokens":11}""";

    internal static string SummaryLine(long pairs, long exact, long dropped = 0, string model = "gec", string primary = "a1b2", string shadow = "c3d4") =>
        $$"""{"type":"summary","time":"2026-12-06T13:00:00.000Z","model":"{{model}}","primary_version":"{{primary}}","shadow_version":"{{shadow}}","pairs":{{pairs}},"exact_matches":{{exact}},"dropped":{{dropped}}}""";

    private static (ShadowReport Report, List<ShadowReportError> Errors) Read(IEnumerable<string> lines, int examples = 5) =>
        Read(Encoding.UTF8.GetBytes(string.Join("\n", lines) + "\n"), examples);

    private static (ShadowReport Report, List<ShadowReportError> Errors) Read(byte[] bytes, int examples = 5)
    {
        var errors = new List<ShadowReportError>();
        var report = ShadowReport.Read(new MemoryStream(bytes), examples, errors.Add);
        return (report, errors);
    }

    [Test]
    public void EachBadLineGetsItsLineNumberAndCodeAndTheRestIsRead()
    {
        var (r, errors) = Read([
            PairLine(edit: 2),                                                  // 1
            "not json",                                                         // 2
            "[1, 2]",                                                           // 3
            """{"type":"pair"}""",                                              // 4 missing fields
            PairLine().Replace("\"token_edit_distance\":3", "\"token_edit_distance\":-3"), // 5
            PairLine().Replace("\"exact_match\":false", "\"exact_match\":\"no\""),         // 6
            PairLine(time: "yesterday"),                                        // 7
            "",                                                                 // 8 blank: skipped
            """{"type":"rollout","anything":1}""",                              // 9 unknown type: counted
            """{"type":7}""",                                                   // 10
            SummaryLine(10, 11),                                                // 11 exact > pairs
            PairLine(logprob: "\"low\""),                                       // 12
            PairLine(model: new string('m', 300)),                              // 13 name too long
            SummaryLine(10, 9),                                                 // 14
            PairLine(edit: 4, logprob: "null"),                                 // 15
        ]);
        Assert.That(errors.Select(e => (e.Line, e.Code)), Is.EqualTo(new[]
        {
            (2L, "shadow_report.invalid_json"), (3L, "shadow_report.invalid_json"), (4L, "shadow_report.invalid_field"),
            (5L, "shadow_report.invalid_field"), (6L, "shadow_report.invalid_field"), (7L, "shadow_report.invalid_field"),
            (10L, "shadow_report.invalid_field"), (11L, "shadow_report.invalid_field"), (12L, "shadow_report.invalid_field"),
            (13L, "shadow_report.invalid_field"),
        }));
        Assert.That(errors[3].Message, Does.Contain("token_edit_distance"));
        Assert.That(errors[0].ToString(), Does.StartWith("error[shadow_report.invalid_json]: line 2: "));
        Assert.That(r.Lines, Is.EqualTo(15));
        Assert.That(r.InvalidLines, Is.EqualTo(10));
        Assert.That(r.UnknownTypeLines, Is.EqualTo(1));
        Assert.That(r.PairLines, Is.EqualTo(2));
        Assert.That(r.SummaryLines, Is.EqualTo(1));
        var g = r.Groups.Single();
        Assert.That(g.PairLines, Is.EqualTo(2), "a bad line changes no figure");
        Assert.That(g.EditDistanceMean, Is.EqualTo(3));
        Assert.That(g.LogprobDeltaMean, Is.EqualTo(-0.12).Within(1e-12), "a null logprob_delta is left out of the mean");
        Assert.That(g.LastSummary!.Value.Pairs, Is.EqualTo(10));
    }

    [Test]
    public void LinesOverOneMebibyteAndInvalidUtf8AreRefused()
    {
        // {"type":"x"} padded with spaces to exactly the limit is read (and ignored as an unknown type); one byte
        // more is too long.
        string exact = "{\"type\":\"x\"" + new string(' ', ShadowReport.MaxLineBytes - 12) + "}";
        Assert.That(Encoding.UTF8.GetByteCount(exact), Is.EqualTo(ShadowReport.MaxLineBytes));
        var bytes = new List<byte>();
        bytes.AddRange(Encoding.UTF8.GetBytes(exact + "\n"));                                     // 1
        bytes.AddRange(Encoding.UTF8.GetBytes(exact.Insert(1, " ") + "\n"));                      // 2: limit + 1
        bytes.AddRange(Encoding.UTF8.GetBytes(exact + "\r\n"));                                   // 3: CRLF at the limit
        bytes.AddRange(Encoding.UTF8.GetBytes(new string('z', 3 * ShadowReport.MaxLineBytes) + "\n")); // 4
        bytes.AddRange(Encoding.UTF8.GetBytes("{\"type\":\"pair\",\"model\":\"g"));               // 5: invalid UTF-8 in a string
        bytes.AddRange([0xC3, 0x28]);
        bytes.AddRange(Encoding.UTF8.GetBytes("\"}\n"));
        bytes.AddRange(Encoding.UTF8.GetBytes(PairLine()));                                        // 6: no final newline
        var (r, errors) = Read([.. bytes]);
        Assert.That(errors.Select(e => (e.Line, e.Code)), Is.EqualTo(new[]
        {
            (2L, "shadow_report.line_too_long"), (4L, "shadow_report.line_too_long"), (5L, "shadow_report.invalid_json"),
        }));
        Assert.That(r.UnknownTypeLines, Is.EqualTo(2));
        Assert.That(r.PairLines, Is.EqualTo(1));
        Assert.That(r.Lines, Is.EqualTo(6));
    }

    [Test]
    public void GroupsByModelAndBothVersionsInOrder()
    {
        var (r, errors) = Read([
            PairLine(model: "gec", shadow: "zz"),
            PairLine(model: "chat", primary: "v1", shadow: "v2"),
            PairLine(model: "gec", shadow: "c3d4", exact: true, edit: 0),
            PairLine(model: "gec", shadow: "c3d4"),
            SummaryLine(5, 5, model: "gec", shadow: "zz"),
            SummaryLine(100, 90, dropped: 3, model: "gec", shadow: "zz"),
            SummaryLine(50, 45, dropped: 1, model: "gec", shadow: "zz"), // the last one counts, not the largest
            SummaryLine(7, 7, model: "other", shadow: "s"),               // a group with summaries only
        ]);
        Assert.That(errors, Is.Empty);
        Assert.That(r.Groups.Select(g => $"{g.Model}/{g.PrimaryVersion}/{g.ShadowVersion}"),
            Is.EqualTo(new[] { "chat/v1/v2", "gec/a1b2/c3d4", "gec/a1b2/zz", "other/a1b2/s" }));
        var c3 = r.Groups[1];
        Assert.That((c3.PairLines, c3.Disagreements), Is.EqualTo((2L, 1L)));
        Assert.That(c3.LastSummary, Is.Null);
        Assert.That(c3.ExactMatchRate, Is.NaN);
        var zz = r.Groups[2];
        Assert.That(zz.LastSummary!.Value.Pairs, Is.EqualTo(50));
        Assert.That(zz.LastSummary!.Value.Dropped, Is.EqualTo(1));
        Assert.That(zz.ExactMatchRate, Is.EqualTo(0.9));
        var other = r.Groups[3];
        Assert.That(other.PairLines, Is.Zero);
        Assert.That(other.EditDistanceMean, Is.NaN);
        Assert.That(other.EditDistanceP50, Is.NaN);
        Assert.That(other.LatencyDeltaMsP99, Is.NaN);
    }

    [Test]
    public void PercentilesAreNearestRank()
    {
        var rng = new Random(5);
        // Edit distances 1..100 and latency deltas −49..50 ms, shuffled.
        var lines = Enumerable.Range(1, 100).OrderBy(_ => rng.Next())
            .Select(i => PairLine(edit: i, latency: (i - 50).ToString(), length: i % 2 == 0 ? 2 : 0, logprob: i <= 50 ? "null" : "-1"))
            .ToList();
        lines.Add(PairLine(edit: 7, latency: "null", logprob: "null")); // left out of the latency and logprob figures only
        var (r, errors) = Read(lines);
        Assert.That(errors, Is.Empty);
        var g = r.Groups.Single();
        Assert.That(g.PairLines, Is.EqualTo(101));
        Assert.That(g.EditDistanceMean, Is.EqualTo((5050 + 7) / 101.0).Within(1e-12));
        Assert.That(g.EditDistanceP50, Is.EqualTo(50));
        Assert.That(g.EditDistanceP90, Is.EqualTo(90));
        Assert.That(g.EditDistanceMax, Is.EqualTo(100));
        Assert.That(g.LengthDeltaMean, Is.EqualTo((50 * 2 - 1) / 101.0).Within(1e-12));
        Assert.That(g.LogprobDeltaMean, Is.EqualTo(-1));
        Assert.That(g.LatencyDeltaMsMean, Is.EqualTo(0.5).Within(1e-12));
        Assert.That(g.LatencyDeltaMsP50, Is.EqualTo(0));
        Assert.That(g.LatencyDeltaMsP99, Is.EqualTo(49));
        Assert.That(g.Sampled, Is.False);
    }

    [Test]
    public void ExamplesAreTheLargestDisagreementsEarliestFirstOnATie()
    {
        var (r, _) = Read([
            PairLine(edit: 5, prompt: "a"),
            PairLine(edit: 50, exact: true, prompt: "same text"), // exact matches are no example
            PairLine(edit: 9, prompt: "b"),
            PairLine(edit: 5, prompt: "c"),
            PairLine(edit: 1, prompt: "d"),
            PairLine(edit: 9, prompt: "e"),
        ], examples: 3);
        Assert.That(r.Examples.Select(e => (e.TokenEditDistance, e.Prompt, e.Line)),
            Is.EqualTo(new[] { (9, "b", 3L), (9, "e", 6L), (5, "a", 1L) }));
        Assert.That(Read([PairLine()], examples: 0).Report.Examples, Is.Empty);
    }

    [Test]
    public void PastTheStoreThePercentilesComeFromAUniformSample()
    {
        var res = new Reservoir<int>(1000, 1);
        for (int i = 1; i <= 100_000; i++) res.Add(i);
        res.Seal();
        Assert.That(res.Seen, Is.EqualTo(100_000));
        Assert.That(res.Mean, Is.EqualTo(50_000.5), "the mean is over every value");
        Assert.That(res.Percentile(0.5), Is.EqualTo(50_000).Within(5_000));
        Assert.That(res.Percentile(0.9), Is.EqualTo(90_000).Within(3_000));
        Assert.That(res.Percentile(1.0), Is.GreaterThan(99_000));
    }

    [Test]
    public void GroupsPastTheCapAreCountedAndReportedOnce()
    {
        var lines = Enumerable.Range(0, ShadowReport.MaxGroups + 3).Select(i => PairLine(shadow: $"s{i}")).ToList();
        lines.Add(PairLine(shadow: "s0"));
        var (r, errors) = Read(lines);
        Assert.That(r.Groups, Has.Count.EqualTo(ShadowReport.MaxGroups));
        Assert.That(r.SkippedGroupLines, Is.EqualTo(3));
        Assert.That(errors.Select(e => (e.Line, e.Code)), Is.EqualTo(new[] { ((long)ShadowReport.MaxGroups + 1, "shadow_report.too_many_groups") }));
        Assert.That(r.PairLines, Is.EqualTo(ShadowReport.MaxGroups + 1));
    }
}

/// <summary><c>fastserve shadow-report</c> end to end through the published executable (dist/fastserve).</summary>
[NonParallelizable]
public class ShadowReportCliTests
{
    private static string Write(params string[] lines)
    {
        string path = Path.Combine(TestModels.TempDir("shadowreport"), "shadow.jsonl");
        File.WriteAllText(path, string.Join("\n", lines) + "\n");
        return path;
    }

    [Test]
    public void JsonHasTheFiguresOfEachGroup()
    {
        string path = Write(
            ShadowReportTests.PairLine(edit: 4, latency: "2.5", prompt: "worst"),
            "{oops",
            ShadowReportTests.PairLine(edit: 2, latency: "-1.5", logprob: "null"),
            ShadowReportTests.SummaryLine(20, 15, dropped: 2),
            """{"type":"future"}""");
        var res = CliTests.Run("shadow-report", path, "--json", "--examples", "1");
        Assert.That(res.Code, Is.Zero, res.Err);
        Assert.That(res.Err, Does.Contain("error[shadow_report.invalid_json]: line 2:"));
        using var doc = JsonDocument.Parse(res.Out);
        var root = doc.RootElement;
        Assert.That(root.GetProperty("lines").GetInt64(), Is.EqualTo(5));
        Assert.That(root.GetProperty("pair_lines").GetInt64(), Is.EqualTo(2));
        Assert.That(root.GetProperty("invalid_lines").GetInt64(), Is.EqualTo(1));
        Assert.That(root.GetProperty("unknown_type_lines").GetInt64(), Is.EqualTo(1));
        Assert.That(root.GetProperty("errors")[0].GetProperty("code").GetString(), Is.EqualTo("shadow_report.invalid_json"));
        var g = root.GetProperty("groups").EnumerateArray().Single();
        Assert.That(g.GetProperty("model").GetString(), Is.EqualTo("gec"));
        Assert.That(g.GetProperty("pairs").GetInt64(), Is.EqualTo(20));
        Assert.That(g.GetProperty("exact_match_rate").GetDouble(), Is.EqualTo(0.75));
        Assert.That(g.GetProperty("dropped").GetInt64(), Is.EqualTo(2));
        Assert.That(g.GetProperty("disagreements").GetInt64(), Is.EqualTo(2));
        var ed = g.GetProperty("token_edit_distance");
        Assert.That((ed.GetProperty("mean").GetDouble(), ed.GetProperty("p50").GetDouble(), ed.GetProperty("p90").GetDouble(), ed.GetProperty("max").GetDouble()),
            Is.EqualTo((3.0, 2.0, 4.0, 4.0)));
        Assert.That(g.GetProperty("length_delta_mean").GetDouble(), Is.EqualTo(-1));
        Assert.That(g.GetProperty("logprob_delta_mean").GetDouble(), Is.EqualTo(-0.12).Within(1e-12));
        var lat = g.GetProperty("latency_delta_ms");
        Assert.That((lat.GetProperty("mean").GetDouble(), lat.GetProperty("p50").GetDouble(), lat.GetProperty("p99").GetDouble()), Is.EqualTo((0.5, -1.5, 2.5)));
        var ex = root.GetProperty("examples").EnumerateArray().Single();
        Assert.That(ex.GetProperty("prompt").GetString(), Is.EqualTo("worst"));
        Assert.That(ex.GetProperty("line").GetInt64(), Is.EqualTo(1));
    }

    [Test]
    public void TheTableShowsEachGroupAndTheExamples()
    {
        string path = Write(ShadowReportTests.PairLine(edit: 4, prompt: "Correct: she go"), ShadowReportTests.SummaryLine(8, 6),
            ShadowReportTests.PairLine(model: "chat", edit: 1));
        var res = CliTests.Run("shadow-report", path);
        Assert.That(res.Code, Is.Zero, res.Err);
        Assert.That(res.Out, Does.Contain("a1b2 → c3d4").And.Contain("75.0 %").And.Contain("chat"));
        Assert.That(res.Out, Does.Contain("#1 edit distance 4").And.Contain("prompt:  Correct: she go"));
    }

    [Test]
    public void MissingEmptyAndBadArgumentsHaveStableCodes()
    {
        string dir = TestModels.TempDir("shadowreport");
        var missing = CliTests.Run("shadow-report", Path.Combine(dir, "nope.jsonl"));
        Assert.That(missing.Code, Is.EqualTo(1));
        Assert.That(missing.Err, Does.StartWith("error[shadow_report.file_not_found]"));

        string bad = Write("garbage", """{"type":"unknown"}""");
        var empty = CliTests.Run("shadow-report", bad, "--json");
        Assert.That(empty.Code, Is.EqualTo(1));
        Assert.That(empty.Err, Does.Contain("error[shadow_report.invalid_json]: line 1:").And.Contain("error[shadow_report.empty]"));
        using (var doc = JsonDocument.Parse(empty.Out))
            Assert.That(doc.RootElement.GetProperty("error").GetProperty("code").GetString(), Is.EqualTo("shadow_report.empty"));

        var n = CliTests.Run("shadow-report", bad, "--examples", "5000");
        Assert.That(n.Code, Is.EqualTo(1));
        Assert.That(n.Err, Does.StartWith("error[args.invalid_examples]"));
    }
}
