using System.Buffers;

namespace FastServe.Router.Shadow;

/// <summary>One side of a mirrored request: what a model version answered (docs/shadow.md).</summary>
/// <param name="Text">The generated text (null is read as empty).</param>
/// <param name="Tokens">The generated token ids, in order (null is read as none).</param>
/// <param name="MeanLogprob">Mean log-probability of the generated tokens (natural log, ≤ 0); NaN when unknown.</param>
/// <param name="LatencySeconds">Request to final answer, seconds, as the router saw it.</param>
public readonly record struct ShadowAnswer(string Text, int[] Tokens, double MeanLogprob, double LatencySeconds);

/// <summary>How a shadow's answer differs from the primary's. Every delta is shadow minus primary.</summary>
/// <param name="ExactMatch">The two texts are equal (ordinal, byte for byte).</param>
/// <param name="TokenEditDistance">Levenshtein distance over the token id sequences (insert, delete, substitute cost
/// 1 each), computed over the first <see cref="ShadowDiff.MaxTokens"/> tokens of each side, plus the difference in
/// length of the tails cut off beyond them.</param>
/// <param name="LengthDelta">Shadow tokens − primary tokens (whole sequences, not capped).</param>
/// <param name="LogprobDelta">Shadow mean logprob − primary mean logprob; NaN when either is NaN.</param>
/// <param name="LatencyDeltaSeconds">Shadow latency − primary latency, seconds.</param>
public readonly record struct ShadowDiffResult(bool ExactMatch, int TokenEditDistance, int LengthDelta, double LogprobDelta, double LatencyDeltaSeconds);

/// <summary>Compares a primary answer with its shadow's. Pure and thread-safe; allocates nothing for answers up to
/// <see cref="StackTokens"/> tokens and rents from <see cref="ArrayPool{T}"/> beyond.</summary>
public static class ShadowDiff
{
    /// <summary>Tokens of each side the edit distance looks at. The DP costs O(n·m): at this cap, 16.8 M cells
    /// (tens of milliseconds), so a caller on a latency-sensitive thread should hand long pairs to another one.</summary>
    public const int MaxTokens = 4096;

    /// <summary>Longest shorter side whose two DP rows live on the stack (2 × 257 ints = 2 KiB).</summary>
    public const int StackTokens = 256;

    public static ShadowDiffResult Compute(in ShadowAnswer primary, in ShadowAnswer shadow)
    {
        ReadOnlySpan<int> p = primary.Tokens, s = shadow.Tokens;
        double logprob = double.IsNaN(primary.MeanLogprob) || double.IsNaN(shadow.MeanLogprob)
            ? double.NaN
            : shadow.MeanLogprob - primary.MeanLogprob;
        return new ShadowDiffResult(
            string.Equals(primary.Text ?? "", shadow.Text ?? "", StringComparison.Ordinal),
            EditDistance(p, s),
            s.Length - p.Length,
            logprob,
            shadow.LatencySeconds - primary.LatencySeconds);
    }

    /// <summary>Levenshtein distance of <paramref name="a"/> and <paramref name="b"/>, each cut at
    /// <see cref="MaxTokens"/>; the cut tails add |tail(a) − tail(b)|, as if their common length matched. Exact when
    /// neither side passes the cap; past it an estimate that misses alignments across the cut, off by at most the
    /// longer tail's length below and twice it above (answers that long are rare: max_tokens is usually far below).</summary>
    public static int EditDistance(ReadOnlySpan<int> a, ReadOnlySpan<int> b)
    {
        int tailA = Math.Max(0, a.Length - MaxTokens), tailB = Math.Max(0, b.Length - MaxTokens);
        a = a[..(a.Length - tailA)];
        b = b[..(b.Length - tailB)];
        return Levenshtein(a, b) + Math.Abs(tailA - tailB);
    }

    private static int Levenshtein(ReadOnlySpan<int> a, ReadOnlySpan<int> b)
    {
        // Shared prefix and suffix cost nothing; near-identical answers (the common case) end here in O(n).
        int pre = a.CommonPrefixLength(b);
        a = a[pre..];
        b = b[pre..];
        int suf = 0;
        while (suf < a.Length && suf < b.Length && a[a.Length - 1 - suf] == b[b.Length - 1 - suf]) suf++;
        a = a[..(a.Length - suf)];
        b = b[..(b.Length - suf)];
        if (a.Length < b.Length) { var t = a; a = b; b = t; }
        if (b.Length == 0) return a.Length;

        // Two rows over the shorter side, b.
        int width = b.Length + 1;
        int[]? rented = null;
        Span<int> rows = width <= StackTokens + 1
            ? stackalloc int[2 * (StackTokens + 1)]
            : (rented = ArrayPool<int>.Shared.Rent(2 * width));
        Span<int> prev = rows[..width], cur = rows.Slice(width, width);
        for (int j = 0; j < width; j++) prev[j] = j;
        for (int i = 1; i <= a.Length; i++)
        {
            cur[0] = i;
            int ai = a[i - 1];
            for (int j = 1; j < width; j++)
            {
                int sub = prev[j - 1] + (ai == b[j - 1] ? 0 : 1);
                int del = prev[j] + 1, ins = cur[j - 1] + 1;
                cur[j] = Math.Min(sub, Math.Min(del, ins));
            }
            var t = prev; prev = cur; cur = t;
        }
        int d = prev[width - 1];
        if (rented is not null) ArrayPool<int>.Shared.Return(rented);
        return d;
    }
}
