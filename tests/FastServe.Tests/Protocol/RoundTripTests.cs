using System.Buffers;
using System.Text;
using FastServe.Protocol;
using NUnit.Framework;
using static FastServe.Tests.Protocol.ProtocolKit;

namespace FastServe.Tests.Protocol;

/// <summary>Every frame type through FrameWriter → FrameReader → its payload parser, field by field.</summary>
public class RoundTripTests
{
    [TestCase("", (ushort)1, (ushort)0)]
    [TestCase("fastserve-client/1.0", (ushort)1, (ushort)7)]
    [TestCase("клиент 😀", (ushort)2, (ushort)65535)]
    public void Hello(string name, ushort major, ushort minor)
    {
        var (h, p) = Single(Write(w => FrameWriter.Hello(w, Encoding.UTF8.GetBytes(name), major, minor)));
        Assert.That((h.Type, h.Flags, h.Id), Is.EqualTo((FrameType.Hello, (byte)0, 0UL)));
        Assert.That(HelloView.TryParse(p, out var v), Is.True);
        Assert.That((v.Magic, v.Major, v.Minor), Is.EqualTo((Wire.Magic, major, minor)));
        Assert.That(Encoding.UTF8.GetString(v.ClientName), Is.EqualTo(name));
    }

    [Test]
    public void HelloOk()
    {
        var sent = new HelloOk(1, 0, 1 << 20, 8191, 1024, 60_000, 8192, "fastserve 0.1 — llama");
        var (h, p) = Single(Write(w => FrameWriter.HelloOk(w, sent)));
        Assert.That(h.Type, Is.EqualTo(FrameType.HelloOk));
        Assert.That(FastServe.Protocol.HelloOk.TryParse(p, out var got), Is.True);
        Assert.That(got, Is.EqualTo(sent));
    }

    [Test]
    public void HelloOkWithEmptyName()
    {
        var sent = new HelloOk(1, 0, 65536, 1, 1, 0, 2, "");
        var (_, p) = Single(Write(w => FrameWriter.HelloOk(w, sent)));
        Assert.That(p, Has.Length.EqualTo(Wire.HelloOkFixedSize + 2 + 2 + 2));
        Assert.That(FastServe.Protocol.HelloOk.TryParse(p, out var got) && got == sent, Is.True);
    }

