using System.Runtime.InteropServices;

namespace FastServe.Embed;

// The C ABI's types, field for field as native/include/fastserve.h declares them (x86-64 System V layout: natural
// alignment, no packing). Every options struct starts with its size in bytes, checked against these (FsStatus.StructSize).
// A field added later goes at the end, with the ABI minor version raised; what each field means is the header's to say.

/// <summary>fs_status: every entry point's return value.</summary>
internal enum FsStatus
{
    Ok = 0,
    InvalidArgument = 1,
    InvalidHandle = 2,
    StructSize = 3,
    BufferTooSmall = 4,
    Timeout = 5,
    Ended = 6,
    Cancelled = 7,
    Model = 8,
    Backend = 9,
    State = 10,
    Limit = 11,
    OutOfMemory = 12,
    Internal = 13,
}

/// <summary>fs_event_kind.</summary>
internal enum FsEventKind { Token = 1, Final = 2 }

/// <summary>fs_model_options (24 bytes).</summary>
[StructLayout(LayoutKind.Sequential)]
internal unsafe struct FsModelOptions
{
    public uint Size;
    /// <summary>fs_quantize: 0 none, 1 FP8 per channel, 2 FP8 per tensor.</summary>
    public int Quantize;
    /// <summary>int (*)(uint64_t done, uint64_t total, void* user): nonzero cancels the load.</summary>
    public delegate* unmanaged<ulong, ulong, void*, int> Progress;
    public void* ProgressUser;
}

/// <summary>fs_engine_options (64 bytes).</summary>
[StructLayout(LayoutKind.Sequential)]
internal unsafe struct FsEngineOptions
{
    public uint Size;
    public int MaxSeqs;
    public int MaxBatchedTokens;
    public int ContextLength;
    public long KvMemoryBytes;
    public byte* Backend;
    public int Threads;
    public int Overlap;
    public int PrefixCaching;
    public int MaxWaitingRequests;
    public int QueueTargetMs;
    public int QueueIntervalMs;
    public int DefaultDeadlineMs;
    /// <summary>fs_kv_dtype: 0 the backend's default, 1 f32, 2 bf16.</summary>
    public int KvDType;
}

/// <summary>fs_request_options (80 bytes).</summary>
[StructLayout(LayoutKind.Sequential)]
internal unsafe struct FsRequestOptions
{
    public uint Size;
    public int MaxTokens;
    public float Temperature;
    public float TopP;
    public int TopK;
    public int Priority;
    public ulong Seed;
    public int HasSeed;
    public int DeadlineMs;
    public int IgnoreEos;
    public int AddBos;
    public byte** Stop;
    public nuint StopCount;
    public delegate* unmanaged<FsEvent*, void*, void> OnEvent;
    public void* User;
}

/// <summary>fs_event (104 bytes; ABI 1.0's was the first 96, <see cref="V10Size"/>).</summary>
[StructLayout(LayoutKind.Sequential)]
internal unsafe struct FsEvent
{
    public uint Size;
    public int Kind;
    public int TokenId;
    public int Status;
    public byte* Text;
    public nuint TextLength;
    public byte* ErrorCode;
    public byte* ErrorMessage;
    public double TtftMs;
    public double LatencyMs;
    public double RetryAfterMs;
    public int FinishReason;
    public int PromptTokens;
    public int CachedPromptTokens;
    public int CompletionTokens;
    public int Preemptions;
    public int TokenIndex;
    public long EmittedNs;

    /// <summary>sizeof(fs_event) in ABI 1.0 (without emitted_ns): fs_request_next still fills such a struct.</summary>
    public const uint V10Size = 96;
}

/// <summary>fs_engine_stats (120 bytes).</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct FsEngineStats
{
    public uint Size;
    public int RunningRequests;
    public int WaitingRequests;
    public int KvBlocksTotal;
    public int KvBlocksUsed;
    public int KvBlocksFree;
    public long Submitted;
    public long Finished;
    public long Cancelled;
    public long DeadlineExceeded;
    public long Overloaded;
    public long Invalid;
    public long Failed;
    public long Preemptions;
    public long Steps;
    public long TokensGenerated;
    public double PrefixHitRate;
    public double DeviceBusySeconds;
}
