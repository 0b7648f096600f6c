using System.Runtime.InteropServices;
using FastServe.Runtime;
using FastServe.Runtime.Numerics;
using FastServe.Runtime.Quantization;
using FastServe.Tests.Formats;
using NUnit.Framework;

namespace FastServe.Tests.Quantization;

public class Fp8QuantizerTests
{
    private static float[] Dequantize(byte[] q, float[] scales, int rows, int cols, Fp8Scheme scheme)
    {
        var w = new float[q.Length];
        for (int r = 0; r < rows; r++)
        {
            float s = scheme == Fp8Scheme.PerChannel ? scales[r] : scales[0];
            for (int c = 0; c < cols; c++) w[r * cols + c] = s * Fp8E4M3.Decode(q[r * cols + c]);
        }
        return w;
    }

    /// <summary>Mean over rows of ||row error|| / ||row||: every output channel counts the same, however small.</summary>
    private static double MeanRowRelativeError(float[] w, float[] d, int rows, int cols)
    {
        double sum = 0;
        for (int r = 0; r < rows; r++)
        {
            double e = 0, n = 0;
            for (int c = 0; c < cols; c++)
            {
                double x = w[r * cols + c];
                e += (x - d[r * cols + c]) * (x - d[r * cols + c]);
                n += x * x;
            }
            sum += Math.Sqrt(e / n);
        }
        return sum / rows;
    }

    /// <summary>||W − Ŵ||_F / ||W||_F.</summary>
    private static double FrobeniusRelativeError(float[] w, float[] d)
    {
        double e = 0, n = 0;
        for (int i = 0; i < w.Length; i++)
        {
            e += ((double)w[i] - d[i]) * ((double)w[i] - d[i]);
            n += (double)w[i] * w[i];
        }
        return Math.Sqrt(e / n);
    }

    private static (double Channel, double Tensor, double ChannelF, double TensorF) Errors(float[] w, int rows, int cols)
    {
        var q = new byte[w.Length];
        var sc = new float[rows];
        Fp8Quantizer.Quantize(w, rows, cols, Fp8Scheme.PerChannel, q, sc);
        var dc = Dequantize(q, sc, rows, cols, Fp8Scheme.PerChannel);
        var st = new float[1];
        Fp8Quantizer.Quantize(w, rows, cols, Fp8Scheme.PerTensor, q, st);
        var dt = Dequantize(q, st, rows, cols, Fp8Scheme.PerTensor);
        return (MeanRowRelativeError(w, dc, rows, cols), MeanRowRelativeError(w, dt, rows, cols),
            FrobeniusRelativeError(w, dc), FrobeniusRelativeError(w, dt));
    }

    private static float[] OutlierMatrix(int rows, int cols, double factor, int seed = 3)
    {
        var w = TestFiles.Normal(new Random(seed), rows * cols, 0.02);
        foreach (int r in new[] { 5, 77, 130, 201 })
            for (int c = 0; c < cols; c++) w[r * cols + c] = (float)(w[r * cols + c] * factor);
        return w;
    }

    /// <summary>
    /// The brief's case: normal(0, 0.02) with 4 of 256 output channels scaled ×50. E4M3 is a floating-point format,
    /// so shrinking the ordinary rows by the ×50 outliers' scale leaves them in its normal range (|w/scale| ≈ 2,
    /// far above 2^-6) with the same 3-bit relative precision: per-tensor costs nothing here. Printed for quoting.
    /// </summary>
    [Test]
    public void PerChannelVsPerTensorWithX50OutlierChannels()
    {
        const int rows = 256, cols = 1024;
        var e = Errors(OutlierMatrix(rows, cols, 50), rows, cols);
        TestContext.Out.WriteLine($"x50 outliers, 256x1024: mean row rel. error per-channel {e.Channel:P3}, per-tensor {e.Tensor:P3}; "
            + $"Frobenius rel. error per-channel {e.ChannelF:P3}, per-tensor {e.TensorF:P3}");
        Assert.That(e.Channel, Is.LessThan(0.04), "3-bit mantissa: about 2-3% relative RMS error");
        Assert.That(e.Tensor, Is.LessThan(0.04));
        Assert.That(e.Channel, Is.LessThanOrEqualTo(e.Tensor * 1.05), "per-channel is never meaningfully worse");
    }

