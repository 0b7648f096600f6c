using System.Text.Json;

namespace FastServe.Client.Load;

/// <summary>
/// The bench workload: grammar-correction prompts in the format the built-in default model (<c>gec-small</c>) was
/// trained on, <c>Correct: &lt;sentence&gt;\nFixed:</c> (tools/gec/format.py), over the 1,200 held-out test sentences
/// of tools/gec/data/test.jsonl (the <c>source</c> field of each line; about one in five is already correct). That
/// file itself is embedded, so the workload and the evaluation set cannot drift apart. With the gec tokenizer a prompt
/// is 10 to 38 tokens including the BOS the server prepends, 17.9 on average; the model answers with about 14 tokens
/// (the corrected sentence, a newline, EOS).
/// </summary>
public static class GrammarCorpus
{
    /// <summary>Precedes the sentence (the shared prefix of every prompt).</summary>
    public const string Prefix = "Correct: ";

    /// <summary>Follows the sentence; the model continues with <c>" &lt;corrected sentence&gt;\n"</c>, then EOS.</summary>
    public const string Suffix = "\nFixed:";

    /// <summary>The embedded file's resource name (tools/gec/data/test.jsonl, see FastServe.Client.csproj).</summary>
    internal const string ResourceName = "FastServe.Client.Load.gec-test.jsonl";

    private static readonly Lazy<string[]> s_sentences = new(Load);

    /// <summary>The held-out source sentences, in file order.</summary>
    public static IReadOnlyList<string> Sentences => s_sentences.Value;

    /// <summary>The prompt for <paramref name="sentence"/>: <c>Correct: &lt;sentence&gt;\nFixed:</c> (no BOS).</summary>
    public static string Prompt(string sentence) => Prefix + sentence + Suffix;

    /// <summary>Every held-out sentence as a prompt, in file order.</summary>
    public static string[] Prompts() => s_sentences.Value.Select(Prompt).ToArray();

    private static string[] Load()
    {
        using var s = typeof(GrammarCorpus).Assembly.GetManifestResourceStream(ResourceName)
            ?? throw new InvalidOperationException($"the embedded resource {ResourceName} is missing from this build");
        return Parse(new StreamReader(s));
    }

    /// <summary>The <c>source</c> field of every non-blank JSONL line of <paramref name="reader"/>.</summary>
    /// <exception cref="InvalidDataException">A line is not a JSON object with a non-empty string <c>source</c>
    /// (the message names the line), or there is no line at all.</exception>
    internal static string[] Parse(TextReader reader)
    {
        var sentences = new List<string>();
        int n = 0;
        while (reader.ReadLine() is { } line)
        {
            n++;
            if (string.IsNullOrWhiteSpace(line)) continue;
            string? source;
            try
            {
                using var doc = JsonDocument.Parse(line);
                source = doc.RootElement.ValueKind == JsonValueKind.Object
                    && doc.RootElement.TryGetProperty("source", out var v) && v.ValueKind == JsonValueKind.String
                    ? v.GetString() : null;
            }
            catch (JsonException e)
            {
                throw new InvalidDataException($"{ResourceName} line {n}: not JSON ({e.Message})", e);
            }
            if (string.IsNullOrWhiteSpace(source))
                throw new InvalidDataException($"{ResourceName} line {n}: not an object with a non-empty string \"source\"");
            sentences.Add(source);
        }
        if (sentences.Count == 0) throw new InvalidDataException($"{ResourceName} holds no sentences");
        return sentences.ToArray();
    }
}
