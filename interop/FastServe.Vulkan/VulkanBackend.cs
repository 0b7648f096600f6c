using System.Diagnostics;
using System.Diagnostics.CodeAnalysis;
using System.Runtime.InteropServices;
using FastServe.Runtime;
using FastServe.Runtime.Backends;

namespace FastServe.Vulkan;

/// <summary>
/// The <c>vulkan</c> backend: every <see cref="IBackend"/> op is a GLSL compute shader (native/vulkan/shaders, one per
/// op) dispatched through Silk.NET.Vulkan on one compute queue, Kompute-style (<see cref="VulkanManager"/>,
/// <see cref="VulkanBuffer"/>, <see cref="VulkanAlgorithm"/>, <see cref="VulkanSequence"/>). Numerics are the CPU
/// backend's: F32 activations and accumulation, weights kept as stored (F32, F16, BF16, FP8 E4M3 with per-row or
/// per-tensor F32 scales) and decoded in the shader, a paged KV cache of F32 or BF16, never quantized.
/// </summary>
/// <remarks>
/// <para>Ops are recorded into one command buffer as they are issued and submitted when the host needs a result
/// (<see cref="CopyToHost"/>, and so <see cref="IBackend.Sample"/>), so a decode step is one submission. Pipelines are
/// made once per (shader, variant); descriptor sets are cached per (pipeline, buffers) (<see cref="VulkanDescriptors"/>);
/// host arrays go through the per-submission <see cref="VulkanArena"/>, so a step allocates nothing on the device once
/// the first has run.</para>
/// <para>Errors: shapes are checked by <see cref="OpChecks"/> (ArgumentException). A failing Vulkan call throws
/// <see cref="VulkanException"/> (<c>vulkan.device_lost</c>, <c>vulkan.out_of_memory</c>, <c>vulkan.error</c>) and
/// faults the backend: every later op throws it again, since the submitted work is lost. Shapes beyond the shaders'
/// limits throw <c>vulkan.unsupported_shape</c> without faulting.</para>
/// An instance is used by one thread at a time.
/// </remarks>
public sealed unsafe partial class VulkanBackend : BackendBase, IDeviceProbe, IStepRecorder
{
    /// <summary>Largest head dimension the attention shader holds (its MAX_DIM).</summary>
    public const int MaxHeadDim = 256;
    /// <summary>Buffers a KV cache layer's K (and V) may span: the bindings kv_store and attention have for it.</summary>
    public const int MaxKvSegments = 4;
    private const uint MaxGroups = 65535; // the smallest maxComputeWorkGroupCount Vulkan allows, per dimension
    private const uint Threads = 256;     // local size of the element-wise shaders
    private const ulong InitialArenaBytes = 4 << 20;
    private const ulong StagingBytes = 16 << 20;

    private readonly VulkanManager _m;
    private readonly VulkanSequence _seq;
    private readonly VulkanDescriptors _sets;
    private readonly VulkanArena _arena;
    private readonly string _shaderDir;
    private readonly Dictionary<(string, int), VulkanAlgorithm> _algorithms = new();
    private readonly Dictionary<string, byte[]> _spirv = new(StringComparer.Ordinal);
    private VulkanBuffer? _staging, _readback, _scratch;
    private int[] _hostInts = new int[256];
    private VulkanException? _fault;
    private bool _disposed;