    /// <summary>
    /// Where per-tensor scaling does fail in E4M3: when the outliers push ordinary rows below the normal range
    /// (ratio of tensor amax to a row's typical value beyond ~448 / 2^-6 ≈ 2^15), their values fall into the
    /// subnormals and lose precision. Sweeps the outlier factor and prints the errors; at ×50,000 per-channel error
    /// must be below a quarter of per-tensor.
    /// </summary>
    [Test]
    public void PerChannelBeatsPerTensorOnceOutliersExceedE4M3Range()
    {
        const int rows = 256, cols = 1024;
        foreach (double f in new[] { 50.0, 500, 5000, 50_000, 500_000 })
        {
            var e = Errors(OutlierMatrix(rows, cols, f), rows, cols);
            TestContext.Out.WriteLine($"x{f,-8} outliers: mean row rel. error per-channel {e.Channel:P3}, per-tensor {e.Tensor:P3} (ratio {e.Tensor / e.Channel:F1})");
            if (f == 50_000)
                Assert.That(e.Channel, Is.LessThan(e.Tensor / 4), $"x{f}: per-channel {e.Channel} vs per-tensor {e.Tensor}");
        }
    }

    [Test]
    public void ScalesAreRowAmaxOver448AndAmaxMapsTo448()
    {
        const int rows = 3, cols = 5;
        float[] w = [0.1f, -0.5f, 0.25f, 0, 0.3f, /**/ 0, 0, 0, 0, 0, /**/ 7, 1, -2, 3, 0.001f];
        var q = new byte[15];
        var s = new float[3];
        Fp8Quantizer.Quantize(w, rows, cols, Fp8Scheme.PerChannel, q, s);
        Assert.That(s, Is.EqualTo(new[] { 0.5f / 448, 1f, 7f / 448 }));
        Assert.That(q[1], Is.EqualTo(0xFE), "row amax (negative) maps to -448");
        Assert.That(q[10], Is.EqualTo(0x7E));
        Assert.That(q.Skip(5).Take(5), Is.All.EqualTo(0), "zero row: scale 1, all codes 0");
        for (int i = 0; i < 15; i++)
            Assert.That(q[i], Is.EqualTo(Fp8E4M3.Encode(w[i] / s[i / cols])), $"element {i} = Encode(w / scale)");

        var st = new float[1];
        Fp8Quantizer.Quantize(w, rows, cols, Fp8Scheme.PerTensor, q, st);
        Assert.That(st[0], Is.EqualTo(7f / 448));
        for (int i = 0; i < 15; i++) Assert.That(q[i], Is.EqualTo(Fp8E4M3.Encode(w[i] / st[0])));

        var z = new float[1];
        Fp8Quantizer.Quantize(new float[6], 2, 3, Fp8Scheme.PerTensor, new byte[6], z);
        Assert.That(z[0], Is.EqualTo(1f), "all-zero tensor: scale 1");
    }

    [Test]
    public void NonFiniteWeightIsRejected()
    {
        float[] w = [1, 2, 3, float.NaN];
        var ex = Assert.Throws<FastServeException>(() => Fp8Quantizer.Quantize(w, 2, 2, Fp8Scheme.PerChannel, new byte[4], new float[2]))!;
        Assert.That(ex.Code, Is.EqualTo("quantize.non_finite"));
        Assert.That(ex.Message, Does.Contain("row 1"));
        w[3] = float.NegativeInfinity;
        Assert.That(Assert.Throws<FastServeException>(() => Fp8Quantizer.Quantize(w, 2, 2, Fp8Scheme.PerTensor, new byte[4], new float[1]))!.Code,
            Is.EqualTo("quantize.non_finite"));
    }

    [Test]
    public void ShortBuffersAreArgumentErrors()
    {
        Assert.Throws<ArgumentException>(() => Fp8Quantizer.Quantize(new float[6], 2, 3, Fp8Scheme.PerChannel, new byte[5], new float[2]));
        Assert.Throws<ArgumentException>(() => Fp8Quantizer.Quantize(new float[6], 2, 3, Fp8Scheme.PerChannel, new byte[6], new float[1]));
        Assert.Throws<ArgumentException>(() => Fp8Quantizer.Quantize(new float[5], 2, 3, Fp8Scheme.PerTensor, new byte[6], new float[1]));
    }

