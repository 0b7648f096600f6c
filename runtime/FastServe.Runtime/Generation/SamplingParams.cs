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
    public const int MaxLogprobs = 20;

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

    /// <summary>Throws FastServeException "sampling.invalid" naming the parameter when a value is out of range.</summary>
    public void Validate()
    {
        static void Bad(string name, string why) => throw new FastServeException("sampling.invalid", why, name);
        if (!float.IsFinite(Temperature) || Temperature < 0 || Temperature > 100) Bad("temperature", "temperature must be between 0 and 100");
        if (TopK < 0) Bad("top_k", "top_k must be 0 (off) or positive");
        if (!float.IsFinite(TopP) || TopP <= 0 || TopP > 1) Bad("top_p", "top_p must be in (0, 1]");
        if (MaxTokens < 1 || MaxTokens > 1 << 20) Bad("max_tokens", "max_tokens must be between 1 and 1048576");
        if (Logprobs < 0 || Logprobs > MaxLogprobs) Bad("logprobs", $"logprobs must be between 0 and {MaxLogprobs}");
        if (Stop.Count > 16) Bad("stop", "at most 16 stop strings");
        foreach (var s in Stop)
            if (string.IsNullOrEmpty(s) || s.Length > 256) Bad("stop", "stop strings must be 1 to 256 characters");
    }
}

/// <summary>A token id with its log-probability.</summary>
public readonly record struct TokenLogprob(int Id, float Logprob);
