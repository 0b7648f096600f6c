using System.Globalization;
using System.Text;

namespace FastServe.Http.Jinja;

/// <summary>A name or key that has no value: prints as nothing, is false, iterates as empty; using its attributes is
/// an error (Jinja's default <c>Undefined</c>, as transformers uses).</summary>
internal sealed class JinjaUndefined(string name)
{
    /// <summary>What was looked up, for error messages.</summary>
    public string Name { get; } = name;
}

/// <summary>The object <c>namespace(...)</c> makes: the one value a template may change after it is set
/// (<c>{% set ns.x = ... %}</c>), so a loop can pass state out of its scope.</summary>
internal sealed class JinjaNamespace
{
    public Dictionary<string, object?> Values { get; } = new(StringComparer.Ordinal);
}

/// <summary>A loop's <c>loop</c> variable.</summary>
internal sealed class JinjaLoop(IReadOnlyList<object?> items)
{
    public int Index0;

    /// <summary><c>loop.index</c>, <c>index0</c>, <c>first</c>, <c>last</c>, <c>length</c>, <c>revindex</c>,
    /// <c>revindex0</c>, <c>previtem</c>, <c>nextitem</c>; undefined otherwise.</summary>
    public object? Get(string name) => name switch
    {
        "index" => (long)Index0 + 1,
        "index0" => (long)Index0,
        "first" => Index0 == 0,
        "last" => Index0 == items.Count - 1,
        "length" => (long)items.Count,
        "revindex" => (long)(items.Count - Index0),
        "revindex0" => (long)(items.Count - Index0 - 1),
        "previtem" => Index0 > 0 ? items[Index0 - 1] : new JinjaUndefined("loop.previtem"),
        "nextitem" => Index0 + 1 < items.Count ? items[Index0 + 1] : new JinjaUndefined("loop.nextitem"),
        _ => new JinjaUndefined("loop." + name),
    };
}

/// <summary>A macro defined by the template, called like a function.</summary>
internal sealed class JinjaMacro(MacroNode node)
{
    public MacroNode Node { get; } = node;
}

/// <summary>A global function (<c>raise_exception</c>, <c>namespace</c>, <c>range</c>, <c>dict</c>,
/// <c>strftime_now</c>), so <c>name is defined</c> holds for them.</summary>
internal sealed class JinjaFunction(string name)
{
    public string Name { get; } = name;
}

/// <summary>
/// The values a template sees and makes: <c>null</c> (none), <see cref="bool"/>, <see cref="long"/>,
/// <see cref="double"/>, <see cref="string"/>, <see cref="List{T}"/> of values, <see cref="Dictionary{TKey,TValue}"/>
/// of string to value (insertion-ordered), and the classes above; and Python's rules for truth, text, equality,
/// order and JSON on them. Everything that can grow (text, nesting) spends the render's <see cref="JinjaBudget"/>.
/// </summary>
internal static class JinjaValues
{
    /// <summary>Python's truth: none, undefined, false, 0, "" and empty collections are false.</summary>
    public static bool IsTrue(object? v) => v switch
    {
        null or JinjaUndefined => false,
        bool b => b,
        long l => l != 0,
        double d => d != 0,
        string s => s.Length > 0,
        List<object?> l => l.Count > 0,
        Dictionary<string, object?> d => d.Count > 0,
        _ => true,
    };

    /// <summary>A type name for error messages.</summary>
    public static string TypeName(object? v) => v switch
    {
        null => "none",
        JinjaUndefined u => $"undefined ({u.Name})",
        bool => "boolean",
        long => "integer",
        double => "float",
        string => "string",
        List<object?> => "list",
        Dictionary<string, object?> => "dict",
        JinjaNamespace => "namespace",
        JinjaLoop => "loop",
        _ => "function",
    };

    /// <summary>Python's <c>str(v)</c>, as <c>{{ v }}</c> prints it (undefined prints nothing).</summary>
    public static string ToText(object? v, JinjaBudget budget)
    {
        switch (v)
        {
            case string s: return s;
            case JinjaUndefined: return "";
            case null: return "None";
            case bool b: return b ? "True" : "False";
            case long l: return l.ToString(CultureInfo.InvariantCulture);
            case double d: return FormatDouble(d);
        }
        var sb = new StringBuilder();
        AppendRepr(sb, v, budget, top: true);
        return sb.ToString();
    }

