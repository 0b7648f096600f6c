using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text.Json;
using k8s;
using k8s.Autorest;
using k8s.Models;

namespace FastServe.Autoscale.Actuators;

/// <summary>
/// The <c>k8s</c> actuator (<c>--actuator k8s:NAMESPACE/DEPLOYMENT</c>, docs/autoscale.md): sets one Deployment's
/// <c>spec.replicas</c> through its scale subresource (<c>apps/v1</c>, <c>deployments/{name}/scale</c>), as
/// <c>kubectl scale</c> and the HPA do, and reads the Deployment's status for the fleet's size. Kubernetes does the
/// rest: new pods start and turn ready; removed pods get SIGTERM and drain within their
/// <c>terminationGracePeriodSeconds</c>.
/// <list type="bullet">
/// <item><see cref="ObserveAsync"/>: one GET of the Deployment. With <c>spec</c> = <c>spec.replicas</c> (1 when
/// absent, the API's default), <c>ready</c> = <c>status.readyReplicas</c>, <c>pods</c> = <c>status.replicas</c> (pods
/// not terminating, of every ReplicaSet) and <c>terminating</c> = <c>status.terminatingReplicas</c> (0 where the
/// server does not report it): Ready = min(ready, spec); Starting = max(0, spec − ready); Draining = terminating +
/// max(0, pods − spec). So Ready + Starting is always <c>spec.replicas</c>, what was asked for, and pods above it
/// (a scale-down not yet carried out, a rolling update's surge) count once, as draining, not as capacity.</item>
/// <item><see cref="ScaleAsync"/>: clamps the count to [<see cref="MinReplicas"/>, <see cref="MaxReplicas"/>], GETs
/// the scale subresource and, when its <c>spec.replicas</c> differs, PUTs it back with the new count and the
/// <c>resourceVersion</c> it read (optimistic concurrency: a change made in between is refused with 409, never
/// overwritten). On 409 it reads and tries once more; a second 409 is <c>autoscale.k8s_conflict</c>. Then it observes.
/// No write when the count is already the asked one.</item>
/// <item>Every API call has <see cref="CallTimeout"/>. Expected failures are results with a stable code (docs/errors.md):
/// <c>autoscale.k8s_forbidden</c> (401, 403: the message names the RBAC needed), <c>autoscale.k8s_not_found</c> (404),
/// <c>autoscale.k8s_conflict</c>, <c>autoscale.k8s_rejected</c> (another 4xx, e.g. 422 or 429),
/// <c>autoscale.k8s_server_error</c> (5xx, or an answer that cannot be read), <c>autoscale.k8s_unreachable</c> (no
/// connection, or no answer within the timeout). The caller tries again at its next tick. Cancellation through the
/// caller's token is an <see cref="OperationCanceledException"/>.</item>
/// </list>
/// The API is reached with the pod's service account in a cluster, else with the kubeconfig (the first existing file
/// of <c>KUBECONFIG</c>, else <c>~/.kube/config</c>). RBAC: <c>get</c> on <c>deployments</c> and <c>get</c>,
/// <c>update</c> (and <c>patch</c>, for kubectl) on <c>deployments/scale</c> in the namespace (deploy/k8s/autoscaler.yaml).
/// </summary>
public sealed class KubernetesActuator : IReplicaActuator
{
    /// <summary>The field manager named on writes, so <c>kubectl get -o yaml --show-managed-fields</c> tells who scaled.</summary>
    public const string FieldManager = "fastserve-autoscale";

    /// <summary>The RBAC the actuator needs, as put in error messages.</summary>
    internal const string RbacNeeded = "get on deployments and get, update on deployments/scale (apiGroup apps)";

    private readonly Kubernetes _client;
    private readonly Action<string>? _log;

    private KubernetesActuator(string ns, string deployment, int minReplicas, int maxReplicas, TimeSpan callTimeout, Kubernetes client, Action<string>? log)
    {
        CallTimeout = callTimeout;
        Namespace = ns;
        Deployment = deployment;
        MinReplicas = minReplicas;
        MaxReplicas = maxReplicas;
        _client = client;
        _log = log;
    }

