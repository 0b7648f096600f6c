using System.Globalization;
using System.Net.Http.Headers;
using FastServe.Autoscale.Actuators;

namespace FastServe.Autoscale.Control;

/// <summary>The fleet's load, as routers report it: the autoscaler's input besides the actuator's own count.</summary>
/// <param name="Ready">Endpoints the routers can pick now (the largest any router reports).</param>
/// <param name="Concurrency">Requests in flight or queued at the ready replicas, from their load reports.</param>
/// <param name="RefusedPerSecond">Overloaded answers per second, summed over the routers.</param>
/// <param name="ServiceSeconds">The replicas' mean answer time, for turning refusals into concurrency.</param>
/// <param name="Sources">Routers that answered.</param>
public readonly record struct SignalReading(int Ready, double Concurrency, double RefusedPerSecond, double ServiceSeconds, int Sources);

/// <summary>A reading, or why there is none (a stable code and a message).</summary>
public readonly record struct SignalResult(SignalReading? Reading, string? ErrorCode = null, string? Error = null)
{
    public bool Ok => Reading is not null;
}

/// <summary>Where the autoscaler reads the fleet's load.</summary>
public interface IFleetSignal : IDisposable
{
    /// <summary>What it reads, for logs.</summary>
    string Description { get; }

    /// <summary>Reads the load now; failures are results (the autoscaler holds its count while it has no signal).</summary>
    Task<SignalResult> ReadAsync(CancellationToken ct);
}

/// <summary>
/// Reads the fleet gauges of one or more routers' Prometheus endpoints (<c>fastserve route --metrics-port</c>,
/// docs/router.md): <c>fastserve_router_fleet_ready_endpoints</c>, <c>_concurrency</c>, <c>_refused_per_second</c>
/// and <c>_demand</c>, from which the replicas' mean answer time follows (demand = concurrency + refused/s × seconds).
/// <para>
/// Several routers in front of one fleet see the same replicas' load reports, so ready and concurrency are the
/// largest any of them reports, not sums; each router counts only the refusals it received, so those add up. A router
/// that does not answer is left out while another does; with none answering the reading fails
/// (<c>autoscale.signal_unavailable</c>). A response is hostile input: at most 4 MiB are read, and a page without the
/// fleet gauges, or with values that are not finite and non-negative, is <c>autoscale.signal_invalid</c>.
/// </para>
/// </summary>
public sealed class RouterMetricsSignal : IFleetSignal
{
    internal const int MaxBytes = 4 << 20;
    private readonly HttpClient _http;
    private readonly Uri[] _urls;

    /// <summary>Reads <paramref name="urls"/> (http only), each with <paramref name="timeout"/>.</summary>
    /// <exception cref="AutoscaleException"><c>autoscale.bad_signal</c>: no URL, or one that is not an absolute http URL.</exception>
    public RouterMetricsSignal(IEnumerable<string> urls, TimeSpan timeout)
    {
        var list = new List<Uri>();
        foreach (var s in urls)
        {
            if (!Uri.TryCreate(s, UriKind.Absolute, out var u) || u.Scheme != Uri.UriSchemeHttp)
                throw new AutoscaleException("autoscale.bad_signal", $"--router-metrics '{s}' is not an http:// URL (for example http://127.0.0.1:9100/metrics)");
            list.Add(u);
        }
        if (list.Count == 0) throw new AutoscaleException("autoscale.bad_signal", "give at least one --router-metrics URL (a router's http://HOST:PORT/metrics)");
        _urls = [.. list];
        _http = new HttpClient(new SocketsHttpHandler { PooledConnectionLifetime = TimeSpan.FromMinutes(1), UseProxy = false })
        {
            Timeout = timeout,
            MaxResponseContentBufferSize = MaxBytes,
        };
        _http.DefaultRequestHeaders.Accept.Add(new MediaTypeWithQualityHeaderValue("text/plain"));
    }

