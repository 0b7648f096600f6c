using System.Buffers.Binary;
using System.Text;
using System.Text.RegularExpressions;
using FastServe.Protocol;
using NUnit.Framework;
using static FastServe.Tests.Protocol.ProtocolKit;

namespace FastServe.Tests.Protocol;

/// <summary>
/// Ties docs/protocol.md to the codec. The layouts below are written once, from the spec; one set of tests checks them
/// against the tables and payload descriptions parsed out of docs/protocol.md, another builds the expected bytes of
/// every frame from them, field by field at the documented offsets, and compares with <see cref="FrameWriter"/>.
/// Editing either the spec or the codec alone fails here. REQUEST, DELTA, FINAL and LOAD_REPORT are also checked
/// against bytes written out by hand.
/// </summary>
public class SpecLayoutTests
{
    private readonly record struct Field(string Offset, string Type, string Doc);

    private static readonly Field[] Header =
    [
        new("0", "u32", "`length`"), new("4", "u8", "`type`"), new("5", "u8", "`flags`"), new("6", "u16", "reserved"),
        new("8", "u64", "`id`"),
    ];

    private static readonly Field[] Request =
    [
        new("0", "u32", "max_tokens"), new("4", "f32", "temperature"), new("8", "f32", "top_p"), new("12", "i32", "top_k"),
        new("16", "u64", "seed"), new("24", "u32", "deadline_ms"), new("28", "u8", "priority"), new("29", "u8", "request flags"),
        new("30", "u16", "stop_count"), new("32", "u32", "prompt_len"), new("36", "u8", "request flags 2 (1.4)"),
        new("37", "u8", "`top_logprobs` (1.4)"), new("38", "u16", "reserved"),
        new("40", "…", "the prompt"), new("…", "…", "stop_count × str16 stop strings"),
        new("…", "str16", "with `route` (1.2): the model"), new("…", "str16", "with `route`: the model version"),
        new("…", "str16", "with `route`: the routing key"),
        new("…", "u32", "with `resume` (1.3): n"), new("…", "n × u32", "with `resume`: those ids"),
        new("…", "u32", "with `resume`: the bytes of text already delivered"),
    ];

    private static readonly Field[] Final =
    [
        new("0", "u16", "status"), new("2", "u8", "finish reason"), new("3", "u8", "flags"), new("4", "u32", "retry_after_ms"),
        new("8", "u32", "prompt tokens"), new("12", "u32", "prompt tokens served from the prefix cache"),
        new("16", "u32", "completion tokens"), new("20", "u32", "preemptions"), new("24", "8 × u32", "hand-off timing"),
        new("56", "str16", "error detail code"), new("…", "str16", "message"),
        new("…", "f32", "1.2, only for a request with `logprobs`"), new("…", "f32", "1.2, only with `logprobs`"),
    ];

    private static readonly Field[] LoadReportLayout =
    [
        new("0", "u8", "state"), new("1", "u8", "reserved"), new("2", "u16", "worker processes"),
        new("4", "u32", "requests running"), new("8", "u32", "requests queued"), new("12", "u32", "requests in flight"),
        new("16", "f32", "KV-cache free fraction"), new("20", "u32", "estimated queue wait"),
        new("24", "u32", "max running sequences"), new("28", "u32", "age of the engine data"),
        new("32", "str16", "1.2: the model"), new("…", "str16", "1.2: its version"),
    ];

    // Payloads described in the frame-type tables: "type name" items in order, packed from offset 0.
    private static readonly Dictionary<string, string[]> Prose = new()
    {
        ["HELLO"] = ["u32 magic", "u16 major", "u16 minor", "str16 client name", "str16 API key"],
        ["LOAD_QUERY"] = ["u32 interval_ms"],
        ["DRAIN"] = ["str16 admin token"],
        ["HELLO_OK"] = ["u16 major", "u16 minor", "u32 max_frame", "u32 max_prompt_tokens", "u32 max_in_flight", "u32 idle_timeout_ms",
            "u32 context_length", "str16 server name", "str16 model", "str16 model version"],
        ["ADMIN"] = ["str16 admin token", "str16 command"],
        ["ADMIN_OK"] = ["str16 the command's result"],
        ["DELTA"] = ["u32 n_ids", "u32 text_bytes", "n_ids × u32 token ids", "text_bytes of UTF-8 text"],
        ["DRAIN_OK"] = ["u32 grace_ms"],
        ["ERROR"] = ["u16 status", "u16 reserved", "u32 retry_after_ms", "str16 message"],
    };

