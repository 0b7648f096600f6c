using System.Globalization;
using System.Net;
using System.Runtime.CompilerServices;
using System.Text;
using System.Text.Json;
using System.Threading.Channels;
using k8s;
using k8s.Autorest;
using k8s.Models;

namespace FastServe.Router;

/// <summary>
/// Endpoints from the Kubernetes API: the <c>discovery.k8s.io/v1</c> EndpointSlices of one Service
/// (<c>k8s:NAMESPACE/SERVICE</c>, label <c>kubernetes.io/service-name=SERVICE</c>), listed once and then watched, so a
/// pod that turns ready or starts terminating reaches the router within a round trip instead of a DNS interval.
/// <list type="bullet">
/// <item>Endpoints: those whose <c>conditions.ready</c> is true or absent (absent means ready, per the API) and whose
/// <c>conditions.terminating</c> is not true; each at its first address (the API's addresses of one endpoint are
/// fungible), weight 1. An address listed twice (a pod in two slices while they are rebalanced) or one pod in the IPv4
/// and the IPv6 slice of a dual-stack Service counts once. Sorted by address.</item>
/// <item>Port: <c>k8s:NAMESPACE/SERVICE:PORTNAME</c> takes the slice port of that name; <c>:PORTNUMBER</c> that port
/// on every address, whatever the slices list; neither takes the port named <see cref="DefaultPortName"/>, else a
/// slice's only port. A slice with endpoints but no such port is left out and logged once.</item>
/// <item>Changes: every watch event gives a new full set when the set changed. A watch that ends (the server's
/// <c>timeoutSeconds</c>, a dropped connection) or expires (HTTP 410 Gone, or an ERROR event with code 410) is followed
/// by a new list and watch; failures (an error status, no answer) retry with a delay doubling from
/// <see cref="MinRetryDelay"/> to <see cref="MaxRetryDelay"/>, reset once a watch is accepted.</item>
/// <item>Failures and an empty set keep the previous set, logged once per streak: an API outage or a Service scaled to
/// zero does not empty the fleet (the router keeps its last set, as with every source). The first set comes from the
/// first list that names a ready endpoint; until then <see cref="WatchAsync"/> waits.</item>
/// </list>
/// The API is reached with the pod's service account when in a cluster, else with the kubeconfig (<c>KUBECONFIG</c>, else
/// <c>~/.kube/config</c>); RBAC needs <c>get</c>, <c>list</c> and <c>watch</c> on <c>endpointslices</c> in the namespace
/// (deploy/k8s/fleet.yaml).
/// </summary>
public sealed class KubernetesEndpointSource : IEndpointSource, IDisposable
{
    /// <summary>The slice port used when the source text names none.</summary>
    public const string DefaultPortName = "fastserve";

    private readonly Kubernetes _client;
    private readonly Action<string>? _log;
    private readonly string _selector;

    /// <summary>A source for the Service <paramref name="service"/> in <paramref name="ns"/>.</summary>
    /// <param name="port">A port name, a port number, or null for <see cref="DefaultPortName"/> or the only port.</param>
    /// <param name="config">Where and how to reach the API; null = in-cluster, else the kubeconfig.</param>
    /// <exception cref="EndpointSourceException"><c>route.bad_source</c> (a name or port that Kubernetes would not
    /// accept), <c>route.k8s_config</c> (not in a cluster and no usable kubeconfig).</exception>
    public KubernetesEndpointSource(string ns, string service, string? port = null, KubernetesClientConfiguration? config = null, Action<string>? log = null)
    {
        if (!IsDnsLabel(ns)) throw Bad($"k8s:{ns}/{service}: the namespace must be a DNS label (1 to 63 lowercase letters, digits or '-', not starting or ending with '-'), not '{ns}'");
        if (!IsDnsLabel(service)) throw Bad($"k8s:{ns}/{service}: the service must be a DNS label (1 to 63 lowercase letters, digits or '-', not starting or ending with '-'), not '{service}'");
        if (port is not null)
        {
            if (port.Length > 0 && port.All(char.IsAsciiDigit))
            {
                if (!int.TryParse(port, NumberStyles.None, CultureInfo.InvariantCulture, out int n) || n is < 1 or > 65535)
                    throw Bad($"k8s:{ns}/{service}:{port}: the port number must be 1 to 65535");
                PortNumber = n;
            }
            else if (IsDnsLabel(port)) PortName = port;
            else throw Bad($"k8s:{ns}/{service}:{port}: the port must be a number or a port name (a DNS label)");
        }
        Namespace = ns;
        Service = service;
        _selector = "kubernetes.io/service-name=" + service;
        _log = log;
        try
        {
            _client = new Kubernetes(config ?? LoadConfiguration());
        }
        catch (Exception e) when (e is not EndpointSourceException)
        {
            throw new EndpointSourceException("route.k8s_config", $"k8s:{ns}/{service}: cannot set up the Kubernetes client: {e.Message}", e);
        }
    }

