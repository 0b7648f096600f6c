using System.Globalization;
using System.Runtime.CompilerServices;
using System.Text.Json;

namespace FastServe.Router;

/// <summary>One endpoint as a source names it: host (a name or an address), port and weight.</summary>
public readonly record struct EndpointSpec(string Host, int Port, double Weight = 1)
{
    /// <summary><c>host:port</c> (an IPv6 host in brackets): the endpoint's identity within a router.</summary>
    public string Address => Host.Contains(':') ? $"[{Host}]:{Port.ToString(CultureInfo.InvariantCulture)}" : $"{Host}:{Port.ToString(CultureInfo.InvariantCulture)}";

    /// <summary>Parses <c>host:port</c> or <c>[v6]:port</c>.</summary>
    /// <exception cref="EndpointSourceException"><c>route.bad_endpoint</c>.</exception>
    public static EndpointSpec Parse(string text, double weight = 1)
    {
        string s = text.Trim();
        int colon = s.LastIndexOf(':');
        if (colon <= 0 || colon == s.Length - 1) throw Bad(text, "expected host:port");
        string host = s[..colon];
        if (host.StartsWith('[') && host.EndsWith(']')) host = host[1..^1];
        else if (host.Contains(':')) throw Bad(text, "write an IPv6 address in brackets: [addr]:port");
        if (host.Length == 0 || host.Any(char.IsWhiteSpace)) throw Bad(text, "the host is empty or holds spaces");
        if (!int.TryParse(s.AsSpan(colon + 1), NumberStyles.None, CultureInfo.InvariantCulture, out int port) || port is < 1 or > 65535)
            throw Bad(text, "the port must be a number from 1 to 65535");
        if (!double.IsFinite(weight) || weight <= 0 || weight > 1_000_000) throw Bad(text, "the weight must be a number above 0 and at most 1000000");
        return new EndpointSpec(host, port, weight);
    }

    private static EndpointSourceException Bad(string text, string why) => new("route.bad_endpoint", $"bad endpoint '{text}': {why}");
}

/// <summary>
/// A problem with an endpoint source's configuration. <see cref="Code"/> is stable: <c>route.bad_endpoint</c>,
/// <c>route.no_endpoints</c>, <c>route.duplicate_endpoint</c>, <c>route.bad_source</c>,
/// <c>route.endpoints_file_missing</c>, <c>route.bad_endpoints_file</c>, <c>route.k8s_config</c>.
/// </summary>
public sealed class EndpointSourceException : Exception
{
    /// <summary>An error with a stable dotted <paramref name="code"/>.</summary>
    public EndpointSourceException(string code, string message, Exception? inner = null) : base(message, inner) => Code = code;

    /// <summary>The stable dotted code.</summary>
    public string Code { get; }
}

/// <summary>
/// Where a router learns its endpoints: a stream of full snapshots (not diffs). A static list, a watched file; DNS or
/// Kubernetes sources implement the same contract.
/// </summary>
public interface IEndpointSource
{
    /// <summary>What it reads, for the ready line and logs (e.g. <c>file:/etc/fastserve/endpoints.json</c>).</summary>
    string Description { get; }

    /// <summary>
    /// The current set at once, then a new full set whenever it changes, until <paramref name="ct"/> is cancelled
    /// (the stream then ends without throwing). A source may end early; the router keeps the last set. A source never
    /// yields an empty set from a transient failure: it keeps the previous one and reports through its log.
    /// </summary>
    IAsyncEnumerable<IReadOnlyList<EndpointSpec>> WatchAsync(CancellationToken ct);
}

/// <summary>A fixed list, given on the command line as <c>host:port,host:port</c> (weight 1 each).</summary>
public sealed class StaticEndpointSource : IEndpointSource
{
    private readonly EndpointSpec[] _endpoints;

    /// <summary>The given endpoints (at least one, addresses distinct).</summary>
    /// <exception cref="EndpointSourceException"><c>route.no_endpoints</c>, <c>route.duplicate_endpoint</c>.</exception>
    public StaticEndpointSource(IEnumerable<EndpointSpec> endpoints)
    {
        _endpoints = [.. endpoints];
        EndpointSources.CheckSet(_endpoints, "the endpoint list");
        Description = string.Join(',', _endpoints.Select(e => e.Address));
    }

    /// <inheritdoc/>
    public string Description { get; }

    /// <summary>The endpoints, in order.</summary>
    public IReadOnlyList<EndpointSpec> Endpoints => _endpoints;