    // ---- the spec ------------------------------------------------------------------------------------------------

    private static readonly Lazy<string[]> DocLines = new(() =>
        File.ReadAllLines(Path.Combine(TestModels.RepoRoot, "docs", "protocol.md")));

    /// <summary>Cells of the <paramref name="nth"/> table after the line <paramref name="heading"/> (header row skipped).</summary>
    private static List<string[]> Table(string heading, int nth = 0)
    {
        var lines = DocLines.Value;
        int i = Array.FindIndex(lines, l => l.Trim() == heading);
        Assert.That(i, Is.GreaterThanOrEqualTo(0), $"'{heading}' is not in docs/protocol.md");
        for (int t = 0; ; t++)
        {
            while (i < lines.Length && !lines[i].StartsWith('|')) i++;
            Assert.That(i, Is.LessThan(lines.Length), $"table {nth} after '{heading}' is missing");
            i += 2; // header row and separator
            var rows = new List<string[]>();
            for (; i < lines.Length && lines[i].StartsWith('|'); i++)
                rows.Add(lines[i].Trim().Trim('|').Split('|').Select(c => c.Trim()).ToArray());
            if (t == nth) return rows;
        }
    }

    private static void AssertTable(string heading, Field[] layout)
    {
        var rows = Table(heading);
        Assert.That(rows.Select(r => $"{r[0]} {r[1]}"), Is.EqualTo(layout.Select(f => $"{f.Offset} {f.Type}")), heading);
        for (int k = 0; k < rows.Count; k++) Assert.That(rows[k][2], Does.StartWith(layout[k].Doc), heading);
    }

    private static Dictionary<string, (int Code, string Payload)> FrameTypeRows() =>
        Table("## Frame types", 0).Concat(Table("## Frame types", 1))
            .ToDictionary(r => r[1].Trim('`'), r => (Convert.ToInt32(r[0], 16), r[3]));

    [Test]
    public void HeaderTableMatchesLayout()
    {
        AssertTable("## Frame", Header);
        Assert.That(Wire.HeaderSize, Is.EqualTo(16));
    }

    [Test]
    public void RequestTableMatchesLayout()
    {
        AssertTable("### REQUEST payload", Request);
        Assert.That(Wire.RequestFixedSize, Is.EqualTo(40));
        string flags = Table("### REQUEST payload")[7][2];
        Assert.That(Bits(flags), Is.EquivalentTo(new Dictionary<int, string>
        {
            [(int)RequestFlags.PromptIds] = "prompt_ids", [(int)RequestFlags.HasSeed] = "has_seed",
            [(int)RequestFlags.IgnoreEos] = "ignore_eos", [(int)RequestFlags.NoText] = "no_text",
            [(int)RequestFlags.Whole] = "whole", [(int)RequestFlags.Route] = "route", [(int)RequestFlags.Logprobs] = "logprobs",
            [(int)RequestFlags.Resume] = "resume",
        }));
        Assert.That(Table("### REQUEST payload")[8][2], Does.Contain($"≤ {Wire.MaxStops}"));
        Assert.That(Table("### REQUEST payload")[14][2], Does.Contain($"each 1 … {Wire.MaxStopBytes} bytes"));
        Assert.That(Bits(Table("### REQUEST payload")[10][2]), Is.EquivalentTo(new Dictionary<int, string> { [(int)RequestFlags2.TokenLogprobs] = "token_logprobs" }));
        Assert.That(Table("### REQUEST payload")[11][2], Does.Contain($"0 … {RequestRules.MaxLogprobs}"));
    }

    [Test]
    public void FinalTableMatchesLayout()
    {
        AssertTable("### FINAL payload", Final);
        Assert.That(Wire.FinalFixedSize, Is.EqualTo(56));
        var rows = Table("### FINAL payload");
        // Finish reasons and timing slots, by value and by name.
        var finish = Regex.Matches(rows[1][2], @"(\d) `(\w+)`").ToDictionary(m => int.Parse(m.Groups[1].Value), m => m.Groups[2].Value);
        Assert.That(finish, Is.EquivalentTo(Enum.GetValues<WireFinish>().Where(f => f != WireFinish.None)
            .ToDictionary(f => (int)f, f => WireNames.Of(f))));
        var slots = Regex.Matches(rows[8][2], "`(\\w+)`").Select(m => m.Groups[1].Value).ToArray();
        Assert.That(slots, Is.EqualTo(Enum.GetValues<Timing>().Select(t => Snake(t.ToString()))));
        Assert.That(rows[8][2], Does.Contain("then, not a hand-off, `device`"), "the last slot is a duration, not a hand-off");
        Assert.That(Wire.TimingSlots, Is.EqualTo(8));
        Assert.That(rows[2][2], Does.StartWith("flags: bit 0 `retriable`"));
    }

