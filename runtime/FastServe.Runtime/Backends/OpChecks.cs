using System.Diagnostics.CodeAnalysis;

namespace FastServe.Runtime.Backends;

/// <summary>
/// Argument checks shared by every <see cref="IBackend"/>: one method per op, validating widths, row counts,
/// capacities, head grouping and block-table coverage from the abstract types' public properties only, so
/// CPU, reference and device backends reject the same misuse with the same message.
/// </summary>
/// <remarks>
/// Every failure is a programming error and throws <see cref="ArgumentException"/> (or
/// <see cref="ArgumentOutOfRangeException"/> / <see cref="ArgumentNullException"/>, both subclasses). Checks
/// that depend on a backend's own objects (a tensor of another backend, a vector passed as a matrix, array
/// limits, allocation failures) stay in that backend and should run before these. The happy path allocates
/// nothing: messages are formatted only inside the <see cref="DoesNotReturnAttribute"/> throw helpers.
/// </remarks>
internal static class OpChecks
{
    /// <summary><see cref="IBackend.Alloc"/>: maxRows ≥ 0 and cols &gt; 0.</summary>
    public static void Alloc(string name, int maxRows, int cols)
    {
        if (maxRows < 0 || cols <= 0) ThrowBadShape(name, maxRows, cols);
    }

    /// <summary><see cref="IBackend.AllocKvCache"/>: every dimension of <paramref name="spec"/> positive.</summary>
    public static void AllocKvCache(KvCacheSpec spec)
    {
        ArgumentNullException.ThrowIfNull(spec);
        if (spec.Layers <= 0 || spec.KvHeads <= 0 || spec.HeadDim <= 0 || spec.BlockSize <= 0 || spec.NumBlocks <= 0)
            ThrowBadSpec(spec);
    }

    /// <summary><see cref="IBackend.Embedding"/>: dst as wide as the table, every token a row of it. All tokens are
    /// checked before the op writes anything.</summary>
    public static void Embedding(BackendWeight table, ReadOnlySpan<int> tokens, BackendTensor dst)
    {
        if (table.Cols != dst.Cols) ThrowEmbeddingWidth(table, dst);
        for (int i = 0; i < tokens.Length; i++)
        {
            if ((uint)tokens[i] >= (uint)table.Rows) ThrowToken(tokens[i], table);
        }
    }

    /// <summary><see cref="IBackend.RmsNorm"/>: x, gamma and dst of one width.</summary>
    public static void RmsNorm(BackendTensor x, BackendWeight gamma, BackendTensor dst)
    {
        if (gamma.Cols != x.Cols || dst.Cols != x.Cols) ThrowRmsNormWidth(x, gamma, dst);
    }

    /// <summary><see cref="IBackend.AddRmsNorm"/>: residual, x, gamma and dst of one width; residual and x of one row count.</summary>
    public static void AddRmsNorm(BackendTensor residual, BackendTensor x, BackendWeight gamma, BackendTensor dst)
    {
        if (x.Cols != residual.Cols || gamma.Cols != residual.Cols || dst.Cols != residual.Cols)
            ThrowAddRmsNormWidth(residual, x, gamma, dst);
        if (x.Rows != residual.Rows) ThrowAddRmsNormRows(residual, x);
    }

    /// <summary><see cref="IBackend.Add"/>: acc and x of one shape.</summary>
    public static void Add(BackendTensor acc, BackendTensor x)
    {
        if (acc.Cols != x.Cols || acc.Rows != x.Rows) ThrowAddShape(acc, x);
    }

    /// <summary><see cref="IBackend.MatMul"/>: x.Cols = w.Cols, dst.Cols = w.Rows, and dst is not x.</summary>
    public static void MatMul(BackendTensor x, BackendWeight w, BackendTensor dst)
    {
        if (x.Cols != w.Cols || dst.Cols != w.Rows) ThrowMatMulShape(x, w, dst);
        if (ReferenceEquals(x, dst)) ThrowOwnOutput("MatMul", x);
    }

    /// <summary><see cref="IBackend.Rope"/>: x is heads × rope.HeadDim wide, one position per row.</summary>
    public static void Rope(BackendTensor x, int heads, ReadOnlySpan<int> positions, RopeTable rope)
    {
        ArgumentNullException.ThrowIfNull(rope);
        if (heads <= 0 || heads * rope.HeadDim != x.Cols) ThrowRopeHeads(x, heads, rope.HeadDim);
        if (positions.Length != x.Rows) ThrowRopePositions(x, positions.Length);
    }

