using System.Globalization;
using System.Text;

namespace FastServe.Http.Jinja;

/// <summary>Calls: the global functions transformers gives chat templates, macros, and the Python methods of strings
/// and dicts that templates use (templates cannot change values, so no list or dict method mutates).</summary>
internal sealed partial class JinjaRenderer
{
    private static bool IsGlobalFunction(string name) => name is "raise_exception" or "namespace" or "range" or "dict" or "strftime_now";

    private object? Call(CallExpr c)
    {
        if (c.Callee is AttrExpr m)
        {
            var target = Eval(m.Target);
            if (target is string or Dictionary<string, object?>)
                return CallMethod(target, m.Name, EvalArgs(c.Args), c.Line);
            if (target is JinjaUndefined u) throw new JinjaException($"'{u.Name}' is undefined (calling .{m.Name}())", c.Line);
            var field = GetAttr(target, m.Name, m.Line);
            return CallValue(field, m.Name, c);
        }
        string name = c.Callee is NameExpr n ? n.Name : "expression";
        return CallValue(Eval(c.Callee), name, c);
    }

    private List<object?> EvalArgs(IReadOnlyList<JinjaExpr> args)
    {
        var values = new List<object?>(args.Count);
        foreach (var a in args) values.Add(Eval(a));
        return values;
    }

    private object? CallValue(object? callee, string name, CallExpr c) => callee switch
    {
        JinjaFunction f => CallGlobal(f.Name, EvalArgs(c.Args), c),
        JinjaMacro macro => CallMacro(macro.Node, c),
        JinjaUndefined => throw new JinjaException($"'{name}' is undefined (calling it)", c.Line),
        _ => throw new JinjaException($"a {JinjaValues.TypeName(callee)} is not callable", c.Line),
    };

    private object? CallGlobal(string name, List<object?> args, CallExpr c)
    {
        switch (name)
        {
            case "raise_exception":
                throw new JinjaException(args.Count > 0 ? JinjaValues.ToText(args[0], _budget) : "raise_exception() was called", c.Line);
            case "namespace":
            case "dict":
            {
                Dictionary<string, object?> values;
                if (name == "namespace")
                {
                    var ns = new JinjaNamespace();
                    values = ns.Values;
                    Init(values);
                    return ns;
                }
                values = new Dictionary<string, object?>(StringComparer.Ordinal);
                Init(values);
                return values;

                void Init(Dictionary<string, object?> into)
                {
                    if (args.Count > 0)
                    {
                        if (args[0] is not Dictionary<string, object?> from) throw new JinjaException($"{name}() takes a dict or keyword arguments", c.Line);
                        foreach (var (k, v) in from) into[k] = v;
                    }
                    foreach (var (k, e) in c.Kwargs) into[k] = Eval(e);
                }
            }
            case "range":
            {
                if (args.Count is < 1 or > 3 || args.Any(static a => a is not long)) throw new JinjaException("range() takes 1 to 3 integers", c.Line);
                long start = args.Count == 1 ? 0 : (long)args[0]!, stop = args.Count == 1 ? (long)args[0]! : (long)args[1]!, step = args.Count == 3 ? (long)args[2]! : 1;
                if (step == 0) throw new JinjaException("range() step cannot be zero", c.Line);
                long count = step > 0 ? (stop > start ? (stop - start + step - 1) / step : 0) : (start > stop ? (start - stop - step - 1) / -step : 0);
                _budget.Iterate(count);
                _budget.Produce(count);
                var list = new List<object?>((int)count);
                for (long i = 0; i < count; i++) list.Add(start + i * step);
                return list;
            }
            case "strftime_now":
                if (args.Count != 1 || args[0] is not string format) throw new JinjaException("strftime_now() takes a format string", c.Line);
                return Strftime(DateTime.Now, format);
            default:
                throw new JinjaException($"unknown function '{name}'", c.Line);
        }
    }

