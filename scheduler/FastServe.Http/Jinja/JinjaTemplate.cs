namespace FastServe.Http.Jinja;

/// <summary>
/// A parsed Jinja2 template of the subset Hugging Face chat templates use (docs/http.md, "Chat template"):
/// <c>{{ }}</c>, <c>{% if/elif/else %}</c>, <c>{% for %}</c> with <c>loop</c> and <c>break</c>/<c>continue</c>,
/// <c>{% set %}</c> (with <c>namespace()</c>), <c>{% macro %}</c>, comments and whitespace control, literals, operators,
/// filters, tests and the Python string and dict methods templates call. Parsed once, rendered by many threads at once;
/// rendering is bounded by <see cref="JinjaLimits"/>.
/// </summary>
internal sealed class JinjaTemplate
{
    /// <summary>Longest template source accepted (real chat templates are a few kilobytes).</summary>
    public const int MaxSourceChars = 1 << 20;

    private readonly IReadOnlyList<JinjaNode> _body;

    private JinjaTemplate(IReadOnlyList<JinjaNode> body) => _body = body;

    /// <summary>Parses <paramref name="source"/>; false with a message naming the line when it is not a template this
    /// interpreter can run (syntax error, unsupported tag, too long or too deeply nested). Never throws.</summary>
    public static bool TryParse(string source, out JinjaTemplate template, out string error)
    {
        template = null!;
        error = "";
        if (source.Length > MaxSourceChars)
        {
            error = $"the template is longer than {MaxSourceChars} characters";
            return false;
        }
        try
        {
            template = new JinjaTemplate(JinjaParser.Parse(JinjaLexer.Tokenize(source)));
            return true;
        }
        catch (JinjaException e)
        {
            error = e.Message;
            return false;
        }
    }

    /// <summary>Renders with <paramref name="context"/> as the global variables (values as <see cref="JinjaValues"/>
    /// describes; the dictionary is written by the template's top-level <c>set</c>s, so pass a fresh one). False with a
    /// message when the template fails: <c>raise_exception(msg)</c> (the message is the template's), a type error, an
    /// undefined value used, or a limit passed. Never throws.</summary>
    public bool TryRender(Dictionary<string, object?> context, JinjaLimits limits, out string output, out string error)
    {
        output = "";
        error = "";
        try
        {
            output = JinjaRenderer.Render(_body, context, limits);
            return true;
        }
        catch (JinjaException e)
        {
            error = e.Message;
        }
        catch (OverflowException)
        {
            error = "an integer overflowed";
        }
        catch (Exception e) when (e is ArgumentException or InvalidCastException or IndexOutOfRangeException or InvalidOperationException or NullReferenceException)
        {
            // An interpreter bug on some input: the request fails, the process does not.
            error = $"the template interpreter failed: {e.GetType().Name}";
        }
        return false;
    }
}
