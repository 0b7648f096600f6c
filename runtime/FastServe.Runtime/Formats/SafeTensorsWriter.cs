using System.Buffers.Binary;
using System.Text.Encodings.Web;
using System.Text.Json;

namespace FastServe.Runtime.Formats;

/// <summary>
/// One tensor to write: its name, element type and shape (row-major, outermost first), and a callback that
/// writes exactly <c>product(Shape) × DType.SizeOf()</c> bytes of data to the stream it is given (the stream is
/// write-only and rejects writes past that count).
/// </summary>
public sealed record SafeTensorsEntry(string Name, DType DType, long[] Shape, Action<Stream> WriteData)
{
    /// <summary>Bytes the entry's data occupies: product(Shape) × element size.</summary>
    public long ByteLength
    {
        get
        {
            long n = DType.SizeOf();
            foreach (long d in Shape) n = checked(n * d);
            return n;
        }
    }
}

/// <summary>Writes safetensors files that the reference implementation (and <see cref="SafeTensorsFile"/>) reads.</summary>
public static class SafeTensorsWriter
{
    private const int ProgressStepBytes = 16 << 20;

    /// <summary>
    /// Streams the header, then each entry's data in entry order (data offsets are assigned contiguously in that
    /// order). The header JSON is padded with spaces to a multiple of 8 bytes so the data section starts 8-byte
    /// aligned, as the reference writer does. The file is written to <c>path + ".tmp"</c> and renamed over
    /// <paramref name="path"/> only when complete, so a crash or error never leaves a half-written file at
    /// <paramref name="path"/>; on error the temp file is deleted.
    /// </summary>
    /// <param name="path">Destination file; replaced if it exists.</param>
    /// <param name="entries">Tensors in the order their data is written. Names must be unique and not <c>__metadata__</c>.</param>
    /// <param name="metadata">Written as the header's <c>"__metadata__"</c> when not null.</param>
    /// <param name="progress">Called with (data bytes written, total data bytes) after each entry and every 16 MiB.</param>
    /// <exception cref="FastServeException">
    /// <c>safetensors.write_invalid_entry</c> (duplicate or reserved name, negative or overflowing shape),
    /// <c>safetensors.write_size_mismatch</c> (a WriteData callback wrote more or fewer bytes than the entry needs),
    /// <c>safetensors.write_failed</c> (an I/O error). Exceptions thrown by a WriteData callback propagate unchanged.
    /// </exception>
    public static void Write(string path, IReadOnlyList<SafeTensorsEntry> entries, IReadOnlyDictionary<string, string>? metadata = null,
        Action<long, long>? progress = null)
    {
        path = Path.GetFullPath(path);
        var lengths = new long[entries.Count];
        var names = new HashSet<string>(StringComparer.Ordinal);
        long total = 0;
        for (int i = 0; i < entries.Count; i++)
        {
            var e = entries[i];
            if (e.Name == "__metadata__" || !names.Add(e.Name))
                throw new FastServeException("safetensors.write_invalid_entry", $"{path}: tensor name '{e.Name}' is duplicated or reserved", path);
            foreach (long d in e.Shape)
                if (d < 0) throw new FastServeException("safetensors.write_invalid_entry", $"{path}: tensor '{e.Name}' has negative dimension {d}", path);
            try
            {
                lengths[i] = e.ByteLength;
                total = checked(total + lengths[i]);
            }
            catch (OverflowException)
            {
                throw new FastServeException("safetensors.write_invalid_entry", $"{path}: tensor '{e.Name}' shape [{string.Join(",", e.Shape)}] is too large", path);
            }
        }

        byte[] header = BuildHeader(entries, lengths, metadata);
        string tmp = path + ".tmp";
        bool done = false;
        try
        {
            using (var fs = new FileStream(tmp, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20))
            {
                Span<byte> len = stackalloc byte[8];
                BinaryPrimitives.WriteUInt64LittleEndian(len, (ulong)header.Length);
                fs.Write(len);
                fs.Write(header);
                var counter = new CountingStream(fs, total, progress);
                for (int i = 0; i < entries.Count; i++)
                {
                    counter.BeginEntry(entries[i].Name, lengths[i], path);
                    entries[i].WriteData(counter);
                    counter.EndEntry();
                }
                progress?.Invoke(total, total);
                fs.Flush(flushToDisk: true);
            }
            File.Move(tmp, path, overwrite: true);
            done = true;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new FastServeException("safetensors.write_failed", $"{path}: {e.Message}", path, e);
        }
        finally
        {
            if (!done)
            {
                try { File.Delete(tmp); }
                catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
            }
        }
    }

