using FastServe.Protocol;

namespace FastServe.Router.Burst;

/// <summary>How hard the router protects the fleet from a burst of load, chosen by <see cref="BurstController"/>
/// from fleet load or pinned by an operator. Each mode applies a <see cref="ModePolicy"/>. Ordered: a higher value is
/// a stricter mode.</summary>
public enum BurstMode : byte
{
    /// <summary>No burst: requests pass as sent.</summary>
    Normal,
    /// <summary>The fleet is falling behind: shorter answers, tighter deadlines, batch work refused.</summary>
    Surge,
    /// <summary>The fleet is far behind: the strictest caps and deadlines, only interactive work.</summary>
    Emergency,
}

/// <summary>Names of <see cref="BurstMode"/> as the CLI, status output and metrics spell them.</summary>
public static class BurstModeNames
{
    /// <summary>The name: <c>normal</c>, <c>surge</c>, <c>emergency</c>.</summary>
    public static string Of(BurstMode mode) => mode switch
    {
        BurstMode.Surge => "surge",
        BurstMode.Emergency => "emergency",
        _ => "normal",
    };

    /// <summary>Parses a name (exactly as <see cref="Of"/> spells it); false for anything else.</summary>
    public static bool TryParse(string? name, out BurstMode mode)
    {
        switch (name)
        {
            case "normal": mode = BurstMode.Normal; return true;
            case "surge": mode = BurstMode.Surge; return true;
            case "emergency": mode = BurstMode.Emergency; return true;
            default: mode = BurstMode.Normal; return false;
        }
    }
}

/// <summary>
/// What the router does to requests while one <see cref="BurstMode"/> is on. Immutable; <see cref="Validate"/>
/// checks ranges. <see cref="ApplyMaxTokens"/> and <see cref="ApplyDeadlineMs"/> apply it to a REQUEST's fields as
/// the wire spells them.
/// </summary>
public sealed record ModePolicy
{
    /// <summary>Most tokens a request may generate: larger <c>max_tokens</c> are lowered to it. 0 = no cap.</summary>
    public int MaxTokensCap { get; init; }
    /// <summary>A request's deadline is multiplied by this, in (0, 1]; requests without a deadline get
    /// <see cref="DefaultDeadlineMs"/> instead.</summary>
    public double DeadlineFactor { get; init; } = 1;
    /// <summary>The deadline, in milliseconds after receipt, given to requests that have none. 0 = none.</summary>
    public int DefaultDeadlineMs { get; init; }
    /// <summary>Refuse batch requests (priority 1) with <c>overloaded</c>.</summary>
    public bool ShedBatch { get; init; }
    /// <summary>Mirror traffic to shadow versions.</summary>
    public bool ShadowOn { get; init; } = true;
    /// <summary>Escalate requests to a stronger model (cascades).</summary>
    public bool EscalationOn { get; init; } = true;

    /// <summary><paramref name="maxTokens"/> (a REQUEST's <c>max_tokens</c>) lowered to <see cref="MaxTokensCap"/>
    /// when it is above a cap.</summary>
    public uint ApplyMaxTokens(uint maxTokens) =>
        MaxTokensCap > 0 && maxTokens > (uint)MaxTokensCap ? (uint)MaxTokensCap : maxTokens;

    /// <summary>A REQUEST's deadline in milliseconds after receipt (0 = none) under this policy: a deadline times
    /// <see cref="DeadlineFactor"/> (at least 1 ms), no deadline becomes <see cref="DefaultDeadlineMs"/>.</summary>
    public uint ApplyDeadlineMs(uint deadlineMs) =>
        deadlineMs == 0 ? (uint)DefaultDeadlineMs : (uint)Math.Max(1, Math.Floor(deadlineMs * DeadlineFactor));

    /// <summary>Throws <see cref="ArgumentOutOfRangeException"/> naming the first setting out of range (prefixed with
    /// <paramref name="name"/>): MaxTokensCap 0 … <see cref="RequestRules.MaxTokensLimit"/>; DeadlineFactor (0, 1];
    /// DefaultDeadlineMs 0 … <see cref="RequestRules.MaxDeadlineMs"/>.</summary>
    public void Validate(string name = nameof(ModePolicy))
    {
        if (MaxTokensCap < 0 || MaxTokensCap > RequestRules.MaxTokensLimit)
            throw new ArgumentOutOfRangeException($"{name}.{nameof(MaxTokensCap)}", MaxTokensCap, $"must be between 0 and {RequestRules.MaxTokensLimit}");
        if (!(DeadlineFactor > 0 && DeadlineFactor <= 1))
            throw new ArgumentOutOfRangeException($"{name}.{nameof(DeadlineFactor)}", DeadlineFactor, "must be above 0 and at most 1");
        if (DefaultDeadlineMs < 0 || DefaultDeadlineMs > RequestRules.MaxDeadlineMs)
            throw new ArgumentOutOfRangeException($"{name}.{nameof(DefaultDeadlineMs)}", DefaultDeadlineMs, $"must be between 0 and {RequestRules.MaxDeadlineMs}");
    }
}

/// <summary>The <see cref="ModePolicy"/> of each <see cref="BurstMode"/>. Immutable; the defaults are
/// <see cref="DefaultNormal"/>, <see cref="DefaultSurge"/> and <see cref="DefaultEmergency"/>.</summary>
public sealed record BurstPolicies
{
    /// <summary>No cap, deadlines as sent, no default deadline, nothing shed, shadow and escalation on.</summary>
    public static readonly ModePolicy DefaultNormal = new();

    /// <summary>Cap 256 tokens, deadlines × 0.8, no default deadline, batch shed, shadow off, escalation on.</summary>
    public static readonly ModePolicy DefaultSurge = new()
    {
        MaxTokensCap = 256, DeadlineFactor = 0.8, DefaultDeadlineMs = 0, ShedBatch = true, ShadowOn = false, EscalationOn = true,
    };

    /// <summary>Cap 64 tokens, deadlines × 0.5, 2,000 ms for requests without one, batch shed, shadow and escalation
    /// off.</summary>
    public static readonly ModePolicy DefaultEmergency = new()
    {
        MaxTokensCap = 64, DeadlineFactor = 0.5, DefaultDeadlineMs = 2000, ShedBatch = true, ShadowOn = false, EscalationOn = false,
    };

    /// <summary>The policy in <see cref="BurstMode.Normal"/>.</summary>
    public ModePolicy Normal { get; init; } = DefaultNormal;
    /// <summary>The policy in <see cref="BurstMode.Surge"/>.</summary>
    public ModePolicy Surge { get; init; } = DefaultSurge;
    /// <summary>The policy in <see cref="BurstMode.Emergency"/>.</summary>
    public ModePolicy Emergency { get; init; } = DefaultEmergency;

    /// <summary>The policy of <paramref name="mode"/>.</summary>
    public ModePolicy For(BurstMode mode) => mode switch
    {
        BurstMode.Surge => Surge,
        BurstMode.Emergency => Emergency,
        _ => Normal,
    };

    /// <summary>Validates each mode's policy (<see cref="ModePolicy.Validate"/>; the exception names the mode).
    /// Modes need not be ordered by strictness.</summary>
    public void Validate()
    {
        ArgumentNullException.ThrowIfNull(Normal);
        ArgumentNullException.ThrowIfNull(Surge);
        ArgumentNullException.ThrowIfNull(Emergency);
        Normal.Validate(nameof(Normal));
        Surge.Validate(nameof(Surge));
        Emergency.Validate(nameof(Emergency));
    }
}
