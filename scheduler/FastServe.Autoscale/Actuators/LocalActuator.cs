using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text.Json;

namespace FastServe.Autoscale.Actuators;

/// <summary>Settings of the <c>local</c> actuator (<see cref="LocalActuator"/>).</summary>
public sealed record LocalActuatorOptions
{
    /// <summary>The <c>fastserve</c> executable to run as <c>serve</c> (default: this process's own).</summary>
    public required string Executable { get; init; }

    /// <summary>Arguments after <c>serve --host H --port P --json</c>: the model, backend and engine flags.</summary>
    public IReadOnlyList<string> ServeArgs { get; init; } = [];

    /// <summary>Address the replicas bind and the endpoints file names.</summary>
    public string Host { get; init; } = "127.0.0.1";

    /// <summary>Ports the replicas take, lowest free first: <see cref="FirstPort"/> … <see cref="LastPort"/>.</summary>
    public int FirstPort { get; init; } = 7800;
    public int LastPort { get; init; } = 7899;

    /// <summary>The <c>file:</c> endpoint source routers watch; rewritten whenever the set of ready replicas changes.</summary>
    public required string EndpointsFile { get; init; }

    /// <summary>Between taking a replica out of the endpoints file and SIGTERM: routers re-read the file every
    /// 500 ms, so after this they send it nothing new (what they still send is answered <c>draining</c> and retried).</summary>
    public TimeSpan DrainDelay { get; init; } = TimeSpan.FromMilliseconds(1500);

    /// <summary>After SIGTERM, how long a replica has to finish its requests and exit before SIGKILL (its own
    /// <c>--grace-ms</c> plus a margin).</summary>
    public TimeSpan StopTimeout { get; init; } = TimeSpan.FromSeconds(40);

    /// <summary>A replica not ready this long after exec is killed and counts as a failed start.</summary>
    public TimeSpan StartTimeout { get; init; } = TimeSpan.FromSeconds(120);

    public int MinReplicas { get; init; } = 1;
    public int MaxReplicas { get; init; } = 100;

    /// <summary>Checks ranges; <c>autoscale.bad_config</c> otherwise.</summary>
    public void Validate()
    {
        static void Bad(string why) => throw new AutoscaleException("autoscale.bad_config", why);
        if (FirstPort < 1 || LastPort > 65535 || FirstPort > LastPort) Bad($"the port range {FirstPort}-{LastPort} must lie within 1-65535, first port first");
        if (MaxReplicas > LastPort - FirstPort + 1) Bad($"--max-replicas {MaxReplicas} needs as many ports, but {FirstPort}-{LastPort} has {LastPort - FirstPort + 1}");
        if (MinReplicas < 0 || MinReplicas > MaxReplicas) Bad($"min replicas ({MinReplicas}) must be 0 … max replicas ({MaxReplicas})");
        if (string.IsNullOrWhiteSpace(EndpointsFile)) Bad("the local actuator needs an endpoints file (--endpoints-file PATH) for the routers' file: source");
        string? dir = Path.GetDirectoryName(Path.GetFullPath(EndpointsFile));
        if (dir is null || !Directory.Exists(dir)) Bad($"the endpoints file's folder '{dir}' does not exist");
        if (!File.Exists(Executable)) Bad($"the fastserve executable '{Executable}' does not exist");
        if (DrainDelay < TimeSpan.Zero || StopTimeout <= TimeSpan.Zero || StartTimeout <= TimeSpan.Zero) Bad("the drain delay must not be negative, the stop and start timeouts must be positive");
        foreach (var a in ServeArgs)
            if (a is "--port" or "-p" or "--host" or "--json" || a.StartsWith("--port=", StringComparison.Ordinal) || a.StartsWith("--host=", StringComparison.Ordinal))
                Bad($"'{a}' is the local actuator's to set for each replica; give the port range with --ports and the address with --replica-host");
    }
}