    // Recorded steps (IStepRecorder). _step says how the current step's ops are issued: Eager (no step, or a key's
    // first step), Recording into _recording's command buffer, Replaying _replay (ops only checked against its
    // commands), or Refused (ops do nothing). _generation counts reallocations of the arena, scratch and readback
    // buffers, which recordings reference: a recording of an older generation is refused instead of replayed.
    private enum StepMode { Eager, Recording, Replaying, Refused }
    private readonly StepRecordings<VulkanStepRecording> _recordings = new();
    private StepMode _step;
    private StepRecordings<VulkanStepRecording>.Plan _plan;
    private VulkanStepRecording? _recording, _replay;
    private int _replayIndex, _generation, _minAttentionBlocks = 1;
    private bool _stepRead, _inStep;
    private VulkanSequence _cur;
    // Output columns per workgroup of matmul_subgroup (two per subgroup of a 64-thread group); 0 where the device has
    // no subgroup arithmetic in compute shaders and matmul.comp's shared-memory reduction runs instead.
    private readonly uint _subgroupColumns;
    // Activation rows from which MatMul takes matmul_tiled (the GEMV shaders below): TiledVariable overrides.
    private readonly int _tiledMinRows;
    // The cooperative-matrix shape matmul_coopmat runs with (F16 and FP8 weights, from _tiledMinRows rows), or null.
    private CoopMatrixShape? _coop;
    // RoPE's cos/sin words for the last positions roped (host memory, copied into the arena per call).
    private RopeTable? _ropeFor;
    private int[] _ropePositions = new int[64];
    private uint[] _ropeWords = new uint[4096];
    private int _ropeRows;

    private VulkanBackend(VulkanManager m, string shaderDir)
    {
        _m = m;
        _shaderDir = shaderDir;
        _seq = new VulkanSequence(m);
        _cur = _seq;
        _sets = new VulkanDescriptors(m);
        _arena = new VulkanArena(m, InitialArenaBytes);
        Dummy = VulkanBuffer.Create(m, 16, VulkanMemory.Device, "dummy");
        var f = m.Features;
        bool subgroups = f.SubgroupArithmetic && f.SubgroupSize is >= 4 and <= 64 && Environment.GetEnvironmentVariable(NoSubgroupsVariable) != "1";
        _subgroupColumns = subgroups ? 2 * (64 / f.SubgroupSize) : 0;
        _tiledMinRows = Environment.GetEnvironmentVariable(TiledVariable) switch { "0" => int.MaxValue, "1" => 1, _ => TiledMinRows };
        string coop;
        if (f.CooperativeMatrix is not { } shape) coop = f.CooperativeMatrixNote == "no" ? "no cooperative matrix" : $"cooperative matrix {f.CooperativeMatrixNote}";
        else if (Environment.GetEnvironmentVariable(NoCoopMatrixVariable) == "1") coop = $"cooperative matrix {shape} off ({NoCoopMatrixVariable}=1)";
        else if (!VulkanShaders.Has(shaderDir, CoopMatrixShader)) coop = $"cooperative matrix {shape} unused: no {CoopMatrixShader}.spv (native/vulkan/glslc-coopmat.sh builds it)";
        else
        {
            _coop = shape;
            coop = $"cooperative matrix {shape} for f16 and fp8 weights";
        }
        MatMulPaths = (subgroups ? "subgroup GEMV" : "shared-memory GEMV") +
            (_tiledMinRows == int.MaxValue ? ", no tiled GEMM" : $", tiled GEMM from {_tiledMinRows} rows") + "; " + coop;
    }

    /// <summary>Set to 1: MatMul never takes the cooperative-matrix shader, even where the device offers it.</summary>
    public const string NoCoopMatrixVariable = "FASTSERVE_VULKAN_NO_COOPMAT";

    private const string CoopMatrixShader = "matmul_coopmat";

    /// <summary>Which MatMul shaders this backend takes, for logs and check-backend: the GEMV kind, where the tiled GEMM
    /// starts, and the cooperative-matrix path or why there is none.</summary>
    public string MatMulPaths { get; private set; }

    /// <summary>MatMul's tiled GEMM from this many activation rows; below it the GEMV shaders, which read each weight
    /// once per 8 rows but spread one column over a whole subgroup.</summary>
    public const int TiledMinRows = 16;

    /// <summary>Set to 0: MatMul never takes the tiled GEMM; 1: always, whatever the rows (to check and compare it).</summary>
    public const string TiledVariable = "FASTSERVE_VULKAN_TILED";

