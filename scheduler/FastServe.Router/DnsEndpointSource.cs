using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Runtime.CompilerServices;
using DnsClient;
using DnsClient.Protocol;

namespace FastServe.Router;

/// <summary>
/// Endpoints from DNS, re-resolved every <see cref="Interval"/>:
/// <list type="bullet">
/// <item><c>dns:NAME:PORT</c>: every A and AAAA record of NAME, each at PORT, weight 1 (a Kubernetes headless
/// Service's name resolves to its ready pods' addresses).</item>
/// <item><c>dns:NAME</c>: the SRV records of NAME (<c>_fastserve._tcp.replica.ns.svc.cluster.local</c>): each target's
/// addresses (from the answer's additional section, else an A/AAAA lookup) at the record's port, weight the SRV
/// weight (0 counts as 1). Only the lowest (most preferred) priority is used.</item>
/// </list>
/// Queries go to the system's resolvers (<c>/etc/resolv.conf</c>) or to the servers given. A failed or empty answer
/// keeps the previous set (logged once per failure streak): a DNS outage must not empty the fleet.
/// </summary>
public sealed class DnsEndpointSource : IEndpointSource
{
    private readonly LookupClient _dns;
    private readonly Action<string>? _log;

    /// <summary>A source for <paramref name="name"/>: A/AAAA at <paramref name="port"/>, or SRV when it is null.</summary>
    /// <param name="servers">Name servers to ask; null or empty = the system's.</param>
    public DnsEndpointSource(string name, int? port, TimeSpan interval, IReadOnlyList<IPEndPoint>? servers = null, Action<string>? log = null)
    {
        if (!IsDnsName(name)) throw new EndpointSourceException("route.bad_source", $"dns: needs a DNS name (labels of letters, digits, '-' and '_', dot-separated), not '{name}'");
        if (port is < 1 or > 65535) throw new EndpointSourceException("route.bad_source", $"dns:{name}:{port}: the port must be 1 to 65535");
        if (interval < TimeSpan.FromMilliseconds(100) || interval > TimeSpan.FromHours(1))
            throw new EndpointSourceException("route.bad_source", $"the DNS re-resolve interval must be 100 ms to 1 h, not {interval.TotalMilliseconds:F0} ms");
        Name = name;
        Port = port;
        Interval = interval;
        _log = log;
        var options = servers is { Count: > 0 } ? new LookupClientOptions([.. servers]) : new LookupClientOptions();
        options.UseCache = false;                 // re-resolving is the point: honour changes at once
        options.Timeout = TimeSpan.FromSeconds(2);
        options.Retries = 1;
        options.ThrowDnsErrors = false;
        options.ContinueOnDnsError = true;
        _dns = new LookupClient(options);
    }

    // Labels of 1–63 letters, digits, '-' or '_' (SRV names start with '_'), not starting or ending with '-'; at most
    // 253 characters; an optional final dot.
    private static bool IsDnsName(string? name)
    {
        if (string.IsNullOrEmpty(name)) return false;
        string n = name.EndsWith('.') ? name[..^1] : name;
        if (n.Length is 0 or > 253) return false;
        foreach (var label in n.Split('.'))
        {
            if (label.Length is 0 or > 63 || label[0] == '-' || label[^1] == '-') return false;
            foreach (char c in label)
                if (!(char.IsAsciiLetterOrDigit(c) || c is '-' or '_')) return false;
        }
        return true;
    }

    /// <summary>The name resolved.</summary>
    public string Name { get; }

    /// <summary>The port for A/AAAA answers; null when SRV records give the ports.</summary>
    public int? Port { get; }

    /// <summary>Time between resolutions.</summary>
    public TimeSpan Interval { get; }

    /// <inheritdoc/>
    public string Description => Port is { } p ? $"dns:{Name}:{p.ToString(CultureInfo.InvariantCulture)}" : $"dns:{Name}";

