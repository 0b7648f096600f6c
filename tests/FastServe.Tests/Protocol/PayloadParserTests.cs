using System.Buffers.Binary;
using System.Text;
using FastServe.Protocol;
using NUnit.Framework;
using static FastServe.Tests.Protocol.ProtocolKit;

namespace FastServe.Tests.Protocol;

/// <summary>The payload parsers on malformed input: each refusal with its error, and every truncation refused.</summary>
public class PayloadParserTests
{
    private static byte[] RequestPayload(bool ids, params string[] stops)
    {
        var rp = new RequestParams { MaxTokens = 16, TopP = 1f };
        var frame = ids
            ? Write(w => FrameWriter.Request(w, 1, rp, default, [1, 2, 3], stops))
            : Write(w => FrameWriter.Request(w, 1, rp, "prompt"u8, default, stops));
        return Single(frame).Payload;
    }

    private static RequestParseError Parse(byte[] payload) => RequestView.TryParse(payload, out _);

    [Test]
    public void RequestEveryTruncation([Values] bool ids)
    {
        var p = RequestPayload(ids, "ab", "\n");
        int promptEnd = Wire.RequestFixedSize + (ids ? 12 : 6);
        Assert.That(Parse(p), Is.EqualTo(RequestParseError.None));
        for (int n = 0; n < p.Length; n++)
        {
            var expect = n < Wire.RequestFixedSize ? RequestParseError.Truncated
                : n < promptEnd ? RequestParseError.PromptLength
                : RequestParseError.Truncated; // inside the stop strings
            Assert.That(Parse(p[..n]), Is.EqualTo(expect), $"cut at {n} of {p.Length}");
        }
    }

    [TestCase(0x40000000u, true)] // 4 × prompt_len wraps to 0 in 32 bits
    [TestCase(0x40000001u, true)] // wraps to 4
    [TestCase(0xFFFFFFFFu, true)]
    [TestCase(0xFFFFFFFFu, false)]
    [TestCase(0x80000000u, false)]
    public void RequestPromptLengthOverflow(uint promptLen, bool ids)
    {
        var p = RequestPayload(ids);
        BinaryPrimitives.WriteUInt32LittleEndian(p.AsSpan(32), promptLen);
        Assert.That(Parse(p), Is.EqualTo(RequestParseError.PromptLength));
        Assert.That(RequestView.DetailCode(RequestParseError.PromptLength), Is.EqualTo("request.prompt_length"));
    }

    [Test]
    public void RequestPromptOneLongerThanPayload([Values] bool ids)
    {
        var p = RequestPayload(ids);
        BinaryPrimitives.WriteUInt32LittleEndian(p.AsSpan(32), ids ? 4u : 7u);
        Assert.That(Parse(p), Is.EqualTo(RequestParseError.PromptLength));
        // And ids when the bytes were counted as text: 6 bytes are not 6 ids.
        var t = RequestPayload(false);
        t[29] |= (byte)RequestFlags.PromptIds;
        Assert.That(Parse(t), Is.EqualTo(RequestParseError.PromptLength));
    }

    [TestCase(9)]
    [TestCase(65535)]
    public void RequestTooManyStops(int count)
    {
        var p = RequestPayload(false, "1", "2", "3", "4", "5", "6", "7", "8");
        Assert.That(Parse(p), Is.EqualTo(RequestParseError.None), "eight stops are allowed");
        BinaryPrimitives.WriteUInt16LittleEndian(p.AsSpan(30), (ushort)count);
        Assert.That(Parse(p), Is.EqualTo(RequestParseError.TooManyStops));
        Assert.That(RequestView.DetailCode(RequestParseError.TooManyStops), Is.EqualTo("request.too_many_stops"));
    }

    [Test]
    public void RequestEmptyOrOversizeStop()
    {
        Assert.That(Parse(RequestPayload(false, new string('a', Wire.MaxStopBytes))), Is.EqualTo(RequestParseError.None));
        Assert.That(Parse(RequestPayload(false, new string('a', Wire.MaxStopBytes + 1))), Is.EqualTo(RequestParseError.BadStop));
        Assert.That(Parse(RequestPayload(false, "ok", new string('é', 129))), Is.EqualTo(RequestParseError.BadStop), "258 bytes");
        Assert.That(Parse(RequestPayload(false, "ok", "")), Is.EqualTo(RequestParseError.BadStop));
        Assert.That(Parse(RequestPayload(true, "")), Is.EqualTo(RequestParseError.BadStop));
        Assert.That(RequestView.DetailCode(RequestParseError.BadStop), Is.EqualTo("request.bad_stop"));
    }

