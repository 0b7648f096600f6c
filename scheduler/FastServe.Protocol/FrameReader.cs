using System.Buffers.Binary;
using System.Runtime.CompilerServices;

namespace FastServe.Protocol;

/// <summary>A decoded frame header.</summary>
public readonly record struct FrameHeader(int Length, FrameType Type, byte Flags, ulong Id);

/// <summary>Outcome of <see cref="FrameReader.TryRead"/>.</summary>
public enum ReadResult : byte
{
    /// <summary>A whole frame is in the buffer; <c>consumed</c> bytes make it up.</summary>
    Frame,
    /// <summary>More bytes are needed (a partial header or payload stays in the buffer).</summary>
    NeedMore,
    /// <summary>The header announces a payload over the limit: the stream cannot be trusted any further.</summary>
    TooLarge,
}

/// <summary>
/// Splits a byte stream into frames without copying: the payload is a slice of the caller's buffer, valid until
/// the caller reuses it. Never throws and never allocates. Like Garnet's <c>TryConsumeMessages</c>: the caller keeps
/// unconsumed bytes and calls again when more arrive.
/// </summary>
public static class FrameReader
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ReadResult TryRead(ReadOnlySpan<byte> buffer, int maxFrame, out FrameHeader header, out ReadOnlySpan<byte> payload, out int consumed)
    {
        payload = default;
        consumed = 0;
        if (buffer.Length < Wire.HeaderSize) { header = default; return ReadResult.NeedMore; }
        uint len = BinaryPrimitives.ReadUInt32LittleEndian(buffer);
        header = new FrameHeader((int)Math.Min(len, int.MaxValue), (FrameType)buffer[4], buffer[5], BinaryPrimitives.ReadUInt64LittleEndian(buffer[8..]));
        if (len > (uint)maxFrame) return ReadResult.TooLarge;
        // Compared as unsigned: header + length overflows an int when maxFrame is near int.MaxValue.
        if ((uint)(buffer.Length - Wire.HeaderSize) < len) return ReadResult.NeedMore;
        payload = buffer.Slice(Wire.HeaderSize, (int)len);
        consumed = Wire.HeaderSize + (int)len;
        return ReadResult.Frame;
    }
}

/// <summary>Little-endian cursor over a payload. Every read checks bounds and reports failure instead of throwing.</summary>
public ref struct PayloadReader
{
    private readonly ReadOnlySpan<byte> _buf;
    private int _pos;

    public PayloadReader(ReadOnlySpan<byte> buffer) { _buf = buffer; _pos = 0; }

    public readonly int Remaining => _buf.Length - _pos;
    public readonly int Position => _pos;

    public bool TryU8(out byte v) { if (Remaining < 1) { v = 0; return false; } v = _buf[_pos++]; return true; }
    public bool TryU16(out ushort v) { if (Remaining < 2) { v = 0; return false; } v = BinaryPrimitives.ReadUInt16LittleEndian(_buf[_pos..]); _pos += 2; return true; }
    public bool TryU32(out uint v) { if (Remaining < 4) { v = 0; return false; } v = BinaryPrimitives.ReadUInt32LittleEndian(_buf[_pos..]); _pos += 4; return true; }
    public bool TryI32(out int v) { if (Remaining < 4) { v = 0; return false; } v = BinaryPrimitives.ReadInt32LittleEndian(_buf[_pos..]); _pos += 4; return true; }
    public bool TryU64(out ulong v) { if (Remaining < 8) { v = 0; return false; } v = BinaryPrimitives.ReadUInt64LittleEndian(_buf[_pos..]); _pos += 8; return true; }
    public bool TryF32(out float v) { if (Remaining < 4) { v = 0; return false; } v = BinaryPrimitives.ReadSingleLittleEndian(_buf[_pos..]); _pos += 4; return true; }

    public bool TryBytes(int n, out ReadOnlySpan<byte> v)
    {
        if (n < 0 || Remaining < n) { v = default; return false; }
        v = _buf.Slice(_pos, n);
        _pos += n;
        return true;
    }

    /// <summary>A u16 length then that many bytes.</summary>
    public bool TryStr16(out ReadOnlySpan<byte> v)
    {
        v = default;
        return TryU16(out ushort n) && TryBytes(n, out v);
    }
}
