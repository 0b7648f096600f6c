using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Unicode;

namespace FastServe.Protocol;

/// <summary>A parsed HELLO (client name and API key are slices of the payload).</summary>
public readonly ref struct HelloView
{
    public readonly uint Magic;
    public readonly ushort Major, Minor;
    public readonly ReadOnlySpan<byte> ClientName;
    /// <summary>Protocol 1.3: the API key after the client name; empty when the HELLO carries none (an older client,
    /// or a client without a key).</summary>
    public readonly ReadOnlySpan<byte> ApiKey;

    public HelloView(uint magic, ushort major, ushort minor, ReadOnlySpan<byte> name, ReadOnlySpan<byte> apiKey = default)
    {
        Magic = magic; Major = major; Minor = minor; ClientName = name; ApiKey = apiKey;
    }

    public static bool TryParse(ReadOnlySpan<byte> payload, out HelloView v)
    {
        var r = new PayloadReader(payload);
        v = default;
        if (!r.TryU32(out uint magic) || !r.TryU16(out ushort major) || !r.TryU16(out ushort minor)) return false;
        // The name and (1.3) the key are optional; bytes after them are a later minor's and are ignored.
        ReadOnlySpan<byte> key = default;
        if (!r.TryStr16(out var name)) name = default;
        else if (!r.TryStr16(out key)) key = default;
        v = new HelloView(magic, major, minor, name, key);
        return true;
    }
}

/// <summary>The server's answer to HELLO: its version and limits, and (protocol 1.2) the model it serves: its name
/// and version, empty from a router or an older server.</summary>
public readonly record struct HelloOk(ushort Major, ushort Minor, int MaxFrame, int MaxPromptTokens, int MaxInFlight, int IdleTimeoutMs, int ContextLength, string ServerName,
    string Model = "", string ModelVersion = "")
{
    public static bool TryParse(ReadOnlySpan<byte> payload, out HelloOk v)
    {
        var r = new PayloadReader(payload);
        v = default;
        if (!r.TryU16(out ushort major) || !r.TryU16(out ushort minor) || !r.TryU32(out uint maxFrame) || !r.TryU32(out uint maxPrompt)
            || !r.TryU32(out uint maxInFlight) || !r.TryU32(out uint idle) || !r.TryU32(out uint ctx) || !r.TryStr16(out var name)) return false;
        // 1.2 appended the model's name and version; a shorter payload is an older server's.
        if (!r.TryStr16(out var model) || !r.TryStr16(out var version)) model = version = default;
        v = new HelloOk(major, minor, (int)Math.Min(maxFrame, int.MaxValue), (int)Math.Min(maxPrompt, int.MaxValue), (int)Math.Min(maxInFlight, int.MaxValue),
            (int)Math.Min(idle, int.MaxValue), (int)Math.Min(ctx, int.MaxValue), Encoding.UTF8.GetString(name), Utf8Text.Decode(model), Utf8Text.Decode(version));
        return true;
    }
}

/// <summary>Why a REQUEST payload was refused by <see cref="RequestView.TryParse"/>: a stable detail code.</summary>
public enum RequestParseError : byte
{
    None,
    Truncated,
    TooManyStops,
    BadStop,
    PromptLength,
    TrailingBytes,
    /// <summary>The routing fields (flag <see cref="RequestFlags.Route"/>) are missing, too long or not UTF-8.</summary>
    BadRoute,
    /// <summary>The resume fields (flag <see cref="RequestFlags.Resume"/>) are missing or claim more ids than any
    /// request may generate.</summary>
    BadResume,
}