    [Test]
    public void LoadReportTableMatchesLayout()
    {
        AssertTable("### LOAD_REPORT payload", LoadReportLayout);
        Assert.That(Wire.LoadReportSize, Is.EqualTo(32));
        var states = Regex.Matches(Table("### LOAD_REPORT payload")[0][2], @"(\d) `(\w+)`")
            .ToDictionary(m => int.Parse(m.Groups[1].Value), m => m.Groups[2].Value);
        Assert.That(states, Is.EquivalentTo(Enum.GetValues<ReplicaState>().ToDictionary(s => (int)s, s => WireNames.Of(s))));
    }

    [Test]
    public void FrameTypeCodesMatchSpec()
    {
        var rows = FrameTypeRows();
        Assert.That(rows.ToDictionary(r => r.Key, r => r.Value.Code),
            Is.EquivalentTo(Enum.GetValues<FrameType>().ToDictionary(t => Snake(t.ToString()).ToUpperInvariant(), t => (int)t)));
        Assert.That(rows["HELLO"].Payload, Does.Contain($"0x{Wire.Magic:X8}").And.Contain("`FSRV`"));
        Assert.That(Encoding.ASCII.GetString(BitConverter.GetBytes(Wire.Magic)), Is.EqualTo("FSRV"));
        Assert.That(rows["PING"].Payload, Does.StartWith($"any ≤ {Wire.MaxPingBytes} bytes"));
        Assert.That(rows["CANCEL"].Payload, Does.StartWith("empty"));
    }

    [TestCase("HELLO"), TestCase("LOAD_QUERY"), TestCase("DRAIN"), TestCase("HELLO_OK"), TestCase("DELTA"), TestCase("DRAIN_OK"), TestCase("ERROR"),
     TestCase("ADMIN"), TestCase("ADMIN_OK")]
    public void PayloadDescriptionMatchesLayout(string frame)
    {
        string text = FrameTypeRows()[frame].Payload;
        int stop = text.IndexOf(". ", StringComparison.Ordinal);
        if (stop >= 0) text = text[..stop];
        var items = text.Split(", ");
        var expect = Prose[frame];
        Assert.That(items, Has.Length.GreaterThanOrEqualTo(expect.Length));
        for (int k = 0; k < expect.Length; k++) Assert.That(items[k], Does.StartWith(expect[k]), frame);
        if (frame != "LOAD_QUERY") Assert.That(items, Has.Length.EqualTo(expect.Length), frame);
    }

    [Test]
    public void StatusCodesMatchSpec()
    {
        var rows = Table("## Status codes");
        Assert.That(rows.Select(r => (int.Parse(r[0]), r[1].Trim('`'))),
            Is.EqualTo(WireNames.All.Select(s => ((int)s, WireNames.Of(s)))));
        foreach (var r in rows)
        {
            var s = (WireStatus)int.Parse(r[0]);
            if (r[2] != "") Assert.That(WireNames.IsRetriable(s), Is.EqualTo(r[2] == "yes"), r[1]);
            else Assert.That(WireNames.IsRetriable(s), Is.False, r[1]);
        }
        Assert.That(DocLines.Value, Has.Some.Contains("default 1 MiB"));
        Assert.That(Wire.DefaultMaxFrame, Is.EqualTo(1 << 20));
    }

    private static Dictionary<int, string> Bits(string text) =>
        Regex.Matches(text, @"bit (\d) `(\w+)`").ToDictionary(m => 1 << int.Parse(m.Groups[1].Value), m => m.Groups[2].Value);

    private static string Snake(string pascal) => Regex.Replace(pascal, "(?<=[a-z])([A-Z])", "_$1").ToLowerInvariant();

    // ---- expected bytes from the layouts --------------------------------------------------------------------------

