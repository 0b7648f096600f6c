using System.Text;

namespace FastServe.Http.Jinja;

/// <summary>
/// Runs a parsed template against a context: statements (<see cref="Exec(JinjaNode)"/>) and expressions
/// (<see cref="Eval"/>), with Jinja's scoping (a loop's body and a macro's body have their own scope; <c>set</c>
/// writes the innermost one) and Python's value rules (<see cref="JinjaValues"/>). Filters, tests, methods and global
/// functions are in the other parts of this class. One instance per render; every step spends its
/// <see cref="JinjaBudget"/>, and any error is a <see cref="JinjaException"/>.
/// </summary>
internal sealed partial class JinjaRenderer
{
    private enum Signal : byte { None, Break, Continue }

    private readonly JinjaBudget _budget;
    private readonly List<Dictionary<string, object?>> _scopes = [];
    private StringBuilder _out = new();
    private Signal _signal;

    private JinjaRenderer(JinjaLimits limits, Dictionary<string, object?> context)
    {
        _budget = new JinjaBudget(limits);
        _scopes.Add(context);
    }

    /// <summary>Renders <paramref name="body"/>; <paramref name="context"/> becomes the global scope (and is written by
    /// top-level <c>set</c>s, so pass a fresh one per render).</summary>
    public static string Render(IReadOnlyList<JinjaNode> body, Dictionary<string, object?> context, JinjaLimits limits)
    {
        var r = new JinjaRenderer(limits, context);
        r.Exec(body);
        return r._out.ToString();
    }

    private void Write(string s)
    {
        if (s.Length == 0) return;
        if ((long)_out.Length + s.Length > _budget.Limits.MaxOutputChars)
            throw new JinjaException($"the template's output is longer than {_budget.Limits.MaxOutputChars} characters");
        _budget.Produce(s.Length);
        _out.Append(s);
    }

    private void Exec(IReadOnlyList<JinjaNode> body)
    {
        for (int i = 0; i < body.Count && _signal == Signal.None; i++) Exec(body[i]);
    }

    private void Exec(JinjaNode node)
    {
        _budget.Step();
        _budget.Enter();
        switch (node)
        {
            case TextNode t: Write(t.Text); break;
            case OutputNode o: Write(JinjaValues.ToText(Eval(o.Expr), _budget)); break;
            case IfNode n: ExecIf(n); break;
            case ForNode f: ExecFor(f); break;
            case SetNode s: ExecSet(s); break;
            case SetBlockNode sb: _scopes[^1][sb.Name] = Capture(sb.Body); break;
            case MacroNode m: _scopes[^1][m.Name] = new JinjaMacro(m); break;
            case LoopControlNode lc: _signal = lc.IsBreak ? Signal.Break : Signal.Continue; break;
            default: throw new JinjaException($"cannot run a {node.GetType().Name}", node.Line);
        }
        _budget.Leave();
    }

    private string Capture(IReadOnlyList<JinjaNode> body)
    {
        var outer = _out;
        _out = new StringBuilder();
        Exec(body);
        var text = _out.ToString();
        _out = outer;
        return text;
    }

    private void ExecIf(IfNode n)
    {
        foreach (var (cond, body) in n.Branches)
        {
            if (JinjaValues.IsTrue(Eval(cond)))
            {
                Exec(body);
                return;
            }
        }
        if (n.Else is { } e) Exec(e);
    }

    private void ExecFor(ForNode f)
    {
        var source = Iterate(Eval(f.Iterable), f.Line);
        var scope = new Dictionary<string, object?>(StringComparer.Ordinal);
        _scopes.Add(scope);
        List<object?> items = source;
        if (f.Filter is { } filter)
        {
            items = [];
            foreach (var item in source)
            {
                _budget.Iterate();
                Bind(f, scope, item);
                if (JinjaValues.IsTrue(Eval(filter))) items.Add(item);
            }
        }
        var loop = new JinjaLoop(items);
        for (int i = 0; i < items.Count; i++)
        {
            _budget.Iterate();
            loop.Index0 = i;
            Bind(f, scope, items[i]);
            scope["loop"] = loop;
            Exec(f.Body);
            if (_signal == Signal.Break) { _signal = Signal.None; break; }
            _signal = Signal.None;
        }
        _scopes.RemoveAt(_scopes.Count - 1);
        if (items.Count == 0 && f.Else is { } otherwise) Exec(otherwise);
    }