/// <summary>
/// A parsed REQUEST: fixed fields plus slices of the payload for the prompt and the stop strings. Zero-copy: valid
/// only while the receive buffer holds the frame. Value ranges (temperature, max_tokens, ...) are checked by the
/// server, not here; this only checks that the layout is self-consistent.
/// </summary>
public readonly ref struct RequestView
{
    public readonly uint MaxTokens;
    public readonly float Temperature, TopP;
    public readonly int TopK;
    public readonly ulong Seed;
    public readonly uint DeadlineMs;
    public readonly byte Priority;
    public readonly RequestFlags Flags;
    public readonly int StopCount;
    /// <summary>UTF-8 bytes, or 4 × prompt_len bytes of little-endian u32 ids when <see cref="RequestFlags.PromptIds"/>.</summary>
    public readonly ReadOnlySpan<byte> Prompt;
    /// <summary>The stop strings, each str16, <see cref="StopCount"/> of them (use <see cref="GetStop"/>).</summary>
    public readonly ReadOnlySpan<byte> Stops;
    /// <summary>The model the request names (UTF-8, empty = whichever the server serves; protocol 1.2).</summary>
    public readonly ReadOnlySpan<byte> Model;
    /// <summary>The model version the request names (empty = any).</summary>
    public readonly ReadOnlySpan<byte> ModelVersion;
    /// <summary>The routing key (empty = none): a router that splits traffic between versions sends requests with
    /// the same key to the same version.</summary>
    public readonly ReadOnlySpan<byte> RouteKey;
    /// <summary>Payload offset where the routing fields start (the payload's length when there are none): a router
    /// forwards the payload cut here, with the flag cleared.</summary>
    public readonly int RouteOffset;
    /// <summary>Protocol 1.3, with <see cref="RequestFlags.Resume"/>: the token ids already delivered to the client,
    /// 4 × <see cref="ResumeCount"/> bytes of little-endian u32 (use <see cref="ResumeId"/>); empty otherwise.</summary>
    public readonly ReadOnlySpan<byte> ResumeIds;
    /// <summary>With <see cref="RequestFlags.Resume"/>: UTF-8 bytes of text already delivered to the client.</summary>
    public readonly uint ResumeTextBytes;
    /// <summary>Protocol 1.4: the second flags byte (payload offset 36; 0 from older clients).</summary>
    public readonly RequestFlags2 Flags2;
    /// <summary>Protocol 1.4, with <see cref="RequestFlags2.TokenLogprobs"/>: alternatives per token (payload offset 37;
    /// the request rules allow 0 … <see cref="RequestRules.MaxLogprobs"/>).</summary>
    public readonly byte TopLogprobs;

    private RequestView(uint maxTokens, float temperature, float topP, int topK, ulong seed, uint deadlineMs, byte priority, RequestFlags flags,
        int stopCount, ReadOnlySpan<byte> prompt, ReadOnlySpan<byte> stops, ReadOnlySpan<byte> model, ReadOnlySpan<byte> version,
        ReadOnlySpan<byte> key, int routeOffset, ReadOnlySpan<byte> resumeIds, uint resumeText, RequestFlags2 flags2, byte topLogprobs)
    {
        Flags2 = flags2; TopLogprobs = topLogprobs;
        MaxTokens = maxTokens; Temperature = temperature; TopP = topP; TopK = topK; Seed = seed; DeadlineMs = deadlineMs;
        Priority = priority; Flags = flags; StopCount = stopCount; Prompt = prompt; Stops = stops;
        Model = model; ModelVersion = version; RouteKey = key; RouteOffset = routeOffset;
        ResumeIds = resumeIds; ResumeTextBytes = resumeText;
    }

    /// <summary>The request continues a generation (<see cref="RequestFlags.Resume"/>).</summary>
    public bool IsResume => (Flags & RequestFlags.Resume) != 0;
    /// <summary>Every DELTA should carry per-token log-probabilities (<see cref="RequestFlags2.TokenLogprobs"/>).</summary>
    public bool WantsTokenLogprobs => (Flags2 & RequestFlags2.TokenLogprobs) != 0;
    public int ResumeCount => ResumeIds.Length / 4;
    public int ResumeId(int i) => BinaryPrimitives.ReadInt32LittleEndian(ResumeIds[(i * 4)..]);

    public bool PromptIsIds => (Flags & RequestFlags.PromptIds) != 0;
    public int PromptIdCount => Prompt.Length / 4;
    public int PromptId(int i) => BinaryPrimitives.ReadInt32LittleEndian(Prompt[(i * 4)..]);

    /// <summary>The i-th stop string's UTF-8 bytes (layout already validated by <see cref="TryParse"/>).</summary>
    public ReadOnlySpan<byte> GetStop(int i)
    {
        var r = new PayloadReader(Stops);
        ReadOnlySpan<byte> s = default;
        for (int k = 0; k <= i; k++) r.TryStr16(out s);
        return s;
    }

    public static RequestParseError TryParse(ReadOnlySpan<byte> payload, out RequestView v)
    {
        v = default;
        if (payload.Length < Wire.RequestFixedSize) return RequestParseError.Truncated;
        var r = new PayloadReader(payload);
        r.TryU32(out uint maxTokens); r.TryF32(out float temp); r.TryF32(out float topP); r.TryI32(out int topK);
        r.TryU64(out ulong seed); r.TryU32(out uint deadline); r.TryU8(out byte prio); r.TryU8(out byte flags);
        r.TryU16(out ushort stopCount); r.TryU32(out uint promptLen); r.TryU8(out byte flags2); r.TryU8(out byte topLogprobs); r.TryU16(out _);
        if (stopCount > Wire.MaxStops) return RequestParseError.TooManyStops;
        bool ids = (flags & (byte)RequestFlags.PromptIds) != 0;
        long promptBytes = ids ? (long)promptLen * 4 : promptLen;
        if (promptBytes > r.Remaining) return RequestParseError.PromptLength;
        r.TryBytes((int)promptBytes, out var prompt);
        int stopsStart = r.Position;
        for (int i = 0; i < stopCount; i++)
        {
            if (!r.TryStr16(out var s)) return RequestParseError.Truncated;
            if (s.Length == 0 || s.Length > Wire.MaxStopBytes) return RequestParseError.BadStop;
        }
        int routeOffset = r.Position;
        ReadOnlySpan<byte> model = default, version = default, key = default;
        if ((flags & (byte)RequestFlags.Route) != 0)
        {
            if (!r.TryStr16(out model) || !r.TryStr16(out version) || !r.TryStr16(out key)
                || model.Length > Wire.MaxModelBytes || version.Length > Wire.MaxModelBytes || key.Length > Wire.MaxRouteKeyBytes
                || !Utf8Text.IsValid(model) || !Utf8Text.IsValid(version))
                return RequestParseError.BadRoute;
        }
        ReadOnlySpan<byte> resumeIds = default;
        uint resumeText = 0;
        if ((flags & (byte)RequestFlags.Resume) != 0)
        {
            // Bounded before any length is trusted: no request generates more than RequestRules.MaxTokensLimit ids.
            if (!r.TryU32(out uint n) || n > RequestRules.MaxTokensLimit || !r.TryBytes((int)n * 4, out resumeIds) || !r.TryU32(out resumeText))
                return RequestParseError.BadResume;
        }
        if (r.Remaining != 0) return RequestParseError.TrailingBytes;
        v = new RequestView(maxTokens, temp, topP, topK, seed, deadline, prio, (RequestFlags)flags, stopCount, prompt,
            payload[stopsStart..routeOffset], model, version, key, routeOffset, resumeIds, resumeText, (RequestFlags2)flags2,
            (flags2 & (byte)RequestFlags2.TokenLogprobs) != 0 ? topLogprobs : (byte)0);
        return RequestParseError.None;
    }

    public static string DetailCode(RequestParseError e) => e switch
    {
        RequestParseError.Truncated => "frame.truncated",
        RequestParseError.TooManyStops => "request.too_many_stops",
        RequestParseError.BadStop => "request.bad_stop",
        RequestParseError.PromptLength => "request.prompt_length",
        RequestParseError.TrailingBytes => "frame.trailing_bytes",
        RequestParseError.BadRoute => "request.bad_route",
        RequestParseError.BadResume => RequestRules.BadResume,
        _ => "",
    };
}

