namespace FastServe.Http.Jinja;

/// <summary>
/// Builds the AST of a template from its tokens (<see cref="JinjaLexer"/>): the statements and expression grammar of
/// Jinja2 that chat templates use, with Jinja's operator precedence. Throws <see cref="JinjaException"/> naming the line
/// on a syntax error, an unsupported tag (<c>extends</c>, <c>include</c>, <c>import</c>, <c>call</c>, <c>filter</c>)
/// or nesting past <see cref="MaxNesting"/> (so a hostile template cannot exhaust the parser's stack).
/// </summary>
internal sealed class JinjaParser
{
    /// <summary>Deepest nesting of blocks and of recursive expression forms (parentheses, unary operators) accepted.</summary>
    public const int MaxNesting = 100;

    private static readonly HashSet<string> Keywords = ["and", "or", "not", "in", "is", "if", "else", "elif"];

    private readonly List<JinjaToken> _t;
    private int _i, _nesting, _loops;

    private JinjaParser(List<JinjaToken> tokens) => _t = tokens;

    /// <summary>The template's top-level statements.</summary>
    public static IReadOnlyList<JinjaNode> Parse(List<JinjaToken> tokens)
    {
        var p = new JinjaParser(tokens);
        var body = p.ParseBody([]);
        if (p.Peek.Kind != JinjaTokenKind.Eof) throw p.Error($"unexpected {{% {p.PeekAt(1).Text} %}}");
        return body;
    }

    private JinjaToken Peek => _t[_i];
    private JinjaToken PeekAt(int k) => _t[Math.Min(_i + k, _t.Count - 1)];
    private JinjaToken Next() => _t[_i < _t.Count - 1 ? _i++ : _i];
    private JinjaException Error(string message) => new(message, Peek.Line);

    private bool IsOp(string op) => Peek.Kind == JinjaTokenKind.Operator && Peek.Text == op;
    private bool IsName(string name) => Peek.Kind == JinjaTokenKind.Name && Peek.Text == name;

    private bool TakeOp(string op)
    {
        if (!IsOp(op)) return false;
        _i++;
        return true;
    }

    private bool TakeName(string name)
    {
        if (!IsName(name)) return false;
        _i++;
        return true;
    }

    private void ExpectOp(string op)
    {
        if (!TakeOp(op)) throw Error($"expected '{op}', found {Describe(Peek)}");
    }

    private string ExpectName()
    {
        if (Peek.Kind != JinjaTokenKind.Name) throw Error($"expected a name, found {Describe(Peek)}");
        return Next().Text;
    }

    private void ExpectBlockEnd()
    {
        if (Peek.Kind != JinjaTokenKind.BlockEnd) throw Error($"expected '%}}', found {Describe(Peek)}");
        _i++;
    }

    private static string Describe(JinjaToken t) => t.Kind switch
    {
        JinjaTokenKind.Eof => "the end of the template",
        JinjaTokenKind.BlockEnd => "'%}'",
        JinjaTokenKind.VarEnd => "'}}'",
        JinjaTokenKind.String => "a string",
        JinjaTokenKind.Text => "text",
        _ => $"'{t.Text}'",
    };

    private void Enter()
    {
        if (++_nesting > MaxNesting) throw Error($"nested more than {MaxNesting} deep");
    }

