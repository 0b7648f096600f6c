using System.Diagnostics;
using FastServe.Protocol;

namespace FastServe.Router;

/// <summary>How the <see cref="Balancer"/> chooses among the eligible endpoints (docs/router.md).</summary>
public enum BalancePolicy : byte
{
    /// <summary>Power of two choices: two distinct endpoints drawn with probability proportional to their effective
    /// weight; the one with the lower load score wins, ties at random.</summary>
    PowerOfTwo,
    /// <summary>Smooth weighted round-robin over the effective weights (plain rotation when weights are equal).</summary>
    RoundRobin,
    /// <summary>One endpoint drawn with probability proportional to its effective weight.</summary>
    Random,
    /// <summary>The lowest load score over all eligible endpoints, ties at random.</summary>
    LeastLoaded,
}

/// <summary>Names of <see cref="BalancePolicy"/> as the CLI spells them.</summary>
public static class BalancePolicyNames
{
    /// <summary>The CLI name: <c>p2c</c>, <c>round-robin</c>, <c>random</c>, <c>least-loaded</c>.</summary>
    public static string Of(BalancePolicy p) => p switch
    {
        BalancePolicy.RoundRobin => "round-robin",
        BalancePolicy.Random => "random",
        BalancePolicy.LeastLoaded => "least-loaded",
        _ => "p2c",
    };

    /// <summary>Parses a CLI name; false for anything else.</summary>
    public static bool TryParse(string? name, out BalancePolicy p)
    {
        switch (name)
        {
            case "p2c": p = BalancePolicy.PowerOfTwo; return true;
            case "round-robin": p = BalancePolicy.RoundRobin; return true;
            case "random": p = BalancePolicy.Random; return true;
            case "least-loaded": p = BalancePolicy.LeastLoaded; return true;
            default: p = BalancePolicy.PowerOfTwo; return false;
        }
    }
}