    /// <inheritdoc/>
    public async IAsyncEnumerable<IReadOnlyList<EndpointSpec>> WatchAsync([EnumeratorCancellation] CancellationToken ct)
    {
        await Task.CompletedTask.ConfigureAwait(false);
        yield return _endpoints;
    }
}

/// <summary>
/// A JSON file <c>{"endpoints":[{"address":"host:port","weight":1}, ...]}</c> (weight optional, default 1; unknown
/// members ignored), read at start (a missing or bad file then fails the start) and again whenever its modification
/// time or size changes, checked every <see cref="PollInterval"/>. A file that later turns bad keeps the previous set
/// and logs one line per change of the file.
/// </summary>
public sealed class FileEndpointSource : IEndpointSource
{
    private readonly string _path;
    private readonly Action<string>? _log;
    private EndpointSpec[] _current;
    private (DateTime Time, long Size) _stamp;

    /// <summary>Reads <paramref name="path"/> now.</summary>
    /// <exception cref="EndpointSourceException"><c>route.endpoints_file_missing</c>, <c>route.bad_endpoints_file</c>,
    /// <c>route.bad_endpoint</c>, <c>route.no_endpoints</c>, <c>route.duplicate_endpoint</c>.</exception>
    public FileEndpointSource(string path, Action<string>? log = null, TimeSpan? pollInterval = null)
    {
        _path = Path.GetFullPath(path);
        _log = log;
        PollInterval = pollInterval ?? TimeSpan.FromMilliseconds(500);
        if (!File.Exists(_path)) throw new EndpointSourceException("route.endpoints_file_missing", $"the endpoints file {_path} does not exist");
        _stamp = Stamp();
        _current = Read();
    }

    /// <inheritdoc/>
    public string Description => "file:" + _path;

    /// <summary>How often the file's modification time is checked.</summary>
    public TimeSpan PollInterval { get; }

    /// <inheritdoc/>
    public async IAsyncEnumerable<IReadOnlyList<EndpointSpec>> WatchAsync([EnumeratorCancellation] CancellationToken ct)
    {
        yield return _current;
        while (!ct.IsCancellationRequested)
        {
            try { await Task.Delay(PollInterval, ct).ConfigureAwait(false); }
            catch (OperationCanceledException) { yield break; }
            var stamp = Stamp();
            if (stamp == _stamp) continue;
            _stamp = stamp;
            EndpointSpec[] next;
            try
            {
                next = Read();
            }
            catch (Exception e) when (e is EndpointSourceException or IOException or UnauthorizedAccessException)
            {
                _log?.Invoke($"endpoints file {_path}: {e.Message}; keeping the previous {_current.Length} endpoint(s)");
                continue;
            }
            if (next.AsSpan().SequenceEqual(_current)) continue;
            _current = next;
            yield return next;
        }
    }

    private (DateTime, long) Stamp()
    {
        try
        {
            var fi = new FileInfo(_path);
            return fi.Exists ? (fi.LastWriteTimeUtc, fi.Length) : (DateTime.MinValue, -1);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return (DateTime.MinValue, -1);
        }
    }

    private EndpointSpec[] Read()
    {
        byte[] bytes;
        try { bytes = File.ReadAllBytes(_path); }
        catch (FileNotFoundException) { throw new EndpointSourceException("route.endpoints_file_missing", $"the endpoints file {_path} does not exist"); }
        catch (DirectoryNotFoundException) { throw new EndpointSourceException("route.endpoints_file_missing", $"the endpoints file {_path} does not exist"); }
        return EndpointSources.ParseJson(bytes, _path);
    }
}

/// <summary>Builds endpoint sources from the <c>--endpoints</c> text, and the shared checks.</summary>
public static class EndpointSources
{
    /// <summary>
    /// <c>host:port,host:port</c> gives a <see cref="StaticEndpointSource"/>; <c>file:PATH</c> a
    /// <see cref="FileEndpointSource"/> (read now); <c>dns:NAME:PORT</c> or <c>dns:NAME</c> (SRV) a
    /// <see cref="DnsEndpointSource"/> re-resolved every <see cref="DnsInterval"/>; <c>k8s:NAMESPACE/SERVICE[:PORT]</c> a
    /// <see cref="KubernetesEndpointSource"/> (its configuration read now, the API first asked when watched).
    /// </summary>
    /// <exception cref="EndpointSourceException">The text or the file is not usable (see its code).</exception>
    public static IEndpointSource Parse(string text, Action<string>? log = null)
    {
        ArgumentNullException.ThrowIfNull(text);
        string s = text.Trim();
        if (s.StartsWith("file:", StringComparison.Ordinal))
        {
            string path = s["file:".Length..];
            if (path.Length == 0) throw new EndpointSourceException("route.bad_source", "file: needs a path (file:/path/to/endpoints.json)");
            return new FileEndpointSource(path, log);
        }
        if (s.StartsWith("dns:", StringComparison.Ordinal)) return ParseDns(s["dns:".Length..], log);
        if (s.StartsWith("k8s:", StringComparison.Ordinal)) return KubernetesEndpointSource.Parse(s["k8s:".Length..], null, log);
        int scheme = s.IndexOf("://", StringComparison.Ordinal);
        if (scheme >= 0)
            throw new EndpointSourceException("route.bad_source", $"unknown endpoint source '{s[..scheme]}://' (use host:port,..., file:PATH, dns:NAME[:PORT] or k8s:NAMESPACE/SERVICE[:PORT])");
        var list = new List<EndpointSpec>();
        foreach (var part in s.Split(',', StringSplitOptions.TrimEntries))
        {
            if (part.Length == 0) continue;
            list.Add(EndpointSpec.Parse(part));
        }
        return new StaticEndpointSource(list);
    }