    // Statements up to (not including) a block tag named in `ends`, or the end of the template when `ends` is empty.
    private List<JinjaNode> ParseBody(string[] ends)
    {
        Enter();
        var body = new List<JinjaNode>();
        while (true)
        {
            var tok = Peek;
            switch (tok.Kind)
            {
                case JinjaTokenKind.Eof:
                    if (ends.Length > 0) throw Error($"unexpected end of template: expected {{% {string.Join(" or ", ends)} %}}");
                    _nesting--;
                    return body;
                case JinjaTokenKind.Text:
                    _i++;
                    body.Add(new TextNode(tok.Text) { Line = tok.Line });
                    break;
                case JinjaTokenKind.VarBegin:
                    _i++;
                    var e = ParseExpr();
                    if (Peek.Kind != JinjaTokenKind.VarEnd) throw Error($"expected '}}}}', found {Describe(Peek)}");
                    _i++;
                    body.Add(new OutputNode(e) { Line = tok.Line });
                    break;
                case JinjaTokenKind.BlockBegin:
                    var name = PeekAt(1);
                    if (name.Kind != JinjaTokenKind.Name) throw new JinjaException("expected a tag name after '{%'", tok.Line);
                    if (Array.IndexOf(ends, name.Text) >= 0)
                    {
                        _nesting--;
                        return body;
                    }
                    _i += 2;
                    ParseStatement(name.Text, tok.Line, body);
                    break;
                default:
                    throw Error($"unexpected {Describe(tok)}");
            }
        }
    }

    // Consumes `{% name %}` (the closing tag of a block).
    private void ExpectEndTag(string name)
    {
        if (Peek.Kind != JinjaTokenKind.BlockBegin || PeekAt(1).Text != name) throw Error($"expected {{% {name} %}}");
        _i += 2;
        ExpectBlockEnd();
    }

    private void ParseStatement(string tag, int line, List<JinjaNode> body)
    {
        switch (tag)
        {
            case "if": body.Add(ParseIf(line)); break;
            case "for": body.Add(ParseFor(line)); break;
            case "set": body.Add(ParseSet(line)); break;
            case "macro": body.Add(ParseMacro(line)); break;
            case "break" or "continue":
                if (_loops == 0) throw new JinjaException($"{{% {tag} %}} outside a loop", line);
                ExpectBlockEnd();
                body.Add(new LoopControlNode(tag == "break") { Line = line });
                break;
            case "generation":
                // transformers' marker of the assistant's tokens (for training masks): its body renders as is.
                ExpectBlockEnd();
                body.AddRange(ParseBody(["endgeneration"]));
                ExpectEndTag("endgeneration");
                break;
            case "endif" or "endfor" or "elif" or "else" or "endset" or "endmacro" or "endraw" or "endgeneration":
                throw new JinjaException($"unexpected {{% {tag} %}}: nothing open to close or continue", line);
            default:
                throw new JinjaException($"unsupported tag {{% {tag} %}}", line);
        }
    }

    private IfNode ParseIf(int line)
    {
        var branches = new List<(JinjaExpr, IReadOnlyList<JinjaNode>)>();
        IReadOnlyList<JinjaNode>? otherwise = null;
        var cond = ParseExpr();
        ExpectBlockEnd();
        while (true)
        {
            var part = ParseBody(["elif", "else", "endif"]);
            branches.Add((cond, part));
            _i++;   // BlockBegin
            string tag = Next().Text;
            if (tag == "elif")
            {
                cond = ParseExpr();
                ExpectBlockEnd();
                continue;
            }
            ExpectBlockEnd();
            if (tag == "else")
            {
                otherwise = ParseBody(["endif"]);
                ExpectEndTag("endif");
            }
            return new IfNode(branches, otherwise) { Line = line };
        }
    }

    private ForNode ParseFor(int line)
    {
        var targets = new List<string> { ExpectName() };
        while (TakeOp(",")) targets.Add(ExpectName());
        if (!TakeName("in")) throw Error("expected 'in' in {% for %}");
        var iter = ParseOr();   // no conditional here: `for x in xs if cond` is a loop filter
        if (IsOp(",")) throw Error("iterating a tuple literal is not supported; use a list");
        JinjaExpr? filter = null;
        if (TakeName("if")) filter = ParseOr();
        if (IsName("recursive")) throw Error("recursive loops are not supported");
        ExpectBlockEnd();
        _loops++;
        var body = ParseBody(["else", "endfor"]);
        _loops--;
        List<JinjaNode>? otherwise = null;
        if (PeekAt(1).Text == "else")
        {
            _i += 2;
            ExpectBlockEnd();
            otherwise = ParseBody(["endfor"]);
        }
        ExpectEndTag("endfor");
        return new ForNode(targets, iter, filter, body, otherwise) { Line = line };
    }

