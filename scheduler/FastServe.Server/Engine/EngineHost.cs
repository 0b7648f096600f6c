using System.Diagnostics;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using FastServe.Protocol;
using FastServe.Scheduler.Engine;
using FastServe.Server.Ipc;

namespace FastServe.Server.Engine;

/// <summary>Settings of the engine process (`fastserve serve-engine`, started by the supervisor).</summary>
public sealed record EngineHostOptions
{
    /// <summary>Unix-domain socket the workers connect to.</summary>
    public required string IpcPath { get; init; }
    public string Host { get; init; } = "127.0.0.1";
    /// <summary>Prometheus text exposition port (0 = off).</summary>
    public int MetricsPort { get; init; }
    /// <summary>HAProxy agent-check port (0 = off).</summary>
    public int AgentPort { get; init; }
    /// <summary>How long a drain waits for in-flight requests before exiting anyway.</summary>
    public TimeSpan Grace { get; init; } = TimeSpan.FromSeconds(30);
    /// <summary>Token ids the warm-up request uses (any valid ids; the tokenizer's encoding of a short text).</summary>
    public int[] WarmupPrompt { get; init; } = [1, 2, 3, 4];
    /// <summary>Where to write this process's start stages (<see cref="Runtime.StartTrace.WriteFile"/>) just before
    /// it reports ready; null = nowhere. The supervisor names it and reads it once the replica is ready.</summary>
    public string? StartFile { get; init; }
    /// <summary>The model name and version the replica declares (metric labels of <c>fastserve_model_info</c>).</summary>
    public string ModelName { get; init; } = "";
    public string ModelVersion { get; init; } = "";
}

/// <summary>What the engine factory returns: the started engine, what must be disposed with it, and the warm-up
/// prompt when the factory had a tokenizer to make one (else <see cref="EngineHostOptions.WarmupPrompt"/>).</summary>
public sealed record StartedEngine(InferenceEngine Engine, IDisposable Owner, int[]? WarmupPrompt = null);

/// <summary>
/// The engine process: owns the model, the KV cache and the <see cref="InferenceEngine"/>; serves the workers over
/// Unix-domain-socket IPC; reports load to them; exposes metrics and the agent check. It listens before loading
/// the model, so workers can say "unavailable (starting)" instead of refusing connections, and reports ready
/// only after a warm-up request has run end to end.
/// </summary>
public sealed class EngineHost : IDisposable
{
    private readonly EngineHostOptions _opt;
    private readonly List<EngineLink> _links = [];        // guarded by itself
    private readonly Socket _listener;
    private volatile ReplicaState _state = ReplicaState.Starting;
    private readonly ManualResetEventSlim _exit = new(false);
    private StartedEngine? _started;
    private AgentCheckServer? _agent;

    public EngineHost(EngineHostOptions options)
    {
        _opt = options;
        if (File.Exists(options.IpcPath)) File.Delete(options.IpcPath);
        _listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        _listener.Bind(new UnixDomainSocketEndPoint(options.IpcPath));
        _listener.Listen(128);
    }

    internal InferenceEngine? Engine => _started?.Engine;
    internal ServerMetrics? Metrics { get; private set; }
    /// <summary>The workers' own counters (API keys, HTTP answers), summed for <see cref="Metrics"/>.</summary>
    internal ReplicaCounters WorkerCounters { get; } = new();
    internal EngineHostOptions Options => _opt;
    public ReplicaState State => _state;