    public string Description => string.Join(",", _urls.Select(u => u.ToString()));

    public async Task<SignalResult> ReadAsync(CancellationToken ct)
    {
        var reads = _urls.Select(u => ReadOneAsync(u, ct)).ToArray();
        var results = await Task.WhenAll(reads).ConfigureAwait(false);
        int ready = 0, sources = 0;
        double concurrency = 0, refused = 0, service = 0;
        string? code = null, error = null;
        foreach (var (r, c, e) in results)
        {
            if (r is not { } g) { code ??= c; error = error is null ? e : $"{error}; {e}"; continue; }
            sources++;
            ready = Math.Max(ready, g.Ready);
            concurrency = Math.Max(concurrency, g.Concurrency);
            refused += g.RefusedPerSecond;
            service = Math.Max(service, g.ServiceSeconds);
        }
        return sources == 0 ? new SignalResult(null, code, error) : new SignalResult(new SignalReading(ready, concurrency, refused, service, sources));
    }

    private async Task<(SignalReading?, string?, string?)> ReadOneAsync(Uri url, CancellationToken ct)
    {
        string text;
        try
        {
            using var resp = await _http.GetAsync(url, HttpCompletionOption.ResponseContentRead, ct).ConfigureAwait(false);
            if (!resp.IsSuccessStatusCode)
                return (null, "autoscale.signal_unavailable", $"{url}: HTTP {(int)resp.StatusCode}");
            text = await resp.Content.ReadAsStringAsync(ct).ConfigureAwait(false);
        }
        catch (Exception e) when (e is HttpRequestException or TaskCanceledException or IOException && !ct.IsCancellationRequested)
        {
            string why = e is TaskCanceledException ? $"no answer within {_http.Timeout.TotalSeconds:0.#} s" : e.Message;
            return (null, "autoscale.signal_unavailable", $"{url}: {why}");
        }
        return Parse(text) is { } g ? (g, null, null) : (null, "autoscale.signal_invalid", $"{url}: no valid fastserve_router_fleet_* gauges (is it a fastserve route --metrics-port endpoint?)");
    }

    /// <summary>The fleet gauges in a Prometheus text exposition; null when one is missing or not a finite,
    /// non-negative number. Labelled series and other metrics are skipped.</summary>
    internal static SignalReading? Parse(string text)
    {
        double ready = double.NaN, concurrency = double.NaN, refused = double.NaN, demand = double.NaN;
        foreach (var raw in text.AsSpan().EnumerateLines())
        {
            var line = raw.Trim();
            if (line.IsEmpty || line[0] == '#') continue;
            int sp = line.IndexOf(' ');
            if (sp <= 0) continue;
            var name = line[..sp];
            if (!name.StartsWith("fastserve_router_fleet_")) continue;   // also skips labelled series (name{...})
            var rest = line[(sp + 1)..].TrimStart();
            int end = rest.IndexOf(' ');                                   // an optional timestamp follows
            if (end >= 0) rest = rest[..end];
            if (!double.TryParse(rest, NumberStyles.Float, CultureInfo.InvariantCulture, out double v)) return null;
            switch (name)
            {
                case "fastserve_router_fleet_ready_endpoints": ready = v; break;
                case "fastserve_router_fleet_concurrency": concurrency = v; break;
                case "fastserve_router_fleet_refused_per_second": refused = v; break;
                case "fastserve_router_fleet_demand": demand = v; break;
            }
        }
        static bool Good(double v) => double.IsFinite(v) && v >= 0;
        if (!Good(ready) || !Good(concurrency) || !Good(refused) || !Good(demand) || ready > 1_000_000) return null;
        // demand = concurrency + refused × service: the service time is what the router multiplied by.
        double service = refused > 0 ? Math.Max(0, demand - concurrency) / refused : 0;
        return new SignalReading((int)ready, concurrency, refused, service, 1);
    }

    public void Dispose() => _http.Dispose();
}
