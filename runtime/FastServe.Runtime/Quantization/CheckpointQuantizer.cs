using System.Buffers;
using System.Diagnostics;
using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;
using FastServe.Runtime.Formats;

namespace FastServe.Runtime.Quantization;

/// <summary>What one <see cref="CheckpointQuantizer.Run"/> did. Byte counts are tensor data bytes (headers excluded).</summary>
public sealed record QuantizeReport(int TensorsQuantized, long BytesIn, long BytesOut, TimeSpan Elapsed);

/// <summary>
/// Turns a Hugging Face model directory (F32/F16/BF16 safetensors + config.json) into an FP8 E4M3 checkpoint in the
/// compressed-tensors layout that vLLM, Hugging Face and this runtime load.
/// </summary>
public static class CheckpointQuantizer
{
    /// <summary>Largest non-weight file copied from the input directory (tokenizer.json of large vocabularies is ~10 MB).</summary>
    public const long MaxCopiedFileBytes = 64L << 20;

    private static readonly string[] WeightExtensions = [".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack", ".onnx"];

    /// <summary>
    /// Quantizes <paramref name="inDir"/> into a new directory <paramref name="outDir"/>.
    /// <list type="bullet">
    /// <item>Each target <c>&lt;layer&gt;.weight</c> (see <see cref="Fp8Quantizer.IsTarget"/>) becomes F8_E4M3 of the same
    /// shape, followed by <c>&lt;layer&gt;.weight_scale</c> F32 of shape [out, 1] (per channel) or [] (per tensor).</item>
    /// <item>Every other tensor is copied unchanged, same dtype and bytes. Each input shard becomes an output shard of
    /// the same name (with <c>"format": "pt"</c> metadata); a sharded input gets a new index with the scales added.</item>
    /// <item>config.json is the input's, every field kept, with <c>quantization_config</c> added; its ignore list names
    /// <c>lm_head</c> and every linear layer left unquantized.</item>
    /// <item>Other top-level files up to <see cref="MaxCopiedFileBytes"/> (tokenizer files, generation_config.json, ...)
    /// are copied; weight files of other formats and subdirectories are not.</item>
    /// </list>
    /// Everything is written into a hidden sibling temp directory renamed to <paramref name="outDir"/> at the end;
    /// on any failure the temp directory is removed and <paramref name="outDir"/> does not exist.
    /// </summary>
    /// <param name="progress">Called with (input tensor bytes processed, total input tensor bytes).</param>
    /// <exception cref="FastServeException"><c>quantize.output_exists</c>, <c>quantize.already_quantized</c>,
    /// <c>quantize.unsupported_tensor</c>, <c>quantize.non_finite</c>, <c>quantize.io_error</c>, and every
    /// <c>config.*</c>, <c>checkpoint.*</c> and <c>safetensors.*</c> code of the readers and writer.</exception>
    public static QuantizeReport Run(string inDir, string outDir, Fp8Scheme scheme, QuantizeLayers layers, Action<long, long>? progress = null)
    {
        var sw = Stopwatch.StartNew();
        inDir = Path.GetFullPath(inDir);
        outDir = Path.TrimEndingDirectorySeparator(Path.GetFullPath(outDir));
        if (Directory.Exists(outDir) || File.Exists(outDir))
            throw new FastServeException("quantize.output_exists", $"{outDir}: output already exists; choose a new directory", outDir);
        if ((layers & QuantizeLayers.All) == 0)
            throw new ArgumentException("no layers selected", nameof(layers));

        string configPath = Path.Combine(inDir, "config.json");
        if (!Directory.Exists(inDir))
            throw new FastServeException("checkpoint.missing_dir", $"{inDir}: no such directory", inDir);
        var config = ModelConfig.Load(configPath);
        if (config.Quantization is not null)
            throw new FastServeException("quantize.already_quantized", $"{configPath}: model already has a quantization_config", configPath);

        using var ckpt = Checkpoint.Open(inDir);
        var plan = Plan(ckpt, layers);

        string parent = Path.GetDirectoryName(outDir) ?? throw new FastServeException("quantize.io_error", $"{outDir}: has no parent directory", outDir);
        string tmp = Path.Combine(parent, $".{Path.GetFileName(outDir)}.tmp-{Environment.ProcessId}-{Guid.NewGuid():N}");
        bool done = false;
        try
        {
            Directory.CreateDirectory(tmp);
            long bytesDone = 0, bytesTotal = ckpt.TotalBytes, bytesOut = 0;
            int quantized = 0;
            int maxRows = 1;
            long maxElems = 1;
            foreach (var t in plan.Targets)
            {
                maxRows = Math.Max(maxRows, (int)t.Shape[0]);
                maxElems = Math.Max(maxElems, t.ElementCount);
            }
            byte[] qbuf = plan.Targets.Count > 0 ? new byte[maxElems] : [];
            float[] sbuf = new float[maxRows];
            var weightMap = new SortedDictionary<string, string>(StringComparer.Ordinal);

            foreach (var file in ckpt.SafeTensorsFiles)
            {
                string shard = Path.GetFileName(file.Path);
                var entries = new List<SafeTensorsEntry>();
                foreach (var t in file.Tensors)
                {
                    if (plan.IsTarget(t.Name))
                    {
                        int rows = (int)t.Shape[0];
                        int scaleCount = scheme == Fp8Scheme.PerChannel ? rows : 1;
                        var view = t;
                        entries.Add(new SafeTensorsEntry(t.Name, DType.F8E4M3, (long[])t.Shape.Clone(), s =>
                        {
                            int n = (int)view.ElementCount;
                            try
                            {
                                Fp8Quantizer.Quantize(view, scheme, qbuf.AsSpan(0, n), sbuf.AsSpan(0, scaleCount));
                            }
                            catch (FastServeException e) when (e.Code.StartsWith("quantize.", StringComparison.Ordinal))
                            {
                                throw new FastServeException(e.Code, $"{file.Path}: {e.Message}", file.Path, e);
                            }
                            s.Write(qbuf, 0, n);
                            bytesDone += view.ByteLength;
                            progress?.Invoke(bytesDone, bytesTotal);
                        }));
                        long[] scaleShape = scheme == Fp8Scheme.PerChannel ? [rows, 1] : [];
                        entries.Add(new SafeTensorsEntry(ScaleName(t.Name), DType.F32, scaleShape,
                            s => s.Write(System.Runtime.InteropServices.MemoryMarshal.AsBytes(sbuf.AsSpan(0, scaleCount)))));
                        quantized++;
                        bytesOut += t.ElementCount + 4L * scaleCount;
                        weightMap[t.Name] = shard;
                        weightMap[ScaleName(t.Name)] = shard;
                    }
                    else
                    {
                        var view = t;
                        entries.Add(new SafeTensorsEntry(t.Name, t.DType, (long[])t.Shape.Clone(), s =>
                        {
                            CopyTensor(view, s);
                            bytesDone += view.ByteLength;
                            progress?.Invoke(bytesDone, bytesTotal);
                        }));
                        bytesOut += t.ByteLength;
                        weightMap[t.Name] = shard;
                    }
                }
                var metadata = new Dictionary<string, string>(file.Metadata, StringComparer.Ordinal) { ["format"] = "pt" };
                SafeTensorsWriter.Write(Path.Combine(tmp, shard), entries, metadata);
            }

            if (File.Exists(Path.Combine(inDir, Checkpoint.IndexFileName)))
                WriteIndex(Path.Combine(tmp, Checkpoint.IndexFileName), weightMap, bytesOut);

            var qc = new QuantizationConfig(scheme, plan.Ignore);
            File.WriteAllText(Path.Combine(tmp, "config.json"), PatchConfig(configPath, qc), new UTF8Encoding(false));
            CopySmallFiles(inDir, tmp);

            if (Directory.Exists(outDir) || File.Exists(outDir))
                throw new FastServeException("quantize.output_exists", $"{outDir}: output appeared while quantizing", outDir);
            Directory.Move(tmp, outDir);
            done = true;
            progress?.Invoke(bytesTotal, bytesTotal);
            return new QuantizeReport(quantized, ckpt.TotalBytes, bytesOut, sw.Elapsed);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new FastServeException("quantize.io_error", $"{outDir}: {e.Message}", outDir, e);
        }
        finally
        {
            if (!done) TryDeleteDirectory(tmp);
        }
    }

