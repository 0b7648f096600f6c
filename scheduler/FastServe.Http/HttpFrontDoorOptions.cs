using System.Net.Sockets;
using System.Security.Cryptography.X509Certificates;

namespace FastServe.Http;

/// <summary>Settings of an <see cref="HttpFrontDoor"/> (docs/http.md, "Options").</summary>
public sealed record HttpFrontDoorOptions
{
    /// <summary>IPv4 address to bind.</summary>
    public string Host { get; init; } = "127.0.0.1";
    /// <summary>TCP port; 0 = any free port (<see cref="HttpFrontDoor.Port"/> says which).</summary>
    public int Port { get; init; }
    /// <summary>Bind with SO_REUSEPORT, so the worker processes of a replica share one port (the kernel spreads
    /// connections among them).</summary>
    public bool ReusePort { get; init; }

    /// <summary>Hands the server end of an in-process connection to this process's binary-protocol host
    /// (<c>RouterHost.AcceptLocal</c> / <c>WorkerHost.AcceptLocal</c>), which starts a normal session on it.</summary>
    public required Action<Socket> AcceptLocal { get; init; }
    /// <summary>In-process binary clients the HTTP requests share (1 to 16). The host's per-connection limit
    /// (<c>--max-in-flight</c>, 1024) times this bounds the HTTP requests one process runs at once; past it they are
    /// answered 429 <c>too_many_requests</c>.</summary>
    public int LocalClients { get; init; } = 4;
    /// <summary>PING interval of the in-process clients: below the host's idle timeout.</summary>
    public TimeSpan LocalKeepAlive { get; init; } = TimeSpan.FromSeconds(15);

    /// <summary>Largest request body, bytes (Kestrel's MaxRequestBodySize: a larger body is refused with 413 as soon as
    /// its length is known or its bytes pass the limit, never buffered).</summary>
    public long MaxBodyBytes { get; init; } = 1 << 20;
    /// <summary>Time allowed to receive the request line and headers (slow senders).</summary>
    public TimeSpan RequestHeadersTimeout { get; init; } = TimeSpan.FromSeconds(10);
    /// <summary>A body arriving slower than this (bytes/s, after <see cref="MinBodyRateGrace"/>) is aborted.</summary>
    public double MinBodyBytesPerSecond { get; init; } = 240;
    public TimeSpan MinBodyRateGrace { get; init; } = TimeSpan.FromSeconds(5);
    /// <summary>Kestrel's keep-alive timeout of idle HTTP connections.</summary>
    public TimeSpan KeepAliveTimeout { get; init; } = TimeSpan.FromSeconds(120);

    /// <summary>Bearer token → key name (for metrics), null when the token is refused. Null = no key store.</summary>
    public Func<string, string?>? Authenticate { get; init; }
    /// <summary>Refuse requests to <c>/v1/*</c> without a token <see cref="Authenticate"/> accepts (401
    /// <c>invalid_api_key</c>). <c>/health</c> and <c>/ready</c> stay open.</summary>
    public bool KeysRequired { get; init; }
    /// <summary>When set, the listener speaks HTTPS; called per TLS handshake, so a reloading source takes effect on
    /// the next connection. Returning null fails that handshake.</summary>
    public Func<X509Certificate2?>? ServerCertificate { get; init; }

    /// <summary>Whether <c>GET /ready</c> answers 200 (router: an eligible endpoint and not draining; replica: engine up
    /// and not draining).</summary>
    public Func<bool> Ready { get; init; } = static () => true;
    /// <summary>The models <c>GET /v1/models</c> lists.</summary>
    public Func<IReadOnlyList<string>> Models { get; init; } = static () => [];
    /// <summary>Model name answered in responses to requests that name none.</summary>
    public string DefaultModelName { get; init; } = "fastserve";
    /// <summary>Chat messages → prompt.</summary>
    public ChatTemplate ChatTemplate { get; init; } = ChatTemplate.Default;
    /// <summary>Request counts by endpoint and status; null = not counted.</summary>
    public HttpMetrics? Metrics { get; init; }
    public Action<string>? Log { get; init; }
}