/// <summary>
/// The <c>local</c> actuator (docs/autoscale.md): runs <c>fastserve serve</c> processes on this machine, one per port
/// of a range, and publishes the ready ones to an endpoints file that routers watch (<c>fastserve route --endpoints
/// file:PATH</c>). This is also how a single multi-GPU host scales (one replica per device, through the serve
/// arguments' environment).
/// <list type="bullet">
/// <item>Up: the lowest free port; the replica is <i>starting</i> until its <c>ready</c> event (<c>serve --json</c>),
/// then it is written to the file. A replica that exits or is not ready within the start timeout is a failed start;
/// consecutive failures back off (1 s doubling to 60 s) so a bad model path does not fork in a loop, and a port that
/// failed is left alone for 30 s (something else may hold it).</item>
/// <item>Down: starting replicas first (newest first), then ready ones, newest first (the oldest are the warmest):
/// out of the file, then after <see cref="LocalActuatorOptions.DrainDelay"/> SIGTERM, which drains the replica (new
/// requests answered <c>draining</c>, which routers retry elsewhere; running ones finish), then SIGKILL if it is not
/// gone within the stop timeout.</item>
/// <item>A ready replica that exits unasked leaves the file at once; the next decision replaces it.</item>
/// <item>Disposing stops every replica the same way, in parallel.</item>
/// </list>
/// Replicas are this process's children: an autoscaler killed with SIGKILL leaves them running.
/// </summary>
public sealed partial class LocalActuator : IReplicaActuator
{
    private enum State { Starting, Ready, Draining }

    private sealed class Replica(int port, Process proc, long startedAt)
    {
        public readonly int Port = port;
        public readonly Process Proc = proc;                 // never disposed here: a stop may still ask it after exit
        public readonly int Pid = proc.Id;
        public readonly long StartedAt = startedAt;
        public readonly Queue<string> StderrTail = new();    // under itself
        public State State;
        public bool StopRequested;                           // under the actuator's lock
        public Task Watch = Task.CompletedTask;              // ends after the exit is settled
    }

    private static readonly TimeSpan PortCooldown = TimeSpan.FromSeconds(30);
    private const int TailLines = 12;

    private readonly LocalActuatorOptions _o;
    private readonly Action<ReplicaEvent> _emit;
    private readonly Lock _lock = new();
    private readonly List<Replica> _replicas = [];              // under _lock, in start order
    private readonly Dictionary<int, long> _portFailedAt = [];  // under _lock
    private readonly List<Task> _stopping = [];                 // under _lock
    private int _failedStarts;                                  // under _lock: consecutive
    private long _noStartBefore;                                // under _lock: backoff
    private string _published = "";                             // under _lock: the file's last contents, joined
    private bool _disposed;