    private static void Bind(ForNode f, Dictionary<string, object?> scope, object? item)
    {
        if (f.Targets.Count == 1)
        {
            scope[f.Targets[0]] = item;
            return;
        }
        if (item is not List<object?> parts || parts.Count != f.Targets.Count)
            throw new JinjaException($"cannot unpack a {JinjaValues.TypeName(item)} into {f.Targets.Count} names", f.Line);
        for (int i = 0; i < parts.Count; i++) scope[f.Targets[i]] = parts[i];
    }

    private void ExecSet(SetNode s)
    {
        var value = Eval(s.Value);
        if (s.Attr is { } attr)
        {
            if (Lookup(s.Names[0]) is not JinjaNamespace ns)
                throw new JinjaException($"cannot set an attribute of '{s.Names[0]}': only a namespace(...) can be changed", s.Line);
            ns.Values[attr] = value;
            return;
        }
        var scope = _scopes[^1];
        if (s.Names.Count == 1)
        {
            scope[s.Names[0]] = value;
            return;
        }
        if (value is not List<object?> parts || parts.Count != s.Names.Count)
            throw new JinjaException($"cannot unpack a {JinjaValues.TypeName(value)} into {s.Names.Count} names", s.Line);
        for (int i = 0; i < parts.Count; i++) scope[s.Names[i]] = parts[i];
    }

    /// <summary>The items a <c>for</c> (or a filter) walks: a list's items, a dict's keys, a string's characters;
    /// nothing for undefined.</summary>
    private List<object?> Iterate(object? v, int line)
    {
        switch (v)
        {
            case List<object?> l: return l;
            case Dictionary<string, object?> d: return d.Keys.Select(static k => (object?)k).ToList();
            case string s:
                _budget.Produce(s.Length);
                return s.Select(static c => (object?)c.ToString()).ToList();
            case JinjaUndefined: return [];
            default: throw new JinjaException($"a {JinjaValues.TypeName(v)} is not iterable", line);
        }
    }

    private object? Lookup(string name)
    {
        for (int i = _scopes.Count - 1; i >= 0; i--)
            if (_scopes[i].TryGetValue(name, out var v)) return v;
        return IsGlobalFunction(name) ? new JinjaFunction(name) : new JinjaUndefined(name);
    }

    private object? Eval(JinjaExpr e)
    {
        _budget.Step();
        _budget.Enter();
        var v = EvalCore(e);
        _budget.Leave();
        return v;
    }

    private object? EvalCore(JinjaExpr e)
    {
        switch (e)
        {
            case LiteralExpr l: return l.Value;
            case NameExpr n: return Lookup(n.Name);
            case ListExpr l:
            {
                _budget.Produce(l.Items.Count);
                var list = new List<object?>(l.Items.Count);
                foreach (var x in l.Items) list.Add(Eval(x));
                return list;
            }
            case DictExpr d:
            {
                _budget.Produce(d.Items.Count);
                var dict = new Dictionary<string, object?>(StringComparer.Ordinal);
                foreach (var (k, x) in d.Items)
                {
                    var key = Eval(k);
                    if (key is not (string or long or bool)) throw new JinjaException($"a dict key must be a string or a number, not a {JinjaValues.TypeName(key)}", k.Line);
                    dict[JinjaValues.ToText(key, _budget)] = Eval(x);
                }
                return dict;
            }
            case AttrExpr a: return GetAttr(Eval(a.Target), a.Name, a.Line);
            case IndexExpr i: return GetItem(Eval(i.Target), Eval(i.Index), i.Line);
            case SliceExpr s: return Slice(Eval(s.Target), s);
            case CallExpr c: return Call(c);
            case FilterExpr f: return Filter(f);
            case TestExpr t: return Test(t) != t.Negated;
            case UnaryExpr u: return Unary(u);
            case BinaryExpr b: return Binary(b);
            case ConditionalExpr c:
                if (JinjaValues.IsTrue(Eval(c.Condition))) return Eval(c.Then);
                return c.Else is null ? new JinjaUndefined("conditional") : Eval(c.Else);
            default: throw new JinjaException($"cannot evaluate a {e.GetType().Name}", e.Line);
        }
    }

    /// <summary><c>obj.name</c>: a mapping's key, a namespace's or loop's field; undefined when missing (an error on
    /// undefined itself, as Jinja).</summary>
    private static object? GetAttr(object? target, string name, int line) => target switch
    {
        Dictionary<string, object?> d => d.TryGetValue(name, out var v) ? v : new JinjaUndefined(name),
        JinjaNamespace ns => ns.Values.TryGetValue(name, out var v) ? v : new JinjaUndefined(name),
        JinjaLoop loop => loop.Get(name),
        JinjaUndefined u => throw new JinjaException($"'{u.Name}' is undefined (reading .{name})", line),
        _ => new JinjaUndefined(name),
    };