    /// <summary>Set to 1: MatMul takes the shared-memory path even where subgroup arithmetic exists (to check it).</summary>
    public const string NoSubgroupsVariable = "FASTSERVE_VULKAN_NO_SUBGROUPS";

    /// <summary>Finds the shaders, creates the device (<see cref="VulkanManager.Create"/>) and the backend's queue
    /// objects.</summary>
    /// <exception cref="VulkanException">vulkan.no_loader, vulkan.no_device, vulkan.unsupported_device,
    /// vulkan.no_shaders, vulkan.out_of_memory, vulkan.error.</exception>
    public static VulkanBackend Create()
    {
        string dir = VulkanShaders.Directory();
        var m = VulkanManager.Create();
        try { return new VulkanBackend(m, dir); }
        catch
        {
            m.Dispose();
            throw;
        }
    }

    /// <summary>Makes "vulkan" a name <see cref="BackendFactory"/> knows, with <see cref="VulkanEnvironment.Check"/> as
    /// its cheap check. Hosts call it once at startup.</summary>
    /// <param name="hostLibraryDirectory">For a host that is a shared library: its directory, whose <c>vulkan/</c> holds
    /// the shaders (<see cref="VulkanShaders.SetHostLibraryDirectory"/>).</param>
    public static void Register(string? hostLibraryDirectory = null)
    {
        if (hostLibraryDirectory is not null) VulkanShaders.SetHostLibraryDirectory(hostLibraryDirectory);
        BackendFactory.Register("vulkan", new BackendFactory.Registration(_ => Create(), () => VulkanEnvironment.Check()));
    }

    public override string Name => "vulkan";

    /// <summary>The device and what it offers.</summary>
    public VulkanFeatures Features => _m.Features;

    /// <summary>Descriptor sets made so far: constant once every (op, tensors) pairing of a step has run.</summary>
    public int DescriptorSets => _sets.Count;

    /// <summary>Submissions (waits) so far: one per decode step once weights are loaded.</summary>
    public long Submissions { get; private set; }

    /// <summary>A buffer every optional binding points at (absent scales, bias, addend).</summary>
    internal VulkanBuffer Dummy { get; }

    // ---- weights and buffers ------------------------------------------------------------------------------------

    public override BackendWeight LoadMatrix(MatrixWeight weight)
    {
        ArgumentNullException.ThrowIfNull(weight);
        if (weight.Data == null) throw new ArgumentException($"{weight.Name}: null data pointer");
        EnterSetup("LoadMatrix");
        VulkanBuffer? data = null, scale = null, bias = null;
        try
        {
            data = NewBuffer((ulong)weight.ByteLength, VulkanMemory.Device, weight.Name);
            Upload(data, weight.Data, weight.ByteLength);
            if (weight.DType == DType.F8E4M3)
            {
                var s = weight.Scales!;
                var rows = new float[weight.Rows];
                for (int n = 0; n < rows.Length; n++) rows[n] = s[s.Length == 1 ? 0 : n];
                scale = NewBuffer(4UL * (ulong)rows.Length, VulkanMemory.Device, weight.Name + ".scale");
                fixed (float* p = rows) Upload(scale, (byte*)p, 4L * rows.Length);
            }
            if (weight.Bias is { } b)
            {
                bias = NewBuffer(4UL * (ulong)b.Length, VulkanMemory.Device, weight.Name + ".bias");
                fixed (float* p = b) Upload(bias, (byte*)p, 4L * b.Length);
            }
            return new VulkanWeight(this, weight.Name, weight.DType, weight.Rows, weight.Cols, false, data, scale, bias) { Owner = this };
        }
        catch
        {
            data?.Dispose();
            scale?.Dispose();
            bias?.Dispose();
            throw;
        }
    }