    /// <summary>The Service's namespace.</summary>
    public string Namespace { get; }

    /// <summary>The Service whose EndpointSlices are watched.</summary>
    public string Service { get; }

    /// <summary>The slice port chosen by name; null when a number or the default chooses.</summary>
    public string? PortName { get; }

    /// <summary>The port used on every address; null when the slices' ports are used.</summary>
    public int? PortNumber { get; }

    /// <summary>The delay before the first retry after a failure; doubles per failure up to <see cref="MaxRetryDelay"/>,
    /// and is also the pause before re-listing after a watch ends.</summary>
    public TimeSpan MinRetryDelay { get; init; } = TimeSpan.FromMilliseconds(500);

    /// <summary>The longest delay between retries.</summary>
    public TimeSpan MaxRetryDelay { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>How long the API server keeps one watch open (its <c>timeoutSeconds</c>); a new list and watch follow.</summary>
    public TimeSpan WatchTimeout { get; init; } = TimeSpan.FromMinutes(5);

    /// <inheritdoc/>
    public string Description => $"k8s:{Namespace}/{Service}"
        + (PortName is not null ? ":" + PortName : PortNumber is { } p ? ":" + p.ToString(CultureInfo.InvariantCulture) : "");

    /// <summary>Parses the text after <c>k8s:</c>: <c>NAMESPACE/SERVICE</c>, optionally <c>:PORTNAME</c> or <c>:PORTNUMBER</c>.</summary>
    /// <exception cref="EndpointSourceException"><c>route.bad_source</c>, <c>route.k8s_config</c>.</exception>
    public static KubernetesEndpointSource Parse(string rest, KubernetesClientConfiguration? config = null, Action<string>? log = null)
    {
        ArgumentNullException.ThrowIfNull(rest);
        int slash = rest.IndexOf('/');
        if (slash < 0) throw Bad($"k8s:{rest}: expected k8s:NAMESPACE/SERVICE (optionally :PORTNAME or :PORTNUMBER)");
        string ns = rest[..slash], service = rest[(slash + 1)..];
        string? port = null;
        int colon = service.IndexOf(':');
        if (colon >= 0)
        {
            port = service[(colon + 1)..];
            service = service[..colon];
            if (port.Length == 0) throw Bad($"k8s:{rest}: nothing after ':' (give a port name or number, or leave the ':' out)");
        }
        return new KubernetesEndpointSource(ns, service, port, config, log);
    }

    /// <summary>
    /// The configuration used when none is given: the pod's service account in a cluster, else the kubeconfig named by
    /// <c>KUBECONFIG</c> (the first file of its list that exists; the files are not merged as kubectl does), else
    /// <c>~/.kube/config</c>, in its current context.
    /// </summary>
    /// <exception cref="EndpointSourceException"><c>route.k8s_config</c>.</exception>
    public static KubernetesClientConfiguration LoadConfiguration()
    {
        try
        {
            if (KubernetesClientConfiguration.IsInCluster()) return KubernetesClientConfiguration.InClusterConfig();
            string? env = Environment.GetEnvironmentVariable("KUBECONFIG");
            string[] named = string.IsNullOrWhiteSpace(env)
                ? [KubernetesClientConfiguration.KubeConfigDefaultLocation]
                : env.Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
            var files = named.Where(File.Exists).ToArray();
            if (files.Length == 0)
                throw new EndpointSourceException("route.k8s_config",
                    $"k8s: not running in a Kubernetes pod and no kubeconfig found ({(string.IsNullOrWhiteSpace(env) ? KubernetesClientConfiguration.KubeConfigDefaultLocation : "KUBECONFIG=" + env)}); " +
                    "run the router in the cluster with a service account, or set KUBECONFIG");
            return KubernetesClientConfiguration.BuildConfigFromConfigFile(files[0]);
        }
        catch (Exception e) when (e is not EndpointSourceException)
        {
            throw new EndpointSourceException("route.k8s_config", $"k8s: cannot read the Kubernetes configuration: {e.Message}", e);
        }
    }

    /// <inheritdoc/>
    public async IAsyncEnumerable<IReadOnlyList<EndpointSpec>> WatchAsync([EnumeratorCancellation] CancellationToken ct)
    {
        // The list/watch loop runs on its own and leaves its latest set here; a slow reader skips sets that a newer
        // full set has replaced, which a stream of full snapshots allows.
        var sets = Channel.CreateBounded<EndpointSpec[]>(new BoundedChannelOptions(1)
        {
            FullMode = BoundedChannelFullMode.DropOldest, SingleReader = true, SingleWriter = true,
        });
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(ct);
        var loop = RunAsync(sets.Writer, stop.Token);
        try
        {
            EndpointSpec[]? last = null;
            while (await WaitAsync(sets.Reader, ct).ConfigureAwait(false))
            {
                while (sets.Reader.TryRead(out var set))
                {
                    if (last is not null && last.AsSpan().SequenceEqual(set)) continue;
                    last = set;
                    yield return set;
                }
            }
        }
        finally
        {
            await stop.CancelAsync().ConfigureAwait(false);
            try { await loop.ConfigureAwait(false); }
            catch (OperationCanceledException) { }
        }
    }

    private static async ValueTask<bool> WaitAsync(ChannelReader<EndpointSpec[]> reader, CancellationToken ct)
    {
        try { return await reader.WaitToReadAsync(ct).ConfigureAwait(false); }
        catch (OperationCanceledException) when (ct.IsCancellationRequested) { return false; }
    }

    // List, publish, watch until the watch ends; again. Failures back off; success resets the backoff.
    private async Task RunAsync(ChannelWriter<EndpointSpec[]> output, CancellationToken ct)
    {
        var state = new WatchState(this, output);
        var delay = MinRetryDelay;
        try
        {
            while (!ct.IsCancellationRequested)
            {
                string? problem;
                V1EndpointSliceList? list = null;
                try
                {
                    list = await _client.DiscoveryV1.ListNamespacedEndpointSliceAsync(Namespace, labelSelector: _selector, cancellationToken: ct).ConfigureAwait(false);
                    problem = null;
                }
                catch (Exception e) when (!ct.IsCancellationRequested)
                {
                    problem = Explain(e);
                }
                if (list is not null)
                {
                    state.Slices.Clear();
                    foreach (var s in list.Items ?? [])
                        if (s.Metadata?.Name is { } name) state.Slices[name] = s;
                    state.Publish();
                    (problem, bool accepted) = await WatchOnceAsync(state, list.Metadata?.ResourceVersion, ct).ConfigureAwait(false);
                    if (accepted)
                    {
                        delay = MinRetryDelay;
                        state.Failing = false;
                    }
                }
                if (problem is null)
                {
                    await Task.Delay(MinRetryDelay, ct).ConfigureAwait(false);
                    continue;
                }
                if (!state.Failing) _log?.Invoke($"{Description}: {problem}; keeping {state.Kept}; retrying");
                state.Failing = true;
                await Task.Delay(delay, ct).ConfigureAwait(false);
                delay = TimeSpan.FromTicks(Math.Min(delay.Ticks * 2, MaxRetryDelay.Ticks));
            }
        }
        catch (OperationCanceledException) when (ct.IsCancellationRequested)
        {
        }
        catch (Exception e)
        {
            output.TryComplete(e);
            return;
        }
        output.TryComplete();
    }

    // One watch from `resourceVersion`, applying its events to the slices. Returns the problem (null when the watch
    // just ended or expired: a new list follows) and whether the server accepted the watch.
    private async Task<(string? Problem, bool Accepted)> WatchOnceAsync(WatchState state, string? resourceVersion, CancellationToken ct)
    {
        var query = new StringBuilder("watch=true&labelSelector=").Append(Uri.EscapeDataString(_selector))
            .Append("&timeoutSeconds=").Append(((int)Math.Max(1, WatchTimeout.TotalSeconds)).ToString(CultureInfo.InvariantCulture));
        if (!string.IsNullOrEmpty(resourceVersion)) query.Append("&resourceVersion=").Append(Uri.EscapeDataString(resourceVersion));
        var uri = new Uri(_client.BaseUri, $"apis/discovery.k8s.io/v1/namespaces/{Namespace}/endpointslices?{query}");
        // The Aot client has no watch helper (its Watcher needs reflection), so the watch is one GET through the
        // client's own HttpClient and credentials: same TLS, same token refresh as its list call.
        using var request = new HttpRequestMessage(HttpMethod.Get, uri) { Version = HttpVersion.Version20 };
        // A server that stops sending without closing must not hold the source forever.
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(ct);
        deadline.CancelAfter(WatchTimeout + TimeSpan.FromSeconds(30));
        HttpResponseMessage response;
        try
        {
            if (_client.Credentials is { } credentials) await credentials.ProcessHttpRequestAsync(request, deadline.Token).ConfigureAwait(false);
            response = await _client.HttpClient.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, deadline.Token).ConfigureAwait(false);
        }
        catch (Exception e) when (!ct.IsCancellationRequested)
        {
            return ("watch: " + Explain(e), false);
        }
        using (response)
        {
            if (response.StatusCode == HttpStatusCode.Gone) return (null, false);
            if (!response.IsSuccessStatusCode)
            {
                string body = "";
                try { body = await response.Content.ReadAsStringAsync(deadline.Token).ConfigureAwait(false); }
                catch (Exception e) when (!ct.IsCancellationRequested && e is HttpRequestException or IOException or OperationCanceledException) { }
                return ("watch: " + StatusText((int)response.StatusCode, response.ReasonPhrase, body), false);
            }
            try
            {
                using var reader = new StreamReader(await response.Content.ReadAsStreamAsync(deadline.Token).ConfigureAwait(false), Encoding.UTF8);
                while (await reader.ReadLineAsync(deadline.Token).ConfigureAwait(false) is { } line)
                {
                    if (string.IsNullOrWhiteSpace(line)) continue;
                    var problem = state.Apply(line, out bool expired);
                    if (expired) return (null, true);
                    if (problem is not null) return ("watch: " + problem, true);
                }
            }
            catch (Exception e) when (!ct.IsCancellationRequested && e is HttpRequestException or IOException or OperationCanceledException)
            {
                // Dropped or past its deadline: like an end, a new list follows.
            }
            return (null, true);
        }
    }

