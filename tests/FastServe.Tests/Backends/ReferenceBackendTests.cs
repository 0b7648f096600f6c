using FastServe.Runtime;
using FastServe.Runtime.Backends;
using FastServe.Runtime.Backends.Reference;
using FastServe.Runtime.Numerics;
using NUnit.Framework;

namespace FastServe.Tests.Backends;

/// <summary>The oracle itself, against cases small enough to compute by hand.</summary>
[TestFixture]
public unsafe class ReferenceBackendTests
{
    private ReferenceBackend _b = null!;

    [SetUp]
    public void SetUp() => _b = new ReferenceBackend();

    [TearDown]
    public void TearDown() => _b.Dispose();

    private BackendTensor Tensor(int rows, int cols, params float[] data)
    {
        var t = _b.Alloc("t", Math.Max(rows, 1), cols);
        _b.CopyFromHost(data, rows, t);
        return t;
    }

    private float[] Read(BackendTensor t) => BackendTestKit.Read(_b, t);

    [Test]
    public void MatMul_2x3_WithBias()
    {
        float[] w = [1, 0, -1, 0.5f, 0.5f, 0.5f];
        fixed (float* pw = w)
        {
            using var weight = _b.LoadMatrix(new MatrixWeight("w", DType.F32, 2, 3, (byte*)pw, bias: [1f, -1f]));
            using var x = Tensor(2, 3, 1, 2, 3, 4, 5, 6);
            using var d = _b.Alloc("d", 2, 2);
            _b.MatMul(x, weight, d);
            // [1,2,3]·[1,0,-1]+1 = -1; [1,2,3]·[.5,.5,.5]-1 = 2; [4,5,6]: -2+1 = -1, 7.5-1 = 6.5
            Assert.That(Read(d), Is.EqualTo(new[] { -1f, 2f, -1f, 6.5f }));
        }
    }

    [Test]
    public void MatMul_Fp8_PerRowScales_BF16_F16()
    {
        // E4M3 codes: 0x38 = 1.0, 0x40 = 2.0, 0xB0 = -0.5, 0x01 = 2^-9 (smallest subnormal).
        byte[] q = [0x38, 0x40, 0xB0, 0x01, 0x38, 0x38];
        fixed (byte* pq = q)
        {
            using var w = _b.LoadMatrix(new MatrixWeight("w", DType.F8E4M3, 2, 3, pq, [0.5f, 4f]));
            using var x = Tensor(1, 3, 1, 1, 1);
            using var d = _b.Alloc("d", 1, 2);
            _b.MatMul(x, w, d);
            Assert.That(Read(d), Is.EqualTo(new[] { 0.5f * 2.5f, 4f * (1f / 512 + 2f) }));
        }
        ushort[] h = [HalfFloats.F32ToBF16(1.5f), HalfFloats.F32ToBF16(-2f)];
        fixed (ushort* ph = h)
        {
            using var w = _b.LoadMatrix(new MatrixWeight("w", DType.BF16, 1, 2, (byte*)ph));
            using var x = Tensor(1, 2, 2, 3);
            using var d = _b.Alloc("d", 1, 1);
            _b.MatMul(x, w, d);
            Assert.That(Read(d), Is.EqualTo(new[] { -3f }));
        }
        ushort[] f = [HalfFloats.F32ToF16(0.25f), HalfFloats.F32ToF16(6e-5f)];
        fixed (ushort* pf = f)
        {
            using var w = _b.LoadMatrix(new MatrixWeight("w", DType.F16, 1, 2, (byte*)pf));
            using var x = Tensor(1, 2, 4, 1);
            using var d = _b.Alloc("d", 1, 1);
            _b.MatMul(x, w, d);
            Assert.That(Read(d)[0], Is.EqualTo(1f + (float)(Half)6e-5f).Within(1e-9));
        }
    }

    [Test]
    public void Attention_OneHead_TwoPositions()
    {
        // head_dim 2, scale 1/sqrt(2). k0 = [1,0], k1 = [0,1]; v0 = [1,2], v1 = [3,4].
        // Row at position 1 with q = [0, sqrt(2)·ln 3]: scores [0, ln 3] -> softmax [1/4, 3/4] -> [2.5, 3.5].
        // Row at position 0 sees only itself -> v0.
        using var cache = _b.AllocKvCache(new KvCacheSpec(1, 1, 2, 1, 4, KvDType.F32));
        var layout = new BatchLayout();
        layout.AddSequence(0, 2, [3, 1]);
        using var k = Tensor(2, 2, 1, 0, 0, 1);
        using var v = Tensor(2, 2, 1, 2, 3, 4);
        _b.KvStore(cache, 0, k, v, layout);
        float q1 = (float)(Math.Sqrt(2) * Math.Log(3));
        using var q = Tensor(2, 2, 5, -7, 0, q1);
        using var o = _b.Alloc("o", 2, 2);
        _b.Attention(q, cache, 0, layout, o);
        float[] r = Read(o);
        Assert.That(r[0], Is.EqualTo(1f).Within(1e-6));
        Assert.That(r[1], Is.EqualTo(2f).Within(1e-6));
        Assert.That(r[2], Is.EqualTo(2.5f).Within(1e-6));
        Assert.That(r[3], Is.EqualTo(3.5f).Within(1e-6));
    }