    public override BackendWeight LoadVector(string name, ReadOnlySpan<float> values)
    {
        if (values.IsEmpty) throw new ArgumentException($"{name}: empty vector");
        EnterSetup("LoadVector");
        var data = NewBuffer(4UL * (ulong)values.Length, VulkanMemory.Device, name);
        try
        {
            fixed (float* p = values) Upload(data, (byte*)p, 4L * values.Length);
        }
        catch
        {
            data.Dispose();
            throw;
        }
        return new VulkanWeight(this, name, DType.F32, 1, values.Length, true, data, null, null) { Owner = this };
    }

    public override BackendTensor Alloc(string name, int maxRows, int cols)
    {
        OpChecks.Alloc(name, maxRows, cols);
        EnterSetup("Alloc");
        var b = NewBuffer(4UL * (ulong)maxRows * (ulong)cols, VulkanMemory.Device, name);
        return new VulkanTensor(this, b, name, maxRows, cols) { Owner = this };
    }

    /// <summary>Allocates the paged cache (F32 or BF16), zeroed. A head dimension above <see cref="MaxHeadDim"/> is
    /// refused with <c>vulkan.unsupported_shape</c>.</summary>
    public override KvCache AllocKvCache(KvCacheSpec spec)
    {
        OpChecks.AllocKvCache(spec);
        if (spec.HeadDim > MaxHeadDim)
            throw new FastServeException("vulkan.unsupported_shape", $"head dimension {spec.HeadDim} exceeds the vulkan attention shader's {MaxHeadDim}", "kv_cache");
        EnterSetup("AllocKvCache");
        ulong blockBytes = (ulong)spec.BlockSize * (ulong)spec.KvHeads * (ulong)spec.HeadDim * (spec.DType == KvDType.F32 ? 4UL : 2UL);
        // Segments of whole blocks, each within the storage-buffer range; BF16 pairs must not straddle two segments.
        ulong range = _m.Features.MaxStorageBufferRange;
        long perSegment = (long)Math.Min((ulong)spec.NumBlocks, range / blockBytes);
        if (blockBytes % 4 != 0 && perSegment < spec.NumBlocks) perSegment = 0;
        int segments = perSegment > 0 ? (int)((spec.NumBlocks + perSegment - 1) / perSegment) : int.MaxValue;
        if (segments > MaxKvSegments)
            throw new VulkanException("vulkan.too_large",
                $"a KV cache layer of {blockBytes * (ulong)spec.NumBlocks} bytes exceeds {MaxKvSegments} x the device's largest storage buffer ({range} bytes); lower --kv-memory");
        var k = new VulkanBuffer[spec.Layers][];
        var v = new VulkanBuffer[spec.Layers][];
        try
        {
            for (int l = 0; l < spec.Layers; l++)
            {
                k[l] = new VulkanBuffer[segments];
                v[l] = new VulkanBuffer[segments];
                for (int sgm = 0; sgm < segments; sgm++)
                {
                    long blocks = Math.Min(perSegment, spec.NumBlocks - sgm * perSegment);
                    k[l][sgm] = NewBuffer(blockBytes * (ulong)blocks, VulkanMemory.Device, $"kv.k{l}.{sgm}");
                    v[l][sgm] = NewBuffer(blockBytes * (ulong)blocks, VulkanMemory.Device, $"kv.v{l}.{sgm}");
                }
            }
            foreach (var layer in k) foreach (var b in layer) Fill(b);
            foreach (var layer in v) foreach (var b in layer) Fill(b);
            Flush();
        }
        catch
        {
            foreach (var layer in k) if (layer is not null) foreach (var b in layer) b?.Dispose();
            foreach (var layer in v) if (layer is not null) foreach (var b in layer) b?.Dispose();
            throw;
        }
        return new VulkanKvCache(this, spec, (int)perSegment, k, v) { Owner = this };
    }

    // ---- ops ----------------------------------------------------------------------------------------------------

