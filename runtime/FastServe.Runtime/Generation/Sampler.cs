namespace FastServe.Runtime.Generation;

/// <summary>
/// Picks tokens from logits per <see cref="SamplingParams"/>. Holds scratch sized to the vocabulary so the
/// per-token path allocates nothing. One instance per sequence (it owns the sequence's random stream).
/// </summary>
public sealed class Sampler
{
    private readonly SamplingParams _p;
    private readonly int[] _idx;
    private readonly float[] _val;
    private readonly Random _rng;

    /// <param name="scratch">Vocabulary-sized work arrays to use instead of allocating them: many samplers that
    /// run on one thread (an engine's step executor) share one. Greedy sampling never touches them.</param>
    public Sampler(int vocabSize, SamplingParams p, SamplerScratch? scratch = null)
    {
        p.Validate();
        _p = p;
        if (scratch is not null && scratch.Idx.Length < vocabSize) throw new ArgumentException("scratch is smaller than the vocabulary", nameof(scratch));
        if (scratch is null && p.Temperature == 0) scratch = SamplerScratch.Empty;
        scratch ??= new SamplerScratch(vocabSize);
        _idx = scratch.Idx;
        _val = scratch.Val;
        _rng = p.Seed is { } s ? new Random(unchecked((int)(s ^ (s >> 32)))) : new Random();
        CounterSeed = p.Seed ?? (ulong)Random.Shared.NextInt64(long.MinValue, long.MaxValue);
    }

    public SamplingParams Params => _p;

    /// <summary>The key of this sequence's draws where a backend samples (<see cref="Backends.CounterSampler"/>): the
    /// request's seed, or a random one drawn once per sequence when it has none.</summary>
    public ulong CounterSeed { get; }

    /// <summary>The parameters of one draw of this sequence for <see cref="Backends.IBackend.Sample"/>, at
    /// <paramref name="position"/> (the position the token will take, the draw's counter).</summary>
    public Backends.SampleRow CounterRow(int position) => new(_p.Temperature, _p.TopP, _p.TopK, CounterSeed, (ulong)position);

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

    /// <summary>Chooses the next token. When <paramref name="top"/> is non-empty, fills it with the top
    /// log-probabilities (descending) and returns the chosen token's own log-probability in <paramref name="chosenLogprob"/>.</summary>
    public int Sample(ReadOnlySpan<float> logits, Span<TokenLogprob> top, out float chosenLogprob)
    {
        int token = _p.Temperature == 0 ? ArgMax(logits) : SampleTempered(logits);
        chosenLogprob = 0;
        if (!top.IsEmpty || _p.Logprobs > 0)
        {
            float lse = LogSumExp(logits);
            chosenLogprob = logits[token] - lse;
            if (!top.IsEmpty) TopN(logits, lse, top);
        }
        return token;
    }

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

    // Cumulative-mass comparisons allow 1e-6 of slack: float top_p (0.8f) against a double sum of float
    // probabilities would otherwise pull in one token too many at exact boundaries.
    private int SampleTempered(ReadOnlySpan<float> logits)
    {
        float invT = 1f / _p.Temperature;
        int v = logits.Length;
        int k = _p.TopK > 0 && _p.TopK < v ? _p.TopK : v;
        int count;
        if (k < v)
        {
            count = SelectTopK(logits, k);
            SortDescending(count);
        }
        else if (_p.TopP < 1)
        {
            count = HeapNucleus(logits, invT);
            return Draw(count, invT);
        }
        else
        {
            for (int i = 0; i < v; i++) { _idx[i] = i; _val[i] = logits[i]; }
            count = v;
            return Draw(count, invT);
        }

        // Top-k candidates sorted descending; apply top-p over their renormalized distribution.
        if (_p.TopP < 1)
        {
            float max = _val[0];
            double sum = 0;
            for (int i = 0; i < count; i++) sum += Math.Exp((_val[i] - max) * invT);
            double acc = 0;
            for (int i = 0; i < count; i++)
            {
                acc += Math.Exp((_val[i] - max) * invT) / sum;
                if (acc >= _p.TopP - 1e-6) { count = i + 1; break; }
            }
        }
        return Draw(count, invT);
    }

    // Samples among the first `count` candidates in _idx/_val, proportionally to exp(val/T).
    private int Draw(int count, float invT)
    {
        float max = float.NegativeInfinity;
        for (int i = 0; i < count; i++) if (_val[i] > max) max = _val[i];
        double sum = 0;
        for (int i = 0; i < count; i++) sum += Math.Exp((_val[i] - max) * invT);
        double r = _rng.NextDouble() * sum;
        for (int i = 0; i < count; i++)
        {
            r -= Math.Exp((_val[i] - max) * invT);
            if (r < 0) return _idx[i];
        }
        return _idx[count - 1];
    }

