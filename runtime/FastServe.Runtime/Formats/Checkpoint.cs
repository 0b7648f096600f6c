using System.Diagnostics.CodeAnalysis;
using System.Text.Json;

namespace FastServe.Runtime.Formats;

/// <summary>
/// The weights of a Hugging Face model directory: either one <c>model.safetensors</c>, or the shards named by
/// <c>model.safetensors.index.json</c>'s <c>"weight_map"</c> (tensor name → shard file name). Every file is
/// memory-mapped read-only and validated on open (see <see cref="SafeTensorsFile"/>), and the index is checked
/// against the shards: each listed shard must exist and hold each tensor listed for it, and no tensor may appear in
/// two files. Tensors a shard holds beyond those its index lists are kept (Hugging Face loads them too).
/// <para>Ownership: views are valid until <see cref="Dispose"/>. Safe to read from several threads.</para>
/// </summary>
public sealed class Checkpoint : IDisposable
{
    /// <summary>Single-file weights name.</summary>
    public const string SingleFileName = "model.safetensors";

    /// <summary>Shard index name.</summary>
    public const string IndexFileName = "model.safetensors.index.json";

    private readonly List<SafeTensorsFile> _files;
    private readonly Dictionary<string, TensorView> _byName;

    private Checkpoint(string dir, List<SafeTensorsFile> files, Dictionary<string, TensorView> byName)
    {
        Directory = dir;
        _files = files;
        _byName = byName;
        Files = files.Select(f => f.Path).ToArray();
        long total = 0;
        foreach (var f in files)
            foreach (var t in f.Tensors) total += t.ByteLength;
        TotalBytes = total;
    }

    /// <summary>Full path of the model directory.</summary>
    public string Directory { get; }

    /// <summary>Full paths of the safetensors files, in file-name order.</summary>
    public IReadOnlyList<string> Files { get; }

    /// <summary>The opened files, in the order of <see cref="Files"/>.</summary>
    public IReadOnlyList<SafeTensorsFile> SafeTensorsFiles => _files;

    /// <summary>Sum of every tensor's data bytes (headers excluded).</summary>
    public long TotalBytes { get; }

    /// <summary>Every tensor: files in <see cref="Files"/> order, each in data-offset order.</summary>
    public IEnumerable<TensorView> Tensors => _files.SelectMany(f => f.Tensors);

    /// <summary>Number of tensors across all files.</summary>
    public int TensorCount => _byName.Count;

    /// <summary>Finds a tensor by exact (ordinal) name in any file.</summary>
    public bool TryGet(string name, [NotNullWhen(true)] out TensorView? view) => _byName.TryGetValue(name, out view);

    /// <summary>Finds a tensor by name; <see cref="FastServeException"/> <c>checkpoint.missing_tensor</c> naming the
    /// tensor and directory when absent.</summary>
    public TensorView Get(string name) => _byName.TryGetValue(name, out var v)
        ? v
        : throw new FastServeException("checkpoint.missing_tensor", $"{Directory}: checkpoint has no tensor '{name}'", Directory);

