using System.Buffers;
using System.Text.Json;

namespace FastServe.Http;

/// <summary>
/// A per-thread JSON writer and its buffer for the whole (non-streamed) answers, so a response costs no writer or
/// buffer allocation. Taken and returned around a synchronous write (no await in between); a nested or concurrent take
/// on the same thread gets a fresh one. A buffer grown past <see cref="KeepBytes"/> by a large answer is dropped on
/// return rather than kept per thread.
/// </summary>
internal sealed class JsonScratch
{
    private const int KeepBytes = 64 << 10;
    private static readonly JsonWriterOptions Options = new() { SkipValidation = true };

    [ThreadStatic] private static JsonScratch? t_cached;

    private JsonScratch()
    {
        Buffer = new ArrayBufferWriter<byte>(1024);
        Writer = new Utf8JsonWriter(Buffer, Options);
    }

    /// <summary>The bytes written so far.</summary>
    public ArrayBufferWriter<byte> Buffer { get; }

    /// <summary>A writer over <see cref="Buffer"/>, reset and empty when taken.</summary>
    public Utf8JsonWriter Writer { get; }

    /// <summary>This thread's scratch (or a fresh one when it is in use); hand it back with <see cref="Return"/>.</summary>
    public static JsonScratch Take()
    {
        var s = t_cached;
        if (s is null) return new JsonScratch();
        t_cached = null;
        return s;
    }

    /// <summary>Clears <paramref name="s"/> and keeps it for this thread's next <see cref="Take"/>.</summary>
    public static void Return(JsonScratch s)
    {
        if (s.Buffer.Capacity > KeepBytes) return;
        s.Buffer.ResetWrittenCount();
        s.Writer.Reset(s.Buffer);
        t_cached = s;
    }
}
