using System.Buffers;
using System.Buffers.Binary;
using System.Text;
using System.Text.Unicode;
using FastServe.Protocol;

namespace FastServe.Fuzz;

/// <summary>The codec broke one of its promises on some input. The fuzzer treats it like any other exception: a crash.</summary>
public sealed class FuzzInvariantException(string message) : Exception(message);

/// <summary>
/// What a server (and a client) does with bytes from the network, minus the sockets: split the stream with
/// <see cref="FrameReader.TryRead"/> under a 64 KiB max frame, hand each payload to its type's parser, touch every
/// parsed field and span, then write the parsed values back with <see cref="FrameWriter"/> and parse them again.
/// Checks along the way, against models written here from docs/protocol.md rather than from the codec:
/// the reader's result, <c>consumed</c> and payload agree with the header; every parsed span lies inside its payload
/// at the offset the layout gives; each parser accepts exactly the payloads the layout allows (REQUEST: with the
/// same error code); parse(write(parse(x))) equals parse(x). Shared by the fuzz target and the NUnit corpus replay.
/// Never throws for a correct codec: any exception out of <see cref="Run"/> is a bug.
/// </summary>
public static class FrameParseLoop
{
    /// <summary>Max frame of the loop (the server's default is 1 MiB; smaller keeps fuzz inputs small).</summary>
    public const int MaxFrame = 64 * 1024;

    [ThreadStatic] private static ArrayBufferWriter<byte>? t_out;

    /// <summary>Parses every frame of <paramref name="data"/>; returns how many whole frames it held.</summary>
    public static int Run(ReadOnlySpan<byte> data)
    {
        // Header arithmetic must hold for any limit, not only the one the loop uses.
        CheckRead(data, int.MaxValue);
        CheckRead(data, 0);

        int frames = 0;
        var buf = data;
        while (true)
        {
            var r = CheckRead(buf, MaxFrame);
            if (r != ReadResult.Frame) break;
            FrameReader.TryRead(buf, MaxFrame, out var h, out var payload, out int consumed);
            // A frame is exactly its own bytes: one byte less is NeedMore, cut right after it reads the same.
            Check(FrameReader.TryRead(buf[..(consumed - 1)], MaxFrame, out _, out _, out int c1) == ReadResult.NeedMore && c1 == 0, "prefix of a frame is not NeedMore");
            Check(FrameReader.TryRead(buf[..consumed], MaxFrame, out var h2, out _, out int c2) == ReadResult.Frame && c2 == consumed && h2 == h, "frame cut at its end reads differently");
            Frame(h, payload);
            frames++;
            buf = buf[consumed..];
        }
        return frames;
    }

    /// <summary>Runs <see cref="FrameReader.TryRead"/> and checks its answer against a model of the header.</summary>
    private static ReadResult CheckRead(ReadOnlySpan<byte> buf, int maxFrame)
    {
        var r = FrameReader.TryRead(buf, maxFrame, out var h, out var payload, out int consumed);
        if (buf.Length < Wire.HeaderSize)
        {
            Check(r == ReadResult.NeedMore && consumed == 0 && payload.IsEmpty, "short header not NeedMore");
            return r;
        }
        uint len = BinaryPrimitives.ReadUInt32LittleEndian(buf);
        Check(h.Length == (int)Math.Min(len, int.MaxValue) && (byte)h.Type == buf[4] && h.Flags == buf[5]
              && h.Id == BinaryPrimitives.ReadUInt64LittleEndian(buf[8..]), "header fields differ from the bytes");
        ReadResult expect = len > (uint)maxFrame ? ReadResult.TooLarge
            : Wire.HeaderSize + (long)len > buf.Length ? ReadResult.NeedMore : ReadResult.Frame;
        Check(r == expect, "TryRead result differs from the header model");
        if (r != ReadResult.Frame)
        {
            Check(consumed == 0 && payload.IsEmpty, "no frame but consumed or payload set");
            return r;
        }
        Check(consumed == Wire.HeaderSize + (int)len && consumed <= buf.Length, "consumed differs from header + length");
        Within(payload, buf, Wire.HeaderSize, (int)len, "payload");
        return r;
    }

