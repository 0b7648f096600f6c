using FastServe.Protocol;

namespace FastServe.Runtime.Generation;

/// <summary>
/// How to pick each next token. Temperature 0 is greedy (argmax, first index wins ties). Otherwise logits are
/// divided by the temperature, filtered to the top-k (0 = no limit), then to the smallest set whose probability
/// reaches top-p (1 = no limit), renormalized and drawn by <see cref="Backends.CounterSampler"/> keyed by
/// <see cref="Seed"/> and the token's position (same seed, same model, same prompt: same tokens, on every backend,
/// alone or batched). Order as in Hugging Face and vLLM.
/// </summary>
public sealed record SamplingParams
{
    public const int MaxLogprobs = RequestRules.MaxLogprobs;

    public float Temperature { get; init; }
    public int TopK { get; init; }
    public float TopP { get; init; } = 1f;
    public ulong? Seed { get; init; }
    /// <summary>Most tokens to generate (the context length also bounds it).</summary>
    public int MaxTokens { get; init; } = 64;
    /// <summary>Generation ends before the first occurrence of any of these in the output text (not included).</summary>
    public IReadOnlyList<string> Stop { get; init; } = [];
    /// <summary>Return the top-N log-probabilities (of the model's raw distribution) for every generated token.</summary>
    public int Logprobs { get; init; }
    /// <summary>Keep generating past EOS (benchmarks with a fixed output length).</summary>
    public bool IgnoreEos { get; init; }

    /// <summary>The request rules (<see cref="RequestRules"/>) these parameters break first, or null: codes
    /// sampling.invalid (field: temperature, top_k, top_p, max_tokens, logprobs), request.too_many_stops,
    /// request.bad_stop.</summary>
    public RuleViolation? Check() =>
        RequestRules.CheckSampling(MaxTokens, Temperature, TopP, TopK, Logprobs) ?? RequestRules.CheckStops(Stop, out _);

    /// <summary>Throws the <see cref="FastServeException"/> of <see cref="Check"/>'s violation (its path names the
    /// field), if any.</summary>
    public void Validate()
    {
        if (Check() is { } v) throw FastServeException.From(v);
    }
}

/// <summary>A token id with its log-probability.</summary>
public readonly record struct TokenLogprob(int Id, float Logprob);