    /// <summary>Text and id prompts, 0 … 8 stops (1 … 256 bytes, multi-byte text), with and without a seed, every flag
    /// combination, both priorities.</summary>
    [Test]
    public void RequestAllCombinations()
    {
        string[] stopPool = ["\n", "</s>", "é", "€uro", "😀", "STOP", "x", new string('s', Wire.MaxStopBytes)];
        int cases = 0;
        Assert.Multiple(() =>
        {
            foreach (bool ids in new[] { false, true })
            for (int stops = 0; stops <= Wire.MaxStops; stops++)
            foreach (bool seeded in new[] { false, true })
            for (int bits = 0; bits < 8; bits++)
            {
                var rp = new RequestParams
                {
                    MaxTokens = 1 + stops * 100, Temperature = bits * 0.25f, TopP = 0.5f + stops / 20f, TopK = stops - 1,
                    Seed = seeded ? 0xFEDCBA98_76543210UL + (ulong)stops : null, DeadlineMs = (uint)(stops * 1000),
                    Priority = (byte)(bits & 1), IgnoreEos = (bits & 2) != 0, NoText = (bits & 4) != 0,
                };
                var stopList = stopPool.Take(stops).ToList();
                int[] promptIds = [.. Enumerable.Range(0, 5 + stops).Select(i => i * 7919 - 3)];
                byte[] text = Encoding.UTF8.GetBytes($"Prompt {stops} — ünïcödé 😀");
                ulong id = (ulong)(stops + 1) << 40 | (uint)bits;
                var (h, p) = Single(Write(w => FrameWriter.Request(w, id, rp, ids ? default : text, ids ? promptIds : default, stopList)));
                string at = $"ids={ids} stops={stops} seeded={seeded} bits={bits}";
                Assert.That((h.Type, h.Id), Is.EqualTo((FrameType.Request, id)), at);
                Assert.That(RequestView.TryParse(p, out var v), Is.EqualTo(RequestParseError.None), at);
                Assert.That((v.MaxTokens, v.Temperature, v.TopP, v.TopK, v.DeadlineMs, v.Priority),
                    Is.EqualTo(((uint)rp.MaxTokens, rp.Temperature, rp.TopP, rp.TopK, rp.DeadlineMs, rp.Priority)), at);
                var flags = (ids ? RequestFlags.PromptIds : 0) | (seeded ? RequestFlags.HasSeed : 0)
                            | (rp.IgnoreEos ? RequestFlags.IgnoreEos : 0) | (rp.NoText ? RequestFlags.NoText : 0);
                Assert.That(v.Flags, Is.EqualTo(flags), at);
                Assert.That(v.Seed, Is.EqualTo(rp.Seed ?? 0), at);
                Assert.That(v.PromptIsIds, Is.EqualTo(ids), at);
                if (ids)
                {
                    Assert.That(v.PromptIdCount, Is.EqualTo(promptIds.Length), at);
                    var gotIds = new int[v.PromptIdCount];
                    for (int i = 0; i < gotIds.Length; i++) gotIds[i] = v.PromptId(i);
                    Assert.That(gotIds, Is.EqualTo(promptIds), at);
                }
                else Assert.That(v.Prompt.ToArray(), Is.EqualTo(text), at);
                Assert.That(v.StopCount, Is.EqualTo(stops), at);
                var got = new List<string>();
                for (int i = 0; i < v.StopCount; i++) got.Add(Encoding.UTF8.GetString(v.GetStop(i)));
                Assert.That(got, Is.EqualTo(stopList), at);
                cases++;
            }
        });
        Assert.That(cases, Is.EqualTo(2 * 9 * 2 * 8));
    }

    [Test]
    public void RequestEmptyPromptIsText()
    {
        var (_, p) = Single(Write(w => FrameWriter.Request(w, 1, RequestParams.Default, default, default)));
        Assert.That(RequestView.TryParse(p, out var v), Is.EqualTo(RequestParseError.None));
        Assert.That(v.PromptIsIds, Is.False);
        Assert.That(v.Prompt.Length, Is.Zero);
        Assert.That((v.MaxTokens, v.TopP, v.StopCount), Is.EqualTo((64u, 1f, 0)));
    }

    [Test]
    public void CancelPingPong()
    {
        var (h, p) = Single(Write(w => FrameWriter.Cancel(w, 0xFFFF_FFFF_FFFF_FFFF)));
        Assert.That((h.Type, h.Id, h.Length, p.Length), Is.EqualTo((FrameType.Cancel, ulong.MaxValue, 0, 0)));
        foreach (int n in new[] { 0, 1, Wire.MaxPingBytes })
        {
            var body = Enumerable.Range(0, n).Select(i => (byte)(i * 37)).ToArray();
            foreach (bool pong in new[] { false, true })
            {
                var (ph, pp) = Single(Write(w => FrameWriter.Ping(w, body, pong)));
                Assert.That(ph.Type, Is.EqualTo(pong ? FrameType.Pong : FrameType.Ping));
                Assert.That(pp, Is.EqualTo(body));
            }
        }
    }

    [TestCase(0u, false)]
    [TestCase(10u, false)]
    [TestCase(uint.MaxValue, false)]
    [TestCase(0u, true)]
    public void LoadQuery(uint interval, bool unsubscribe)
    {
        var (h, p) = Single(Write(w => FrameWriter.LoadQuery(w, interval, unsubscribe)));
        Assert.That((h.Type, h.Flags), Is.EqualTo((FrameType.LoadQuery, (byte)(unsubscribe ? 1 : 0))));
        var r = new PayloadReader(p);
        Assert.That(r.TryU32(out uint got) && got == interval && r.Remaining == 0, Is.True);
    }