    private JinjaNode ParseSet(int line)
    {
        var names = new List<string> { ExpectName() };
        string? attr = null;
        if (TakeOp(".")) attr = ExpectName();
        else while (TakeOp(",")) names.Add(ExpectName());
        if (Peek.Kind == JinjaTokenKind.BlockEnd && attr is null && names.Count == 1)
        {
            _i++;
            var body = ParseBody(["endset"]);
            ExpectEndTag("endset");
            return new SetBlockNode(names[0], body) { Line = line };
        }
        ExpectOp("=");
        var value = ParseExpr();
        if (IsOp(","))
        {
            var items = new List<JinjaExpr> { value };
            while (TakeOp(",")) items.Add(ParseExpr());
            value = new ListExpr(items) { Line = line };
        }
        ExpectBlockEnd();
        return new SetNode(names, attr, value) { Line = line };
    }

    private MacroNode ParseMacro(int line)
    {
        string name = ExpectName();
        var parameters = new List<string>();
        var defaults = new List<JinjaExpr?>();
        ExpectOp("(");
        while (!IsOp(")"))
        {
            if (parameters.Count > 0) ExpectOp(",");
            if (IsOp(")")) break;
            parameters.Add(ExpectName());
            defaults.Add(TakeOp("=") ? ParseExpr() : null);
        }
        _i++;
        ExpectBlockEnd();
        int loops = _loops;
        _loops = 0;   // a macro's body is not inside the caller's loop
        var body = ParseBody(["endmacro"]);
        _loops = loops;
        ExpectEndTag("endmacro");
        return new MacroNode(name, parameters, defaults, body) { Line = line };
    }

    // expr := or ['if' or ['else' expr]]
    private JinjaExpr ParseExpr()
    {
        Enter();
        var e = ParseOr();
        while (IsName("if"))
        {
            int line = Next().Line;
            var cond = ParseOr();
            JinjaExpr? otherwise = TakeName("else") ? ParseExpr() : null;
            e = new ConditionalExpr(e, cond, otherwise) { Line = line };
        }
        _nesting--;
        return e;
    }

    private JinjaExpr ParseOr()
    {
        var e = ParseAnd();
        while (IsName("or")) e = new BinaryExpr("or", e, Step(ParseAnd)) { Line = e.Line };
        return e;
    }

    private JinjaExpr ParseAnd()
    {
        var e = ParseNot();
        while (IsName("and")) e = new BinaryExpr("and", e, Step(ParseNot)) { Line = e.Line };
        return e;
    }

    private JinjaExpr Step(Func<JinjaExpr> next)
    {
        _i++;
        return next();
    }

    private JinjaExpr ParseNot()
    {
        if (!IsName("not")) return ParseCompare();
        int line = Next().Line;
        Enter();
        var operand = ParseNot();
        _nesting--;
        return new UnaryExpr("not", operand) { Line = line };
    }

    private JinjaExpr ParseCompare()
    {
        var e = ParseConcat();
        while (true)
        {
            string op;
            if (Peek.Kind == JinjaTokenKind.Operator && Peek.Text is "==" or "!=" or "<" or ">" or "<=" or ">=") op = Next().Text;
            else if (TakeName("in")) op = "in";
            else if (IsName("not") && PeekAt(1) is { Kind: JinjaTokenKind.Name, Text: "in" }) { _i += 2; op = "notin"; }
            else return e;
            e = new BinaryExpr(op, e, ParseConcat()) { Line = e.Line };
        }
    }

    private JinjaExpr ParseConcat()
    {
        var e = ParseAdd();
        while (TakeOp("~")) e = new BinaryExpr("~", e, ParseAdd()) { Line = e.Line };
        return e;
    }