    public override void Embedding(BackendWeight table, ReadOnlySpan<int> tokens, BackendTensor dst)
    {
        EmbeddingOperands(table, tokens, dst, out VulkanWeight t, out VulkanTensor d);
        Enter();
        if (tokens.IsEmpty) return;
        uint off = Stage(tokens);
        uint n = (uint)tokens.Length * (uint)t.Cols;
        uint groups = Groups(n);
        Span<uint> pc = [(uint)t.Cols, (uint)tokens.Length, off, groups * Threads];
        Run("embedding", t.ShaderDType, [t.Data, t.Scale, _arena.Buffer, d.Buffer], pc, groups);
    }

    public override void RmsNorm(BackendTensor x, BackendWeight gamma, float eps, BackendTensor dst)
    {
        RmsNormOperands(x, gamma, dst, out VulkanTensor xs, out VulkanWeight g, out VulkanTensor d);
        Enter();
        if (xs.Rows == 0) return;
        Span<uint> pc = [(uint)xs.Cols, BitConverter.SingleToUInt32Bits(eps)];
        Run("rmsnorm", 0, [xs.Buffer, Dummy, g.Data, d.Buffer], pc, RowGroups(xs.Rows));
    }

    public override void AddRmsNorm(BackendTensor residual, BackendTensor x, BackendWeight gamma, float eps, BackendTensor dst)
    {
        AddRmsNormOperands(residual, x, gamma, dst, out VulkanTensor res, out VulkanTensor xs, out VulkanWeight g, out VulkanTensor d);
        Enter();
        if (res.Rows == 0) return;
        Span<uint> pc = [(uint)res.Cols, BitConverter.SingleToUInt32Bits(eps)];
        Run("rmsnorm", 1, [res.Buffer, xs.Buffer, g.Data, d.Buffer], pc, RowGroups(res.Rows));
    }

    public override void Add(BackendTensor acc, BackendTensor x)
    {
        AddOperands(acc, x, out VulkanTensor a, out VulkanTensor b);
        Enter();
        uint n = (uint)a.Rows * (uint)a.Cols;
        if (n == 0) return;
        uint groups = Groups(n);
        Span<uint> pc = [n, groups * Threads];
        Run("add", 0, [a.Buffer, b.Buffer], pc, groups);
    }

    public override void MatMul(BackendTensor x, BackendWeight w, BackendTensor dst)
    {
        MatMulOperands(x, w, dst, out VulkanTensor xs, out VulkanWeight ws, out VulkanTensor d);
        Enter();
        if (xs.Rows == 0) return;
        uint n = (uint)ws.Rows, rowTiles = ((uint)xs.Rows + 7) / 8;
        if (_tiledMinRows <= xs.Rows)
        {
            // A GEMM: output blocks of bm x bn, column blocks over x (and y past 65535), row blocks over z.
            // matmul_coopmat's are (4·M) x (4·N): 2 x 2 subgroups of 2 x 2 fragments; matmul_tiled's 32 x 64.
            bool coop = _coop is not null && ws.DType is DType.F16 or DType.F8E4M3 && CoopPipeline(ws.ShaderDType);
            uint bm = coop ? 4 * _coop!.Value.M : 32, bn = coop ? 4 * _coop!.Value.N : 64;
            uint blocks = (n + bn - 1) / bn, bx = Math.Min(blocks, MaxGroups), by = (blocks + bx - 1) / bx;
            Span<uint> gp = [(uint)xs.Rows, (uint)xs.Cols, n, ws.OwnBias is null ? 0u : 1u, bx];
            Run(coop ? CoopMatrixShader : "matmul_tiled", ws.ShaderDType, [xs.Buffer, ws.Data, ws.Scale, ws.Bias, d.Buffer], gp,
                bx, by, ((uint)xs.Rows + bm - 1) / bm);
            return;
        }
        if (_subgroupColumns > 0)
        {
            uint groups = (n + _subgroupColumns - 1) / _subgroupColumns;
            uint sx = Math.Min(groups, MaxGroups), sy = (groups + sx - 1) / sx;
            // 16-byte loads where each weight row is a whole number of them (4 F32, 8 F16/BF16 or 16 FP8 weights).
            int perLoad = ws.DType switch { DType.F32 => 4, DType.F8E4M3 => 16, _ => 8 };
            uint vec = xs.Cols % perLoad == 0 ? 1u : 0u;
            Span<uint> sp = [(uint)xs.Rows, (uint)xs.Cols, n, ws.OwnBias is null ? 0u : 1u, sx, _subgroupColumns, vec];
            Run("matmul_subgroup", ws.ShaderDType, [xs.Buffer, ws.Data, ws.Scale, ws.Bias, d.Buffer], sp, sx, sy, rowTiles);
            return;
        }
        uint gx = Math.Min(n, MaxGroups), gy = (n + gx - 1) / gx;
        Span<uint> pc = [(uint)xs.Rows, (uint)xs.Cols, n, ws.OwnBias is null ? 0u : 1u, gx];
        Run("matmul", ws.ShaderDType, [xs.Buffer, ws.Data, ws.Scale, ws.Bias, d.Buffer], pc, gx, gy, rowTiles);
    }