    private static void Frame(FrameHeader h, ReadOnlySpan<byte> p)
    {
        var w = t_out ??= new ArrayBufferWriter<byte>(256);
        w.Clear();
        switch (h.Type)
        {
            case FrameType.Hello: Hello(w, p); break;
            case FrameType.Request: Request(w, h, p); break;
            case FrameType.Cancel:
                FrameWriter.Cancel(w, h.Id);
                Check(Reread(w, FrameType.Cancel, h.Id).IsEmpty, "CANCEL payload");
                break;
            case FrameType.Ping:
            case FrameType.Pong:
                FrameWriter.Ping(w, p, pong: true);
                Check(Reread(w, FrameType.Pong, 0).SequenceEqual(p), "PONG does not echo PING");
                break;
            case FrameType.LoadQuery: LoadQuery(w, h, p); break;
            case FrameType.Drain: Drain(w, p); break;
            case FrameType.Admin: Admin(w, p); break;
            case FrameType.AdminOk:
            {
                var r = new PayloadReader(p);
                bool ok = r.TryStr16(out var body);
                Check(ok == (p.Length >= 2 && 2 + U16(p, 0) <= p.Length), "ADMIN_OK accepted a short payload or refused a full one");
                if (!ok || !Utf8.IsValid(body)) break;
                FrameWriter.AdminOk(w, Encoding.UTF8.GetString(body));
                var q = new PayloadReader(Reread(w, FrameType.AdminOk, 0));
                Check(q.TryStr16(out var b2) && b2.SequenceEqual(body) && q.Remaining == 0, "ADMIN_OK round trip");
                break;
            }
            case FrameType.HelloOk: HelloOk(w, p); break;
            case FrameType.Delta: Delta(w, h, p); break;
            case FrameType.Final: Final(w, h, p); break;
            case FrameType.LoadReport: LoadReport(w, p); break;
            case FrameType.DrainOk:
            {
                var r = new PayloadReader(p);
                bool ok = r.TryU32(out uint grace);
                Check(ok == p.Length >= 4, "DRAIN_OK accepted a short payload or refused a full one");
                if (!ok) break;
                FrameWriter.DrainOk(w, grace);
                var q = new PayloadReader(Reread(w, FrameType.DrainOk, 0));
                Check(q.TryU32(out uint g2) && g2 == grace && q.Remaining == 0, "DRAIN_OK round trip");
                break;
            }
            case FrameType.Error: Error(w, h, p); break;
            default:
                // What a server answers to a type it does not know.
                FrameWriter.Error(w, WireStatus.BadRequest, true, 0, "unknown frame type");
                Check(ErrorInfo.TryParse(Reread(w, FrameType.Error, 0), 1, out var e) && e.Status == WireStatus.BadRequest && e.Fatal,
                    "ERROR for an unknown type");
                break;
        }
    }

    private static void Hello(ArrayBufferWriter<byte> w, ReadOnlySpan<byte> p)
    {
        bool ok = HelloView.TryParse(p, out var v);
        Check(ok == p.Length >= 8, "HELLO accepted a short payload or refused a full one");
        if (!ok) return;
        Check(v.Magic == U32(p, 0) && v.Major == U16(p, 4) && v.Minor == U16(p, 6), "HELLO fields");
        // The name is optional: absent or cut short reads as empty.
        int nameLen = p.Length >= 10 && 10 + U16(p, 8) <= p.Length ? U16(p, 8) : 0;
        Within(v.ClientName, p, 10, nameLen, "HELLO client name");
        // 1.3: the API key follows a whole name; absent or cut short reads as empty.
        int keyAt = 10 + nameLen;
        bool nameWhole = p.Length >= 10 && 10 + U16(p, 8) <= p.Length;
        int keyLen = nameWhole && p.Length >= keyAt + 2 && keyAt + 2 + U16(p, keyAt) <= p.Length ? U16(p, keyAt) : 0;
        Within(v.ApiKey, p, keyAt + 2, keyLen, "HELLO api key");
        FrameWriter.Hello(w, v.ClientName, v.Major, v.Minor, v.ApiKey);
        var back = Reread(w, FrameType.Hello, 0);
        Check(HelloView.TryParse(back, out var v2) && v2.Magic == Wire.Magic && v2.Major == v.Major && v2.Minor == v.Minor
              && v2.ClientName.SequenceEqual(v.ClientName) && v2.ApiKey.SequenceEqual(v.ApiKey)
              && back.Length == 10 + nameLen + (keyLen > 0 ? 2 + keyLen : 0), "HELLO round trip");
    }

