using System.Security.Cryptography;
using FastServe.Runtime;
using FastServe.Runtime.Formats;
using FastServe.Runtime.Model;
using NUnit.Framework;

namespace FastServe.Tests.Model;

public class ModelMakerTests
{
    private static string Hash(string file) => Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(file)));

    [Test]
    public void SameSeedSameBytesOtherSeedOtherBytes()
    {
        string a = Path.Combine(TestModels.TempDir("mk"), "a"), b = Path.Combine(TestModels.TempDir("mk"), "b"), c = Path.Combine(TestModels.TempDir("mk"), "c");
        ModelMaker.Make(ModelPreset.Tiny, a, 5);
        ModelMaker.Make(ModelPreset.Tiny, b, 5);
        ModelMaker.Make(ModelPreset.Tiny, c, 6);
        Assert.That(Hash(Path.Combine(a, "model.safetensors")), Is.EqualTo(Hash(Path.Combine(b, "model.safetensors"))));
        Assert.That(Hash(Path.Combine(a, "model.safetensors")), Is.Not.EqualTo(Hash(Path.Combine(c, "model.safetensors"))));
        Assert.That(File.ReadAllText(Path.Combine(a, "config.json")), Is.EqualTo(File.ReadAllText(Path.Combine(c, "config.json"))));
    }

    [Test]
    public void WeightsHaveTheDocumentedStatistics()
    {
        using var ck = Checkpoint.Open(TestModels.Small);
        var t = ck.Get("model.layers.3.mlp.up_proj.weight");
        var rows = (int)t.Shape[0];
        var cols = (int)t.Shape[1];
        var w = new float[rows * cols];
        unsafe { FastServe.Runtime.Numerics.HalfFloats.ToF32(t.DType, t.Data, w); }
        int outliers = 0;
        double sumSq = 0;
        long n = 0;
        for (int r = 0; r < rows; r++)
        {
            double rs = 0;
            for (int c = 0; c < cols; c++) rs += (double)w[r * cols + c] * w[r * cols + c];
            double rms = Math.Sqrt(rs / cols);
            if (rms > 0.02 * 8) outliers++;
            else { sumSq += rs; n += cols; }
        }
        double std = Math.Sqrt(sumSq / n);
        TestContext.Out.WriteLine($"up_proj: std {std:F5}, outlier rows {outliers}/{rows}");
        Assert.That(std, Is.EqualTo(ModelMaker.InitStd).Within(0.0005));
        Assert.That(outliers, Is.InRange(rows / 400, rows / 100)); // about 1 in 200
    }

    [Test]
    public void ExistingOutputIsRefused()
    {
        string dir = TestModels.TempDir("exists");
        File.WriteAllText(Path.Combine(dir, "keep.txt"), "x");
        var e = Assert.Throws<FastServeException>(() => ModelMaker.Make(ModelPreset.Tiny, dir, 1))!;
        Assert.That(e.Code, Is.EqualTo("make_model.output_exists"));
        Assert.That(File.Exists(Path.Combine(dir, "keep.txt")));
    }
}
