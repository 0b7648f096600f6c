using System.Buffers;
using System.Text;

namespace FastServe.Runtime.Tokenization;

/// <summary>
/// Streaming detokenizer for one output stream: feed ids one at a time, get the text each one completes, as a string
/// (<see cref="Append"/>) or as UTF-8 bytes written to a buffer (<see cref="AppendUtf8"/>, no allocation: the
/// serving path). A UTF-8 sequence split across tokens (an emoji spread over byte tokens) is held back until its
/// last byte arrives, so no result ever ends in half a character. The concatenation of every result followed by
/// the flush equals <see cref="TextTokenizer.Decode"/> of the same ids. Not thread-safe: one instance per stream.
/// </summary>
public sealed class IncrementalDecoder
{
    private static ReadOnlySpan<byte> Replacement => [0xEF, 0xBF, 0xBD];   // U+FFFD in UTF-8

    private readonly TextTokenizer _tokenizer;
    private readonly byte[] _pending = new byte[4];
    private int _pendingCount;
    private bool _atStart = true;

    internal IncrementalDecoder(TextTokenizer tokenizer) => _tokenizer = tokenizer;

    /// <summary>
    /// Adds one token and returns the text it completes: possibly "" (an unknown id, a control token, or the
    /// first bytes of a character still incomplete), possibly more than the token's own text (it completed a
    /// character begun by earlier tokens). Invalid UTF-8 becomes U+FFFD as soon as it is known to be invalid.
    /// </summary>
    public string Append(int id)
    {
        var w = new ArrayBufferWriter<byte>(64);
        AppendUtf8(id, w);
        return w.WrittenCount == 0 ? "" : Encoding.UTF8.GetString(w.WrittenSpan);
    }

    /// <summary>As <see cref="Append"/>, writing the completed text as UTF-8 (always whole, valid characters) to
    /// <paramref name="output"/>.</summary>
    public void AppendUtf8(int id, IBufferWriter<byte> output)
    {
        ReadOnlySpan<byte> bytes = _tokenizer.TokenBytes(id, ref _atStart);
        if (bytes.IsEmpty) return;
        // The common case, a token of plain ASCII with nothing held back, is a copy.
        if (_pendingCount == 0 && Ascii.IsValid(bytes))
        {
            output.Write(bytes);
            return;
        }
        int total = _pendingCount + bytes.Length;
        byte[]? rented = null;
        Span<byte> input = total <= 256 ? stackalloc byte[256] : (rented = ArrayPool<byte>.Shared.Rent(total));
        try
        {
            _pending.AsSpan(0, _pendingCount).CopyTo(input);
            bytes.CopyTo(input[_pendingCount..]);
            Decode(input[..total], isFinal: false, output);
        }
        finally
        {
            if (rented is not null) ArrayPool<byte>.Shared.Return(rented);
        }
    }

    /// <summary>Returns what is still held back (an unfinished UTF-8 sequence, as U+FFFD) and empties the decoder.</summary>
    public string Flush()
    {
        if (_pendingCount == 0) return "";
        var w = new ArrayBufferWriter<byte>(8);
        FlushUtf8(w);
        return Encoding.UTF8.GetString(w.WrittenSpan);
    }

    /// <summary>As <see cref="Flush"/>, writing UTF-8 to <paramref name="output"/>.</summary>
    public void FlushUtf8(IBufferWriter<byte> output)
    {
        if (_pendingCount == 0) return;
        Span<byte> input = stackalloc byte[4];
        _pending.AsSpan(0, _pendingCount).CopyTo(input);
        Decode(input[.._pendingCount], isFinal: true, output);
    }

    /// <summary>Forgets held-back bytes and starts a new stream (as if newly created).</summary>
    public void Reset()
    {
        _pendingCount = 0;
        _atStart = true;
    }

    // Copies the valid UTF-8 of `input` to `output`, each maximal invalid subsequence replaced by U+FFFD (the same
    // substitution UTF8Encoding makes); an incomplete sequence at the end is kept in _pending unless isFinal.
    private void Decode(ReadOnlySpan<byte> input, bool isFinal, IBufferWriter<byte> output)
    {
        int start = 0, i = 0;
        _pendingCount = 0;
        while (i < input.Length)
        {
            var status = Rune.DecodeFromUtf8(input[i..], out _, out int n);
            if (status == OperationStatus.Done) { i += n; continue; }
            if (status == OperationStatus.NeedMoreData && !isFinal)
            {
                // Only a truncated final sequence (at most 3 bytes) needs more data.
                input[i..].CopyTo(_pending);
                _pendingCount = input.Length - i;
                break;
            }
            output.Write(input[start..i]);
            output.Write(Replacement);
            i += n;
            start = i;
        }
        output.Write(input[start..i]);
    }
}