    /// <summary><see cref="IBackend.SiluGate"/>: gate and up of one shape, dst as wide.</summary>
    public static void SiluGate(BackendTensor gate, BackendTensor up, BackendTensor dst)
    {
        if (gate.Cols != up.Cols || dst.Cols != gate.Cols || gate.Rows != up.Rows) ThrowSiluGateShape(gate, up, dst);
    }

    /// <summary><see cref="IBackend.KvStore"/>: layer in range, k and v kvHeads·headDim wide with one row per batch
    /// row, and every block table covering its sequence with valid block ids.</summary>
    public static void KvStore(KvCache cache, int layer, BackendTensor k, BackendTensor v, BatchLayout batch)
    {
        ArgumentNullException.ThrowIfNull(batch);
        var spec = cache.Spec;
        int width = spec.KvHeads * spec.HeadDim;
        Layer(layer, spec);
        if (k.Cols != width || v.Cols != width) ThrowKvStoreWidth(k, v, width);
        if (k.Rows != batch.TotalRows || v.Rows != batch.TotalRows) ThrowKvStoreRows(k, v, batch.TotalRows);
        BlockTables(batch, spec);
    }

    /// <summary><see cref="IBackend.Attention"/>: layer in range, q a whole number of heads that group evenly over
    /// the KV heads, dst as wide as q and not q, one q row per batch row, and every block table covering its sequence.</summary>
    public static void Attention(BackendTensor q, KvCache cache, int layer, BatchLayout batch, BackendTensor dst)
    {
        ArgumentNullException.ThrowIfNull(batch);
        var spec = cache.Spec;
        int dim = spec.HeadDim;
        Layer(layer, spec);
        if (q.Cols % dim != 0) ThrowAttentionHeadDim(q, dim);
        int heads = q.Cols / dim;
        if (heads % spec.KvHeads != 0) ThrowAttentionGroups(heads, spec.KvHeads);
        if (dst.Cols != q.Cols) ThrowAttentionDstWidth(q, dst);
        if (q.Rows != batch.TotalRows) ThrowAttentionRows(q, batch.TotalRows);
        if (ReferenceEquals(q, dst)) ThrowOwnOutput("Attention", q);
        BlockTables(batch, spec);
    }

    /// <summary><see cref="IBackend.GatherRows"/>: src and dst of one width, rows in 0..src.Rows-1. In place (src is
    /// dst) is allowed only when rows are strictly increasing and rows[i] ≥ i, so a forward copy never overwrites a
    /// row still to be read.</summary>
    public static void GatherRows(BackendTensor src, ReadOnlySpan<int> rows, BackendTensor dst)
    {
        if (src.Cols != dst.Cols) ThrowGatherWidth(src, dst);
        bool inPlace = ReferenceEquals(src, dst);
        int srcRows = src.Rows;
        for (int i = 0; i < rows.Length; i++)
        {
            if ((uint)rows[i] >= (uint)srcRows) ThrowGatherRow(src, rows[i], srcRows);
            if (inPlace && (rows[i] < i || (i > 0 && rows[i] <= rows[i - 1]))) ThrowGatherInPlace(src);
        }
    }

    /// <summary><see cref="IBackend.CopyToHost"/>: dst holds at least src.Rows·src.Cols floats.</summary>
    public static void CopyToHost(BackendTensor src, Span<float> dst)
    {
        int n = src.Rows * src.Cols;
        if (dst.Length < n) ThrowCopyToHost(src, n, dst.Length);
    }

    /// <summary><see cref="IBackend.Sample"/>: one parameter row and one output slot per logits row, and sane
    /// parameters (temperature finite and ≥ 0, top_p in (0, 1], top_k ≥ 0).</summary>
    public static void Sample(BackendTensor logits, ReadOnlySpan<SampleRow> rows, Span<int> tokens)
    {
        if (rows.Length != logits.Rows || tokens.Length < rows.Length) ThrowSampleShape(logits, rows.Length, tokens.Length);
        for (int i = 0; i < rows.Length; i++)
        {
            var r = rows[i];
            if (!float.IsFinite(r.Temperature) || r.Temperature < 0 || !(r.TopP > 0 && r.TopP <= 1) || r.TopK < 0) ThrowSampleRow(i, r);
        }
    }

