using System.Text;
using System.Text.RegularExpressions;
using Microsoft.ML.Tokenizers;

namespace FastServe.Runtime.Tokenization;

/// <summary>Split patterns of the well-known byte-level tokenizers, compiled ahead of time.</summary>
internal static partial class KnownPatterns
{
    /// <summary>cl100k_base's pattern, which Llama 3 uses verbatim.</summary>
    public const string Cl100k =
        @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    /// <summary>GPT-2's pattern: what Hugging Face's ByteLevel pre-tokenizer applies when use_regex is true.</summary>
    public const string Gpt2 = @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

    /// <summary>o200k_base's pattern.</summary>
    public const string O200k =
        @"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    [GeneratedRegex(Cl100k, RegexOptions.CultureInvariant)]
    private static partial Regex Cl100kRegex();

    [GeneratedRegex(Gpt2, RegexOptions.CultureInvariant)]
    private static partial Regex Gpt2Regex();

    [GeneratedRegex(O200k, RegexOptions.CultureInvariant)]
    private static partial Regex O200kRegex();

    /// <summary>
    /// A regex for a Hugging Face split pattern: the precompiled one for a known pattern, otherwise one built now.
    /// Returns null (with the parser's message) when .NET cannot parse the pattern.
    /// </summary>
    public static Regex? Resolve(string pattern, out string? error)
    {
        error = null;
        switch (pattern)
        {
            case Cl100k: return Cl100kRegex();
            case Gpt2: return Gpt2Regex();
            case O200k: return O200kRegex();
        }
        try
        {
            return new Regex(pattern, RegexOptions.CultureInvariant);
        }
        catch (ArgumentException e)
        {
            error = e.Message;
            return null;
        }
    }
}

/// <summary>
/// Hugging Face pre-tokenization for byte-level BPE: strings that must stay whole (added tokens matched in text)
/// are cut out first, leftmost-longest; every other stretch goes through the split steps in order, each step
/// splitting every piece of the previous one with "Isolated" behaviour (matches and the gaps between them both
/// become pieces, so no text is ever dropped).
/// </summary>
internal sealed class HfPreTokenizer : PreTokenizer
{
    private readonly Regex[] _steps;
    private readonly Regex? _wholeTokens;

    public HfPreTokenizer(Regex[] steps, IEnumerable<string>? wholeTokens)
    {
        _steps = steps;
        var list = wholeTokens?.Where(s => s.Length > 0).Distinct(StringComparer.Ordinal).ToList();
        if (list is { Count: > 0 })
        {
            // Alternation is leftmost-first; longest-first ordering makes it leftmost-longest like HF's matcher.
            list.Sort((a, b) => b.Length != a.Length ? b.Length.CompareTo(a.Length) : string.CompareOrdinal(a, b));
            _wholeTokens = new Regex(string.Join("|", list.Select(Regex.Escape)), RegexOptions.CultureInvariant);
        }
    }

    public override IEnumerable<(int Offset, int Length)> PreTokenize(string text) =>
        string.IsNullOrEmpty(text) ? [] : Split(text.AsSpan());

    public override IEnumerable<(int Offset, int Length)> PreTokenize(ReadOnlySpan<char> text) =>
        text.IsEmpty ? [] : Split(text);

    /// <summary>Pieces of <paramref name="text"/> in order, covering all of it.</summary>
    public List<(int Offset, int Length)> Split(ReadOnlySpan<char> text)
    {
        var pieces = new List<(int, int)>(Math.Max(4, text.Length / 3));
        if (_wholeTokens is null)
        {
            ApplyStep(0, text, 0, pieces);
            return pieces;
        }
        int pos = 0;
        foreach (ValueMatch m in _wholeTokens.EnumerateMatches(text))
        {
            if (m.Index > pos) ApplyStep(0, text[pos..m.Index], pos, pieces);
            pieces.Add((m.Index, m.Length));
            pos = m.Index + m.Length;
        }
        if (pos < text.Length) ApplyStep(0, text[pos..], pos, pieces);
        return pieces;
    }

    private void ApplyStep(int step, ReadOnlySpan<char> piece, int offset, List<(int, int)> pieces)
    {
        if (step == _steps.Length)
        {
            pieces.Add((offset, piece.Length));
            return;
        }
        int pos = 0;
        foreach (ValueMatch m in _steps[step].EnumerateMatches(piece))
        {
            if (m.Length == 0) continue;
            if (m.Index > pos) ApplyStep(step + 1, piece[pos..m.Index], offset + pos, pieces);
            ApplyStep(step + 1, piece.Slice(m.Index, m.Length), offset + m.Index, pieces);
            pos = m.Index + m.Length;
        }
        if (pos < piece.Length) ApplyStep(step + 1, piece[pos..], offset + pos, pieces);
    }
}

/// <summary>
/// Hugging Face's NFC normalizer. Under InvariantGlobalization (this repository's build policy) .NET leaves
/// non-ASCII text unnormalized, so text that is not already NFC is tokenized as given.
/// </summary>
internal sealed class NfcNormalizer : Normalizer
{
    public override string Normalize(string original) => original.Normalize(NormalizationForm.FormC);

    public override string Normalize(ReadOnlySpan<char> original) => new string(original).Normalize(NormalizationForm.FormC);
}