    private object? CallMacro(MacroNode m, CallExpr c)
    {
        if (c.Args.Count > m.Parameters.Count) throw new JinjaException($"macro '{m.Name}' takes {m.Parameters.Count} arguments, {c.Args.Count} given", c.Line);
        var scope = new Dictionary<string, object?>(StringComparer.Ordinal);
        for (int i = 0; i < c.Args.Count; i++) scope[m.Parameters[i]] = Eval(c.Args[i]);
        foreach (var (k, e) in c.Kwargs)
        {
            if (!m.Parameters.Contains(k)) throw new JinjaException($"macro '{m.Name}' has no parameter '{k}'", c.Line);
            scope[k] = Eval(e);
        }
        // Defaults are evaluated in the caller's scope, before the macro's scope exists.
        for (int i = 0; i < m.Parameters.Count; i++)
            if (!scope.ContainsKey(m.Parameters[i]))
                scope[m.Parameters[i]] = m.Defaults[i] is { } d ? Eval(d) : new JinjaUndefined(m.Parameters[i]);
        // A macro sees the template's globals and its own parameters, not its caller's locals.
        var saved = _scopes.GetRange(1, _scopes.Count - 1);
        _scopes.RemoveRange(1, _scopes.Count - 1);
        _scopes.Add(scope);
        var signal = _signal;
        _budget.Enter();
        var text = Capture(m.Body);
        _budget.Leave();
        _signal = signal;
        _scopes.RemoveRange(1, _scopes.Count - 1);
        _scopes.AddRange(saved);
        return text;
    }

    private object? CallMethod(object? target, string name, List<object?> args, int line)
    {
        if (target is Dictionary<string, object?> d)
        {
            switch (name)
            {
                case "items":
                    _budget.Produce(d.Count);
                    return d.Select(static kv => (object?)new List<object?> { kv.Key, kv.Value }).ToList();
                case "keys":
                    _budget.Produce(d.Count);
                    return d.Keys.Select(static k => (object?)k).ToList();
                case "values":
                    _budget.Produce(d.Count);
                    return d.Values.ToList();
                case "get":
                    if (args.Count is < 1 or > 2) throw new JinjaException("get() takes a key and an optional default", line);
                    return args[0] is string k && d.TryGetValue(k, out var v) ? v : args.Count == 2 ? args[1] : null;
            }
            // A dict key holding a macro, called as a method, is not something templates do.
            throw new JinjaException($"a dict has no method '{name}'", line);
        }
        var s = (string)target!;
        string Arg(int i, string what) => i < args.Count && args[i] is string a ? a
            : throw new JinjaException($"{name}() needs a string {what}", line);
        string? Chars() => args.Count == 0 || args[0] is null ? null : Arg(0, "of characters");
        string result;
        switch (name)
        {
            case "strip": result = Chars() is { } c1 ? s.Trim(c1.ToCharArray()) : s.Trim(); break;
            case "lstrip": result = Chars() is { } c2 ? s.TrimStart(c2.ToCharArray()) : s.TrimStart(); break;
            case "rstrip": result = Chars() is { } c3 ? s.TrimEnd(c3.ToCharArray()) : s.TrimEnd(); break;
            case "upper": result = s.ToUpperInvariant(); break;
            case "lower": result = s.ToLowerInvariant(); break;
            case "title": result = Title(s); break;
            case "capitalize": result = Capitalize(s); break;
            case "startswith" or "endswith":
            {
                if (args.Count != 1) throw new JinjaException($"{name}() takes one argument", line);
                IEnumerable<object?> options = args[0] is List<object?> l ? l : [args[0]];
                foreach (var o in options)
                {
                    if (o is not string p) throw new JinjaException($"{name}() needs a string or a list of strings", line);
                    if (name == "startswith" ? s.StartsWith(p, StringComparison.Ordinal) : s.EndsWith(p, StringComparison.Ordinal)) return true;
                }
                return false;
            }
            case "split" or "rsplit":
            {
                string? sep = args.Count > 0 && args[0] is not null ? Arg(0, "separator") : null;
                long max = args.Count > 1 && args[1] is long m ? m : -1;
                return Split(s, sep, max, name == "rsplit", line);
            }
            case "replace":
                return Replace(s, Arg(0, "to find"), Arg(1, "to put"), args.Count > 2 && args[2] is long n ? n : -1, line);
            case "find": return (long)s.IndexOf(Arg(0, "to find"), StringComparison.Ordinal);
            case "count":
            {
                string sub = Arg(0, "to count");
                if (sub.Length == 0) return (long)s.Length + 1;
                long k = 0;
                for (int i = s.IndexOf(sub, StringComparison.Ordinal); i >= 0; i = s.IndexOf(sub, i + sub.Length, StringComparison.Ordinal)) k++;
                return k;
            }
            case "join":
                if (args.Count != 1) throw new JinjaException("join() takes one argument", line);
                return Join(Iterate(args[0], line), s, null, line);
            case "isdigit": return s.Length > 0 && s.All(char.IsDigit);
            case "isspace": return s.Length > 0 && s.All(char.IsWhiteSpace);
            default: throw new JinjaException($"a string has no method '{name}'", line);
        }
        _budget.Produce(result.Length);
        return result;
    }

