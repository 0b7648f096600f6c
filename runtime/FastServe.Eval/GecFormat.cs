namespace FastServe.Eval;

/// <summary>
/// The grammar-correction prompt format the shipped models were trained on (tools/gec/format.py is the training
/// side's copy): the client sends <c>Correct: &lt;sentence&gt;\nFixed:</c> (the runtime prepends BOS), the model
/// answers <c> &lt;corrected sentence&gt;\n</c> and then EOS.
/// </summary>
public static class GecFormat
{
    public const string PromptPrefix = "Correct: ";
    public const string PromptSuffix = "\nFixed:";

    /// <summary>The prompt text for <paramref name="source"/>.</summary>
    public static string Prompt(string source) => PromptPrefix + source + PromptSuffix;

    /// <summary>The corrected sentence in a generated answer: the text before the first newline, less one leading
    /// space. An answer cut off before its newline (the token limit) is taken whole.</summary>
    public static string ParseAnswer(string generated)
    {
        int nl = generated.IndexOf('\n');
        var text = nl < 0 ? generated.AsSpan() : generated.AsSpan(0, nl);
        if (text.Length > 0 && text[0] == ' ') text = text[1..];
        return text.ToString();
    }
}
