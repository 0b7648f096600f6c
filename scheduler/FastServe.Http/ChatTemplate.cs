using System.Text;
using System.Text.Json;
using FastServe.Http.Jinja;

namespace FastServe.Http;

/// <summary>
/// Turns chat messages into one prompt text (docs/http.md, "Chat template"): either a model's Jinja
/// <c>chat_template</c> from its tokenizer_config.json (<see cref="FromModel"/>, run by the interpreter in
/// <see cref="Jinja"/>), or the mini-format of two templates, <c>message</c> (rendered for each message, with
/// <c>{role}</c> and <c>{content}</c>) and <c>prompt</c> (the whole prompt, with <c>{messages}</c>: the messages
/// rendered and joined, <c>{system}</c>: the system messages' contents joined by a newline, and <c>{last_user}</c>:
/// the last user message's content).
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

    /// <summary>Stable error code of a chat request the template refuses or fails on (400).</summary>
    public const string ErrorCode = "chat_template.error";

    private readonly string _message = "";
    private readonly string _prompt = "";
    // The Jinja form (null: the mini-format) and the special tokens it is given.
    private readonly JinjaTemplate? _jinja;
    private readonly Dictionary<string, object?> _tokens = [];

    private ChatTemplate(string message, string prompt, string source)
    {
        _message = Unescape(message);
        _prompt = Unescape(prompt);
        Source = source;
    }

    private ChatTemplate(JinjaTemplate jinja, Dictionary<string, object?> tokens, string source)
    {
        _jinja = jinja;
        _tokens = tokens;
        Source = source;
    }

    /// <summary>Where the template came from (<c>default</c>, the file's path, or the model's tokenizer_config.json),
    /// for the log.</summary>
    public string Source { get; }

    /// <summary>Whether this is a model's Jinja template.</summary>
    public bool IsJinja => _jinja is not null;

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

    /// <summary>The prompt text for the messages; false with the reason (answered 400 <see cref="ErrorCode"/>) when a
    /// Jinja template refuses them (<c>raise_exception</c>, e.g. roles that do not alternate) or fails on them (a type
    /// error, an undefined value used, a limit passed). The mini-format never fails. Never throws; thread-safe.</summary>
    public bool TryRender(IReadOnlyList<ChatMessage> messages, out string prompt, out string error)
    {
        error = "";
        if (_jinja is not null) return TryRenderJinja(messages, out prompt, out error);
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
        prompt = sb.ToString();
        return true;
    }

    private bool TryRenderJinja(IReadOnlyList<ChatMessage> messages, out string prompt, out string error)
    {
        long inputChars = 0;
        var list = new List<object?>(messages.Count);
        foreach (var m in messages)
        {
            inputChars += m.Role.Length + m.Content.Length;
            list.Add(new Dictionary<string, object?>(StringComparer.Ordinal) { ["role"] = m.Role, ["content"] = m.Content });
        }
        // As transformers' apply_chat_template: the messages, the special tokens, no tools or documents, and the
        // assistant's turn opened.
        var context = new Dictionary<string, object?>(_tokens, StringComparer.Ordinal)
        {
            ["messages"] = list,
            ["add_generation_prompt"] = true,
            ["tools"] = null,
            ["documents"] = null,
        };
        // Output scales with the messages (a template repeats them a few times at most); work with the output.
        int maxOutput = (int)Math.Min(64L << 20, (1L << 20) + 4 * inputChars);
        var limits = JinjaLimits.Default with { MaxOutputChars = maxOutput, MaxWorkChars = 64L * maxOutput };
        return _jinja!.TryRender(context, limits, out prompt, out error);
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

    /// <summary>
    /// The Jinja <c>chat_template</c> of a model directory's tokenizer_config.json, or null when it has none (no file,
    /// no key, or null). The string form, or the list-of-named-templates form (the one named <c>default</c>, as
    /// transformers picks when no name is asked for). <c>bos_token</c>, <c>eos_token</c>, <c>pad_token</c> and
    /// <c>unk_token</c> (a string or <c>{"content": ...}</c>) become the template's variables of those names. Throws
    /// <see cref="FormatException"/> when the file is not JSON, the key has another shape, or the template cannot be
    /// parsed (the message says why, with the line); <see cref="IOException"/> when the file cannot be read.
    /// </summary>
    public static ChatTemplate? FromModel(string modelDir)
    {
        var path = Path.Combine(modelDir, "tokenizer_config.json");
        if (!File.Exists(path)) return null;
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(File.ReadAllBytes(path));
        }
        catch (JsonException e)
        {
            throw new FormatException($"{path} is not valid JSON: {e.Message}");
        }
        using (doc)
        {
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object || !root.TryGetProperty("chat_template", out var t) || t.ValueKind == JsonValueKind.Null) return null;
            string source = TemplateText(t);
            if (!JinjaTemplate.TryParse(source, out var jinja, out string error))
                throw new FormatException($"the chat_template in {path} cannot be used: {error}");
            var tokens = new Dictionary<string, object?>(StringComparer.Ordinal);
            foreach (var name in (ReadOnlySpan<string>)["bos_token", "eos_token", "pad_token", "unk_token"])
                if (root.TryGetProperty(name, out var tok) && TokenText(tok) is { } text) tokens[name] = text;
            return new ChatTemplate(jinja, tokens, $"{path} (Jinja chat_template)");
        }
    }

    private static string TemplateText(JsonElement t)
    {
        if (t.ValueKind == JsonValueKind.String) return t.GetString()!;
        if (t.ValueKind == JsonValueKind.Array)
        {
            foreach (var item in t.EnumerateArray())
                if (item.ValueKind == JsonValueKind.Object && item.TryGetProperty("name", out var n) && n.ValueKind == JsonValueKind.String
                    && n.GetString() == "default" && item.TryGetProperty("template", out var tt) && tt.ValueKind == JsonValueKind.String)
                    return tt.GetString()!;
            throw new FormatException("chat_template is a list of named templates with none named 'default'");
        }
        throw new FormatException("chat_template must be a string or a list of {name, template}");
    }

    private static string? TokenText(JsonElement tok) => tok.ValueKind switch
    {
        JsonValueKind.String => tok.GetString(),
        JsonValueKind.Object when tok.TryGetProperty("content", out var c) && c.ValueKind == JsonValueKind.String => c.GetString(),
        _ => null,
    };
}
