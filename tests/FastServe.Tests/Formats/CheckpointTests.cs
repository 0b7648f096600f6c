using System.Runtime.InteropServices;
using FastServe.Runtime;
using FastServe.Runtime.Formats;
using NUnit.Framework;

namespace FastServe.Tests.Formats;

public class CheckpointTests
{
    private static void WriteShards(TempDir dir)
    {
        SafeTensorsWriter.Write(dir.File("model-00001-of-00002.safetensors"),
            [TestFiles.F32("model.embed_tokens.weight", [2, 3], [1, 2, 3, 4, 5, 6]), TestFiles.F32("model.norm.weight", [3], [7, 8, 9])],
            new Dictionary<string, string> { ["format"] = "pt" });
        SafeTensorsWriter.Write(dir.File("model-00002-of-00002.safetensors"),
            [TestFiles.Bytes("lm_head.weight", DType.U8, [2], [10, 11])]);
    }

    private const string GoodIndex = """
        {"metadata": {"total_size": 38},
         "weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors",
                        "model.norm.weight": "model-00001-of-00002.safetensors",
                        "lm_head.weight": "model-00002-of-00002.safetensors"}}
        """;

    [Test]
    public void SingleFileCheckpoint()
    {
        using var dir = new TempDir();
        SafeTensorsWriter.Write(dir.File("model.safetensors"), [TestFiles.F32("w", [2], [1, 2]), TestFiles.F32("b", [1], [3])]);
        using var c = Checkpoint.Open(dir.Path);
        Assert.That(c.Directory, Is.EqualTo(Path.GetFullPath(dir.Path)));
        Assert.That(c.Files, Is.EqualTo(new[] { dir.File("model.safetensors") }));
        Assert.That(c.TotalBytes, Is.EqualTo(12));
        Assert.That(c.Tensors.Select(t => t.Name), Is.EqualTo(new[] { "w", "b" }));
        Assert.That(MemoryMarshal.Cast<byte, float>(c.Get("b").Bytes)[0], Is.EqualTo(3f));
    }

    [Test]
    public void ShardedCheckpointViaIndex()
    {
        using var dir = new TempDir();
        WriteShards(dir);
        File.WriteAllText(dir.File(Checkpoint.IndexFileName), GoodIndex);
        using var c = Checkpoint.Open(dir.Path);
        Assert.That(c.Files.Select(Path.GetFileName), Is.EqualTo(new[] { "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors" }));
        Assert.That(c.TotalBytes, Is.EqualTo(24 + 12 + 2));
        Assert.That(c.Tensors.Count(), Is.EqualTo(3));
        Assert.That(c.TryGet("lm_head.weight", out var lm), Is.True);
        Assert.That(lm!.Bytes.ToArray(), Is.EqualTo(new byte[] { 10, 11 }));
        Assert.That(MemoryMarshal.Cast<byte, float>(c.Get("model.embed_tokens.weight").Bytes).ToArray(), Is.EqualTo(new float[] { 1, 2, 3, 4, 5, 6 }));
        Assert.That(c.TryGet("missing", out _), Is.False);
    }

    [Test]
    public void IndexTakesPrecedenceOverSingleFile()
    {
        using var dir = new TempDir();
        WriteShards(dir);
        File.WriteAllText(dir.File(Checkpoint.IndexFileName), GoodIndex);
        SafeTensorsWriter.Write(dir.File("model.safetensors"), [TestFiles.F32("other", [1], [1])]);
        using var c = Checkpoint.Open(dir.Path);
        Assert.That(c.TryGet("other", out _), Is.False);
        Assert.That(c.Files, Has.Count.EqualTo(2));
    }

    [Test]
    public void MissingTensorNamesTensorAndDirectory()
    {
        using var dir = new TempDir();
        SafeTensorsWriter.Write(dir.File("model.safetensors"), [TestFiles.F32("w", [1], [1])]);
        using var c = Checkpoint.Open(dir.Path);
        var ex = Assert.Throws<FastServeException>(() => c.Get("model.layers.0.mlp.up_proj.weight"))!;
        Assert.That(ex.Code, Is.EqualTo("checkpoint.missing_tensor"));
        Assert.That(ex.Message, Does.Contain("model.layers.0.mlp.up_proj.weight").And.Contain(Path.GetFullPath(dir.Path)));
    }

    private static FastServeException OpenBad(TempDir dir, string? index)
    {
        if (index is not null) File.WriteAllText(dir.File(Checkpoint.IndexFileName), index);
        return Assert.Throws<FastServeException>(() => Checkpoint.Open(dir.Path).Dispose())!;
    }

    [Test]
    public void NoDirectory()
    {
        using var dir = new TempDir();
        var ex = Assert.Throws<FastServeException>(() => Checkpoint.Open(dir.File("nope")))!;
        Assert.That(ex.Code, Is.EqualTo("checkpoint.missing_dir"));
        Assert.That(ex.Message, Does.Contain(dir.File("nope")));
    }

    [Test]
    public void NoWeights()
    {
        using var dir = new TempDir();
        var ex = OpenBad(dir, null);
        Assert.That(ex.Code, Is.EqualTo("checkpoint.no_weights"));
        Assert.That(ex.Message, Does.Contain(dir.Path));
    }

