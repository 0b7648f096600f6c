using System.Buffers.Binary;
using System.Diagnostics.CodeAnalysis;
using System.IO.MemoryMappedFiles;
using System.Text.Json;
using System.Text.Unicode;

namespace FastServe.Runtime.Formats;

/// <summary>
/// One safetensors file, memory-mapped read-only, with its whole header validated on open.
/// <para>
/// Layout: an 8-byte little-endian header length N, N bytes of UTF-8 JSON (an object mapping tensor names to
/// <c>{"dtype", "shape", "data_offsets": [begin, end]}</c>, plus an optional <c>"__metadata__"</c> object of
/// strings), then the data section; offsets are relative to the first byte after the header. Tensors must cover
/// the data section exactly, without gaps, overlaps or trailing bytes (as the reference implementation requires).
/// </para>
/// <para>
/// Ownership: every <see cref="TensorView"/> handed out points into the mapping and is valid only until
/// <see cref="Dispose"/>. Data is not necessarily aligned beyond what the writer chose (8 bytes for the
/// reference writer); read it with unaligned loads. Safe to read from several threads; Dispose is not.
/// </para>
/// Errors: <see cref="FastServeException"/> with a <c>safetensors.*</c> code whose message names the file and,
/// where one is at fault, the tensor (see docs/errors.md).
/// </summary>
public sealed unsafe class SafeTensorsFile : IDisposable
{
    /// <summary>Largest header accepted, in bytes (the reference implementation's limit).</summary>
    public const long MaxHeaderBytes = 100_000_000;

    private readonly MemoryMappedFile _map;
    private readonly MemoryMappedViewAccessor _view;
    private bool _disposed;
    private readonly Dictionary<string, TensorView> _byName;

    private SafeTensorsFile(string path, long fileLength, MemoryMappedFile map, MemoryMappedViewAccessor view,
        List<TensorView> tensors, Dictionary<string, string> metadata)
    {
        Path = path;
        FileLength = fileLength;
        _map = map;
        _view = view;
        Tensors = tensors;
        Metadata = metadata;
        _byName = new Dictionary<string, TensorView>(tensors.Count, StringComparer.Ordinal);
        foreach (var t in tensors) _byName.Add(t.Name, t);
    }

    /// <summary>Full path of the file as opened.</summary>
    public string Path { get; }

    /// <summary>File size in bytes at open time.</summary>
    public long FileLength { get; }

    /// <summary>Every tensor, in data-offset order. Views point into the mapping (valid until Dispose).</summary>
    public IReadOnlyList<TensorView> Tensors { get; }

    /// <summary>The header's <c>"__metadata__"</c> entries (empty when absent).</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; }

