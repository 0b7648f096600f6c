using System.Buffers;

namespace FastServe.Runtime.Backends;

/// <summary>
/// Sampling parameters of one logits row for <see cref="IBackend.Sample"/>. <paramref name="Temperature"/> 0 is
/// greedy; <paramref name="TopK"/> 0 and <paramref name="TopP"/> 1 are off. The draw is keyed by
/// <paramref name="Seed"/> at <paramref name="Counter"/>: the engine passes the sequence's seed and the position the
/// token will take, so a seeded request draws the same tokens whatever else shares its steps.
/// </summary>
public readonly record struct SampleRow(float Temperature, float TopP, int TopK, ulong Seed, ulong Counter);

/// <summary>
/// The scalar reference of the device sampler (native/cuda/sample.cu, <c>fs_cuda_sample</c>), rule for rule, so a
/// host can draw exactly the tokens a GPU draws and <c>check-backend</c> can check the kernel:
/// <list type="number">
/// <item>Arg-max, lowest id on ties, NaN never wins. Temperature ≤ 0 (or no finite logit) returns it.</item>
/// <item>p[i] = exp((logit[i] − max) / T) (0 for NaN); masses are p as 40-bit fixed point, floor(p · 2⁴⁰), summed
/// exactly in 64-bit integers.</item>
/// <item>Kept set: with top-k and/or top-p, τ is the largest probability at which the tokens with p ≥ τ reach k
/// tokens or (top_p − 10⁻⁶) of the total mass; tokens with p &gt; τ are kept and, of those with p = τ, the lowest ids, as
/// many as the targets still need (at least one).</item>
/// <item>u = Philox4x32-10(key = seed, counter = (counter, 0)) as a 53-bit fraction; the token is the first kept
/// token, in id order, whose running mass passes u · kept mass.</item>
/// </list>
/// Differences from a device can come only from exp's last bit (CUDA's expf and the host's differ by an ulp at
/// most), which moves a mass by about 2⁻¹⁶ of itself: <see cref="Explain"/> reports how close a draw was to a
/// boundary so a checker can allow for it.
/// </summary>
public static class CounterSampler
{
    private const float FixedOne = 1099511627776f; // 2^40

    /// <summary>Draws one token from <paramref name="logits"/>. <paramref name="probs"/> is scratch of at least
    /// logits.Length floats (unused, and may be empty, when the row is greedy). Allocates nothing.</summary>
    public static int Sample(ReadOnlySpan<float> logits, in SampleRow row, Span<float> probs) => Explain(logits, row, probs).Token;

    /// <summary>Draws one token per row of host logits: row i is <paramref name="logits"/>[i·cols, (i+1)·cols).
    /// <paramref name="probs"/> is scratch of at least <paramref name="cols"/> floats.</summary>
    public static void SampleRows(ReadOnlySpan<float> logits, int cols, ReadOnlySpan<SampleRow> rows, Span<int> tokens, Span<float> probs)
    {
        for (int i = 0; i < rows.Length; i++) tokens[i] = Sample(logits.Slice(i * cols, cols), rows[i], probs);
    }

    /// <summary><see cref="IBackend.Sample"/> for a backend whose logits are not in host memory and that has no
    /// sampler of its own: downloads the logits (<see cref="IBackend.CopyToHost"/>) into pooled buffers and draws
    /// each row here.</summary>
    public static void SampleOnHost(IBackend backend, BackendTensor logits, ReadOnlySpan<SampleRow> rows, Span<int> tokens)
    {
        OpChecks.Sample(logits, rows, tokens);
        int cols = logits.Cols, n = logits.Rows * cols;
        var host = ArrayPool<float>.Shared.Rent(Math.Max(n, 1));
        var probs = ArrayPool<float>.Shared.Rent(cols);
        try
        {
            backend.CopyToHost(logits, host.AsSpan(0, n));
            SampleRows(host.AsSpan(0, n), cols, rows, tokens, probs);
        }
        finally
        {
            ArrayPool<float>.Shared.Return(probs);
            ArrayPool<float>.Shared.Return(host);
        }
    }

    /// <summary>What <see cref="Sample"/> decided, for checkers: the token, the kept mass and the draw's target
    /// within it, and the token's own interval [Before, After) of running mass. Kept = 0 means the arg-max path.</summary>
    public readonly record struct Draw(int Token, ulong Kept, ulong Target, ulong Before, ulong After, int KeptCount);

