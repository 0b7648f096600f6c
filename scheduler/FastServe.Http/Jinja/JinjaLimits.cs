namespace FastServe.Http.Jinja;

/// <summary>
/// What one render may cost, so a hostile template (or hostile messages through a fair template) is stopped with an
/// error instead of taking the process's memory, CPU or stack.
/// </summary>
/// <param name="MaxOutputChars">Longest rendered text, and longest string or list any expression may build.</param>
/// <param name="MaxWorkChars">Characters (and list items) all string and list operations together may produce:
/// bounds the time of templates that build big values many times over.</param>
/// <param name="MaxIterations">Loop iterations (all loops together, <c>range</c> lengths included).</param>
/// <param name="MaxSteps">Statements and expressions evaluated.</param>
/// <param name="MaxDepth">Deepest evaluation recursion (nested expressions, blocks, macro calls, values printed).</param>
internal sealed record JinjaLimits(int MaxOutputChars = 1 << 20, long MaxWorkChars = 64L << 20, long MaxIterations = 100_000,
    long MaxSteps = 5_000_000, int MaxDepth = 400)
{
    /// <summary>The limits used unless a caller sizes them to its input.</summary>
    public static readonly JinjaLimits Default = new();
}

/// <summary>One render's spending against its <see cref="JinjaLimits"/>; each method throws
/// <see cref="JinjaException"/> when a limit is passed. Not thread-safe: one per render.</summary>
internal sealed class JinjaBudget(JinjaLimits limits)
{
    private long _work, _steps, _iterations;
    private int _depth;

    public JinjaLimits Limits { get; } = limits;

    /// <summary>Counts one evaluation step.</summary>
    public void Step()
    {
        if (++_steps > Limits.MaxSteps) throw new JinjaException($"the template took more than {Limits.MaxSteps} steps");
    }

    /// <summary>Counts <paramref name="items"/> loop iterations about to run.</summary>
    public void Iterate(long items = 1)
    {
        _iterations += items;
        if (items < 0 || _iterations > Limits.MaxIterations) throw new JinjaException($"the template ran more than {Limits.MaxIterations} loop iterations");
    }

    /// <summary>Checks that a value of <paramref name="length"/> characters or items may be built, and counts it.</summary>
    public void Produce(long length)
    {
        if (length > Limits.MaxOutputChars) throw new JinjaException($"the template built a value longer than {Limits.MaxOutputChars} characters or items");
        _work += length;
        if (_work > Limits.MaxWorkChars) throw new JinjaException($"the template built more than {Limits.MaxWorkChars} characters in all");
    }

    /// <summary>Enters one level of recursion; pair with <see cref="Leave"/>.</summary>
    public void Enter()
    {
        if (++_depth > Limits.MaxDepth) throw new JinjaException($"the template nested deeper than {Limits.MaxDepth}");
    }

    public void Leave() => _depth--;
}
