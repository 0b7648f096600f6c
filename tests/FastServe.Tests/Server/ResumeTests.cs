using System.Text;
using FastServe.Protocol;
using NUnit.Framework;

namespace FastServe.Tests.Server;

/// <summary>
/// A replica resuming a generation (REQUEST flag <c>resume</c>, protocol 1.3) on the real trained gec-tiny, CPU: given
/// the ids and text bytes a client already had at any point of a run, it sends exactly the rest of that run — the
/// same ids (greedy, and seeded sampling: the counter-based sampler draws by position), the same text from the next
/// byte on (including text a stop string held back at that point), and a FINAL counting every completion token.
/// </summary>
[TestFixture, NonParallelizable]
public sealed class ResumeTests
{
    private const string Prompt = "Correct the grammar: she go to school yesterday and buyed two book.";
    private ReplicaProcess _r = null!;
    private RawConnection _c = null!;
    private ulong _next;

    private static string GecTiny => Path.Combine(TestModels.RepoRoot, "models", "gec-tiny");

    [OneTimeSetUp]
    public void Start()
    {
        _r = ReplicaProcess.Start(["--backend", "cpu", "--model", GecTiny, "--workers", "1", "--overlap", "off"], metrics: false, agent: false);
        _c = RawConnection.Open(_r.Port);
        Assert.That(_c.Server.Minor, Is.GreaterThanOrEqualTo(3));
    }

    [OneTimeTearDown]
    public void Stop()
    {
        _c?.Dispose();
        _r?.Dispose();
    }

    private Outcome Run(RequestParams p, IReadOnlyList<string>? stops = null, int[]? resumed = null, uint? textBytes = null)
    {
        ulong id = ++_next;
        _c.Send(w => FrameWriter.Request(w, id, p, Encoding.UTF8.GetBytes(Prompt), default, stops, resumed ?? [], textBytes));
        Assert.That(_c.Collect([id], 60), Is.True, _r.Stderr);
        return _c.Outcomes[id];
    }

    private static RequestParams Params(float temperature, ulong? seed) =>
        RequestParams.Default with { MaxTokens = 40, IgnoreEos = true, Temperature = temperature, Seed = seed };

    // Resumes `full` after each of a few of its deltas and checks the rest matches.
    private void AssertResumesContinue(Outcome full, RequestParams p, IReadOnlyList<string>? stops = null)
    {
        Assert.That(full.Final.Status, Is.EqualTo(WireStatus.Ok), full.Detail);
        Assert.That(full.Marks.Count, Is.GreaterThan(4));
        var ids = full.Ids.ToArray();
        var text = full.Text.ToArray();
        foreach (var (k, tb) in new[] { full.Marks[0], full.Marks[full.Marks.Count / 2], full.Marks[^2] })
        {
            var r = Run(p, stops, ids[..k], (uint)tb);
            string where = $"resumed after {k} ids and {tb} text bytes";
            Assert.That(r.Final.Status, Is.EqualTo(WireStatus.Ok), $"{where}: {r.Detail} {r.Message}");
            Assert.That(r.Ids, Is.EqualTo(ids[k..]), where);
            Assert.That(Encoding.UTF8.GetString(r.Text.ToArray()), Is.EqualTo(Encoding.UTF8.GetString(text[tb..])), where);
            Assert.That(r.Final.Finish, Is.EqualTo(full.Final.Finish), where);
            Assert.That(r.Final.CompletionTokens, Is.EqualTo(full.Final.CompletionTokens), $"{where}: resumed ids count as completion tokens");
            Assert.That(r.Final.PromptTokens, Is.EqualTo(full.Final.PromptTokens), where);
        }
    }

    [Test]
    public void AGreedyResumeSendsExactlyTheRestOfTheRun()
    {
        var p = Params(0, null);
        var full = Run(p);
        TestContext.Out.WriteLine($"greedy: {full.Ids.Count} ids, {full.Marks.Count} deltas: {full.TextString}");
        AssertResumesContinue(full, p);
    }