    /// <summary>The Deployment's namespace.</summary>
    public string Namespace { get; }

    /// <summary>The Deployment whose replicas are set.</summary>
    public string Deployment { get; }

    /// <summary>Never fewer replicas than this are asked for.</summary>
    public int MinReplicas { get; }

    /// <summary>Never more replicas than this are asked for.</summary>
    public int MaxReplicas { get; }

    /// <summary>The longest one API call may take before it counts as <c>autoscale.k8s_unreachable</c>.</summary>
    public TimeSpan CallTimeout { get; }

    /// <summary>The <see cref="CallTimeout"/> unless <see cref="Create"/> is given one.</summary>
    public static readonly TimeSpan DefaultCallTimeout = TimeSpan.FromSeconds(5);

    /// <inheritdoc/>
    public string Name => "k8s";

    /// <inheritdoc/>
    public string Description => $"k8s:{Namespace}/{Deployment}";

    /// <summary>
    /// An actuator for <paramref name="spec"/>, <c>NAMESPACE/DEPLOYMENT</c> (the text after <c>k8s:</c>; a leading
    /// <c>k8s:</c> is accepted too), both DNS labels.
    /// </summary>
    /// <param name="minReplicas">Fewest replicas ever asked for (0 or more).</param>
    /// <param name="maxReplicas">Most replicas ever asked for (at least <paramref name="minReplicas"/> and 1).</param>
    /// <param name="log">Event lines (each change made, a failed observation after a change); null for none.</param>
    /// <param name="config">Where and how to reach the API; null = the service account in a cluster, else the kubeconfig.</param>
    /// <param name="callTimeout">Each API call's deadline (positive); null = <see cref="DefaultCallTimeout"/>.</param>
    /// <exception cref="AutoscaleException"><c>autoscale.bad_actuator</c> (the text is not two DNS labels),
    /// <c>autoscale.k8s_config</c> (not in a cluster and no usable kubeconfig).</exception>
    /// <exception cref="ArgumentOutOfRangeException">Bounds that do not make a range (the caller validates them first).</exception>
    public static KubernetesActuator Create(string spec, int minReplicas, int maxReplicas, Action<string>? log = null, KubernetesClientConfiguration? config = null, TimeSpan? callTimeout = null)
    {
        ArgumentNullException.ThrowIfNull(spec);
        ArgumentOutOfRangeException.ThrowIfLessThanOrEqual(callTimeout ?? DefaultCallTimeout, TimeSpan.Zero, nameof(callTimeout));
        ArgumentOutOfRangeException.ThrowIfNegative(minReplicas);
        ArgumentOutOfRangeException.ThrowIfLessThan(maxReplicas, Math.Max(1, minReplicas));
        string text = spec.StartsWith("k8s:", StringComparison.Ordinal) ? spec[4..] : spec;
        int slash = text.IndexOf('/');
        string ns = slash < 0 ? "" : text[..slash], name = slash < 0 ? "" : text[(slash + 1)..];
        if (slash < 0 || !IsDnsLabel(ns) || !IsDnsLabel(name))
            throw new AutoscaleException("autoscale.bad_actuator",
                $"k8s:{text}: expected k8s:NAMESPACE/DEPLOYMENT, each a DNS label (1 to 63 lowercase letters, digits or '-', not starting or ending with '-')");
        var configuration = config ?? LoadConfiguration();
        Kubernetes client;
        try { client = new Kubernetes(configuration); }
        catch (Exception e)
        {
            throw new AutoscaleException("autoscale.k8s_config", $"k8s:{ns}/{name}: cannot set up the Kubernetes client: {e.Message}", e);
        }
        return new KubernetesActuator(ns, name, minReplicas, maxReplicas, callTimeout ?? DefaultCallTimeout, client, log);
    }