    [Test]
    public void RequestTrailingBytes([Values(0, 1, 2)] int stops, [Values] bool ids)
    {
        var p = RequestPayload(ids, [.. new[] { "x", "yz" }.Take(stops)]);
        Assert.That(Parse(p), Is.EqualTo(RequestParseError.None));
        Assert.That(Parse([.. p, 0]), Is.EqualTo(RequestParseError.TrailingBytes));
        Assert.That(Parse([.. p, 1, 0, 0x41]), Is.EqualTo(RequestParseError.TrailingBytes), "a stop that stop_count does not count");
        Assert.That(RequestView.DetailCode(RequestParseError.TrailingBytes), Is.EqualTo("frame.trailing_bytes"));
        Assert.That(RequestView.DetailCode(RequestParseError.Truncated), Is.EqualTo("frame.truncated"));
        Assert.That(RequestView.DetailCode(RequestParseError.None), Is.Empty);
    }

    [Test]
    public void RequestGetStopOutOfRangeIsEmpty()
    {
        var p = RequestPayload(false, "one", "two");
        Assert.That(RequestView.TryParse(p, out var v), Is.EqualTo(RequestParseError.None));
        Assert.That(Encoding.UTF8.GetString(v.GetStop(1)), Is.EqualTo("two"));
        Assert.That(v.GetStop(2).IsEmpty && v.GetStop(-1).IsEmpty && v.GetStop(100).IsEmpty, Is.True);
    }

    [Test]
    public void RequestRefusalLeavesDefaultView()
    {
        var p = RequestPayload(false, "s");
        Assert.That(RequestView.TryParse(p[..^1], out var v), Is.EqualTo(RequestParseError.Truncated));
        Assert.That(v.Prompt.IsEmpty && v.Stops.IsEmpty && v.StopCount == 0 && v.MaxTokens == 0, Is.True);
    }

    [Test]
    public void FinalEveryTruncation()
    {
        var p = Single(Write(w => FrameWriter.Final(w, 1, SampleFinal(), "detail.code"u8, "a message"u8))).Payload;
        Assert.That(FinalInfo.TryParse(p, out _, out _, out _), Is.True);
        for (int n = 0; n < p.Length; n++) Assert.That(FinalInfo.TryParse(p[..n], out _, out _, out _), Is.False, $"cut at {n}");
        // Longer strings than the payload holds.
        var bad = (byte[])p.Clone();
        BinaryPrimitives.WriteUInt16LittleEndian(bad.AsSpan(Wire.FinalFixedSize), 0xFFFF);
        Assert.That(FinalInfo.TryParse(bad, out _, out _, out _), Is.False);
        Assert.That(FinalInfo.TryParse([.. p, 9, 9], out _, out var d, out var m), Is.True, "later minor versions may append fields");
        Assert.That((Encoding.UTF8.GetString(d), Encoding.UTF8.GetString(m)), Is.EqualTo(("detail.code", "a message")));
    }

    [Test]
    public void DeltaEveryTruncation()
    {
        var p = Single(Write(w => FrameWriter.Delta(w, 1, [1, 2, 3], "tëxt"u8))).Payload;
        Assert.That(DeltaView.TryParse(p, out _), Is.True);
        for (int n = 0; n < p.Length; n++) Assert.That(DeltaView.TryParse(p[..n], out _), Is.False, $"cut at {n}");
    }

    [TestCase(0x40000000u, 0u)] // 4 × n_ids wraps to 0 in 32 bits
    [TestCase(0x40000001u, 0u)]
    [TestCase(0xFFFFFFFFu, 0u)]
    [TestCase(0u, 0xFFFFFFFFu)]
    [TestCase(0u, 0x80000000u)]
    [TestCase(2u, 0xFFFFFFF8u)]
    public void DeltaHugeCounts(uint n, uint textLen)
    {
        var p = new byte[8 + 16];
        BinaryPrimitives.WriteUInt32LittleEndian(p, n);
        BinaryPrimitives.WriteUInt32LittleEndian(p.AsSpan(4), textLen);
        Assert.That(DeltaView.TryParse(p, out var v), Is.False);
        Assert.That(v.IdBytes.IsEmpty && v.Text.IsEmpty, Is.True);
    }