    [Test]
    public void IndexInvalidJson()
    {
        using var dir = new TempDir();
        WriteShards(dir);
        var ex = OpenBad(dir, "{\"weight_map\": {");
        Assert.That(ex.Code, Is.EqualTo("checkpoint.index_invalid_json"));
        Assert.That(ex.Message, Does.Contain(dir.File(Checkpoint.IndexFileName)));
    }

    [TestCase("{\"metadata\": {}}")]
    [TestCase("{\"weight_map\": [\"a\"]}")]
    [TestCase("[]")]
    public void IndexWithoutWeightMap(string index)
    {
        using var dir = new TempDir();
        WriteShards(dir);
        var ex = OpenBad(dir, index);
        Assert.That(ex.Code, Is.EqualTo("checkpoint.index_missing_weight_map"));
        Assert.That(ex.Message, Does.Contain(dir.File(Checkpoint.IndexFileName)));
    }

    [TestCase("{\"weight_map\": {\"a\": 3}}")]
    [TestCase("{\"weight_map\": {\"a\": \"../outside.safetensors\"}}")]
    [TestCase("{\"weight_map\": {\"a\": \"/etc/passwd\"}}")]
    [TestCase("{\"weight_map\": {\"a\": \"\"}}")]
    public void IndexEntryInvalid(string index)
    {
        using var dir = new TempDir();
        var ex = OpenBad(dir, index);
        Assert.That(ex.Code, Is.EqualTo("checkpoint.index_invalid_entry"));
        Assert.That(ex.Message, Does.Contain("'a'"));
    }

    [Test]
    public void ShardMissing()
    {
        using var dir = new TempDir();
        WriteShards(dir);
        File.Delete(dir.File("model-00002-of-00002.safetensors"));
        var ex = OpenBad(dir, GoodIndex);
        Assert.That(ex.Code, Is.EqualTo("checkpoint.shard_missing"));
        Assert.That(ex.Message, Does.Contain("model-00002-of-00002.safetensors"));
    }

    [Test]
    public void IndexListsTensorTheShardLacks()
    {
        using var dir = new TempDir();
        WriteShards(dir);
        var ex = OpenBad(dir, GoodIndex.Replace("\"weight_map\": {", "\"weight_map\": {\"ghost\": \"model-00002-of-00002.safetensors\", "));
        Assert.That(ex.Code, Is.EqualTo("checkpoint.index_tensor_missing"));
        Assert.That(ex.Message, Does.Contain("'ghost'").And.Contain("model-00002-of-00002.safetensors"));

        // A tensor placed in the wrong shard is the same error.
        var ex2 = OpenBad(dir, GoodIndex.Replace("\"model.norm.weight\": \"model-00001", "\"model.norm.weight\": \"model-00002"));
        Assert.That(ex2.Code, Is.EqualTo("checkpoint.index_tensor_missing"));
        Assert.That(ex2.Message, Does.Contain("'model.norm.weight'"));
    }

    [Test]
    public void TensorInTwoShards()
    {
        using var dir = new TempDir();
        WriteShards(dir);
        SafeTensorsWriter.Write(dir.File("model-00002-of-00002.safetensors"),
            [TestFiles.Bytes("lm_head.weight", DType.U8, [2], [10, 11]), TestFiles.F32("model.norm.weight", [3], [7, 8, 9])]);
        var ex = OpenBad(dir, GoodIndex);
        Assert.That(ex.Code, Is.EqualTo("checkpoint.duplicate_tensor"));
        Assert.That(ex.Message, Does.Contain("'model.norm.weight'"));
    }

    [Test]
    public void MalformedShardReportsItsOwnCode()
    {
        using var dir = new TempDir();
        WriteShards(dir);
        TestFiles.WriteRaw(dir.File("model-00002-of-00002.safetensors"), "{\"lm_head.weight\":{\"dtype\":\"U8\",\"shape\":[3],\"data_offsets\":[0,2]}}", [1, 2]);
        var ex = OpenBad(dir, GoodIndex);
        Assert.That(ex.Code, Is.EqualTo("safetensors.size_mismatch"));
        Assert.That(ex.Message, Does.Contain("model-00002-of-00002.safetensors").And.Contain("'lm_head.weight'"));
    }
}

public class CheckpointSymlinkTests
{
    [Test]
    public void HuggingFaceCacheLayoutWithSymlinkedFiles()
    {
        // The hub cache keeps blobs under blobs/<hash> and links snapshots/<rev>/model.safetensors to them.
        using var dir = new TempDir();
        Directory.CreateDirectory(dir.File("blobs"));
        Directory.CreateDirectory(dir.File("snap"));
        SafeTensorsWriter.Write(dir.File("blobs/abc"), [TestFiles.F32("w", [3], [1, 2, 3])]);
        File.CreateSymbolicLink(dir.File("snap/model.safetensors"), "../blobs/abc");
        using var c = Checkpoint.Open(dir.File("snap"));
        Assert.That(c.TotalBytes, Is.EqualTo(12));
        Assert.That(MemoryMarshal.Cast<byte, float>(c.Get("w").Bytes).ToArray(), Is.EqualTo(new float[] { 1, 2, 3 }));
    }
}
