using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json;
using FastServe.Runtime;
using FastServe.Runtime.Formats;
using FastServe.Runtime.Numerics;
using NUnit.Framework;

namespace FastServe.Tests.Formats;

public class SafeTensorsTests
{
    [Test]
    public void RoundTripSeveralDTypesAndMetadata()
    {
        using var dir = new TempDir();
        string path = dir.File("t.safetensors");
        var rng = new Random(1);
        float[] f32 = Enumerable.Range(0, 12).Select(i => (float)(rng.NextDouble() - 0.5)).ToArray();
        byte[] f16 = MemoryMarshal.AsBytes(f32.Take(6).Select(HalfFloats.F32ToF16).ToArray().AsSpan()).ToArray();
        byte[] bf16 = MemoryMarshal.AsBytes(f32.Select(HalfFloats.F32ToBF16).ToArray().AsSpan()).ToArray();
        byte[] i64 = MemoryMarshal.AsBytes(new long[] { -1, long.MaxValue, 42 }.AsSpan()).ToArray();
        byte[] fp8 = [0x00, 0x38, 0x7E, 0xFE, 0x01];
        byte[] u8 = [1, 2, 3];
        var entries = new List<SafeTensorsEntry>
        {
            TestFiles.F32("a.f32", [3, 4], f32),
            TestFiles.Bytes("b.f16", DType.F16, [6], f16),
            TestFiles.Bytes("c.bf16", DType.BF16, [2, 2, 3], bf16),
            TestFiles.Bytes("d.i64", DType.I64, [3], i64),
            TestFiles.Bytes("e.fp8", DType.F8E4M3, [5], fp8),
            TestFiles.Bytes("f.scalar", DType.F32, [], BitConverter.GetBytes(3.5f)),
            TestFiles.Bytes("g.empty", DType.F32, [0, 7], []),
            TestFiles.Bytes("h.u8", DType.U8, [3], u8),
            TestFiles.Bytes("i.bool", DType.Bool, [1], [1]),
        };
        var meta = new Dictionary<string, string> { ["format"] = "pt", ["note"] = "héllo \"quoted\"" };
        SafeTensorsWriter.Write(path, entries, meta);

        using var f = SafeTensorsFile.Open(path);
        Assert.That(f.Path, Is.EqualTo(Path.GetFullPath(path)));
        Assert.That(f.FileLength, Is.EqualTo(new FileInfo(path).Length));
        Assert.That(f.Metadata, Is.EquivalentTo(meta));
        Assert.That(f.Tensors.Select(t => t.Name), Is.EqualTo(entries.Select(e => e.Name)), "data-offset order = entry order");
        var expected = new Dictionary<string, byte[]>
        {
            ["a.f32"] = MemoryMarshal.AsBytes(f32.AsSpan()).ToArray(), ["b.f16"] = f16, ["c.bf16"] = bf16, ["d.i64"] = i64,
            ["e.fp8"] = fp8, ["f.scalar"] = BitConverter.GetBytes(3.5f), ["g.empty"] = [], ["h.u8"] = u8, ["i.bool"] = [1],
        };
        foreach (var e in entries)
        {
            Assert.That(f.TryGet(e.Name, out var v), Is.True, e.Name);
            Assert.That(v!.DType, Is.EqualTo(e.DType), e.Name);
            Assert.That(v.Shape, Is.EqualTo(e.Shape), e.Name);
            Assert.That(v.Bytes.ToArray(), Is.EqualTo(expected[e.Name]), e.Name);
        }
        Assert.That(f.TryGet("nope", out _), Is.False);
    }