    public override void Rope(BackendTensor x, int heads, ReadOnlySpan<int> positions, RopeTable rope)
    {
        var xs = RopeOperand<VulkanTensor>(x, heads, positions, rope);
        Enter();
        int rows = xs.Rows, half = rope.HeadDim / 2;
        if (rows == 0 || half == 0) return;
        // cos and sin of each row's angles, computed here in F32 exactly as the reference does (a shader's sin and cos
        // of angles in the thousands of radians are not that precise). A step ropes q and k of every layer at the same
        // positions, so the table is computed once per step and copied into the arena for each call.
        int words = 2 * rows * half;
        if (!ReferenceEquals(rope, _ropeFor) || !positions.SequenceEqual(_ropePositions.AsSpan(0, _ropeRows)))
        {
            if (_ropeWords.Length < words) _ropeWords = new uint[Math.Max(words, 2 * _ropeWords.Length)];
            if (_ropePositions.Length < rows) _ropePositions = new int[Math.Max(rows, 2 * _ropePositions.Length)];
            var inv = rope.InvFreq;
            for (int r = 0; r < rows; r++)
            {
                float p = positions[r];
                for (int i = 0; i < half; i++)
                {
                    float angle = p * inv[i];
                    _ropeWords[r * half + i] = BitConverter.SingleToUInt32Bits(MathF.Cos(angle));
                    _ropeWords[rows * half + r * half + i] = BitConverter.SingleToUInt32Bits(MathF.Sin(angle));
                }
            }
            positions.CopyTo(_ropePositions);
            _ropeRows = rows;
            _ropeFor = rope;
        }
        Span<uint> cs = Reserve(words, out uint off);
        _ropeWords.AsSpan(0, words).CopyTo(cs);
        uint groups = Groups((uint)(rows * heads * half));
        Span<uint> pc = [(uint)rows, (uint)heads, (uint)rope.HeadDim, (uint)xs.Cols, off, groups * Threads];
        Run("rope", 0, [xs.Buffer, _arena.Buffer], pc, groups);
    }

    public override void SiluGate(BackendTensor gate, BackendTensor up, BackendTensor dst)
    {
        SiluGateOperands(gate, up, dst, out VulkanTensor g, out VulkanTensor u, out VulkanTensor d);
        Enter();
        uint n = (uint)g.Rows * (uint)g.Cols;
        if (n == 0) return;
        uint groups = Groups(n);
        Span<uint> pc = [n, groups * Threads];
        Run("silu_gate", 0, [g.Buffer, u.Buffer, d.Buffer], pc, groups);
    }