    private static int Off(Field[] layout, string doc) => int.Parse(layout.Single(f => f.Doc == doc).Offset);

    /// <summary>Writes <paramref name="v"/> at the field's documented offset with its documented type.</summary>
    private static void Put(byte[] p, Field[] layout, string doc, ulong v)
    {
        var f = layout.Single(x => x.Doc == doc);
        var at = p.AsSpan(int.Parse(f.Offset));
        switch (f.Type)
        {
            case "u8": at[0] = checked((byte)v); break;
            case "u16": BinaryPrimitives.WriteUInt16LittleEndian(at, checked((ushort)v)); break;
            case "u32": case "i32": case "f32": BinaryPrimitives.WriteUInt32LittleEndian(at, checked((uint)v)); break;
            case "u64": BinaryPrimitives.WriteUInt64LittleEndian(at, v); break;
            default: throw new ArgumentException($"cannot put a {f.Type}");
        }
    }

    private static ulong F32(float f) => BitConverter.SingleToUInt32Bits(f);

    private static byte[] Str16(string s)
    {
        var b = Encoding.UTF8.GetBytes(s);
        var r = new byte[2 + b.Length];
        BinaryPrimitives.WriteUInt16LittleEndian(r, (ushort)b.Length);
        b.CopyTo(r, 2);
        return r;
    }

    /// <summary>A payload described in prose: values packed in the documented order with the documented types.</summary>
    private static byte[] Packed(string frame, params object[] values)
    {
        var items = Prose[frame];
        var b = new List<byte>();
        for (int k = 0; k < values.Length; k++)
        {
            string type = items[k].Split(' ')[0];
            var tmp = new byte[8];
            switch (type)
            {
                case "u16": BinaryPrimitives.WriteUInt16LittleEndian(tmp, Convert.ToUInt16(values[k])); b.AddRange(tmp[..2]); break;
                case "u32": BinaryPrimitives.WriteUInt32LittleEndian(tmp, Convert.ToUInt32(values[k])); b.AddRange(tmp[..4]); break;
                case "str16": b.AddRange(Str16((string)values[k])); break;
                default: b.AddRange((byte[])values[k]); break; // DELTA's variable parts
            }
        }
        return b.ToArray();
    }

    /// <summary>The header from the layout, then the payload.</summary>
    private static byte[] Framed(FrameType type, byte flags, ulong id, byte[] payload)
    {
        var h = new byte[Wire.HeaderSize];
        Put(h, Header, "`length`", (ulong)payload.Length);
        Put(h, Header, "`type`", (byte)type);
        Put(h, Header, "`flags`", flags);
        Put(h, Header, "`id`", id);
        return [.. h, .. payload];
    }

    [Test]
    public void RequestBytesFollowTheLayout([Values] bool ids)
    {
        var rp = new RequestParams
        {
            MaxTokens = 300, Temperature = 0.8f, TopP = 0.9f, TopK = -1, Seed = 0xDEADBEEF_01020304, DeadlineMs = 1500, Priority = 1,
            IgnoreEos = true, NoText = ids, TokenLogprobs = ids, TopLogprobs = 7,
        };
        byte[] prompt = ids ? [7, 0, 0, 0, 0x39, 0x30, 0, 0] : "Hello"u8.ToArray();
        var actual = Write(w => FrameWriter.Request(w, 42, rp, ids ? default : prompt, ids ? [7, 12345] : default, ["\n", "END"]));

        var p = new byte[Off(Request, "the prompt")];
        Put(p, Request, "max_tokens", 300);
        Put(p, Request, "temperature", F32(0.8f));
        Put(p, Request, "top_p", F32(0.9f));
        Put(p, Request, "top_k", 0xFFFFFFFF);
        Put(p, Request, "seed", 0xDEADBEEF_01020304);
        Put(p, Request, "deadline_ms", 1500);
        Put(p, Request, "priority", 1);
        Put(p, Request, "request flags", (ulong)((ids ? 1 : 0) | 2 | 4 | (ids ? 8 : 0)));
        Put(p, Request, "stop_count", 2);
        Put(p, Request, "prompt_len", ids ? 2u : 5u);
        Put(p, Request, "request flags 2 (1.4)", ids ? 1u : 0u);
        Put(p, Request, "`top_logprobs` (1.4)", ids ? 7u : 0u);
        Put(p, Request, "reserved", 0);
        var expected = Framed(FrameType.Request, 0, 42, [.. p, .. prompt, .. Str16("\n"), .. Str16("END")]);
        Assert.That(actual, Is.EqualTo(expected));
    }