    /// <summary>Name of the scale tensor of a quantized weight: "x.weight" → "x.weight_scale".</summary>
    public static string ScaleName(string weightName) => weightName + "_scale";

    private sealed record PlanResult(HashSet<string> TargetNames, List<TensorView> Targets, List<string> Ignore)
    {
        public bool IsTarget(string name) => TargetNames.Contains(name);
    }

    private static PlanResult Plan(Checkpoint ckpt, QuantizeLayers layers)
    {
        var names = new HashSet<string>(StringComparer.Ordinal);
        var targets = new List<TensorView>();
        var ignore = new List<string> { "lm_head" };
        foreach (var t in ckpt.Tensors)
        {
            if (t.DType == DType.F8E4M3 || t.Name.EndsWith(".weight_scale", StringComparison.Ordinal) || t.Name.EndsWith(".input_scale", StringComparison.Ordinal))
                throw new FastServeException("quantize.already_quantized", $"{ckpt.Directory}: tensor '{t.Name}' is already quantized ({t})", ckpt.Directory);
            if (Fp8Quantizer.IsTarget(t.Name, layers))
            {
                try
                {
                    Fp8Quantizer.MatrixShape(t);
                }
                catch (FastServeException e)
                {
                    throw new FastServeException(e.Code, $"{ckpt.Directory}: {e.Message}", ckpt.Directory, e);
                }
                names.Add(t.Name);
                targets.Add(t);
            }
            else if (Fp8Quantizer.IsLinearWeight(t.Name))
            {
                ignore.Add(t.Name[..^".weight".Length]);
            }
        }
        ignore.Sort(1, ignore.Count - 1, StringComparer.Ordinal);
        return new PlanResult(names, targets, ignore);
    }

