using System.Text;
using System.Text.Json;
using FastServe.Router.Shadow;
using NUnit.Framework;

namespace FastServe.Tests.Router;

/// <summary>ShadowLog: what it writes (the schema of docs/shadow.md), what it drops and counts, and that it never
/// throws on the caller's thread, not even when the disk fails.</summary>
public class ShadowLogTests
{
    /// <summary>A clock that moves only when told (the per-second cap reads it).</summary>
    private sealed class ManualClock : TimeProvider
    {
        public long Ticks = 1_000_000;
        public override long TimestampFrequency => 1_000_000;
        public override long GetTimestamp() => Interlocked.Read(ref Ticks);
        public void Advance(double seconds) => Interlocked.Add(ref Ticks, (long)(seconds * 1_000_000));
    }

    internal static ShadowRecord Pair(int i, string model = "gec", string primary = "a1b2", string shadow = "c3d4", int edit = 3) =>
        new(new DateTime(2026, 12, 6, 12, 0, 0, DateTimeKind.Utc).AddSeconds(i), model, primary, shadow,
            $"Correct: sentence {i}\nFixed:", $" primary {i}\n", $" shadow {i}\n",
            new ShadowDiffResult(edit == 0, edit, -1, -0.12, 0.0042), 12, 11);

    private static string[] Lines(string path) => File.ReadAllLines(path).Where(l => l.Length > 0).ToArray();

    [Test]
    public async Task WritesThePairLineOfTheSchema()
    {
        string path = Path.Combine(TestModels.TempDir("shadowlog"), "shadow.jsonl");
        await using (var log = new ShadowLog(path))
        {
            var r = Pair(0) with { Diff = new ShadowDiffResult(false, 3, -1, double.NaN, 0.0042) };
            Assert.That(log.TryWritePair(r), Is.True);
        }
        var lines = Lines(path);
        Assert.That(lines, Has.Length.EqualTo(1));
        Assert.That(lines[0], Is.EqualTo(
            """
            {"type":"pair","time":"2026-12-06T12:00:00.000Z","model":"gec","primary_version":"a1b2","shadow_version":"c3d4","prompt":"Correct: sentence 0\nFixed:","primary_text":" primary 0\n","shadow_text":" shadow 0\n","exact_match":false,"token_edit_distance":3,"length_delta":-1,"logprob_delta":null,"latency_delta_ms":4.2,"primary_tokens":12,"shadow_tokens":11}
            """));
    }

    [Test]
    public async Task TextsAreCutTo4096BytesBetweenCharacters()
    {
        string path = Path.Combine(TestModels.TempDir("shadowlog"), "shadow.jsonl");
        // 'é' is 2 bytes, '😀' 4 (a surrogate pair): 4095 bytes of 'a' leave no room for either.
        string prompt = new string('a', 4095) + "😀tail";
        string primary = new string('é', 3000);
        await using (var log = new ShadowLog(path))
            Assert.That(log.TryWritePair(Pair(0) with { Prompt = prompt, PrimaryText = primary, ShadowText = "\ud800 lone" }), Is.True);
        using var doc = JsonDocument.Parse(Lines(path)[0]);
        string p = doc.RootElement.GetProperty("prompt").GetString()!;
        string t = doc.RootElement.GetProperty("primary_text").GetString()!;
        Assert.That(p, Is.EqualTo(new string('a', 4095)));
        Assert.That(t, Is.EqualTo(new string('é', 2048)));
        Assert.That(Encoding.UTF8.GetByteCount(t), Is.EqualTo(4096));
        Assert.That(doc.RootElement.GetProperty("shadow_text").GetString(), Does.EndWith(" lone"), "a lone surrogate does not lose the line");
    }