/// <summary>The resume fields of a REQUEST (protocol 1.3, flag <see cref="RequestFlags.Resume"/>): u32 n, n × u32
/// token ids already delivered, u32 text bytes already delivered. They follow the stop strings (and the routing
/// fields when those are present).</summary>
public static class ResumeFields
{
    /// <summary>Bytes the fields take for <paramref name="ids"/> ids.</summary>
    public static int Size(int ids) => 8 + 4 * ids;

    /// <summary>Writes the fields at the start of <paramref name="dst"/> (at least <see cref="Size"/> bytes).</summary>
    public static void Write(Span<byte> dst, ReadOnlySpan<int> ids, uint textBytes)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(dst, (uint)ids.Length);
        for (int i = 0; i < ids.Length; i++) BinaryPrimitives.WriteInt32LittleEndian(dst[(4 + 4 * i)..], ids[i]);
        BinaryPrimitives.WriteUInt32LittleEndian(dst[(4 + 4 * ids.Length)..], textBytes);
    }

    /// <summary>As <see cref="Write(Span{byte}, ReadOnlySpan{int}, uint)"/> with the ids as little-endian u32 bytes
    /// (a DELTA's id bytes, as a router records them).</summary>
    public static void Write(Span<byte> dst, ReadOnlySpan<byte> idBytes, uint textBytes)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(dst, (uint)(idBytes.Length / 4));
        idBytes.CopyTo(dst[4..]);
        BinaryPrimitives.WriteUInt32LittleEndian(dst[(4 + idBytes.Length)..], textBytes);
    }
}