/// <summary>
/// Settings of a router (<c>fastserve route</c>): where it listens, how it balances, how it judges endpoints, and the
/// limits it announces to clients. Durations are milliseconds. <see cref="Validate"/> checks ranges.
/// </summary>
public sealed record RouterOptions
{
    /// <summary>IPv4 address the client listener binds (loopback unless told otherwise).</summary>
    public string Host { get; init; } = "127.0.0.1";
    /// <summary>Client port; 0 picks a free one (see <see cref="RouterHost.Port"/>).</summary>
    public int Port { get; init; }
    /// <summary>How endpoints are chosen (default p2c).</summary>
    public BalancePolicy Policy { get; init; } = BalancePolicy.PowerOfTwo;
    /// <summary>A newly ready endpoint's weight ramps linearly from 10 % to 100 % over this time; 0 = no ramp.</summary>
    public int SlowStartMs { get; init; } = 5000;
    /// <summary>Most times one request is sent to a replica (the first try included).</summary>
    public int MaxAttempts { get; init; } = 3;
    /// <summary>
    /// The retry budget's share: every request received deposits this much of a retry, every retry (of a refusal or of a
    /// lost connection) withdraws one, and what is older than <see cref="OverloadWindowMs"/> expires; so retries stay
    /// under the larger of this fraction of recent requests and the floor of <see cref="MinRetriesPerSecond"/>. When the
    /// budget is spent, a refusal is passed to the client as the replica gave it. 0 turns retries off (the floor too);
    /// 0 … 10, default 0.1.
    /// </summary>
    public double RetryBudgetRatio { get; init; } = 0.1;
    /// <summary>The retry budget's floor, in retries per second: this × the window in seconds is available while the
    /// deposits earn less, so a router with little traffic can still retry; not added to what they earn
    /// (0 … 100 000, default 10).</summary>
    public int MinRetriesPerSecond { get; init; } = 10;
    /// <summary>
    /// A retry of an <c>overloaded</c> or <c>too_many_requests</c> refusal waits a random delay, uniform in
    /// [0, min(this, the refusal's retry_after)] (this alone when retry_after is 0), and never more than half the time
    /// left to its deadline; 0 retries at once (0 … 1000, default 25).
    /// </summary>
    public int RetryJitterMs { get; init; } = 25;
    /// <summary>How far back the retry budget and the fleet saturation (<see cref="RouterStats.Saturation"/>) look, in
    /// ten steps (1000 … 600 000, default 10 000).</summary>
    public int OverloadWindowMs { get; init; } = 10_000;
    /// <summary>Persistent multiplexed connections the router keeps to each endpoint.</summary>
    public int ConnectionsPerEndpoint { get; init; } = 2;
    /// <summary>Consecutive errors (connection failures, timeouts, <c>internal</c>/<c>unavailable</c> FINALs) that eject an endpoint.</summary>
    public int EjectAfterErrors { get; init; } = 5;
    /// <summary>First ejection period; each repeat ejection doubles it, up to <see cref="MaxEjectionMs"/>.</summary>
    public int BaseEjectionMs { get; init; } = 1000;
    /// <summary>Longest ejection period; also the quiet time that takes the doubling down one step.</summary>
    public int MaxEjectionMs { get; init; } = 30_000;
    /// <summary>Never more than this share of the endpoints is ejected at once (rounded down).</summary>
    public int MaxEjectedPercent { get; init; } = 50;
    /// <summary>A load report counts in the score for this long after it arrived.</summary>
    public int ReportFreshMs { get; init; } = 200;
    /// <summary>LOAD_QUERY subscription interval asked of every endpoint.</summary>
    public int LoadIntervalMs { get; init; } = 50;
    /// <summary>Reconnect backoff: starts here, doubles per failed attempt, up to <see cref="ReconnectMaxMs"/>.</summary>
    public int ReconnectMinMs { get; init; } = 20;
    /// <summary>Longest wait between reconnect attempts.</summary>
    public int ReconnectMaxMs { get; init; } = 1000;
    /// <summary>Limit on TCP connect plus HELLO_OK from an endpoint.</summary>
    public int ConnectTimeoutMs { get; init; } = 2000;
    /// <summary>An upstream connection that receives nothing (not even its load reports) for this long is broken.</summary>
    public int UpstreamSilenceMs { get; init; } = 2000;
    /// <summary>Unsent bytes on an upstream connection over which it takes no new requests (backpressure).</summary>
    public int UpstreamSoftLimitBytes { get; init; } = 4 << 20;
    /// <summary>Unsent bytes on an upstream connection over which it is closed (the replica stopped reading).</summary>
    public int UpstreamHardLimitBytes { get; init; } = 64 << 20;
    /// <summary>Unsent bytes on a client connection over which it is closed (the client stopped reading).</summary>
    public int ClientSendLimitBytes { get; init; } = 8 << 20;
    /// <summary>Largest frame payload accepted from clients (announced in HELLO_OK).</summary>
    public int MaxFrame { get; init; } = Wire.DefaultMaxFrame;
    /// <summary>Requests in flight per client connection (announced in HELLO_OK).</summary>
    public int MaxInFlight { get; init; } = 1024;
    /// <summary>A client connection with nothing in flight and no frame for this long is closed (announced in HELLO_OK).</summary>
    public int IdleTimeoutMs { get; init; } = 60_000;
    /// <summary>Time allowed to receive the rest of a started frame.</summary>
    public int FrameTimeoutMs { get; init; } = 10_000;
    /// <summary>A client connection that sends no HELLO within this time is closed.</summary>
    public int HelloTimeoutMs { get; init; } = 10_000;
    /// <summary>On drain, how long in-flight requests may take before their connections are closed anyway.</summary>
    public int GraceMs { get; init; } = 30_000;
    /// <summary>
    /// Output of a <c>whole</c> request (REQUEST flag bit 4) held back until its FINAL, so it can be replayed on another
    /// replica when its own is lost mid-generation. Past this many bytes the held output is passed on and the request
    /// streams from then on (it can no longer be replayed); 0 holds nothing.
    /// </summary>
    public int MaxHeldBytes { get; init; } = 256 << 10;
    /// <summary>retry_after_ms of the FINAL sent when no endpoint is eligible.</summary>
    public int NoEndpointRetryAfterMs { get; init; } = 500;
    /// <summary>The model a request that names none goes to (protocol 1.2 routing); null: the fleet's only model, or any
    /// endpoint when the fleet serves several.</summary>
    public string? DefaultModel { get; init; }
    /// <summary>The token ADMIN frames must carry (compared in constant time); null: every ADMIN is refused.</summary>
    public string? AdminToken { get; init; }
    /// <summary>A file of routing commands (docs/router.md, "Admin commands") applied at start and whenever it
    /// changes; null: none.</summary>
    public string? ConfigPath { get; init; }
    /// <summary>Where shadow disagreements and summaries go (JSONL, docs/shadow.md); null: nowhere (metrics only).</summary>
    public string? ShadowLogPath { get; init; }
    /// <summary>Mirrors in flight at most; a mirror over it is dropped and counted (1 … 100 000, default 256).</summary>
    public int ShadowMaxInFlight { get; init; } = 256;
    /// <summary>How canaries are judged against their stable version.</summary>
    public Canary.CanaryOptions Canary { get; init; } = new();
    /// <summary>When the burst modes switch automatically.</summary>
    public Burst.BurstOptions Burst { get; init; } = new();
    /// <summary>What each burst mode does.</summary>
    public Burst.BurstPolicies BurstPolicies { get; init; } = new();
    /// <summary>Device price per hour (any currency) for the cost figures of the pool metrics; 0: no cost figures.</summary>
    public double CostPerHour { get; init; }
    /// <summary>Changes the router makes to its traffic rules (rollbacks, burst modes, admin commands, config);
    /// null = only the log.</summary>
    public Action<RouterEvent>? OnEvent { get; init; }
    /// <summary>Name sent in HELLO_OK (to clients) and HELLO (to replicas).</summary>
    public string Name { get; init; } = "fastserve-router";
    /// <summary>Seed of the balancer's random draws; null = unpredictable.</summary>
    public int? Seed { get; init; }
    /// <summary>One-line diagnostics (endpoint state changes, source problems); null = silent.</summary>
    public Action<string>? Log { get; init; }
    /// <summary>The API keys clients must present in HELLO (docs/security.md); null: none required. The router
    /// disposes it.</summary>
    public Protocol.Security.ApiKeyStore? ApiKeys { get; init; }
    /// <summary>TLS on the client listener (<c>--tls-cert</c>/<c>--tls-key</c>); null: plaintext. The router disposes it.</summary>
    public Protocol.Security.CertificateSource? Tls { get; init; }
    /// <summary>The key the router sends in its HELLO to replicas that require keys (<c>--upstream-api-key-file</c>);
    /// null: none.</summary>
    public string? UpstreamApiKey { get; init; }
    /// <summary>TLS towards the replicas (<c>--upstream-tls</c>); null: plaintext.</summary>
    public Protocol.Security.TlsClientSettings? UpstreamTls { get; init; }

