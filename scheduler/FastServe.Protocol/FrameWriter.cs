using System.Buffers;
using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text;

namespace FastServe.Protocol;

/// <summary>Sampling and scheduling fields of a REQUEST (the prompt and stops are passed beside it).</summary>
public struct RequestParams
{
    public int MaxTokens;
    public float Temperature;
    public float TopP;
    public int TopK;
    public ulong? Seed;
    public uint DeadlineMs;
    public byte Priority;
    public bool IgnoreEos;
    public bool NoText;
    /// <summary>Sets <see cref="RequestFlags.Whole"/>: the output is wanted only with the FINAL.</summary>
    public bool Whole;
    /// <summary>Sets <see cref="RequestFlags.Logprobs"/>: the FINAL carries the mean and minimum token log-probability.</summary>
    public bool Logprobs;
    /// <summary>Protocol 1.4: sets <see cref="RequestFlags2.TokenLogprobs"/>: every DELTA carries each token's
    /// log-probability and its <see cref="TopLogprobs"/> most likely alternatives.</summary>
    public bool TokenLogprobs;
    /// <summary>With <see cref="TokenLogprobs"/>: alternatives per token, 0 … <see cref="RequestRules.MaxLogprobs"/>.</summary>
    public int TopLogprobs;
    /// <summary>The model to run it on (null or empty: the server's default); with <see cref="ModelVersion"/> or
    /// <see cref="RouteKey"/> these are the routing fields of protocol 1.2 (<see cref="RequestFlags.Route"/>).</summary>
    public string? Model;
    /// <summary>The model version (null or empty: any, or the router's traffic split).</summary>
    public string? ModelVersion;
    /// <summary>A routing key: requests with the same key go to the same version of a split model (sticky canaries).</summary>
    public string? RouteKey;

    /// <summary>Whether any routing field is set (the request then needs a 1.2 server).</summary>
    public readonly bool HasRoute => !string.IsNullOrEmpty(Model) || !string.IsNullOrEmpty(ModelVersion) || !string.IsNullOrEmpty(RouteKey);

    public static RequestParams Default => new() { MaxTokens = 64, TopP = 1f };
}

/// <summary>
/// Writes whole frames into an <see cref="IBufferWriter{T}"/> (a pooled send buffer). Each method writes one frame
/// and never allocates beyond what the buffer writer does. Strings longer than a str16 allows are cut at a
/// UTF-8 boundary.
/// </summary>
public static class FrameWriter
{
    private static Span<byte> Begin(IBufferWriter<byte> w, FrameType type, byte flags, ulong id, int payload)
    {
        var span = w.GetSpan(Wire.HeaderSize + payload);
        BinaryPrimitives.WriteUInt32LittleEndian(span, (uint)payload);
        span[4] = (byte)type;
        span[5] = flags;
        BinaryPrimitives.WriteUInt16LittleEndian(span[6..], 0);
        BinaryPrimitives.WriteUInt64LittleEndian(span[8..], id);
        return span.Slice(Wire.HeaderSize, payload);
    }

    /// <summary>What of <paramref name="s"/> fits a str16: all of it, or the longest whole-sequence prefix of 65535 bytes.
    /// Sizing and writing both use it, so a frame's length always matches what was written.</summary>
    private static ReadOnlySpan<byte> Fit16(ReadOnlySpan<byte> s) =>
        s.Length > ushort.MaxValue ? s[..Utf8Text.CompletePrefix(s[..ushort.MaxValue])] : s;

    private static int Str16Size(ReadOnlySpan<byte> s) => 2 + Fit16(s).Length;

    private static int PutStr16(Span<byte> dst, ReadOnlySpan<byte> s)
    {
        s = Fit16(s);
        BinaryPrimitives.WriteUInt16LittleEndian(dst, (ushort)s.Length);
        s.CopyTo(dst[2..]);
        return 2 + s.Length;
    }