    [Test]
    public void LoadReportEveryTruncation()
    {
        var p = Single(Write(w => FrameWriter.LoadReport(w, new LoadReport(ReplicaState.Ready, 1, 2, 3, 4, 0.5f, 6, 7, 8, "m", "v")))).Payload;
        Assert.That(FastServe.Protocol.LoadReport.TryParse(p, out var full) && full.Model == "m" && full.ModelVersion == "v", Is.True);
        for (int n = 0; n < Wire.LoadReportSize; n++) Assert.That(FastServe.Protocol.LoadReport.TryParse(p[..n], out _), Is.False, $"cut at {n}");
        // From the 1.1 size on it parses (an older replica's report); the model only when both strings are whole.
        for (int n = Wire.LoadReportSize; n < p.Length; n++)
            Assert.That(FastServe.Protocol.LoadReport.TryParse(p[..n], out var old) && old.Model == "" && old.ModelVersion == "" && old.AgeMs == 8, Is.True, $"cut at {n}");
        var wide = (byte[])p.Clone();
        BinaryPrimitives.WriteUInt32LittleEndian(wide.AsSpan(4), uint.MaxValue);
        Assert.That(FastServe.Protocol.LoadReport.TryParse(wide, out var r) && r.Running == int.MaxValue, Is.True, "u32 saturates");
    }

    [Test]
    public void HelloOkEveryTruncation()
    {
        var p = Single(Write(w => FrameWriter.HelloOk(w, new HelloOk(1, 0, 1024, 2, 3, 4, 5, "server", "gec", "v1")))).Payload;
        Assert.That(FastServe.Protocol.HelloOk.TryParse(p, out var full) && full.Model == "gec" && full.ModelVersion == "v1", Is.True);
        int v11 = Wire.HelloOkFixedSize + 2 + "server".Length;
        for (int n = 0; n < v11; n++) Assert.That(FastServe.Protocol.HelloOk.TryParse(p[..n], out _), Is.False, $"cut at {n}");
        // From the 1.1 length on it parses (an older server's HELLO_OK); the model only when both strings are whole.
        for (int n = v11; n < p.Length; n++)
            Assert.That(FastServe.Protocol.HelloOk.TryParse(p[..n], out var old) && old.ServerName == "server" && old.Model == "", Is.True, $"cut at {n}");
        var wide = (byte[])p.Clone();
        BinaryPrimitives.WriteUInt32LittleEndian(wide.AsSpan(4), uint.MaxValue);
        Assert.That(FastServe.Protocol.HelloOk.TryParse(wide, out var h) && h.MaxFrame == int.MaxValue, Is.True, "u32 saturates");
    }

    [Test]
    public void ErrorEveryTruncation()
    {
        var p = Single(Write(w => FrameWriter.Error(w, WireStatus.Draining, false, 5, "going away"))).Payload;
        Assert.That(ErrorInfo.TryParse(p, 0, out _), Is.True);
        for (int n = 0; n < p.Length; n++) Assert.That(ErrorInfo.TryParse(p[..n], 0, out _), Is.False, $"cut at {n}");
        Assert.That(ErrorInfo.TryParse(p, 1, out var e) && e.Fatal, Is.True, "fatal is header flags bit 0");
        Assert.That(ErrorInfo.TryParse(p, 0xFE, out e) && !e.Fatal, Is.True, "other flag bits are ignored");
    }

    [Test]
    public void ErrorWithInvalidUtf8DecodesWithReplacement()
    {
        byte[] payload = [2, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0x61, 0xFF, 0x62];
        Assert.That(ErrorInfo.TryParse(payload, 0, out var e), Is.True);
        Assert.That(e.Message, Is.EqualTo("a\uFFFDb"));
    }

