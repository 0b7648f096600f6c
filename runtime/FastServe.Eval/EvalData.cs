using System.Text;
using System.Text.Json;
using FastServe.Runtime.Formats;

namespace FastServe.Eval;

/// <summary>One evaluation example: a sentence to correct and its reference correction (equal when the sentence
/// is already correct).</summary>
/// <param name="Line">1-based line of the data file.</param>
/// <param name="Id">The line's <c>id</c> field (string or number, as written), or null.</param>
/// <param name="Errors">The line's <c>errors</c> field (names of the injected error kinds), or empty.</param>
public sealed record EvalExample(long Line, string? Id, string Source, string Target, string[] Errors)
{
    /// <summary>True when the reference leaves the sentence unchanged (the model must copy it).</summary>
    public bool IsCorrect => Source == Target;
}

/// <summary>A data line that could not be used: its line number and a stable code (docs/errors.md).</summary>
public sealed record EvalDataError(long Line, string Code, string Message);

/// <summary>
/// Reads evaluation data: JSON Lines, one object per line with string fields <c>source</c> and <c>target</c>, and
/// optionally <c>id</c> (string or number) and <c>errors</c> (array of strings); other fields are ignored (data cards
/// add their own). Blank lines are skipped. A bad line yields an <see cref="EvalDataError"/> and reading goes on:
/// <c>eval.line_too_long</c>, <c>eval.invalid_json</c>, <c>eval.missing_field</c> (source or target absent or not a
/// string), <c>eval.invalid_field</c> (an empty or multi-line source, a multi-line target, a malformed id or errors).
/// No line is held beyond <see cref="MaxLineBytes"/>.
/// </summary>
public static class EvalData
{
    /// <summary>Longest accepted line, in bytes.</summary>
    public const int MaxLineBytes = 64 << 10;

    /// <summary>Reads every line of <paramref name="stream"/>; each item is an example or an error.</summary>
    public static IEnumerable<(EvalExample? Example, EvalDataError? Error)> Read(Stream stream)
    {
        foreach (var line in JsonLines.Read(stream, MaxLineBytes))
        {
            if (line.Blank) continue;
            if (line.TooLong)
            {
                yield return (null, new EvalDataError(line.Number, "eval.line_too_long", $"the line is longer than {MaxLineBytes} bytes"));
                continue;
            }
            EvalExample? example = null;
            EvalDataError? error = null;
            try { example = ParseLine(line.Number, line.Bytes.Span); }
            catch (EvalDataException e) { error = new EvalDataError(line.Number, e.Code, e.Message); }
            yield return (example, error);
        }
    }

    // Parsing a line is not a hot path (one per example); an exception carries the code out of the nested helpers.
    private sealed class EvalDataException(string code, string message) : Exception(message)
    {
        public string Code => code;
    }

    private static EvalExample ParseLine(long number, ReadOnlySpan<byte> utf8)
    {
        JsonDocument doc;
        try { doc = JsonDocument.Parse(utf8.ToArray(), new JsonDocumentOptions { MaxDepth = 8 }); }
        catch (JsonException e) { throw new EvalDataException("eval.invalid_json", $"not a JSON object: {e.Message}"); }
        using (doc)
        {
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object) throw new EvalDataException("eval.invalid_json", "each line must be a JSON object");
            string source = RequiredString(root, "source"), target = RequiredString(root, "target");
            if (source.Trim().Length == 0) throw new EvalDataException("eval.invalid_field", "\"source\" is empty");
            if (source.Contains('\n') || target.Contains('\n'))
                throw new EvalDataException("eval.invalid_field", "\"source\" and \"target\" must be one line each (the prompt format ends the answer at a newline)");
            string? id = null;
            if (root.TryGetProperty("id", out var idv))
                id = idv.ValueKind switch
                {
                    JsonValueKind.String => idv.GetString(),
                    JsonValueKind.Number => idv.GetRawText(),
                    _ => throw new EvalDataException("eval.invalid_field", "\"id\" must be a string or a number"),
                };
            string[] errors = [];
            if (root.TryGetProperty("errors", out var ev))
            {
                if (ev.ValueKind != JsonValueKind.Array || ev.EnumerateArray().Any(x => x.ValueKind != JsonValueKind.String))
                    throw new EvalDataException("eval.invalid_field", "\"errors\" must be an array of strings");
                errors = [.. ev.EnumerateArray().Select(x => x.GetString()!)];
            }
            return new EvalExample(number, id, source, target, errors);
        }
    }

    private static string RequiredString(JsonElement root, string name) =>
        root.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.String
            ? v.GetString()!
            : throw new EvalDataException("eval.missing_field", $"\"{name}\" must be present and a string");

    /// <summary>The error as the one line a terminal shows: <c>error[code]: line N: message</c>.</summary>
    public static string Describe(EvalDataError e) => new StringBuilder().Append("error[").Append(e.Code).Append("]: line ")
        .Append(e.Line).Append(": ").Append(e.Message).ToString();
}