    [Test]
    public void FinalBytesFollowTheLayout()
    {
        var f = SampleFinal();
        var actual = Write(w => FrameWriter.Final(w, 9, f, "q"u8, "m!"u8));
        var p = new byte[Wire.FinalFixedSize];
        Put(p, Final, "status", (ulong)WireStatus.Overloaded);
        Put(p, Final, "finish reason", 0);
        Put(p, Final, "flags", 1);
        Put(p, Final, "retry_after_ms", 250);
        Put(p, Final, "prompt tokens", 10);
        Put(p, Final, "prompt tokens served from the prefix cache", 4);
        Put(p, Final, "completion tokens", 0);
        Put(p, Final, "preemptions", 2);
        int t0 = Off(Final, "hand-off timing");
        for (int i = 0; i < 8; i++) BinaryPrimitives.WriteUInt32LittleEndian(p.AsSpan(t0 + 4 * i), i < 7 ? (uint)(i + 1) : 0);
        Assert.That(Off(Final, "error detail code"), Is.EqualTo(p.Length));
        Assert.That(actual, Is.EqualTo(Framed(FrameType.Final, 0, 9, [.. p, .. Str16("q"), .. Str16("m!")])));
    }

    [Test]
    public void LoadReportBytesFollowTheLayout()
    {
        var actual = Write(w => FrameWriter.LoadReport(w, new LoadReport(ReplicaState.Draining, 3, 5, 6, 7, 0.25f, 8, 256, 9, "gec", "v2")));
        var p = new byte[Wire.LoadReportSize];
        Put(p, LoadReportLayout, "state", 2);
        Put(p, LoadReportLayout, "reserved", 0);
        Put(p, LoadReportLayout, "worker processes", 3);
        Put(p, LoadReportLayout, "requests running", 5);
        Put(p, LoadReportLayout, "requests queued", 6);
        Put(p, LoadReportLayout, "requests in flight", 7);
        Put(p, LoadReportLayout, "KV-cache free fraction", F32(0.25f));
        Put(p, LoadReportLayout, "estimated queue wait", 8);
        Put(p, LoadReportLayout, "max running sequences", 256);
        Put(p, LoadReportLayout, "age of the engine data", 9);
        Assert.That(Off(LoadReportLayout, "1.2: the model"), Is.EqualTo(p.Length));
        Assert.That(actual, Is.EqualTo(Framed(FrameType.LoadReport, 0, 0, [.. p, .. Str16("gec"), .. Str16("v2")])));
        Assert.That(LoadReport.TryParse(actual.AsSpan(Wire.HeaderSize), out var back) && back.Model == "gec" && back.ModelVersion == "v2");
        // A 1.1 report (no strings) still parses, with no model.
        Assert.That(LoadReport.TryParse(p, out var old) && old.Model == "" && old.AgeMs == 9);
    }

    [Test]
    public void RequestRouteFieldsFollowTheLayout()
    {
        var rp = RequestParams.Default with { MaxTokens = 5, Model = "gec", ModelVersion = "v2", RouteKey = "user-7", Logprobs = true };
        var actual = Write(w => FrameWriter.Request(w, 4, rp, "Hi"u8, default, ["."]));
        var payload = actual.AsSpan(Wire.HeaderSize);
        Assert.That(payload[29], Is.EqualTo((byte)(RequestFlags.Route | RequestFlags.Logprobs)));
        int routeAt = Off(Request, "the prompt") + 2 + 3;
        Assert.That(payload[routeAt..].ToArray(), Is.EqualTo((byte[])[.. Str16("gec"), .. Str16("v2"), .. Str16("user-7")]));
        Assert.That(RequestView.TryParse(payload, out var v), Is.EqualTo(RequestParseError.None));
        Assert.That(Encoding.UTF8.GetString(v.Model), Is.EqualTo("gec"));
        Assert.That(Encoding.UTF8.GetString(v.ModelVersion), Is.EqualTo("v2"));
        Assert.That(Encoding.UTF8.GetString(v.RouteKey), Is.EqualTo("user-7"));
        Assert.That(v.RouteOffset, Is.EqualTo(routeAt));
        Assert.That(v.StopCount, Is.EqualTo(1));
        Assert.That(v.GetStop(0).ToArray(), Is.EqualTo("."u8.ToArray()));
        // The flag without the fields, and fields over their limits, are bad_route.
        var cut = payload[..routeAt].ToArray();
        Assert.That(RequestView.TryParse(cut, out _), Is.EqualTo(RequestParseError.BadRoute));
        byte[] longModel = [.. cut, .. Str16(new string('m', Wire.MaxModelBytes + 1)), .. Str16(""), .. Str16("")];
        Assert.That(RequestView.TryParse(longModel, out _), Is.EqualTo(RequestParseError.BadRoute));
        Assert.That(RequestView.DetailCode(RequestParseError.BadRoute), Is.EqualTo("request.bad_route"));
    }

