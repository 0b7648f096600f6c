using FastServe.Protocol;

namespace FastServe.Client;

/// <summary>Knobs of a <see cref="FastServeClient"/> connection.</summary>
public sealed record FastServeClientOptions
{
    /// <summary>Limit on TCP connect plus the HELLO / HELLO_OK handshake.</summary>
    public TimeSpan ConnectTimeout { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>Sent in HELLO (the server may log it); cut to 65535 UTF-8 bytes.</summary>
    public string ClientName { get; init; } = "fastserve-client";

    /// <summary>
    /// Most bytes queued and not yet written to the socket. A <see cref="FastServeClient.Start"/> that would go over it
    /// fails its call at once with <see cref="ClientFailure.SendBufferFull"/> instead of growing the queue without
    /// bound. A request is always accepted into an empty queue; small control frames (CANCEL, PING, LOAD_QUERY, DRAIN)
    /// are always queued.
    /// </summary>
    public int MaxPendingSendBytes { get; init; } = 8 << 20;

    /// <summary>
    /// Keep the token ids and text of each completion (in <see cref="CompletionResult.Ids"/> / <see cref="CompletionResult.Text"/>
    /// and the delta stream). False for load generation: only counts and timestamps are kept, deltas are not streamed,
    /// and receiving allocates nothing per delta.
    /// </summary>
    public bool CollectOutput { get; init; } = true;

    /// <summary>Largest frame accepted from the server (header excluded); a larger one is a protocol error.</summary>
    public int MaxReceiveFrameBytes { get; init; } = 16 << 20;

    /// <summary>
    /// Send a PING after this long without any frame from the server, so the server's idle timeout does not close a
    /// quiet connection. Null (the default) sends none.
    /// </summary>
    public TimeSpan? KeepAliveInterval { get; init; }

    /// <summary>
    /// Client-side adaptive throttling (docs/client.md): when the server refuses requests for load, refuse a share of
    /// new requests locally (<see cref="ClientFailure.Throttled"/>) instead of sending them. On by default (K = 2 over
    /// 2 minutes); null, or <see cref="AdaptiveThrottleOptions.K"/> = 0, turns it off.
    /// </summary>
    public AdaptiveThrottleOptions? AdaptiveThrottling { get; init; } = AdaptiveThrottleOptions.Default;

    /// <summary>
    /// The API key sent in HELLO (protocol 1.3; docs/security.md), null for none. A server that requires keys refuses a
    /// HELLO without a valid one (<c>client.unauthorized</c>); one that does not, and any server older than 1.3,
    /// ignores it. 16 to 256 printable ASCII characters. Send it only over TLS or on a network you trust.
    /// </summary>
    public string? ApiKey { get; init; }

    /// <summary>TLS settings (target host, trusted CAs, validation); null: plaintext. A refused certificate fails
    /// the connect with <c>client.tls_failed</c>.</summary>
    public FastServe.Protocol.Security.TlsClientSettings? Tls { get; init; }

    internal void Validate()
    {
        AdaptiveThrottling?.Validate();
        if (ConnectTimeout <= TimeSpan.Zero) throw new ArgumentOutOfRangeException(nameof(ConnectTimeout), "must be positive");
        if (MaxPendingSendBytes < 64 << 10) throw new ArgumentOutOfRangeException(nameof(MaxPendingSendBytes), "must be at least 64 KiB");
        if (MaxReceiveFrameBytes < 4096) throw new ArgumentOutOfRangeException(nameof(MaxReceiveFrameBytes), "must be at least 4096");
        if (KeepAliveInterval is { } k && k < TimeSpan.FromMilliseconds(10)) throw new ArgumentOutOfRangeException(nameof(KeepAliveInterval), "must be at least 10 ms");
        ArgumentNullException.ThrowIfNull(ClientName);
        if (ApiKey is not null && FastServe.Protocol.Security.ApiKeyStore.CheckEntry("key", ApiKey) is { } bad) throw new ArgumentException(bad, nameof(ApiKey));
    }
}

/// <summary>
/// A connection-level failure of the client: connect or handshake failed, the connection is gone, or the server
/// answered a control request (drain, ping, load) with an error. Per-request outcomes are never thrown: they are
/// <see cref="CompletionResult"/>s.
/// </summary>
public sealed class FastServeClientException : Exception
{
    public FastServeClientException(string code, string message, WireStatus? status = null, uint retryAfterMs = 0, Exception? inner = null)
        : base(message, inner)
    {
        Code = code;
        Status = status;
        RetryAfterMs = retryAfterMs;
    }

    /// <summary>
    /// Stable code: <c>client.connect_failed</c>, <c>client.connect_timeout</c>, <c>client.hello_rejected</c>,
    /// <c>client.unsupported_version</c>, <c>client.protocol_error</c>, <c>client.connection_lost</c>,
    /// <c>client.unauthorized</c> (a control request's admin token, or HELLO's API key, was refused),
    /// <c>client.tls_failed</c> (the TLS handshake failed: the server's certificate is expired, names another host or
    /// does not chain to a trusted CA, or the server does not speak TLS), <c>client.server_error</c>.
    /// </summary>
    public string Code { get; }

    /// <summary>The server's status when it answered with an ERROR frame.</summary>
    public WireStatus? Status { get; }

    /// <summary>The server's back-off hint in milliseconds (0 = none).</summary>
    public uint RetryAfterMs { get; }

    public override string ToString() => $"error[{Code}]: {Message}";
}
