using FastServe.Protocol;

namespace FastServe.Server.Worker;

/// <summary>Settings of a worker process (`fastserve serve-worker`, started by the supervisor).</summary>
public sealed record WorkerOptions
{
    public required string IpcPath { get; init; }
    /// <summary>Model directory: the worker loads only the tokenizer and config.json from it.</summary>
    public required string ModelDir { get; init; }
    public string Host { get; init; } = "127.0.0.1";
    public required int Port { get; init; }
    public int Index { get; init; }
    public int ParentPid { get; init; }
    public int MaxFrame { get; init; } = Wire.DefaultMaxFrame;
    public int MaxInFlight { get; init; } = 1024;
    public TimeSpan IdleTimeout { get; init; } = TimeSpan.FromSeconds(60);
    /// <summary>Time allowed to receive the rest of a frame once its first byte arrived (slow senders).</summary>
    public TimeSpan FrameTimeout { get; init; } = TimeSpan.FromSeconds(10);
    public TimeSpan HelloTimeout { get; init; } = TimeSpan.FromSeconds(10);
    /// <summary>Unsent bytes allowed per connection before it is closed as not reading.</summary>
    public long MaxSendBytes { get; init; } = 8 << 20;
    /// <summary>Admin token for DRAIN frames; null = every DRAIN is unauthorized.</summary>
    public string? AdminToken { get; init; }
    public TimeSpan Grace { get; init; } = TimeSpan.FromSeconds(30);
    public string ServerName { get; init; } = "fastserve";
    /// <summary>The model's name and version this replica declares (HELLO_OK, LOAD_REPORT) and checks requests that
    /// name one against (<c>not_found</c> otherwise); empty = declares none and accepts any.</summary>
    public string ModelName { get; init; } = "";
    public string ModelVersion { get; init; } = "";
    /// <summary>Where to write this process's start stages (<see cref="Runtime.StartTrace.WriteFile"/>) once it is
    /// linked to the engine, before it says so; null = nowhere.</summary>
    public string? StartFile { get; init; }
    /// <summary>The API keys file (<c>--api-keys-file</c>), null for none; keys also come from
    /// <see cref="Protocol.Security.ApiKeyStore.EnvVar"/> in the worker's environment (docs/security.md).</summary>
    public string? ApiKeysFile { get; init; }
    /// <summary>The supervisor's own key for its readiness probe (<see cref="Supervisor.SupervisorOptions.ProbeKeyEnvVar"/>),
    /// accepted beside the configured keys under the name <c>supervisor</c>; null when keys are off.</summary>
    public string? ProbeKey { get; init; }
    /// <summary>PEM certificate and key for TLS on the client port (<c>--tls-cert</c>, <c>--tls-key</c>); null: plaintext.</summary>
    public string? TlsCert { get; init; }
    public string? TlsKey { get; init; }
}