    /// <summary>Runs until drained (SIGTERM) or the supervisor dies. <paramref name="start"/> loads the model and
    /// starts an engine with the given hooks. Returns the process exit code.</summary>
    public int Run(Func<Action, Action<StepRecord>, StartedEngine> start)
    {
        using var term = PosixSignalRegistration.Create(PosixSignal.SIGTERM, c => { c.Cancel = true; BeginDrain(); });
        using var intr = PosixSignalRegistration.Create(PosixSignal.SIGINT, c => { c.Cancel = true; BeginDrain(); });
        if (_opt.MetricsPort > 0) Metrics = new ServerMetrics(this, _opt.Host, _opt.MetricsPort);
        if (_opt.AgentPort > 0) _agent = new AgentCheckServer(_opt.Host, _opt.AgentPort, AgentLine);
        new Thread(AcceptLoop) { IsBackground = true, Name = "fastserve-ipc-accept" }.Start();
        new Thread(LoadLoop) { IsBackground = true, Name = "fastserve-load" }.Start();

        _started = start(FlushLinks, rec => Metrics?.ObserveStep(rec));
        Runtime.StartTrace.Mark("engine_built");
        Warmup();
        Runtime.StartTrace.Mark("warmed_up");
        // The start file exists before any worker can report ready, so the supervisor always finds it.
        Runtime.StartTrace.Mark("ready");
        if (_opt.StartFile is { } sf) Runtime.StartTrace.WriteFile(sf);
        if (_state == ReplicaState.Starting) _state = ReplicaState.Ready;
        BroadcastHello();
        Console.Error.WriteLine($"fastserve engine {Environment.ProcessId}: ready ({_started.Engine.Executor.Name}, max {_started.Engine.MaxSeqs} sequences)");

        _exit.Wait();
        return 0;
    }

    // One step: a short prefill that samples its first token. It reads every weight once (faulting the mapped
    // checkpoint into this process, most of a warm-up's cost) and runs the multi-row kernels and the sampler; a
    // second, decode step would cost a whole forward pass more for code the first request runs at full speed anyway.
    private void Warmup()
    {
        var h = _started!.Engine.Submit(new EngineRequest
        {
            Prompt = _started.WarmupPrompt ?? _opt.WarmupPrompt,
            Sampling = new Runtime.Generation.SamplingParams { MaxTokens = 1, IgnoreEos = true },
        });
        var r = h.Completion.GetAwaiter().GetResult();
        if (r.Status != RequestStatus.Finished)
            throw new Runtime.FastServeException("server.warmup_failed", $"the warm-up request ended {StatusNames.Of(r.Status)}: {r.ErrorCode} {r.Message}");
    }

    /// <summary>Stops admitting (workers answer `draining`), waits for in-flight requests up to the grace period, exits.</summary>
    public void BeginDrain()
    {
        if (_state == ReplicaState.Draining) return;
        _state = ReplicaState.Draining;
        BroadcastLoad();
        new Thread(() =>
        {
            // Workers exit once their requests are done (or their grace ends); the engine follows when none is
            // connected, waiting a little longer than they do so they can end leftovers with `draining` themselves.
            var until = Stopwatch.GetTimestamp() + (long)((_opt.Grace.TotalSeconds + 2) * Stopwatch.Frequency);
            while (Stopwatch.GetTimestamp() < until)
            {
                int live; lock (_links) live = _links.Count(l => !l.IsClosed);
                var stats = Engine?.GetStats();
                int active = stats is null ? 0 : stats.RunningRequests + stats.WaitingRequests;
                if (live == 0 && active == 0) break;
                Thread.Sleep(20);
            }
            _exit.Set();
        }) { IsBackground = true, Name = "fastserve-drain" }.Start();
    }

    private void AcceptLoop()
    {
        while (true)
        {
            Socket s;
            try { s = _listener.Accept(); }
            catch (Exception e) when (e is SocketException or ObjectDisposedException) { return; }
            var link = new EngineLink(this, s);
            lock (_links) _links.Add(link);
            link.Start();
        }
    }

    internal void OnWorkerHello(EngineLink link)
    {
        link.Send(this, static (w, host) => host.WriteHello(w));
        link.Send(this, static (w, host) => host.WriteLoad(w));
    }

    internal void OnLinkClosed(EngineLink link, string why)
    {
        lock (_links) _links.Remove(link);
        if (_state != ReplicaState.Draining) Console.Error.WriteLine($"fastserve engine: worker {link.Index} (pid {link.Pid}) link closed: {why}");
    }