    private static byte[]? Utf8(string? s, out ReadOnlySpan<byte> bytes)
    {
        if (string.IsNullOrEmpty(s)) { bytes = default; return null; }
        var b = Encoding.UTF8.GetBytes(s);
        bytes = b;
        return b;
    }

    /// <summary>HELLO: magic, version, client name and (1.3, only when not empty) the API key.</summary>
    public static void Hello(IBufferWriter<byte> w, ReadOnlySpan<byte> clientName, ushort major = Wire.Major, ushort minor = Wire.Minor,
        ReadOnlySpan<byte> apiKey = default)
    {
        int n = 8 + Str16Size(clientName) + (apiKey.IsEmpty ? 0 : Str16Size(apiKey));
        var p = Begin(w, FrameType.Hello, 0, 0, n);
        BinaryPrimitives.WriteUInt32LittleEndian(p, Wire.Magic);
        BinaryPrimitives.WriteUInt16LittleEndian(p[4..], major);
        BinaryPrimitives.WriteUInt16LittleEndian(p[6..], minor);
        PutStr16(p[8..], clientName);
        if (!apiKey.IsEmpty) PutStr16(p[(8 + Str16Size(clientName))..], apiKey);
        w.Advance(Wire.HeaderSize + n);
    }

    public static void HelloOk(IBufferWriter<byte> w, in HelloOk h)
    {
        Utf8(h.ServerName, out var name);
        Utf8(h.Model, out var model);
        Utf8(h.ModelVersion, out var version);
        int n = Wire.HelloOkFixedSize + Str16Size(name) + Str16Size(model) + Str16Size(version);
        var p = Begin(w, FrameType.HelloOk, 0, 0, n);
        BinaryPrimitives.WriteUInt16LittleEndian(p, h.Major);
        BinaryPrimitives.WriteUInt16LittleEndian(p[2..], h.Minor);
        BinaryPrimitives.WriteUInt32LittleEndian(p[4..], (uint)h.MaxFrame);
        BinaryPrimitives.WriteUInt32LittleEndian(p[8..], (uint)h.MaxPromptTokens);
        BinaryPrimitives.WriteUInt32LittleEndian(p[12..], (uint)h.MaxInFlight);
        BinaryPrimitives.WriteUInt32LittleEndian(p[16..], (uint)h.IdleTimeoutMs);
        BinaryPrimitives.WriteUInt32LittleEndian(p[20..], (uint)h.ContextLength);
        int o = 24 + PutStr16(p[24..], name);
        o += PutStr16(p[o..], model);
        PutStr16(p[o..], version);
        w.Advance(Wire.HeaderSize + n);
    }

