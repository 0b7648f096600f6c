using FastServe.Eval;
using NUnit.Framework;

namespace FastServe.Tests.Eval;

/// <summary>Edit extraction and the scores built on it, on hand-made cases.</summary>
public class EditsTests
{
    [Test]
    public void TokensKeepContractionsAndSplitPunctuation() =>
        Assert.That(Edits.Tokenize("She doesn't like the dog's apples, ok?"),
            Is.EqualTo(new[] { "She", "doesn't", "like", "the", "dog's", "apples", ",", "ok", "?" }));

    [Test]
    public void AnUnchangedSentenceHasNoEdit() =>
        Assert.That(Edits.Extract("She likes apples.", "She likes apples."), Is.Empty);

    [Test]
    public void AChangedWordIsOneSubstitution() =>
        Assert.That(Edits.Extract("She don't like apples.", "She doesn't like apples."), Is.EqualTo(new[] { new Edit(1, 2, "doesn't") }));

    [Test]
    public void AMissingArticleIsOneInsertionBeforeItsWord() =>
        Assert.That(Edits.Extract("He wants to be dancer.", "He wants to be a dancer."), Is.EqualTo(new[] { new Edit(4, 4, "a") }));

    [Test]
    public void InsertedWordsTogetherAreOneEdit() =>
        Assert.That(Edits.Extract("He went school.", "He went to the school."), Is.EqualTo(new[] { new Edit(2, 2, "to the") }));

    [Test]
    public void DeletedWordsTogetherAreOneEditAndADoubledWordLosesItsFirstCopy()
    {
        Assert.That(Edits.Extract("It was was very very good.", "It was very good."), Is.EqualTo(new[] { new Edit(1, 2, ""), new Edit(3, 4, "") }));
        Assert.That(Edits.Extract("the the the cat", "the cat"), Is.EqualTo(new[] { new Edit(0, 2, "") }));
    }

    [Test]
    public void SeveralErrorsAreSeparateEditsInSourceOrder() =>
        Assert.That(Edits.Extract("How many books has you the ghostwriten so far", "How many books have you ghostwritten so far?"),
            Is.EqualTo(new[] { new Edit(3, 4, "have"), new Edit(5, 6, ""), new Edit(6, 7, "ghostwritten"), new Edit(9, 9, "?") }));

    [Test]
    public void CapitalizationAndPunctuationAreEdits() =>
        Assert.That(Edits.Extract("the cat sat", "The cat sat."), Is.EqualTo(new[] { new Edit(0, 1, "The"), new Edit(3, 3, ".") }));

    [Test]
    public void CompareCountsTruePositivesFalsePositivesAndFalseNegatives()
    {
        const string src = "She go to school in monday";
        var gold = Edits.Extract(src, "She goes to school on Monday.");
        var hyp = Edits.Extract(src, "She goes to the school in Monday");
        Assert.That(gold, Has.Count.EqualTo(4));
        Assert.That(hyp, Has.Count.EqualTo(3));
        Assert.That(Edits.Compare(hyp, gold), Is.EqualTo((2, 1, 2)), "goes and Monday right, 'the' wrong, 'on' and '.' missed");
    }

    [Test]
    public void FBetaWeighsPrecisionFourTimesAsMuchAsRecallAtHalf()
    {
        Assert.That(EvalScore.FBeta(1, 1, 0.5), Is.EqualTo(1));
        Assert.That(EvalScore.FBeta(0, 0, 0.5), Is.Zero);
        Assert.That(EvalScore.FBeta(0.5, 0.25, 0.5), Is.EqualTo(1.25 * 0.5 * 0.25 / (0.25 * 0.5 + 0.25)).Within(1e-12));
        Assert.That(EvalScore.FBeta(0.8, 0.4, 0.5), Is.GreaterThan(EvalScore.FBeta(0.4, 0.8, 0.5)), "precision counts more");
    }

    private static EvalExample Ex(string src, string tgt) => new(1, null, src, tgt, []);

    private static EvalOutput Answer(string sentence, double lpSum = double.NaN, double lpMin = double.NaN, int tokens = 0) =>
        new("finished", null, null, " " + sentence + "\n", "eos", tokens, lpSum, lpMin);

    [Test]
    public void TheScoreSumsEditsOverTheSetAndCountsCopiesOfCorrectInputs()
    {
        var score = new EvalScore();
        score.Add(EvalJudgement.Of(Ex("She go home.", "She goes home."), Answer("She goes home.", -2, -1.5, 4)));      // tp 1
        score.Add(EvalJudgement.Of(Ex("He is here.", "He is here."), Answer("He is here.", -1, -0.5, 4)));          // copy
        score.Add(EvalJudgement.Of(Ex("It is fine.", "It is fine."), Answer("It is fine!", -4, -3, 4)));            // fp 1, not copied
        score.Add(EvalJudgement.Of(Ex("a dog barked", "A dog barked."), Answer("A dog barked")));                   // tp 1, fn 1, no logprobs
        score.Add(EvalJudgement.Of(Ex("we was late.", "We were late."),
            new EvalOutput("overloaded", "engine.queue_full", "full", "", null, 0, double.NaN, double.NaN)));        // fn 2, counts as unchanged
        var s = score.Summarize(2);
        Assert.That(s.Examples, Is.EqualTo(5));
        Assert.That(s.Finished, Is.EqualTo(4));
        Assert.That(s.ExactMatch, Is.EqualTo(0.4));
        Assert.That((s.Tp, s.Fp, s.Fn), Is.EqualTo((2L, 1L, 3L)));
        Assert.That(s.Precision, Is.EqualTo(2.0 / 3));
        Assert.That(s.Recall, Is.EqualTo(2.0 / 5));
        Assert.That(s.F05, Is.EqualTo(EvalScore.FBeta(2.0 / 3, 2.0 / 5, 0.5)));
        Assert.That(s.CorrectInputs, Is.EqualTo(2));
        Assert.That(s.CopyRate, Is.EqualTo(0.5));
        Assert.That(s.MeanLogprob, Is.EqualTo(-7.0 / 12).Within(1e-12), "over tokens of the examples that report log-probabilities");
        Assert.That(s.MeanMinLogprob, Is.EqualTo(-5.0 / 3).Within(1e-12));
        Assert.That(s.TokensPerSecond, Is.EqualTo(6));
    }

    [Test]
    public void NoEditsAnywhereMeansPerfectPrecisionAndRecall()
    {
        var score = new EvalScore();
        score.Add(EvalJudgement.Of(Ex("Fine.", "Fine."), Answer("Fine.")));
        var s = score.Summarize(1);
        Assert.That((s.Precision, s.Recall, s.F05, s.CopyRate), Is.EqualTo((1.0, 1.0, 1.0, 1.0)));
    }

    [Test]
    public void AnAnswerIsTheTextBeforeItsNewlineWithoutTheLeadingSpace()
    {
        Assert.That(GecFormat.ParseAnswer(" She goes home.\n"), Is.EqualTo("She goes home."));
        Assert.That(GecFormat.ParseAnswer(" cut off"), Is.EqualTo("cut off"));
        Assert.That(GecFormat.ParseAnswer("  two spaces\nmore"), Is.EqualTo(" two spaces"));
        Assert.That(GecFormat.Prompt("x y"), Is.EqualTo("Correct: x y\nFixed:"));
    }
}