    internal EngineLink[] Links() { lock (_links) return [.. _links]; }

    private void FlushLinks()
    {
        // Called after every scheduler iteration: cheap when nothing was appended.
        EngineLink[] links;
        lock (_links) links = _links.Count == 0 ? [] : [.. _links];
        foreach (var l in links) l.Signal();
    }

    private void BroadcastHello()
    {
        foreach (var l in Links()) if (l.Index >= 0) l.Send(this, static (w, host) => host.WriteHello(w));
    }

    private void BroadcastLoad()
    {
        foreach (var l in Links()) if (l.Index >= 0) l.Send(this, static (w, host) => host.WriteLoad(w));
    }

    // Load reports every 20 ms: fresh enough for a router (stale after 200 ms), cheap (one small message per worker).
    private void LoadLoop()
    {
        while (!_exit.IsSet)
        {
            Thread.Sleep(20);
            BroadcastLoad();
        }
    }

    private void WriteHello(System.Buffers.IBufferWriter<byte> w)
    {
        var e = Engine;
        var m = new EngineHelloMsg
        {
            Pid = Environment.ProcessId,
            Vocab = e?.Executor.VocabSize ?? 0,
            Context = e?.Executor.MaxContextLength ?? 0,
            MaxRunning = e?.MaxSeqs ?? 0,
            State = (byte)_state,
        };
        Ipc.Ipc.Write(w, IpcType.EngineHello, 0, m);
    }

    /// <summary>The current load (what workers and the agent check report).</summary>
    internal LoadMsg CurrentLoad()
    {
        var m = new LoadMsg { State = (byte)_state, TakenTicks = Stopwatch.GetTimestamp() };
        lock (_links) m.Workers = (ushort)_links.Count(l => l.Index >= 0);
        if (Engine is { } e)
        {
            var s = e.GetStats();
            m.Running = (uint)s.RunningRequests;
            m.Queued = (uint)s.WaitingRequests;
            m.KvFreeFraction = s.KvBlocksTotal == 0 ? 0 : (s.KvBlocksFree + s.KvBlocksCachedIdle) / (float)s.KvBlocksTotal;
            m.EstimatedWaitMs = (uint)Math.Min(e.EstimatedQueueWait(Priority.Interactive).TotalMilliseconds, uint.MaxValue);
            m.MaxRunning = (uint)e.MaxSeqs;
            uint inflight = 0;
            foreach (var l in Links()) inflight += (uint)l.Active;
            m.InFlight = inflight;
        }
        return m;
    }

    private void WriteLoad(System.Buffers.IBufferWriter<byte> w)
    {
        var m = CurrentLoad();
        Ipc.Ipc.Write(w, IpcType.Load, 0, m);
    }

    /// <summary>The agent-check answer (docs/server.md): administrative and operational state, a weight from free
    /// capacity, and maxconn.</summary>
    internal string AgentLine()
    {
        var m = CurrentLoad();
        switch ((ReplicaState)m.State)
        {
            case ReplicaState.Draining: return "drain\n";
            case ReplicaState.Starting: return "down #starting\n";
        }
        if (m.Workers == 0) return "down #no-workers\n";
        double busy = m.MaxRunning == 0 ? 1 : Math.Min(1, (m.Running + m.Queued) / (double)m.MaxRunning);
        int weight = (int)Math.Clamp(Math.Round(100 * (1 - busy)), 1, 100);
        int maxconn = (int)Math.Max(16, m.MaxRunning * 2);
        return $"up ready {weight}% maxconn:{maxconn}\n";
    }

    public void Dispose()
    {
        _exit.Set();
        _agent?.Dispose();
        Metrics?.Dispose();
        foreach (var l in Links()) l.Close("engine shutting down");
        _listener.Dispose();
        try { File.Delete(_opt.IpcPath); } catch (IOException) { }
        _started?.Owner.Dispose();
    }
}