    // In a pod: its service account. Else the first kubeconfig that exists (not merged, unlike kubectl).
    private static KubernetesClientConfiguration LoadConfiguration()
    {
        string? path = null;
        try
        {
            if (KubernetesClientConfiguration.IsInCluster()) return KubernetesClientConfiguration.InClusterConfig();
            string? env = Environment.GetEnvironmentVariable("KUBECONFIG");
            string tried = string.IsNullOrWhiteSpace(env) ? KubernetesClientConfiguration.KubeConfigDefaultLocation : "KUBECONFIG=" + env;
            path = (string.IsNullOrWhiteSpace(env) ? [KubernetesClientConfiguration.KubeConfigDefaultLocation] : env.Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
                .FirstOrDefault(File.Exists)
                ?? throw new AutoscaleException("autoscale.k8s_config",
                    $"k8s: not running in a Kubernetes pod and no kubeconfig found ({tried}); run the autoscaler in the cluster with a service account (deploy/k8s/autoscaler.yaml), or set KUBECONFIG");
            return KubernetesClientConfiguration.BuildConfigFromConfigFile(path);
        }
        catch (Exception e) when (e is not AutoscaleException)
        {
            throw new AutoscaleException("autoscale.k8s_config", $"k8s: cannot read the Kubernetes configuration{(path is null ? "" : " " + path)}: {e.Message}", e);
        }
    }

    /// <inheritdoc/>
    public async ValueTask<ActuatorResult> ObserveAsync(CancellationToken ct)
    {
        var (deployment, failure) = await CallAsync("read the Deployment",
            t => _client.AppsV1.ReadNamespacedDeploymentAsync(Deployment, Namespace, cancellationToken: t), ct).ConfigureAwait(false);
        return failure ?? ActuatorResult.Of(SizeOf(deployment!));
    }

    /// <summary>The fleet's size from a Deployment's spec and status (see the type's remarks).</summary>
    internal static FleetSize SizeOf(V1Deployment deployment)
    {
        int spec = Math.Max(0, deployment.Spec?.Replicas ?? 1);
        int ready = Math.Max(0, deployment.Status?.ReadyReplicas ?? 0);
        int pods = Math.Max(0, deployment.Status?.Replicas ?? 0);
        int terminating = Math.Max(0, deployment.Status?.TerminatingReplicas ?? 0);
        return new FleetSize(Math.Min(ready, spec), Math.Max(0, spec - ready), terminating + Math.Max(0, pods - spec));
    }

    /// <inheritdoc/>
    public async ValueTask<ActuatorResult> ScaleAsync(int desired, CancellationToken ct)
    {
        int target = Math.Clamp(desired, MinReplicas, MaxReplicas);
        bool wrote = false;
        for (int attempt = 1; ; attempt++)
        {
            var (scale, failure) = await CallAsync("read the scale subresource",
                t => _client.AppsV1.ReadNamespacedDeploymentScaleAsync(Deployment, Namespace, cancellationToken: t), ct).ConfigureAwait(false);
            if (failure is not null) return failure.Value;
            int? before = scale!.Spec?.Replicas;
            if (before == target) break;
            // The scale as read, resourceVersion included: the server refuses the write (409) if anything changed since.
            scale.Spec ??= new V1ScaleSpec();
            scale.Spec.Replicas = target;
            (_, failure) = await CallAsync("update the scale subresource",
                t => _client.AppsV1.ReplaceNamespacedDeploymentScaleAsync(scale, Deployment, Namespace, fieldManager: FieldManager, cancellationToken: t), ct).ConfigureAwait(false);
            if (failure is null)
            {
                wrote = true;
                _log?.Invoke($"{Description}: spec.replicas {(before is { } b ? b.ToString(CultureInfo.InvariantCulture) : "unset")} -> {target.ToString(CultureInfo.InvariantCulture)}"
                    + (target != desired ? $" (asked {desired.ToString(CultureInfo.InvariantCulture)}, bounds {MinReplicas.ToString(CultureInfo.InvariantCulture)}..{MaxReplicas.ToString(CultureInfo.InvariantCulture)})" : ""));
                break;
            }
            if (failure.Value.ErrorCode != "autoscale.k8s_conflict") return failure.Value;
            if (attempt == 2)
                return ActuatorResult.Failed("autoscale.k8s_conflict",
                    $"{Description}: the scale subresource changed while it was being set to {target.ToString(CultureInfo.InvariantCulture)}, twice (409 Conflict; something else is scaling this Deployment, such as an HPA or kubectl)");
        }
        var observed = await ObserveAsync(ct).ConfigureAwait(false);
        if (observed.Ok || !wrote) return observed;
        // The change is made; only its size is unknown. Not a failure, or the caller would count it as one.
        _log?.Invoke($"{Description}: scaled, but {observed.Error}");
        return ActuatorResult.Of(null);
    }

    // One API call with its own deadline; a failure becomes a result, cancellation by `ct` stays an exception.
    private async Task<(T? Value, ActuatorResult? Failure)> CallAsync<T>(string what, Func<CancellationToken, Task<T>> call, CancellationToken ct) where T : class
    {
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(ct);
        deadline.CancelAfter(CallTimeout);
        try
        {
            return (await call(deadline.Token).ConfigureAwait(false), null);
        }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested)
        {
            return (null, Unreachable(what, $"no answer within {CallTimeout.TotalSeconds.ToString("0.###", CultureInfo.InvariantCulture)} s"));
        }
        catch (HttpOperationException e) when (e.Response is not null)
        {
            return (null, FromStatus(what, (int)e.Response.StatusCode, e.Response.ReasonPhrase, e.Response.Content));
        }
        catch (HttpRequestException e) when (!ct.IsCancellationRequested)
        {
            return (null, Unreachable(what, e.InnerException is SocketException s ? s.Message : e.Message));
        }
        catch (Exception e) when (!ct.IsCancellationRequested && e is JsonException or IOException)
        {
            return (null, ActuatorResult.Failed("autoscale.k8s_server_error", $"{Description}: cannot {what}: an unreadable answer from the API server: {e.Message}"));
        }
    }

    private ActuatorResult Unreachable(string what, string why) =>
        ActuatorResult.Failed("autoscale.k8s_unreachable", $"{Description}: cannot {what}: the API server {_client.BaseUri} is unreachable: {why}");

    private ActuatorResult FromStatus(string what, int status, string? reason, string? body)
    {
        string text = $"{Description}: cannot {what}: the API server answered {status.ToString(CultureInfo.InvariantCulture)} {reason}".TrimEnd();
        if (StatusMessage(body) is { Length: > 0 } message) text += ": " + message;
        return status switch
        {
            401 or 403 => ActuatorResult.Failed("autoscale.k8s_forbidden",
                $"{text} (the autoscaler's service account needs {RbacNeeded} in namespace {Namespace}; see deploy/k8s/autoscaler.yaml)"),
            404 => ActuatorResult.Failed("autoscale.k8s_not_found", $"{text} (is there a Deployment {Deployment} in namespace {Namespace}?)"),
            409 => ActuatorResult.Failed("autoscale.k8s_conflict", text),
            >= 500 => ActuatorResult.Failed("autoscale.k8s_server_error", text),
            _ => ActuatorResult.Failed("autoscale.k8s_rejected", text),
        };
    }

    // The `message` of a Kubernetes Status body, when there is one.
    private static string? StatusMessage(string? body)
    {
        if (string.IsNullOrWhiteSpace(body)) return null;
        try
        {
            using var doc = JsonDocument.Parse(body);
            return doc.RootElement.ValueKind == JsonValueKind.Object && doc.RootElement.TryGetProperty("message", out var m) && m.ValueKind == JsonValueKind.String
                ? m.GetString()
                : null;
        }
        catch (JsonException)
        {
            return null;
        }
    }

    // RFC 1123 label, as Kubernetes requires of namespace and Deployment names.
    private static bool IsDnsLabel(string s) =>
        s.Length is >= 1 and <= 63 && s[0] != '-' && s[^1] != '-' && s.All(c => char.IsAsciiLetterLower(c) || char.IsAsciiDigit(c) || c == '-');

    /// <summary>Releases the API client.</summary>
    public ValueTask DisposeAsync()
    {
        _client.Dispose();
        return ValueTask.CompletedTask;
    }
}