    /// <exception cref="AutoscaleException"><c>autoscale.bad_config</c>; <c>autoscale.local_file</c> when the endpoints
    /// file cannot be written.</exception>
    public LocalActuator(LocalActuatorOptions options, Action<ReplicaEvent>? emit = null)
    {
        options.Validate();
        _o = options;
        _emit = emit ?? (_ => { });
        try { EndpointsFile.Write(_o.EndpointsFile, []); }   // a file left by an earlier run names dead replicas
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new AutoscaleException("autoscale.local_file", $"cannot write the endpoints file '{_o.EndpointsFile}': {e.Message}", e);
        }
    }

    public string Name => "local";

    public string Description => $"local: {_o.Executable} serve on {_o.Host}:{_o.FirstPort}-{_o.LastPort}, endpoints in {_o.EndpointsFile}";

    public ValueTask<ActuatorResult> ObserveAsync(CancellationToken ct)
    {
        lock (_lock) return ValueTask.FromResult(ActuatorResult.Of(SizeLocked()));
    }

    public ValueTask<ActuatorResult> ScaleAsync(int desired, CancellationToken ct)
    {
        desired = Math.Clamp(desired, _o.MinReplicas, _o.MaxReplicas);
        lock (_lock)
        {
            if (_disposed) return ValueTask.FromResult(ActuatorResult.Failed("autoscale.stopped", "the actuator is stopping"));
            var size = SizeLocked();
            int delta = desired - size.Current;
            string? failure = null;
            for (int i = 0; i < delta; i++)
            {
                long now = Stopwatch.GetTimestamp();
                if (now < _noStartBefore)
                {
                    failure = $"starting is backing off after {_failedStarts} failed start{(_failedStarts == 1 ? "" : "s")} (next try in {Stopwatch.GetElapsedTime(now, _noStartBefore).TotalSeconds:0.#} s)";
                    return ValueTask.FromResult(ActuatorResult.Failed("autoscale.local_backoff", failure, SizeLocked()));
                }
                int port = FreePortLocked(now);
                if (port == 0) return ValueTask.FromResult(ActuatorResult.Failed("autoscale.local_no_port", $"no free port in {_o.FirstPort}-{_o.LastPort}", SizeLocked()));
                if (StartLocked(port) is { } err) return ValueTask.FromResult(ActuatorResult.Failed("autoscale.local_start_failed", err, SizeLocked()));
            }
            if (delta < 0)
            {
                // Starting ones first (they serve nothing yet), then ready ones; newest first in both.
                var victims = _replicas.Where(r => !r.StopRequested && r.State == State.Starting).Reverse()
                    .Concat(_replicas.Where(r => !r.StopRequested && r.State == State.Ready).Reverse())
                    .Take(-delta).ToArray();
                StopLocked(victims);
            }
            return ValueTask.FromResult(ActuatorResult.Of(SizeLocked()));
        }
    }

    /// <summary>The replicas' addresses, ready ones only (what the endpoints file lists).</summary>
    public IReadOnlyList<string> ReadyAddresses()
    {
        lock (_lock) return _replicas.Where(r => r.State == State.Ready && !r.StopRequested).Select(Address).ToArray();
    }

    private FleetSize SizeLocked()
    {
        int ready = 0, starting = 0, draining = 0;
        foreach (var r in _replicas)
        {
            if (r.StopRequested || r.State == State.Draining) draining++;
            else if (r.State == State.Ready) ready++;
            else starting++;
        }
        return new FleetSize(ready, starting, draining);
    }

    private string Address(Replica r) => _o.Host.Contains(':') ? $"[{_o.Host}]:{r.Port}" : $"{_o.Host}:{r.Port}";

    private int FreePortLocked(long now)
    {
        for (int p = _o.FirstPort; p <= _o.LastPort; p++)
        {
            if (_replicas.Any(r => r.Port == p)) continue;
            if (_portFailedAt.TryGetValue(p, out long t) && Stopwatch.GetElapsedTime(t, now) < PortCooldown) continue;
            return p;
        }
        return 0;
    }

    private string? StartLocked(int port)
    {
        var psi = new ProcessStartInfo(_o.Executable)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = false,
            UseShellExecute = false,
        };
        foreach (var a in new[] { "serve", "--host", _o.Host, "--port", port.ToString(System.Globalization.CultureInfo.InvariantCulture), "--json" }) psi.ArgumentList.Add(a);
        foreach (var a in _o.ServeArgs) psi.ArgumentList.Add(a);
        Process proc;
        try { proc = Process.Start(psi) ?? throw new InvalidOperationException("no process"); }
        catch (Exception e) when (e is System.ComponentModel.Win32Exception or InvalidOperationException)
        {
            FailedStartLocked(port);
            return $"cannot run {_o.Executable}: {e.Message}";
        }
        var r = new Replica(port, proc, Stopwatch.GetTimestamp());
        _replicas.Add(r);
        _emit(new ReplicaEvent("replica.starting", Address(r), proc.Id, string.Join(' ', psi.ArgumentList)));
        proc.ErrorDataReceived += (_, e) =>
        {
            if (e.Data is null) return;
            lock (r.StderrTail)
            {
                r.StderrTail.Enqueue(e.Data);
                while (r.StderrTail.Count > TailLines) r.StderrTail.Dequeue();
            }
        };
        proc.BeginErrorReadLine();
        r.Watch = Task.Run(() => WatchAsync(r));
        return null;
    }

    /// <summary>Reads the replica's events until its stdout closes, then waits for it to exit and settles its state.</summary>
    private async Task WatchAsync(Replica r)
    {
        using var startTimeout = new CancellationTokenSource(_o.StartTimeout);
        bool timedOut = false;
        try
        {
            while (await r.Proc.StandardOutput.ReadLineAsync(startTimeout.Token).ConfigureAwait(false) is { } line)
            {
                if (!IsReadyEvent(line, out double? readyMs)) continue;
                startTimeout.Dispose();   // stops the timeout: ready is the last line it watches for
                OnReady(r, readyMs);
                // Keep reading, so that a chatty replica never blocks on a full pipe.
                while (await r.Proc.StandardOutput.ReadLineAsync().ConfigureAwait(false) is not null) { }
                break;
            }
        }
        catch (OperationCanceledException) { timedOut = true; }
        catch (ObjectDisposedException) { }
        if (timedOut)
        {
            lock (_lock)
            {
                if (r.State == State.Starting && !r.StopRequested)
                {
                    _emit(new ReplicaEvent("replica.start_failed", Address(r), r.Pid, $"not ready within {_o.StartTimeout.TotalSeconds:0.#} s; killed. stderr: {Tail(r)}"));
                    FailedStartLocked(r.Port);
                    r.StopRequested = true;
                }
            }
            TryKill(r.Proc);
        }
        await r.Proc.WaitForExitAsync().ConfigureAwait(false);
        OnExited(r);
    }

    private void OnReady(Replica r, double? readyMs)
    {
        lock (_lock)
        {
            if (r.StopRequested) return;
            r.State = State.Ready;
            _failedStarts = 0;
            _noStartBefore = 0;
            double ms = Stopwatch.GetElapsedTime(r.StartedAt).TotalMilliseconds;
            PublishLocked();   // first: whoever acts on the event finds the replica in the file
            _emit(new ReplicaEvent("replica.ready", Address(r), r.Pid, readyMs is { } own
                ? $"ready {ms:0} ms after exec (its own count {own:0} ms)" : $"ready {ms:0} ms after exec"));
        }
    }

    private void OnExited(Replica r)
    {
        int code = r.Proc.ExitCode;
        lock (_lock)
        {
            _replicas.Remove(r);
            if (r.StopRequested || r.State == State.Draining)
                _emit(new ReplicaEvent("replica.stopped", Address(r), r.Pid, $"exit code {code} after {Stopwatch.GetElapsedTime(r.StartedAt).TotalSeconds:0.#} s"));
            else if (r.State == State.Starting)
            {
                FailedStartLocked(r.Port);
                _emit(new ReplicaEvent("replica.start_failed", Address(r), r.Pid, $"exited with code {code} before it was ready; stderr: {Tail(r)}"));
            }
            else
            {
                PublishLocked();   // first: whoever acts on the event finds it gone from the file
                _emit(new ReplicaEvent("replica.exited", Address(r), r.Pid, $"exited unasked with code {code}; stderr: {Tail(r)}"));
            }
        }
    }

    private void FailedStartLocked(int port)
    {
        long now = Stopwatch.GetTimestamp();
        _portFailedAt[port] = now;
        _failedStarts++;
        double backoff = Math.Min(60, Math.Pow(2, Math.Min(_failedStarts - 1, 6)));
        _noStartBefore = now + (long)(backoff * Stopwatch.Frequency);
    }

    // Takes the replicas out of the file first, then reports and stops them: a ready one drains (SIGTERM after the
    // drain delay), a starting one is stopped at once.
    private void StopLocked(Replica[] victims)
    {
        foreach (var r in victims)
        {
            r.StopRequested = true;
            if (r.State == State.Ready) r.State = State.Draining;
        }
        PublishLocked();
        _stopping.RemoveAll(t => t.IsCompleted);
        foreach (var r in victims)
        {
            bool drain = r.State == State.Draining;
            _emit(new ReplicaEvent("replica.draining", Address(r), r.Pid, drain
                ? $"out of the endpoints file; SIGTERM in {_o.DrainDelay.TotalMilliseconds:0} ms" : "stopped while starting"));
            _stopping.Add(Task.Run(() => StopAsync(r, drain ? _o.DrainDelay : TimeSpan.Zero)));
        }
    }

    private async Task StopAsync(Replica r, TimeSpan delay)
    {
        if (delay > TimeSpan.Zero) await Task.Delay(delay).ConfigureAwait(false);
        if (r.Proc.HasExited) return;
        Signal(r.Pid, SIGTERM);
        using var cts = new CancellationTokenSource(_o.StopTimeout);
        try { await r.Proc.WaitForExitAsync(cts.Token).ConfigureAwait(false); }
        catch (OperationCanceledException)
        {
            _emit(new ReplicaEvent("replica.killed", Address(r), r.Pid, $"still running {_o.StopTimeout.TotalSeconds:0.#} s after SIGTERM; SIGKILL"));
            TryKill(r.Proc);
        }
    }

    private void PublishLocked()
    {
        var ready = _replicas.Where(r => r.State == State.Ready && !r.StopRequested).Select(Address).ToArray();
        string joined = string.Join(',', ready);
        if (joined == _published) return;
        try
        {
            EndpointsFile.Write(_o.EndpointsFile, ready);
            _published = joined;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            _emit(new ReplicaEvent("endpoints.write_failed", _o.EndpointsFile, null, e.Message));
        }
    }

    private static bool IsReadyEvent(string line, out double? readyMs)
    {
        readyMs = null;
        if (line.Length == 0 || line[0] != '{' || !line.Contains("\"ready\"", StringComparison.Ordinal)) return false;
        try
        {
            using var doc = JsonDocument.Parse(line);
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object || !root.TryGetProperty("event", out var ev) || ev.ValueKind != JsonValueKind.String || ev.GetString() != "ready") return false;
            if (root.TryGetProperty("start_ms", out var st) && st.ValueKind == JsonValueKind.Object && st.TryGetProperty("ready", out var rm) && rm.ValueKind == JsonValueKind.Number)
                readyMs = rm.GetDouble();
            return true;
        }
        catch (JsonException) { return false; }
    }

    private static string Tail(Replica r)
    {
        lock (r.StderrTail) return r.StderrTail.Count == 0 ? "(empty)" : string.Join(" | ", r.StderrTail);
    }

    private static void TryKill(Process p)
    {
        try { if (!p.HasExited) p.Kill(entireProcessTree: true); }
        catch (Exception e) when (e is InvalidOperationException or System.ComponentModel.Win32Exception) { }   // already gone
    }

    private const int SIGTERM = 15;

    private static void Signal(int pid, int sig)
    {
        if (OperatingSystem.IsWindows()) return;
        _ = Kill(pid, sig);   // fails only if the process is already gone, which the wait then sees
    }

    [LibraryImport("libc", EntryPoint = "kill")]
    private static partial int Kill(int pid, int sig);

    /// <summary>Drains and stops every replica (in parallel) and empties the endpoints file.</summary>
    public async ValueTask DisposeAsync()
    {
        Task[] waits;
        lock (_lock)
        {
            if (_disposed) return;
            _disposed = true;
            StopLocked([.. _replicas.Where(r => !r.StopRequested)]);
            // The watchers too: each ends after its replica's exit is settled and its event emitted.
            waits = [.. _stopping, .. _replicas.Select(r => r.Watch)];
        }
        await Task.WhenAll(waits).ConfigureAwait(false);
    }
}