    [Test]
    public void FinalLogprobsFollowTheMessage()
    {
        var f = SampleFinal();
        f.HasLogprobs = true;
        f.LogprobMean = -0.25f;
        f.LogprobMin = -3.5f;
        var actual = Write(w => FrameWriter.Final(w, 9, f, "q"u8, "m!"u8));
        var tail = actual.AsSpan(actual.Length - 8);
        Assert.That(BinaryPrimitives.ReadSingleLittleEndian(tail), Is.EqualTo(-0.25f));
        Assert.That(BinaryPrimitives.ReadSingleLittleEndian(tail[4..]), Is.EqualTo(-3.5f));
        Assert.That(FinalInfo.TryParse(actual.AsSpan(Wire.HeaderSize), out var back, out _, out _));
        Assert.That(back.HasLogprobs && back.LogprobMean == -0.25f && back.LogprobMin == -3.5f);
        var plain = Write(w => FrameWriter.Final(w, 9, SampleFinal(), "q"u8, "m!"u8));
        Assert.That(FinalInfo.TryParse(plain.AsSpan(Wire.HeaderSize), out var none, out _, out _) && !none.HasLogprobs);
    }

    [Test]
    public void ProsePayloadBytesFollowTheLayout()
    {
        Assert.Multiple(() =>
        {
            Assert.That(Write(w => FrameWriter.Hello(w, "cli"u8, 1, 3)),
                Is.EqualTo(Framed(FrameType.Hello, 0, 0, Packed("HELLO", Wire.Magic, 1, 3, "cli"))), "HELLO");
            Assert.That(Write(w => FrameWriter.HelloOk(w, new HelloOk(1, 2, 65536, 4095, 1024, 60000, 4096, "srv"))),
                Is.EqualTo(Framed(FrameType.HelloOk, 0, 0, Packed("HELLO_OK", 1, 2, 65536, 4095, 1024, 60000, 4096, "srv", "", ""))), "HELLO_OK");
            Assert.That(Write(w => FrameWriter.HelloOk(w, new HelloOk(1, 2, 65536, 4095, 1024, 60000, 4096, "srv", "gec-small", "0a1b2c"))),
                Is.EqualTo(Framed(FrameType.HelloOk, 0, 0, Packed("HELLO_OK", 1, 2, 65536, 4095, 1024, 60000, 4096, "srv", "gec-small", "0a1b2c"))), "HELLO_OK with model");
            Assert.That(Write(w => FrameWriter.Admin(w, "tok"u8, "split gec a=9,b=1"u8)),
                Is.EqualTo(Framed(FrameType.Admin, 0, 0, Packed("ADMIN", "tok", "split gec a=9,b=1"))), "ADMIN");
            Assert.That(Write(w => FrameWriter.AdminOk(w, "{\"ok\":true}")),
                Is.EqualTo(Framed(FrameType.AdminOk, 0, 0, Packed("ADMIN_OK", "{\"ok\":true}"))), "ADMIN_OK");
            Assert.That(Write(w => FrameWriter.LoadQuery(w, 250)),
                Is.EqualTo(Framed(FrameType.LoadQuery, 0, 0, Packed("LOAD_QUERY", 250))), "LOAD_QUERY");
            Assert.That(Write(w => FrameWriter.LoadQuery(w, 0, unsubscribe: true)),
                Is.EqualTo(Framed(FrameType.LoadQuery, 1, 0, Packed("LOAD_QUERY", 0))), "LOAD_QUERY unsubscribe");
            Assert.That(Write(w => FrameWriter.Drain(w, "tok"u8)),
                Is.EqualTo(Framed(FrameType.Drain, 0, 0, Packed("DRAIN", "tok"))), "DRAIN");
            Assert.That(Write(w => FrameWriter.DrainOk(w, 30000)),
                Is.EqualTo(Framed(FrameType.DrainOk, 0, 0, Packed("DRAIN_OK", 30000))), "DRAIN_OK");
            Assert.That(Write(w => FrameWriter.Error(w, WireStatus.TooLarge, true, 7, "big")),
                Is.EqualTo(Framed(FrameType.Error, 1, 0, Packed("ERROR", 3, 0, 7, "big"))), "ERROR fatal");
            Assert.That(Write(w => FrameWriter.Delta(w, 5, [1, 2], "hi"u8)),
                Is.EqualTo(Framed(FrameType.Delta, 0, 5, Packed("DELTA", 2, 2, new byte[] { 1, 0, 0, 0, 2, 0, 0, 0 }, "hi"u8.ToArray()))), "DELTA");
            Assert.That(Write(w => FrameWriter.Cancel(w, 77)), Is.EqualTo(Framed(FrameType.Cancel, 0, 77, [])), "CANCEL");
            Assert.That(Write(w => FrameWriter.Ping(w, "xyz"u8)), Is.EqualTo(Framed(FrameType.Ping, 0, 0, "xyz"u8.ToArray())), "PING");
            Assert.That(Write(w => FrameWriter.Ping(w, "xyz"u8, pong: true)), Is.EqualTo(Framed(FrameType.Pong, 0, 0, "xyz"u8.ToArray())), "PONG");
        });
    }