    // The slices seen so far and the last set published, owned by one RunAsync.
    private sealed class WatchState(KubernetesEndpointSource source, ChannelWriter<EndpointSpec[]> output)
    {
        public readonly Dictionary<string, V1EndpointSlice> Slices = new(StringComparer.Ordinal);
        private readonly HashSet<string> _warned = new(StringComparer.Ordinal);
        private EndpointSpec[]? _published;
        private bool _emptyLogged;

        public bool Failing;

        public string Kept => _published is null ? "the empty set" : $"the previous {_published.Length}-endpoint set";

        // One watch event line: ADDED/MODIFIED/DELETED change the slices (and publish), BOOKMARK carries nothing this
        // source needs, ERROR ends the watch. Returns a problem, or sets `expired` for an ERROR with code 410.
        public string? Apply(string line, out bool expired)
        {
            expired = false;
            try
            {
                using var doc = JsonDocument.Parse(line);
                var root = doc.RootElement;
                string? type = root.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String ? t.GetString() : null;
                if (!root.TryGetProperty("object", out var obj) || obj.ValueKind != JsonValueKind.Object) return $"an event without an object ({type})";
                switch (type)
                {
                    case "ADDED" or "MODIFIED" or "DELETED":
                        // The client's source-generated JSON metadata: no reflection, so it works in the NativeAOT build.
                        var slice = obj.Deserialize(SourceGenerationContext.Default.V1EndpointSlice);
                        if (slice?.Metadata?.Name is not { } name) return $"a {type} event for a slice without a name";
                        if (type == "DELETED") Slices.Remove(name);
                        else Slices[name] = slice;
                        Publish();
                        return null;
                    case "ERROR":
                        int code = obj.TryGetProperty("code", out var c) && c.TryGetInt32(out int n) ? n : 0;
                        string message = obj.TryGetProperty("message", out var m) && m.ValueKind == JsonValueKind.String ? m.GetString() ?? "" : "";
                        if (code == (int)HttpStatusCode.Gone) { expired = true; return null; }
                        return $"the server ended the watch with {code.ToString(CultureInfo.InvariantCulture)} {message}".TrimEnd();
                    default:
                        return null;
                }
            }
            catch (Exception e) when (e is JsonException or FormatException)
            {
                return $"an unreadable event: {e.Message}";
            }
        }

