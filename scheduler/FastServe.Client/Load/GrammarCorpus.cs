namespace FastServe.Client.Load;

/// <summary>
/// The bench workload: grammar-correction prompts, an instruction every request shares followed by one English
/// sentence with grammar errors from an embedded corpus (<c>grammar-corpus.txt</c>, 350 sentences). With the default
/// tokenizer (cl100k_base) a prompt is about 50 tokens.
/// </summary>
public static class GrammarCorpus
{
    /// <summary>The shared instruction before the sentence (a prefix cache serves it after the first request).</summary>
    public const string Instruction =
        "You are a careful copy editor. Correct the grammar of the sentence below. Keep its meaning and its wording " +
        "where you can, and reply with the corrected sentence only.\nSentence: ";

    /// <summary>Follows the sentence.</summary>
    public const string Suffix = "\nCorrected:";

    private static readonly Lazy<string[]> s_sentences = new(Load);

    /// <summary>The corpus sentences, in file order.</summary>
    public static IReadOnlyList<string> Sentences => s_sentences.Value;

    /// <summary>The full prompt for <paramref name="sentence"/>.</summary>
    public static string Prompt(string sentence) => Instruction + sentence + Suffix;

    /// <summary>Every corpus sentence as a prompt, in file order.</summary>
    public static string[] Prompts() => s_sentences.Value.Select(Prompt).ToArray();

    private static string[] Load()
    {
        const string name = "FastServe.Client.Load.grammar-corpus.txt";
        using var s = typeof(GrammarCorpus).Assembly.GetManifestResourceStream(name)
            ?? throw new InvalidOperationException($"the embedded resource {name} is missing from this build");
        using var r = new StreamReader(s);
        var lines = new List<string>();
        while (r.ReadLine() is { } line)
        {
            line = line.Trim();
            if (line.Length > 0 && line[0] != '#') lines.Add(line);
        }
        return lines.ToArray();
    }
}