    [Test]
    public void HeaderIsPaddedWithSpacesTo8BytesAndMatchesReferenceLayout()
    {
        using var dir = new TempDir();
        string path = dir.File("t.safetensors");
        SafeTensorsWriter.Write(path, [TestFiles.F32("x", [2], [1f, 2f]), TestFiles.Bytes("y", DType.U8, [1], [7])]);
        byte[] bytes = File.ReadAllBytes(path);
        ulong n = BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        Assert.That(n % 8, Is.EqualTo(0UL));
        string header = Encoding.UTF8.GetString(bytes, 8, (int)n);
        // Same bytes the reference implementation writes for these tensors (it orders by alignment then name,
        // which for this input is also entry order), apart from the padding which it also fills with spaces.
        Assert.That(header.TrimEnd(' '),
            Is.EqualTo("{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"y\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[8,9]}}"));
        Assert.That(header[header.TrimEnd(' ').Length..].All(c => c == ' '), Is.True);
        Assert.That(bytes.Length, Is.EqualTo(8 + (int)n + 9));
        Assert.That(BitConverter.ToSingle(bytes, 8 + (int)n + 4), Is.EqualTo(2f));
    }

    [Test]
    public void EmptyHeaderObjectIsValid()
    {
        using var dir = new TempDir();
        string path = dir.File("e.safetensors");
        TestFiles.WriteRaw(path, "{}", []);
        using var f = SafeTensorsFile.Open(path);
        Assert.That(f.Tensors, Is.Empty);
        Assert.That(f.Metadata, Is.Empty);

        string written = dir.File("w.safetensors");
        SafeTensorsWriter.Write(written, []);
        using var g = SafeTensorsFile.Open(written);
        Assert.That(g.Tensors, Is.Empty);
    }

    [Test]
    public void WriterReportsProgressUpToTotal()
    {
        using var dir = new TempDir();
        var calls = new List<(long Done, long Total)>();
        var big = new float[5 << 20]; // 20 MiB: crosses the 16 MiB progress step inside one tensor
        SafeTensorsWriter.Write(dir.File("p.safetensors"), [TestFiles.F32("big", [big.Length], big), TestFiles.F32("small", [3], [1, 2, 3])],
            progress: (d, t) => calls.Add((d, t)));
        long total = 4L * big.Length + 12;
        Assert.That(calls, Is.Not.Empty);
        Assert.That(calls.All(c => c.Total == total), Is.True);
        Assert.That(calls.Select(c => c.Done), Is.Ordered);
        Assert.That(calls[^1].Done, Is.EqualTo(total));
        Assert.That(calls.Count, Is.GreaterThanOrEqualTo(3), "a report inside the big tensor, after it, and at the end");
    }

    [TestCase(-4, TestName = "WriterRejectsShortWriteData")]
    [TestCase(+4, TestName = "WriterRejectsLongWriteData")]
    public void WriterChecksWriteDataByteCount(int delta)
    {
        using var dir = new TempDir();
        string path = dir.File("bad.safetensors");
        File.WriteAllText(path, "previous contents");
        var entry = new SafeTensorsEntry("w", DType.F32, [4], s => s.Write(new byte[16 + delta]));
        var ex = Assert.Throws<FastServeException>(() => SafeTensorsWriter.Write(path, [entry]))!;
        Assert.That(ex.Code, Is.EqualTo("safetensors.write_size_mismatch"));
        Assert.That(ex.Message, Does.Contain(Path.GetFullPath(path)).And.Contain("'w'"));
        Assert.That(File.ReadAllText(path), Is.EqualTo("previous contents"), "failed write leaves the old file alone");
        Assert.That(File.Exists(path + ".tmp"), Is.False, "temp file removed");
    }

    [Test]
    public void WriterRejectsDuplicateNames()
    {
        using var dir = new TempDir();
        string path = dir.File("dup.safetensors");
        var ex = Assert.Throws<FastServeException>(() =>
            SafeTensorsWriter.Write(path, [TestFiles.F32("a", [1], [1]), TestFiles.F32("a", [1], [2])]))!;
        Assert.That(ex.Code, Is.EqualTo("safetensors.write_invalid_entry"));
        Assert.That(File.Exists(path), Is.False);
    }