    [Test]
    public async Task TheRateCapDropsAndCountsPairsPastTheSecondsLimit()
    {
        string path = Path.Combine(TestModels.TempDir("shadowlog"), "shadow.jsonl");
        var clock = new ManualClock();
        // The writer starts at disposal, so every summary is still waiting when the next comes.
        var log = new ShadowLog(path, maxLinesPerSecond: 3, queueCapacity: 100, clock, start: false);
        var first = Enumerable.Range(0, 10).Select(i => log.TryWritePair(Pair(i))).ToArray();
        Assert.That(first, Is.EqualTo(new[] { true, true, true, false, false, false, false, false, false, false }));
        Assert.That(log.Dropped, Is.EqualTo(7));
        clock.Advance(1);
        var second = Enumerable.Range(10, 5).Select(i => log.TryWritePair(Pair(i))).ToArray();
        Assert.That(second.Count(x => x), Is.EqualTo(3), "a new second, a new allowance");
        // Summaries are not pairs: the cap leaves them alone.
        for (int i = 0; i < 5; i++) log.WriteSummary(new ShadowSummary(DateTime.UtcNow, "gec", "a1b2", "c3d4", 100 + i, 90, 9));
        await log.DisposeAsync();
        Assert.That(log.Dropped, Is.EqualTo(9));
        Assert.That(log.Written, Is.EqualTo(6 + 1), "six pairs and the latest summary (one group)");
        var lines = Lines(path);
        Assert.That(lines, Has.Length.EqualTo(7));
        using var last = JsonDocument.Parse(lines.Single(l => l.Contains("\"summary\"")));
        Assert.That(last.RootElement.GetProperty("pairs").GetInt64(), Is.EqualTo(104), "a waiting summary is replaced by its group's newer one");
        Assert.That(log.TryWritePair(Pair(99)), Is.False, "closed");
    }

    [Test]
    public async Task AFullQueueDropsAndCountsWithoutBlocking()
    {
        string path = Path.Combine(TestModels.TempDir("shadowlog"), "shadow.jsonl");
        // The writer stays stopped, so the queue fills deterministically.
        var log = new ShadowLog(path, maxLinesPerSecond: 1000, queueCapacity: 4, TimeProvider.System, start: false);
        var ok = Enumerable.Range(0, 10).Select(i => log.TryWritePair(Pair(i))).ToArray();
        Assert.That(ok.Count(x => x), Is.EqualTo(4));
        Assert.That(ok.Skip(4), Is.All.False);
        Assert.That(log.Dropped, Is.EqualTo(6));
        log.WriteSummary(new ShadowSummary(DateTime.UtcNow, "gec", "a1b2", "c3d4", 10, 0, 6));
        await log.DisposeAsync(); // starts the writer, which drains what was queued
        Assert.That(log.Written, Is.EqualTo(5));
        Assert.That(Lines(path).Select(l => JsonDocument.Parse(l).RootElement.GetProperty("type").GetString()),
            Is.EqualTo(new[] { "pair", "pair", "pair", "pair", "summary" }));
    }

    [Test]
    public async Task SummariesOfTooManyGroupsAreDroppedAndCounted()
    {
        string path = Path.Combine(TestModels.TempDir("shadowlog"), "shadow.jsonl");
        var log = new ShadowLog(path, 100, 16, TimeProvider.System, start: false);
        for (int i = 0; i <= ShadowLog.MaxSummaryGroups; i++) log.WriteSummary(new ShadowSummary(DateTime.UtcNow, "gec", "a", $"s{i}", 1, 1, 0));
        log.WriteSummary(new ShadowSummary(DateTime.UtcNow, "gec", "a", "s0", 2, 2, 0)); // a known group still gets through
        await log.DisposeAsync();
        Assert.That(log.Dropped, Is.EqualTo(1));
        Assert.That(log.Written, Is.EqualTo(ShadowLog.MaxSummaryGroups));
        Assert.That(File.ReadLines(path).Single(l => l.Contains("\"shadow_version\":\"s0\",")), Does.Contain("\"pairs\":2,"));
    }

    [Test]
    public async Task EveryPairFromManyThreadsIsWrittenOrCounted()
    {
        string path = Path.Combine(TestModels.TempDir("shadowlog"), "shadow.jsonl");
        var log = new ShadowLog(path, maxLinesPerSecond: 1500, queueCapacity: 64);
        int accepted = 0;
        await Task.WhenAll(Enumerable.Range(0, 4).Select(t => Task.Run(() =>
        {
            for (int i = 0; i < 1000; i++)
                if (log.TryWritePair(Pair(t * 1000 + i))) Interlocked.Increment(ref accepted);
        })));
        await log.DisposeAsync();
        Assert.That(log.Written + log.Dropped, Is.EqualTo(4000));
        Assert.That(log.Written, Is.EqualTo(accepted));
        Assert.That(Lines(path), Has.Length.EqualTo(accepted));
        Assert.That(log.LastError, Is.Null);
    }