    public static string FormatDouble(double d)
    {
        if (double.IsNaN(d)) return "nan";
        if (double.IsInfinity(d)) return d > 0 ? "inf" : "-inf";
        var s = d.ToString("R", CultureInfo.InvariantCulture);
        if (s.Contains('E')) return s.Replace("E", "e", StringComparison.Ordinal);
        return s.Contains('.') ? s : s + ".0";
    }

    // Python's repr inside containers (strings quoted); the top level of ToText prints containers the same way.
    private static void AppendRepr(StringBuilder sb, object? v, JinjaBudget budget, bool top = false)
    {
        budget.Enter();
        budget.Step();
        switch (v)
        {
            case string s:
                char q = s.Contains('\'') && !s.Contains('"') ? '"' : '\'';
                sb.Append(q);
                foreach (char c in s)
                {
                    switch (c)
                    {
                        case '\\': sb.Append("\\\\"); break;
                        case '\n': sb.Append("\\n"); break;
                        case '\r': sb.Append("\\r"); break;
                        case '\t': sb.Append("\\t"); break;
                        default:
                            if (c == q) sb.Append('\\');
                            sb.Append(c);
                            break;
                    }
                }
                sb.Append(q);
                break;
            case List<object?> list:
                sb.Append('[');
                for (int i = 0; i < list.Count; i++)
                {
                    if (i > 0) sb.Append(", ");
                    AppendRepr(sb, list[i], budget);
                }
                sb.Append(']');
                break;
            case Dictionary<string, object?> dict:
                sb.Append('{');
                bool first = true;
                foreach (var (k, x) in dict)
                {
                    if (!first) sb.Append(", ");
                    first = false;
                    AppendRepr(sb, k, budget);
                    sb.Append(": ");
                    AppendRepr(sb, x, budget);
                }
                sb.Append('}');
                break;
            case JinjaNamespace ns:
                sb.Append("<Namespace ");
                AppendRepr(sb, ns.Values, budget);
                sb.Append('>');
                break;
            case JinjaUndefined when !top:
                sb.Append("Undefined");
                break;
            case JinjaLoop or JinjaMacro or JinjaFunction:
                sb.Append('<').Append(TypeName(v)).Append('>');
                break;
            default:
                sb.Append(ToText(v, budget));
                break;
        }
        if (sb.Length > budget.Limits.MaxOutputChars) budget.Produce(sb.Length);
        budget.Leave();
    }

    /// <summary>transformers' <c>tojson</c>: Python's <c>json.dumps(v, ensure_ascii=False, indent=indent,
    /// sort_keys=sortKeys)</c> (separators <c>", "</c>/<c>": "</c>, or <c>","</c> and newlines with an indent).</summary>
    public static string ToJson(object? v, int? indent, bool sortKeys, JinjaBudget budget)
    {
        var sb = new StringBuilder();
        AppendJson(sb, v, indent, sortKeys, 0, budget);
        budget.Produce(sb.Length);
        return sb.ToString();
    }

