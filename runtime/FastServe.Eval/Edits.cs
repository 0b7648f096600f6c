using System.Text.RegularExpressions;

namespace FastServe.Eval;

/// <summary>
/// One edit of a sentence, in the source's tokens: replace tokens [<see cref="Start"/>, <see cref="End"/>) with
/// <see cref="Replacement"/> (tokens joined by one space; empty for a deletion; Start == End for an insertion).
/// Two edits are the same edit when all three fields are equal.
/// </summary>
public readonly record struct Edit(int Start, int End, string Replacement);

/// <summary>
/// Edit extraction, as ERRANT does it at the word level but simpler: both sentences are split into tokens (words,
/// with contractions and possessives kept whole, and single punctuation marks), aligned by a weighted Levenshtein
/// alignment, and the alignment's changes are grouped into edits: each substituted token is one edit; a run of
/// deleted tokens is one edit; a run of tokens inserted at one place is one edit. Deleting or inserting a token costs
/// 1; substituting costs 0.5 between tokens that differ only in case and 1 to 2 otherwise, less the more alike their
/// letters are (as ERRANT's character cost does), so a changed token is one substitution, never a deletion and an
/// insertion, and "in monday" → "on Monday." aligns in→on and monday→Monday rather than shifting words. Ties
/// between equally cheap alignments are broken the same way every time (prefer match or substitution, then
/// deletion, then insertion, walking back from the end), so a hypothesis equal to the reference always yields
/// exactly the reference's edits.
/// </summary>
public static partial class Edits
{
    [GeneratedRegex(@"\w+(?:['’]\w+)*|[^\w\s]")]
    private static partial Regex TokenPattern();

    /// <summary>The tokens of <paramref name="sentence"/>.</summary>
    public static string[] Tokenize(string sentence)
    {
        var ms = TokenPattern().Matches(sentence);
        var r = new string[ms.Count];
        for (int i = 0; i < r.Length; i++) r[i] = ms[i].Value;
        return r;
    }

    /// <summary>The edits that turn <paramref name="source"/> into <paramref name="corrected"/>, in source order.</summary>
    public static List<Edit> Extract(string source, string corrected) => Extract(Tokenize(source), Tokenize(corrected));

    /// <summary>The edits that turn token sequence <paramref name="a"/> into <paramref name="b"/>, in order.</summary>
    public static List<Edit> Extract(string[] a, string[] b)
    {
        int n = a.Length, m = b.Length;
        // d[i, j]: the cost of aligning a[..i] with b[..j]. Sentences are short (tens of tokens), so the full table is fine.
        var d = new double[n + 1, m + 1];
        var sub = new double[n, m];
        for (int i = 0; i <= n; i++) d[i, 0] = i;
        for (int j = 0; j <= m; j++) d[0, j] = j;
        for (int i = 1; i <= n; i++)
            for (int j = 1; j <= m; j++)
            {
                sub[i - 1, j - 1] = SubstitutionCost(a[i - 1], b[j - 1]);
                d[i, j] = Math.Min(d[i - 1, j - 1] + sub[i - 1, j - 1], Math.Min(d[i - 1, j], d[i, j - 1]) + 1);
            }

        // Walk back, collecting operations from the end; 'M' match, 'S' substitute, 'D' delete a[i-1], 'I' insert b[j-1].
        // d[i, j] was computed as exactly one of the three sums below, so each step back finds its move.
        var ops = new List<(char Op, int I, int J)>();
        for (int i = n, j = m; i > 0 || j > 0;)
        {
            if (i > 0 && j > 0 && d[i, j] == d[i - 1, j - 1] + sub[i - 1, j - 1])
            {
                ops.Add((a[i - 1] == b[j - 1] ? 'M' : 'S', i - 1, j - 1));
                i--; j--;
            }
            else if (i > 0 && d[i, j] == d[i - 1, j] + 1) { ops.Add(('D', i - 1, j)); i--; }
            else { ops.Add(('I', i, j - 1)); j--; }
        }
        ops.Reverse();

        var edits = new List<Edit>();
        for (int k = 0; k < ops.Count;)
        {
            var (op, i, j) = ops[k];
            switch (op)
            {
                case 'M':
                    k++;
                    break;
                case 'S':
                    edits.Add(new Edit(i, i + 1, b[j]));
                    k++;
                    break;
                case 'D':
                {
                    int end = i;
                    while (k < ops.Count && ops[k].Op == 'D') { end = ops[k].I + 1; k++; }
                    edits.Add(new Edit(i, end, ""));
                    break;
                }
                default:
                {
                    int from = j;
                    while (k < ops.Count && ops[k].Op == 'I') k++;
                    edits.Add(new Edit(i, i, string.Join(' ', b[from..(ops[k - 1].J + 1)])));
                    break;
                }
            }
        }
        return edits;
    }

    /// <summary>0 for equal tokens, 0.5 for tokens equal but for case, else 2 less their letters' similarity (1 less
    /// the character edit distance over the longer length), capped just under 2 so a substitution always beats a
    /// deletion and an insertion.</summary>
    internal static double SubstitutionCost(string x, string y)
    {
        if (x == y) return 0;
        if (string.Equals(x, y, StringComparison.OrdinalIgnoreCase)) return 0.5;
        int longest = Math.Max(x.Length, y.Length);
        double similar = 1 - (double)CharDistance(x, y) / longest;
        return Math.Min(2 - similar, 1.999);
    }

    private static int CharDistance(string x, string y)
    {
        if (x.Length > 256 || y.Length > 256) return Math.Max(x.Length, y.Length); // a "word" this long is noise: unlike anything
        Span<int> prev = stackalloc int[y.Length + 1], cur = stackalloc int[y.Length + 1];
        for (int j = 0; j <= y.Length; j++) prev[j] = j;
        for (int i = 1; i <= x.Length; i++)
        {
            cur[0] = i;
            for (int j = 1; j <= y.Length; j++)
                cur[j] = Math.Min(prev[j - 1] + (char.ToLowerInvariant(x[i - 1]) == char.ToLowerInvariant(y[j - 1]) ? 0 : 1), Math.Min(prev[j], cur[j - 1]) + 1);
            cur.CopyTo(prev);
        }
        return prev[y.Length];
    }

    /// <summary>Counts of one hypothesis against its reference: true positives (edits in both), false positives (in
    /// the hypothesis only) and false negatives (in the reference only).</summary>
    public static (int Tp, int Fp, int Fn) Compare(IReadOnlyList<Edit> hypothesis, IReadOnlyList<Edit> reference)
    {
        var gold = new HashSet<Edit>(reference);
        int tp = 0;
        foreach (var e in new HashSet<Edit>(hypothesis)) if (gold.Contains(e)) tp++;
        return (tp, new HashSet<Edit>(hypothesis).Count - tp, gold.Count - tp);
    }
}
