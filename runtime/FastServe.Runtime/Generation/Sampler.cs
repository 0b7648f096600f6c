using FastServe.Runtime.Backends;

namespace FastServe.Runtime.Generation;

/// <summary>
/// One sequence's sampling: its <see cref="SamplingParams"/> and the key of its draws. Every token is drawn by
/// <see cref="CounterSampler"/>'s rules (on a device by <see cref="IBackend.Sample"/>, on the host by
/// <see cref="Sample"/>) with key = the request's seed, or a random one drawn once per sequence when it has none, and
/// counter = the position the token will take. A token's draw so depends only on (seed, position) and the logits:
/// the same on every backend, alone or batched, whichever way a step was run.
/// </summary>
public sealed class Sampler
{
    private readonly SamplingParams _p;
    private readonly SamplerScratch? _scratch;
    private float[]? _probs;

    /// <param name="scratch">Vocabulary-sized work space to use instead of allocating it: many samplers that run on
    /// one thread (an engine's step executor) share one. Greedy sampling never touches it.</param>
    public Sampler(int vocabSize, SamplingParams p, SamplerScratch? scratch = null)
    {
        p.Validate();
        if (scratch is not null && scratch.Probs.Length < vocabSize) throw new ArgumentException("scratch is smaller than the vocabulary", nameof(scratch));
        _p = p;
        _scratch = scratch;
        VocabSize = vocabSize;
        Seed = p.Seed ?? (ulong)Random.Shared.NextInt64(long.MinValue, long.MaxValue);
    }

    public SamplingParams Params => _p;

    public int VocabSize { get; }

    /// <summary>The key of this sequence's draws: the request's seed, or a random one drawn once per sequence.</summary>
    public ulong Seed { get; }

    /// <summary>The parameters of this sequence's draw for the token at <paramref name="position"/> (the draw's
    /// counter), for <see cref="IBackend.Sample"/>.</summary>
    public SampleRow Row(int position) => new(_p.Temperature, _p.TopP, _p.TopK, Seed, (ulong)position);

    /// <summary>Draws the token that will take <paramref name="position"/> from <paramref name="logits"/> on the host,
    /// as <see cref="IBackend.Sample"/> would. When <paramref name="top"/> is non-empty, fills it with the top
    /// log-probabilities (descending); <paramref name="chosenLogprob"/> is the chosen token's (0 when neither
    /// <paramref name="top"/> nor <see cref="SamplingParams.Logprobs"/> asks for them).</summary>
    public int Sample(ReadOnlySpan<float> logits, int position, Span<TokenLogprob> top, out float chosenLogprob)
    {
        int token = CounterSampler.Sample(logits, Row(position), Probs(logits.Length));
        chosenLogprob = Logprobs(logits, token, top);
        return token;
    }

    /// <summary>The log-probability part of <see cref="Sample"/> for a token chosen elsewhere (by a backend's
    /// sampler): fills <paramref name="top"/> when non-empty and returns <paramref name="token"/>'s log-probability
    /// (0 when neither is asked for).</summary>
    public float Logprobs(ReadOnlySpan<float> logits, int token, Span<TokenLogprob> top)
    {
        if (top.IsEmpty && _p.Logprobs == 0) return 0;
        float lse = LogSumExp(logits);
        if (!top.IsEmpty) TopN(logits, lse, top);
        return logits[token] - lse;
    }

    /// <summary>Index of the first maximum of <paramref name="x"/> (benchmarks that only want the greedy token).</summary>
    public static int ArgMax(ReadOnlySpan<float> x)
    {
        int best = 0;
        float bv = x[0];
        for (int i = 1; i < x.Length; i++)
            if (x[i] > bv) { bv = x[i]; best = i; }
        return best;
    }

    public static float LogSumExp(ReadOnlySpan<float> x)
    {
        float max = float.NegativeInfinity;
        foreach (float v in x) if (v > max) max = v;
        double sum = 0;
        foreach (float v in x) sum += Math.Exp(v - max);
        return max + (float)Math.Log(sum);
    }

    // Greedy draws never read the scratch, so a greedy sampler without a shared one allocates nothing.
    private Span<float> Probs(int vocab)
    {
        if (_p.Temperature <= 0) return [];
        if (_scratch is not null) return _scratch.Probs;
        return _probs ??= new float[Math.Max(vocab, VocabSize)];
    }

    private static void TopN(ReadOnlySpan<float> logits, float lse, Span<TokenLogprob> top)
    {
        int n = Math.Min(top.Length, logits.Length), filled = 0;
        for (int i = 0; i < logits.Length; i++)
        {
            float v = logits[i];
            if (filled == n && v <= top[n - 1].Logprob) continue;
            int j = filled < n ? filled++ : n - 1;
            while (j > 0 && top[j - 1].Logprob < v) { top[j] = top[j - 1]; j--; }
            top[j] = new TokenLogprob(i, v);
        }
        for (int i = 0; i < filled; i++) top[i] = new TokenLogprob(top[i].Id, top[i].Logprob - lse);
    }
}

/// <summary>Vocabulary-sized work space for <see cref="Sampler"/> (the probabilities of a tempered draw). Samplers
/// sharing one must be used by one thread at a time.</summary>
public sealed class SamplerScratch
{
    public SamplerScratch(int vocabSize) => Probs = new float[vocabSize];

    internal float[] Probs { get; }
}