    /// <inheritdoc/>
    public async IAsyncEnumerable<IReadOnlyList<EndpointSpec>> WatchAsync([EnumeratorCancellation] CancellationToken ct)
    {
        EndpointSpec[]? last = null;
        bool failing = false;
        while (!ct.IsCancellationRequested)
        {
            EndpointSpec[]? now = null;
            string? problem = null;
            try
            {
                now = await ResolveAsync(ct).ConfigureAwait(false);
                if (now.Length == 0) problem = "the answer holds no usable records";
            }
            catch (OperationCanceledException) when (ct.IsCancellationRequested)
            {
                yield break;
            }
            catch (Exception e) when (e is DnsResponseException or EndpointSourceException or SocketException or TimeoutException or OperationCanceledException)
            {
                problem = e.Message;
            }
            if (problem is not null)
            {
                if (!failing) _log?.Invoke($"{Description}: {problem}; keeping the {(last is null ? "empty" : $"previous {last.Length}-endpoint")} set");
                failing = true;
            }
            else
            {
                failing = false;
                if (last is null || !last.AsSpan().SequenceEqual(now!))
                {
                    last = now!;
                    yield return last;
                }
            }
            try { await Task.Delay(Interval, ct).ConfigureAwait(false); }
            catch (OperationCanceledException) { yield break; }
        }
    }

    /// <summary>One resolution: the endpoints sorted by address (empty when the name has no usable records).</summary>
    public async Task<EndpointSpec[]> ResolveAsync(CancellationToken ct)
    {
        var found = new Dictionary<string, EndpointSpec>();
        if (Port is { } port)
        {
            foreach (var ip in await AddressesAsync(Name, null, ct).ConfigureAwait(false))
            {
                var e = new EndpointSpec(ip.ToString(), port);
                found.TryAdd(e.Address, e);
            }
        }
        else
        {
            var answer = await _dns.QueryAsync(Name, QueryType.SRV, QueryClass.IN, ct).ConfigureAwait(false);
            if (answer.HasError && answer.Header.ResponseCode != DnsHeaderResponseCode.NotExistentDomain)
                throw new EndpointSourceException("route.dns_failed", $"SRV {Name}: {answer.ErrorMessage}");
            var records = answer.Answers.SrvRecords().ToArray();
            if (records.Length > 0)
            {
                int best = records.Min(r => r.Priority);
                foreach (var r in records.Where(r => r.Priority == best))
                {
                    foreach (var ip in await AddressesAsync(r.Target.Value, answer.Additionals, ct).ConfigureAwait(false))
                    {
                        var e = new EndpointSpec(ip.ToString(), r.Port, Math.Max((int)r.Weight, 1));
                        found.TryAdd(e.Address, e);
                    }
                }
            }
        }
        var list = found.Values.ToArray();
        Array.Sort(list, static (a, b) => string.CompareOrdinal(a.Address, b.Address));
        return list;
    }

    // A and AAAA addresses of `host`: from the SRV answer's additional records when they name it, else two queries.
    private async Task<List<IPAddress>> AddressesAsync(string host, IReadOnlyList<DnsResourceRecord>? additionals, CancellationToken ct)
    {
        var result = new List<IPAddress>();
        if (IPAddress.TryParse(host.TrimEnd('.'), out var literal))
        {
            result.Add(literal);
            return result;
        }
        if (additionals is not null)
        {
            foreach (var r in additionals)
            {
                if (!string.Equals(r.DomainName.Value, host, StringComparison.OrdinalIgnoreCase)) continue;
                if (r is ARecord a) result.Add(a.Address);
                else if (r is AaaaRecord aaaa) result.Add(aaaa.Address);
            }
            if (result.Count > 0) return result;
        }
        // A name may have only one family, and some servers refuse (rather than answer empty) the other: an error
        // counts only when neither family gave an address.
        string? error = null;
        foreach (var type in new[] { QueryType.A, QueryType.AAAA })
        {
            var answer = await _dns.QueryAsync(host, type, QueryClass.IN, ct).ConfigureAwait(false);
            if (answer.HasError && answer.Header.ResponseCode != DnsHeaderResponseCode.NotExistentDomain)
            {
                error ??= $"{type} {host}: {answer.ErrorMessage}";
                continue;
            }
            foreach (var r in answer.Answers)
            {
                if (r is ARecord a) result.Add(a.Address);
                else if (r is AaaaRecord aaaa) result.Add(aaaa.Address);
            }
        }
        if (result.Count == 0 && error is not null) throw new EndpointSourceException("route.dns_failed", error);
        return result;
    }
}
