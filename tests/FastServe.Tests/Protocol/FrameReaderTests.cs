using System.Buffers;
using System.Buffers.Binary;
using FastServe.Protocol;
using NUnit.Framework;
using static FastServe.Tests.Protocol.ProtocolKit;

namespace FastServe.Tests.Protocol;

public class FrameReaderTests
{
    private static byte[] Stream(out int[] ends)
    {
        var w = new ArrayBufferWriter<byte>();
        var e = new List<int>();
        void Mark() => e.Add(w.WrittenCount);
        FrameWriter.Hello(w, "client"u8); Mark();
        FrameWriter.Cancel(w, 3); Mark(); // empty payload
        FrameWriter.Request(w, 7, RequestParams.Default, "a prompt"u8, default, ["\n"]); Mark();
        FrameWriter.Delta(w, 7, [1, 2, 3], "é€"u8); Mark();
        FrameWriter.Final(w, 7, SampleFinal(), "d"u8, "m"u8); Mark();
        FrameWriter.Ping(w, default); Mark();
        ends = [.. e];
        return w.WrittenSpan.ToArray();
    }

    /// <summary>Consumes whole frames from <paramref name="buf"/> like a server's receive loop; returns the bytes used.</summary>
    private static int Drain(ReadOnlySpan<byte> buf, List<(FrameType, ulong, byte[])> frames, out ReadResult last)
    {
        int used = 0;
        while (true)
        {
            last = FrameReader.TryRead(buf[used..], 4096, out var h, out var payload, out int consumed);
            if (last != ReadResult.Frame)
            {
                Assert.That(consumed, Is.Zero);
                return used;
            }
            Assert.That(consumed, Is.EqualTo(Wire.HeaderSize + payload.Length));
            frames.Add((h.Type, h.Id, payload.ToArray()));
            used += consumed;
        }
    }

    [Test]
    public void NeedMoreAtEverySplitPoint()
    {
        var buf = Stream(out var ends);
        var whole = new List<(FrameType, ulong, byte[])>();
        Assert.That(Drain(buf, whole, out var lastWhole), Is.EqualTo(buf.Length));
        Assert.That(lastWhole, Is.EqualTo(ReadResult.NeedMore));
        Assert.That(whole, Has.Count.EqualTo(ends.Length));

        for (int k = 0; k <= buf.Length; k++)
        {
            // The first k bytes have arrived: exactly the frames that end by k come out, the rest waits.
            var got = new List<(FrameType, ulong, byte[])>();
            int used = Drain(buf.AsSpan(0, k), got, out var last);
            int complete = ends.Count(e => e <= k);
            Assert.That(got, Has.Count.EqualTo(complete), $"split at {k}");
            Assert.That(used, Is.EqualTo(complete == 0 ? 0 : ends[complete - 1]), $"split at {k}");
            Assert.That(last, Is.EqualTo(ReadResult.NeedMore), $"split at {k}");
            // Then the rest arrives, appended to what stayed unconsumed.
            var rest = buf.AsSpan(used).ToArray();
            int used2 = Drain(rest, got, out _);
            Assert.That(used2, Is.EqualTo(rest.Length), $"split at {k}");
            Assert.That(got.Select(f => (f.Item1, f.Item2, Convert.ToHexString(f.Item3))),
                Is.EqualTo(whole.Select(f => (f.Item1, f.Item2, Convert.ToHexString(f.Item3)))), $"split at {k}");
        }
    }

    [Test]
    public void ByteAtATime()
    {
        var buf = Stream(out var ends);
        var pending = new List<byte>();
        var got = new List<(FrameType, ulong, byte[])>();
        foreach (byte b in buf)
        {
            pending.Add(b);
            int used = Drain(pending.ToArray(), got, out _);
            pending.RemoveRange(0, used);
        }
        Assert.That(got, Has.Count.EqualTo(ends.Length));
        Assert.That(pending, Is.Empty);
    }

