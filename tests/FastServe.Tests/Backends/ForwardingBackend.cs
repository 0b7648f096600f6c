using FastServe.Runtime.Backends;

namespace FastServe.Tests.Backends;

/// <summary>A backend that hands every op to another one; tests derive from it to change or observe a few ops
/// (claim device sampling, record a graph's op sequence, break one op on purpose).</summary>
internal abstract class ForwardingBackend(IBackend inner) : IBackend
{
    protected IBackend Inner { get; } = inner;

    public abstract string Name { get; }
    public virtual bool QuantizesFp8Activations => Inner.QuantizesFp8Activations;
    public virtual bool RoundsActivationsTo16Bit => Inner.RoundsActivationsTo16Bit;
    public virtual bool SamplesOnDevice => Inner.SamplesOnDevice;
    public virtual BackendWeight LoadMatrix(MatrixWeight weight) => Inner.LoadMatrix(weight);
    public virtual BackendWeight LoadVector(string name, ReadOnlySpan<float> values) => Inner.LoadVector(name, values);
    public virtual BackendTensor Alloc(string name, int maxRows, int cols) => Inner.Alloc(name, maxRows, cols);
    public virtual KvCache AllocKvCache(KvCacheSpec spec) => Inner.AllocKvCache(spec);
    public virtual void Embedding(BackendWeight table, ReadOnlySpan<int> tokens, BackendTensor dst) => Inner.Embedding(table, tokens, dst);
    public virtual void RmsNorm(BackendTensor x, BackendWeight gamma, float eps, BackendTensor dst) => Inner.RmsNorm(x, gamma, eps, dst);
    public virtual void AddRmsNorm(BackendTensor residual, BackendTensor x, BackendWeight gamma, float eps, BackendTensor dst) => Inner.AddRmsNorm(residual, x, gamma, eps, dst);
    public virtual void Add(BackendTensor acc, BackendTensor x) => Inner.Add(acc, x);
    public virtual void MatMul(BackendTensor x, BackendWeight w, BackendTensor dst) => Inner.MatMul(x, w, dst);
    public virtual void Rope(BackendTensor x, int heads, ReadOnlySpan<int> positions, RopeTable rope) => Inner.Rope(x, heads, positions, rope);
    public virtual void SiluGate(BackendTensor gate, BackendTensor up, BackendTensor dst) => Inner.SiluGate(gate, up, dst);
    public virtual void KvStore(KvCache cache, int layer, BackendTensor k, BackendTensor v, BatchLayout batch) => Inner.KvStore(cache, layer, k, v, batch);
    public virtual void Attention(BackendTensor q, KvCache cache, int layer, BatchLayout batch, BackendTensor dst) => Inner.Attention(q, cache, layer, batch, dst);
    public virtual void GatherRows(BackendTensor src, ReadOnlySpan<int> rows, BackendTensor dst) => Inner.GatherRows(src, rows, dst);
    public virtual void CopyToHost(BackendTensor src, Span<float> dst) => Inner.CopyToHost(src, dst);
    public virtual void CopyFromHost(ReadOnlySpan<float> data, int rows, BackendTensor dst) => Inner.CopyFromHost(data, rows, dst);
    public virtual void Sample(BackendTensor logits, ReadOnlySpan<SampleRow> rows, Span<int> tokens) => Inner.Sample(logits, rows, tokens);

    /// <summary>Does not dispose the inner backend (tests share one); override where the wrapper owns it.</summary>
    public virtual void Dispose() { }
}