    [Test]
    public void WriterReplacesExistingFile()
    {
        using var dir = new TempDir();
        string path = dir.File("r.safetensors");
        SafeTensorsWriter.Write(path, [TestFiles.F32("a", [1], [1])]);
        SafeTensorsWriter.Write(path, [TestFiles.F32("b", [2], [1, 2])]);
        using var f = SafeTensorsFile.Open(path);
        Assert.That(f.Tensors.Select(t => t.Name), Is.EqualTo(new[] { "b" }));
    }

    // ---- malformed files, written by hand ----

    private const string A8 = "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}";

    private static FastServeException OpenBad(TempDir dir, string header, int dataBytes, ulong? lengthOverride = null)
    {
        string path = dir.File("bad.safetensors");
        TestFiles.WriteRaw(path, header, new byte[dataBytes], lengthOverride);
        return Assert.Throws<FastServeException>(() => SafeTensorsFile.Open(path).Dispose())!;
    }

    private static void AssertError(FastServeException ex, TempDir dir, string code, string? tensor)
    {
        Assert.That(ex.Code, Is.EqualTo(code), ex.Message);
        string path = Path.GetFullPath(dir.File("bad.safetensors"));
        Assert.That(ex.Path, Is.EqualTo(path));
        Assert.That(ex.Message, Does.Contain(path), "message names the file");
        if (tensor is not null) Assert.That(ex.Message, Does.Contain($"'{tensor}'"), "message names the tensor");
    }

    [Test]
    public void FileShorterThan8Bytes()
    {
        using var dir = new TempDir();
        File.WriteAllBytes(dir.File("bad.safetensors"), [1, 2, 3, 4, 5]);
        var ex = Assert.Throws<FastServeException>(() => SafeTensorsFile.Open(dir.File("bad.safetensors")))!;
        AssertError(ex, dir, "safetensors.file_too_short", null);
    }

    [Test]
    public void MissingFile()
    {
        using var dir = new TempDir();
        var ex = Assert.Throws<FastServeException>(() => SafeTensorsFile.Open(dir.File("bad.safetensors")))!;
        AssertError(ex, dir, "safetensors.file_missing", null);
    }

    [Test]
    public void HeaderLengthAbsurd()
    {
        using var dir = new TempDir();
        AssertError(OpenBad(dir, "{}", 0, lengthOverride: 200_000_000), dir, "safetensors.header_too_large", null);
        AssertError(OpenBad(dir, "{}", 0, lengthOverride: ulong.MaxValue), dir, "safetensors.header_too_large", null);
    }

    [Test]
    public void HeaderLengthPastEndOfFile()
    {
        using var dir = new TempDir();
        AssertError(OpenBad(dir, "{}", 4, lengthOverride: 100), dir, "safetensors.header_out_of_range", null);
    }

    [Test]
    public void HeaderNotUtf8()
    {
        using var dir = new TempDir();
        string path = dir.File("bad.safetensors");
        TestFiles.WriteRaw(path, [(byte)'{', (byte)'"', 0xC3, 0x28, (byte)'"', (byte)':', (byte)'1', (byte)'}'], []);
        AssertError(Assert.Throws<FastServeException>(() => SafeTensorsFile.Open(path))!, dir, "safetensors.header_invalid_utf8", null);
    }

    [TestCase("{\"a\":", TestName = "HeaderTruncatedJson")]
    [TestCase("", TestName = "HeaderEmpty")]
    [TestCase("{'a':1}", TestName = "HeaderSingleQuotes")]
    public void HeaderNotJson(string header)
    {
        using var dir = new TempDir();
        AssertError(OpenBad(dir, header, 0), dir, "safetensors.header_invalid_json", null);
    }

    [TestCase("[1,2]")]
    [TestCase("\"x\"")]
    [TestCase("null")]
    public void HeaderNotObject(string header)
    {
        using var dir = new TempDir();
        AssertError(OpenBad(dir, header, 0), dir, "safetensors.header_not_object", null);
    }

