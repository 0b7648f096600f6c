using System.Text;

namespace FastServe.Http;

/// <summary>
/// Turns chat messages into one prompt text (docs/http.md, "Chat template"). Not Jinja: a mini-format of two
/// templates, <c>message</c> (rendered for each message, with <c>{role}</c> and <c>{content}</c>) and <c>prompt</c>
/// (the whole prompt, with <c>{messages}</c>: the messages rendered and joined, <c>{system}</c>: the system
/// messages' contents joined by a newline, and <c>{last_user}</c>: the last user message's content).
/// </summary>
/// <remarks>
/// A template file holds lines <c>message: TEMPLATE</c> and <c>prompt: TEMPLATE</c>; <c>#</c> starts a comment line;
/// in a template, <c>\n</c> is a newline, <c>\t</c> a tab and <c>\\</c> a backslash. A missing <c>message</c> line
/// defaults to <c>&lt;|{role}|&gt;\n{content}\n</c>; <c>prompt</c> is required. The default template is the prompt
/// format the gec models were trained on (models/gec-tiny/MODEL_CARD.md): <c>Correct: {last_user}\nFixed:</c>.
/// </remarks>
public sealed class ChatTemplate
{
    /// <summary>The built-in template: the grammar-correction models' prompt format, from the last user message.</summary>
    public static readonly ChatTemplate Default = new(@"<|{role}|>\n{content}\n", @"Correct: {last_user}\nFixed:", "default");

    private readonly string _message;
    private readonly string _prompt;

    private ChatTemplate(string message, string prompt, string source)
    {
        _message = Unescape(message);
        _prompt = Unescape(prompt);
        Source = source;
    }

    /// <summary>Where the template came from (<c>default</c> or the file's path), for the log.</summary>
    public string Source { get; }

    /// <summary>Reads a template file in the mini-format; throws <see cref="FormatException"/> naming the line when it
    /// is malformed, <see cref="IOException"/> when it cannot be read.</summary>
    public static ChatTemplate Load(string path)
    {
        string? message = null, prompt = null;
        int n = 0;
        foreach (var raw in File.ReadLines(path))
        {
            n++;
            var line = raw.TrimEnd('\r');
            if (line.Length == 0 || line.StartsWith('#')) continue;
            if (line.StartsWith("message:", StringComparison.Ordinal)) message = line["message:".Length..].TrimStart(' ');
            else if (line.StartsWith("prompt:", StringComparison.Ordinal)) prompt = line["prompt:".Length..].TrimStart(' ');
            else throw new FormatException($"line {n}: expected 'message: TEMPLATE' or 'prompt: TEMPLATE'");
        }
        if (prompt is null) throw new FormatException("no 'prompt:' line");
        return new ChatTemplate(message ?? @"<|{role}|>\n{content}\n", prompt, path);
    }

    /// <summary>The prompt text for the messages.</summary>
    public string Render(IReadOnlyList<ChatMessage> messages)
    {
        var all = new StringBuilder();
        var system = new StringBuilder();
        string lastUser = "";
        foreach (var m in messages)
        {
            all.Append(_message.Replace("{role}", m.Role, StringComparison.Ordinal).Replace("{content}", m.Content, StringComparison.Ordinal));
            if (m.Role == "system")
            {
                if (system.Length > 0) system.Append('\n');
                system.Append(m.Content);
            }
            else if (m.Role == "user") lastUser = m.Content;
        }
        // One pass over the prompt template, so a placeholder inside a message's content is never expanded again.
        var sb = new StringBuilder(_prompt.Length + all.Length);
        for (int i = 0; i < _prompt.Length;)
        {
            if (_prompt[i] == '{')
            {
                var rest = _prompt.AsSpan(i);
                if (rest.StartsWith("{messages}")) { sb.Append(all); i += "{messages}".Length; continue; }
                if (rest.StartsWith("{system}")) { sb.Append(system); i += "{system}".Length; continue; }
                if (rest.StartsWith("{last_user}")) { sb.Append(lastUser); i += "{last_user}".Length; continue; }
            }
            sb.Append(_prompt[i++]);
        }
        return sb.ToString();
    }

    private static string Unescape(string s)
    {
        var sb = new StringBuilder(s.Length);
        for (int i = 0; i < s.Length; i++)
        {
            if (s[i] == '\\' && i + 1 < s.Length)
            {
                char c = s[++i];
                sb.Append(c switch { 'n' => '\n', 't' => '\t', _ => c });
            }
            else sb.Append(s[i]);
        }
        return sb.ToString();
    }

    /// <summary>Whether a model directory's tokenizer_config.json has a (Jinja) <c>chat_template</c>, which this
    /// front door does not interpret; the caller logs that the default is used.</summary>
    public static bool HasJinjaTemplate(string modelDir)
    {
        try
        {
            var path = Path.Combine(modelDir, "tokenizer_config.json");
            if (!File.Exists(path)) return false;
            using var doc = System.Text.Json.JsonDocument.Parse(File.ReadAllBytes(path));
            return doc.RootElement.ValueKind == System.Text.Json.JsonValueKind.Object
                && doc.RootElement.TryGetProperty("chat_template", out var t) && t.ValueKind != System.Text.Json.JsonValueKind.Null;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or System.Text.Json.JsonException)
        {
            return false;
        }
    }
}