    private static byte[] BuildHeader(IReadOnlyList<SafeTensorsEntry> entries, long[] lengths, IReadOnlyDictionary<string, string>? metadata)
    {
        var buf = new System.Buffers.ArrayBufferWriter<byte>();
        using (var w = new Utf8JsonWriter(buf, new JsonWriterOptions { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            w.WriteStartObject();
            if (metadata is not null)
            {
                w.WriteStartObject("__metadata__");
                foreach (var kv in metadata.OrderBy(kv => kv.Key, StringComparer.Ordinal)) w.WriteString(kv.Key, kv.Value);
                w.WriteEndObject();
            }
            long offset = 0;
            for (int i = 0; i < entries.Count; i++)
            {
                var e = entries[i];
                w.WriteStartObject(e.Name);
                w.WriteString("dtype", e.DType.SafeTensorsName());
                w.WriteStartArray("shape");
                foreach (long d in e.Shape) w.WriteNumberValue(d);
                w.WriteEndArray();
                w.WriteStartArray("data_offsets");
                w.WriteNumberValue(offset);
                w.WriteNumberValue(offset + lengths[i]);
                w.WriteEndArray();
                w.WriteEndObject();
                offset += lengths[i];
            }
            w.WriteEndObject();
        }
        int padded = (buf.WrittenCount + 7) & ~7;
        var header = new byte[padded];
        buf.WrittenSpan.CopyTo(header);
        header.AsSpan(buf.WrittenCount).Fill((byte)' ');
        return header;
    }

    /// <summary>Write-only pass-through that enforces each entry's byte count and reports progress.</summary>
    private sealed class CountingStream(Stream inner, long total, Action<long, long>? progress) : Stream
    {
        private string _name = "";
        private string _path = "";
        private long _entryLength;
        private long _entryWritten;
        private long _done;
        private long _lastReport;

        public void BeginEntry(string name, long length, string path)
        {
            _name = name;
            _path = path;
            _entryLength = length;
            _entryWritten = 0;
        }

        public void EndEntry()
        {
            if (_entryWritten != _entryLength)
                throw new FastServeException("safetensors.write_size_mismatch",
                    $"{_path}: tensor '{_name}' wrote {_entryWritten} bytes, expected {_entryLength}", _path);
            if (progress is not null && _done != _lastReport)
            {
                _lastReport = _done;
                progress(_done, total);
            }
        }

        public override void Write(ReadOnlySpan<byte> buffer)
        {
            if (buffer.Length > _entryLength - _entryWritten)
                throw new FastServeException("safetensors.write_size_mismatch",
                    $"{_path}: tensor '{_name}' wrote more than its {_entryLength} bytes", _path);
            inner.Write(buffer);
            _entryWritten += buffer.Length;
            _done += buffer.Length;
            if (progress is not null && _done - _lastReport >= ProgressStepBytes)
            {
                _lastReport = _done;
                progress(_done, total);
            }
        }

        public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));
        public override void WriteByte(byte value) => Write([value]);
        public override bool CanRead => false;
        public override bool CanSeek => false;
        public override bool CanWrite => true;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => _done; set => throw new NotSupportedException(); }
        public override void Flush() { }
        public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
    }
}