    [TestCase("{\"__metadata__\":{\"a\":1}}")]
    [TestCase("{\"__metadata__\":[\"a\"]}")]
    public void MetadataNotStrings(string header)
    {
        using var dir = new TempDir();
        AssertError(OpenBad(dir, header, 0), dir, "safetensors.invalid_metadata", null);
    }

    [Test]
    public void DuplicateTensorName()
    {
        using var dir = new TempDir();
        AssertError(OpenBad(dir, "{" + A8 + "," + A8.Replace("[0,8]", "[8,16]") + "}", 16), dir, "safetensors.duplicate_name", "a");
    }

    [Test]
    public void EntryNotObject()
    {
        using var dir = new TempDir();
        AssertError(OpenBad(dir, "{\"a\":[1,2]}", 0), dir, "safetensors.invalid_entry", "a");
    }

    [TestCase("{\"a\":{\"shape\":[2],\"data_offsets\":[0,8]}}", "dtype")]
    [TestCase("{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", "shape")]
    [TestCase("{\"a\":{\"dtype\":\"F32\",\"shape\":[2]}}", "data_offsets")]
    public void EntryMissingField(string header, string field)
    {
        using var dir = new TempDir();
        var ex = OpenBad(dir, header, 8);
        AssertError(ex, dir, "safetensors.missing_field", "a");
        Assert.That(ex.Message, Does.Contain(field));
    }

    [TestCase("{\"a\":{\"dtype\":7,\"shape\":[2],\"data_offsets\":[0,8]}}")]
    [TestCase("{\"a\":{\"dtype\":\"F32\",\"shape\":2,\"data_offsets\":[0,8]}}")]
    [TestCase("{\"a\":{\"dtype\":\"F32\",\"shape\":[\"2\"],\"data_offsets\":[0,8]}}")]
    [TestCase("{\"a\":{\"dtype\":\"F32\",\"shape\":[2.5],\"data_offsets\":[0,8]}}")]
    [TestCase("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]}}")]
    [TestCase("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8,9]}}")]
    [TestCase("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":\"0-8\"}}")]
    [TestCase("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8.5]}}")]
    public void EntryFieldWrongJsonType(string header)
    {
        using var dir = new TempDir();
        AssertError(OpenBad(dir, header, 8), dir, "safetensors.invalid_field", "a");
    }

    [Test]
    public void UnknownDType()
    {
        using var dir = new TempDir();
        var ex = OpenBad(dir, "{" + A8.Replace("F32", "F7") + "}", 8);
        AssertError(ex, dir, "safetensors.unknown_dtype", "a");
        Assert.That(ex.Message, Does.Contain("F7"));
    }

    [TestCase("[-2]", TestName = "ShapeNegative")]
    [TestCase("[4611686018427387904,4]", TestName = "ShapeProductOverflows")]
    [TestCase("[2305843009213693952,2]", TestName = "ShapeBytesOverflow")]
    [TestCase("[99999999999999999999]", TestName = "ShapeDimBeyondInt64")]
    public void ShapeInvalid(string shape)
    {
        using var dir = new TempDir();
        AssertError(OpenBad(dir, "{" + A8.Replace("[2]", shape) + "}", 8), dir, "safetensors.invalid_shape", "a");
    }

    [TestCase("[0,16]", TestName = "OffsetsEndPastData")]
    [TestCase("[-8,0]", TestName = "OffsetsNegative")]
    [TestCase("[0,18446744073709551615]", TestName = "OffsetsBeyondInt64")]
    public void OffsetsOutOfRange(string offsets)
    {
        using var dir = new TempDir();
        AssertError(OpenBad(dir, "{" + A8.Replace("[0,8]", offsets) + "}", 8), dir, "safetensors.offsets_out_of_range", "a");
    }

