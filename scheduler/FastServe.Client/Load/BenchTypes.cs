using FastServe.Protocol;
using FastServe.Protocol.Stats;

namespace FastServe.Client.Load;

/// <summary>
/// One load run against a replica or router (<see cref="LoadGenerator.RunAsync"/>). Give exactly one of
/// <see cref="Rate"/> (open loop at a constant rate), <see cref="Profile"/> (open loop following a rate profile) or
/// <see cref="Concurrency"/> (closed loop).
/// </summary>
public sealed record BenchOptions
{
    public string Host { get; init; } = "127.0.0.1";
    public int Port { get; init; } = 7700;
    /// <summary>TCP connections; requests are spread over them round robin.</summary>
    public int Connections { get; init; } = 8;

    /// <summary>Open loop: mean arrivals per second.</summary>
    public double? Rate { get; init; }
    /// <summary>Open loop: a rate that changes over the measured window (its warm-up runs at its starting rate).</summary>
    public RateProfile? Profile { get; init; }
    /// <summary>Closed loop: this many requests always in flight, each sent when the previous one ends.</summary>
    public int? Concurrency { get; init; }
    /// <summary>Open loop: gap distribution.</summary>
    public ArrivalKind Arrival { get; init; } = ArrivalKind.Poisson;
    /// <summary>Open loop with <see cref="ArrivalKind.Gamma"/>: squared CV of the gaps (B &gt; 1 burstier than Poisson).</summary>
    public double Burstiness { get; init; } = 1;

    /// <summary>Measured window, after the warm-up.</summary>
    public TimeSpan Duration { get; init; } = TimeSpan.FromSeconds(30);
    /// <summary>Load before the window; its requests are not measured.</summary>
    public TimeSpan Warmup { get; init; } = TimeSpan.FromSeconds(5);
    /// <summary>After the window, how long to wait for measured requests still running; those left are cancelled and
    /// counted as unfinished (infinitely late).</summary>
    public TimeSpan DrainLimit { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>
    /// Before the warm-up, wait at most this long for the server to report an idle engine (LOAD_QUERY: nothing running
    /// or queued), so the leftovers of a previous run (a sweep's failing point) do not skew this one. A server that
    /// does not answer within a second is not waited for. Zero skips the wait.
    /// </summary>
    public TimeSpan SettleLimit { get; init; } = TimeSpan.FromSeconds(10);
    /// <summary>Prompts, drawn uniformly at random per request. Null: <see cref="GrammarCorpus.Prompts"/>.</summary>
    public IReadOnlyList<string>? Prompts { get; init; }
    /// <summary>Sampling and scheduling fields of every request (default: 50 tokens, greedy, ignore_eos).</summary>
    public RequestParams Params { get; init; } = RequestParams.Default with { MaxTokens = 50, IgnoreEos = true };

    /// <summary>End-to-end latency target for goodput and the SLO check, in milliseconds.</summary>
    public double SloMs { get; init; } = 1000;
    /// <summary>Largest share of measured requests that may fail (any status but ok, or unfinished) for the run to meet the SLO.</summary>
    public double MaxErrorRate { get; init; } = 0.01;
    public int Seed { get; init; } = 1;
    /// <summary>What an hour of the serving device costs (any currency); with it, results carry the device-time cost
    /// of 1,000 requests (<see cref="BenchResult.CostPer1000"/>). Null: no cost.</summary>
    public double? CostPerHour { get; init; }
    /// <summary>Client options of each connection (output collection is always off: only counts and times are kept).</summary>
    public FastServeClientOptions? ClientOptions { get; init; }

    internal void Validate()
    {
        int modes = (Rate is null ? 0 : 1) + (Profile is null ? 0 : 1) + (Concurrency is null ? 0 : 1);
        if (modes != 1) throw new ArgumentException("give exactly one of Rate, Profile or Concurrency");
        if (Rate is { } r && !(r > 0 && r <= 1e7)) throw new ArgumentOutOfRangeException(nameof(Rate), "must be in (0, 1e7]");
        if (Concurrency is { } c && (c < 1 || c > 1 << 20)) throw new ArgumentOutOfRangeException(nameof(Concurrency), "must be in [1, 1048576]");
        if (Connections < 1 || Connections > 4096) throw new ArgumentOutOfRangeException(nameof(Connections), "must be in [1, 4096]");
        if (Duration <= TimeSpan.Zero) throw new ArgumentOutOfRangeException(nameof(Duration), "must be positive");
        if (Warmup < TimeSpan.Zero) throw new ArgumentOutOfRangeException(nameof(Warmup), "must not be negative");
        if (SettleLimit < TimeSpan.Zero) throw new ArgumentOutOfRangeException(nameof(SettleLimit), "must not be negative");
        if (DrainLimit < TimeSpan.Zero) throw new ArgumentOutOfRangeException(nameof(DrainLimit), "must not be negative");
        if (!(SloMs > 0)) throw new ArgumentOutOfRangeException(nameof(SloMs), "must be positive");
        if (!(MaxErrorRate >= 0 && MaxErrorRate <= 1)) throw new ArgumentOutOfRangeException(nameof(MaxErrorRate), "must be in [0, 1]");
        if (Arrival == ArrivalKind.Gamma && !(Burstiness > 0 && Burstiness <= 1000)) throw new ArgumentOutOfRangeException(nameof(Burstiness), "must be in (0, 1000]");
        if (Prompts is { Count: 0 }) throw new ArgumentException("Prompts is empty");
    }
}

/// <summary>What one run measured. Latencies are in milliseconds, from each request's intended send time in open
/// loop (so a late sender cannot hide queueing) and from its actual send time in closed loop.</summary>
public sealed record BenchResult
{
    /// <summary><c>open</c> or <c>closed</c>.</summary>
    public required string Mode { get; init; }
    /// <summary>Open loop: the target mean rate over the window (a profile's mean); null in closed loop.</summary>
    public double? TargetRps { get; init; }
    public int? Concurrency { get; init; }
    /// <summary><c>poisson</c> or <c>gamma</c> (open loop), null in closed loop.</summary>
    public string? Arrival { get; init; }
    public double? Burstiness { get; init; }
    /// <summary>Profile spec (<c>ramp:…</c>, <c>daily:…</c>), null for a constant rate or closed loop.</summary>
    public string? Profile { get; init; }
    public double WindowSeconds { get; init; }
    public double SloMs { get; init; }
    public double MaxErrorRate { get; init; }

