namespace FastServe.Runtime.Backends;

/// <summary>
/// The one door through which model code reaches compute. Every op of a Llama-family forward pass is a
/// method here; model code allocates named tensors, loads weights, and calls ops in order. It never touches
/// a kernel or backend memory directly, so CPU, CUDA and Vulkan backends are interchangeable.
///
/// Conventions (all backends):
/// <list type="bullet">
/// <item>Activations are row-major F32 matrices of <see cref="BackendTensor.Rows"/> × <see cref="BackendTensor.Cols"/>;
/// one row per token. An op reads the current <c>Rows</c> of its inputs and sets <c>Rows</c> of its output.</item>
/// <item>Linear weights are [out, in] row-major (PyTorch <c>nn.Linear</c> layout): <c>MatMul</c> computes
/// <c>dst[r, n] = Σ_k x[r, k] · w[n, k] (+ bias[n])</c>. F32, F16, BF16 and FP8 E4M3 (with per-row or
/// per-tensor F32 scales) weights are accepted; FP8 is dequantized inside the dot product, never copied out.</item>
/// <item>Ops are issued in order; a backend may run them asynchronously. <see cref="CopyToHost"/> waits for
/// everything issued before it.</item>
/// <item>Ops never throw for conditions the caller could not have prevented; a shape mismatch is a programming
/// error and throws <see cref="ArgumentException"/>. The one exception is a failing device (a GPU fault, a lost
/// device, memory exhausted mid-step): a device backend then throws <see cref="FastServeException"/> with its
/// stable code and every later op throws again, since the stream's work is lost; callers treat it as fatal for the
/// backend (the engine ends its requests with <c>engine.failed</c>).</item>
/// </list>
/// An instance is used by one thread at a time.
/// </summary>
public interface IBackend : IDisposable
{
    /// <summary>Short name used on the command line and in reports ("cpu", "reference", "cuda").</summary>
    string Name { get; }

    /// <summary>How <see cref="MatMul"/> treats activations against FP8 weights. False (the default): activations
    /// stay F32 and weights are dequantized inside the dot product. True (W8A8): each activation row r is first
    /// quantized to E4M3 with its own scale s = max|x[r, :]| / 448, products accumulate in F32, and the result is
    /// s · w_scale[n] · acc (+ bias). Checkers use it to pick the matching reference.</summary>
    bool QuantizesFp8Activations => false;

    /// <summary>How <see cref="MatMul"/> treats activations against F16 and BF16 weights. False (the default): they
    /// stay F32. True (W16A16, tensor cores): each activation is first rounded to the weight's type (nearest even), and
    /// the exact products accumulate in F32. Checkers use it to pick the matching reference.</summary>
    bool RoundsActivationsTo16Bit => false;

    /// <summary>Makes a linear or embedding weight usable by this backend. The CPU backend keeps pointers to
    /// <paramref name="weight"/>'s memory (which must stay mapped); a GPU backend copies it to the device.</summary>
    BackendWeight LoadMatrix(MatrixWeight weight);

    /// <summary>Loads a vector (norm gain), converted to F32.</summary>
    BackendWeight LoadVector(string name, ReadOnlySpan<float> values);

    /// <summary>Allocates a named activation with room for <paramref name="maxRows"/> rows; <c>Rows</c> starts at 0.</summary>
    BackendTensor Alloc(string name, int maxRows, int cols);

    /// <summary>Allocates a paged KV cache (never quantized).</summary>
    KvCache AllocKvCache(KvCacheSpec spec);

    /// <summary>dst[i, :] = table[tokens[i], :] as F32. dst.Rows = tokens.Length.</summary>
    void Embedding(BackendWeight table, ReadOnlySpan<int> tokens, BackendTensor dst);

    /// <summary>dst[r, :] = x[r, :] / sqrt(mean(x[r, :]²) + eps) · gamma. x and dst may be the same tensor.</summary>
    void RmsNorm(BackendTensor x, BackendWeight gamma, float eps, BackendTensor dst);

    /// <summary>Fused residual step: residual += x; dst = RmsNorm(residual). Saves a pass over memory.</summary>
    void AddRmsNorm(BackendTensor residual, BackendTensor x, BackendWeight gamma, float eps, BackendTensor dst);

    /// <summary>acc += x, element-wise.</summary>
    void Add(BackendTensor acc, BackendTensor x);

    /// <summary>dst = x · wᵀ (+ bias). dst.Rows = x.Rows; dst.Cols must equal w.Rows and x.Cols w.Cols.</summary>
    void MatMul(BackendTensor x, BackendWeight w, BackendTensor dst);

    /// <summary>Rotary position embedding in place on x viewed as [Rows, heads, headDim], rotate-half
    /// (GPT-NeoX / Hugging Face Llama) layout: pairs (i, i + headDim/2) rotate by positions[row] · invFreq[i].</summary>
    void Rope(BackendTensor x, int heads, ReadOnlySpan<int> positions, RopeTable rope);

    /// <summary>dst = silu(gate) ⊙ up, silu(z) = z / (1 + e^-z).</summary>
    void SiluGate(BackendTensor gate, BackendTensor up, BackendTensor dst);

    /// <summary>Writes rows of k and v ([Rows, kvHeads·headDim]) into the cache slots that
    /// <paramref name="batch"/> assigns to them (position p of a sequence lives in block table[p / blockSize],
    /// slot p % blockSize).</summary>
    void KvStore(KvCache cache, int layer, BackendTensor k, BackendTensor v, BatchLayout batch);