    private static void AppendJson(StringBuilder sb, object? v, int? indent, bool sortKeys, int level, JinjaBudget budget)
    {
        budget.Enter();
        budget.Step();
        switch (v)
        {
            case null or JinjaUndefined: sb.Append("null"); break;
            case bool b: sb.Append(b ? "true" : "false"); break;
            case long l: sb.Append(l.ToString(CultureInfo.InvariantCulture)); break;
            case double d: sb.Append(double.IsNaN(d) ? "NaN" : double.IsInfinity(d) ? (d > 0 ? "Infinity" : "-Infinity") : FormatDouble(d)); break;
            case string s: AppendJsonString(sb, s); break;
            case List<object?> list:
                if (list.Count == 0) { sb.Append("[]"); break; }
                sb.Append('[');
                for (int i = 0; i < list.Count; i++)
                {
                    if (i > 0) sb.Append(indent is null ? ", " : ",");
                    NewLine(sb, indent, level + 1);
                    AppendJson(sb, list[i], indent, sortKeys, level + 1, budget);
                }
                NewLine(sb, indent, level);
                sb.Append(']');
                break;
            case Dictionary<string, object?> or JinjaNamespace:
                var dict = v as Dictionary<string, object?> ?? ((JinjaNamespace)v).Values;
                if (dict.Count == 0) { sb.Append("{}"); break; }
                IEnumerable<KeyValuePair<string, object?>> pairs = sortKeys ? dict.OrderBy(p => p.Key, StringComparer.Ordinal) : dict;
                sb.Append('{');
                bool first = true;
                foreach (var (k, x) in pairs)
                {
                    if (!first) sb.Append(indent is null ? ", " : ",");
                    first = false;
                    NewLine(sb, indent, level + 1);
                    AppendJsonString(sb, k);
                    sb.Append(": ");
                    AppendJson(sb, x, indent, sortKeys, level + 1, budget);
                }
                NewLine(sb, indent, level);
                sb.Append('}');
                break;
            default: throw new JinjaException($"a {TypeName(v)} cannot be written as JSON");
        }
        if (sb.Length > budget.Limits.MaxOutputChars) budget.Produce(sb.Length);
        budget.Leave();
    }

    private static void NewLine(StringBuilder sb, int? indent, int level)
    {
        if (indent is not { } n) return;
        sb.Append('\n').Append(' ', n * level);
    }

    private static void AppendJsonString(StringBuilder sb, string s)
    {
        sb.Append('"');
        foreach (char c in s)
        {
            switch (c)
            {
                case '"': sb.Append("\\\""); break;
                case '\\': sb.Append("\\\\"); break;
                case '\n': sb.Append("\\n"); break;
                case '\r': sb.Append("\\r"); break;
                case '\t': sb.Append("\\t"); break;
                case '\b': sb.Append("\\b"); break;
                case '\f': sb.Append("\\f"); break;
                default:
                    if (c < 0x20) sb.Append("\\u").Append(((int)c).ToString("x4", CultureInfo.InvariantCulture));
                    else sb.Append(c);
                    break;
            }
        }
        sb.Append('"');
    }

    /// <summary>A number as a double when it is one (bools count as 0 and 1, as in Python).</summary>
    public static bool TryNumber(object? v, out double d)
    {
        switch (v)
        {
            case long l: d = l; return true;
            case double x: d = x; return true;
            case bool b: d = b ? 1 : 0; return true;
            default: d = 0; return false;
        }
    }

    /// <summary>Python's <c>==</c>: numbers by value, strings ordinally, lists and dicts item by item.</summary>
    public static bool Equal(object? a, object? b, JinjaBudget budget)
    {
        budget.Step();
        if (a is null || b is null) return a is null && b is null;
        if (a is JinjaUndefined || b is JinjaUndefined) return a is JinjaUndefined && b is JinjaUndefined;
        if (a is string sa) return b is string sb && sa == sb;
        if (TryNumber(a, out double da)) return TryNumber(b, out double db) && (a is long la && b is long lb ? la == lb : da == db);
        if (a is List<object?> xa)
        {
            if (b is not List<object?> xb || xa.Count != xb.Count) return false;
            budget.Enter();
            for (int i = 0; i < xa.Count; i++)
                if (!Equal(xa[i], xb[i], budget)) { budget.Leave(); return false; }
            budget.Leave();
            return true;
        }
        if (a is Dictionary<string, object?> ma)
        {
            if (b is not Dictionary<string, object?> mb || ma.Count != mb.Count) return false;
            budget.Enter();
            foreach (var (k, x) in ma)
                if (!mb.TryGetValue(k, out var y) || !Equal(x, y, budget)) { budget.Leave(); return false; }
            budget.Leave();
            return true;
        }
        return ReferenceEquals(a, b);
    }

    /// <summary>Python's order of two numbers or two strings; an error for anything else.</summary>
    public static int Compare(object? a, object? b)
    {
        if (a is string sa && b is string sb) return string.CompareOrdinal(sa, sb);
        if (TryNumber(a, out double da) && TryNumber(b, out double db))
            return a is long la && b is long lb ? la.CompareTo(lb) : da.CompareTo(db);
        throw new JinjaException($"cannot order a {TypeName(a)} and a {TypeName(b)}");
    }
}