    private object? GetItem(object? target, object? index, int line)
    {
        switch (target)
        {
            case List<object?> l when index is long i:
                if (i < 0) i += l.Count;
                return i >= 0 && i < l.Count ? l[(int)i] : new JinjaUndefined($"[{index}]");
            case string s when index is long i:
                if (i < 0) i += s.Length;
                return i >= 0 && i < s.Length ? s[(int)i].ToString() : new JinjaUndefined($"[{index}]");
            case Dictionary<string, object?> d when index is string k:
                return d.TryGetValue(k, out var v) ? v : new JinjaUndefined(k);
            case JinjaNamespace or JinjaLoop when index is string k:
                return GetAttr(target, k, line);
            case JinjaUndefined u:
                throw new JinjaException($"'{u.Name}' is undefined (indexing it)", line);
            case List<object?> or string when index is not bool:
                throw new JinjaException($"a {JinjaValues.TypeName(target)} index must be an integer, not a {JinjaValues.TypeName(index)}", line);
            default:
                return new JinjaUndefined($"[{JinjaValues.ToText(index, _budget)}]");
        }
    }

    private object? Slice(object? target, SliceExpr s)
    {
        long? Part(JinjaExpr? e)
        {
            if (e is null) return null;
            var v = Eval(e);
            if (v is null) return null;
            if (v is long l) return l;
            throw new JinjaException($"a slice bound must be an integer, not a {JinjaValues.TypeName(v)}", s.Line);
        }
        long? start = Part(s.Start), stop = Part(s.Stop), stepPart = Part(s.Step);
        long step = stepPart ?? 1;
        if (step == 0) throw new JinjaException("a slice step cannot be zero", s.Line);
        int count = target switch
        {
            List<object?> l => l.Count,
            string str => str.Length,
            JinjaUndefined u => throw new JinjaException($"'{u.Name}' is undefined (slicing it)", s.Line),
            _ => throw new JinjaException($"a {JinjaValues.TypeName(target)} cannot be sliced", s.Line),
        };
        // Python's slice.indices.
        long Clamp(long? v, long dflt, long lo, long hi)
        {
            if (v is not { } x) return dflt;
            if (x < 0) x += count;
            return Math.Clamp(x, lo, hi);
        }
        long first, end;
        if (step > 0) { first = Clamp(start, 0, 0, count); end = Clamp(stop, count, 0, count); }
        else { first = Clamp(start, count - 1, -1, count - 1); end = Clamp(stop, -1, -1, count - 1); }
        var picked = new List<int>();
        for (long i = first; step > 0 ? i < end : i > end; i += step) picked.Add((int)i);
        _budget.Produce(picked.Count);
        if (target is string text)
        {
            var sb = new StringBuilder(picked.Count);
            foreach (int i in picked) sb.Append(text[i]);
            return sb.ToString();
        }
        var list = (List<object?>)target!;
        var result = new List<object?>(picked.Count);
        foreach (int i in picked) result.Add(list[i]);
        return result;
    }

    private object? Unary(UnaryExpr u)
    {
        var v = Eval(u.Operand);
        return u.Op switch
        {
            "not" => !JinjaValues.IsTrue(v),
            "-" => v switch
            {
                long l => (object)checked(-l),
                double d => -d,
                bool b => b ? -1L : 0L,
                _ => throw new JinjaException($"cannot negate a {JinjaValues.TypeName(v)}", u.Line),
            },
            _ => v is long or double ? v : v is bool b2 ? (b2 ? 1L : 0L) : throw new JinjaException($"cannot apply unary + to a {JinjaValues.TypeName(v)}", u.Line),
        };
    }

    private object? Binary(BinaryExpr b)
    {
        if (b.Op == "and")
        {
            var l = Eval(b.Left);
            return JinjaValues.IsTrue(l) ? Eval(b.Right) : l;
        }
        if (b.Op == "or")
        {
            var l = Eval(b.Left);
            return JinjaValues.IsTrue(l) ? l : Eval(b.Right);
        }
        var a = Eval(b.Left);
        var c = Eval(b.Right);
        switch (b.Op)
        {
            case "==": return JinjaValues.Equal(a, c, _budget);
            case "!=": return !JinjaValues.Equal(a, c, _budget);
            case "<": return Order(a, c, b.Line) < 0;
            case ">": return Order(a, c, b.Line) > 0;
            case "<=": return Order(a, c, b.Line) <= 0;
            case ">=": return Order(a, c, b.Line) >= 0;
            case "in": return Contains(c, a, b.Line);
            case "notin": return !Contains(c, a, b.Line);
            case "~":
            {
                string x = JinjaValues.ToText(a, _budget), y = JinjaValues.ToText(c, _budget);
                _budget.Produce((long)x.Length + y.Length);
                return x + y;
            }
            default: return Arithmetic(b.Op, a, c, b.Line);
        }
    }