    /// <summary>Causal grouped-query attention. q is [Rows, heads·headDim]; each row attends to the positions
    /// 0..position(row) of its own sequence, read from the cache (KvStore must already hold them). Query head h
    /// uses KV head h / (heads / kvHeads). Scores are scaled by 1/sqrt(headDim); softmax in F32.</summary>
    void Attention(BackendTensor q, KvCache cache, int layer, BatchLayout batch, BackendTensor dst);

    /// <summary>dst[i, :] = src[rows[i], :]. Used to take each sequence's last row before the logits.</summary>
    void GatherRows(BackendTensor src, ReadOnlySpan<int> rows, BackendTensor dst);

    /// <summary>Copies src's current rows to host memory (waits for all issued work). dst.Length ≥ Rows·Cols.</summary>
    void CopyToHost(BackendTensor src, Span<float> dst);

    /// <summary>Sets dst to host data: dst.Rows = rows, data.Length = rows·dst.Cols.</summary>
    void CopyFromHost(ReadOnlySpan<float> data, int rows, BackendTensor dst);

    /// <summary>True when <see cref="Sample"/> runs on a device (a GPU), so only token ids reach the host. Callers
    /// sample through <see cref="Sample"/> on every backend (the draws are the same everywhere); this only says what
    /// it costs.</summary>
    bool SamplesOnDevice => false;

    /// <summary>tokens[i] = the token drawn from logits row i with <paramref name="rows"/>[i], by the rules of
    /// <see cref="CounterSampler"/> (greedy lowest-id arg-max; temperature, top-k, top-p; a Philox draw keyed by
    /// seed and counter). rows.Length must equal logits.Rows. Waits for all issued work, like <see cref="CopyToHost"/>.
    /// The default downloads the logits and runs the scalar reference; device backends override it.</summary>
    void Sample(BackendTensor logits, ReadOnlySpan<SampleRow> rows, Span<int> tokens) => CounterSampler.SampleOnHost(this, logits, rows, tokens);
}

/// <summary>A weight as the backend holds it. Rows = output features, Cols = input features.</summary>
public abstract class BackendWeight : IDisposable
{
    /// <param name="isVector">A norm gain (<see cref="IBackend.LoadVector"/>) rather than a linear or embedding
    /// matrix (<see cref="IBackend.LoadMatrix"/>).</param>
    protected BackendWeight(string name, DType dtype, int rows, int cols, bool isVector = false)
    {
        Name = name;
        DType = dtype;
        Rows = rows;
        Cols = cols;
        IsVector = isVector;
    }

    public string Name { get; }
    public DType DType { get; }
    public int Rows { get; }
    public int Cols { get; }
    public bool IsVector { get; }

    /// <summary>The backend that made it: ops refuse another backend's weights.</summary>
    public IBackend? Owner { get; init; }

    public virtual void Dispose() => GC.SuppressFinalize(this);
}

/// <summary>A named F32 activation matrix with fixed capacity. Rows is the live row count, set by ops.</summary>
public abstract class BackendTensor : IDisposable
{
    private int _rows;

    protected BackendTensor(string name, int maxRows, int cols)
    {
        Name = name;
        MaxRows = maxRows;
        Cols = cols;
    }

    public string Name { get; }
    public int MaxRows { get; }
    public int Cols { get; }

    /// <summary>The backend that allocated it: ops refuse another backend's tensors.</summary>
    public IBackend? Owner { get; init; }

    public int Rows
    {
        get => _rows;
        set
        {
            if ((uint)value > (uint)MaxRows)
                throw new ArgumentOutOfRangeException(nameof(value), $"{Name}: {value} rows exceeds capacity {MaxRows}");
            _rows = value;
        }
    }

    public virtual void Dispose() => GC.SuppressFinalize(this);
}

/// <summary>Storage type of the KV cache. The cache is never quantized.</summary>
public enum KvDType : byte { F32, BF16 }

/// <summary>Shape of a paged KV cache: <paramref name="NumBlocks"/> blocks of <paramref name="BlockSize"/>
/// token slots, each slot holding K and V for every layer and KV head.</summary>
public sealed record KvCacheSpec(int Layers, int KvHeads, int HeadDim, int BlockSize, int NumBlocks, KvDType DType)
{
    /// <summary>Bytes of K plus V for one token across all layers.</summary>
    public long BytesPerToken => 2L * Layers * KvHeads * HeadDim * (DType == KvDType.F32 ? 4 : 2);

    public long TotalBytes => BytesPerToken * BlockSize * NumBlocks;
}

/// <summary>A paged KV cache owned by a backend. Block ids index 0..NumBlocks-1; who owns which block is the
/// caller's business (the engine's block allocator, or one sequence's contiguous table).</summary>
public abstract class KvCache : IDisposable
{
    protected KvCache(KvCacheSpec spec) => Spec = spec;

    public KvCacheSpec Spec { get; }

    /// <summary>The backend that allocated it: ops refuse another backend's cache.</summary>
    public IBackend? Owner { get; init; }

    /// <summary>Set by <see cref="Dispose"/> (overrides call it last): ops refuse a disposed cache.</summary>
    public bool Disposed { get; private set; }

    public virtual void Dispose()
    {
        Disposed = true;
        GC.SuppressFinalize(this);
    }
}