    [Test]
    public void ShortHeaderIsNeedMore()
    {
        var frame = Write(w => FrameWriter.Cancel(w, 1));
        for (int n = 0; n < Wire.HeaderSize; n++)
        {
            Assert.That(FrameReader.TryRead(frame.AsSpan(0, n), 1024, out var h, out var p, out int c), Is.EqualTo(ReadResult.NeedMore), $"{n} bytes");
            Assert.That((h, p.Length, c), Is.EqualTo((default(FrameHeader), 0, 0)));
        }
        Assert.That(FrameReader.TryRead(frame, 0, out _, out var payload, out int consumed), Is.EqualTo(ReadResult.Frame));
        Assert.That((payload.Length, consumed), Is.EqualTo((0, Wire.HeaderSize)), "an empty payload fits even a zero limit");
    }

    [TestCase(0)]
    [TestCase(1)]
    [TestCase(64 * 1024)]
    [TestCase(Wire.DefaultMaxFrame)]
    public void TooLargeExactlyAboveMaxFrame(int maxFrame)
    {
        var at = RawFrame(FrameType.Ping, 0, new byte[maxFrame]);
        Assert.That(FrameReader.TryRead(at, maxFrame, out var h, out var p, out int c), Is.EqualTo(ReadResult.Frame));
        Assert.That((h.Length, p.Length, c), Is.EqualTo((maxFrame, maxFrame, maxFrame + Wire.HeaderSize)));
        Assert.That(FrameReader.TryRead(at.AsSpan(0, at.Length - 1), maxFrame, out _, out _, out c), Is.EqualTo(ReadResult.NeedMore));
        Assert.That(c, Is.Zero);

        // One byte over: refused from the header alone, however much of the payload is there.
        var over = RawFrame(FrameType.Ping, 0, new byte[maxFrame + 1]);
        foreach (int have in new[] { Wire.HeaderSize, over.Length })
        {
            Assert.That(FrameReader.TryRead(over.AsSpan(0, have), maxFrame, out var oh, out var op, out int oc), Is.EqualTo(ReadResult.TooLarge));
            Assert.That((oh.Length, oh.Type, op.Length, oc), Is.EqualTo((maxFrame + 1, FrameType.Ping, 0, 0)));
        }
    }

    [Test]
    public void LengthAllOnes()
    {
        var frame = RawFrame(FrameType.Request, 5, []);
        BinaryPrimitives.WriteUInt32LittleEndian(frame, 0xFFFFFFFF);
        foreach (int max in new[] { 0, Wire.DefaultMaxFrame, int.MaxValue })
        {
            Assert.That(FrameReader.TryRead(frame, max, out var h, out var p, out int c), Is.EqualTo(ReadResult.TooLarge), $"max {max}");
            Assert.That((h.Length, h.Id, p.Length, c), Is.EqualTo((int.MaxValue, 5UL, 0, 0)), "the length saturates");
        }
    }

    /// <summary>Regression (found by the fuzz corpus): with a limit near int.MaxValue, header + length overflowed an int,
    /// the buffer looked big enough and Slice threw.</summary>
    [TestCase(int.MaxValue)]
    [TestCase(int.MaxValue - 15)]
    [TestCase(int.MaxValue - 16)]
    public void LengthNearIntMaxWithHugeLimitIsNeedMore(int len)
    {
        var frame = RawFrame(FrameType.Ping, 0, new byte[32]);
        BinaryPrimitives.WriteUInt32LittleEndian(frame, (uint)len);
        Assert.That(FrameReader.TryRead(frame, int.MaxValue, out var h, out var p, out int c), Is.EqualTo(ReadResult.NeedMore));
        Assert.That((h.Length, p.Length, c), Is.EqualTo((len, 0, 0)));
    }

    [Test]
    public void HeaderFieldsAndZeroCopyPayload()
    {
        var frame = RawFrame((FrameType)0x7E, 0x8877665544332211, [1, 2, 3], flags: 0xA5);
        frame[6] = 0xFF; // reserved bytes are not the reader's business
        var r = FrameReader.TryRead(frame, 16, out var h, out var p, out int c);
        Assert.That(r, Is.EqualTo(ReadResult.Frame));
        Assert.That(h, Is.EqualTo(new FrameHeader(3, (FrameType)0x7E, 0xA5, 0x8877665544332211)));
        Assert.That(c, Is.EqualTo(19));
        Assert.That(frame.AsSpan().Overlaps(p, out int offset) && offset == Wire.HeaderSize, Is.True, "the payload is a slice of the buffer");
    }
}
