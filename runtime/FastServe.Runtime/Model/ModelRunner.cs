using FastServe.Runtime.Formats;
using FastServe.Runtime.Backends;

namespace FastServe.Runtime.Model;

/// <summary>
/// The Llama-family forward pass, written only against <see cref="IBackend"/>: it names its intermediates,
/// loads weights into the backend once, and issues ops. One step takes any mix of sequences (prefill chunks
/// and single decode tokens) described by a <see cref="BatchLayout"/>, writes their K/V into the paged cache,
/// and returns logits for the rows asked for. Not thread-safe: one step at a time.
/// </summary>
public sealed class ModelRunner : IDisposable
{
    private readonly IBackend _b;
    private readonly ModelConfig _cfg;
    private readonly float _eps;
    private readonly RopeTable _rope;
    private readonly BackendWeight _embed, _lmHead, _finalNorm;
    private readonly BackendLayer[] _layers;
    private readonly BackendTensor _x, _h, _q, _k, _v, _attn, _o, _gate, _up, _act, _down, _last, _logits;
    private readonly List<IDisposable> _owned = [];

    /// <param name="maxTokensPerStep">Rows one step may carry (prefill chunk plus decodes).</param>
    /// <param name="maxLogitRows">Sequences per step whose logits are returned.</param>
    public ModelRunner(ModelConfig config, ModelWeights weights, IBackend backend, KvCacheSpec kvSpec, int maxTokensPerStep = 256, int maxLogitRows = 64)
    {
        _b = backend;
        _cfg = config;
        _eps = (float)config.RmsNormEps;
        _rope = new RopeTable(config.HeadDim, config.RopeTheta, config.RopeScaling);
        MaxTokensPerStep = maxTokensPerStep;
        MaxLogitRows = maxLogitRows;

        _embed = Own(backend.LoadMatrix(weights.Embedding));
        _lmHead = ReferenceEquals(weights.LmHead, weights.Embedding) ? _embed : Own(backend.LoadMatrix(weights.LmHead));
        _finalNorm = Own(backend.LoadVector("model.norm.weight", weights.FinalNorm));
        _layers = new BackendLayer[weights.Layers.Length];
        for (int i = 0; i < _layers.Length; i++)
        {
            var l = weights.Layers[i];
            _layers[i] = new BackendLayer(
                Own(backend.LoadVector($"model.layers.{i}.input_layernorm.weight", l.InputNorm)),
                Own(backend.LoadMatrix(l.Q)), Own(backend.LoadMatrix(l.K)), Own(backend.LoadMatrix(l.V)), Own(backend.LoadMatrix(l.O)),
                Own(backend.LoadVector($"model.layers.{i}.post_attention_layernorm.weight", l.PostAttentionNorm)),
                Own(backend.LoadMatrix(l.Gate)), Own(backend.LoadMatrix(l.Up)), Own(backend.LoadMatrix(l.Down)));
        }

        int h = config.HiddenSize, qDim = config.NumHeads * config.HeadDim, kvDim = config.NumKvHeads * config.HeadDim;
        int n = maxTokensPerStep;
        _x = Own(backend.Alloc("residual", n, h));
        _h = Own(backend.Alloc("normed", n, h));
        _q = Own(backend.Alloc("q", n, qDim));
        _k = Own(backend.Alloc("k", n, kvDim));
        _v = Own(backend.Alloc("v", n, kvDim));
        _attn = Own(backend.Alloc("attn", n, qDim));
        _o = Own(backend.Alloc("attn_out", n, h));
        _gate = Own(backend.Alloc("gate", n, config.IntermediateSize));
        _up = Own(backend.Alloc("up", n, config.IntermediateSize));
        _act = Own(backend.Alloc("act", n, config.IntermediateSize));
        _down = Own(backend.Alloc("mlp_out", n, h));
        _last = Own(backend.Alloc("last_hidden", Math.Max(maxLogitRows, 1), h));
        _logits = Own(backend.Alloc("logits", Math.Max(maxLogitRows, 1), config.VocabSize));
        Cache = Own(backend.AllocKvCache(kvSpec));
    }

    public int MaxTokensPerStep { get; }
    public int MaxLogitRows { get; }
    public KvCache Cache { get; }
    public IBackend Backend => _b;
    public int VocabSize => _cfg.VocabSize;