    public static Draw Explain(ReadOnlySpan<float> logits, in SampleRow row, Span<float> probs)
    {
        int vocab = logits.Length;
        if (vocab == 0) throw new ArgumentException("no logits", nameof(logits));

        float vmax = float.NegativeInfinity;
        int argmax = -1;
        for (int i = 0; i < vocab; i++)
        {
            float v = logits[i];
            if (v > vmax || (argmax < 0 && v == float.NegativeInfinity)) { vmax = v; argmax = i; }
        }
        if (argmax < 0) argmax = 0;
        float temp = row.Temperature;
        if (!(temp > 0f) || !float.IsFinite(vmax)) return new Draw(argmax, 0, 0, 0, 0, 0);
        if (probs.Length < vocab) throw new ArgumentException("probs scratch is smaller than the vocabulary", nameof(probs));

        float invT = 1f / temp;
        ulong total = 0;
        for (int i = 0; i < vocab; i++)
        {
            float v = logits[i];
            float e = float.IsNaN(v) ? 0f : MathF.Exp((v - vmax) * invT);
            probs[i] = e;
            total += Fixed(e);
        }

        int k = row.TopK;
        float tp = row.TopP;
        bool useK = k > 0 && k < vocab, useP = tp > 0f && tp < 1f;
        uint tau = 0;
        long need = long.MaxValue;
        if (useK || useP)
        {
            // top_p less 1e-6 of slack: float top_p (0.8f is a hair above 0.8) would otherwise pull in one token
            // too many at an exact boundary. The kernel computes the same double expression.
            double want = ((double)tp - 1e-6) * total;
            ulong targetMass = useP ? (want > 1.0 ? (ulong)want : 1UL) : ulong.MaxValue;
            ulong targetCount = useK ? (ulong)k : uint.MaxValue;
            // τ: the largest probability bit pattern whose inclusion (every token at or above it) reaches a target.
            tau = FindTau(probs[..vocab], targetCount, targetMass, out ulong countAbove, out ulong massAbove, out ulong ties);
            ulong n = ties;
            if (useK) n = Math.Min(n, targetCount - countAbove);
            ulong qTau = Fixed(BitConverter.UInt32BitsToSingle(tau));
            if (useP && qTau > 0)
            {
                ulong rest = targetMass > massAbove ? targetMass - massAbove : 0;
                n = Math.Min(n, (rest + qTau - 1) / qTau);
            }
            need = (long)Math.Max(1UL, n);
        }

        ulong kept = 0;
        int keptCount = 0;
        long tieRank = 0;
        for (int i = 0; i < vocab; i++)
        {
            if (Keeps(probs[i], tau, need, ref tieRank)) { kept += Fixed(probs[i]); keptCount++; }
        }
        if (kept == 0) return new Draw(argmax, 0, 0, 0, 0, keptCount);

        double u = Uniform(row.Seed, row.Counter);
        ulong target = (ulong)(u * kept);
        if (target >= kept) target = kept - 1;
        ulong run = 0;
        tieRank = 0;
        for (int i = 0; i < vocab; i++)
        {
            if (!Keeps(probs[i], tau, need, ref tieRank)) continue;
            ulong before = run;
            run += Fixed(probs[i]);
            if (target < run) return new Draw(i, kept, target, before, run, keptCount);
        }
        return new Draw(argmax, kept, target, 0, 0, keptCount); // unreachable: target < kept = run at the end
    }

    /// <summary>Philox4x32-10 of (counter, 0, 0, 0) under key = seed, as the kernel computes it, made a double in
    /// [0, 1) from 53 of its bits.</summary>
    public static double Uniform(ulong seed, ulong counter)
    {
        Span<uint> c = [(uint)counter, (uint)(counter >> 32), 0, 0];
        Philox4x32x10(c, (uint)seed, (uint)(seed >> 32));
        return (double)(((ulong)(c[0] >> 5) << 26) | (c[1] >> 6)) * (1.0 / 9007199254740992.0);
    }

    /// <summary>Philox4x32-10 (Salmon et al., Random123) of the 4-word counter <paramref name="ctr"/>, in place.</summary>
    internal static void Philox4x32x10(Span<uint> ctr, uint k0, uint k1)
    {
        uint c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3];
        for (int r = 0; r < 10; r++)
        {
            ulong p0 = 0xD2511F53UL * c0, p1 = 0xCD9E8D57UL * c2;
            uint n0 = (uint)(p1 >> 32) ^ c1 ^ k0, n2 = (uint)(p0 >> 32) ^ c3 ^ k1;
            c1 = (uint)p1;
            c3 = (uint)p0;
            c0 = n0;
            c2 = n2;
            k0 += 0x9E3779B9u;
            k1 += 0xBB67AE85u;
        }
        ctr[0] = c0; ctr[1] = c1; ctr[2] = c2; ctr[3] = c3;
    }

    private static ulong Fixed(float p) => (ulong)(p * FixedOne);

    private static bool Keeps(float p, uint tau, long need, ref long tieRank)
    {
        uint b = BitConverter.SingleToUInt32Bits(p);
        if (b > tau) return true;
        return b == tau && tieRank++ < need;
    }

    // Probabilities are ≥ 0, so their bit patterns order as the values do. The same 4-pass radix select over the
    // patterns' bytes as the kernel: each pass histograms (count and mass) the next byte of the patterns that share
    // the prefix chosen so far, and picks, from the top bin down, the first bin whose inclusion reaches a target.
    private static uint FindTau(ReadOnlySpan<float> probs, ulong targetCount, ulong targetMass, out ulong countAbove, out ulong massAbove, out ulong ties)
    {
        Span<ulong> count = stackalloc ulong[256];
        Span<ulong> mass = stackalloc ulong[256];
        uint prefix = 0, mask = 0;
        ulong above = 0, aboveMass = 0, tie = 0;
        for (int shift = 24; shift >= 0; shift -= 8)
        {
            count.Clear();
            mass.Clear();
            foreach (float p in probs)
            {
                uint b = BitConverter.SingleToUInt32Bits(p);
                if ((b & mask) != prefix) continue;
                uint d = (b >> shift) & 255u;
                count[(int)d]++;
                mass[(int)d] += Fixed(p);
            }
            ulong c = above, m = aboveMass;
            int sel = 0;
            for (int d = 255; d >= 0; d--)
            {
                if (c + count[d] >= targetCount || m + mass[d] >= targetMass) { sel = d; break; }
                c += count[d];
                m += mass[d];
            }
            prefix |= (uint)sel << shift;
            mask |= 255u << shift;
            above = c;
            aboveMass = m;
            tie = count[sel];
        }
        countAbove = above;
        massAbove = aboveMass;
        ties = tie;
        return prefix;
    }
}