    private List<object?> Split(string s, string? sep, long max, bool fromRight, int line)
    {
        if (sep is { Length: 0 }) throw new JinjaException("split() separator cannot be empty", line);
        string[] parts;
        if (sep is null)
        {
            // Python: runs of whitespace separate, and leading/trailing whitespace gives no empty parts.
            parts = s.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries);
            if (max >= 0 && parts.Length > max + 1)
            {
                var head = fromRight ? parts[^(int)max..] : parts[..(int)max];
                var rest = fromRight ? string.Join(' ', parts[..^(int)max]) : string.Join(' ', parts[(int)max..]);
                parts = fromRight ? [rest, .. head] : [.. head, rest];
            }
        }
        else if (max < 0) parts = s.Split(sep, StringSplitOptions.None);
        else if (!fromRight) parts = s.Split(sep, (int)Math.Min(max + 1, int.MaxValue), StringSplitOptions.None);
        else
        {
            var acc = new List<string>();
            int end = s.Length;
            while (acc.Count < max)
            {
                int at = end == 0 ? -1 : s.LastIndexOf(sep, end - 1, StringComparison.Ordinal);
                if (at < 0 || at + sep.Length > end) break;
                acc.Insert(0, s[(at + sep.Length)..end]);
                end = at;
            }
            acc.Insert(0, s[..end]);
            parts = [.. acc];
        }
        _budget.Produce(parts.Length + s.Length);
        return parts.Select(static p => (object?)p).ToList();
    }

    private string Replace(string s, string old, string replacement, long count, int line)
    {
        if (old.Length == 0) throw new JinjaException("replace() cannot replace an empty string", line);
        long hits = 0;
        for (int i = s.IndexOf(old, StringComparison.Ordinal); i >= 0 && (count < 0 || hits < count); i = s.IndexOf(old, i + old.Length, StringComparison.Ordinal)) hits++;
        // Size the result before building it: a small template can ask for a huge one.
        _budget.Produce(s.Length + hits * Math.Max(0, replacement.Length - old.Length));
        if (hits == 0) return s;
        var sb = new StringBuilder(s.Length);
        int from = 0;
        for (long k = 0; k < hits; k++)
        {
            int i = s.IndexOf(old, from, StringComparison.Ordinal);
            sb.Append(s, from, i - from).Append(replacement);
            from = i + old.Length;
        }
        return sb.Append(s, from, s.Length - from).ToString();
    }

    private string Join(List<object?> items, string separator, string? attribute, int line)
    {
        var sb = new StringBuilder();
        for (int i = 0; i < items.Count; i++)
        {
            if (i > 0) sb.Append(separator);
            var item = attribute is null ? items[i] : GetAttr(items[i], attribute, line);
            sb.Append(JinjaValues.ToText(item, _budget));
            if (sb.Length > _budget.Limits.MaxOutputChars) _budget.Produce(sb.Length);
        }
        _budget.Produce(sb.Length);
        return sb.ToString();
    }

    private static string Title(string s)
    {
        var sb = new StringBuilder(s.Length);
        bool start = true;
        foreach (char c in s)
        {
            sb.Append(start ? char.ToUpperInvariant(c) : char.ToLowerInvariant(c));
            start = !char.IsLetterOrDigit(c);
        }
        return sb.ToString();
    }

    private static string Capitalize(string s) => s.Length == 0 ? s : char.ToUpperInvariant(s[0]) + s[1..].ToLowerInvariant();

    /// <summary>Python's <c>datetime.strftime</c> for the codes chat templates use (a date in a system prompt).</summary>
    private static string Strftime(DateTime t, string format)
    {
        var ci = CultureInfo.InvariantCulture;
        var sb = new StringBuilder();
        for (int i = 0; i < format.Length; i++)
        {
            if (format[i] != '%' || i + 1 == format.Length)
            {
                sb.Append(format[i]);
                continue;
            }
            char c = format[++i];
            sb.Append(c switch
            {
                'd' => t.ToString("dd", ci),
                'm' => t.ToString("MM", ci),
                'Y' => t.ToString("yyyy", ci),
                'y' => t.ToString("yy", ci),
                'B' => t.ToString("MMMM", ci),
                'b' => t.ToString("MMM", ci),
                'A' => t.ToString("dddd", ci),
                'a' => t.ToString("ddd", ci),
                'H' => t.ToString("HH", ci),
                'I' => t.ToString("hh", ci),
                'M' => t.ToString("mm", ci),
                'S' => t.ToString("ss", ci),
                'p' => t.Hour < 12 ? "AM" : "PM",
                'j' => t.DayOfYear.ToString("000", ci),
                '%' => "%",
                _ => "%" + c,
            });
        }
        return sb.ToString();
    }
}
