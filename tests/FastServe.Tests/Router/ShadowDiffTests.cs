using FastServe.Router.Shadow;
using NUnit.Framework;

namespace FastServe.Tests.Router;

/// <summary>ShadowDiff: the token edit distance against a plain full-matrix Levenshtein, the cap, and the deltas.</summary>
public class ShadowDiffTests
{
    private static int Ed(int[] a, int[] b) => ShadowDiff.EditDistance(a, b);

    // The textbook O(n·m) matrix: the reference the two-row version must agree with.
    private static int Reference(int[] a, int[] b)
    {
        var d = new int[a.Length + 1, b.Length + 1];
        for (int i = 0; i <= a.Length; i++) d[i, 0] = i;
        for (int j = 0; j <= b.Length; j++) d[0, j] = j;
        for (int i = 1; i <= a.Length; i++)
            for (int j = 1; j <= b.Length; j++)
                d[i, j] = Math.Min(Math.Min(d[i - 1, j] + 1, d[i, j - 1] + 1), d[i - 1, j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1));
        return d[a.Length, b.Length];
    }

    [Test]
    public void EmptyAndEqualSequences()
    {
        Assert.That(Ed([], []), Is.Zero);
        Assert.That(Ed([], [1, 2, 3]), Is.EqualTo(3));
        Assert.That(Ed([4, 5], []), Is.EqualTo(2));
        Assert.That(Ed([1, 2, 3], [1, 2, 3]), Is.Zero);
    }

    [Test]
    public void InsertDeleteSubstituteCostOneEach()
    {
        Assert.That(Ed([1, 2, 3], [1, 9, 2, 3]), Is.EqualTo(1), "insert");
        Assert.That(Ed([1, 2, 3], [1, 3]), Is.EqualTo(1), "delete");
        Assert.That(Ed([1, 2, 3], [1, 7, 3]), Is.EqualTo(1), "substitute");
        Assert.That(Ed([1, 2], [2, 1]), Is.EqualTo(2), "a swap is two edits");
        // kitten → sitting, as token ids: k=1 i=2 t=3 e=4 n=5 s=6 g=7.
        Assert.That(Ed([1, 2, 3, 3, 4, 5], [6, 2, 3, 3, 2, 5, 7]), Is.EqualTo(3));
        Assert.That(Ed([1, 2, 3, 4], [5, 6, 7, 8]), Is.EqualTo(4));
    }

    [Test]
    public void AgreesWithTheFullMatrixOnRandomSequences()
    {
        var rng = new Random(11);
        // Short ones (the stack rows), and longer than ShadowDiff.StackTokens (the pooled rows); a small alphabet so
        // the sequences share a lot, as two versions' answers do.
        foreach (int max in new[] { 8, 40, 300, 700 })
            for (int k = 0; k < 30; k++)
            {
                var a = Enumerable.Range(0, rng.Next(max)).Select(_ => rng.Next(6)).ToArray();
                var b = rng.Next(2) == 0
                    ? Enumerable.Range(0, rng.Next(max)).Select(_ => rng.Next(6)).ToArray()
                    : Mutate(a, rng, rng.Next(1, 6));
                Assert.That(Ed(a, b), Is.EqualTo(Reference(a, b)), $"lengths {a.Length} and {b.Length}");
                Assert.That(Ed(b, a), Is.EqualTo(Reference(a, b)), "symmetric");
            }
    }

    private static int[] Mutate(int[] a, Random rng, int edits)
    {
        var l = a.ToList();
        for (int e = 0; e < edits; e++)
        {
            int op = rng.Next(3), at = rng.Next(l.Count + 1);
            if (op == 0 || l.Count == 0) l.Insert(at, rng.Next(6));
            else if (op == 1) l.RemoveAt(Math.Min(at, l.Count - 1));
            else l[Math.Min(at, l.Count - 1)] = rng.Next(6);
        }
        return [.. l];
    }

    [Test]
    public void BeyondTheCapOnlyTheTailsLengthsCount()
    {
        const int cap = ShadowDiff.MaxTokens;
        var a = Enumerable.Range(0, cap + 1000).ToArray();
        Assert.That(Ed(a, a), Is.Zero);
        // b: a's first `cap` tokens, one substituted inside the cap, and a tail 400 shorter that differs entirely.
        var b = a[..(cap + 600)].ToArray();
        b[10] = -1;
        for (int i = cap; i < b.Length; i++) b[i] = -2;
        Assert.That(Ed(a, b), Is.EqualTo(1 + 400), "1 inside the cap, |1000 − 600| for the tails, their contents unseen");
        Assert.That(Ed(a, a[..cap]), Is.EqualTo(1000));
        Assert.That(Ed(a[..cap], a[..(cap - 5)]), Is.EqualTo(5), "at the cap itself the distance is exact");
    }

    [Test]
    public void ShortPairsAllocateNothing()
    {
        var p = new ShadowAnswer(" She goes.\n", [10, 20, 30, 40, 50, 60], -0.3, 0.040);
        var s = new ShadowAnswer(" She went.\n", [10, 20, 31, 40, 60, 70, 80], -0.5, 0.052);
        ShadowDiff.Compute(p, s); // JIT
        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 100; i++) ShadowDiff.Compute(p, s);
        Assert.That(GC.GetAllocatedBytesForCurrentThread() - before, Is.Zero);
    }

    [Test]
    public void DeltasAreShadowMinusPrimary()
    {
        var p = new ShadowAnswer(" She goes.\n", [1, 2, 3, 4], -0.25, 0.040);
        var s = new ShadowAnswer(" She went.\n", [1, 2, 5], -0.75, 0.030);
        var d = ShadowDiff.Compute(p, s);
        Assert.That(d.ExactMatch, Is.False);
        Assert.That(d.TokenEditDistance, Is.EqualTo(2));
        Assert.That(d.LengthDelta, Is.EqualTo(-1));
        Assert.That(d.LogprobDelta, Is.EqualTo(-0.5).Within(1e-12));
        Assert.That(d.LatencyDeltaSeconds, Is.EqualTo(-0.010).Within(1e-12));
    }

    [Test]
    public void ExactMatchIsOrdinalOnTheTextsAlone()
    {
        var p = new ShadowAnswer("Straße", [1], -0.1, 0);
        Assert.That(ShadowDiff.Compute(p, p with { Tokens = [2, 3] }).ExactMatch, Is.True, "same text, other tokens");
        Assert.That(ShadowDiff.Compute(p, p with { Text = "STRASSE" }).ExactMatch, Is.False);
        Assert.That(ShadowDiff.Compute(p, p with { Text = "straße" }).ExactMatch, Is.False);
        // A default answer (null text and tokens) reads as empty.
        var d = ShadowDiff.Compute(default, new ShadowAnswer("", [], double.NaN, 0));
        Assert.That(d.ExactMatch, Is.True);
        Assert.That(d.TokenEditDistance, Is.Zero);
    }

    [Test]
    public void AnUnknownLogprobOnEitherSideMakesTheDeltaNaN()
    {
        var known = new ShadowAnswer("x", [1], -0.5, 0.01);
        var unknown = known with { MeanLogprob = double.NaN };
        Assert.That(ShadowDiff.Compute(known, unknown).LogprobDelta, Is.NaN);
        Assert.That(ShadowDiff.Compute(unknown, known).LogprobDelta, Is.NaN);
        Assert.That(ShadowDiff.Compute(unknown, unknown).LogprobDelta, Is.NaN);
        Assert.That(ShadowDiff.Compute(known, known).LogprobDelta, Is.Zero);
    }
}