        public void Publish()
        {
            var set = source.Snapshot(Slices.Values, _warned);
            if (set.Length == 0)
            {
                if (!_emptyLogged) source._log?.Invoke($"{source.Description}: no ready endpoints; keeping {Kept}");
                _emptyLogged = true;
                return;
            }
            _emptyLogged = false;
            if (_published is not null && _published.AsSpan().SequenceEqual(set)) return;
            _published = set;
            output.TryWrite(set);
        }
    }

    /// <summary>The ready endpoints of <paramref name="slices"/> at the chosen port, deduplicated and sorted by address.</summary>
    /// <param name="warned">Slices already logged for having no usable port (updated; a slice is logged again only after
    /// it had a port in between).</param>
    internal EndpointSpec[] Snapshot(IEnumerable<V1EndpointSlice> slices, HashSet<string>? warned = null)
    {
        var candidates = new List<(EndpointSpec Spec, string? Pod)>();
        foreach (var slice in slices)
        {
            string name = slice.Metadata?.Name ?? "";
            var ready = (slice.Endpoints ?? []).Where(IsReady).ToList();
            if (ready.Count == 0) continue;
            int? port = PortOf(slice, out string? why);
            if (port is null)
            {
                if (warned is not null && warned.Add(name)) _log?.Invoke($"{Description}: EndpointSlice {name} {why}; its {ready.Count} endpoint(s) are left out");
                continue;
            }
            warned?.Remove(name);
            foreach (var e in ready)
            {
                string? address = e.Addresses?.FirstOrDefault(a => !string.IsNullOrWhiteSpace(a));
                if (address is null) continue;
                candidates.Add((new EndpointSpec(address, port.Value), e.TargetRef?.Uid is { Length: > 0 } uid ? uid + ":" + port.Value.ToString(CultureInfo.InvariantCulture) : null));
            }
        }
        // Sorted first, so the lower address (IPv4 before a bracketed IPv6) stands for a dual-stack pod.
        candidates.Sort(static (a, b) => string.CompareOrdinal(a.Spec.Address, b.Spec.Address));
        var addresses = new HashSet<string>(StringComparer.OrdinalIgnoreCase);
        var pods = new HashSet<string>(StringComparer.Ordinal);
        var set = new List<EndpointSpec>(candidates.Count);
        foreach (var (spec, pod) in candidates)
        {
            if (pod is not null && pods.Contains(pod)) continue;
            if (!addresses.Add(spec.Address)) continue;
            if (pod is not null) pods.Add(pod);
            set.Add(spec);
        }
        return [.. set];
    }

