using System.Text;

namespace FastServe.Protocol;

/// <summary>One broken request rule: its stable detail code (docs/errors.md), the field it names (as the wire and
/// JSON spell it: <c>max_tokens</c>, <c>temperature</c>, <c>top_p</c>, <c>top_k</c>, <c>logprobs</c>, <c>stop</c>,
/// <c>priority</c>, <c>deadline</c>, <c>prompt</c>), a message for people, and the wire status it answers with.</summary>
public readonly record struct RuleViolation(string Code, string Field, string Message, WireStatus Status);

/// <summary>
/// The one set of request rules: the limits of every sampling and scheduling field, of stop strings and of the
/// prompt, checked the same way by the .NET client before it sends, by a replica's workers on each REQUEST, by the
/// engine on every submit (in-process callers, <c>fastserve batch</c>) and by <c>fastserve generate</c>. A value
/// out of range gets the same detail code wherever it is caught; docs/protocol.md ("Request rules") lists the limits.
/// Each check returns null when the value is allowed; none throws or allocates unless it reports a violation.
/// </summary>
public static class RequestRules
{
    /// <summary>Most tokens one request may ask to generate. The context also ends generation (finish
    /// <c>context_full</c>), so a request may ask for more than its context holds, but not for more than this.</summary>
    public const int MaxTokensLimit = 1 << 16;
    public const float MaxTemperature = 100f;
    /// <summary>Most top log-probabilities per generated token.</summary>
    public const int MaxLogprobs = 20;
    public const int MaxStops = Wire.MaxStops;
    /// <summary>Longest stop string in UTF-8 bytes (a stop is 1 to this many bytes).</summary>
    public const int MaxStopBytes = Wire.MaxStopBytes;
    /// <summary>Longest deadline, in milliseconds after the request was received (24 hours); 0 on the wire means none.</summary>
    public const long MaxDeadlineMs = 24L * 3600 * 1000;
    /// <summary>Priorities: 0 interactive, 1 batch.</summary>
    public const int MaxPriority = 1;

    /// <summary>Whether <paramref name="s"/> is a valid model name, model version or tier name: 1 to
    /// <see cref="Wire.MaxModelBytes"/> letters, digits, '.', '_' or '-' (ASCII, so as many bytes on the wire).</summary>
    public static bool IsModelLabel(string? s) =>
        s is { Length: > 0 and <= Wire.MaxModelBytes } && s.All(IsLabelChar);

    /// <summary>A character <see cref="IsModelLabel"/> allows.</summary>
    public static bool IsLabelChar(char c) => c is (>= 'a' and <= 'z') or (>= 'A' and <= 'Z') or (>= '0' and <= '9') or '.' or '_' or '-';

    public const string SamplingInvalid = "sampling.invalid";
    public const string InvalidPriority = "request.invalid_priority";
    public const string InvalidDeadline = "request.invalid_deadline";
    public const string TooManyStops = "request.too_many_stops";
    public const string BadStop = "request.bad_stop";
    public const string PromptEmpty = "prompt.empty";
    public const string PromptTooLong = "prompt.too_long";
    public const string PromptInvalidToken = "prompt.invalid_token";
    public const string BadResume = "request.bad_resume";

    /// <summary>max_tokens 1 … <see cref="MaxTokensLimit"/>; temperature finite, 0 … 100; top_p finite, (0, 1];
    /// top_k ≥ 0 (0 = off); logprobs 0 … <see cref="MaxLogprobs"/>. Code <c>sampling.invalid</c>, in that order.</summary>
    public static RuleViolation? CheckSampling(long maxTokens, float temperature, float topP, int topK, int logprobs = 0)
    {
        if (maxTokens < 1 || maxTokens > MaxTokensLimit) return Sampling("max_tokens", $"max_tokens must be between 1 and {MaxTokensLimit}");
        if (!float.IsFinite(temperature) || temperature < 0 || temperature > MaxTemperature) return Sampling("temperature", "temperature must be between 0 and 100");
        if (!float.IsFinite(topP) || topP <= 0 || topP > 1) return Sampling("top_p", "top_p must be in (0, 1]");
        if (topK < 0) return Sampling("top_k", "top_k must be ≥ 0");
        if (logprobs < 0 || logprobs > MaxLogprobs) return Sampling("logprobs", $"logprobs must be between 0 and {MaxLogprobs}");
        return null;
    }

    /// <summary>0 (interactive) or 1 (batch). Code <c>request.invalid_priority</c>.</summary>
    public static RuleViolation? CheckPriority(int priority) =>
        priority is >= 0 and <= MaxPriority ? null
            : new RuleViolation(InvalidPriority, "priority", "priority must be 0 (interactive) or 1 (batch)", WireStatus.BadRequest);

