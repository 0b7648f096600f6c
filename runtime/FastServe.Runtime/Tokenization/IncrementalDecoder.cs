using System.Buffers;
using System.Text.Unicode;

namespace FastServe.Runtime.Tokenization;

/// <summary>
/// Streaming detokenizer for one output stream: feed ids one at a time, get the text each one completes.
/// A UTF-8 sequence split across tokens (an emoji spread over byte tokens) is held back until its last byte
/// arrives, so no returned string ever ends in half a character. The concatenation of every
/// <see cref="Append"/> result followed by <see cref="Flush"/> equals <see cref="TextTokenizer.Decode"/> of
/// the same ids. Not thread-safe: one instance per stream.
/// </summary>
public sealed class IncrementalDecoder
{
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
        ReadOnlySpan<byte> bytes = _tokenizer.TokenBytes(id, ref _atStart);
        if (bytes.IsEmpty) return "";

        int total = _pendingCount + bytes.Length;
        byte[]? rented = null;
        Span<byte> input = total <= 256 ? stackalloc byte[256] : (rented = ArrayPool<byte>.Shared.Rent(total));
        try
        {
            _pending.AsSpan(0, _pendingCount).CopyTo(input);
            bytes.CopyTo(input[_pendingCount..]);
            input = input[..total];
            return DecodeAvailable(input, isFinal: false);
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
        Span<byte> input = stackalloc byte[4];
        _pending.AsSpan(0, _pendingCount).CopyTo(input);
        return DecodeAvailable(input[.._pendingCount], isFinal: true);
    }

    /// <summary>Forgets held-back bytes and starts a new stream (as if newly created).</summary>
    public void Reset()
    {
        _pendingCount = 0;
        _atStart = true;
    }

    private string DecodeAvailable(ReadOnlySpan<byte> input, bool isFinal)
    {
        // UTF-16 never needs more code units than UTF-8 has bytes.
        char[]? rented = null;
        Span<char> chars = input.Length <= 256 ? stackalloc char[256] : (rented = ArrayPool<char>.Shared.Rent(input.Length));
        try
        {
            Utf8.ToUtf16(input, chars, out int read, out int written, replaceInvalidSequences: true, isFinalBlock: isFinal);
            // Only an incomplete final sequence (at most 3 bytes) is left unread.
            ReadOnlySpan<byte> rest = input[read..];
            rest.CopyTo(_pending);
            _pendingCount = rest.Length;
            return written == 0 ? "" : new string(chars[..written]);
        }
        finally
        {
            if (rented is not null) ArrayPool<char>.Shared.Return(rented);
        }
    }
}
