using System.Globalization;
using System.Text;

namespace FastServe.Http.Jinja;

/// <summary>Filters (<c>value | name(args)</c>) and tests (<c>value is name(args)</c>): Jinja's built-ins that chat
/// templates use, and transformers' <c>tojson</c>.</summary>
internal sealed partial class JinjaRenderer
{
    private object? Filter(FilterExpr f)
    {
        var v = Eval(f.Value);
        var args = EvalArgs(f.Args);
        object? Kw(string name, int position, object? dflt)
        {
            foreach (var (k, e) in f.Kwargs)
                if (k == name) return Eval(e);
            return position >= 0 && position < args.Count ? args[position] : dflt;
        }
        string Text(object? x) => JinjaValues.ToText(x, _budget);
        string Produced(string s)
        {
            _budget.Produce(s.Length);
            return s;
        }
        switch (f.Name)
        {
            case "safe": return v;
            case "string": return Text(v);
            case "trim":
                return Kw("chars", 0, null) is string trimmed ? Text(v).Trim(trimmed.ToCharArray()) : Text(v).Trim();
            case "upper": return Produced(Text(v).ToUpperInvariant());
            case "lower": return Produced(Text(v).ToLowerInvariant());
            case "capitalize": return Produced(Capitalize(Text(v)));
            case "title": return Produced(Title(Text(v)));
            case "length" or "count":
                return v switch
                {
                    string s => (long)s.Length,
                    List<object?> l => (long)l.Count,
                    Dictionary<string, object?> d => (long)d.Count,
                    JinjaUndefined => 0L,
                    _ => throw new JinjaException($"a {JinjaValues.TypeName(v)} has no length", f.Line),
                };
            case "default" or "d":
            {
                bool boolean = JinjaValues.IsTrue(Kw("boolean", 1, false));
                bool missing = v is JinjaUndefined || (boolean && !JinjaValues.IsTrue(v));
                return missing ? Kw("default_value", 0, "") : v;
            }
            case "tojson":
            {
                var indent = Kw("indent", 0, null);
                if (indent is not (null or long)) throw new JinjaException("tojson's indent must be an integer", f.Line);
                if (indent is long n && (n < 0 || n > 64)) throw new JinjaException("tojson's indent must be between 0 and 64", f.Line);
                return JinjaValues.ToJson(v, indent is long i ? (int)i : null, JinjaValues.IsTrue(Kw("sort_keys", 3, false)), _budget);
            }
            case "join":
                return Join(Iterate(v, f.Line), Kw("d", 0, "") is string sep ? sep : Text(Kw("d", 0, "")), Kw("attribute", 1, null) is string a ? a : null, f.Line);
            case "replace":
            {
                if (Kw("old", 0, null) is not string old || Kw("new", 1, null) is not string rep) throw new JinjaException("replace needs two strings", f.Line);
                return Replace(Text(v), old, rep, Kw("count", 2, null) is long n ? n : -1, f.Line);
            }
            case "first" or "last":
            {
                var items = Iterate(v, f.Line);
                return items.Count == 0 ? new JinjaUndefined(f.Name) : f.Name == "first" ? items[0] : items[^1];
            }
            case "list":
            {
                var items = Iterate(v, f.Line);
                _budget.Produce(items.Count);
                return ReferenceEquals(items, v) ? new List<object?>(items) : items;
            }
            case "reverse":
            {
                if (v is string s)
                {
                    var chars = s.ToCharArray();
                    Array.Reverse(chars);
                    return Produced(new string(chars));
                }
                var items = new List<object?>(Iterate(v, f.Line));
                _budget.Produce(items.Count);
                items.Reverse();
                return items;
            }
            case "items":
                if (v is JinjaUndefined) return new List<object?>();
                if (v is not Dictionary<string, object?> map) throw new JinjaException($"items needs a dict, not a {JinjaValues.TypeName(v)}", f.Line);
                return CallMethod(map, "items", [], f.Line);
            case "int":
                return v switch
                {
                    long => v,
                    bool b => b ? 1L : 0L,
                    double d when double.IsFinite(d) && Math.Abs(d) < 9e18 => (long)d,
                    string s when long.TryParse(s.Trim(), NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out long l) => l,
                    string s when double.TryParse(s.Trim(), NumberStyles.Float, CultureInfo.InvariantCulture, out double d) && Math.Abs(d) < 9e18 => (long)d,
                    _ => Kw("default", 0, 0L),
                };
            case "float":
                return v switch
                {
                    double => v,
                    long l => (double)l,
                    bool b => b ? 1.0 : 0.0,
                    string s when double.TryParse(s.Trim(), NumberStyles.Float, CultureInfo.InvariantCulture, out double d) => d,
                    _ => Kw("default", 0, 0.0),
                };
            case "abs":
                return v switch
                {
                    long l => (object)checked(Math.Abs(l)),
                    double d => Math.Abs(d),
                    _ => throw new JinjaException($"abs needs a number, not a {JinjaValues.TypeName(v)}", f.Line),
                };
            case "indent":
            {
                var width = Kw("width", 0, 4L);
                string pad = width is string ps ? ps : new string(' ', (int)Math.Clamp(width is long w ? w : 4, 0, 64));
                bool first = JinjaValues.IsTrue(Kw("first", 1, false)), blank = JinjaValues.IsTrue(Kw("blank", 2, false));
                var lines = Text(v).Split('\n');
                var sb = new StringBuilder();
                for (int i = 0; i < lines.Length; i++)
                {
                    if (i > 0) sb.Append('\n');
                    if ((i > 0 || first) && (blank || lines[i].Length > 0)) sb.Append(pad);
                    sb.Append(lines[i]);
                    if (sb.Length > _budget.Limits.MaxOutputChars) _budget.Produce(sb.Length);
                }
                return Produced(sb.ToString());
            }
            case "escape" or "e":
                return Produced(Text(v).Replace("&", "&amp;", StringComparison.Ordinal).Replace("<", "&lt;", StringComparison.Ordinal)
                    .Replace(">", "&gt;", StringComparison.Ordinal).Replace("\"", "&#34;", StringComparison.Ordinal).Replace("'", "&#39;", StringComparison.Ordinal));
            case "map":
            {
                var items = Iterate(v, f.Line);
                _budget.Produce(items.Count);
                var result = new List<object?>(items.Count);
                if (Kw("attribute", -1, null) is string attr)
                {
                    var dflt = Kw("default", -1, null);
                    foreach (var x in items)
                    {
                        var got = GetAttr(x, attr, f.Line);
                        result.Add(got is JinjaUndefined && dflt is not null ? dflt : got);
                    }
                    return result;
                }
                if (args.Count == 0 || args[0] is not string filter) throw new JinjaException("map needs a filter name or attribute=", f.Line);
                foreach (var x in items) result.Add(ApplySimpleFilter(filter, x, f.Line));
                return result;
            }
            case "select" or "reject" or "selectattr" or "rejectattr":
            {
                bool byAttr = f.Name.EndsWith("attr", StringComparison.Ordinal);
                bool keep = f.Name.StartsWith("select", StringComparison.Ordinal);
                int at = 0;
                string? attr = null;
                if (byAttr)
                {
                    if (args.Count == 0 || args[0] is not string named) throw new JinjaException($"{f.Name} needs an attribute name", f.Line);
                    attr = named;
                    at = 1;
                }
                string? test = at < args.Count ? args[at] as string ?? throw new JinjaException($"{f.Name} needs a test name", f.Line) : null;
                var testArgs = args.Skip(at + 1).ToList();
                var result = new List<object?>();
                foreach (var x in Iterate(v, f.Line))
                {
                    _budget.Step();
                    var subject = attr is null ? x : GetAttr(x, attr, f.Line);
                    bool pass = test is null ? JinjaValues.IsTrue(subject) : ApplyTest(test, subject, testArgs, f.Line);
                    if (pass == keep) result.Add(x);
                }
                return result;
            }
            case "unique":
            {
                var result = new List<object?>();
                foreach (var x in Iterate(v, f.Line))
                    if (!result.Any(y => JinjaValues.Equal(x, y, _budget))) result.Add(x);
                return result;
            }
            default:
                throw new JinjaException($"unknown filter '{f.Name}'", f.Line);
        }
    }

