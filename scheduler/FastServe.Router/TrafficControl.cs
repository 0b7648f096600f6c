using System.Diagnostics;
using System.Text;
using System.Text.Json;
using FastServe.Protocol;
using FastServe.Router.Burst;
using FastServe.Router.Canary;

namespace FastServe.Router;

/// <summary>A change the router made to its own traffic rules, for logs, <c>--json</c> events and metrics.</summary>
/// <param name="Kind"><c>canary_rollback</c>, <c>mode_change</c>, <c>config_applied</c>, <c>config_rejected</c>,
/// <c>admin</c>.</param>
/// <param name="Detail">What changed and why, one line.</param>
/// <param name="Fields">Machine-readable fields (model, version, from, to, reason…).</param>
public sealed record RouterEvent(string Kind, string Detail, IReadOnlyDictionary<string, string> Fields);

/// <summary>
/// The traffic rules of a router that change at run time: the <see cref="RoutingTable"/> (splits, shadows, tiers),
/// one <see cref="CanaryMonitor"/> per split model with automatic rollback, and the <see cref="BurstController"/>
/// with its mode policies. Changed by ADMIN commands, by the config file, and by the router's own judgement
/// (rollbacks, automatic modes); every change is a <see cref="RouterEvent"/>. Thread-safe: the table is swapped whole
/// under a lock; readers take the current one without it.
/// </summary>
internal sealed class TrafficControl
{
    private readonly Lock _lock = new();
    private readonly Dictionary<string, CanaryMonitor> _monitors = new(StringComparer.Ordinal);   // under _lock
    private readonly CanaryOptions _canaryOptions;
    private readonly Action<RouterEvent>? _onEvent;
    private readonly Action<string>? _log;
    private volatile RoutingTable _table = RoutingTable.Empty;
    private long _rollbacks, _modeChanges, _configErrors;

    public TrafficControl(CanaryOptions canary, BurstOptions burst, BurstPolicies policies, Action<RouterEvent>? onEvent, Action<string>? log)
    {
        _canaryOptions = canary;
        Burst = new BurstController(burst);
        Policies = policies;
        _onEvent = onEvent;
        _log = log;
    }

    /// <summary>The rules now.</summary>
    public RoutingTable Table => _table;

    /// <summary>The burst mode controller.</summary>
    public BurstController Burst { get; }

    /// <summary>What each burst mode does.</summary>
    public BurstPolicies Policies { get; }

    /// <summary>The policy of the current burst mode.</summary>
    public ModePolicy Policy => Policies.For(Burst.Mode);

    /// <summary>Canaries rolled back so far.</summary>
    public long Rollbacks => Interlocked.Read(ref _rollbacks);

    /// <summary>Burst mode changes so far.</summary>
    public long ModeChanges => Interlocked.Read(ref _modeChanges);

    /// <summary>Config file versions refused so far.</summary>
    public long ConfigErrors => Interlocked.Read(ref _configErrors);

    /// <summary>Records a finished request of a split model's version for the canary judgement (its answering
    /// attempt's status and the router's end-to-end latency).</summary>
    public void RecordOutcome(string model, string version, bool error, double seconds, long now)
    {
        if (!_table.Splits.ContainsKey(model)) return;
        CanaryMonitor? m;
        lock (_lock)
        {
            if (!_monitors.TryGetValue(model, out m)) _monitors[model] = m = new CanaryMonitor(_canaryOptions);
        }
        m.Record(version, error, seconds, now);
    }

    /// <summary>The canary window of a model's version (null when the model has no monitor yet).</summary>
    public WindowStats? CanaryStats(string model, string version, long now)
    {
        lock (_lock) return _monitors.TryGetValue(model, out var m) ? m.Stats(version, now) : null;
    }