    private static bool IsReady(V1Endpoint e) => e.Conditions?.Ready != false && e.Conditions?.Terminating != true;

    private int? PortOf(V1EndpointSlice slice, out string? why)
    {
        why = null;
        if (PortNumber is { } n) return n;
        var ports = (slice.Ports ?? []).Where(p => p.Port is >= 1 and <= 65535 && (p.Protocol is null || p.Protocol == "TCP")).ToList();
        if (PortName is { } want)
        {
            var named = ports.FirstOrDefault(p => p.Name == want);
            if (named is not null) return named.Port;
            why = $"has no TCP port named '{want}'";
            return null;
        }
        var preferred = ports.FirstOrDefault(p => p.Name == DefaultPortName);
        if (preferred is not null) return preferred.Port;
        if (ports.Count == 1) return ports[0].Port;
        why = ports.Count == 0
            ? "lists no TCP port"
            : $"has ports {string.Join(", ", ports.Select(p => string.IsNullOrEmpty(p.Name) ? p.Port!.Value.ToString(CultureInfo.InvariantCulture) : p.Name))} and none named '{DefaultPortName}' (choose one: k8s:{Namespace}/{Service}:PORT)";
        return null;
    }

    private string Explain(Exception e) => e switch
    {
        HttpOperationException h when h.Response is { } r => StatusText((int)r.StatusCode, r.ReasonPhrase, r.Content),
        OperationCanceledException => "the API server did not answer in time",
        HttpRequestException h => $"cannot reach the API server {_client.BaseUri}: {h.Message}",
        JsonException j => $"an unreadable answer: {j.Message}",
        _ => $"{e.GetType().Name}: {e.Message}",
    };