    /// <summary>The REQUEST layout check in docs/protocol.md order, independent of <see cref="RequestView.TryParse"/>.</summary>
    private static RequestParseError RequestModel(ReadOnlySpan<byte> p)
    {
        if (p.Length < Wire.RequestFixedSize) return RequestParseError.Truncated;
        int stops = U16(p, 30);
        if (stops > Wire.MaxStops) return RequestParseError.TooManyStops;
        long prompt = (p[29] & 1) != 0 ? 4L * U32(p, 32) : U32(p, 32);
        long pos = Wire.RequestFixedSize + prompt;
        if (pos > p.Length) return RequestParseError.PromptLength;
        for (int i = 0; i < stops; i++)
        {
            if (pos + 2 > p.Length) return RequestParseError.Truncated;
            int n = U16(p, (int)pos);
            if (pos + 2 + n > p.Length) return RequestParseError.Truncated;
            if (n == 0 || n > Wire.MaxStopBytes) return RequestParseError.BadStop;
            pos += 2 + n;
        }
        if ((p[29] & (byte)RequestFlags.Route) != 0)
        {
            int[] limits = [Wire.MaxModelBytes, Wire.MaxModelBytes, Wire.MaxRouteKeyBytes];
            for (int k = 0; k < 3; k++)
            {
                if (pos + 2 > p.Length) return RequestParseError.BadRoute;
                int n = U16(p, (int)pos);
                if (pos + 2 + n > p.Length || n > limits[k] || (k < 2 && !Utf8.IsValid(p.Slice((int)pos + 2, n)))) return RequestParseError.BadRoute;
                pos += 2 + n;
            }
        }
        if ((p[29] & (byte)RequestFlags.Resume) != 0)
        {
            if (pos + 4 > p.Length) return RequestParseError.BadResume;
            long n = U32(p, (int)pos);
            if (n > RequestRules.MaxTokensLimit || pos + 4 + 4 * n + 4 > p.Length) return RequestParseError.BadResume;
            pos += 4 + 4 * n + 4;
        }
        return pos == p.Length ? RequestParseError.None : RequestParseError.TrailingBytes;
    }


