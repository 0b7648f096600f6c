using System.Text.Json;
using FastServe.Protocol.Stats;

namespace FastServe.Client.Load;

/// <summary>
/// The JSON form of bench results (docs/client.md lists the fields), written with <see cref="Utf8JsonWriter"/> (no
/// reflection). Non-finite numbers (no samples, or unfinished requests in a percentile) are written as null.
/// </summary>
public static class BenchJson
{
    /// <summary>Writes one result as an object (as an array element or after a property name); with
    /// <paramref name="costPerHour"/>, its device-time cost of 1,000 requests too.</summary>
    public static void WriteResult(Utf8JsonWriter w, BenchResult r, double? costPerHour = null)
    {
        w.WriteStartObject();
        w.WriteString("mode", r.Mode);
        Num(w, "target_rps", r.TargetRps);
        if (r.Concurrency is { } c) w.WriteNumber("concurrency", c); else w.WriteNull("concurrency");
        if (r.Arrival is { } a) w.WriteString("arrival", a); else w.WriteNull("arrival");
        Num(w, "burstiness", r.Burstiness);
        if (r.Profile is { } p) w.WriteString("profile", p); else w.WriteNull("profile");
        Num(w, "window_s", r.WindowSeconds);
        w.WriteBoolean("meets_slo", r.MeetsSlo);
        Num(w, "slo_ms", r.SloMs);
        Num(w, "max_error_rate", r.MaxErrorRate);
        w.WriteNumber("sent", r.Sent);
        w.WriteNumber("ok", r.Ok);
        w.WriteNumber("good", r.Good);
        w.WriteNumber("unfinished", r.Unfinished);
        Num(w, "offered_rps", r.OfferedRps);
        Num(w, "achieved_rps", r.AchievedRps);
        Num(w, "goodput_rps", r.GoodputRps);
        Num(w, "error_rate", r.ErrorRate);
        Num(w, "prompt_tokens_per_s", r.PromptTokensPerSecond);
        Num(w, "completion_tokens_per_s", r.CompletionTokensPerSecond);
        Latency(w, "ttft_ms", r.Ttft);
        Latency(w, "tpot_ms", r.Tpot);
        Latency(w, "e2e_ms", r.EndToEnd);
        Latency(w, "send_lag_ms", r.SendLag);
        w.WriteStartObject("errors");
        foreach (var (name, n) in r.Errors) w.WriteNumber(name, n);
        w.WriteEndObject();
        w.WriteStartObject("server_mean_us");
        foreach (var (name, us) in r.ServerMeanUs) Num(w, name, us);
        w.WriteEndObject();
        if (costPerHour is { } price) Num(w, "cost_per_1000_requests", r.CostPer1000(price));
        w.WriteNumber("reconnects", r.Reconnects);
        w.WriteNumber("throttled", r.Throttled);
        w.WriteNumber("admitted", r.Admitted);
        Num(w, "p99_admitted_ms", r.AdmittedEndToEnd.P99);
        w.WriteNumber("rejections", r.Rejection.Count);
        Num(w, "rejection_p50_ms", r.Rejection.P50);
        Num(w, "rejection_p99_ms", r.Rejection.P99);
        w.WriteEndObject();
    }

    /// <summary>Writes the members of a bench document: the run's settings, every point, and the best point.</summary>
    public static void WriteDocument(Utf8JsonWriter w, BenchOptions o, string server, bool sweep, IReadOnlyList<BenchResult> points, BenchResult? best)
    {
        w.WriteString("target", $"{o.Host}:{o.Port}");
        w.WriteString("server", server);
        w.WriteNumber("connections", o.Connections);
        w.WriteNumber("duration_s", o.Duration.TotalSeconds);
        w.WriteNumber("warmup_s", o.Warmup.TotalSeconds);
        w.WriteNumber("max_tokens", o.Params.MaxTokens);
        w.WriteBoolean("ignore_eos", o.Params.IgnoreEos);
        w.WriteNumber("slo_ms", o.SloMs);
        w.WriteNumber("max_error_rate", o.MaxErrorRate);
        w.WriteNumber("seed", o.Seed);
        if (o.CostPerHour is { } cost) w.WriteNumber("cost_per_hour", cost);
        w.WriteBoolean("sweep", sweep);
        // The throttle each connection ran with (LoadGenerator uses the client's defaults when none are given).
        Num(w, "throttle_k", (o.ClientOptions ?? new FastServeClientOptions()).AdaptiveThrottling is { Enabled: true } t ? t.K : null);
        w.WriteStartArray("points");
        foreach (var p in points) WriteResult(w, p, o.CostPerHour);
        w.WriteEndArray();
        if (best is null) w.WriteNull("best");
        else
        {
            w.WritePropertyName("best");
            WriteResult(w, best, o.CostPerHour);
        }
    }

    private static void Latency(Utf8JsonWriter w, string name, LatencySummary s)
    {
        w.WriteStartObject(name);
        w.WriteNumber("count", s.Count);
        Num(w, "mean", s.Mean);
        Num(w, "p50", s.P50);
        Num(w, "p90", s.P90);
        Num(w, "p99", s.P99);
        Num(w, "p999", s.P999);
        Num(w, "max", s.Max);
        w.WriteEndObject();
    }

    private static void Num(Utf8JsonWriter w, string name, double? v)
    {
        if (v is { } x && double.IsFinite(x)) w.WriteNumber(name, Math.Round(x, 4));
        else w.WriteNull(name);
    }
}