    private JinjaExpr ParseAdd()
    {
        var e = ParseMul();
        while (Peek.Kind == JinjaTokenKind.Operator && Peek.Text is "+" or "-") e = new BinaryExpr(Next().Text, e, ParseMul()) { Line = e.Line };
        return e;
    }

    private JinjaExpr ParseMul()
    {
        var e = ParsePow();
        while (Peek.Kind == JinjaTokenKind.Operator && Peek.Text is "*" or "/" or "//" or "%") e = new BinaryExpr(Next().Text, e, ParsePow()) { Line = e.Line };
        return e;
    }

    private JinjaExpr ParsePow()
    {
        var e = ParseUnary(true);
        while (TakeOp("**")) e = new BinaryExpr("**", e, ParseUnary(true)) { Line = e.Line };
        return e;
    }

    // As Jinja: a unary minus binds tighter than a filter (`-x|abs` is `(-x)|abs`).
    private JinjaExpr ParseUnary(bool withFilters)
    {
        JinjaExpr e;
        if (Peek.Kind == JinjaTokenKind.Operator && Peek.Text is "-" or "+")
        {
            var op = Next();
            Enter();
            e = new UnaryExpr(op.Text, ParseUnary(false)) { Line = op.Line };
            _nesting--;
        }
        else e = ParsePostfix(ParsePrimary());
        return withFilters ? ParseFilters(e) : e;
    }

    private JinjaExpr ParsePrimary()
    {
        var tok = Next();
        switch (tok.Kind)
        {
            case JinjaTokenKind.Name:
                return tok.Text switch
                {
                    "true" or "True" => new LiteralExpr(true) { Line = tok.Line },
                    "false" or "False" => new LiteralExpr(false) { Line = tok.Line },
                    "none" or "None" => new LiteralExpr(null) { Line = tok.Line },
                    _ when Keywords.Contains(tok.Text) => throw new JinjaException($"unexpected '{tok.Text}'", tok.Line),
                    _ => new NameExpr(tok.Text) { Line = tok.Line },
                };
            case JinjaTokenKind.String:
                if (Peek.Kind != JinjaTokenKind.String) return new LiteralExpr(tok.Text) { Line = tok.Line };
                var sb = new System.Text.StringBuilder(tok.Text);
                while (Peek.Kind == JinjaTokenKind.String) sb.Append(Next().Text);   // adjacent literals concatenate
                return new LiteralExpr(sb.ToString()) { Line = tok.Line };
            case JinjaTokenKind.Integer:
                return new LiteralExpr((long)tok.Number) { Line = tok.Line };
            case JinjaTokenKind.Float:
                return new LiteralExpr(tok.Number) { Line = tok.Line };
            case JinjaTokenKind.Operator when tok.Text == "(":
            {
                Enter();
                if (TakeOp(")")) { _nesting--; return new ListExpr([]) { Line = tok.Line }; }
                var first = ParseExpr();
                if (TakeOp(")")) { _nesting--; return first; }
                var items = new List<JinjaExpr> { first };
                while (TakeOp(","))
                {
                    if (IsOp(")")) break;
                    items.Add(ParseExpr());
                }
                ExpectOp(")");
                _nesting--;
                return new ListExpr(items) { Line = tok.Line };
            }
            case JinjaTokenKind.Operator when tok.Text == "[":
            {
                Enter();
                var items = new List<JinjaExpr>();
                while (!IsOp("]"))
                {
                    if (items.Count > 0) ExpectOp(",");
                    if (IsOp("]")) break;
                    items.Add(ParseExpr());
                }
                _i++;
                _nesting--;
                return new ListExpr(items) { Line = tok.Line };
            }
            case JinjaTokenKind.Operator when tok.Text == "{":
            {
                Enter();
                var items = new List<(JinjaExpr, JinjaExpr)>();
                while (!IsOp("}"))
                {
                    if (items.Count > 0) ExpectOp(",");
                    if (IsOp("}")) break;
                    var k = ParseExpr();
                    ExpectOp(":");
                    items.Add((k, ParseExpr()));
                }
                _i++;
                _nesting--;
                return new DictExpr(items) { Line = tok.Line };
            }
            default:
                _i--;
                throw Error($"expected an expression, found {Describe(tok)}");
        }
    }