    private static unsafe void CopyTensor(TensorView t, Stream s)
    {
        const int Chunk = 1 << 30;
        for (long off = 0; off < t.ByteLength; off += Chunk)
        {
            int n = (int)Math.Min(Chunk, t.ByteLength - off);
            s.Write(new ReadOnlySpan<byte>(t.Data + off, n));
        }
    }

    private static void WriteIndex(string path, SortedDictionary<string, string> weightMap, long totalSize)
    {
        var buf = new ArrayBufferWriter<byte>();
        using (var w = new Utf8JsonWriter(buf, new JsonWriterOptions { Indented = true, Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            w.WriteStartObject();
            w.WriteStartObject("metadata");
            w.WriteNumber("total_size", totalSize);
            w.WriteEndObject();
            w.WriteStartObject("weight_map");
            foreach (var (k, v) in weightMap) w.WriteString(k, v);
            w.WriteEndObject();
            w.WriteEndObject();
        }
        File.WriteAllBytes(path, buf.WrittenSpan.ToArray());
    }

    /// <summary>The input config.json with every field kept in order and quantization_config set.</summary>
    private static string PatchConfig(string configPath, QuantizationConfig qc)
    {
        using var doc = JsonDocument.Parse(File.ReadAllBytes(configPath),
            new JsonDocumentOptions { CommentHandling = JsonCommentHandling.Skip, AllowTrailingCommas = true });
        var buf = new ArrayBufferWriter<byte>();
        using (var w = new Utf8JsonWriter(buf, new JsonWriterOptions { Indented = true, Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            w.WriteStartObject();
            foreach (var p in doc.RootElement.EnumerateObject())
            {
                if (p.Name == "quantization_config") continue;
                p.WriteTo(w);
            }
            w.WritePropertyName("quantization_config");
            qc.WriteJson(w);
            w.WriteEndObject();
        }
        return Encoding.UTF8.GetString(buf.WrittenSpan) + "\n";
    }

    private static void CopySmallFiles(string inDir, string outDir)
    {
        foreach (string f in Directory.EnumerateFiles(inDir))
        {
            string name = Path.GetFileName(f);
            if (name is "config.json" or Checkpoint.IndexFileName) continue;
            if (WeightExtensions.Any(ext => name.EndsWith(ext, StringComparison.OrdinalIgnoreCase))) continue;
            // Hugging Face cache snapshots are symlinks into a blob store: size and copy the target.
            var info = new FileInfo(f);
            if (info.LinkTarget is not null && info.ResolveLinkTarget(returnFinalTarget: true) is FileInfo target) info = target;
            if (!info.Exists || info.Length > MaxCopiedFileBytes) continue;
            File.Copy(f, Path.Combine(outDir, name));
        }
    }

    private static void TryDeleteDirectory(string dir)
    {
        try
        {
            if (Directory.Exists(dir)) Directory.Delete(dir, recursive: true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // The original failure matters more than a leftover temp directory.
        }
    }
}