    private static void Request(ArrayBufferWriter<byte> w, FrameHeader h, ReadOnlySpan<byte> p)
    {
        var err = RequestView.TryParse(p, out var v);
        Check(err == RequestModel(p), "REQUEST parse result differs from the layout model");
        if (err != RequestParseError.None)
        {
            Check(RequestView.DetailCode(err).Length > 0, "REQUEST error without a detail code");
            return;
        }
        Check(v.MaxTokens == U32(p, 0) && BitConverter.SingleToUInt32Bits(v.Temperature) == U32(p, 4)
              && BitConverter.SingleToUInt32Bits(v.TopP) == U32(p, 8) && v.TopK == (int)U32(p, 12)
              && v.Seed == BinaryPrimitives.ReadUInt64LittleEndian(p[16..]) && v.DeadlineMs == U32(p, 24)
              && v.Priority == p[28] && (byte)v.Flags == p[29] && v.StopCount == U16(p, 30), "REQUEST fixed fields");
        Check((byte)v.Flags2 == p[36] && v.TopLogprobs == ((p[36] & 1) != 0 ? p[37] : 0), "REQUEST flags 2 and top_logprobs");
        bool ids = v.PromptIsIds;
        int promptBytes = (int)(ids ? 4 * U32(p, 32) : U32(p, 32));
        Within(v.Prompt, p, Wire.RequestFixedSize, promptBytes, "REQUEST prompt");
        int stopsAt = Wire.RequestFixedSize + promptBytes;
        bool route = (v.Flags & RequestFlags.Route) != 0;
        int resumeAt = v.IsResume ? p.Length - ResumeFields.Size(v.ResumeCount) : p.Length;
        Check(route || v.RouteOffset == resumeAt, "REQUEST without routing fields ends after its stops (or its resume fields)");
        Within(v.Stops, p, stopsAt, v.RouteOffset - stopsAt, "REQUEST stops");
        if (route)
        {
            int ra = v.RouteOffset;
            Within(v.Model, p, ra + 2, U16(p, ra), "REQUEST model");
            ra += 2 + U16(p, ra);
            Within(v.ModelVersion, p, ra + 2, U16(p, ra), "REQUEST model version");
            ra += 2 + U16(p, ra);
            Within(v.RouteKey, p, ra + 2, U16(p, ra), "REQUEST routing key");
            ra += 2 + U16(p, ra);
            Check(ra == resumeAt, "REQUEST routing fields end the payload (or come before the resume fields)");
        }
        else Check(v.Model.IsEmpty && v.ModelVersion.IsEmpty && v.RouteKey.IsEmpty, "REQUEST routing fields without the flag");
        if (v.IsResume)
        {
            // The resume fields end the payload: u32 n, n ids, u32 text bytes.
            int n = v.ResumeCount;
            Check(n <= RequestRules.MaxTokensLimit && U32(p, p.Length - 8 - 4 * n) == (uint)n, "REQUEST resume count");
            Within(v.ResumeIds, p, p.Length - 4 - 4 * n, 4 * n, "REQUEST resume ids");
            Check(v.ResumeTextBytes == U32(p, p.Length - 4), "REQUEST resume text bytes");
            for (int i = 0; i < n; i++) Check(v.ResumeId(i) == (int)U32(v.ResumeIds, 4 * i), "REQUEST resume id");
        }
        else Check(v.ResumeIds.IsEmpty && v.ResumeTextBytes == 0, "REQUEST resume fields without the flag");

        var stops = new List<string>(v.StopCount);
        bool stopsText = true;
        int at = stopsAt;
        for (int i = 0; i < v.StopCount; i++)
        {
            var s = v.GetStop(i);
            int n = U16(p, at);
            Within(s, p, at + 2, n, "REQUEST stop");
            Check(s.Length is >= 1 and <= Wire.MaxStopBytes, "REQUEST stop length");
            at += 2 + n;
            if (Utf8.IsValid(s)) stops.Add(Encoding.UTF8.GetString(s)); else stopsText = false;
        }
        Check(v.GetStop(v.StopCount).IsEmpty && v.GetStop(-1).IsEmpty, "GetStop out of range is not empty");

        int[] promptIds = [];
        if (ids)
        {
            Check(v.PromptIdCount == promptBytes / 4, "REQUEST prompt id count");
            promptIds = new int[v.PromptIdCount];
            for (int i = 0; i < promptIds.Length; i++)
            {
                promptIds[i] = v.PromptId(i);
                Check(promptIds[i] == (int)U32(v.Prompt, 4 * i), "REQUEST prompt id");
            }
        }
        else _ = Utf8Text.IsValid(v.Prompt);

        // Round trip. The writer cannot express invalid UTF-8 stops, unknown flag bits, a seed without has_seed,
        // or an empty id prompt (it writes an empty text prompt instead): compare what it can express.
        if (!stopsText || !Utf8.IsValid(v.RouteKey)) return;
        var rp = new RequestParams
        {
            MaxTokens = (int)v.MaxTokens, Temperature = v.Temperature, TopP = v.TopP, TopK = v.TopK,
            Seed = (v.Flags & RequestFlags.HasSeed) != 0 ? v.Seed : null, DeadlineMs = v.DeadlineMs, Priority = v.Priority,
            IgnoreEos = (v.Flags & RequestFlags.IgnoreEos) != 0, NoText = (v.Flags & RequestFlags.NoText) != 0,
            Logprobs = (v.Flags & RequestFlags.Logprobs) != 0,
            TokenLogprobs = v.WantsTokenLogprobs, TopLogprobs = v.TopLogprobs,
            Model = Encoding.UTF8.GetString(v.Model), ModelVersion = Encoding.UTF8.GetString(v.ModelVersion), RouteKey = Encoding.UTF8.GetString(v.RouteKey),
        };
        int[] resumeIds = new int[v.ResumeCount];
        for (int i = 0; i < resumeIds.Length; i++) resumeIds[i] = v.ResumeId(i);
        FrameWriter.Request(w, h.Id, rp, ids ? default : v.Prompt, promptIds, stops, resumeIds, v.IsResume ? v.ResumeTextBytes : null);
        var back = Reread(w, FrameType.Request, h.Id);
        Check(RequestView.TryParse(back, out var b) == RequestParseError.None, "REQUEST round trip does not parse");
        const RequestFlags known = RequestFlags.HasSeed | RequestFlags.IgnoreEos | RequestFlags.NoText | RequestFlags.Logprobs | RequestFlags.Resume;
        Check(b.MaxTokens == v.MaxTokens && BitConverter.SingleToUInt32Bits(b.Temperature) == BitConverter.SingleToUInt32Bits(v.Temperature)
              && BitConverter.SingleToUInt32Bits(b.TopP) == BitConverter.SingleToUInt32Bits(v.TopP) && b.TopK == v.TopK
              && b.DeadlineMs == v.DeadlineMs && b.Priority == v.Priority && (b.Flags & known) == (v.Flags & known)
              && b.WantsTokenLogprobs == v.WantsTokenLogprobs && b.TopLogprobs == v.TopLogprobs
              && b.Seed == (rp.Seed ?? 0) && b.Prompt.SequenceEqual(v.Prompt) && (v.Prompt.IsEmpty || b.PromptIsIds == ids)
              && b.StopCount == v.StopCount && b.Stops.SequenceEqual(v.Stops)
              && b.Model.SequenceEqual(v.Model) && b.ModelVersion.SequenceEqual(v.ModelVersion) && b.RouteKey.SequenceEqual(v.RouteKey)
              && b.ResumeIds.SequenceEqual(v.ResumeIds) && b.ResumeTextBytes == v.ResumeTextBytes, "REQUEST round trip");
    }

