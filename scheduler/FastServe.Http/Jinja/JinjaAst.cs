namespace FastServe.Http.Jinja;

/// <summary>A node of a parsed template: a statement (text, output, if, for, set, macro, ...) or an expression.</summary>
/// <remarks>Nodes are immutable once parsed, so one parsed template renders on many threads at once.</remarks>
internal abstract record JinjaNode
{
    /// <summary>1-based template line, for error messages.</summary>
    public int Line { get; init; }
}

/// <summary>Template text, written as is.</summary>
internal sealed record TextNode(string Text) : JinjaNode;

/// <summary><c>{{ expr }}</c>: the expression's value as text.</summary>
internal sealed record OutputNode(JinjaExpr Expr) : JinjaNode;

/// <summary><c>{% if %}</c> with its <c>elif</c> branches in order and the <c>else</c> body (null when none).</summary>
internal sealed record IfNode(IReadOnlyList<(JinjaExpr Condition, IReadOnlyList<JinjaNode> Body)> Branches, IReadOnlyList<JinjaNode>? Else) : JinjaNode;

/// <summary><c>{% for a[, b] in iter [if filter] %}</c> … <c>{% else %}</c> (run when nothing was iterated) …
/// <c>{% endfor %}</c>. The body runs in its own scope, with <c>loop</c>.</summary>
internal sealed record ForNode(IReadOnlyList<string> Targets, JinjaExpr Iterable, JinjaExpr? Filter, IReadOnlyList<JinjaNode> Body, IReadOnlyList<JinjaNode>? Else) : JinjaNode;

/// <summary><c>{% set name = value %}</c>, or <c>{% set name.attr = value %}</c> on a namespace (<see cref="Attr"/>
/// non-null), or <c>{% set a, b = value %}</c> (several <see cref="Names"/>).</summary>
internal sealed record SetNode(IReadOnlyList<string> Names, string? Attr, JinjaExpr Value) : JinjaNode;

/// <summary><c>{% set name %}</c> … <c>{% endset %}</c>: the rendered body as a string.</summary>
internal sealed record SetBlockNode(string Name, IReadOnlyList<JinjaNode> Body) : JinjaNode;

/// <summary><c>{% macro name(a, b=default) %}</c> … <c>{% endmacro %}</c>: defines a callable in the current scope.</summary>
internal sealed record MacroNode(string Name, IReadOnlyList<string> Parameters, IReadOnlyList<JinjaExpr?> Defaults, IReadOnlyList<JinjaNode> Body) : JinjaNode;

/// <summary><c>{% break %}</c> or <c>{% continue %}</c> (the loop-controls extension transformers enables).</summary>
internal sealed record LoopControlNode(bool IsBreak) : JinjaNode;

/// <summary>An expression.</summary>
internal abstract record JinjaExpr : JinjaNode;

/// <summary>A literal: string, long, double, bool or null (<c>none</c>).</summary>
internal sealed record LiteralExpr(object? Value) : JinjaExpr;

/// <summary>A variable.</summary>
internal sealed record NameExpr(string Name) : JinjaExpr;

/// <summary><c>[a, b]</c> or a tuple <c>(a, b)</c> (tuples are lists here).</summary>
internal sealed record ListExpr(IReadOnlyList<JinjaExpr> Items) : JinjaExpr;

/// <summary><c>{k: v, ...}</c>.</summary>
internal sealed record DictExpr(IReadOnlyList<(JinjaExpr Key, JinjaExpr Value)> Items) : JinjaExpr;

/// <summary><c>obj.name</c>: a mapping's key (or the named method when called).</summary>
internal sealed record AttrExpr(JinjaExpr Target, string Name) : JinjaExpr;

/// <summary><c>obj[index]</c>.</summary>
internal sealed record IndexExpr(JinjaExpr Target, JinjaExpr Index) : JinjaExpr;

/// <summary><c>obj[start:stop:step]</c>, each part optional.</summary>
internal sealed record SliceExpr(JinjaExpr Target, JinjaExpr? Start, JinjaExpr? Stop, JinjaExpr? Step) : JinjaExpr;

/// <summary>A call: a global function, a macro, or a method when <see cref="Callee"/> is an <see cref="AttrExpr"/>.</summary>
internal sealed record CallExpr(JinjaExpr Callee, IReadOnlyList<JinjaExpr> Args, IReadOnlyList<(string Name, JinjaExpr Value)> Kwargs) : JinjaExpr;

/// <summary><c>value | name(args)</c>.</summary>
internal sealed record FilterExpr(JinjaExpr Value, string Name, IReadOnlyList<JinjaExpr> Args, IReadOnlyList<(string Name, JinjaExpr Value)> Kwargs) : JinjaExpr;

/// <summary><c>value is [not] name(args)</c>.</summary>
internal sealed record TestExpr(JinjaExpr Value, string Name, IReadOnlyList<JinjaExpr> Args, bool Negated) : JinjaExpr;

/// <summary><c>not x</c>, <c>-x</c>, <c>+x</c> (<see cref="Op"/>: <c>not</c>, <c>-</c>, <c>+</c>).</summary>
internal sealed record UnaryExpr(string Op, JinjaExpr Operand) : JinjaExpr;

/// <summary>A binary operator: <c>and or + - * / // % ** ~ == != &lt; &gt; &lt;= &gt;= in</c> and <c>not in</c>
/// (<see cref="Op"/> <c>notin</c>).</summary>
internal sealed record BinaryExpr(string Op, JinjaExpr Left, JinjaExpr Right) : JinjaExpr;

/// <summary><c>then if condition else otherwise</c> (<see cref="Else"/> null: undefined when false).</summary>
internal sealed record ConditionalExpr(JinjaExpr Then, JinjaExpr Condition, JinjaExpr? Else) : JinjaExpr;