    /// <summary>
    /// Runs one step. <paramref name="tokens"/> holds every row of <paramref name="batch"/> in row order.
    /// For each index in <paramref name="logitRows"/> (rows of this step, e.g. each sequence's last row),
    /// writes VocabSize logits into <paramref name="logits"/>, consecutively.
    /// </summary>
    public void Forward(ReadOnlySpan<int> tokens, BatchLayout batch, ReadOnlySpan<int> logitRows, Span<float> logits)
    {
        if (logits.Length < logitRows.Length * _cfg.VocabSize) throw new ArgumentException("logits buffer too small");
        if (!Run(tokens, batch, logitRows)) return;
        _b.CopyToHost(_logits, logits[..(logitRows.Length * _cfg.VocabSize)]);
    }

    /// <summary>
    /// Runs one step like <see cref="Forward"/>, then samples one token per row of <paramref name="logitRows"/> with
    /// the matching <paramref name="sample"/> parameters through <see cref="IBackend.Sample"/>, so on a device backend
    /// only the token ids come back.
    /// </summary>
    public void ForwardSample(ReadOnlySpan<int> tokens, BatchLayout batch, ReadOnlySpan<int> logitRows, ReadOnlySpan<SampleRow> sample, Span<int> outTokens)
    {
        if (sample.Length != logitRows.Length || outTokens.Length < logitRows.Length) throw new ArgumentException("one sampling row and one output per logit row");
        if (!Run(tokens, batch, logitRows)) return;
        _b.Sample(_logits, sample, outTokens);
    }

    // Issues the step's ops up to the logits; false when no logits were asked for.
    private bool Run(ReadOnlySpan<int> tokens, BatchLayout batch, ReadOnlySpan<int> logitRows)
    {
        if (tokens.Length != batch.TotalRows) throw new ArgumentException("one token per row of the batch");
        if (tokens.Length > MaxTokensPerStep) throw new ArgumentException($"{tokens.Length} rows exceeds the step capacity {MaxTokensPerStep}");
        if (logitRows.Length > MaxLogitRows) throw new ArgumentException($"{logitRows.Length} logit rows exceeds {MaxLogitRows}");

        var positions = batch.Positions;
        _b.Embedding(_embed, tokens, _x);
        BackendTensor? pendingResidual = null; // output still to be added into the residual stream
        for (int i = 0; i < _layers.Length; i++)
        {
            var l = _layers[i];
            if (pendingResidual is null) _b.RmsNorm(_x, l.InputNorm, _eps, _h);
            else _b.AddRmsNorm(_x, pendingResidual, l.InputNorm, _eps, _h);

            _b.MatMul(_h, l.Q, _q);
            _b.MatMul(_h, l.K, _k);
            _b.MatMul(_h, l.V, _v);
            _b.Rope(_q, _cfg.NumHeads, positions, _rope);
            _b.Rope(_k, _cfg.NumKvHeads, positions, _rope);
            _b.KvStore(Cache, i, _k, _v, batch);
            _b.Attention(_q, Cache, i, batch, _attn);
            _b.MatMul(_attn, l.O, _o);

            _b.AddRmsNorm(_x, _o, l.PostAttentionNorm, _eps, _h);
            _b.MatMul(_h, l.Gate, _gate);
            _b.MatMul(_h, l.Up, _up);
            _b.SiluGate(_gate, _up, _act);
            _b.MatMul(_act, l.Down, _down);
            pendingResidual = _down;
        }
        if (pendingResidual is null) _b.RmsNorm(_x, _finalNorm, _eps, _h);
        else _b.AddRmsNorm(_x, pendingResidual, _finalNorm, _eps, _h);

        if (logitRows.Length == 0) return false;
        _b.GatherRows(_h, logitRows, _last);
        _b.MatMul(_last, _lmHead, _logits);
        return true;
    }

    public void Dispose()
    {
        for (int i = _owned.Count - 1; i >= 0; i--) _owned[i].Dispose();
        _owned.Clear();
    }

    private T Own<T>(T d) where T : IDisposable
    {
        _owned.Add(d);
        return d;
    }

    private sealed record BackendLayer(
        BackendWeight InputNorm, BackendWeight Q, BackendWeight K, BackendWeight V, BackendWeight O,
        BackendWeight PostAttentionNorm, BackendWeight Gate, BackendWeight Up, BackendWeight Down);
}
