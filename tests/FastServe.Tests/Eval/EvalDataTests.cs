using System.Text;
using FastServe.Eval;
using NUnit.Framework;

namespace FastServe.Tests.Eval;

/// <summary>Reading evaluation data: good lines become examples, each bad line one error with a stable code.</summary>
public class EvalDataTests
{
    private static List<(EvalExample? Example, EvalDataError? Error)> Read(string text) =>
        [.. EvalData.Read(new MemoryStream(Encoding.UTF8.GetBytes(text)))];

    [Test]
    public void GoodLinesBecomeExamplesAndExtraFieldsAreIgnored()
    {
        var r = Read("""
            {"source": "She go.", "target": "She goes.", "errors": ["subject_verb"], "id": 7, "note": "x"}

            {"source": "Fine.", "target": "Fine.", "id": "b"}
            """);
        Assert.That(r, Has.Count.EqualTo(2));
        Assert.That(r[0].Example, Is.EqualTo(new EvalExample(1, "7", "She go.", "She goes.", ["subject_verb"])).Using<EvalExample>((a, b) =>
            a.Line == b.Line && a.Id == b.Id && a.Source == b.Source && a.Target == b.Target && a.Errors.SequenceEqual(b.Errors)));
        Assert.That(r[1].Example!.Line, Is.EqualTo(3), "blank lines still count");
        Assert.That(r[1].Example!.IsCorrect, Is.True);
    }

    [TestCase("not json", "eval.invalid_json")]
    [TestCase("[1, 2]", "eval.invalid_json")]
    [TestCase("""{"source": "a"}""", "eval.missing_field")]
    [TestCase("""{"source": 3, "target": "a"}""", "eval.missing_field")]
    [TestCase("""{"source": "  ", "target": "a"}""", "eval.invalid_field")]
    [TestCase("""{"source": "a\nb", "target": "a"}""", "eval.invalid_field")]
    [TestCase("""{"source": "a", "target": "a", "id": [1]}""", "eval.invalid_field")]
    [TestCase("""{"source": "a", "target": "a", "errors": "x"}""", "eval.invalid_field")]
    public void ABadLineIsOneErrorAndReadingGoesOn(string bad, string code)
    {
        var r = Read(bad + "\n" + """{"source": "ok.", "target": "ok."}""");
        Assert.That(r, Has.Count.EqualTo(2));
        Assert.That(r[0].Error!.Code, Is.EqualTo(code));
        Assert.That(r[0].Error!.Line, Is.EqualTo(1));
        Assert.That(r[1].Example!.Source, Is.EqualTo("ok."));
    }

    [Test]
    public void AnOverlongLineIsSkippedWithoutBeingHeld()
    {
        string huge = """{"source": """ + "\"" + new string('a', EvalData.MaxLineBytes) + "\", \"target\": \"a\"}";
        var r = Read(huge + "\n" + """{"source": "ok.", "target": "ok."}""" + "\n");
        Assert.That(r[0].Error!.Code, Is.EqualTo("eval.line_too_long"));
        Assert.That(r[1].Example!.Line, Is.EqualTo(2));
    }

    [Test]
    public void TheShippedTestSetReadsWithoutError()
    {
        using var s = File.OpenRead(Path.Combine(TestModels.RepoRoot, "tools/gec/data/test.jsonl"));
        var r = EvalData.Read(s).ToList();
        Assert.That(r.Count(x => x.Error is not null), Is.Zero);
        Assert.That(r, Has.Count.GreaterThanOrEqualTo(1000));
    }
}