    /// <summary>Finds a tensor by exact (ordinal) name.</summary>
    public bool TryGet(string name, [NotNullWhen(true)] out TensorView? view)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        return _byName.TryGetValue(name, out view);
    }

    /// <summary>
    /// Maps <paramref name="path"/> read-only and validates its header against the data section.
    /// Errors: <c>safetensors.file_missing</c>, <c>safetensors.io_error</c>, <c>safetensors.file_too_short</c>,
    /// <c>safetensors.header_too_large</c>, <c>safetensors.header_out_of_range</c>, <c>safetensors.header_invalid_utf8</c>,
    /// <c>safetensors.header_invalid_json</c>, <c>safetensors.header_not_object</c>, <c>safetensors.invalid_metadata</c>,
    /// <c>safetensors.duplicate_name</c>, <c>safetensors.invalid_entry</c>, <c>safetensors.missing_field</c>,
    /// <c>safetensors.invalid_field</c>, <c>safetensors.unknown_dtype</c>, <c>safetensors.invalid_shape</c>,
    /// <c>safetensors.offsets_out_of_range</c>, <c>safetensors.offsets_reversed</c>, <c>safetensors.size_mismatch</c>,
    /// <c>safetensors.offsets_overlap</c>, <c>safetensors.offsets_not_contiguous</c>, <c>safetensors.trailing_bytes</c>.
    /// </summary>
    public static SafeTensorsFile Open(string path)
    {
        path = System.IO.Path.GetFullPath(path);
        // A stream (not FileInfo) so symbolic links, as in the Hugging Face cache, are sized by their target.
        FileStream stream;
        try
        {
            stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read | FileShare.Delete, 1, FileOptions.None);
        }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException)
        {
            throw new FastServeException("safetensors.file_missing", $"{path}: no such file", path, e);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new FastServeException("safetensors.io_error", $"{path}: {e.Message}", path, e);
        }

        long length = stream.Length;
        if (length < 8)
        {
            stream.Dispose();
            throw new FastServeException("safetensors.file_too_short", $"{path}: file is {length} bytes, shorter than the 8-byte header length", path);
        }

        MemoryMappedFile? map = null;
        MemoryMappedViewAccessor? view = null;
        byte* ptr = null;
        bool acquired = false;
        try
        {
            try
            {
                map = MemoryMappedFile.CreateFromFile(stream, null, 0, MemoryMappedFileAccess.Read, HandleInheritability.None, leaveOpen: false);
                view = map.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
                view.SafeMemoryMappedViewHandle.AcquirePointer(ref ptr);
                acquired = true;
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                throw new FastServeException("safetensors.io_error", $"{path}: cannot map file: {e.Message}", path, e);
            }
            byte* basePtr = ptr + view.PointerOffset;
            var (tensors, metadata) = ParseHeader(path, basePtr, length);
            return new SafeTensorsFile(path, length, map, view, tensors, metadata);
        }
        catch
        {
            if (acquired) view!.SafeMemoryMappedViewHandle.ReleasePointer();
            view?.Dispose();
            if (map is not null) map.Dispose();
            else stream.Dispose();
            throw;
        }
    }

    /// <summary>Unmaps the file. Every view from <see cref="Tensors"/> becomes invalid.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        _view.SafeMemoryMappedViewHandle.ReleasePointer();
        _view.Dispose();
        _map.Dispose();
    }

    private static (List<TensorView>, Dictionary<string, string>) ParseHeader(string path, byte* basePtr, long fileLength)
    {
        ulong n = BinaryPrimitives.ReadUInt64LittleEndian(new ReadOnlySpan<byte>(basePtr, 8));
        if (n > MaxHeaderBytes)
            throw new FastServeException("safetensors.header_too_large", $"{path}: header length {n} exceeds the {MaxHeaderBytes}-byte limit", path);
        if ((long)n > fileLength - 8)
            throw new FastServeException("safetensors.header_out_of_range", $"{path}: header length {n} runs past the end of the {fileLength}-byte file", path);
        var header = new ReadOnlySpan<byte>(basePtr + 8, (int)n);
        if (!Utf8.IsValid(header))
            throw new FastServeException("safetensors.header_invalid_utf8", $"{path}: header is not valid UTF-8", path);

        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(new ReadOnlyMemory<byte>(header.ToArray()), new JsonDocumentOptions { MaxDepth = 16 });
        }
        catch (JsonException e)
        {
            throw new FastServeException("safetensors.header_invalid_json", $"{path}: header is not valid JSON: {e.Message}", path, e);
        }

        using (doc)
        {
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object)
                throw new FastServeException("safetensors.header_not_object", $"{path}: header is a JSON {root.ValueKind}, not an object", path);

            long dataStart = 8 + (long)n;
            long dataLength = fileLength - dataStart;
            var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
            var entries = new List<(string Name, DType DType, long[] Shape, long Begin, long End)>();
            var seen = new HashSet<string>(StringComparer.Ordinal);

            foreach (var prop in root.EnumerateObject())
            {
                string name = prop.Name;
                if (!seen.Add(name))
                {
                    if (name == "__metadata__")
                        throw new FastServeException("safetensors.invalid_metadata", $"{path}: \"__metadata__\" appears twice", path);
                    throw new FastServeException("safetensors.duplicate_name", $"{path}: tensor '{name}' appears twice in the header", path);
                }
                if (name == "__metadata__")
                {
                    ParseMetadata(path, prop.Value, metadata);
                    continue;
                }
                entries.Add(ParseEntry(path, name, prop.Value, dataLength));
            }

            // Sorting by (begin, end) lets one sweep find overlaps and gaps.
            entries.Sort((a, b) => a.Begin != b.Begin ? a.Begin.CompareTo(b.Begin) : a.End.CompareTo(b.End));
            long expected = 0;
            string? previous = null;
            var tensors = new List<TensorView>(entries.Count);
            foreach (var e in entries)
            {
                if (e.Begin < expected)
                    throw new FastServeException("safetensors.offsets_overlap",
                        $"{path}: tensor '{e.Name}' [{e.Begin}, {e.End}) overlaps tensor '{previous}' ending at {expected}", path);
                if (e.Begin > expected)
                    throw new FastServeException("safetensors.offsets_not_contiguous",
                        $"{path}: tensor '{e.Name}' starts at {e.Begin}, leaving a gap after {(previous is null ? "the header" : $"tensor '{previous}'")} ending at {expected}", path);
                tensors.Add(new TensorView(e.Name, e.DType, e.Shape, basePtr + dataStart + e.Begin, e.End - e.Begin));
                expected = e.End;
                previous = e.Name;
            }
            if (expected != dataLength)
                throw new FastServeException("safetensors.trailing_bytes",
                    $"{path}: data section is {dataLength} bytes but tensors cover only {expected}", path);
            return (tensors, metadata);
        }
    }

    private static void ParseMetadata(string path, JsonElement value, Dictionary<string, string> metadata)
    {
        if (value.ValueKind == JsonValueKind.Null) return;
        if (value.ValueKind != JsonValueKind.Object)
            throw new FastServeException("safetensors.invalid_metadata", $"{path}: \"__metadata__\" is a JSON {value.ValueKind}, not an object", path);
        foreach (var m in value.EnumerateObject())
        {
            if (m.Value.ValueKind != JsonValueKind.String)
                throw new FastServeException("safetensors.invalid_metadata", $"{path}: metadata key '{m.Name}' is a JSON {m.Value.ValueKind}, not a string", path);
            if (!metadata.TryAdd(m.Name, m.Value.GetString()!))
                throw new FastServeException("safetensors.invalid_metadata", $"{path}: metadata key '{m.Name}' appears twice", path);
        }
    }

    private static (string, DType, long[], long, long) ParseEntry(string path, string name, JsonElement e, long dataLength)
    {
        if (e.ValueKind != JsonValueKind.Object)
            throw new FastServeException("safetensors.invalid_entry", $"{path}: tensor '{name}' is described by a JSON {e.ValueKind}, not an object", path);

        if (!e.TryGetProperty("dtype", out var dtypeEl))
            throw Missing(path, name, "dtype");
        if (dtypeEl.ValueKind != JsonValueKind.String)
            throw Invalid(path, name, "dtype", "a string", dtypeEl);
        string dtypeName = dtypeEl.GetString()!;
        if (!DTypeInfo.TryParseSafeTensorsName(dtypeName, out var dtype))
            throw new FastServeException("safetensors.unknown_dtype", $"{path}: tensor '{name}' has unknown dtype '{dtypeName}'", path);

        if (!e.TryGetProperty("shape", out var shapeEl))
            throw Missing(path, name, "shape");
        if (shapeEl.ValueKind != JsonValueKind.Array)
            throw Invalid(path, name, "shape", "an array of integers", shapeEl);
        var shape = new long[shapeEl.GetArrayLength()];
        long elements = 1;
        bool overflow = false;
        int i = 0;
        foreach (var d in shapeEl.EnumerateArray())
        {
            if (d.ValueKind != JsonValueKind.Number)
                throw Invalid(path, name, "shape", "an array of integers", shapeEl);
            if (!d.TryGetInt64(out long dim))
            {
                // A number that is not an int64: a fraction, or beyond ±2^63.
                if (d.TryGetDouble(out double dd) && dd == Math.Floor(dd) && Math.Abs(dd) >= 9.2e18)
                    throw new FastServeException("safetensors.invalid_shape", $"{path}: tensor '{name}' has dimension {d.GetRawText()} that overflows", path);
                throw Invalid(path, name, "shape", "an array of integers", shapeEl);
            }
            if (dim < 0)
                throw new FastServeException("safetensors.invalid_shape", $"{path}: tensor '{name}' has negative dimension {dim}", path);
            shape[i++] = dim;
            if (!overflow)
            {
                try { elements = checked(elements * dim); }
                catch (OverflowException) { overflow = true; }
            }
        }
        long expectedBytes = 0;
        if (!overflow)
        {
            try { expectedBytes = checked(elements * dtype.SizeOf()); }
            catch (OverflowException) { overflow = true; }
        }
        // A zero dimension makes the product 0 whatever the rest, so overflow only matters when no dim is 0.
        if (overflow && Array.IndexOf(shape, 0L) < 0)
            throw new FastServeException("safetensors.invalid_shape", $"{path}: tensor '{name}' shape [{string.Join(",", shape)}] has too many elements", path);
        if (overflow) expectedBytes = 0;

        if (!e.TryGetProperty("data_offsets", out var offEl))
            throw Missing(path, name, "data_offsets");
        if (offEl.ValueKind != JsonValueKind.Array || offEl.GetArrayLength() != 2)
            throw Invalid(path, name, "data_offsets", "an array of two integers", offEl);
        var off = new long[2];
        for (int k = 0; k < 2; k++)
        {
            var o = offEl[k];
            if (o.ValueKind != JsonValueKind.Number)
                throw Invalid(path, name, "data_offsets", "an array of two integers", offEl);
            if (o.TryGetInt64(out long v))
            {
                if (v < 0)
                    throw new FastServeException("safetensors.offsets_out_of_range", $"{path}: tensor '{name}' has negative data offset {v}", path);
                off[k] = v;
            }
            else if (o.TryGetUInt64(out _) || (o.TryGetDouble(out double od) && od == Math.Floor(od)))
            {
                throw new FastServeException("safetensors.offsets_out_of_range", $"{path}: tensor '{name}' data offset {o.GetRawText()} is beyond any file", path);
            }
            else
            {
                throw Invalid(path, name, "data_offsets", "an array of two integers", offEl);
            }
        }
        long begin = off[0], end = off[1];
        if (begin > end)
            throw new FastServeException("safetensors.offsets_reversed", $"{path}: tensor '{name}' has data_offsets [{begin}, {end}] with begin after end", path);
        if (end > dataLength)
            throw new FastServeException("safetensors.offsets_out_of_range",
                $"{path}: tensor '{name}' data_offsets [{begin}, {end}] run past the {dataLength}-byte data section", path);
        if (end - begin != expectedBytes)
            throw new FastServeException("safetensors.size_mismatch",
                $"{path}: tensor '{name}' {dtypeName}[{string.Join(",", shape)}] needs {expectedBytes} bytes but data_offsets span {end - begin}", path);
        return (name, dtype, shape, begin, end);
    }

    private static FastServeException Missing(string path, string name, string field) =>
        new("safetensors.missing_field", $"{path}: tensor '{name}' has no \"{field}\"", path);

    private static FastServeException Invalid(string path, string name, string field, string expected, JsonElement got) =>
        new("safetensors.invalid_field", $"{path}: tensor '{name}' field \"{field}\" must be {expected}, got {Abbrev(got.GetRawText())}", path);

    private static string Abbrev(string s) => s.Length <= 60 ? s : s[..57] + "...";
}