    [Test]
    public void DrainAndDrainOk()
    {
        var (h, p) = Single(Write(w => FrameWriter.Drain(w, "tøken"u8)));
        Assert.That(h.Type, Is.EqualTo(FrameType.Drain));
        var r = new PayloadReader(p);
        Assert.That(r.TryStr16(out var token), Is.True);
        Assert.That(token.ToArray(), Is.EqualTo("tøken"u8.ToArray()));
        Assert.That(r.Remaining, Is.Zero);

        var (h2, p2) = Single(Write(w => FrameWriter.DrainOk(w, 45_000)));
        Assert.That(h2.Type, Is.EqualTo(FrameType.DrainOk));
        var r2 = new PayloadReader(p2);
        Assert.That(r2.TryU32(out uint grace) && grace == 45_000 && r2.Remaining == 0, Is.True);
    }

    [TestCase(new int[0], "")]
    [TestCase(new[] { 42 }, "")]
    [TestCase(new int[0], "text only ✓")]
    [TestCase(new[] { 0, -1, int.MaxValue, int.MinValue, 128000 }, "ids and text 😀")]
    public void Delta(int[] ids, string text)
    {
        var bytes = Encoding.UTF8.GetBytes(text);
        var (h, p) = Single(Write(w => FrameWriter.Delta(w, 99, ids, bytes)));
        Assert.That((h.Type, h.Id), Is.EqualTo((FrameType.Delta, 99UL)));
        Assert.That(DeltaView.TryParse(p, out var v), Is.True);
        Assert.That(v.Count, Is.EqualTo(ids.Length));
        var got = new int[v.Count];
        for (int i = 0; i < got.Length; i++) got[i] = v.Id(i);
        Assert.That(got, Is.EqualTo(ids));
        Assert.That(Utf8Text.Decode(v.Text), Is.EqualTo(text));
    }

    [Test]
    public void FinalAllFieldsAndTimings()
    {
        var f = new FinalInfo
        {
            Status = WireStatus.Ok, Finish = WireFinish.ContextFull, Retriable = false, RetryAfterMs = 0,
            PromptTokens = 4000, CachedPromptTokens = 3968, CompletionTokens = 96, Preemptions = 3,
        };
        for (int i = 0; i < Wire.TimingSlots; i++) f.Timings[i] = 1_000_000u * (uint)i + 17;
        var (h, p) = Single(Write(w => FrameWriter.Final(w, 5, f, ReadOnlySpan<byte>.Empty, ReadOnlySpan<byte>.Empty)));
        Assert.That((h.Type, h.Id), Is.EqualTo((FrameType.Final, 5UL)));
        Assert.That(FinalInfo.TryParse(p, out var g, out var detail, out var message), Is.True);
        Assert.That((g.Status, g.Finish, g.Retriable, g.RetryAfterMs), Is.EqualTo((f.Status, f.Finish, f.Retriable, f.RetryAfterMs)));
        Assert.That((g.PromptTokens, g.CachedPromptTokens, g.CompletionTokens, g.Preemptions),
            Is.EqualTo((f.PromptTokens, f.CachedPromptTokens, f.CompletionTokens, f.Preemptions)));
        for (int i = 0; i < Wire.TimingSlots; i++) Assert.That(g.Timings[i], Is.EqualTo(f.Timings[i]), $"timing {i}");
        Assert.That(detail.Length + message.Length, Is.Zero);
    }