    /// <summary>
    /// Opens the weights of <paramref name="dir"/>: <c>model.safetensors.index.json</c> when present, else
    /// <c>model.safetensors</c>.
    /// Errors: <c>checkpoint.missing_dir</c>, <c>checkpoint.no_weights</c>, <c>checkpoint.index_invalid_json</c>,
    /// <c>checkpoint.index_missing_weight_map</c>, <c>checkpoint.index_invalid_entry</c>, <c>checkpoint.shard_missing</c>,
    /// <c>checkpoint.index_tensor_missing</c>, <c>checkpoint.duplicate_tensor</c>, and any <c>safetensors.*</c> code.
    /// </summary>
    public static Checkpoint Open(string dir)
    {
        dir = Path.GetFullPath(dir);
        if (!System.IO.Directory.Exists(dir))
            throw new FastServeException("checkpoint.missing_dir", $"{dir}: no such directory", dir);

        string indexPath = Path.Combine(dir, IndexFileName);
        string singlePath = Path.Combine(dir, SingleFileName);
        Dictionary<string, string>? weightMap = null;
        List<string> shardNames;
        if (File.Exists(indexPath))
        {
            weightMap = ReadIndex(indexPath);
            shardNames = weightMap.Values.Distinct(StringComparer.Ordinal).Order(StringComparer.Ordinal).ToList();
        }
        else if (File.Exists(singlePath))
        {
            shardNames = [SingleFileName];
        }
        else
        {
            throw new FastServeException("checkpoint.no_weights", $"{dir}: neither {SingleFileName} nor {IndexFileName} exists", dir);
        }

        var files = new List<SafeTensorsFile>(shardNames.Count);
        try
        {
            var byName = new Dictionary<string, TensorView>(StringComparer.Ordinal);
            var fileOf = new Dictionary<string, string>(StringComparer.Ordinal);
            foreach (string shard in shardNames)
            {
                string shardPath = Path.Combine(dir, shard);
                if (!File.Exists(shardPath))
                    throw new FastServeException("checkpoint.shard_missing", $"{indexPath}: shard '{shard}' listed in weight_map does not exist", shardPath);
                var f = SafeTensorsFile.Open(shardPath);
                files.Add(f);
                foreach (var t in f.Tensors)
                {
                    if (!byName.TryAdd(t.Name, t))
                        throw new FastServeException("checkpoint.duplicate_tensor",
                            $"{dir}: tensor '{t.Name}' is in both {fileOf[t.Name]} and {shard}", shardPath);
                    fileOf[t.Name] = shard;
                }
            }
            if (weightMap is not null)
            {
                foreach (var (tensor, shard) in weightMap)
                {
                    if (!fileOf.TryGetValue(tensor, out string? actual) || actual != shard)
                        throw new FastServeException("checkpoint.index_tensor_missing",
                            $"{indexPath}: weight_map places tensor '{tensor}' in {shard}, which does not hold it", Path.Combine(dir, shard));
                }
            }
            return new Checkpoint(dir, files, byName);
        }
        catch
        {
            foreach (var f in files) f.Dispose();
            throw;
        }
    }

    /// <summary>Unmaps every file; all views become invalid.</summary>
    public void Dispose()
    {
        foreach (var f in _files) f.Dispose();
    }

    private static Dictionary<string, string> ReadIndex(string indexPath)
    {
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(File.ReadAllBytes(indexPath));
        }
        catch (JsonException e)
        {
            throw new FastServeException("checkpoint.index_invalid_json", $"{indexPath}: not valid JSON: {e.Message}", indexPath, e);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new FastServeException("checkpoint.index_invalid_json", $"{indexPath}: cannot read: {e.Message}", indexPath, e);
        }
        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object
                || !doc.RootElement.TryGetProperty("weight_map", out var map)
                || map.ValueKind != JsonValueKind.Object)
                throw new FastServeException("checkpoint.index_missing_weight_map", $"{indexPath}: no \"weight_map\" object", indexPath);

            var result = new Dictionary<string, string>(StringComparer.Ordinal);
            foreach (var p in map.EnumerateObject())
            {
                if (p.Value.ValueKind != JsonValueKind.String)
                    throw new FastServeException("checkpoint.index_invalid_entry", $"{indexPath}: weight_map entry '{p.Name}' is not a file name string", indexPath);
                string shard = p.Value.GetString()!;
                // Shards must sit in the model directory itself; a path here could read files elsewhere.
                if (shard.Length == 0 || shard != Path.GetFileName(shard) || shard is "." or ".." || shard.Contains('\\'))
                    throw new FastServeException("checkpoint.index_invalid_entry", $"{indexPath}: weight_map entry '{p.Name}' names '{shard}', not a file in the directory", indexPath);
                if (!result.TryAdd(p.Name, shard))
                    throw new FastServeException("checkpoint.index_invalid_entry", $"{indexPath}: weight_map lists tensor '{p.Name}' twice", indexPath);
            }
            return result;
        }
    }
}