    [Test]
    public void HelloTruncationsAndOptionalName()
    {
        var p = Single(Write(w => FrameWriter.Hello(w, "name"u8))).Payload;
        for (int n = 0; n < 8; n++) Assert.That(HelloView.TryParse(p[..n], out _), Is.False, $"cut at {n}");
        for (int n = 8; n < p.Length; n++)
        {
            Assert.That(HelloView.TryParse(p[..n], out var v), Is.True, $"cut at {n}: the name is optional");
            Assert.That(v.ClientName.IsEmpty && v.Magic == Wire.Magic, Is.True, $"cut at {n}");
        }
        Assert.That(HelloView.TryParse(p, out var whole) && whole.ClientName.SequenceEqual("name"u8), Is.True);
    }

    [Test]
    public void PayloadReaderNeverReadsPastTheEnd()
    {
        var r = new PayloadReader([1, 2, 3]);
        Assert.That(r.TryU32(out uint u32) || u32 != 0, Is.False);
        Assert.That(r.TryU16(out ushort u16) && u16 == 0x0201, Is.True);
        Assert.That(r.TryU16(out _) || r.TryU64(out _) || r.TryF32(out _) || r.TryI32(out _), Is.False);
        Assert.That(r.TryBytes(-1, out _) || r.TryBytes(2, out _), Is.False);
        Assert.That(r.TryU8(out byte b) && b == 3 && r.Remaining == 0 && r.Position == 3, Is.True);
        Assert.That(r.TryU8(out _) || r.TryStr16(out _), Is.False);
        Assert.That(r.TryBytes(0, out var empty) && empty.IsEmpty, Is.True);
    }

    /// <summary>Regression: a str16 over 65535 bytes is cut at a UTF-8 boundary, but the frame length was computed from
    /// the uncut 65535, leaving unwritten bytes inside the frame (REQUEST then read as trailing bytes or a bad stop).</summary>
    [Test]
    public void LongStringsAreCutAndTheFrameLengthMatches()
    {
        // 65534 ASCII bytes then "é": the 65535-byte cut would split the é, so 65534 bytes go out.
        string s = new string('a', 65534) + "é";
        var bytes = Encoding.UTF8.GetBytes(s);
        const int Cut = 65534;

        var (_, fin) = Single(Write(w => FrameWriter.Final(w, 1, default, bytes, "m"u8)));
        Assert.That(fin, Has.Length.EqualTo(Wire.FinalFixedSize + 2 + Cut + 2 + 1));
        Assert.That(FinalInfo.TryParse(fin, out _, out var d, out var m) && d.Length == Cut && m.SequenceEqual("m"u8), Is.True);

        var (_, err) = Single(Write(w => FrameWriter.Error(w, WireStatus.Internal, false, 0, s)));
        Assert.That(err, Has.Length.EqualTo(8 + 2 + Cut));
        Assert.That(ErrorInfo.TryParse(err, 0, out var e) && e.Message == s[..Cut], Is.True);

        var (_, ok) = Single(Write(w => FrameWriter.HelloOk(w, new HelloOk(1, 0, 1, 1, 1, 1, 1, s))));
        Assert.That(ok, Has.Length.EqualTo(Wire.HelloOkFixedSize + 2 + Cut + 2 + 2));

        var (_, hello) = Single(Write(w => FrameWriter.Hello(w, bytes)));
        Assert.That(hello, Has.Length.EqualTo(8 + 2 + Cut));

        var (_, drain) = Single(Write(w => FrameWriter.Drain(w, bytes)));
        Assert.That(drain, Has.Length.EqualTo(2 + Cut));

        var (_, req) = Single(Write(w => FrameWriter.Request(w, 1, RequestParams.Default, "p"u8, default, [s])));
        Assert.That(req, Has.Length.EqualTo(Wire.RequestFixedSize + 1 + 2 + Cut));
        Assert.That(BinaryPrimitives.ReadUInt16LittleEndian(req.AsSpan(Wire.RequestFixedSize + 1)), Is.EqualTo(Cut));
        Assert.That(Parse(req), Is.EqualTo(RequestParseError.BadStop), "too long for a stop, but well formed");

        // Exactly 65535 bytes need no cut.
        var (_, max) = Single(Write(w => FrameWriter.Drain(w, new byte[65535])));
        Assert.That(max, Has.Length.EqualTo(2 + 65535));
    }
}