    private static void LoadQuery(ArrayBufferWriter<byte> w, FrameHeader h, ReadOnlySpan<byte> p)
    {
        var r = new PayloadReader(p);
        bool ok = r.TryU32(out uint interval);
        Check(ok == p.Length >= 4 && r.Position == (ok ? 4 : 0), "LOAD_QUERY read");
        if (!ok) return;
        FrameWriter.LoadQuery(w, interval, (h.Flags & 1) != 0);
        Check(FrameReader.TryRead(w.WrittenSpan, MaxFrame, out var bh, out var back, out _) == ReadResult.Frame
              && bh.Type == FrameType.LoadQuery && bh.Flags == (h.Flags & 1) && back.Length == 4 && U32(back, 0) == interval, "LOAD_QUERY round trip");
    }

    private static void Admin(ArrayBufferWriter<byte> w, ReadOnlySpan<byte> p)
    {
        bool ok = AdminView.TryParse(p, out var v);
        bool fits = p.Length >= 2 && 2 + U16(p, 0) + 2 <= p.Length && 4 + U16(p, 0) + U16(p, 2 + U16(p, 0)) <= p.Length
                    && U16(p, 2 + U16(p, 0)) <= Wire.MaxAdminBytes;
        Check(ok == fits, "ADMIN accepted a short payload or refused a full one");
        if (!ok) return;
        Within(v.Token, p, 2, U16(p, 0), "ADMIN token");
        Within(v.Command, p, 4 + U16(p, 0), U16(p, 2 + U16(p, 0)), "ADMIN command");
        FrameWriter.Admin(w, v.Token, v.Command);
        Check(AdminView.TryParse(Reread(w, FrameType.Admin, 0), out var b) && b.Token.SequenceEqual(v.Token) && b.Command.SequenceEqual(v.Command), "ADMIN round trip");
    }

    private static void Drain(ArrayBufferWriter<byte> w, ReadOnlySpan<byte> p)
    {
        var r = new PayloadReader(p);
        bool ok = r.TryStr16(out var token);
        Check(ok == (p.Length >= 2 && 2 + U16(p, 0) <= p.Length), "DRAIN str16");
        if (!ok) return;
        Within(token, p, 2, U16(p, 0), "DRAIN token");
        FrameWriter.Drain(w, token);
        var q = new PayloadReader(Reread(w, FrameType.Drain, 0));
        Check(q.TryStr16(out var t2) && t2.SequenceEqual(token) && q.Remaining == 0, "DRAIN round trip");
    }