    [Test]
    public async Task LinesAppearWithoutDisposingAndAppendAcrossRestarts()
    {
        string path = Path.Combine(TestModels.TempDir("shadowlog"), "shadow.jsonl");
        // A fragment left by a writer that died mid-line must not swallow the next line.
        File.WriteAllText(path, "{\"type\":\"pair\",\"ti");
        await using (var log = new ShadowLog(path))
        {
            Assert.That(log.TryWritePair(Pair(1)), Is.True);
            var until = DateTime.UtcNow.AddSeconds(10);
            while (log.Written < 1 && DateTime.UtcNow < until) await Task.Delay(10);
            Assert.That(log.Written, Is.EqualTo(1), "flushed once the queue ran empty");
            using var s = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
            Assert.That(new StreamReader(s).ReadToEnd(), Does.EndWith("\"shadow_tokens\":11}\n"));
        }
        await using (var log = new ShadowLog(path))
            log.TryWritePair(Pair(2));
        var lines = Lines(path);
        Assert.That(lines, Has.Length.EqualTo(3));
        Assert.That(lines[1], Does.StartWith("{\"type\":\"pair\",\"time\":\"2026-12-06T12:00:01.000Z\""));
        Assert.That(lines[2], Does.StartWith("{\"type\":\"pair\",\"time\":\"2026-12-06T12:00:02.000Z\""));
    }

    [Test]
    public async Task AWriteErrorStopsTheLogWithoutThrowing()
    {
        if (!File.Exists("/dev/full")) Assert.Ignore("needs /dev/full");
        var log = new ShadowLog("/dev/full", maxLinesPerSecond: 1000, queueCapacity: 16);
        Assert.That(log.TryWritePair(Pair(0)), Is.True);
        var until = DateTime.UtcNow.AddSeconds(10);
        while (log.LastError is null && DateTime.UtcNow < until) await Task.Delay(10);
        Assert.That(log.LastError, Does.Contain("/dev/full"));
        Assert.That(log.TryWritePair(Pair(1)), Is.False, "the log has stopped");
        log.WriteSummary(new ShadowSummary(DateTime.UtcNow, "gec", "a", "b", 1, 0, 0));
        await log.DisposeAsync(); // never throws: the test fails if it does
        Assert.That(log.Written, Is.Zero);
        Assert.That(log.Dropped, Is.EqualTo(3), "the failed line, the refused pair and the summary");
    }

    [Test]
    public void AFileThatCannotBeOpenedFailsAtConstructionNamingThePath()
    {
        string path = Path.Combine(TestModels.TempDir("shadowlog"), "no-such-dir", "shadow.jsonl");
        var e = Assert.Throws<IOException>(() => _ = new ShadowLog(path))!;
        Assert.That(e.Message, Does.Contain(path).And.Contain("cannot open"));
        Assert.Throws<ArgumentOutOfRangeException>(() => _ = new ShadowLog(path, maxLinesPerSecond: 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => _ = new ShadowLog(path, queueCapacity: 0));
    }

    [Test]
    public async Task TheReportReadsBackWhatTheLogWrote()
    {
        string path = Path.Combine(TestModels.TempDir("shadowlog"), "shadow.jsonl");
        await using (var log = new ShadowLog(path, maxLinesPerSecond: 1000))
        {
            for (int i = 1; i <= 10; i++) Assert.That(log.TryWritePair(Pair(i, edit: i)), Is.True);
            Assert.That(log.TryWritePair(Pair(11, shadow: "e5f6", edit: 0)), Is.True);
            log.WriteSummary(new ShadowSummary(new DateTime(2026, 12, 6, 13, 0, 0, DateTimeKind.Utc), "gec", "a1b2", "c3d4", 50, 40, 0));
        }
        var errors = new List<ShadowReportError>();
        using var s = File.OpenRead(path);
        var report = ShadowReport.Read(s, 3, errors.Add);
        Assert.That(errors, Is.Empty);
        Assert.That(report.PairLines, Is.EqualTo(11));
        Assert.That(report.SummaryLines, Is.EqualTo(1));
        Assert.That(report.Groups.Select(g => g.ShadowVersion), Is.EqualTo(new[] { "c3d4", "e5f6" }));
        var g = report.Groups[0];
        Assert.That(g.PairLines, Is.EqualTo(10));
        Assert.That(g.EditDistanceMean, Is.EqualTo(5.5));
        Assert.That(g.EditDistanceMax, Is.EqualTo(10));
        Assert.That(g.LengthDeltaMean, Is.EqualTo(-1));
        Assert.That(g.LogprobDeltaMean, Is.EqualTo(-0.12).Within(1e-9));
        Assert.That(g.LatencyDeltaMsP50, Is.EqualTo(4.2).Within(1e-9));
        Assert.That(g.ExactMatchRate, Is.EqualTo(0.8));
        Assert.That(report.Groups[1].Disagreements, Is.Zero);
        Assert.That(report.Examples.Select(e => e.TokenEditDistance), Is.EqualTo(new[] { 10, 9, 8 }));
        Assert.That(report.Examples[0].PrimaryText, Is.EqualTo(" primary 10\n"));
    }
}