    /// <summary>Judges every canary (the router's timer, about once a second): one that is worse than its stable
    /// version beyond the margins gets weight 0, with an event saying why.</summary>
    public void EvaluateCanaries(long now)
    {
        List<(string Model, RollbackDecision D)>? rollbacks = null;
        lock (_lock)
        {
            var table = _table;
            foreach (var (model, split) in table.Splits)
            {
                if (!_monitors.TryGetValue(model, out var m)) continue;
                foreach (var d in m.Evaluate(split, now))
                {
                    table = table with { Splits = new Dictionary<string, TrafficSplit>(table.Splits) { [model] = table.Splits[model].WithWeight(d.Version, 0) } };
                    (rollbacks ??= []).Add((model, d));
                }
            }
            if (rollbacks is null) return;
            _table = table;
        }
        foreach (var (model, d) in rollbacks)
        {
            Interlocked.Increment(ref _rollbacks);
            Emit("canary_rollback", $"canary {model}@{d.Version} rolled back to 0 %: {d.Reason}",
                ("model", model), ("version", d.Version), ("reason", d.Reason),
                ("canary_error_rate", F(d.CanaryErrorRate)), ("stable_error_rate", F(d.StableErrorRate)),
                ("canary_p99_ms", F(d.CanaryP99Ms)), ("stable_p99_ms", F(d.StableP99Ms)));
        }
    }

    /// <summary>Feeds the burst controller the fleet's load (the router's timer).</summary>
    public void ObserveLoad(double waitMs, double utilization, long now)
    {
        if (Burst.Observe(waitMs, utilization, now) is { } c) ModeChanged(c);
    }

    private void ModeChanged(BurstChange c)
    {
        Interlocked.Increment(ref _modeChanges);
        Emit("mode_change", $"burst mode {BurstModeNames.Of(c.From)} -> {BurstModeNames.Of(c.To)}: {c.Reason}",
            ("from", BurstModeNames.Of(c.From)), ("to", BurstModeNames.Of(c.To)), ("reason", c.Reason), ("pinned", c.Pinned ? "true" : "false"));
    }

    /// <summary>
    /// Runs one ADMIN command (docs/router.md, "Admin commands"): the table commands of <see cref="RoutingTable.TryApply"/>,
    /// <c>mode normal|surge|emergency|auto</c>, and <c>status</c>. Returns the JSON answer, or null with
    /// <paramref name="error"/> set.
    /// </summary>
    public string? Execute(string command, Func<long, string> statusJson, out string error)
    {
        error = "";
        var words = RoutingTable.Words(command);
        long now = Stopwatch.GetTimestamp();
        if (words.Length == 1 && words[0] == "status") return statusJson(now);
        if (words.Length == 2 && words[0] == "mode")
        {
            if (!TryPin(words[1], now, out error)) return null;
            Emit("admin", $"admin: {command}", ("command", command));
            return statusJson(now);
        }
        lock (_lock)
        {
            if (!_table.TryApply(words, out var next, out error)) return null;
            _table = next;
        }
        Emit("admin", $"admin: {command}", ("command", command));
        return statusJson(now);
    }

    private bool TryPin(string name, long now, out string error)
    {
        error = "";
        BurstChange? c;
        if (name == "auto") c = Burst.Pin(null, now);
        else if (BurstModeNames.TryParse(name, out var mode)) c = Burst.Pin(mode, now);
        else { error = $"mode takes normal, surge, emergency or auto, not '{name}'"; return false; }
        if (c is { } change) ModeChanged(change);
        return true;
    }

    /// <summary>Replaces the table with a config file's (and applies its <c>mode</c> line, if any); a file with an
    /// error changes nothing and is reported.</summary>
    public bool ApplyConfig(string path, IEnumerable<string> lines)
    {
        if (!RoutingTable.TryParseFile(lines, out var table, out var mode, out var error))
        {
            Interlocked.Increment(ref _configErrors);
            Emit("config_rejected", $"config {path} not applied: {error}", ("path", path), ("error", error));
            return false;
        }
        long now = Stopwatch.GetTimestamp();
        if (mode is not null && !TryPin(mode, now, out error))
        {
            Interlocked.Increment(ref _configErrors);
            Emit("config_rejected", $"config {path} not applied: {error}", ("path", path), ("error", error));
            return false;
        }
        lock (_lock) _table = table;
        Emit("config_applied", $"config {path} applied: {string.Join("; ", table.ToCommands().DefaultIfEmpty("no rules"))}", ("path", path));
        return true;
    }