    /// <summary><see cref="IBackend.CopyFromHost"/>: rows within dst's capacity and data exactly rows·dst.Cols floats.</summary>
    public static void CopyFromHost(ReadOnlySpan<float> data, int rows, BackendTensor dst)
    {
        if ((uint)rows > (uint)dst.MaxRows || data.Length != rows * dst.Cols) ThrowCopyFromHost(data.Length, rows, dst);
    }

    private static void Layer(int layer, KvCacheSpec spec)
    {
        if ((uint)layer >= (uint)spec.Layers) ThrowLayer(layer, spec.Layers);
    }

    /// <summary>Every sequence with rows has a non-negative start, a block table reaching its last position, and
    /// block ids in 0..NumBlocks-1 over that reach, so kernels can index the cache unchecked.</summary>
    private static void BlockTables(BatchLayout batch, KvCacheSpec spec)
    {
        for (int s = 0; s < batch.SequenceCount; s++)
        {
            int count = batch.RowCount(s);
            if (count == 0) continue;
            int last = batch.StartPos(s) + count - 1;
            if (batch.StartPos(s) < 0) ThrowNegativeStart(s, batch.StartPos(s));
            var table = batch.BlockTable(s);
            int needed = last / spec.BlockSize + 1;
            if (table.Length < needed) ThrowShortBlockTable(s, table.Length, last, needed);
            for (int i = 0; i < needed; i++)
            {
                if ((uint)table[i] >= (uint)spec.NumBlocks) ThrowBlockId(s, table[i], spec.NumBlocks);
            }
        }
    }

    [DoesNotReturn]
    private static void ThrowBadShape(string name, int maxRows, int cols) =>
        throw new ArgumentException($"{name}: bad shape {maxRows}x{cols}");

    [DoesNotReturn]
    private static void ThrowBadSpec(KvCacheSpec spec) =>
        throw new ArgumentException($"bad KV cache spec {spec}");

    [DoesNotReturn]
    private static void ThrowEmbeddingWidth(BackendWeight table, BackendTensor dst) =>
        throw new ArgumentException($"{dst.Name}: has {dst.Cols} columns, table {table.Name} has {table.Cols}");

    [DoesNotReturn]
    private static void ThrowToken(int tok, BackendWeight table) =>
        throw new ArgumentOutOfRangeException("tokens", $"token {tok} outside table {table.Name} of {table.Rows} rows");

    [DoesNotReturn]
    private static void ThrowRmsNormWidth(BackendTensor x, BackendWeight gamma, BackendTensor dst) =>
        throw new ArgumentException($"RmsNorm: {x.Name}, {gamma.Name} and {dst.Name} differ in width");

    [DoesNotReturn]
    private static void ThrowAddRmsNormWidth(BackendTensor residual, BackendTensor x, BackendWeight gamma, BackendTensor dst) =>
        throw new ArgumentException($"AddRmsNorm: {residual.Name}, {x.Name}, {gamma.Name} and {dst.Name} differ in width");

    [DoesNotReturn]
    private static void ThrowAddRmsNormRows(BackendTensor residual, BackendTensor x) =>
        throw new ArgumentException($"AddRmsNorm: {residual.Name} has {residual.Rows} rows, {x.Name} has {x.Rows}");

    [DoesNotReturn]
    private static void ThrowAddShape(BackendTensor acc, BackendTensor x) =>
        throw new ArgumentException($"Add: {acc.Name} is {acc.Rows}x{acc.Cols}, {x.Name} is {x.Rows}x{x.Cols}");

    [DoesNotReturn]
    private static void ThrowMatMulShape(BackendTensor x, BackendWeight w, BackendTensor dst) =>
        throw new ArgumentException($"MatMul: {x.Name} [{x.Rows}x{x.Cols}] · {w.Name}ᵀ [{w.Rows}x{w.Cols}] -> {dst.Name} [{dst.Cols} cols]");

    [DoesNotReturn]
    private static void ThrowOwnOutput(string op, BackendTensor x) =>
        throw new ArgumentException($"{op}: {x.Name} cannot be its own output");

    [DoesNotReturn]
    private static void ThrowRopeHeads(BackendTensor x, int heads, int dim) =>
        throw new ArgumentException($"Rope: {x.Name} has {x.Cols} columns, not {heads} heads of {dim}");

