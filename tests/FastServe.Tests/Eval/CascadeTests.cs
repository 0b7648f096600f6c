using FastServe.Eval;
using NUnit.Framework;

namespace FastServe.Tests.Eval;

/// <summary>The offline cascade: which answers escalate at a threshold, the scores of what clients would get, and its cost.</summary>
public class CascadeTests
{
    private static EvalJudgement J(int line, string src, string tgt, string answer, double min, double device, bool finished = true) =>
        EvalJudgement.Of(new EvalExample(line, null, src, tgt, []),
            new EvalOutput(finished ? "finished" : "failed", null, null, " " + answer + "\n", "eos", 4, min * 4, min, device));

    // Example 1: cheap right and sure. 2: cheap wrong and unsure, strong right. 3: both wrong, cheap unsure.
    // 4: cheap failed (escalates whatever the threshold), strong right.
    private static readonly EvalJudgement[] Cheap =
    [
        J(1, "She go.", "She goes.", "She goes.", -0.1, 0.001),
        J(2, "He are.", "He is.", "He am.", -2.0, 0.001),
        J(3, "a b", "A b.", "a b", -1.0, 0.001),
        J(4, "It fine.", "It is fine.", "", double.NaN, 0.001, finished: false),
    ];
    private static readonly EvalJudgement[] Strong =
    [
        J(1, "She go.", "She goes.", "She goes.", -0.1, 0.004),
        J(2, "He are.", "He is.", "He is.", -0.2, 0.004),
        J(3, "a b", "A b.", "A b", -0.5, 0.004),
        J(4, "It fine.", "It is fine.", "It is fine.", -0.1, 0.004),
    ];

    [Test]
    public void NeverAndAlwaysAreTheTiersAloneExceptThatAFailedCheapAnswerAlwaysEscalates()
    {
        var never = Cascade.At(Cheap, Strong, double.NegativeInfinity);
        Assert.That(never.EscalationRate, Is.EqualTo(0.25), "only the failed one");
        Assert.That(never.Summary.ExactMatch, Is.EqualTo(0.5));
        var always = Cascade.At(Cheap, Strong, double.PositiveInfinity);
        Assert.That(always.EscalationRate, Is.EqualTo(1));
        Assert.That(always.Summary.ExactMatch, Is.EqualTo(0.75));
        Assert.That(always.DeviceSecondsPerRequest, Is.EqualTo(0.005).Within(1e-12), "every request pays both tiers");
    }

    [Test]
    public void AThresholdEscalatesExactlyTheLessConfidentAnswers()
    {
        var p = Cascade.At(Cheap, Strong, -1.5);
        Assert.That(p.EscalationRate, Is.EqualTo(0.5), "example 2 (min -2.0) and the failed one; -1.0 stays");
        Assert.That(p.Summary.ExactMatch, Is.EqualTo(0.75), "1 from cheap, 2 and 4 from strong");
        Assert.That(p.DeviceSecondsPerRequest, Is.EqualTo((4 * 0.001 + 2 * 0.004) / 4).Within(1e-12));
        Assert.That(Cascade.Escalates(Cheap[2].Output, -1.0), Is.False, "escalate below the threshold, not at it");
    }

    [Test]
    public void ThresholdsRunFromNeverToAlwaysThroughTheCheapRunsQuantiles()
    {
        var t = Cascade.Thresholds(Cheap, 0.5);
        Assert.That(t.First(), Is.EqualTo(double.NegativeInfinity));
        Assert.That(t.Last(), Is.EqualTo(double.PositiveInfinity));
        Assert.That(t, Is.Ordered);
        Assert.That(t, Does.Contain(-1.0), "the median of -2, -1, -0.1");
    }

    [Test]
    public void RunsOverDifferentExamplesAreRefused() =>
        Assert.Throws<ArgumentException>(() => Cascade.At(Cheap, Strong.Reverse().ToArray(), 0));
}
