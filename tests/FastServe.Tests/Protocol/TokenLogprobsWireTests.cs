using System.Buffers;
using System.Buffers.Binary;
using FastServe.Protocol;
using NUnit.Framework;

namespace FastServe.Tests.Protocol;

/// <summary>
/// Per-token log-probabilities on the wire (protocol 1.4): the REQUEST's second flags byte and <c>top_logprobs</c>, and
/// the DELTA's log-probability section, as docs/protocol.md lays them out, with hostile sections refused.
/// </summary>
[TestFixture]
public sealed class TokenLogprobsWireTests
{
    private static byte[] Write(Action<ArrayBufferWriter<byte>> write)
    {
        var w = new ArrayBufferWriter<byte>();
        write(w);
        return w.WrittenSpan.ToArray();
    }

    // A section of two entries: 'a' (2 alternatives) and "é" (none).
    private static byte[] Section()
    {
        var w = new ArrayBufferWriter<byte>();
        int at = DeltaLogprobs.Begin(w);
        DeltaLogprobs.WriteToken(w, 97, -0.25f, "a"u8, 2);
        DeltaLogprobs.WriteTop(w, 97, -0.25f, "a"u8);
        DeltaLogprobs.WriteTop(w, 98, -1.5f, "b"u8);
        DeltaLogprobs.WriteToken(w, 300, -3f, "é"u8, 0);
        DeltaLogprobs.End(w, at, 2);
        return w.WrittenSpan.ToArray();
    }

    [Test]
    public void RequestCarriesTheFlagAndTheCountAtOffsets36And37()
    {
        var p = RequestParams.Default with { TokenLogprobs = true, TopLogprobs = 5 };
        var frame = Write(w => FrameWriter.Request(w, 1, p, "hi"u8, default));
        var payload = frame.AsSpan(Wire.HeaderSize);
        Assert.That((payload[36], payload[37], BinaryPrimitives.ReadUInt16LittleEndian(payload[38..])), Is.EqualTo(((byte)1, (byte)5, (ushort)0)));
        Assert.That(RequestView.TryParse(payload, out var v), Is.EqualTo(RequestParseError.None));
        Assert.That((v.WantsTokenLogprobs, v.TopLogprobs), Is.EqualTo((true, (byte)5)));

        // Without the flag the count means nothing, and a request that never set it parses as before.
        payload[36] = 0;
        Assert.That(RequestView.TryParse(payload, out v), Is.EqualTo(RequestParseError.None));
        Assert.That((v.WantsTokenLogprobs, v.TopLogprobs), Is.EqualTo((false, (byte)0)));
        var plain = Write(w => FrameWriter.Request(w, 1, RequestParams.Default, "hi"u8, default)).AsSpan(Wire.HeaderSize);
        Assert.That(plain.Slice(36, 4).ToArray(), Is.EqualTo(new byte[4]));
    }

    [Test]
    public void DeltaSectionRoundTripsBehindFlagBit0()
    {
        var section = Section();
        Assert.That(section.Length, Is.EqualTo(2 + (9 + 1 + 1 + 2 * (9 + 1)) + (9 + 2 + 1)));
        var frame = Write(w => FrameWriter.Delta(w, 9, [97, 300], "aé"u8, section));
        Assert.That(frame[5], Is.EqualTo((byte)DeltaFlags.Logprobs), "header flags bit 0");
        var payload = frame.AsSpan(Wire.HeaderSize);
        Assert.That(DeltaView.TryParse(payload, out var d, frame[5]), Is.True);
        Assert.That(d.Logprobs.ToArray(), Is.EqualTo(section));
        var list = DeltaLogprobs.Read(d.Logprobs);
        Assert.That(list.Select(t => (t.Id, t.Logprob, System.Text.Encoding.UTF8.GetString(t.Bytes))),
            Is.EqualTo(new[] { (97, -0.25f, "a"), (300, -3f, "é") }));
        Assert.That(list[0].Top.Select(a => (a.Id, a.Logprob, (char)a.Bytes[0])), Is.EqualTo(new[] { (97, -0.25f, 'a'), (98, -1.5f, 'b') }));
        Assert.That(list[1].Top, Is.Empty);

        // A reader that ignores the flag still reads ids and text; a delta without a section has no flag.
        Assert.That(DeltaView.TryParse(payload, out d), Is.True);
        Assert.That((d.Count, d.Logprobs.Length), Is.EqualTo((2, 0)));
        Assert.That(Write(w => FrameWriter.Delta(w, 9, [1], "x"u8))[5], Is.Zero);
    }

    [Test]
    public void MalformedSectionsAreRefused()
    {
        var section = Section();
        byte[] Payload(byte[] s, int ids = 2) => Write(w => FrameWriter.Delta(w, 9, Enumerable.Range(1, ids).ToArray(), "t"u8, s)).AsSpan(Wire.HeaderSize).ToArray();
        byte flag = (byte)DeltaFlags.Logprobs;
        for (int cut = 0; cut < section.Length; cut++)
            Assert.That(DeltaView.TryParse(Payload(section[..cut]), out _, flag), Is.False, $"cut at {cut}");
        Assert.That(DeltaView.TryParse(Payload([.. section, 0]), out _, flag), Is.False, "a trailing byte");
        Assert.That(DeltaView.TryParse(Payload(section, ids: 1), out _, flag), Is.False, "more entries than ids");
        var tooMany = Section();
        tooMany[2 + 9 + 1] = RequestRules.MaxLogprobs + 1;
        Assert.That(DeltaView.TryParse(Payload(tooMany), out _, flag), Is.False, "k over 20");
        var lying = Section();
        lying[2 + 8] = 200;   // the first token claims 200 bytes
        Assert.That(DeltaView.TryParse(Payload(lying), out _, flag), Is.False, "a byte count past the end");
        Assert.That(DeltaView.TryParse(Payload(section), out _, flag), Is.True);
    }

    [Test]
    public void LongTokensAreCutTo255Bytes()
    {
        var w = new ArrayBufferWriter<byte>();
        int at = DeltaLogprobs.Begin(w);
        DeltaLogprobs.WriteToken(w, 1, -1f, new byte[1000], 0);
        DeltaLogprobs.End(w, at, 1);
        Assert.That(DeltaLogprobs.IsValid(w.WrittenSpan, 1), Is.True);
        Assert.That(DeltaLogprobs.Read(w.WrittenSpan)[0].Bytes, Has.Length.EqualTo(DeltaLogprobs.MaxTokenBytes));
    }
}