    private static void HelloOk(ArrayBufferWriter<byte> w, ReadOnlySpan<byte> p)
    {
        bool ok = FastServe.Protocol.HelloOk.TryParse(p, out var v);
        Check(ok == (p.Length >= Wire.HelloOkFixedSize + 2 && Wire.HelloOkFixedSize + 2 + U16(p, Wire.HelloOkFixedSize) <= p.Length),
            "HELLO_OK accepted a short payload or refused a full one");
        if (!ok) return;
        Check(v.Major == U16(p, 0) && v.Minor == U16(p, 2) && v.MaxFrame == Sat(U32(p, 4)) && v.MaxPromptTokens == Sat(U32(p, 8))
              && v.MaxInFlight == Sat(U32(p, 12)) && v.IdleTimeoutMs == Sat(U32(p, 16)) && v.ContextLength == Sat(U32(p, 20)),
            "HELLO_OK fields");
        // 1.2's model and version follow the name when both are whole; otherwise the payload is an older server's.
        int at = Wire.HelloOkFixedSize + 2 + U16(p, Wire.HelloOkFixedSize);
        bool strings = Utf8.IsValid(p.Slice(Wire.HelloOkFixedSize + 2, U16(p, Wire.HelloOkFixedSize)));
        if (p.Length >= at + 2 && at + 2 + U16(p, at) + 2 <= p.Length && at + 4 + U16(p, at) + U16(p, at + 2 + U16(p, at)) <= p.Length)
            strings &= Utf8.IsValid(p.Slice(at + 2, U16(p, at))) && Utf8.IsValid(p.Slice(at + 4 + U16(p, at), U16(p, at + 2 + U16(p, at))));
        else Check(v.Model == "" && v.ModelVersion == "", "HELLO_OK model without both strings");
        FrameWriter.HelloOk(w, v);
        var back = Reread(w, FrameType.HelloOk, 0);
        Check(FastServe.Protocol.HelloOk.TryParse(back, out var v2), "HELLO_OK round trip does not parse");
        int bm = Wire.HelloOkFixedSize + 2 + U16(back, Wire.HelloOkFixedSize);
        Check(back.Length >= bm + 4 && bm + 4 + U16(back, bm) + U16(back, bm + 2 + U16(back, bm)) == back.Length, "HELLO_OK round trip length");
        if (strings) Check(v2 == v, "HELLO_OK round trip");
    }

    private static void Delta(ArrayBufferWriter<byte> w, FrameHeader h, ReadOnlySpan<byte> p)
    {
        bool ok = DeltaView.TryParse(p, out var v, h.Flags);
        bool fits = p.Length >= 8 && 8 + 4L * U32(p, 0) + U32(p, 4) <= p.Length;
        bool withSection = (h.Flags & (byte)DeltaFlags.Logprobs) != 0;
        // With the flag, the bytes after the text must be a section of at most one entry per id.
        if (fits && withSection) fits = DeltaLogprobs.IsValid(p[(int)(8 + 4L * U32(p, 0) + U32(p, 4))..], (int)U32(p, 0));
        Check(ok == fits, "DELTA accepted a short payload or refused a full one");
        if (!ok) return;
        var entries = DeltaLogprobs.Read(v.Logprobs);
        Check(withSection ? entries.Length <= v.Count && entries.All(e => e.Top.Length <= RequestRules.MaxLogprobs && e.Bytes.Length <= DeltaLogprobs.MaxTokenBytes)
            : v.Logprobs.IsEmpty, "DELTA log-probability section");
        int n = (int)U32(p, 0), textLen = (int)U32(p, 4);
        Within(v.IdBytes, p, 8, 4 * n, "DELTA ids");
        Within(v.Text, p, 8 + 4 * n, textLen, "DELTA text");
        Check(v.Count == n, "DELTA count");
        var ids = new int[n];
        for (int i = 0; i < n; i++)
        {
            ids[i] = v.Id(i);
            Check(ids[i] == (int)U32(p, 8 + 4 * i), "DELTA id");
        }
        CheckCompletePrefix(v.Text);
        _ = Utf8Text.Decode(v.Text);
        FrameWriter.Delta(w, h.Id, ids, v.Text, v.Logprobs);
        var back = Reread(w, FrameType.Delta, h.Id, v.Logprobs.IsEmpty ? (byte)0 : (byte)DeltaFlags.Logprobs);
        Check(DeltaView.TryParse(back, out var b, v.Logprobs.IsEmpty ? (byte)0 : (byte)DeltaFlags.Logprobs) && b.IdBytes.SequenceEqual(v.IdBytes)
              && b.Text.SequenceEqual(v.Text) && b.Logprobs.SequenceEqual(v.Logprobs)
              && back.Length == 8 + 4 * n + textLen + v.Logprobs.Length, "DELTA round trip");
    }