    [TestCase(DType.F32, Fp8Scheme.PerChannel)]
    [TestCase(DType.F32, Fp8Scheme.PerTensor)]
    [TestCase(DType.BF16, Fp8Scheme.PerChannel)]
    [TestCase(DType.BF16, Fp8Scheme.PerTensor)]
    [TestCase(DType.F16, Fp8Scheme.PerChannel)]
    [TestCase(DType.F16, Fp8Scheme.PerTensor)]
    public unsafe void TensorViewOverloadMatchesSpanOverload(DType dtype, Fp8Scheme scheme)
    {
        const int rows = 37, cols = 91; // odd sizes exercise the vector tails
        var w = TestFiles.Normal(new Random(11), rows * cols, 0.05);
        byte[] stored = dtype switch
        {
            DType.F32 => MemoryMarshal.AsBytes(w.AsSpan()).ToArray(),
            DType.BF16 => MemoryMarshal.AsBytes(w.Select(HalfFloats.F32ToBF16).ToArray().AsSpan()).ToArray(),
            _ => MemoryMarshal.AsBytes(w.Select(HalfFloats.F32ToF16).ToArray().AsSpan()).ToArray(),
        };
        var asF32 = new float[w.Length];
        fixed (byte* p = stored)
        {
            HalfFloats.ToF32(dtype, p, asF32);
            var view = new TensorView("m.w", dtype, [rows, cols], p, stored.Length);
            var q1 = new byte[w.Length];
            var s1 = new float[rows];
            Fp8Quantizer.Quantize(view, scheme, q1, s1);
            var q2 = new byte[w.Length];
            var s2 = new float[rows];
            Fp8Quantizer.Quantize(asF32, rows, cols, scheme, q2, s2);
            Assert.That(q1, Is.EqualTo(q2));
            Assert.That(s1, Is.EqualTo(s2));
        }
    }

    [Test]
    public unsafe void TensorViewOverloadRejectsNonMatrices()
    {
        byte[] data = new byte[24];
        fixed (byte* p = data)
        {
            var threeD = new TensorView("t3", DType.F32, [2, 3, 1], p, 24);
            var ex = Assert.Throws<FastServeException>(() => Fp8Quantizer.Quantize(threeD, Fp8Scheme.PerChannel, new byte[6], new float[2]))!;
            Assert.That(ex.Code, Is.EqualTo("quantize.unsupported_tensor"));
            Assert.That(ex.Message, Does.Contain("t3"));
            var ints = new TensorView("ti", DType.I32, [2, 3], p, 24);
            Assert.That(Assert.Throws<FastServeException>(() => Fp8Quantizer.Quantize(ints, Fp8Scheme.PerChannel, new byte[6], new float[2]))!.Code,
                Is.EqualTo("quantize.unsupported_tensor"));
        }
    }

    [TestCase("model.layers.0.self_attn.q_proj.weight", QuantizeLayers.Attention, true)]
    [TestCase("model.layers.12.self_attn.o_proj.weight", QuantizeLayers.All, true)]
    [TestCase("model.layers.0.self_attn.k_proj.weight", QuantizeLayers.Mlp, false)]
    [TestCase("model.layers.0.self_attn.q_proj.bias", QuantizeLayers.All, false)]
    [TestCase("model.layers.3.mlp.down_proj.weight", QuantizeLayers.Mlp, true)]
    [TestCase("model.layers.3.mlp.gate_proj.weight", QuantizeLayers.Attention, false)]
    [TestCase("model.layers.3.mlp.up_proj.weight", QuantizeLayers.All, true)]
    [TestCase("lm_head.weight", QuantizeLayers.All, false)]
    [TestCase("model.embed_tokens.weight", QuantizeLayers.All, false)]
    [TestCase("model.layers.0.input_layernorm.weight", QuantizeLayers.All, false)]
    [TestCase("model.layers.0.self_attn.q_proj.weight_scale", QuantizeLayers.All, false)]
    [TestCase(".mlp.up_proj.weight", QuantizeLayers.All, false)]
    public void IsTarget(string name, QuantizeLayers layers, bool expected) =>
        Assert.That(Fp8Quantizer.IsTarget(name, layers), Is.EqualTo(expected));
}
