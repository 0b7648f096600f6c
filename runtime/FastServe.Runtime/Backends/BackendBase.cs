using System.Diagnostics.CodeAnalysis;
using System.Runtime.CompilerServices;

namespace FastServe.Runtime.Backends;

/// <summary>
/// Base of the backends (cpu, reference, cuda, vulkan): <see cref="IBackend"/> with every op abstract, plus the per-op
/// prologue written once. An op's prologue casts its operands to the backend's own types, refusing another
/// backend's objects (<see cref="BackendTensor.Owner"/>), a disposed cache, and a matrix where a vector is due (or
/// the reverse); checks shapes (<see cref="OpChecks"/>); and sets the output's <see cref="BackendTensor.Rows"/>.
/// Then the backend does its work:
/// <code>
/// public override void RmsNorm(BackendTensor x, BackendWeight gamma, float eps, BackendTensor dst)
/// {
///     RmsNormOperands(x, gamma, dst, out CpuTensor xs, out CpuWeight g, out CpuTensor d);
///     ... the kernel ...
/// }
/// </code>
/// The prologues are non-virtual and allocate nothing, so an op costs the interface call it always did. Objects a
/// backend makes must name it as their <c>Owner</c>. Errors: <see cref="ArgumentException"/> for a foreign, wrong
/// or disposed operand, and whatever <see cref="OpChecks"/> throws.
/// </summary>
public abstract class BackendBase : IBackend
{
    public abstract string Name { get; }
    public virtual bool QuantizesFp8Activations => false;
    public virtual bool RoundsActivationsTo16Bit => false;
    public virtual bool SamplesOnDevice => false;

    public abstract BackendWeight LoadMatrix(MatrixWeight weight);
    public abstract BackendWeight LoadVector(string name, ReadOnlySpan<float> values);
    public abstract BackendTensor Alloc(string name, int maxRows, int cols);
    public abstract KvCache AllocKvCache(KvCacheSpec spec);
    public abstract void Embedding(BackendWeight table, ReadOnlySpan<int> tokens, BackendTensor dst);
    public abstract void RmsNorm(BackendTensor x, BackendWeight gamma, float eps, BackendTensor dst);
    public abstract void AddRmsNorm(BackendTensor residual, BackendTensor x, BackendWeight gamma, float eps, BackendTensor dst);
    public abstract void Add(BackendTensor acc, BackendTensor x);
    public abstract void MatMul(BackendTensor x, BackendWeight w, BackendTensor dst);
    public abstract void Rope(BackendTensor x, int heads, ReadOnlySpan<int> positions, RopeTable rope);
    public abstract void SiluGate(BackendTensor gate, BackendTensor up, BackendTensor dst);
    public abstract void KvStore(KvCache cache, int layer, BackendTensor k, BackendTensor v, BatchLayout batch);
    public abstract void Attention(BackendTensor q, KvCache cache, int layer, BatchLayout batch, BackendTensor dst);
    public abstract void GatherRows(BackendTensor src, ReadOnlySpan<int> rows, BackendTensor dst);
    public abstract void CopyToHost(BackendTensor src, Span<float> dst);
    public abstract void CopyFromHost(ReadOnlySpan<float> data, int rows, BackendTensor dst);

    /// <summary>The default downloads the logits and draws each row by <see cref="CounterSampler"/>'s rules.</summary>
    public virtual void Sample(BackendTensor logits, ReadOnlySpan<SampleRow> rows, Span<int> tokens) => CounterSampler.SampleOnHost(this, logits, rows, tokens);

    public abstract void Dispose();

    // ---- per-op prologues: operands cast and checked, the output's Rows set -------------------------------------

    protected void EmbeddingOperands<TW, TT>(BackendWeight table, ReadOnlySpan<int> tokens, BackendTensor dst, out TW t, out TT d)
        where TW : BackendWeight where TT : BackendTensor
    {
        t = Matrix<TW>(table);
        d = Tensor<TT>(dst);
        OpChecks.Embedding(table, tokens, dst);
        d.Rows = tokens.Length;
    }

    protected void RmsNormOperands<TT, TW>(BackendTensor x, BackendWeight gamma, BackendTensor dst, out TT xs, out TW g, out TT d)
        where TT : BackendTensor where TW : BackendWeight
    {
        xs = Tensor<TT>(x);
        g = Vector<TW>(gamma);
        d = Tensor<TT>(dst);
        OpChecks.RmsNorm(x, gamma, dst);
        d.Rows = xs.Rows;
    }

    protected void AddRmsNormOperands<TT, TW>(BackendTensor residual, BackendTensor x, BackendWeight gamma, BackendTensor dst, out TT res, out TT xs, out TW g, out TT d)
        where TT : BackendTensor where TW : BackendWeight
    {
        res = Tensor<TT>(residual);
        xs = Tensor<TT>(x);
        g = Vector<TW>(gamma);
        d = Tensor<TT>(dst);
        OpChecks.AddRmsNorm(residual, x, gamma, dst);
        d.Rows = res.Rows;
    }