    /// <summary><see cref="Utf8Text.CompletePrefix"/> never drops more than 3 bytes, and on every prefix of valid
    /// text it keeps exactly the whole sequences.</summary>
    private static void CheckCompletePrefix(ReadOnlySpan<byte> text)
    {
        int cut = Utf8Text.CompletePrefix(text);
        Check(cut <= text.Length && cut >= text.Length - 3, "CompletePrefix dropped more than 3 bytes");
        if (!Utf8.IsValid(text)) return;
        int boundary = 0;
        for (int k = 0; k <= text.Length; k++)
        {
            if (k == text.Length || (text[k] & 0xC0) != 0x80) boundary = k;
            Check(Utf8Text.CompletePrefix(text[..k]) == boundary, "CompletePrefix on a prefix of valid text");
        }
    }

    private static void Final(ArrayBufferWriter<byte> w, FrameHeader h, ReadOnlySpan<byte> p)
    {
        bool ok = FinalInfo.TryParse(p, out var v, out var detail, out var message);
        int fixedEnd = Wire.FinalFixedSize;
        bool fits = p.Length >= fixedEnd + 2 && fixedEnd + 2 + U16(p, fixedEnd) + 2 <= p.Length
                    && fixedEnd + 4 + U16(p, fixedEnd) + U16(p, fixedEnd + 2 + U16(p, fixedEnd)) <= p.Length;
        Check(ok == fits, "FINAL accepted a short payload or refused a full one");
        if (!ok) return;
        int dLen = U16(p, fixedEnd), mAt = fixedEnd + 2 + dLen;
        Within(detail, p, fixedEnd + 2, dLen, "FINAL detail");
        Within(message, p, mAt + 2, U16(p, mAt), "FINAL message");
        Check((ushort)v.Status == U16(p, 0) && (byte)v.Finish == p[2] && v.Retriable == ((p[3] & 1) != 0) && v.RetryAfterMs == U32(p, 4)
              && v.PromptTokens == U32(p, 8) && v.CachedPromptTokens == U32(p, 12) && v.CompletionTokens == U32(p, 16)
              && v.Preemptions == U32(p, 20), "FINAL fields");
        for (int i = 0; i < Wire.TimingSlots; i++) Check(v.Timings[i] == U32(p, 24 + 4 * i), "FINAL timing");
        _ = WireNames.Of(v.Status);
        _ = WireNames.Of(v.Finish);
        FrameWriter.Final(w, h.Id, v, detail, message);
        var back = Reread(w, FrameType.Final, h.Id);
        int tail = p.Length - (mAt + 2 + U16(p, mAt));
        Check(v.HasLogprobs == tail >= 8, "FINAL log-probabilities read from the bytes after the message");
        Check(FinalInfo.TryParse(back, out var b, out var d2, out var m2) && d2.SequenceEqual(detail) && m2.SequenceEqual(message)
              && back.Length == fixedEnd + 4 + detail.Length + message.Length + (v.HasLogprobs ? 8 : 0), "FINAL round trip does not parse");
        Check(b.HasLogprobs == v.HasLogprobs && BitConverter.SingleToUInt32Bits(b.LogprobMean) == BitConverter.SingleToUInt32Bits(v.LogprobMean)
              && BitConverter.SingleToUInt32Bits(b.LogprobMin) == BitConverter.SingleToUInt32Bits(v.LogprobMin), "FINAL log-probabilities round trip");
        Check(b.Status == v.Status && b.Finish == v.Finish && b.Retriable == v.Retriable && b.RetryAfterMs == v.RetryAfterMs
              && b.PromptTokens == v.PromptTokens && b.CachedPromptTokens == v.CachedPromptTokens
              && b.CompletionTokens == v.CompletionTokens && b.Preemptions == v.Preemptions, "FINAL round trip");
        for (int i = 0; i < Wire.TimingSlots; i++) Check(b.Timings[i] == v.Timings[i], "FINAL timing round trip");
    }