    /// <summary>A REQUEST with a UTF-8 text prompt (<paramref name="promptIds"/> empty) or a token-id prompt.</summary>
    /// <summary>Writes a REQUEST. With <paramref name="resumeTextBytes"/> set, it is a resume (protocol 1.3, flag
    /// <see cref="RequestFlags.Resume"/>): <paramref name="resumeIds"/> and that many text bytes were already delivered.</summary>
    public static void Request(IBufferWriter<byte> w, ulong id, in RequestParams r, ReadOnlySpan<byte> promptText, ReadOnlySpan<int> promptIds,
        IReadOnlyList<string>? stops = null, ReadOnlySpan<int> resumeIds = default, uint? resumeTextBytes = null)
    {
        bool ids = promptText.IsEmpty && !promptIds.IsEmpty;
        int promptBytes = ids ? promptIds.Length * 4 : promptText.Length;
        int stopCount = stops?.Count ?? 0;
        var stopUtf8 = new byte[stopCount][];
        int stopBytes = 0;
        for (int i = 0; i < stopCount; i++) stopBytes += Str16Size(stopUtf8[i] = Encoding.UTF8.GetBytes(stops![i]));
        bool route = r.HasRoute;
        byte[] model = [], version = [], key = [];
        int routeBytes = 0;
        if (route)
        {
            model = Encoding.UTF8.GetBytes(r.Model ?? "");
            version = Encoding.UTF8.GetBytes(r.ModelVersion ?? "");
            key = Encoding.UTF8.GetBytes(r.RouteKey ?? "");
            routeBytes = Str16Size(model) + Str16Size(version) + Str16Size(key);
        }
        bool resume = resumeTextBytes.HasValue;
        int resumeBytes = resume ? ResumeFields.Size(resumeIds.Length) : 0;
        int n = Wire.RequestFixedSize + promptBytes + stopBytes + routeBytes + resumeBytes;
        var p = Begin(w, FrameType.Request, 0, id, n);
        BinaryPrimitives.WriteUInt32LittleEndian(p, (uint)r.MaxTokens);
        BinaryPrimitives.WriteSingleLittleEndian(p[4..], r.Temperature);
        BinaryPrimitives.WriteSingleLittleEndian(p[8..], r.TopP);
        BinaryPrimitives.WriteInt32LittleEndian(p[12..], r.TopK);
        BinaryPrimitives.WriteUInt64LittleEndian(p[16..], r.Seed ?? 0);
        BinaryPrimitives.WriteUInt32LittleEndian(p[24..], r.DeadlineMs);
        p[28] = r.Priority;
        var flags = RequestFlags.None;
        if (ids) flags |= RequestFlags.PromptIds;
        if (r.Seed.HasValue) flags |= RequestFlags.HasSeed;
        if (r.IgnoreEos) flags |= RequestFlags.IgnoreEos;
        if (r.NoText) flags |= RequestFlags.NoText;
        if (r.Whole) flags |= RequestFlags.Whole;
        if (r.Logprobs) flags |= RequestFlags.Logprobs;
        if (route) flags |= RequestFlags.Route;
        if (resume) flags |= RequestFlags.Resume;
        p[29] = (byte)flags;
        BinaryPrimitives.WriteUInt16LittleEndian(p[30..], (ushort)Math.Min(stopCount, ushort.MaxValue));
        BinaryPrimitives.WriteUInt32LittleEndian(p[32..], (uint)(ids ? promptIds.Length : promptText.Length));
        p[36] = r.TokenLogprobs ? (byte)RequestFlags2.TokenLogprobs : (byte)0;
        p[37] = r.TokenLogprobs ? (byte)Math.Clamp(r.TopLogprobs, 0, 255) : (byte)0;
        BinaryPrimitives.WriteUInt16LittleEndian(p[38..], 0);
        int o = Wire.RequestFixedSize;
        if (ids)
        {
            if (BitConverter.IsLittleEndian) MemoryMarshal.AsBytes(promptIds).CopyTo(p[o..]);
            else for (int i = 0; i < promptIds.Length; i++) BinaryPrimitives.WriteInt32LittleEndian(p[(o + 4 * i)..], promptIds[i]);
        }
        else promptText.CopyTo(p[o..]);
        o += promptBytes;
        for (int i = 0; i < stopCount; i++) o += PutStr16(p[o..], stopUtf8[i]);
        if (route)
        {
            o += PutStr16(p[o..], model);
            o += PutStr16(p[o..], version);
            o += PutStr16(p[o..], key);
        }
        if (resume) ResumeFields.Write(p[o..], resumeIds, resumeTextBytes!.Value);
        w.Advance(Wire.HeaderSize + n);
    }

    public static void Empty(IBufferWriter<byte> w, FrameType type, ulong id, byte flags = 0)
    {
        Begin(w, type, flags, id, 0);
        w.Advance(Wire.HeaderSize);
    }

    public static void Cancel(IBufferWriter<byte> w, ulong id) => Empty(w, FrameType.Cancel, id);

