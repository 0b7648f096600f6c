using System.Buffers;
using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text;
using FastServe.Protocol;

namespace FastServe.Server.Ipc;

/// <summary>
/// Engine ↔ worker messages (docs/server.md). They reuse the wire protocol's 16-byte frame header (length, type,
/// flags, id) and its reader; many messages travel in one socket write (one per scheduler step, per worker).
/// Ids are the worker's request keys. Both ends are our own processes, but a malformed message still closes the
/// link rather than crashing the reader. Both ends read with <see cref="FastServe.Protocol.Net.FrameConnection.Run"/>
/// (the same connection the wire protocol uses), limited to <see cref="Ipc.MaxMessage"/>.
/// </summary>
internal enum IpcType : byte
{
    // worker → engine
    WorkerHello = 0x41,   // u32 pid, u32 worker index
    Submit = 0x42,        // see SubmitMsg: the struct, the prompt ids, the resumed ids
    Cancel = 0x43,        // empty
    Report = 0x44,        // a finished request's figures, for metrics (ReportMsg)
    Counters = 0x45,      // the worker's cumulative counters: keys, HTTP answers (WorkerCounters)
    // engine → worker
    EngineHello = 0xC1,   // u32 pid, u32 vocab, u32 context, u32 max running, u8 state
    Tokens = 0xC2,        // u32 n, n × i32 ids
    TokenLogprobs = 0xC5, // i32 id, f32 logprob, u8 k, k × (i32 id, f32 logprob): a token of a request with Submit flag 8
    Final = 0xC3,         // FinalMsg + str16 code + str16 message
    Load = 0xC4,          // LoadMsg
}

[StructLayout(LayoutKind.Sequential, Pack = 1)]
internal struct WorkerHelloMsg
{
    public int Pid, Index;
}

[StructLayout(LayoutKind.Sequential, Pack = 1)]
internal struct EngineHelloMsg
{
    public int Pid, Vocab, Context, MaxRunning;
    public byte State;            // ReplicaState
}

[StructLayout(LayoutKind.Sequential, Pack = 1)]
internal struct SubmitMsg
{
    public uint MaxTokens;
    public float Temperature, TopP;
    public int TopK;
    public ulong Seed;
    public byte Flags;            // 1 has_seed, 2 ignore_eos, 4 logprobs (the FINAL's summary), 8 token logprobs
    public byte Priority;
    public byte TopLogprobs;      // with flag 8: alternatives per token (0 … 20)
    public byte Reserved;
    public uint DeadlineMs;
    public long ReceivedTicks;    // when the worker read the request off the socket (Stopwatch ticks; CLOCK_MONOTONIC, shared by all processes)
    public long SentTicks;        // when the worker handed it to the IPC link
    public uint PromptCount;      // then PromptCount × i32 ids
    public uint ResumeCount;      // then ResumeCount × i32 ids: output already delivered (EngineRequest.Resumed)
}

[StructLayout(LayoutKind.Sequential, Pack = 1)]
internal struct FinalMsg
{
    public byte Status;           // FastServe.Scheduler.Engine.RequestStatus
    public byte Finish;           // WireFinish
    public ushort Reserved;
    public uint RetryAfterMs;
    public uint PromptTokens, CachedPromptTokens, CompletionTokens, Preemptions;
    public long EngineReceived, Admitted, FirstScheduled, FirstToken, Finished;
    public uint DeviceUs;         // the request's device time (RequestResult.DeviceTime), µs
    public byte HasLogprobs;      // 1 when the request asked for log-probabilities (Submit flag 4)
    public float LogprobMean, LogprobMin;   // over the generated tokens; NaN when none was generated
}

[StructLayout(LayoutKind.Sequential, Pack = 1)]
internal struct LoadMsg
{
    public byte State;            // ReplicaState
    public byte Reserved0;
    public ushort Workers;
    public uint Running, Queued, InFlight;
    public float KvFreeFraction;
    public uint EstimatedWaitMs, MaxRunning;
    public long TakenTicks;
}

[StructLayout(LayoutKind.Sequential, Pack = 1)]
internal struct ReportMsg
{
    public ushort Status;         // WireStatus
    public byte Finish;           // WireFinish
    public byte Reserved;
    public uint PromptTokens, CompletionTokens;
    public float QueueSeconds, TtftSeconds, TpotSeconds, E2eSeconds;   // NaN = not reached
    public float DeviceSeconds;   // the request's device time (0 when it never reached the engine)
}

internal static class Ipc
{
    public const int MaxMessage = 4 << 20;