    // Min-heap of size k over (val, idx); leaves the k largest in _val/_idx[0..k).
    private int SelectTopK(ReadOnlySpan<float> logits, int k)
    {
        for (int i = 0; i < k; i++) { _val[i] = logits[i]; _idx[i] = i; }
        for (int i = k / 2 - 1; i >= 0; i--) SiftDownMin(i, k);
        for (int i = k; i < logits.Length; i++)
        {
            if (logits[i] <= _val[0]) continue;
            _val[0] = logits[i];
            _idx[0] = i;
            SiftDownMin(0, k);
        }
        return k;
    }

    private void SortDescending(int count)
    {
        var keys = _val.AsSpan(0, count);
        var items = _idx.AsSpan(0, count);
        if (count > 64)
        {
            for (int i = 0; i < count; i++) keys[i] = -keys[i];
            keys.Sort(items);
            for (int i = 0; i < count; i++) keys[i] = -keys[i];
            return;
        }
        // Insertion sort, lower id first on equal logits, so small candidate sets order deterministically.
        for (int i = 1; i < count; i++)
        {
            float kv = keys[i];
            int iv = items[i];
            int j = i - 1;
            while (j >= 0 && (keys[j] < kv || (keys[j] == kv && items[j] > iv))) { keys[j + 1] = keys[j]; items[j + 1] = items[j]; j--; }
            keys[j + 1] = kv;
            items[j + 1] = iv;
        }
    }

    // Full-vocabulary top-p: build a max-heap and pop until the popped probability mass reaches top-p. Pops are
    // written to the front of _idx/_val in descending order.
    private int HeapNucleus(ReadOnlySpan<float> logits, float invT)
    {
        int n = logits.Length;
        float max = float.NegativeInfinity;
        for (int i = 0; i < n; i++) { _val[i] = logits[i]; _idx[i] = i; if (logits[i] > max) max = logits[i]; }
        double sum = 0;
        for (int i = 0; i < n; i++) sum += Math.Exp((logits[i] - max) * invT);
        for (int i = n / 2 - 1; i >= 0; i--) SiftDownMax(i, n);
        int heap = n, popped = 0;
        double acc = 0;
        while (heap > 0)
        {
            float v = _val[0];
            int id = _idx[0];
            heap--;
            _val[0] = _val[heap]; _idx[0] = _idx[heap];
            SiftDownMax(0, heap);
            // Popped items go to the tail (beyond the heap), then we reverse them into the front.
            _val[heap] = v; _idx[heap] = id;
            popped++;
            acc += Math.Exp((v - max) * invT) / sum;
            if (acc >= _p.TopP - 1e-6) break;
        }
        // Popped items sit at the tail in reverse pop order; reversing the whole array puts them first, descending.
        Array.Reverse(_val, 0, n);
        Array.Reverse(_idx, 0, n);
        return popped;
    }

    private void SiftDownMin(int i, int n)
    {
        while (true)
        {
            int l = 2 * i + 1, r = l + 1, m = i;
            if (l < n && Less(l, m)) m = l;
            if (r < n && Less(r, m)) m = r;
            if (m == i) return;
            Swap(i, m);
            i = m;
        }
    }

    private void SiftDownMax(int i, int n)
    {
        while (true)
        {
            int l = 2 * i + 1, r = l + 1, m = i;
            if (l < n && Less(m, l)) m = l;
            if (r < n && Less(m, r)) m = r;
            if (m == i) return;
            Swap(i, m);
            i = m;
        }
    }

    // Orders by value, then prefers the lower token id as "larger" so ties resolve deterministically.
    private bool Less(int a, int b) => _val[a] < _val[b] || (_val[a] == _val[b] && _idx[a] > _idx[b]);

    private void Swap(int a, int b)
    {
        (_val[a], _val[b]) = (_val[b], _val[a]);
        (_idx[a], _idx[b]) = (_idx[b], _idx[a]);
    }
}

/// <summary>Vocabulary-sized work arrays for <see cref="Sampler"/>. Samplers sharing one must be used by one thread
/// at a time.</summary>
public sealed class SamplerScratch
{
    internal static readonly SamplerScratch Empty = new(0);

    public SamplerScratch(int vocabSize)
    {
        Idx = new int[vocabSize];
        Val = new float[vocabSize];
    }

    internal int[] Idx { get; }
    internal float[] Val { get; }
}