    /// <summary>Writes the table, the canary windows and the burst mode as JSON (inside an object being written).</summary>
    public void WriteState(Utf8JsonWriter w, long now)
    {
        var table = _table;
        w.WriteString("mode", BurstModeNames.Of(Burst.Mode));
        w.WriteBoolean("mode_pinned", Burst.IsPinned);
        w.WriteStartObject("splits");
        foreach (var (model, split) in table.Splits)
        {
            w.WriteStartObject(model);
            w.WriteString("spec", split.ToString());
            w.WriteString("stable", split.Stable);
            w.WriteStartObject("versions");
            foreach (var e in split.Entries)
            {
                w.WriteStartObject(e.Version);
                w.WriteNumber("weight", e.Weight);
                w.WriteNumber("share", split.Share(e.Version));
                if (CanaryStats(model, e.Version, now) is { } s)
                {
                    w.WriteNumber("window_requests", s.Samples);
                    w.WriteNumber("window_error_rate", s.ErrorRate);
                    if (double.IsFinite(s.P99Ms)) w.WriteNumber("window_p99_ms", s.P99Ms);
                }
                w.WriteEndObject();
            }
            w.WriteEndObject();
            w.WriteEndObject();
        }
        w.WriteEndObject();
        w.WriteStartObject("shadows");
        foreach (var (model, s) in table.Shadows)
        {
            w.WriteStartObject(model);
            w.WriteString("version", s.Version);
            w.WriteNumber("percent", s.Percent);
            w.WriteEndObject();
        }
        w.WriteEndObject();
        w.WriteStartObject("tiers");
        foreach (var (name, t) in table.Tiers)
        {
            w.WriteStartObject(name);
            w.WriteString("cheap", t.CheapVersion is null ? t.CheapModel : $"{t.CheapModel}@{t.CheapVersion}");
            w.WriteString("strong", t.StrongVersion is null ? t.StrongModel : $"{t.StrongModel}@{t.StrongVersion}");
            w.WriteNumber("threshold", t.Threshold);
            w.WriteEndObject();
        }
        w.WriteEndObject();
        w.WriteNumber("canary_rollbacks", Rollbacks);
        w.WriteNumber("mode_changes", ModeChanges);
    }

    private void Emit(string kind, string detail, params (string Key, string Value)[] fields)
    {
        _log?.Invoke(detail);
        if (_onEvent is null) return;
        var d = new Dictionary<string, string>(fields.Length, StringComparer.Ordinal);
        foreach (var (k, v) in fields) d[k] = v;
        _onEvent(new RouterEvent(kind, detail, d));
    }

    private static string F(double x) => double.IsFinite(x) ? x.ToString("G6", System.Globalization.CultureInfo.InvariantCulture) : "nan";
}

/// <summary>Watches the router's config file (<c>--config</c>): applies it at start and again whenever its contents
/// change (checked every second); a file that fails to parse leaves the rules as they were.</summary>
internal sealed class ConfigWatcher : IDisposable
{
    private readonly string _path;
    private readonly TrafficControl _traffic;
    private readonly Timer _timer;
    private string? _last;

    public ConfigWatcher(string path, TrafficControl traffic)
    {
        _path = path;
        _traffic = traffic;
        Check();
        _timer = new Timer(_ => Check(), null, 1000, 1000);
    }

    /// <summary>Applies the file if its contents changed since the last look (also the first look).</summary>
    public void Check()
    {
        string text;
        try
        {
            var info = new FileInfo(_path);
            if (!info.Exists || info.Length > 1 << 20) return;
            text = File.ReadAllText(_path, Encoding.UTF8);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return; }
        if (text == _last) return;
        _last = text;
        _traffic.ApplyConfig(_path, text.Split('\n'));
    }

    public void Dispose() => _timer.Dispose();
}