    [Test]
    public void Attention_Gqa_UsesSharedKvHead_AndBf16Rounds()
    {
        // 2 query heads over 1 KV head, a single position: each head returns v exactly (softmax of one score).
        // 1 + 2^-8 is halfway between BF16 neighbours 1 and 1 + 2^-7; ties-to-even stores 1.
        using var cache = _b.AllocKvCache(new KvCacheSpec(1, 1, 2, 4, 1, KvDType.BF16));
        var layout = new BatchLayout();
        layout.AddSequence(0, 1, [0]);
        using var k = Tensor(1, 2, 1, 1);
        using var v = Tensor(1, 2, 1.00390625f, -3f);
        _b.KvStore(cache, 0, k, v, layout);
        using var q = Tensor(1, 4, 1, 2, 3, 4);
        using var o = _b.Alloc("o", 1, 4);
        _b.Attention(q, cache, 0, layout, o);
        Assert.That(Read(o), Is.EqualTo(new[] { 1f, -3f, 1f, -3f }));
    }

    [Test]
    public void Rope_RotatesPairsByKnownAngles()
    {
        // head_dim 4, theta 10000: invFreq = [1, 0.01]; pairs (0,2) and (1,3); position 1 rotates by 1 and 0.01 rad.
        var rope = new RopeTable(4, 10000);
        Assert.That(rope.InvFreq, Is.EqualTo(new[] { 1f, 0.01f }).Within(1e-7));
        using var x = Tensor(2, 4, 1, 2, 3, 4, 1, 2, 3, 4);
        _b.Rope(x, 1, [0, 1], rope);
        float[] r = Read(x);
        Assert.That(r.AsSpan(0, 4).ToArray(), Is.EqualTo(new[] { 1f, 2f, 3f, 4f }), "position 0 is the identity");
        double c1 = Math.Cos(1), s1 = Math.Sin(1), c2 = Math.Cos(0.01), s2 = Math.Sin(0.01);
        Assert.That(r[4], Is.EqualTo(1 * c1 - 3 * s1).Within(1e-6));
        Assert.That(r[6], Is.EqualTo(3 * c1 + 1 * s1).Within(1e-6));
        Assert.That(r[5], Is.EqualTo(2 * c2 - 4 * s2).Within(1e-6));
        Assert.That(r[7], Is.EqualTo(4 * c2 + 2 * s2).Within(1e-6));
    }

    [Test]
    public void Norms_Silu_Add_Embedding_Gather()
    {
        using var g = _b.LoadVector("g", [1f, 2f]);
        using var x = Tensor(1, 2, 3, 4);
        using var d = _b.Alloc("d", 1, 2);
        _b.RmsNorm(x, g, 0f, d); // rms([3,4]) = sqrt(12.5)
        float rms = MathF.Sqrt(12.5f);
        Assert.That(Read(d), Is.EqualTo(new[] { 3 / rms, 8 / rms }).Within(1e-6));

        using var res = Tensor(1, 2, 1, 1);
        _b.AddRmsNorm(res, x, g, 0f, d); // residual becomes [4,5]
        Assert.That(Read(res), Is.EqualTo(new[] { 4f, 5f }));
        float rms2 = MathF.Sqrt(20.5f);
        Assert.That(Read(d), Is.EqualTo(new[] { 4 / rms2, 10 / rms2 }).Within(1e-6));

        _b.Add(res, x);
        Assert.That(Read(res), Is.EqualTo(new[] { 7f, 9f }));

        using var gate = Tensor(1, 2, 0, 1);
        using var up = Tensor(1, 2, 5, 2);
        _b.SiluGate(gate, up, d);
        Assert.That(Read(d), Is.EqualTo(new[] { 0f, (float)(2 / (1 + Math.Exp(-1))) }).Within(1e-6));

        float[] table = [0, 1, 10, 11, 20, 21];
        fixed (float* pt = table)
        {
            using var t = _b.LoadMatrix(new MatrixWeight("emb", DType.F32, 3, 2, (byte*)pt));
            using var e = _b.Alloc("e", 3, 2);
            _b.Embedding(t, [2, 0, 1], e);
            Assert.That(Read(e), Is.EqualTo(new[] { 20f, 21f, 0f, 1f, 10f, 11f }));
            using var last = _b.Alloc("last", 2, 2);
            _b.GatherRows(e, [2, 0], last);
            Assert.That(Read(last), Is.EqualTo(new[] { 10f, 11f, 20f, 21f }));
        }
    }

    [Test]
    public void TooLargeForManagedArrays_ThrowsStableCode()
    {
        var e = Assert.Throws<FastServeException>(() => _b.Alloc("huge", int.MaxValue, 2));
        Assert.That(e!.Code, Is.EqualTo("reference.too_large"));
        Assert.That(e.Path, Is.EqualTo("huge"));
    }
}
