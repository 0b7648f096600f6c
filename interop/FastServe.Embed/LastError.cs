using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Text;
using FastServe.Runtime;

namespace FastServe.Embed;

/// <summary>
/// fs_last_error: the message of the most recent failing call on this thread, as "code: message" in UTF-8, NUL
/// terminated. Kept per thread in a pinned array that lives as long as the thread references it (so a thread that
/// exits leaks nothing), valid until this thread's next failing fs_* call. A successful call leaves it unchanged.
/// </summary>
internal static unsafe class LastError
{
    /// <summary>Longest message kept, in bytes (longer ones are cut at a character boundary).</summary>
    private const int MaxBytes = 1024;

    [ThreadStatic] private static byte[]? _buffer;

    /// <summary>The current message (an empty string when this thread has had no failure).</summary>
    public static byte* Pointer
    {
        get
        {
            _buffer ??= GC.AllocateArray<byte>(MaxBytes + 1, pinned: true);
            return (byte*)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(_buffer));
        }
    }

    /// <summary>Records <paramref name="code"/>: <paramref name="message"/> and returns <paramref name="status"/>.</summary>
    public static int Set(FsStatus status, string code, string message)
    {
        var buf = _buffer ??= GC.AllocateArray<byte>(MaxBytes + 1, pinned: true);
        var text = $"{code}: {message}".AsSpan();
        int n = 0;
        // Encode whole characters until the buffer is full, so the cut never splits a UTF-8 sequence.
        foreach (var rune in text.EnumerateRunes())
        {
            if (n + rune.Utf8SequenceLength > MaxBytes) break;
            n += rune.EncodeToUtf8(buf.AsSpan(n));
        }
        buf[n] = 0;
        return (int)status;
    }

    /// <summary>Maps anything a call threw to its status and records the message: the one place where an exception
    /// turns into a status, so none ever reaches the C caller.</summary>
    public static int From(Exception ex) => ex switch
    {
        FastServeException f => Set(StatusOf(f.Code), f.Code, f.Path is null ? f.Message : $"{f.Path}: {f.Message}"),
        OperationCanceledException => Set(FsStatus.Cancelled, "load.cancelled", "the progress callback cancelled the load"),
        OutOfMemoryException => Set(FsStatus.OutOfMemory, "memory.exhausted", ex.Message),
        _ => Set(FsStatus.Internal, "internal", $"{ex.GetType().Name}: {ex.Message}"),
    };

    private static FsStatus StatusOf(string code)
    {
        int dot = code.IndexOf('.');
        return (dot < 0 ? code : code[..dot]) switch
        {
            "model" or "config" or "safetensors" or "checkpoint" or "tokenizer" or "quantize" => FsStatus.Model,
            "backend" or "cuda" or "vulkan" => FsStatus.Backend,
            "args" when code == "args.unknown_backend" => FsStatus.Backend,
            "args" or "engine" or "sampling" or "request" or "prompt" => FsStatus.InvalidArgument,
            _ => FsStatus.Internal,
        };
    }

    /// <summary>UTF-8 of <paramref name="s"/> with a NUL, for the pinned buffers events point into.</summary>
    public static int Utf8Length(string? s) => s is null ? 0 : Encoding.UTF8.GetByteCount(s) + 1;
}