    /// <summary>Writes one message whose payload is the struct <paramref name="fixedPart"/> followed by <paramref name="tail"/>.</summary>
    public static void Write<T>(IBufferWriter<byte> w, IpcType type, ulong id, in T fixedPart, ReadOnlySpan<byte> tail = default) where T : unmanaged
    {
        int size = Marshal.SizeOf<T>();
        int n = size + tail.Length;
        var span = w.GetSpan(Wire.HeaderSize + n);
        Header(span, type, id, n);
        MemoryMarshal.Write(span[Wire.HeaderSize..], in fixedPart);
        tail.CopyTo(span[(Wire.HeaderSize + size)..]);
        w.Advance(Wire.HeaderSize + n);
    }

    public static void WriteEmpty(IBufferWriter<byte> w, IpcType type, ulong id)
    {
        Header(w.GetSpan(Wire.HeaderSize), type, id, 0);
        w.Advance(Wire.HeaderSize);
    }

    public static void WriteTokens(IBufferWriter<byte> w, ulong id, int token)
    {
        var span = w.GetSpan(Wire.HeaderSize + 8);
        Header(span, IpcType.Tokens, id, 8);
        BinaryPrimitives.WriteUInt32LittleEndian(span[16..], 1);
        BinaryPrimitives.WriteInt32LittleEndian(span[20..], token);
        w.Advance(Wire.HeaderSize + 8);
    }

    /// <summary>A token of a request that asked for per-token log-probabilities, with its first <paramref name="k"/>
    /// alternatives from <paramref name="top"/>.</summary>
    public static void WriteTokenLogprobs(IBufferWriter<byte> w, ulong id, int token, float logprob, ReadOnlySpan<FastServe.Runtime.Generation.TokenLogprob> top, int k)
    {
        k = Math.Min(k, top.Length);
        int n = 9 + 8 * k;
        var span = w.GetSpan(Wire.HeaderSize + n);
        Header(span, IpcType.TokenLogprobs, id, n);
        var p = span[Wire.HeaderSize..];
        BinaryPrimitives.WriteInt32LittleEndian(p, token);
        BinaryPrimitives.WriteSingleLittleEndian(p[4..], logprob);
        p[8] = (byte)k;
        for (int i = 0; i < k; i++)
        {
            BinaryPrimitives.WriteInt32LittleEndian(p[(9 + 8 * i)..], top[i].Id);
            BinaryPrimitives.WriteSingleLittleEndian(p[(13 + 8 * i)..], top[i].Logprob);
        }
        w.Advance(Wire.HeaderSize + n);
    }

    public static void WriteFinal(IBufferWriter<byte> w, ulong id, in FinalMsg f, string? code, string? message)
    {
        int size = Marshal.SizeOf<FinalMsg>();
        int cl = code is null ? 0 : Math.Min(Encoding.UTF8.GetByteCount(code), 1024);
        int ml = message is null ? 0 : Math.Min(Encoding.UTF8.GetByteCount(message), 4096);
        int n = size + 4 + cl + ml;
        var span = w.GetSpan(Wire.HeaderSize + n + 8);
        Header(span, IpcType.Final, id, n);
        var p = span[Wire.HeaderSize..];
        MemoryMarshal.Write(p, in f);
        int o = size;
        o += Str16(p[o..], code, cl);
        Str16(p[o..], message, ml);
        w.Advance(Wire.HeaderSize + n);
    }

    private static int Str16(Span<byte> dst, string? s, int max)
    {
        int len = 0;
        if (!string.IsNullOrEmpty(s))
        {
            var bytes = Encoding.UTF8.GetBytes(s);
            len = Utf8Text.CompletePrefix(bytes.AsSpan(0, Math.Min(max, bytes.Length)));
            bytes.AsSpan(0, len).CopyTo(dst[2..]);
        }
        BinaryPrimitives.WriteUInt16LittleEndian(dst, (ushort)len);
        return 2 + len;
    }

    private static void Header(Span<byte> span, IpcType type, ulong id, int payload)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(span, (uint)payload);
        span[4] = (byte)type;
        span[5] = 0;
        BinaryPrimitives.WriteUInt16LittleEndian(span[6..], 0);
        BinaryPrimitives.WriteUInt64LittleEndian(span[8..], id);
    }

    /// <summary>Reads the struct at the start of a payload; false if the payload is too short.</summary>
    public static bool TryRead<T>(ReadOnlySpan<byte> payload, out T value, out ReadOnlySpan<byte> tail) where T : unmanaged
    {
        int size = Marshal.SizeOf<T>();
        if (payload.Length < size) { value = default; tail = default; return false; }
        value = MemoryMarshal.Read<T>(payload);
        tail = payload[size..];
        return true;
    }
}