    /// <summary>PING or PONG with an opaque payload (at most <see cref="Wire.MaxPingBytes"/>).</summary>
    public static void Ping(IBufferWriter<byte> w, ReadOnlySpan<byte> payload, bool pong = false)
    {
        var p = Begin(w, pong ? FrameType.Pong : FrameType.Ping, 0, 0, payload.Length);
        payload.CopyTo(p);
        w.Advance(Wire.HeaderSize + payload.Length);
    }

    public static void LoadQuery(IBufferWriter<byte> w, uint intervalMs, bool unsubscribe = false)
    {
        var p = Begin(w, FrameType.LoadQuery, unsubscribe ? (byte)1 : (byte)0, 0, 4);
        BinaryPrimitives.WriteUInt32LittleEndian(p, intervalMs);
        w.Advance(Wire.HeaderSize + 4);
    }

    public static void Drain(IBufferWriter<byte> w, ReadOnlySpan<byte> token)
    {
        int n = Str16Size(token);
        PutStr16(Begin(w, FrameType.Drain, 0, 0, n), token);
        w.Advance(Wire.HeaderSize + n);
    }

    /// <summary>ADMIN (protocol 1.2): the admin token and a one-line command (docs/router.md, "Admin commands").</summary>
    public static void Admin(IBufferWriter<byte> w, ReadOnlySpan<byte> token, ReadOnlySpan<byte> command)
    {
        int n = Str16Size(token) + Str16Size(command);
        var p = Begin(w, FrameType.Admin, 0, 0, n);
        int o = PutStr16(p, token);
        PutStr16(p[o..], command);
        w.Advance(Wire.HeaderSize + n);
    }

    /// <summary>ADMIN_OK: the command's result, one JSON object.</summary>
    public static void AdminOk(IBufferWriter<byte> w, string json)
    {
        Utf8(json, out var body);
        int n = Str16Size(body);
        PutStr16(Begin(w, FrameType.AdminOk, 0, 0, n), body);
        w.Advance(Wire.HeaderSize + n);
    }