    public override void KvStore(KvCache cache, int layer, BackendTensor k, BackendTensor v, BatchLayout batch)
    {
        KvStoreOperands(cache, layer, k, v, batch, out VulkanKvCache c, out VulkanTensor ks, out VulkanTensor vs);
        Enter();
        var spec = c.Spec;
        int rows = batch.TotalRows, bs = spec.BlockSize;
        if (rows == 0) return;
        var slots = HostInts(rows);
        for (int s = 0; s < batch.SequenceCount; s++)
        {
            var table = batch.BlockTable(s);
            for (int i = 0; i < batch.RowCount(s); i++)
            {
                int pos = batch.StartPos(s) + i;
                slots[batch.RowStart(s) + i] = table[pos / bs] * bs + pos % bs;
            }
        }
        uint off = Stage<int>(slots.AsSpan(0, rows));
        uint width = (uint)(spec.KvHeads * spec.HeadDim);
        uint groups = Groups((uint)rows * width);
        Span<uint> pc = [(uint)rows, width, off, groups * Threads, (uint)bs, (uint)c.BlocksPerSegment];
        VulkanBuffer[] kl = c.K[layer], vl = c.V[layer];
        Run("kv_store", spec.DType == KvDType.BF16 ? 1 : 0,
            [ks.Buffer, vs.Buffer, c.Segment(kl, 0), c.Segment(kl, 1), c.Segment(kl, 2), c.Segment(kl, 3),
             c.Segment(vl, 0), c.Segment(vl, 1), c.Segment(vl, 2), c.Segment(vl, 3), _arena.Buffer], pc, groups);
    }

    public override void Attention(BackendTensor q, KvCache cache, int layer, BatchLayout batch, BackendTensor dst)
    {
        AttentionOperands(q, cache, layer, batch, dst, out VulkanTensor qs, out VulkanKvCache c, out VulkanTensor d);
        Enter();
        var spec = c.Spec;
        int rows = qs.Rows, seqs = batch.SequenceCount, bs = spec.BlockSize;
        if (rows == 0) return;
        if ((uint)rows > MaxGroups)
            throw new FastServeException("vulkan.unsupported_shape", $"attention over {rows} rows exceeds the {MaxGroups} workgroups of a dispatch", "attention");
        int heads = qs.Cols / spec.HeadDim;
        // seqOfRow [rows] | positions [rows] | block tables [seqs, maxBlocks]; only the blocks a sequence reaches are
        // filled (OpChecks validated exactly those).
        int maxBlocks = _minAttentionBlocks;
        for (int s = 0; s < seqs; s++)
        {
            if (batch.RowCount(s) > 0) maxBlocks = Math.Max(maxBlocks, (batch.StartPos(s) + batch.RowCount(s) - 1) / bs + 1);
        }
        long total = 2L * rows + (long)seqs * maxBlocks;
        if (total > Array.MaxLength) throw new ArgumentException($"Attention: {seqs} sequences x {maxBlocks} blocks is too large");
        var a = HostInts((int)total);
        Array.Clear(a, 0, (int)total);
        for (int s = 0; s < seqs; s++)
        {
            int count = batch.RowCount(s);
            for (int i = 0; i < count; i++)
            {
                int row = batch.RowStart(s) + i;
                a[row] = s;
                a[rows + row] = batch.StartPos(s) + i;
            }
            if (count == 0) continue;
            int needed = (batch.StartPos(s) + count - 1) / bs + 1;
            batch.BlockTable(s)[..needed].CopyTo(a.AsSpan(2 * rows + s * maxBlocks));
        }
        uint off = Stage<int>(a.AsSpan(0, (int)total));
        Span<uint> pc = [(uint)rows, (uint)heads, (uint)spec.KvHeads, (uint)spec.HeadDim, (uint)bs, (uint)maxBlocks, off, (uint)c.BlocksPerSegment];
        VulkanBuffer[] kl = c.K[layer], vl = c.V[layer];
        Run("attention", spec.DType == KvDType.BF16 ? 1 : 0,
            [qs.Buffer, c.Segment(kl, 0), c.Segment(kl, 1), c.Segment(kl, 2), c.Segment(kl, 3),
             c.Segment(vl, 0), c.Segment(vl, 1), c.Segment(vl, 2), c.Segment(vl, 3), _arena.Buffer, d.Buffer], pc, (uint)heads, (uint)rows);
    }

