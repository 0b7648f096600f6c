namespace FastServe.Protocol;

/// <summary>Constants of the wire protocol (docs/protocol.md is the specification).</summary>
public static class Wire
{
    /// <summary>"FSRV" read as a little-endian u32: the first field of <c>HELLO</c>.</summary>
    public const uint Magic = 0x56525346;
    public const ushort Major = 1;
    public const ushort Minor = 4;
    /// <summary>Bytes of every frame header: u32 length, u8 type, u8 flags, u16 reserved, u64 id.</summary>
    public const int HeaderSize = 16;
    public const int DefaultMaxFrame = 1 << 20;
    /// <summary>Fixed part of a <c>REQUEST</c> payload before the prompt.</summary>
    public const int RequestFixedSize = 40;
    /// <summary>Fixed part of a <c>FINAL</c> payload before its two strings.</summary>
    public const int FinalFixedSize = 56;
    public const int LoadReportSize = 32;
    public const int HelloOkFixedSize = 24;
    public const int MaxStops = 8;
    public const int MaxStopBytes = 256;
    public const int MaxPingBytes = 64;
    /// <summary>Longest model name or version a REQUEST, HELLO_OK or LOAD_REPORT carries (UTF-8 bytes).</summary>
    public const int MaxModelBytes = 64;
    /// <summary>Longest routing key a REQUEST carries (UTF-8 bytes).</summary>
    public const int MaxRouteKeyBytes = 256;
    /// <summary>Longest ADMIN command (UTF-8 bytes).</summary>
    public const int MaxAdminBytes = 16 << 10;
    /// <summary>Timing slots in <c>FINAL</c> (see <see cref="Timing"/>).</summary>
    public const int TimingSlots = 8;
}

/// <summary>Frame types. 0x0_ travel client → server, 0x8_ server → client.</summary>
public enum FrameType : byte
{
    Hello = 0x01,
    Request = 0x02,
    Cancel = 0x03,
    Ping = 0x04,
    LoadQuery = 0x05,
    Drain = 0x06,
    Admin = 0x07,
    HelloOk = 0x81,
    Delta = 0x82,
    Final = 0x83,
    Pong = 0x84,
    LoadReport = 0x85,
    DrainOk = 0x86,
    AdminOk = 0x87,
    Error = 0x8F,
}

/// <summary>How a request (FINAL) or a connection (ERROR) ended. Values and names are stable.</summary>
public enum WireStatus : ushort
{
    Ok = 0,
    Cancelled = 1,
    BadRequest = 2,
    TooLarge = 3,
    Overloaded = 4,
    DeadlineExceeded = 5,
    Draining = 6,
    Unauthorized = 7,
    Internal = 8,
    Unavailable = 9,
    TooManyRequests = 10,
    UnsupportedVersion = 11,
    /// <summary>The request named a model (or version) that no replica behind this end serves (protocol 1.2).</summary>
    NotFound = 12,
}

/// <summary>Why an <c>ok</c> request stopped generating.</summary>
public enum WireFinish : byte { None = 0, Length = 1, Eos = 2, Stop = 3, ContextFull = 4 }

/// <summary>Replica state in a load report.</summary>
public enum ReplicaState : byte { Starting = 0, Ready = 1, Draining = 2, Unavailable = 3 }

/// <summary>Bits of a REQUEST's flags byte (payload offset 29).</summary>
[Flags]
public enum RequestFlags : byte
{
    None = 0,
    PromptIds = 1,
    HasSeed = 2,
    IgnoreEos = 4,
    NoText = 8,
    /// <summary>
    /// The client uses the output only once the FINAL has come (it does not show tokens as they arrive). A replica
    /// ignores it; a router may then hold the DELTAs back until the FINAL and, when the replica is lost mid-generation,
    /// run the request again elsewhere instead of failing it (docs/router.md, "Retries").
    /// </summary>
    Whole = 16,
    /// <summary>Protocol 1.2: the payload ends with the routing fields after the stop strings: str16 model, str16
    /// version, str16 key (each may be empty; docs/protocol.md).</summary>
    Route = 32,
    /// <summary>Protocol 1.2: the FINAL carries the mean and the minimum log-probability of the generated tokens.</summary>
    Logprobs = 64,
    /// <summary>Protocol 1.3: the request continues a generation another replica began (a router's failover): the
    /// payload ends with u32 n, n × u32 token ids already delivered to the client, u32 text bytes already delivered
    /// (docs/protocol.md, "Resuming a request"). A replica of minor &lt; 3 is never sent one.</summary>
    Resume = 128,
}

/// <summary>Bits of a REQUEST's second flags byte (payload offset 36; protocol 1.4).</summary>
[Flags]
public enum RequestFlags2 : byte
{
    None = 0,
    /// <summary>Protocol 1.4: every DELTA carries each generated token's log-probability and its
    /// <c>top_logprobs</c> (payload offset 37) most likely alternatives (<see cref="DeltaLogprobs"/>). A replica of
    /// minor &lt; 4 is never sent one.</summary>
    TokenLogprobs = 1,
}

/// <summary>Bits of a DELTA's header flags.</summary>
[Flags]
public enum DeltaFlags : byte
{
    None = 0,
    /// <summary>Protocol 1.4: the payload ends with a log-probability section (<see cref="DeltaLogprobs"/>).</summary>
    Logprobs = 1,
}

/// <summary>Indexes of the hand-off timing slots of FINAL: microseconds after the server read the request.</summary>
public enum Timing
{
    Tokenized = 0,
    EngineReceived = 1,
    Admitted = 2,
    FirstScheduled = 3,
    FirstToken = 4,
    EngineFinished = 5,
    FinalSent = 6,
    /// <summary>Not a hand-off but a duration: the device time the request cost, µs (its token-weighted share of
    /// every step that computed its rows; 0 from a server before protocol 1.1).</summary>
    Device = 7,
}

public static class WireNames
{
    /// <summary>The stable snake_case name of a status (docs/protocol.md).</summary>
    public static string Of(WireStatus s) => s switch
    {
        WireStatus.Ok => "ok",
        WireStatus.Cancelled => "cancelled",
        WireStatus.BadRequest => "bad_request",
        WireStatus.TooLarge => "too_large",
        WireStatus.Overloaded => "overloaded",
        WireStatus.DeadlineExceeded => "deadline_exceeded",
        WireStatus.Draining => "draining",
        WireStatus.Unauthorized => "unauthorized",
        WireStatus.Internal => "internal",
        WireStatus.Unavailable => "unavailable",
        WireStatus.TooManyRequests => "too_many_requests",
        WireStatus.UnsupportedVersion => "unsupported_version",
        WireStatus.NotFound => "not_found",
        _ => "unknown",
    };

    public static string Of(WireFinish f) => f switch
    {
        WireFinish.Length => "length",
        WireFinish.Eos => "eos",
        WireFinish.Stop => "stop",
        WireFinish.ContextFull => "context_full",
        _ => "none",
    };

    public static string Of(ReplicaState s) => s switch
    {
        ReplicaState.Starting => "starting",
        ReplicaState.Ready => "ready",
        ReplicaState.Draining => "draining",
        _ => "unavailable",
    };

    /// <summary>Whether sending the same request again (here or elsewhere) may succeed.</summary>
    public static bool IsRetriable(WireStatus s) =>
        s is WireStatus.Overloaded or WireStatus.Draining or WireStatus.Unavailable or WireStatus.TooManyRequests;

    public static readonly WireStatus[] All = Enum.GetValues<WireStatus>();
}