    /// <summary>Requests whose intended send time fell inside the window.</summary>
    public long Sent { get; init; }
    /// <summary>Measured requests that ended with status ok.</summary>
    public long Ok { get; init; }
    /// <summary>Measured requests that ended ok within the SLO.</summary>
    public long Good { get; init; }
    /// <summary>Measured requests still running when the drain limit ran out.</summary>
    public long Unfinished { get; init; }
    /// <summary>Measured requests the client's adaptive throttle refused locally (also in <see cref="Errors"/> as
    /// <c>throttled</c>); never sent.</summary>
    public long Throttled { get; init; }
    /// <summary>Measured requests the server admitted: a FINAL that is not a refusal for load
    /// (<see cref="AdaptiveThrottle.IsLoadRefusal"/>: ok, deadline_exceeded, cancelled, ...), plus the unfinished.</summary>
    public long Admitted { get; init; }
    /// <summary>Measured requests that did not end ok, by status name (<c>overloaded</c>, <c>connection_lost</c>, …;
    /// <c>unfinished</c> for those cut off by the drain limit).</summary>
    public required IReadOnlyDictionary<string, long> Errors { get; init; }

    public double OfferedRps => Sent / WindowSeconds;
    public double AchievedRps => Ok / WindowSeconds;
    public double GoodputRps => Good / WindowSeconds;
    public double ErrorRate => Sent == 0 ? 0 : (Sent - Ok) / (double)Sent;
    public double PromptTokensPerSecond { get; init; }
    public double CompletionTokensPerSecond { get; init; }

    /// <summary>Time to first token of ok requests (infinite for unfinished ones without a token).</summary>
    public LatencySummary Ttft { get; init; }
    /// <summary>Mean time per output token after the first, of ok requests with two or more tokens.</summary>
    public LatencySummary Tpot { get; init; }
    /// <summary>End-to-end latency of ok requests, plus an infinite sample per unfinished request.</summary>
    public LatencySummary EndToEnd { get; init; }
    /// <summary>End-to-end latency of the <see cref="Admitted"/> requests, ok or not (a request that missed its deadline
    /// counts), from the intended send time; infinite for unfinished ones. Leaves out server refusals for load and local
    /// throttles, whose quick answers would otherwise flatter the percentiles of an overloaded server.</summary>
    public LatencySummary AdmittedEndToEnd { get; init; } = LatencySummary.Empty;
    /// <summary>Time from the actual send to the FINAL of the server's refusals for load (overloaded, too_many_requests,
    /// draining, unavailable): how quickly an overloaded server says no.</summary>
    public LatencySummary Rejection { get; init; } = LatencySummary.Empty;
    /// <summary>How late requests were sent against their intended time (the generator's own lag), ms.</summary>
    public LatencySummary SendLag { get; init; }
    /// <summary>Mean of each server timing slot over ok requests, microseconds (NaN when none reported it).</summary>
    public required IReadOnlyDictionary<string, double> ServerMeanUs { get; init; }

    /// <summary>The device-time cost of 1,000 requests at <paramref name="costPerHour"/>: the servers' mean
    /// <c>device</c> time per ok request (protocol 1.1) × 1,000 × the hourly price. Device time idle for lack of
    /// requests is not in it (a fleet's bill is this over its utilisation). NaN when the servers report none.</summary>
    public double CostPer1000(double costPerHour) =>
        ServerMeanUs.TryGetValue("device", out double us) && us > 0 ? us * 1e-6 * 1000 * costPerHour / 3600 : double.NaN;
    /// <summary>Connections re-established during the run after one broke.</summary>
    public int Reconnects { get; init; }

    /// <summary>Met the service level: something was measured, P99 end-to-end under the SLO and the error rate
    /// (unfinished included) within <see cref="MaxErrorRate"/>.</summary>
    public bool MeetsSlo => Sent > 0 && Ok > 0 && EndToEnd.P99 < SloMs && ErrorRate <= MaxErrorRate;
}

/// <summary>A snapshot of a run in progress.</summary>
public readonly record struct BenchProgress(double Fraction, long Sent, long Completed, long Errors, int InFlight);