    public override void GatherRows(BackendTensor src, ReadOnlySpan<int> rows, BackendTensor dst)
    {
        GatherRowsOperands(src, rows, dst, out VulkanTensor s, out VulkanTensor d);
        Enter();
        if (rows.IsEmpty) return;
        bool inPlace = ReferenceEquals(s, d);
        if (inPlace)
        {
            // Rows are copied in parallel, so in place a row could be read after another thread overwrote it: gather
            // into scratch, then copy back. Rows already in place need nothing.
            bool identity = true;
            for (int i = 0; i < rows.Length && identity; i++) identity = rows[i] == i;
            if (identity) return;
        }
        uint off = Stage(rows);
        ulong bytes = 4UL * (ulong)rows.Length * (ulong)s.Cols;
        var target = inPlace ? Scratch(4UL * (ulong)s.MaxRows * (ulong)s.Cols) : d.Buffer;
        uint groups = Groups((uint)rows.Length * (uint)s.Cols);
        Span<uint> pc = [(uint)rows.Length, (uint)s.Cols, off, groups * Threads];
        Run("gather_rows", 0, [s.Buffer, _arena.Buffer, target], pc, groups);
        if (inPlace) Copy(target, 0, d.Buffer, 0, bytes);
    }

    /// <summary>Submits everything issued, waits, and copies src's rows out.</summary>
    public override void CopyToHost(BackendTensor src, Span<float> dst)
    {
        var s = CopyToHostOperand<VulkanTensor>(src, dst);
        Enter();
        int n = s.Rows * s.Cols;
        if (_step != StepMode.Eager)
        {
            StepReadback(s, dst, n);
            return;
        }
        _stepRead = true; // a key's first step runs eagerly and ends here
        if (n == 0 || s.Buffer.Mapped != null)
        {
            Flush();
            if (n > 0) new ReadOnlySpan<float>(s.Buffer.Mapped, n).CopyTo(dst);
            return;
        }
        ulong bytes = 4UL * (ulong)n;
        if (_readback is null || _readback.Size < bytes)
        {
            _readback?.Dispose(); // every earlier use of it was waited for
            _readback = null;
            _readback = StepBuffer(4UL * (ulong)s.MaxRows * (ulong)s.Cols, VulkanMemory.Host, "readback");
            _generation++;
        }
        var rb = _readback;
        Copy(s.Buffer, 0, rb, 0, bytes);
        Flush();
        new ReadOnlySpan<float>(rb.Mapped, n).CopyTo(dst);
    }

    public override void CopyFromHost(ReadOnlySpan<float> data, int rows, BackendTensor dst)
    {
        var d = CopyFromHostOperand<VulkanTensor>(data, rows, dst);
        Enter();
        if (data.IsEmpty) return;
        uint off = Stage(data);
        ulong bytes = 4UL * (ulong)data.Length;
        Copy(_arena.Buffer, 4UL * off, d.Buffer, 0, bytes);
    }

    /// <summary>Device-to-device copy bandwidth (bytes read plus written per second) over a 256 MiB buffer (less where
    /// the device's largest storage buffer is smaller: 128 MiB on lavapipe).</summary>
    public double MeasureCopyBandwidth()
    {
        Enter();
        ulong bytes = Math.Min(256UL << 20, _m.Features.MaxStorageBufferRange & ~0xFFFFFUL);
        using var a = NewBuffer(bytes, VulkanMemory.Device, "bandwidth.a");
        using var b = NewBuffer(bytes, VulkanMemory.Device, "bandwidth.b");
        Copy(a, 0, b, 0, bytes);
        Flush();
        const int reps = 4;
        var sw = Stopwatch.StartNew();
        for (int i = 0; i < reps; i++)
        {
            Copy(i % 2 == 0 ? a : b, 0, i % 2 == 0 ? b : a, 0, bytes);
        }
        Flush();
        return 2.0 * bytes * reps / sw.Elapsed.TotalSeconds;
    }

}
