using System.Runtime.CompilerServices;

namespace FastServe.Runtime.Backends.Cpu;

/// <summary>Row-wise and element-wise kernels (norms, residual add, SiLU gate, RoPE, embedding rows).</summary>
internal static unsafe class ElementwiseKernel<TOps, TVec> where TOps : ISimd<TVec> where TVec : struct
{
    /// <summary>dst[r] = x[r] / sqrt(mean(x[r]²) + eps) · gamma for rows r0..r1-1; x may equal dst.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void RmsNorm(float* x, float* gamma, float eps, float* dst, int cols, int r0, int r1, float* addend)
    {
        int W = TOps.Width;
        for (int r = r0; r < r1; r++)
        {
            float* xr = x + (long)r * cols;
            float* dr = dst + (long)r * cols;
            TVec s0 = TOps.Zero, s1 = TOps.Zero;
            int c = 0;
            if (addend != null)
            {
                // Fused residual add: xr += addend row, squares accumulated from the updated values.
                float* ar = addend + (long)r * cols;
                for (; c <= cols - W; c += W)
                {
                    TVec v = TOps.Add(TOps.Load(xr + c), TOps.Load(ar + c));
                    TOps.Store(xr + c, v);
                    s0 = TOps.Fma(v, v, s0);
                }
                for (int t = c; t < cols; t++) xr[t] += ar[t];
            }
            else
            {
                for (; c <= cols - 2 * W; c += 2 * W)
                {
                    TVec v = TOps.Load(xr + c);
                    TVec u = TOps.Load(xr + c + W);
                    s0 = TOps.Fma(v, v, s0);
                    s1 = TOps.Fma(u, u, s1);
                }
                for (; c <= cols - W; c += W)
                {
                    TVec v = TOps.Load(xr + c);
                    s0 = TOps.Fma(v, v, s0);
                }
            }
            float ss = TOps.Sum(TOps.Add(s0, s1));
            for (; c < cols; c++) ss += xr[c] * xr[c];
            float inv = 1f / MathF.Sqrt(ss / cols + eps);
            TVec vi = TOps.Splat(inv);
            c = 0;
            for (; c <= cols - W; c += W) TOps.Store(dr + c, TOps.Mul(TOps.Mul(TOps.Load(xr + c), vi), TOps.Load(gamma + c)));
            for (; c < cols; c++) dr[c] = xr[c] * inv * gamma[c];
        }
    }

    /// <summary>acc[i] += x[i] for i in i0..i1-1.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Add(float* acc, float* x, long i0, long i1)
    {
        int W = TOps.Width;
        long i = i0;
        for (; i <= i1 - W; i += W) TOps.Store(acc + i, TOps.Add(TOps.Load(acc + i), TOps.Load(x + i)));
        for (; i < i1; i++) acc[i] += x[i];
    }

    /// <summary>dst[i] = silu(g[i]) · u[i] for i in i0..i1-1.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void SiluGate(float* g, float* u, float* dst, long i0, long i1)
    {
        int W = TOps.Width;
        TVec one = TOps.Splat(1f);
        TVec zero = TOps.Zero;
        long i = i0;
        for (; i <= i1 - W; i += W)
        {
            TVec z = TOps.Load(g + i);
            TVec e = TOps.Exp(TOps.Sub(zero, z));
            TOps.Store(dst + i, TOps.Mul(TOps.Div(z, TOps.Add(one, e)), TOps.Load(u + i)));
        }
        for (; i < i1; i++)
        {
            float z = g[i];
            dst[i] = z / (1f + MathF.Exp(-z)) * u[i];
        }
    }

    /// <summary>Rotate-half RoPE in place on rows r0..r1-1 of x ([rows, heads · dim]).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Rope(float* x, int cols, int heads, int dim, int* positions, float* invFreq, int r0, int r1, float* cs)
    {
        int W = TOps.Width, half = dim / 2;
        float* sn = cs + half;
        for (int r = r0; r < r1; r++)
        {
            float p = positions[r];
            for (int i = 0; i < half; i++)
            {
                float angle = p * invFreq[i];
                cs[i] = MathF.Cos(angle);
                sn[i] = MathF.Sin(angle);
            }
            float* row = x + (long)r * cols;
            for (int h = 0; h < heads; h++)
            {
                float* a = row + h * dim;
                float* b = a + half;
                int i = 0;
                for (; i <= half - W; i += W)
                {
                    TVec va = TOps.Load(a + i), vb = TOps.Load(b + i);
                    TVec c = TOps.Load(cs + i), s = TOps.Load(sn + i);
                    TOps.Store(a + i, TOps.Sub(TOps.Mul(va, c), TOps.Mul(vb, s)));
                    TOps.Store(b + i, TOps.Fma(va, s, TOps.Mul(vb, c)));
                }
                for (; i < half; i++)
                {
                    float va = a[i], vb = b[i];
                    a[i] = va * cs[i] - vb * sn[i];
                    b[i] = vb * cs[i] + va * sn[i];
                }
            }
        }
    }

    /// <summary>dst[0..cols) = decoded src row · 2^k (the decode's power of two, <see cref="IWeightKind.Post"/>) · scale.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void DecodeRow<TW>(byte* src, float scale, float* dst, int cols) where TW : IWeightKind
    {
        int W = TOps.Width, B = TW.Bytes;
        float post = TW.Post;
        TVec p = TOps.Splat(post), f = TOps.Splat(scale);
        int c = 0;
        for (; c <= cols - W; c += W) TOps.Store(dst + c, TOps.Mul(TOps.Mul(TW.Load<TOps, TVec>(src + c * B), p), f));
        for (; c < cols; c++) dst[c] = TW.LoadScalar(src + c * B) * post * scale;
    }
}