    // The argument-less filters `map('name')` may apply.
    private object? ApplySimpleFilter(string name, object? v, int line)
    {
        var synthetic = new FilterExpr(new LiteralExpr(v) { Line = line }, name, [], []) { Line = line };
        return Filter(synthetic);
    }

    private bool Test(TestExpr t)
    {
        // An undefined value is a value here (`x is defined`); only reaching through one (`x.y` with x undefined)
        // fails, as in Jinja.
        var v = Eval(t.Value);
        return ApplyTest(t.Name, v, EvalArgs(t.Args), t.Line);
    }

    private bool ApplyTest(string name, object? v, List<object?> args, int line)
    {
        object? Arg() => args.Count > 0 ? args[0] : throw new JinjaException($"test '{name}' needs an argument", line);
        switch (name)
        {
            case "defined": return v is not JinjaUndefined;
            case "undefined": return v is JinjaUndefined;
            case "none": return v is null;
            case "true": return v is true;
            case "false": return v is false;
            case "boolean": return v is bool;
            case "string": return v is string;
            case "number": return v is long or double;
            case "integer": return v is long;
            case "float": return v is double;
            case "mapping": return v is Dictionary<string, object?>;
            case "iterable": return v is string or List<object?> or Dictionary<string, object?>;
            case "sequence": return v is string or List<object?> or Dictionary<string, object?>;
            case "callable": return v is JinjaMacro or JinjaFunction;
            case "even": return v is long e ? e % 2 == 0 : throw new JinjaException("test 'even' needs an integer", line);
            case "odd": return v is long o ? o % 2 != 0 : throw new JinjaException("test 'odd' needs an integer", line);
            case "divisibleby": return v is long a && Arg() is long b && b != 0 ? a % b == 0 : throw new JinjaException("test 'divisibleby' needs two non-zero integers", line);
            case "eq" or "equalto" or "==": return JinjaValues.Equal(v, Arg(), _budget);
            case "ne" or "!=": return !JinjaValues.Equal(v, Arg(), _budget);
            case "lt" or "lessthan" or "<": return Order(v, Arg(), line) < 0;
            case "gt" or "greaterthan" or ">": return Order(v, Arg(), line) > 0;
            case "le" or "<=": return Order(v, Arg(), line) <= 0;
            case "ge" or ">=": return Order(v, Arg(), line) >= 0;
            case "in": return Contains(Arg(), v, line);
            case "sameas": return v is bool || v is null ? Equals(v, Arg()) : ReferenceEquals(v, Arg());
            case "lower": return v is string l && l == l.ToLowerInvariant();
            case "upper": return v is string u && u == u.ToUpperInvariant();
            default: throw new JinjaException($"unknown test '{name}'", line);
        }
    }
}