    /// <summary>How often a <c>dns:</c> source re-resolves its name.</summary>
    public static readonly TimeSpan DnsInterval = TimeSpan.FromSeconds(5);

    // dns:NAME:PORT (A/AAAA at PORT) or dns:NAME (SRV). A trailing number after the last colon is the port.
    private static DnsEndpointSource ParseDns(string rest, Action<string>? log)
    {
        if (rest.Length == 0) throw new EndpointSourceException("route.bad_source", "dns: needs a name (dns:NAME:PORT for A/AAAA records, dns:NAME for SRV)");
        int colon = rest.LastIndexOf(':');
        if (colon < 0) return new DnsEndpointSource(rest, null, DnsInterval, null, log);
        if (!int.TryParse(rest.AsSpan(colon + 1), NumberStyles.None, CultureInfo.InvariantCulture, out int port))
            throw new EndpointSourceException("route.bad_source", $"dns:{rest}: the part after the last ':' must be a port number");
        return new DnsEndpointSource(rest[..colon], port, DnsInterval, null, log);
    }

    /// <summary>Parses the endpoints file's JSON.</summary>
    /// <exception cref="EndpointSourceException"><c>route.bad_endpoints_file</c> and the set checks' codes.</exception>
    public static EndpointSpec[] ParseJson(ReadOnlySpan<byte> json, string where)
    {
        var list = new List<EndpointSpec>();
        try
        {
            var reader = new Utf8JsonReader(json, new JsonReaderOptions { CommentHandling = JsonCommentHandling.Skip, AllowTrailingCommas = true });
            using var doc = JsonDocument.ParseValue(ref reader);
            if (doc.RootElement.ValueKind != JsonValueKind.Object || !doc.RootElement.TryGetProperty("endpoints", out var arr) || arr.ValueKind != JsonValueKind.Array)
                throw BadFile(where, "expected an object with an \"endpoints\" array");
            int i = 0;
            foreach (var item in arr.EnumerateArray())
            {
                if (item.ValueKind != JsonValueKind.Object) throw BadFile(where, $"endpoints[{i}] is not an object");
                if (!item.TryGetProperty("address", out var addr) || addr.ValueKind != JsonValueKind.String)
                    throw BadFile(where, $"endpoints[{i}] needs an \"address\" string");
                double weight = 1;
                if (item.TryGetProperty("weight", out var w))
                {
                    if (w.ValueKind != JsonValueKind.Number || !w.TryGetDouble(out weight)) throw BadFile(where, $"endpoints[{i}].weight is not a number");
                }
                list.Add(EndpointSpec.Parse(addr.GetString()!, weight));
                i++;
            }
        }
        catch (JsonException e)
        {
            throw BadFile(where, $"not valid JSON: {e.Message}");
        }
        var set = list.ToArray();
        CheckSet(set, where);
        return set;
    }

    /// <summary>At least one endpoint, no address twice.</summary>
    public static void CheckSet(ReadOnlySpan<EndpointSpec> set, string where)
    {
        if (set.IsEmpty) throw new EndpointSourceException("route.no_endpoints", $"{where} names no endpoint");
        var seen = new HashSet<string>(StringComparer.OrdinalIgnoreCase);
        foreach (var e in set)
            if (!seen.Add(e.Address)) throw new EndpointSourceException("route.duplicate_endpoint", $"{where} names {e.Address} twice");
    }

    private static EndpointSourceException BadFile(string where, string why) => new("route.bad_endpoints_file", $"endpoints file {where}: {why}");
}
