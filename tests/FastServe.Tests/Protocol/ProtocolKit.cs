using System.Buffers;
using System.Buffers.Binary;
using FastServe.Protocol;
using NUnit.Framework;

namespace FastServe.Tests.Protocol;

/// <summary>Writing frames into a buffer and reading a single frame back, for the protocol tests.</summary>
internal static class ProtocolKit
{
    public static byte[] Write(Action<ArrayBufferWriter<byte>> write)
    {
        var w = new ArrayBufferWriter<byte>();
        write(w);
        return w.WrittenSpan.ToArray();
    }

    /// <summary>Reads <paramref name="frame"/> as exactly one frame (asserting so) and returns its header and payload.</summary>
    public static (FrameHeader Header, byte[] Payload) Single(byte[] frame)
    {
        var r = FrameReader.TryRead(frame, int.MaxValue, out var h, out var payload, out int consumed);
        Assert.That(r, Is.EqualTo(ReadResult.Frame));
        Assert.That(consumed, Is.EqualTo(frame.Length), "the buffer holds more than one frame");
        Assert.That(h.Length, Is.EqualTo(frame.Length - Wire.HeaderSize));
        Assert.That(frame[6] | frame[7], Is.Zero, "reserved header bytes");
        return (h, payload.ToArray());
    }

    public static byte[] Hex(string hex) => Convert.FromHexString(string.Concat(hex.Where(c => !char.IsWhiteSpace(c))));

    /// <summary>A raw frame: header fields as given, then the payload bytes.</summary>
    public static byte[] RawFrame(FrameType type, ulong id, byte[] payload, byte flags = 0)
    {
        var b = new byte[Wire.HeaderSize + payload.Length];
        BinaryPrimitives.WriteUInt32LittleEndian(b, (uint)payload.Length);
        b[4] = (byte)type;
        b[5] = flags;
        BinaryPrimitives.WriteUInt64LittleEndian(b.AsSpan(8), id);
        payload.CopyTo(b, Wire.HeaderSize);
        return b;
    }

    public static FinalInfo SampleFinal()
    {
        var f = new FinalInfo
        {
            Status = WireStatus.Overloaded, Finish = WireFinish.None, Retriable = true, RetryAfterMs = 250,
            PromptTokens = 10, CachedPromptTokens = 4, CompletionTokens = 0, Preemptions = 2,
        };
        for (int i = 0; i < 7; i++) f.Timings[i] = (uint)(i + 1);
        return f;
    }
}