    [Test]
    public void ASeededSampledResumeDrawsWhatTheRunDrew()
    {
        var p = Params(0.9f, 4242);
        var full = Run(p);
        Assert.That(full.Ids, Is.Not.EqualTo(Run(Params(0, null)).Ids), "temperature 0.9 samples something else than greedy");
        AssertResumesContinue(full, p);
    }

    [Test]
    public void TextAStopStringHeldBackAtTheResumePointIsSentOnce()
    {
        var p = Params(0, null);
        var plain = Run(p);
        // A stop string starting with the character before a delta boundary (and never matching): the run holds that
        // character back at the boundary, so a client resumed there has less text than the ids produced.
        int mid = plain.Marks.Count / 2;
        string before = Encoding.UTF8.GetString(plain.Text.ToArray(), 0, plain.Marks[mid].TextBytes);
        string stop = before[^1] + "\u0007\u0007";
        var full = Run(p, [stop]);
        Assert.That(full.TextString, Is.EqualTo(plain.TextString), "the stop string never matches");
        Assert.That(full.Marks[mid].TextBytes, Is.LessThan(plain.Marks[mid].TextBytes), "text is held back at the boundary");
        AssertResumesContinue(full, p, [stop]);
    }

    [Test]
    public void AResumeOfAFinishedRunAnswersItsFinalAtOnce()
    {
        // Every id delivered, the FINAL lost: the replica answers it, releasing the text held at the end.
        var p = Params(0, null);
        var full = Run(p, ["\u0007"]);
        var (k, tb) = full.Marks[^1];
        Assert.That(k, Is.EqualTo(40));
        var r = Run(p, ["\u0007"], full.Ids.ToArray(), (uint)tb);
        Assert.That(r.Final.Status, Is.EqualTo(WireStatus.Ok), r.Detail);
        Assert.That(r.Final.Finish, Is.EqualTo(WireFinish.Length));
        Assert.That(r.Ids, Is.Empty);
        Assert.That(r.Text.ToArray(), Is.EqualTo(full.Text.ToArray()[tb..]));
        Assert.That(r.Final.CompletionTokens, Is.EqualTo(40u));
    }

    [Test]
    public void ANoTextResumeContinuesTheIds()
    {
        var p = Params(0, null) with { NoText = true };
        var full = Run(p);
        Assert.That(full.Text, Is.Empty);
        var ids = full.Ids.ToArray();
        var r = Run(p, null, ids[..17], 0);
        Assert.That((r.Final.Status, r.Ids, r.Final.CompletionTokens), Is.EqualTo((WireStatus.Ok, ids[17..], 40u)), r.Detail);
        var withText = Run(p, null, ids[..17], 5);
        Assert.That((withText.Final.Status, withText.Detail), Is.EqualTo((WireStatus.BadRequest, "request.bad_resume")), "a no_text client was sent no text");
    }

    [Test]
    public void ResumeFieldsThatDoNotFitTheRequestAreRefused()
    {
        var p = Params(0, null);
        var full = Run(p);
        var ids = full.Ids.ToArray();
        int tb = full.Marks[2].TextBytes;
        var outOfVocab = Run(p, null, [.. ids[..2], 1 << 20], 0);
        Assert.That((outOfVocab.Final.Status, outOfVocab.Detail), Is.EqualTo((WireStatus.BadRequest, "prompt.invalid_token")));
        var tooMuchText = Run(p, null, ids[..full.Marks[2].Ids], (uint)tb + 64);
        Assert.That((tooMuchText.Final.Status, tooMuchText.Detail), Is.EqualTo((WireStatus.BadRequest, "request.bad_resume")));
        var overMax = Run(p with { MaxTokens = 2 }, null, ids[..3], 0);
        Assert.That((overMax.Final.Status, overMax.Detail), Is.EqualTo((WireStatus.BadRequest, "request.bad_resume")));
        Assert.That(_c.Errors, Is.Empty, "refusals are per request; the connection carries on");
    }
}