    /// <summary>A deadline of 1 ms … 24 hours after receipt (the wire's 0 means none and is not checked here).
    /// Code <c>request.invalid_deadline</c>.</summary>
    public static RuleViolation? CheckDeadline(TimeSpan deadline) =>
        deadline > TimeSpan.Zero && deadline <= TimeSpan.FromMilliseconds(MaxDeadlineMs) ? null
            : new RuleViolation(InvalidDeadline, "deadline", "the deadline must be between 0 and 24 hours", WireStatus.BadRequest);

    /// <summary>At most <see cref="MaxStops"/> stop strings, each 1 … <see cref="MaxStopBytes"/> UTF-8 bytes.
    /// Codes <c>request.too_many_stops</c>, <c>request.bad_stop</c>. <paramref name="encodedBytes"/> is the stops'
    /// total UTF-8 size (what a REQUEST spends on them, less their length prefixes).</summary>
    public static RuleViolation? CheckStops(IReadOnlyList<string>? stops, out int encodedBytes)
    {
        encodedBytes = 0;
        int count = stops?.Count ?? 0;
        if (count > MaxStops)
            return new RuleViolation(TooManyStops, "stop", $"{count} stop strings; at most {MaxStops}", WireStatus.BadRequest);
        for (int i = 0; i < count; i++)
        {
            int n = Encoding.UTF8.GetByteCount(stops![i] ?? "");
            if (n < 1 || n > MaxStopBytes)
                return new RuleViolation(BadStop, "stop", $"stop string {i} is {n} bytes; each must be 1 to {MaxStopBytes}", WireStatus.BadRequest);
            encodedBytes += n;
        }
        return null;
    }

    /// <summary>A prompt of 1 … <paramref name="contextLength"/> − 1 tokens (the context holds the prompt and at least
    /// one generated token). Codes <c>prompt.empty</c> (bad_request), <c>prompt.too_long</c> (too_large).</summary>
    public static RuleViolation? CheckPromptLength(int tokens, int contextLength)
    {
        if (tokens == 0) return new RuleViolation(PromptEmpty, "prompt", "the prompt has no tokens", WireStatus.BadRequest);
        if (tokens >= contextLength)
            return new RuleViolation(PromptTooLong, "prompt", $"the prompt has {tokens} tokens; at most {contextLength - 1} fit the context", WireStatus.TooLarge);
        return null;
    }

    /// <summary>The resume fields of a request (protocol 1.3): <paramref name="resumed"/> ids already delivered, at most
    /// <paramref name="maxTokens"/> (they count toward it), and with the prompt at most <paramref name="contextLength"/>
    /// + 1 tokens (one past the context is where a generation ends <c>context_full</c>). Code <c>request.bad_resume</c>.
    /// The ids' range is <see cref="CheckPromptTokens"/>'s rule (<c>prompt.invalid_token</c>); the text bytes are
    /// checked where the ids are decoded.</summary>
    public static RuleViolation? CheckResume(int resumed, long maxTokens, int promptTokens, int contextLength)
    {
        if (resumed > maxTokens)
            return new RuleViolation(BadResume, "resume", $"{resumed} resumed tokens; max_tokens is {maxTokens}", WireStatus.BadRequest);
        if ((long)promptTokens + resumed > (long)contextLength + 1)
            return new RuleViolation(BadResume, "resume", $"the prompt's {promptTokens} tokens and {resumed} resumed tokens exceed the context of {contextLength}", WireStatus.BadRequest);
        return null;
    }

    /// <summary>The violation for resumed text that the resumed ids do not produce: more bytes than their text, or a
    /// count that ends inside a UTF-8 sequence. Code <c>request.bad_resume</c>.</summary>
    public static RuleViolation BadResumeText(uint textBytes, int produced) =>
        new(BadResume, "resume", $"{textBytes} resumed text bytes do not end on a character of the {produced} bytes the resumed tokens produce", WireStatus.BadRequest);

    /// <summary>Every id in 0 … <paramref name="vocabSize"/> − 1. Code <c>prompt.invalid_token</c>.</summary>
    public static RuleViolation? CheckPromptTokens(ReadOnlySpan<int> tokens, int vocabSize)
    {
        for (int i = 0; i < tokens.Length; i++)
            if ((uint)tokens[i] >= (uint)vocabSize) return InvalidToken(i, tokens[i], vocabSize);
        return null;
    }

    /// <summary>The violation for prompt token <paramref name="index"/> being <paramref name="token"/>, outside a
    /// vocabulary of <paramref name="vocabSize"/> (for callers that check ids as they copy them).</summary>
    public static RuleViolation InvalidToken(int index, int token, int vocabSize) =>
        new(PromptInvalidToken, "prompt", $"prompt token {index} is {token}, outside the vocabulary of {vocabSize}", WireStatus.BadRequest);

    private static RuleViolation Sampling(string field, string message) => new(SamplingInvalid, field, message, WireStatus.BadRequest);
}