/// <summary>A parsed DELTA: token ids, UTF-8 text and (protocol 1.4) the log-probability section, slices of the payload.</summary>
public readonly ref struct DeltaView
{
    public readonly ReadOnlySpan<byte> IdBytes;
    public readonly ReadOnlySpan<byte> Text;
    /// <summary>With DELTA flag <see cref="DeltaFlags.Logprobs"/>: the section <see cref="DeltaLogprobs"/> reads
    /// (validated); empty otherwise.</summary>
    public readonly ReadOnlySpan<byte> Logprobs;

    private DeltaView(ReadOnlySpan<byte> ids, ReadOnlySpan<byte> text, ReadOnlySpan<byte> logprobs) { IdBytes = ids; Text = text; Logprobs = logprobs; }

    public int Count => IdBytes.Length / 4;
    public int Id(int i) => BinaryPrimitives.ReadInt32LittleEndian(IdBytes[(i * 4)..]);

    /// <summary>Parses a DELTA payload; <paramref name="flags"/> is the frame header's (with
    /// <see cref="DeltaFlags.Logprobs"/> the bytes after the text must be a well-formed section of at most one entry
    /// per id; without it, bytes after the text are a later minor's and are ignored).</summary>
    public static bool TryParse(ReadOnlySpan<byte> payload, out DeltaView v, byte flags = 0)
    {
        v = default;
        var r = new PayloadReader(payload);
        if (!r.TryU32(out uint n) || !r.TryU32(out uint textLen)) return false;
        if (n > int.MaxValue / 4 || !r.TryBytes((int)n * 4, out var ids)) return false;
        if (textLen > int.MaxValue || !r.TryBytes((int)textLen, out var text)) return false;
        ReadOnlySpan<byte> logprobs = default;
        if ((flags & (byte)DeltaFlags.Logprobs) != 0)
        {
            logprobs = payload[r.Position..];
            if (!DeltaLogprobs.IsValid(logprobs, (int)n)) return false;
        }
        v = new DeltaView(ids, text, logprobs);
        return true;
    }
}

/// <summary>The fixed part of FINAL (the two strings travel beside it).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct FinalInfo
{
    public WireStatus Status;
    public WireFinish Finish;
    public bool Retriable;
    public uint RetryAfterMs;
    public uint PromptTokens, CachedPromptTokens, CompletionTokens, Preemptions;
    public TimingSlots Timings;
    /// <summary>Protocol 1.2, for a request with <see cref="RequestFlags.Logprobs"/>: the FINAL ends with the mean and the
    /// minimum log-probability of the generated tokens (NaN when none was generated).</summary>
    public bool HasLogprobs;
    public float LogprobMean, LogprobMin;

    public static bool TryParse(ReadOnlySpan<byte> payload, out FinalInfo v, out ReadOnlySpan<byte> detail, out ReadOnlySpan<byte> message)
    {
        v = default;
        detail = message = default;
        var r = new PayloadReader(payload);
        if (payload.Length < Wire.FinalFixedSize) return false;
        r.TryU16(out ushort status); r.TryU8(out byte finish); r.TryU8(out byte flags); r.TryU32(out v.RetryAfterMs);
        r.TryU32(out v.PromptTokens); r.TryU32(out v.CachedPromptTokens); r.TryU32(out v.CompletionTokens); r.TryU32(out v.Preemptions);
        for (int i = 0; i < Wire.TimingSlots; i++) { r.TryU32(out uint t); v.Timings[i] = t; }
        if (!r.TryStr16(out detail) || !r.TryStr16(out message)) return false;
        if (r.TryF32(out float mean) && r.TryF32(out float min))
        {
            v.HasLogprobs = true;
            v.LogprobMean = mean;
            v.LogprobMin = min;
        }
        v.Status = (WireStatus)status;
        v.Finish = (WireFinish)finish;
        v.Retriable = (flags & 1) != 0;
        return true;
    }
}