    public static void DrainOk(IBufferWriter<byte> w, uint graceMs)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(Begin(w, FrameType.DrainOk, 0, 0, 4), graceMs);
        w.Advance(Wire.HeaderSize + 4);
    }

    /// <summary>A DELTA of token ids and the UTF-8 text they completed (either may be empty), and (protocol 1.4) a
    /// log-probability section built by <see cref="DeltaLogprobs"/> (empty: none, and the flag stays clear).</summary>
    public static void Delta(IBufferWriter<byte> w, ulong id, ReadOnlySpan<int> ids, ReadOnlySpan<byte> text, ReadOnlySpan<byte> logprobs = default)
    {
        int n = 8 + ids.Length * 4 + text.Length + logprobs.Length;
        var p = Begin(w, FrameType.Delta, logprobs.IsEmpty ? (byte)0 : (byte)DeltaFlags.Logprobs, id, n);
        BinaryPrimitives.WriteUInt32LittleEndian(p, (uint)ids.Length);
        BinaryPrimitives.WriteUInt32LittleEndian(p[4..], (uint)text.Length);
        if (BitConverter.IsLittleEndian) MemoryMarshal.AsBytes(ids).CopyTo(p[8..]);
        else for (int i = 0; i < ids.Length; i++) BinaryPrimitives.WriteInt32LittleEndian(p[(8 + 4 * i)..], ids[i]);
        text.CopyTo(p[(8 + ids.Length * 4)..]);
        logprobs.CopyTo(p[(8 + ids.Length * 4 + text.Length)..]);
        w.Advance(Wire.HeaderSize + n);
    }

    public static void Final(IBufferWriter<byte> w, ulong id, in FinalInfo f, ReadOnlySpan<byte> detail, ReadOnlySpan<byte> message)
    {
        int n = Wire.FinalFixedSize + Str16Size(detail) + Str16Size(message) + (f.HasLogprobs ? 8 : 0);
        var p = Begin(w, FrameType.Final, 0, id, n);
        BinaryPrimitives.WriteUInt16LittleEndian(p, (ushort)f.Status);
        p[2] = (byte)f.Finish;
        p[3] = f.Retriable ? (byte)1 : (byte)0;
        BinaryPrimitives.WriteUInt32LittleEndian(p[4..], f.RetryAfterMs);
        BinaryPrimitives.WriteUInt32LittleEndian(p[8..], f.PromptTokens);
        BinaryPrimitives.WriteUInt32LittleEndian(p[12..], f.CachedPromptTokens);
        BinaryPrimitives.WriteUInt32LittleEndian(p[16..], f.CompletionTokens);
        BinaryPrimitives.WriteUInt32LittleEndian(p[20..], f.Preemptions);
        for (int i = 0; i < Wire.TimingSlots; i++) BinaryPrimitives.WriteUInt32LittleEndian(p[(24 + 4 * i)..], f.Timings[i]);
        int o = Wire.FinalFixedSize;
        o += PutStr16(p[o..], detail);
        o += PutStr16(p[o..], message);
        if (f.HasLogprobs)
        {
            BinaryPrimitives.WriteSingleLittleEndian(p[o..], f.LogprobMean);
            BinaryPrimitives.WriteSingleLittleEndian(p[(o + 4)..], f.LogprobMin);
        }
        w.Advance(Wire.HeaderSize + n);
    }

    /// <summary>FINAL with string detail and message (encodes them; for cold paths such as rejections).</summary>
    public static void Final(IBufferWriter<byte> w, ulong id, in FinalInfo f, string? detail, string? message)
    {
        Utf8(detail, out var d);
        Utf8(message, out var m);
        Final(w, id, f, d, m);
    }

    public static void LoadReport(IBufferWriter<byte> w, in LoadReport r)
    {
        Utf8(r.Model, out var model);
        Utf8(r.ModelVersion, out var version);
        int n = Wire.LoadReportSize + Str16Size(model) + Str16Size(version);
        var p = Begin(w, FrameType.LoadReport, 0, 0, n);
        p[0] = (byte)r.State;
        p[1] = 0;
        BinaryPrimitives.WriteUInt16LittleEndian(p[2..], (ushort)Math.Clamp(r.Workers, 0, ushort.MaxValue));
        BinaryPrimitives.WriteUInt32LittleEndian(p[4..], (uint)Math.Max(0, r.Running));
        BinaryPrimitives.WriteUInt32LittleEndian(p[8..], (uint)Math.Max(0, r.Queued));
        BinaryPrimitives.WriteUInt32LittleEndian(p[12..], (uint)Math.Max(0, r.InFlight));
        BinaryPrimitives.WriteSingleLittleEndian(p[16..], r.KvFreeFraction);
        BinaryPrimitives.WriteUInt32LittleEndian(p[20..], (uint)Math.Max(0, r.EstimatedWaitMs));
        BinaryPrimitives.WriteUInt32LittleEndian(p[24..], (uint)Math.Max(0, r.MaxRunning));
        BinaryPrimitives.WriteUInt32LittleEndian(p[28..], (uint)Math.Max(0, r.AgeMs));
        int o = Wire.LoadReportSize + PutStr16(p[Wire.LoadReportSize..], model);
        PutStr16(p[o..], version);
        w.Advance(Wire.HeaderSize + n);
    }

    public static void Error(IBufferWriter<byte> w, WireStatus status, bool fatal, uint retryAfterMs, string message)
    {
        Utf8(message, out var m);
        int n = 8 + Str16Size(m);
        var p = Begin(w, FrameType.Error, fatal ? (byte)1 : (byte)0, 0, n);
        BinaryPrimitives.WriteUInt16LittleEndian(p, (ushort)status);
        BinaryPrimitives.WriteUInt16LittleEndian(p[2..], 0);
        BinaryPrimitives.WriteUInt32LittleEndian(p[4..], retryAfterMs);
        PutStr16(p[8..], m);
        w.Advance(Wire.HeaderSize + n);
    }
}
