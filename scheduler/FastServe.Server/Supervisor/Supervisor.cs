using System.Diagnostics;
using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using FastServe.Protocol;
using FastServe.Protocol.Net;

namespace FastServe.Server.Supervisor;

/// <summary>Settings of `fastserve serve` (the supervisor).</summary>
public sealed record SupervisorOptions
{
    /// <summary>The fastserve executable to start children from.</summary>
    public required string Executable { get; init; }
    public string Host { get; init; } = "127.0.0.1";
    /// <summary>Client port; 0 picks a free one (reserved by the supervisor, then shared by the workers).</summary>
    public int Port { get; init; }
    public int Workers { get; init; } = 1;
    /// <summary>HTTP port of the OpenAI-compatible API (docs/http.md), reserved and shared by the workers as
    /// <see cref="Port"/> is; 0 picks a free one; -1 (the default) = no HTTP.</summary>
    public int HttpPort { get; init; } = -1;
    /// <summary>Arguments of `serve-engine` (model, backend, engine knobs, metrics and agent ports).</summary>
    public required IReadOnlyList<string> EngineArgs { get; init; }
    /// <summary>Arguments of `serve-worker` common to every worker (model, limits).</summary>
    public required IReadOnlyList<string> WorkerArgs { get; init; }
    /// <summary>Environment given to children (e.g. the admin token, which must not appear in argv).</summary>
    public IReadOnlyDictionary<string, string> ChildEnvironment { get; init; } = new Dictionary<string, string>();
    public TimeSpan Grace { get; init; } = TimeSpan.FromSeconds(30);
    /// <summary>Called once the replica answers ready through its own port, with the bound port and how long each
    /// stage of the start took.</summary>
    public Action<int, StartStages>? OnReady { get; init; }
    public Action<string>? Log { get; init; }
    /// <summary>
    /// When the replica requires API keys: a random key of the supervisor's own, given to the children in
    /// <see cref="ProbeKeyEnvVar"/> (never in argv) and sent in the readiness probe's HELLO, so the probe passes the
    /// key check without borrowing an operator's key. Null when keys are off.
    /// </summary>
    public string? ProbeKey { get; init; }
    /// <summary>The client port speaks TLS: the readiness probe opens TLS too (accepting the replica's own
    /// certificate whatever it is: it only asks its own children whether they are ready).</summary>
    public bool ProbeTls { get; init; }

    /// <summary>The environment variable that carries <see cref="ProbeKey"/> to the workers.</summary>
    public const string ProbeKeyEnvVar = "FASTSERVE_PROBE_KEY";
}

/// <summary>Milliseconds from this process's exec to each stage of a replica's start, as the supervisor sees them:
/// its own code running (<paramref name="Main"/>: the runtime and the command line), the engine and workers spawned
/// (<paramref name="Spawned"/>), a worker first accepting on the port (<paramref name="Listening"/>), and the replica
/// reporting ready with every worker linked to a loaded, warmed-up engine (<paramref name="Ready"/>).
/// <see cref="Children"/> adds the stages the engine and workers report themselves (<see cref="Supervisor.ChildStages"/>
/// names them), on the same time line: milliseconds from the supervisor's exec; NaN where a child did not report it
/// (the sim backend maps no model).</summary>
public readonly record struct StartStages(double Main, double Spawned, double Listening, double Ready)
{
    public IReadOnlyList<(string Key, double Ms)> Children { get; init; } = [];
}

/// <summary>
/// `fastserve serve`: starts the engine process and the worker processes, restarts whichever dies (the engine's
/// death makes workers answer `unavailable` until it is back; a worker's death frees its requests in the engine),
/// and drains on SIGTERM/SIGINT (or when a worker relays an authenticated DRAIN): every child is told to drain,
/// and the supervisor exits when they have, or kills them when the grace period is over.
/// </summary>
public sealed class Supervisor
{
    private readonly SupervisorOptions _opt;
    private readonly string _runDir;
    private readonly string _ipcPath;
    private readonly Socket _reserve;
    private readonly Socket? _httpReserve;
    private readonly Lock _lock = new();
    // StartStages, Stopwatch timestamps (0 = not yet): main and spawned written by Run before the ready thread starts,
    // listening by the ready thread alone.
    private long _mainTicks, _spawnedTicks, _listeningTicks;
    private readonly Child _engine;
    private readonly Child[] _workers;
    private volatile bool _draining, _everReady;
    private readonly ManualResetEventSlim _changed = new(false);