    protected void AddOperands<TT>(BackendTensor acc, BackendTensor x, out TT a, out TT b) where TT : BackendTensor
    {
        a = Tensor<TT>(acc);
        b = Tensor<TT>(x);
        OpChecks.Add(acc, x);
    }

    protected void MatMulOperands<TT, TW>(BackendTensor x, BackendWeight w, BackendTensor dst, out TT xs, out TW ws, out TT d)
        where TT : BackendTensor where TW : BackendWeight
    {
        xs = Tensor<TT>(x);
        ws = Matrix<TW>(w);
        d = Tensor<TT>(dst);
        OpChecks.MatMul(x, w, dst);
        d.Rows = xs.Rows;
    }

    protected TT RopeOperand<TT>(BackendTensor x, int heads, ReadOnlySpan<int> positions, RopeTable rope) where TT : BackendTensor
    {
        var xs = Tensor<TT>(x);
        OpChecks.Rope(x, heads, positions, rope);
        return xs;
    }

    protected void SiluGateOperands<TT>(BackendTensor gate, BackendTensor up, BackendTensor dst, out TT g, out TT u, out TT d) where TT : BackendTensor
    {
        g = Tensor<TT>(gate);
        u = Tensor<TT>(up);
        d = Tensor<TT>(dst);
        OpChecks.SiluGate(gate, up, dst);
        d.Rows = g.Rows;
    }

    protected void KvStoreOperands<TC, TT>(KvCache cache, int layer, BackendTensor k, BackendTensor v, BatchLayout batch, out TC c, out TT ks, out TT vs)
        where TC : KvCache where TT : BackendTensor
    {
        c = Cache<TC>(cache);
        ks = Tensor<TT>(k);
        vs = Tensor<TT>(v);
        OpChecks.KvStore(cache, layer, k, v, batch);
    }

    protected void AttentionOperands<TT, TC>(BackendTensor q, KvCache cache, int layer, BatchLayout batch, BackendTensor dst, out TT qs, out TC c, out TT d)
        where TT : BackendTensor where TC : KvCache
    {
        qs = Tensor<TT>(q);
        c = Cache<TC>(cache);
        d = Tensor<TT>(dst);
        OpChecks.Attention(q, cache, layer, batch, dst);
        d.Rows = qs.Rows;
    }

    protected void GatherRowsOperands<TT>(BackendTensor src, ReadOnlySpan<int> rows, BackendTensor dst, out TT s, out TT d) where TT : BackendTensor
    {
        s = Tensor<TT>(src);
        d = Tensor<TT>(dst);
        OpChecks.GatherRows(src, rows, dst);
        d.Rows = rows.Length;
    }

    protected TT CopyToHostOperand<TT>(BackendTensor src, Span<float> dst) where TT : BackendTensor
    {
        var s = Tensor<TT>(src);
        OpChecks.CopyToHost(src, dst);
        return s;
    }

    protected TT CopyFromHostOperand<TT>(ReadOnlySpan<float> data, int rows, BackendTensor dst) where TT : BackendTensor
    {
        var d = Tensor<TT>(dst);
        OpChecks.CopyFromHost(data, rows, dst);
        d.Rows = rows;
        return d;
    }

    protected TT SampleOperand<TT>(BackendTensor logits, ReadOnlySpan<SampleRow> rows, Span<int> tokens) where TT : BackendTensor
    {
        var l = Tensor<TT>(logits);
        OpChecks.Sample(logits, rows, tokens);
        return l;
    }

    // ---- casts ----------------------------------------------------------------------------------------------------

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    protected TT Tensor<TT>(BackendTensor t) where TT : BackendTensor
    {
        if (t is TT c && ReferenceEquals(c.Owner, this)) return c;
        return ThrowForeign<TT>(t?.Name, "tensor");
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    protected TW Matrix<TW>(BackendWeight w) where TW : BackendWeight
    {
        if (w is TW c && !c.IsVector && ReferenceEquals(c.Owner, this)) return c;
        return ThrowForeign<TW>(w?.Name, "matrix weight (LoadMatrix)");
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    protected TW Vector<TW>(BackendWeight w) where TW : BackendWeight
    {
        if (w is TW c && c.IsVector && ReferenceEquals(c.Owner, this)) return c;
        return ThrowForeign<TW>(w?.Name, "vector weight (LoadVector)");
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    protected TC Cache<TC>(KvCache k) where TC : KvCache
    {
        if (k is TC c && !c.Disposed && ReferenceEquals(c.Owner, this)) return c;
        return ThrowForeign<TC>("KV cache", "live KV cache");
    }

    [DoesNotReturn]
    private T ThrowForeign<T>(string? name, string what) => throw new ArgumentException($"{name}: not a {what} of this {Name} backend");
}