    // ---- bytes written out by hand -------------------------------------------------------------------------------

    [Test]
    public void RequestTextBytesByHand()
    {
        var rp = new RequestParams
        {
            MaxTokens = 100, Temperature = 0.5f, TopP = 1f, TopK = -1, Seed = 0x1122334455667788, DeadlineMs = 1000, Priority = 1, IgnoreEos = true,
        };
        var actual = Write(w => FrameWriter.Request(w, 0x0102030405060708, rp, "Hi"u8, default, ["\n"]));
        var expected = Hex("""
            2D000000 02 00 0000 0807060504030201
            64000000 0000003F 0000803F FFFFFFFF 8877665544332211 E8030000 01 06 0100 02000000 00000000
            4869
            0100 0A
            """);
        Assert.That(actual, Is.EqualTo(expected));
    }

    [Test]
    public void RequestIdsBytesByHand()
    {
        var rp = new RequestParams { MaxTokens = 1, TopP = 0.5f };
        var actual = Write(w => FrameWriter.Request(w, 3, rp, default, [1, 0x01020304]));
        var expected = Hex("""
            30000000 02 00 0000 0300000000000000
            01000000 00000000 0000003F 00000000 0000000000000000 00000000 00 01 0000 02000000 00000000
            01000000 04030201
            """);
        Assert.That(actual, Is.EqualTo(expected));
    }

    [Test]
    public void DeltaBytesByHand()
    {
        var actual = Write(w => FrameWriter.Delta(w, 7, [1, 256], "é"u8));
        var expected = Hex("""
            12000000 82 00 0000 0700000000000000
            02000000 02000000 01000000 00010000 C3A9
            """);
        Assert.That(actual, Is.EqualTo(expected));
    }

    [Test]
    public void FinalBytesByHand()
    {
        var actual = Write(w => FrameWriter.Final(w, 9, SampleFinal(), "q"u8, "m!"u8));
        var expected = Hex("""
            3F000000 83 00 0000 0900000000000000
            0400 00 01 FA000000 0A000000 04000000 00000000 02000000
            01000000 02000000 03000000 04000000 05000000 06000000 07000000 00000000
            0100 71
            0200 6D21
            """);
        Assert.That(actual, Is.EqualTo(expected));
    }

    [Test]
    public void LoadReportBytesByHand()
    {
        var actual = Write(w => FrameWriter.LoadReport(w, new LoadReport(ReplicaState.Ready, 3, 5, 6, 7, 0.25f, 8, 256, 9)));
        var expected = Hex("""
            24000000 85 00 0000 0000000000000000
            01 00 0300 05000000 06000000 07000000 0000803E 08000000 00010000 09000000
            0000 0000
            """);
        Assert.That(actual, Is.EqualTo(expected));
    }
}