    private static int Order(object? a, object? b, int line)
    {
        try
        {
            return JinjaValues.Compare(a, b);
        }
        catch (JinjaException e) when (e.Line == 0)
        {
            throw new JinjaException(e.Message, line);
        }
    }

    /// <summary>Python's <c>needle in haystack</c>: a substring, a list item, a dict key.</summary>
    private bool Contains(object? haystack, object? needle, int line)
    {
        switch (haystack)
        {
            case string s when needle is string n: return s.Contains(n, StringComparison.Ordinal);
            case string: throw new JinjaException($"'in <string>' needs a string on the left, not a {JinjaValues.TypeName(needle)}", line);
            case List<object?> l:
                foreach (var x in l)
                    if (JinjaValues.Equal(x, needle, _budget)) return true;
                return false;
            case Dictionary<string, object?> d: return needle is string k && d.ContainsKey(k);
            case JinjaUndefined: return false;
            default: throw new JinjaException($"'in' needs a string, list or dict on the right, not a {JinjaValues.TypeName(haystack)}", line);
        }
    }

    private object? Arithmetic(string op, object? a, object? b, int line)
    {
        if (op == "+")
        {
            if (a is string sa && b is string sb)
            {
                _budget.Produce((long)sa.Length + sb.Length);
                return sa + sb;
            }
            if (a is List<object?> la && b is List<object?> lb)
            {
                _budget.Produce((long)la.Count + lb.Count);
                var r = new List<object?>(la.Count + lb.Count);
                r.AddRange(la);
                r.AddRange(lb);
                return r;
            }
        }
        if (op == "*" && (a is string or List<object?>) != (b is string or List<object?>))
        {
            var (seq, times) = a is string or List<object?> ? (a, b) : (b, a);
            if (times is not long n) throw new JinjaException($"a {JinjaValues.TypeName(seq)} can only be repeated by an integer", line);
            n = Math.Max(n, 0);
            long len = seq is string s ? s.Length : ((List<object?>)seq!).Count;
            if (len > 0 && n > _budget.Limits.MaxOutputChars / len) _budget.Produce(long.MaxValue / 2);
            _budget.Produce(len * n);
            if (seq is string str) return new StringBuilder().Insert(0, str, (int)n).ToString();
            var list = new List<object?>((int)(len * n));
            for (long i = 0; i < n; i++) list.AddRange((List<object?>)seq!);
            return list;
        }
        if (!JinjaValues.TryNumber(a, out double x) || !JinjaValues.TryNumber(b, out double y))
            throw new JinjaException($"cannot apply '{op}' to a {JinjaValues.TypeName(a)} and a {JinjaValues.TypeName(b)}", line);
        bool ints = a is long or bool && b is long or bool;
        long ia = ints ? (a is bool ba ? (ba ? 1 : 0) : (long)a!) : 0, ib = ints ? (b is bool bb ? (bb ? 1 : 0) : (long)b!) : 0;
        switch (op)
        {
            case "+": return ints ? checked(ia + ib) : (object)(x + y);
            case "-": return ints ? checked(ia - ib) : (object)(x - y);
            case "*": return ints ? checked(ia * ib) : (object)(x * y);
            case "/":
                if (y == 0) throw new JinjaException("division by zero", line);
                return x / y;
            case "//":
                if (y == 0) throw new JinjaException("division by zero", line);
                return ints ? FloorDiv(ia, ib) : (object)Math.Floor(x / y);
            case "%":
                if (y == 0) throw new JinjaException("modulo by zero", line);
                if (ints) { long m = ia % ib; return m != 0 && (m < 0) != (ib < 0) ? m + ib : m; }
                { double m = x % y; return m != 0 && (m < 0) != (y < 0) ? m + y : m; }
            case "**":
                if (ints && ib >= 0)
                {
                    long r = 1;
                    for (long i = 0; i < ib; i++)
                    {
                        r = checked(r * ia);
                        if (ia is 0 or 1) break;
                        if (ia == -1) { r = ib % 2 == 0 ? 1 : -1; break; }
                    }
                    return r;
                }
                return Math.Pow(x, y);
            default: throw new JinjaException($"unknown operator '{op}'", line);
        }
    }

    private static long FloorDiv(long a, long b)
    {
        long q = a / b;
        return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
    }
}