    /// <summary>Throws <see cref="ArgumentOutOfRangeException"/> naming the first setting out of range.</summary>
    public void Validate()
    {
        static void Range(int v, int lo, int hi, string name)
        {
            if (v < lo || v > hi) throw new ArgumentOutOfRangeException(name, v, $"{name} must be between {lo} and {hi}");
        }
        Range(Port, 0, 65535, nameof(Port));
        Range(SlowStartMs, 0, 3_600_000, nameof(SlowStartMs));
        Range(MaxAttempts, 1, 16, nameof(MaxAttempts));
        if (!(RetryBudgetRatio >= 0 && RetryBudgetRatio <= 10))
            throw new ArgumentOutOfRangeException(nameof(RetryBudgetRatio), RetryBudgetRatio, $"{nameof(RetryBudgetRatio)} must be between 0 and 10");
        Range(MinRetriesPerSecond, 0, 100_000, nameof(MinRetriesPerSecond));
        Range(RetryJitterMs, 0, 1000, nameof(RetryJitterMs));
        Range(OverloadWindowMs, 1000, 600_000, nameof(OverloadWindowMs));
        Range(ConnectionsPerEndpoint, 1, 64, nameof(ConnectionsPerEndpoint));
        Range(EjectAfterErrors, 1, 1_000_000, nameof(EjectAfterErrors));
        Range(BaseEjectionMs, 1, 3_600_000, nameof(BaseEjectionMs));
        Range(MaxEjectionMs, BaseEjectionMs, 3_600_000, nameof(MaxEjectionMs));
        Range(MaxEjectedPercent, 0, 100, nameof(MaxEjectedPercent));
        Range(ReportFreshMs, 1, 60_000, nameof(ReportFreshMs));
        Range(LoadIntervalMs, 10, 10_000, nameof(LoadIntervalMs));
        Range(ReconnectMinMs, 1, 60_000, nameof(ReconnectMinMs));
        Range(ReconnectMaxMs, ReconnectMinMs, 600_000, nameof(ReconnectMaxMs));
        Range(ConnectTimeoutMs, 10, 600_000, nameof(ConnectTimeoutMs));
        Range(UpstreamSilenceMs, LoadIntervalMs * 2, 600_000, nameof(UpstreamSilenceMs));
        Range(UpstreamSoftLimitBytes, 64 << 10, UpstreamHardLimitBytes, nameof(UpstreamSoftLimitBytes));
        Range(ClientSendLimitBytes, 64 << 10, int.MaxValue, nameof(ClientSendLimitBytes));
        Range(MaxFrame, 4096, 64 << 20, nameof(MaxFrame));
        Range(MaxInFlight, 1, 1 << 20, nameof(MaxInFlight));
        Range(IdleTimeoutMs, 100, int.MaxValue, nameof(IdleTimeoutMs));
        Range(FrameTimeoutMs, 100, int.MaxValue, nameof(FrameTimeoutMs));
        Range(HelloTimeoutMs, 100, int.MaxValue, nameof(HelloTimeoutMs));
        Range(GraceMs, 0, 3_600_000, nameof(GraceMs));
        Range(MaxHeldBytes, 0, 64 << 20, nameof(MaxHeldBytes));
        Range(NoEndpointRetryAfterMs, 0, 600_000, nameof(NoEndpointRetryAfterMs));
        if (string.IsNullOrEmpty(Name) || Name.Length > 64) throw new ArgumentOutOfRangeException(nameof(Name), "must have 1 to 64 characters");
        Range(ShadowMaxInFlight, 1, 100_000, nameof(ShadowMaxInFlight));
        if (DefaultModel is not null && !RequestRules.IsModelLabel(DefaultModel))
            throw new ArgumentOutOfRangeException(nameof(DefaultModel), "must be 1 to 64 letters, digits, '.', '_' or '-'");
        if (!(CostPerHour >= 0) || double.IsInfinity(CostPerHour)) throw new ArgumentOutOfRangeException(nameof(CostPerHour), "must be a finite number >= 0");
        Canary.Validate();
        Burst.Validate();
        BurstPolicies.Validate();
    }

    internal static long Ticks(int ms) => ms * Stopwatch.Frequency / 1000;
}