    [DoesNotReturn]
    private static void ThrowRopePositions(BackendTensor x, int positions) =>
        throw new ArgumentException($"Rope: {positions} positions for {x.Rows} rows of {x.Name}");

    [DoesNotReturn]
    private static void ThrowSiluGateShape(BackendTensor gate, BackendTensor up, BackendTensor dst) =>
        throw new ArgumentException($"SiluGate: {gate.Name}, {up.Name} and {dst.Name} differ in shape");

    [DoesNotReturn]
    private static void ThrowLayer(int layer, int layers) =>
        throw new ArgumentOutOfRangeException("layer", $"layer {layer} outside 0..{layers - 1}");

    [DoesNotReturn]
    private static void ThrowKvStoreWidth(BackendTensor k, BackendTensor v, int width) =>
        throw new ArgumentException($"KvStore: {k.Name}/{v.Name} must have {width} columns");

    [DoesNotReturn]
    private static void ThrowKvStoreRows(BackendTensor k, BackendTensor v, int batchRows) =>
        throw new ArgumentException($"KvStore: {k.Name}/{v.Name} rows differ from the batch's {batchRows}");

    [DoesNotReturn]
    private static void ThrowAttentionHeadDim(BackendTensor q, int dim) =>
        throw new ArgumentException($"Attention: {q.Name} width {q.Cols} is not a multiple of head_dim {dim}");

    [DoesNotReturn]
    private static void ThrowAttentionGroups(int heads, int kvHeads) =>
        throw new ArgumentException($"Attention: {heads} heads do not group over {kvHeads} KV heads");

    [DoesNotReturn]
    private static void ThrowAttentionDstWidth(BackendTensor q, BackendTensor dst) =>
        throw new ArgumentException($"Attention: {dst.Name} must have {q.Cols} columns");

    [DoesNotReturn]
    private static void ThrowAttentionRows(BackendTensor q, int batchRows) =>
        throw new ArgumentException($"Attention: {q.Name} has {q.Rows} rows, the batch {batchRows}");

    [DoesNotReturn]
    private static void ThrowNegativeStart(int seq, int start) =>
        throw new ArgumentException($"sequence {seq}: negative start position {start}");

    [DoesNotReturn]
    private static void ThrowShortBlockTable(int seq, int blocks, int last, int needed) =>
        throw new ArgumentException($"sequence {seq}: block table has {blocks} blocks, position {last} needs {needed}");

    [DoesNotReturn]
    private static void ThrowBlockId(int seq, int block, int numBlocks) =>
        throw new ArgumentException($"sequence {seq}: block id {block} outside 0..{numBlocks - 1}");

    [DoesNotReturn]
    private static void ThrowGatherWidth(BackendTensor src, BackendTensor dst) =>
        throw new ArgumentException($"GatherRows: {src.Name} and {dst.Name} differ in width");

    [DoesNotReturn]
    private static void ThrowGatherRow(BackendTensor src, int row, int srcRows) =>
        throw new ArgumentOutOfRangeException("rows", $"GatherRows: row {row} outside {src.Name}'s {srcRows} rows");

    [DoesNotReturn]
    private static void ThrowGatherInPlace(BackendTensor src) =>
        throw new ArgumentException($"GatherRows: in place on {src.Name} needs strictly increasing rows with rows[i] >= i");

    [DoesNotReturn]
    private static void ThrowCopyToHost(BackendTensor src, int needed, int got) =>
        throw new ArgumentException($"CopyToHost: {src.Name} needs {needed} floats, got {got}");

    [DoesNotReturn]
    private static void ThrowSampleShape(BackendTensor logits, int rows, int tokens) =>
        throw new ArgumentException($"Sample: {logits.Name} has {logits.Rows} rows; got {rows} parameter rows and room for {tokens} tokens");

    [DoesNotReturn]
    private static void ThrowSampleRow(int i, SampleRow r) =>
        throw new ArgumentException($"Sample: row {i} has temperature {r.Temperature}, top_p {r.TopP}, top_k {r.TopK}");

    [DoesNotReturn]
    private static void ThrowCopyFromHost(int floats, int rows, BackendTensor dst) =>
        throw new ArgumentException($"CopyFromHost: {floats} floats for {rows} rows of {dst.Name} ({dst.Cols} columns, capacity {dst.MaxRows})");
}