    [TestCase(WireStatus.Overloaded, true, 120u, "engine.queue_full", "the queue is full")]
    [TestCase(WireStatus.BadRequest, false, 0u, "prompt.too_long", "")]
    [TestCase(WireStatus.Internal, false, 0u, "", "device error: ünïcode")]
    public void FinalWithStrings(WireStatus status, bool retriable, uint retry, string detail, string message)
    {
        var f = new FinalInfo { Status = status, Retriable = retriable, RetryAfterMs = retry, PromptTokens = 9 };
        var (_, p) = Single(Write(w => FrameWriter.Final(w, 1, f, detail, message)));
        Assert.That(FinalInfo.TryParse(p, out var g, out var d, out var m), Is.True);
        Assert.That((g.Status, g.Finish, g.Retriable, g.RetryAfterMs, g.PromptTokens), Is.EqualTo((status, WireFinish.None, retriable, retry, 9u)));
        Assert.That((Utf8Text.Decode(d), Utf8Text.Decode(m)), Is.EqualTo((detail, message)));
    }

    [Test]
    public void LoadReport()
    {
        foreach (var state in Enum.GetValues<ReplicaState>())
        {
            var sent = new LoadReport(state, 65535, 1, 2, int.MaxValue, 0.125f, 3, 4, 5);
            var (h, p) = Single(Write(w => FrameWriter.LoadReport(w, sent)));
            Assert.That(h.Type, Is.EqualTo(FrameType.LoadReport));
            Assert.That(FastServe.Protocol.LoadReport.TryParse(p, out var got), Is.True);
            Assert.That(got, Is.EqualTo(sent));
        }
    }

    [Test]
    public void LoadReportClampsNegativeAndWideValues()
    {
        var (_, p) = Single(Write(w => FrameWriter.LoadReport(w, new LoadReport(ReplicaState.Ready, 70000, -1, -5, 0, 1f, -2, -3, -4))));
        Assert.That(FastServe.Protocol.LoadReport.TryParse(p, out var got), Is.True);
        Assert.That(got, Is.EqualTo(new LoadReport(ReplicaState.Ready, 65535, 0, 0, 0, 1f, 0, 0, 0)));
    }

    [TestCase(WireStatus.UnsupportedVersion, true, 0u, "protocol 2.0 is not spoken here")]
    [TestCase(WireStatus.Unavailable, false, 1500u, "")]
    public void Error(WireStatus status, bool fatal, uint retry, string message)
    {
        var (h, p) = Single(Write(w => FrameWriter.Error(w, status, fatal, retry, message)));
        Assert.That((h.Type, h.Flags, h.Id), Is.EqualTo((FrameType.Error, (byte)(fatal ? 1 : 0), 0UL)));
        Assert.That(ErrorInfo.TryParse(p, h.Flags, out var e), Is.True);
        Assert.That(e, Is.EqualTo(new ErrorInfo(status, fatal, retry, message)));
    }

    [Test]
    public void EveryTypeInOneStream()
    {
        var w = new ArrayBufferWriter<byte>();
        FrameWriter.Hello(w, "c"u8);
        FrameWriter.HelloOk(w, new HelloOk(1, 0, 1024, 1, 1, 1, 1, "s"));
        FrameWriter.Request(w, 1, RequestParams.Default, "p"u8, default, ["."]);
        FrameWriter.Cancel(w, 1);
        FrameWriter.Ping(w, "x"u8);
        FrameWriter.Ping(w, "x"u8, pong: true);
        FrameWriter.LoadQuery(w, 0);
        FrameWriter.Drain(w, "t"u8);
        FrameWriter.DrainOk(w, 1);
        FrameWriter.Admin(w, "t"u8, "status"u8);
        FrameWriter.AdminOk(w, "{}");
        FrameWriter.Delta(w, 1, [5], "a"u8);
        FrameWriter.Final(w, 1, default, "", "");
        FrameWriter.LoadReport(w, default);
        FrameWriter.Error(w, WireStatus.Internal, false, 0, "e");
        var types = new List<FrameType>();
        var buf = w.WrittenSpan;
        while (FrameReader.TryRead(buf, 1024, out var h, out _, out int consumed) == ReadResult.Frame)
        {
            types.Add(h.Type);
            buf = buf[consumed..];
        }
        Assert.That(buf.Length, Is.Zero);
        Assert.That(types, Is.EquivalentTo(Enum.GetValues<FrameType>()));
    }
}