    private sealed class Child
    {
        public required string Role;
        public required int Index;
        public required IReadOnlyList<string> Args;
        public Process? Process;
        public int Restarts;
        public long LastStart;
    }

    /// <summary>The children's own start stages in the ready event, in order: the key, which child reports it (the
    /// engine, or the workers: the last worker to reach it) and the stage name in its start file
    /// (<see cref="Runtime.StartTrace"/>). Engine: exec'd, its code running, weights mapped and bound (none on the sim
    /// backend), backend/KV cache/engine built, the warm-up request done, ready. Workers: exec'd, code running,
    /// tokenizer loaded (the engine loads none: it sees token ids only), listening on the client port, linked to the
    /// engine's IPC socket.</summary>
    public static readonly IReadOnlyList<(string Key, bool Engine, string Stage)> ChildStages =
    [
        ("engine_exec", true, "exec"), ("engine_main", true, "main"),
        ("model_mapped", true, "model_mapped"), ("engine_built", true, "engine_built"), ("warmed_up", true, "warmed_up"),
        ("engine_ready", true, "ready"),
        ("workers_exec", false, "exec"), ("workers_main", false, "main"), ("workers_tokenizer", false, "tokenizer"),
        ("workers_listening", false, "listening"), ("workers_linked", false, "linked"),
    ];

