using System.Runtime.CompilerServices;

namespace FastServe.Runtime.Backends.Cpu;

/// <summary>Arguments of one Attention call shared by all work items (row × KV head).</summary>
internal unsafe struct AttentionArgs
{
    public float* Q;          // [rows, heads · dim]
    public float* Dst;        // same shape as Q
    public int QCols;
    public int Dim;
    public int Group;         // query heads per KV head
    public int BlockSize;
    public float Scale;       // 1/sqrt(dim)
    public int ScoreStride;   // floats per head row of the score scratch
    public CpuKvCache Cache;
    public int Layer;
}

/// <summary>
/// Causal GQA attention for one (row, KV head): the Group query heads that share the KV head are handled together
/// so each K and V tile is read once for all of them. Three passes over the row's positions 0..P:
/// scores (K tiles are [dim][blockSize], so one FMA per dim computes a vector of positions at once),
/// a max-subtracted softmax with vector exp, and the probability-weighted sum of V rows accumulated straight
/// into dst. <typeparamref name="TKv"/> reads the cache elements (F32 or BF16).
/// </summary>
internal static unsafe class AttentionKernel<TOps, TVec, TKv>
    where TOps : ISimd<TVec> where TVec : struct where TKv : IWeightKind
{
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Run(in AttentionArgs a, int row, int pos, int kvHead, ReadOnlySpan<int> table, float* scores)
    {
        int n = pos + 1, bs = a.BlockSize, dim = a.Dim, G = a.Group, W = TOps.Width, E = TKv.Bytes;
        int blocks = (n + bs - 1) / bs;
        float* q = a.Q + (long)row * a.QCols + kvHead * G * dim;
        float* o = a.Dst + (long)row * a.QCols + kvHead * G * dim;
        int stride = a.ScoreStride;

        // Pass 1: scores[g][p] = (q_g · k_p) · scale. Lanes past a block's end compute garbage that the next
        // block (or the scratch padding) absorbs; only 0..n-1 is ever read.
        for (int b = 0; b < blocks; b++)
        {
            byte* kt = a.Cache.KTile(a.Layer, table[b], kvHead);
            int g = 0;
            for (; g + 4 <= G; g += 4) Scores4(kt, bs, dim, q + g * dim, scores + g * stride + b * bs, stride, a.Scale);
            for (; g < G; g++) Scores1(kt, bs, dim, q + g * dim, scores + g * stride + b * bs, a.Scale);
        }

        // Pass 2: softmax numerators in place; 1/sum kept per head.
        float* inv = stackalloc float[G];
        for (int g = 0; g < G; g++) inv[g] = 1f / Softmax(scores + g * stride, n);

        // Pass 3: o_g = Σ_p e_g[p] · v_p, then scaled by 1/sum.
        new Span<float>(o, G * dim).Clear();
        for (int b = 0; b < blocks; b++)
        {
            byte* vt = a.Cache.VTile(a.Layer, table[b], kvHead);
            int valid = Math.Min(bs, n - b * bs);
            for (int s = 0; s < valid; s++)
            {
                byte* v = vt + (long)s * dim * E;
                int p = b * bs + s;
                int g = 0;
                for (; g + 4 <= G; g += 4)
                {
                    float* og = o + g * dim;
                    float* sg = scores + g * stride + p;
                    TVec w0 = TOps.Splat(sg[0]), w1 = TOps.Splat(sg[stride]), w2 = TOps.Splat(sg[2 * stride]), w3 = TOps.Splat(sg[3 * stride]);
                    int c = 0;
                    for (; c <= dim - W; c += W)
                    {
                        TVec vv = TKv.Load<TOps, TVec>(v + c * E);
                        TOps.Store(og + c, TOps.Fma(w0, vv, TOps.Load(og + c)));
                        TOps.Store(og + dim + c, TOps.Fma(w1, vv, TOps.Load(og + dim + c)));
                        TOps.Store(og + 2 * dim + c, TOps.Fma(w2, vv, TOps.Load(og + 2 * dim + c)));
                        TOps.Store(og + 3 * dim + c, TOps.Fma(w3, vv, TOps.Load(og + 3 * dim + c)));
                    }
                    for (; c < dim; c++)
                    {
                        float vs = TKv.LoadScalar(v + c * E);
                        og[c] += sg[0] * vs;
                        og[dim + c] += sg[stride] * vs;
                        og[2 * dim + c] += sg[2 * stride] * vs;
                        og[3 * dim + c] += sg[3 * stride] * vs;
                    }
                }
                for (; g < G; g++)
                {
                    float* og = o + g * dim;
                    float wsc = scores[g * stride + p];
                    TVec w = TOps.Splat(wsc);
                    int c = 0;
                    for (; c <= dim - W; c += W) TOps.Store(og + c, TOps.Fma(w, TKv.Load<TOps, TVec>(v + c * E), TOps.Load(og + c)));
                    for (; c < dim; c++) og[c] += wsc * TKv.LoadScalar(v + c * E);
                }
            }
        }
        for (int g = 0; g < G; g++)
        {
            float* og = o + g * dim;
            TVec f = TOps.Splat(inv[g]);
            int c = 0;
            for (; c <= dim - W; c += W) TOps.Store(og + c, TOps.Mul(TOps.Load(og + c), f));
            for (; c < dim; c++) og[c] *= inv[g];
        }
    }

    /// <summary>Scores of one block for four query heads: out[h · stride + slot].</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Scores4(byte* kt, int bs, int dim, float* q, float* outp, int stride, float scale)
    {
        int W = TOps.Width, E = TKv.Bytes;
        float* q0 = q, q1 = q + dim, q2 = q + 2 * dim, q3 = q + 3 * dim;
        TVec sc = TOps.Splat(scale);
        for (int c = 0; c < bs; c += W)
        {
            TVec a0 = TOps.Zero, a1 = TOps.Zero, a2 = TOps.Zero, a3 = TOps.Zero;
            TVec b0 = TOps.Zero, b1 = TOps.Zero, b2 = TOps.Zero, b3 = TOps.Zero;
            byte* kc = kt + c * E;
            int d = 0;
            for (; d + 2 <= dim; d += 2)
            {
                TVec k = TKv.Load<TOps, TVec>(kc + (long)d * bs * E);
                a0 = TOps.Fma(TOps.Splat(q0[d]), k, a0);
                a1 = TOps.Fma(TOps.Splat(q1[d]), k, a1);
                a2 = TOps.Fma(TOps.Splat(q2[d]), k, a2);
                a3 = TOps.Fma(TOps.Splat(q3[d]), k, a3);
                k = TKv.Load<TOps, TVec>(kc + (long)(d + 1) * bs * E);
                b0 = TOps.Fma(TOps.Splat(q0[d + 1]), k, b0);
                b1 = TOps.Fma(TOps.Splat(q1[d + 1]), k, b1);
                b2 = TOps.Fma(TOps.Splat(q2[d + 1]), k, b2);
                b3 = TOps.Fma(TOps.Splat(q3[d + 1]), k, b3);
            }
            if (d < dim)
            {
                TVec k = TKv.Load<TOps, TVec>(kc + (long)d * bs * E);
                a0 = TOps.Fma(TOps.Splat(q0[d]), k, a0);
                a1 = TOps.Fma(TOps.Splat(q1[d]), k, a1);
                a2 = TOps.Fma(TOps.Splat(q2[d]), k, a2);
                a3 = TOps.Fma(TOps.Splat(q3[d]), k, a3);
            }
            TOps.Store(outp + c, TOps.Mul(TOps.Add(a0, b0), sc));
            TOps.Store(outp + stride + c, TOps.Mul(TOps.Add(a1, b1), sc));
            TOps.Store(outp + 2 * stride + c, TOps.Mul(TOps.Add(a2, b2), sc));
            TOps.Store(outp + 3 * stride + c, TOps.Mul(TOps.Add(a3, b3), sc));
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Scores1(byte* kt, int bs, int dim, float* q, float* outp, float scale)
    {
        int W = TOps.Width, E = TKv.Bytes;
        for (int c = 0; c < bs; c += W)
        {
            TVec a0 = TOps.Zero, a1 = TOps.Zero;
            byte* kc = kt + c * E;
            int d = 0;
            for (; d + 2 <= dim; d += 2)
            {
                a0 = TOps.Fma(TOps.Splat(q[d]), TKv.Load<TOps, TVec>(kc + (long)d * bs * E), a0);
                a1 = TOps.Fma(TOps.Splat(q[d + 1]), TKv.Load<TOps, TVec>(kc + (long)(d + 1) * bs * E), a1);
            }
            if (d < dim) a0 = TOps.Fma(TOps.Splat(q[d]), TKv.Load<TOps, TVec>(kc + (long)d * bs * E), a0);
            TOps.Store(outp + c, TOps.Mul(TOps.Add(a0, a1), TOps.Splat(scale)));
        }
    }

    /// <summary>s[i] = exp(s[i] - max) for i &lt; n; returns Σ s[i].</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float Softmax(float* s, int n)
    {
        int W = TOps.Width;
        int i = 0;
        float max = float.NegativeInfinity;
        if (n >= W)
        {
            TVec m = TOps.Load(s);
            for (i = W; i <= n - W; i += W) m = TOps.Max(m, TOps.Load(s + i));
            max = TOps.HMax(m);
        }
        for (; i < n; i++) max = MathF.Max(max, s[i]);

        TVec vmax = TOps.Splat(max);
        TVec sum = TOps.Zero;
        i = 0;
        for (; i <= n - W; i += W)
        {
            TVec e = TOps.Exp(TOps.Sub(TOps.Load(s + i), vmax));
            TOps.Store(s + i, e);
            sum = TOps.Add(sum, e);
        }
        float total = TOps.Sum(sum);
        for (; i < n; i++)
        {
            float e = MathF.Exp(s[i] - max);
            s[i] = e;
            total += e;
        }
        return total;
    }
}