    private JinjaExpr ParsePostfix(JinjaExpr e)
    {
        while (true)
        {
            if (TakeOp("."))
            {
                var t = Next();
                if (t.Kind == JinjaTokenKind.Name) e = new AttrExpr(e, t.Text) { Line = t.Line };
                else if (t.Kind == JinjaTokenKind.Integer) e = new IndexExpr(e, new LiteralExpr((long)t.Number)) { Line = t.Line };
                else throw new JinjaException("expected an attribute name after '.'", t.Line);
            }
            else if (IsOp("[")) e = ParseSubscript(e);
            else if (IsOp("(")) e = ParseCall(e);
            else return e;
        }
    }

    private JinjaExpr ParseSubscript(JinjaExpr target)
    {
        int line = Next().Line;
        Enter();
        JinjaExpr? start = null, stop = null, step = null;
        if (!IsOp(":")) start = ParseExpr();
        if (TakeOp(":"))
        {
            if (!IsOp(":") && !IsOp("]")) stop = ParseExpr();
            if (TakeOp(":") && !IsOp("]")) step = ParseExpr();
            ExpectOp("]");
            _nesting--;
            return new SliceExpr(target, start, stop, step) { Line = line };
        }
        ExpectOp("]");
        _nesting--;
        return new IndexExpr(target, start!) { Line = line };
    }

    private (List<JinjaExpr> Args, List<(string, JinjaExpr)> Kwargs) ParseArgs()
    {
        ExpectOp("(");
        Enter();
        var args = new List<JinjaExpr>();
        var kwargs = new List<(string, JinjaExpr)>();
        while (!IsOp(")"))
        {
            if (args.Count + kwargs.Count > 0) ExpectOp(",");
            if (IsOp(")")) break;
            if (Peek.Kind == JinjaTokenKind.Name && PeekAt(1) is { Kind: JinjaTokenKind.Operator, Text: "=" })
            {
                string name = Next().Text;
                _i++;
                kwargs.Add((name, ParseExpr()));
            }
            else if (kwargs.Count > 0) throw Error("a positional argument after a keyword argument");
            else args.Add(ParseExpr());
        }
        _i++;
        _nesting--;
        return (args, kwargs);
    }

    private CallExpr ParseCall(JinjaExpr callee)
    {
        int line = Peek.Line;
        var (args, kwargs) = ParseArgs();
        return new CallExpr(callee, args, kwargs) { Line = line };
    }

    private JinjaExpr ParseFilters(JinjaExpr e)
    {
        while (true)
        {
            if (TakeOp("|"))
            {
                var name = Peek;
                string filter = ExpectName();
                IReadOnlyList<JinjaExpr> args = [];
                IReadOnlyList<(string, JinjaExpr)> kwargs = [];
                if (IsOp("(")) (args, kwargs) = ParseArgs();
                e = new FilterExpr(e, filter, args, kwargs) { Line = name.Line };
            }
            else if (IsName("is"))
            {
                int line = Next().Line;
                bool negated = TakeName("not");
                string test = ExpectName();
                IReadOnlyList<JinjaExpr> args = [];
                if (IsOp("(")) args = ParseArgs().Args;
                else if (Peek.Kind is JinjaTokenKind.String or JinjaTokenKind.Integer or JinjaTokenKind.Float
                    || (Peek.Kind == JinjaTokenKind.Name && !Keywords.Contains(Peek.Text)))
                    args = [ParsePostfix(ParsePrimary())];   // `is divisibleby 3`, `is sameas false`
                e = new TestExpr(e, test, args, negated) { Line = line };
            }
            else if (IsOp("(")) e = ParseCall(e);
            else return e;
        }
    }
}