    // "403 Forbidden: <the Status message>", with a hint where the cause is usually RBAC.
    private string StatusText(int code, string? reason, string? body)
    {
        string message = "";
        if (!string.IsNullOrWhiteSpace(body))
        {
            try
            {
                using var doc = JsonDocument.Parse(body);
                if (doc.RootElement.ValueKind == JsonValueKind.Object && doc.RootElement.TryGetProperty("message", out var m) && m.ValueKind == JsonValueKind.String)
                    message = m.GetString() ?? "";
            }
            catch (JsonException) { }
        }
        string text = $"the API server answered {code.ToString(CultureInfo.InvariantCulture)} {reason}".TrimEnd();
        if (message.Length > 0) text += ": " + message;
        if (code is 401 or 403)
            text += $" (the router's service account needs get, list and watch on endpointslices.discovery.k8s.io in {Namespace}; see deploy/k8s/fleet.yaml)";
        return text;
    }

    // RFC 1123 label: 1–63 lowercase letters, digits or '-', starting and ending with a letter or digit.
    private static bool IsDnsLabel(string? s)
    {
        if (string.IsNullOrEmpty(s) || s.Length > 63 || s[0] == '-' || s[^1] == '-') return false;
        foreach (char c in s)
            if (!(char.IsAsciiLetterLower(c) || char.IsAsciiDigit(c) || c == '-')) return false;
        return true;
    }

    private static EndpointSourceException Bad(string message) => new("route.bad_source", message);

    /// <summary>Releases the API client.</summary>
    public void Dispose() => _client.Dispose();
}