    [Test]
    public void OffsetsBeginAfterEnd()
    {
        using var dir = new TempDir();
        AssertError(OpenBad(dir, "{" + A8.Replace("[0,8]", "[8,0]") + "}", 8), dir, "safetensors.offsets_reversed", "a");
    }

    [Test]
    public void ByteLengthDiffersFromShape()
    {
        using var dir = new TempDir();
        AssertError(OpenBad(dir, "{" + A8.Replace("[2]", "[3]") + "}", 8), dir, "safetensors.size_mismatch", "a");
        AssertError(OpenBad(dir, "{" + A8.Replace("F32", "F16") + "}", 8), dir, "safetensors.size_mismatch", "a");
    }

    [Test]
    public void OverlappingTensors()
    {
        using var dir = new TempDir();
        string b = A8.Replace("\"a\"", "\"b\"").Replace("[0,8]", "[4,12]");
        var ex = OpenBad(dir, "{" + A8 + "," + b + "}", 12);
        AssertError(ex, dir, "safetensors.offsets_overlap", "b");
        Assert.That(ex.Message, Does.Contain("'a'"));
    }

    [Test]
    public void GapBetweenTensors()
    {
        using var dir = new TempDir();
        string b = A8.Replace("\"a\"", "\"b\"").Replace("[0,8]", "[12,20]");
        AssertError(OpenBad(dir, "{" + A8 + "," + b + "}", 20), dir, "safetensors.offsets_not_contiguous", "b");
        // A gap before the first tensor is a gap too.
        AssertError(OpenBad(dir, "{" + A8.Replace("[0,8]", "[4,12]") + "}", 12), dir, "safetensors.offsets_not_contiguous", "a");
    }

    [Test]
    public void BytesAfterLastTensor()
    {
        using var dir = new TempDir();
        AssertError(OpenBad(dir, "{" + A8 + "}", 12), dir, "safetensors.trailing_bytes", null);
        AssertError(OpenBad(dir, "{}", 1), dir, "safetensors.trailing_bytes", null);
    }

    [Test]
    public void TensorsListedOutOfOffsetOrderAreSorted()
    {
        using var dir = new TempDir();
        string path = dir.File("o.safetensors");
        string b = A8.Replace("\"a\"", "\"b\"").Replace("[0,8]", "[8,16]");
        var data = MemoryMarshal.AsBytes(new float[] { 1, 2, 3, 4 }.AsSpan()).ToArray();
        TestFiles.WriteRaw(path, "{" + b + "," + A8 + ",\"__metadata__\":{\"format\":\"pt\"}}   ", data);
        using var f = SafeTensorsFile.Open(path);
        Assert.That(f.Tensors.Select(t => t.Name), Is.EqualTo(new[] { "a", "b" }));
        Assert.That(f.TryGet("b", out var v), Is.True);
        Assert.That(MemoryMarshal.Cast<byte, float>(v!.Bytes).ToArray(), Is.EqualTo(new float[] { 3, 4 }));
        Assert.That(f.Metadata["format"], Is.EqualTo("pt"));
    }

    [Test]
    public void WrittenHeaderIsValidJsonForOtherReaders()
    {
        using var dir = new TempDir();
        string path = dir.File("j.safetensors");
        SafeTensorsWriter.Write(path, [TestFiles.F32("model.layers.0.mlp.up_proj.weight", [1, 2], [1, 2])], new Dictionary<string, string> { ["format"] = "pt" });
        byte[] bytes = File.ReadAllBytes(path);
        int n = (int)BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        using var doc = JsonDocument.Parse(bytes.AsMemory(8, n));
        Assert.That(doc.RootElement.GetProperty("__metadata__").GetProperty("format").GetString(), Is.EqualTo("pt"));
        Assert.That(doc.RootElement.GetProperty("model.layers.0.mlp.up_proj.weight").GetProperty("dtype").GetString(), Is.EqualTo("F32"));
    }
}
