namespace FastServe.Http.Jinja;

/// <summary>
/// A template that cannot be parsed or rendered: raised inside the lexer, parser and renderer only, and turned into a
/// result by <see cref="JinjaTemplate.TryParse"/> and <see cref="JinjaTemplate.TryRender"/>, which never let it out.
/// </summary>
/// <remarks>Rendering unwinds from any depth of the AST on an error (a type error, a budget spent,
/// <c>raise_exception</c>), so an exception is the one way out; it is never used for a successful path.</remarks>
internal sealed class JinjaException(string message, int line = 0) : Exception(line > 0 ? $"line {line}: {message}" : message)
{
    /// <summary>1-based template line the error is at; 0 when not known.</summary>
    public int Line { get; } = line;
}