    private static void LoadReport(ArrayBufferWriter<byte> w, ReadOnlySpan<byte> p)
    {
        bool ok = FastServe.Protocol.LoadReport.TryParse(p, out var v);
        Check(ok == p.Length >= Wire.LoadReportSize, "LOAD_REPORT accepted a short payload or refused a full one");
        if (!ok) return;
        Check((byte)v.State == p[0] && v.Workers == U16(p, 2) && v.Running == Sat(U32(p, 4)) && v.Queued == Sat(U32(p, 8))
              && v.InFlight == Sat(U32(p, 12)) && BitConverter.SingleToUInt32Bits(v.KvFreeFraction) == U32(p, 16)
              && v.EstimatedWaitMs == Sat(U32(p, 20)) && v.MaxRunning == Sat(U32(p, 24)) && v.AgeMs == Sat(U32(p, 28)), "LOAD_REPORT fields");
        _ = WireNames.Of(v.State);
        FrameWriter.LoadReport(w, v);
        var back = Reread(w, FrameType.LoadReport, 0);
        int at = Wire.LoadReportSize;
        bool whole = p.Length >= at + 2 && at + 2 + U16(p, at) + 2 <= p.Length && at + 4 + U16(p, at) + U16(p, at + 2 + U16(p, at)) <= p.Length;
        bool valid = !whole || (Utf8.IsValid(p.Slice(at + 2, U16(p, at))) && Utf8.IsValid(p.Slice(at + 4 + U16(p, at), U16(p, at + 2 + U16(p, at)))));
        if (!whole) Check(v.Model == "" && v.ModelVersion == "", "LOAD_REPORT model without both strings");
        Check(back.Length == Wire.LoadReportSize + 4 + Encoding.UTF8.GetByteCount(v.Model) + Encoding.UTF8.GetByteCount(v.ModelVersion)
              && FastServe.Protocol.LoadReport.TryParse(back, out var b) && (!valid || b == v), "LOAD_REPORT round trip");
    }

    private static void Error(ArrayBufferWriter<byte> w, FrameHeader h, ReadOnlySpan<byte> p)
    {
        bool ok = ErrorInfo.TryParse(p, h.Flags, out var v);
        Check(ok == (p.Length >= 10 && 10 + U16(p, 8) <= p.Length), "ERROR accepted a short payload or refused a full one");
        if (!ok) return;
        Check((ushort)v.Status == U16(p, 0) && v.Fatal == ((h.Flags & 1) != 0) && v.RetryAfterMs == U32(p, 4), "ERROR fields");
        FrameWriter.Error(w, v.Status, v.Fatal, v.RetryAfterMs, v.Message);
        var back = Reread(w, FrameType.Error, 0);
        Check(ErrorInfo.TryParse(back, (byte)(v.Fatal ? 1 : 0), out var b) && StrFits(back, 8), "ERROR round trip does not parse");
        if (Utf8.IsValid(p.Slice(10, U16(p, 8)))) Check(b == v, "ERROR round trip");
    }

    /// <summary>Reads back the single frame the writer holds and checks its header.</summary>
    private static ReadOnlySpan<byte> Reread(ArrayBufferWriter<byte> w, FrameType type, ulong id, int flags = -1)
    {
        var span = w.WrittenSpan;
        Check(FrameReader.TryRead(span, int.MaxValue, out var h, out var payload, out int consumed) == ReadResult.Frame
              && consumed == span.Length && h.Type == type && h.Id == id, "written frame does not read back as one frame");
        Check(flags < 0 || h.Flags == flags, "written frame has other header flags");
        Check(span[6] == 0 && span[7] == 0, "written frame has reserved header bits set");
        return payload;
    }

    /// <summary>A str16 at <paramref name="at"/> that ends exactly at the end of the payload (nothing unwritten after it).</summary>
    private static bool StrFits(ReadOnlySpan<byte> p, int at) => p.Length >= at + 2 && at + 2 + U16(p, at) == p.Length;

    /// <summary><paramref name="inner"/> is <paramref name="length"/> bytes at <paramref name="offset"/> of <paramref name="outer"/>
    /// (an empty span may point anywhere).</summary>
    private static void Within(ReadOnlySpan<byte> inner, ReadOnlySpan<byte> outer, int offset, int length, string what)
    {
        Check(inner.Length == length, what);
        if (inner.IsEmpty) return;
        Check(outer.Overlaps(inner, out int at) && at == offset && at + inner.Length <= outer.Length, what);
    }

    private static ushort U16(ReadOnlySpan<byte> p, int at) => BinaryPrimitives.ReadUInt16LittleEndian(p[at..]);
    private static uint U32(ReadOnlySpan<byte> p, int at) => BinaryPrimitives.ReadUInt32LittleEndian(p[at..]);
    private static int Sat(uint x) => (int)Math.Min(x, int.MaxValue);

    private static void Check(bool ok, string what)
    {
        if (!ok) throw new FuzzInvariantException(what);
    }
}