/// <summary>Eight u32 microsecond offsets (<see cref="Timing"/> names them).</summary>
[System.Runtime.CompilerServices.InlineArray(Wire.TimingSlots)]
public struct TimingSlots
{
    private uint _e0;
}

/// <summary>A replica's load, as reported in LOAD_REPORT, and (protocol 1.2) the model it serves (empty from a router
/// or an older server).</summary>
public readonly record struct LoadReport(ReplicaState State, int Workers, int Running, int Queued, int InFlight, float KvFreeFraction,
    int EstimatedWaitMs, int MaxRunning, int AgeMs, string Model = "", string ModelVersion = "")
{
    public static bool TryParse(ReadOnlySpan<byte> payload, out LoadReport v)
    {
        v = default;
        if (payload.Length < Wire.LoadReportSize) return false;
        var r = new PayloadReader(payload);
        r.TryU8(out byte state); r.TryU8(out _); r.TryU16(out ushort workers); r.TryU32(out uint running); r.TryU32(out uint queued);
        r.TryU32(out uint inFlight); r.TryF32(out float kv); r.TryU32(out uint wait); r.TryU32(out uint maxRunning); r.TryU32(out uint age);
        if (!r.TryStr16(out var model) || !r.TryStr16(out var version)) model = version = default;
        v = new LoadReport((ReplicaState)state, workers, Sat(running), Sat(queued), Sat(inFlight), kv, Sat(wait), Sat(maxRunning), Sat(age),
            Utf8Text.Decode(model), Utf8Text.Decode(version));
        return true;
    }

    private static int Sat(uint x) => (int)Math.Min(x, int.MaxValue);
}

/// <summary>A parsed ADMIN frame (protocol 1.2): the admin token and a one-line command, slices of the payload.</summary>
public readonly ref struct AdminView
{
    public readonly ReadOnlySpan<byte> Token;
    public readonly ReadOnlySpan<byte> Command;

    private AdminView(ReadOnlySpan<byte> token, ReadOnlySpan<byte> command) { Token = token; Command = command; }

    public static bool TryParse(ReadOnlySpan<byte> payload, out AdminView v)
    {
        v = default;
        var r = new PayloadReader(payload);
        if (!r.TryStr16(out var token) || !r.TryStr16(out var command) || command.Length > Wire.MaxAdminBytes) return false;
        v = new AdminView(token, command);
        return true;
    }
}

/// <summary>A parsed connection-level ERROR.</summary>
public readonly record struct ErrorInfo(WireStatus Status, bool Fatal, uint RetryAfterMs, string Message)
{
    public static bool TryParse(ReadOnlySpan<byte> payload, byte flags, out ErrorInfo v)
    {
        v = default;
        var r = new PayloadReader(payload);
        if (!r.TryU16(out ushort status) || !r.TryU16(out _) || !r.TryU32(out uint retry) || !r.TryStr16(out var msg)) return false;
        v = new ErrorInfo((WireStatus)status, (flags & 1) != 0, retry, Utf8Text.Decode(msg));
        return true;
    }
}

/// <summary>UTF-8 helpers that never throw.</summary>
public static class Utf8Text
{
    public static bool IsValid(ReadOnlySpan<byte> s) => Utf8.IsValid(s);

    /// <summary>Decodes with U+FFFD for invalid sequences.</summary>
    public static string Decode(ReadOnlySpan<byte> s) => s.IsEmpty ? "" : Encoding.UTF8.GetString(s);

    /// <summary>Length of the longest prefix of <paramref name="s"/> that ends on a UTF-8 sequence boundary
    /// (drops at most 3 trailing bytes of an unfinished sequence).</summary>
    public static int CompletePrefix(ReadOnlySpan<byte> s)
    {
        int n = s.Length;
        for (int back = 1; back <= Math.Min(3, n); back++)
        {
            byte b = s[n - back];
            if ((b & 0xC0) == 0x80) continue;          // continuation byte: keep looking for the lead
            int need = b >= 0xF0 ? 4 : b >= 0xE0 ? 3 : b >= 0xC0 ? 2 : 1;
            return need > back ? n - back : n;
        }
        return n;
    }
}