    public Supervisor(SupervisorOptions options)
    {
        _opt = options;
        _runDir = Path.Combine(Path.GetTempPath(), $"fastserve-{Environment.ProcessId}");
        Directory.CreateDirectory(_runDir);
        if (!OperatingSystem.IsWindows()) File.SetUnixFileMode(_runDir, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        _ipcPath = Path.Combine(_runDir, "engine.sock");
        // Reserve the port: bound with SO_REUSEPORT but never listening, so it receives no connections, yet no
        // other program can take it while workers come and go (and port 0 becomes a concrete port to share).
        _reserve = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        Native.ReusePort(_reserve);
        _reserve.Bind(new IPEndPoint(IPAddress.Parse(options.Host), options.Port));
        Port = ((IPEndPoint)_reserve.LocalEndPoint!).Port;
        string[] http = [];
        if (options.HttpPort >= 0)
        {
            _httpReserve = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            Native.ReusePort(_httpReserve);
            _httpReserve.Bind(new IPEndPoint(IPAddress.Parse(options.Host), options.HttpPort));
            HttpPort = ((IPEndPoint)_httpReserve.LocalEndPoint!).Port;
            http = ["--http-port", $"{HttpPort}"];
        }

        int me = Environment.ProcessId;
        _engine = new Child { Role = "engine", Index = 0, Args = ["serve-engine", "--ipc", _ipcPath, "--parent", $"{me}", "--grace-ms", $"{(int)options.Grace.TotalMilliseconds}", "--start-file", StartFile("engine", 0), .. options.EngineArgs] };
        _workers = new Child[options.Workers];
        for (int i = 0; i < options.Workers; i++)
            _workers[i] = new Child { Role = "worker", Index = i, Args = ["serve-worker", "--ipc", _ipcPath, "--parent", $"{me}", "--index", $"{i}", "--host", options.Host, "--port", $"{Port}", "--grace-ms", $"{(int)options.Grace.TotalMilliseconds}", "--start-file", StartFile("worker", i), .. http, .. options.WorkerArgs] };
    }

    public int Port { get; }

    /// <summary>The HTTP port the workers share; -1 without HTTP.</summary>
    public int HttpPort { get; } = -1;

    private string StartFile(string role, int index) => Path.Combine(_runDir, $"{role}-{index}.start");

    /// <summary>A child refused to start (exit code 1 or 2) before the replica was ever ready: <see cref="Run"/>
    /// stopped the rest and returned 1 instead of restarting it forever.</summary>
    public bool StartFailed { get; private set; }

    public int Run()
    {
        using var term = PosixSignalRegistration.Create(PosixSignal.SIGTERM, c => { c.Cancel = true; Drain("SIGTERM"); });
        using var intr = PosixSignalRegistration.Create(PosixSignal.SIGINT, c => { c.Cancel = true; Drain("SIGINT"); });
        try
        {
            _ = Runtime.StartTrace.ExecTicks;
            _mainTicks = Stopwatch.GetTimestamp();
            lock (_lock)
            {
                StartChild(_engine);
                foreach (var w in _workers) StartChild(w);
            }
            _spawnedTicks = Stopwatch.GetTimestamp();
            new Thread(WaitReady) { IsBackground = true, Name = "fastserve-ready" }.Start();
            while (!_draining)
            {
                _changed.Wait(200);
                _changed.Reset();
                if (_draining) break;
                lock (_lock)
                {
                    foreach (var c in All())
                        if (c.Process is { HasExited: true } p)
                        {
                            // Exit code 1 or 2 is a refusal with a stable error code on its stderr (a bad flag, a
                            // missing model, no usable GPU); before the replica was ever ready it would only repeat.
                            if (!_everReady && p.ExitCode is 1 or 2)
                            {
                                _opt.Log?.Invoke($"{c.Role} {c.Index} (pid {p.Id}) refused to start ({Describe(p.ExitCode)}); its error is above; stopping");
                                p.Dispose();
                                c.Process = null;
                                _draining = true;
                                foreach (var other in All())
                                    if (other.Process is { HasExited: false } q) Native.Kill(q.Id, Native.SIGTERM);
                                StartFailed = true;
                                break;
                            }
                            _opt.Log?.Invoke($"{c.Role} {c.Index} (pid {p.Id}) exited with {Describe(p.ExitCode)}; restarting");
                            p.Dispose();
                            c.Process = null;
                        }
                    if (StartFailed) break;
                    foreach (var c in All()) if (c.Process is null && ReadyToRestart(c)) StartChild(c);
                }
            }
            int code = AwaitDrain();
            return StartFailed ? 1 : code;
        }
        finally
        {
            _reserve.Dispose();
            _httpReserve?.Dispose();
            try { Directory.Delete(_runDir, recursive: true); } catch (IOException) { }
        }
    }

    private IEnumerable<Child> All() => [_engine, .. _workers];

    // Restarts back off while a child keeps dying within seconds of starting (a crash loop).
    private static bool ReadyToRestart(Child c)
    {
        double since = (Stopwatch.GetTimestamp() - c.LastStart) / (double)Stopwatch.Frequency;
        double wait = since > 10 ? 0 : Math.Min(5, 0.1 * Math.Pow(2, Math.Min(c.Restarts, 6)));
        return since >= wait;
    }

    private void StartChild(Child c)
    {
        var psi = new ProcessStartInfo(_opt.Executable) { UseShellExecute = false };
        foreach (var a in c.Args) psi.ArgumentList.Add(a);
        foreach (var kv in _opt.ChildEnvironment) psi.Environment[kv.Key] = kv.Value;
        if (_opt.ProbeKey is not null) psi.Environment[SupervisorOptions.ProbeKeyEnvVar] = _opt.ProbeKey;
        var p = Process.Start(psi) ?? throw new InvalidOperationException($"could not start {c.Role}");
        p.EnableRaisingEvents = true;
        p.Exited += (_, _) => _changed.Set();
        if (c.LastStart != 0) c.Restarts++;
        c.LastStart = Stopwatch.GetTimestamp();
        c.Process = p;
    }

    private void Drain(string why)
    {
        if (_draining) return;
        _draining = true;
        _opt.Log?.Invoke($"draining ({why}): finishing in-flight requests for up to {_opt.Grace.TotalSeconds:F0} s");
        lock (_lock)
            foreach (var c in All())
                if (c.Process is { HasExited: false } p) Native.Kill(p.Id, Native.SIGTERM);
        _changed.Set();
    }

    private int AwaitDrain()
    {
        var until = Stopwatch.GetTimestamp() + (long)((_opt.Grace.TotalSeconds + 5) * Stopwatch.Frequency);
        foreach (var c in All())
        {
            var p = c.Process;
            if (p is null) continue;
            int ms = (int)Math.Max(0, (until - Stopwatch.GetTimestamp()) * 1000 / Stopwatch.Frequency);
            if (!p.WaitForExit(ms))
            {
                _opt.Log?.Invoke($"{c.Role} {c.Index} (pid {p.Id}) did not drain in time; killing it");
                try { p.Kill(); } catch (InvalidOperationException) { }
            }
        }
        _opt.Log?.Invoke("drained");
        return 0;
    }

    private static string Describe(int code) => code > 128 ? $"signal {code - 128}" : $"code {code}";

    // Readiness is judged through the replica's own port: HELLO, then LOAD_QUERY until a worker reports `ready`
    // with every worker linked to the engine (so all of them listen before clients are told to come). Polled every
    // 10 ms: a loopback connect costs microseconds, and the poll interval adds to every start's time to ready.
    private void WaitReady()
    {
        var deadline = Stopwatch.GetTimestamp() + 600 * Stopwatch.Frequency;
        while (!_draining && Stopwatch.GetTimestamp() < deadline)
        {
            try
            {
                if (ProbeReady())
                {
                    _everReady = true;
                    long readyTicks = Stopwatch.GetTimestamp();
                    long exec = Runtime.StartTrace.ExecTicks;
                    _opt.OnReady?.Invoke(Port, new StartStages(Ms(exec, _mainTicks), Ms(exec, _spawnedTicks), Ms(exec, _listeningTicks), Ms(exec, readyTicks))
                    {
                        Children = ReadChildStages(exec),
                    });
                    return;
                }
            }
            catch (SocketException) { }
            Thread.Sleep(10);
        }
    }

    private static double Ms(long exec, long ticks) => Runtime.StartTrace.Ms(exec, ticks);

    // The children's start files, read once the replica is ready (each is written before its child can let the
    // replica report ready). A worker stage is the latest over the workers: when all of them had reached it.
    private List<(string Key, double Ms)> ReadChildStages(long exec)
    {
        var engine = Runtime.StartTrace.ReadFile(StartFile("engine", 0));
        var workers = Enumerable.Range(0, _workers.Length).Select(i => Runtime.StartTrace.ReadFile(StartFile("worker", i))).ToList();
        var result = new List<(string, double)>(ChildStages.Count);
        foreach (var (key, isEngine, stage) in ChildStages)
        {
            double ms = double.NaN;
            if (isEngine)
            {
                if (engine.TryGetValue(stage, out long t)) ms = Ms(exec, t);
            }
            else if (workers.All(w => w.ContainsKey(stage)))
            {
                ms = workers.Max(w => Ms(exec, w[stage]));
            }
            result.Add((key, ms));
        }
        return result;
    }

    // Asks the replica's own port, as a client would: HELLO and LOAD_QUERY, then its first LOAD_REPORT says whether it is
    // ready with every worker up. An ERROR, a closed connection or a silent one (2 s) is "not yet".
    private bool ProbeReady()
    {
        var s = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { ReceiveTimeout = 2000, SendTimeout = 2000 };
        FrameConnection? conn = null;
        try
        {
            s.Connect(new IPEndPoint(IPAddress.Parse(_opt.Host), Port));
            if (_listeningTicks == 0) _listeningTicks = Stopwatch.GetTimestamp();
            SslStream? ssl = null;
            if (_opt.ProbeTls)
            {
                ssl = new SslStream(new NetworkStream(s, ownsSocket: false), leaveInnerStreamOpen: false);
                try
                {
                    ssl.AuthenticateAsClient(new SslClientAuthenticationOptions { TargetHost = "localhost", RemoteCertificateValidationCallback = static (_, _, _, _) => true });
                }
                catch (Exception e) when (e is System.Security.Authentication.AuthenticationException or IOException)
                {
                    ssl.Dispose();
                    return false;
                }
            }
            conn = new FrameConnection(s, 4096, long.MaxValue, static _ => { }, receiveBytes: 4096, sendBytes: 256, stream: ssl);
            lock (conn.Out.Lock)
            {
                FrameWriter.Hello(conn.Out.Writer, "fastserve-supervisor"u8, apiKey: _opt.ProbeKey is null ? default : System.Text.Encoding.ASCII.GetBytes(_opt.ProbeKey));
                FrameWriter.LoadQuery(conn.Out.Writer, 0);
            }
            if (!conn.Out.FlushBlocking()) return false;
            var probe = new ReadyProbe(_opt.Workers);
            return conn.Run(probe).End == FrameRunEnd.Stopped && probe.Ready;
        }
        finally
        {
            if (conn is not null) conn.Close();
            else s.Dispose();
        }
    }

    private sealed class ReadyProbe(int workers) : IFrameConsumer
    {
        public bool Ready;

        public bool OnFrame(in FrameHeader h, ReadOnlySpan<byte> payload)
        {
            if (h.Type == FrameType.Error) return false;
            if (h.Type != FrameType.LoadReport) return true;
            Ready = LoadReport.TryParse(payload, out var r) && r.State == ReplicaState.Ready && r.Workers >= workers;
            return false;
        }

        public void OnTooLarge(in FrameHeader h) { }

        public bool OnReadDone() => true;
    }
}
