using System.CommandLine;
using FastServe.Runtime;
using FastServe.Runtime.Backends;
using FastServe.Runtime.Formats;
using FastServe.Runtime.Model;
using FastServe.Server.Engine;
using FastServe.Server.Supervisor;
using FastServe.Server.Worker;
using FastServe.Server;
using FastServe.Scheduler.Engine;
using FastServe.Scheduler.Execution;

namespace FastServe.Cli.Commands;

/// <summary>
/// <c>fastserve serve</c>: one replica — a supervisor, one engine process and K worker processes (docs/server.md).
/// <c>serve-engine</c> and <c>serve-worker</c> are the children it starts; they are not meant to be run by hand.
/// </summary>
internal static class ServeCommand
{
    public static IEnumerable<Command> Create() => [Serve(), Engine(), Worker()];

    private static readonly Option<string> HostOpt = new("--host") { Description = "Address to bind (loopback unless told otherwise)", DefaultValueFactory = _ => "127.0.0.1" };
    private static readonly Option<string> IpcOpt = new("--ipc") { Description = "Engine IPC socket path", Required = true };
    private static readonly Option<int> ParentOpt = new("--parent") { Description = "Supervisor pid" };
    private static readonly Option<int> GraceOpt = new("--grace-ms") { Description = "Drain grace period in milliseconds", DefaultValueFactory = _ => 30_000 };
    private static readonly Option<string?> StartFileOpt = new("--start-file") { Description = "Where to write this process's start stages for the supervisor" };
    private static readonly Option<string?> ModelNameOpt = new("--model-name") { Description = "Model name the replica declares" };
    private static readonly Option<string?> ModelVersionOpt = new("--model-version") { Description = "Model version the replica declares" };
    private static readonly Option<string?> ApiKeysFileOpt = new("--api-keys-file") { Description = "File of API keys clients must present in HELLO: one 'name key' per line, re-read on change (also FASTSERVE_API_KEYS=name:key,...; docs/security.md)" };
    private static readonly Option<string?> TlsCertOpt = new("--tls-cert") { Description = "PEM certificate (chain) for TLS on the client port, re-read on change (with --tls-key)" };
    private static readonly Option<string?> TlsKeyOpt = new("--tls-key") { Description = "PEM private key of --tls-cert" };
    private static readonly Option<int> HttpPortOpt = new("--http-port") { Description = "Also serve the OpenAI-compatible HTTP API (docs/http.md) on this port, in every worker (0 = any free port, printed when ready; -1 = off)", DefaultValueFactory = _ => -1 };
    private static readonly (Option<string?> Template, Option<long> MaxBody, Option<int> HeaderTimeout) HttpOpts = HttpCli.Options();

    private static Command Serve()
    {
        var e = new EngineCliOptions();
        var port = new Option<int>("--port", "-p") { Description = "Client port (0 = any free port, printed when ready)", DefaultValueFactory = _ => 7700 };
        var workers = new Option<int>("--workers") { Description = "Worker processes owning client connections (default: from the core count)" };
        var metrics = new Option<int>("--metrics-port") { Description = "Prometheus metrics at http://HOST:PORT/metrics (0 = off)" };
        var agent = new Option<int>("--agent-port") { Description = "HAProxy agent-check port (0 = off)" };
        var tokenFile = new Option<string?>("--admin-token-file") { Description = "File holding the admin token for DRAIN frames (or set FASTSERVE_ADMIN_TOKEN)" };
        var maxInFlight = new Option<int>("--max-in-flight") { Description = "Requests in flight per connection", DefaultValueFactory = _ => 1024 };
        var maxFrame = new Option<int>("--max-frame") { Description = "Largest frame payload in bytes", DefaultValueFactory = _ => 1 << 20 };
        var idle = new Option<int>("--idle-timeout-ms") { Description = "Close connections idle this long", DefaultValueFactory = _ => 60_000 };
        var frameTimeout = new Option<int>("--frame-timeout-ms") { Description = "Close a connection whose started frame does not complete in this time (slow senders)", DefaultValueFactory = _ => 10_000 };
        var name = new Option<string>("--name") { Description = "Replica name sent in HELLO_OK (at most 64 characters)", DefaultValueFactory = _ => "fastserve" };
        var modelName = new Option<string?>("--model-name") { Description = "Model name this replica declares and answers to (default: the model directory's name)" };
        var modelVersion = new Option<string?>("--model-version") { Description = "Model version this replica declares (default: a fingerprint of the model's files)" };
        var insecure = new Option<bool>("--insecure") { Description = "Serve a non-loopback --host without API keys (refused otherwise)" };
        var cmd = new Command("serve", "Serve the model over the FastServe protocol: an engine process plus worker processes on one port.");
        e.AddTo(cmd);
        foreach (Option o in new Option[] { HostOpt, port, workers, metrics, agent, tokenFile, maxInFlight, maxFrame, idle, frameTimeout, name, modelName, modelVersion, GraceOpt, ApiKeysFileOpt, insecure, TlsCertOpt, TlsKeyOpt, HttpPortOpt, HttpOpts.Template, HttpOpts.MaxBody, HttpOpts.HeaderTimeout }) cmd.Add(o);
        cmd.SetAction(r =>
        {
            bool json = e.Json(r);
            string host = r.GetValue(HostOpt)!;
            if (!System.Net.IPAddress.TryParse(host, out var ip) || ip.AddressFamily != System.Net.Sockets.AddressFamily.InterNetwork)
                throw new FastServeException("args.invalid_host", $"--host must be an IPv4 address, not '{host}'", "--host");
            int p = r.GetValue(port), mp = r.GetValue(metrics), ap = r.GetValue(agent);
            foreach (var (v, n) in new[] { (p, "--port"), (mp, "--metrics-port"), (ap, "--agent-port") })
                if (v < 0 || v > 65535) throw new FastServeException("args.invalid_port", $"{n} must be between 0 and 65535", n);
            int k = r.GetValue(workers);
            if (k == 0) k = Math.Clamp(Environment.ProcessorCount / 4, 1, 8);
            if (k < 1 || k > 64) throw new FastServeException("args.invalid_workers", "--workers must be between 1 and 64", "--workers");
            int mif = r.GetValue(maxInFlight), mf = r.GetValue(maxFrame), idleMs = r.GetValue(idle), grace = r.GetValue(GraceOpt);
            if (mif < 1 || mif > 1 << 20) throw new FastServeException("args.invalid_max_in_flight", "--max-in-flight must be between 1 and 1048576", "--max-in-flight");
            if (mf < 4096 || mf > 64 << 20) throw new FastServeException("args.invalid_max_frame", "--max-frame must be between 4096 and 67108864", "--max-frame");
            if (idleMs < 100) throw new FastServeException("args.invalid_idle_timeout", "--idle-timeout-ms must be at least 100", "--idle-timeout-ms");
            int ftMs = r.GetValue(frameTimeout);
            string replicaName = r.GetValue(name)!;
            if (replicaName.Length is 0 or > 64) throw new FastServeException("args.invalid_name", "--name must have 1 to 64 characters", "--name");
            if (ftMs < 100) throw new FastServeException("args.invalid_frame_timeout", "--frame-timeout-ms must be at least 100", "--frame-timeout-ms");
            if (grace < 0 || grace > 3_600_000) throw new FastServeException("args.invalid_grace", "--grace-ms must be between 0 and 3600000", "--grace-ms");
            var http = HttpCli.Read(r, HttpPortOpt, HttpOpts.Template, HttpOpts.MaxBody, HttpOpts.HeaderTimeout);

            string? token = Environment.GetEnvironmentVariable("FASTSERVE_ADMIN_TOKEN");
            if (r.GetValue(tokenFile) is { } tf)
            {
                if (!File.Exists(tf)) throw new FastServeException("args.admin_token_file_missing", "the admin token file does not exist", tf);
                token = File.ReadAllText(tf).Trim();
                if (token.Length == 0) throw new FastServeException("args.admin_token_empty", "the admin token file is empty", tf);
            }
            var security = SecurityCli.CheckListener(ip, r.GetValue(ApiKeysFileOpt), r.GetValue(insecure), r.GetValue(TlsCertOpt), r.GetValue(TlsKeyOpt), "--host");

            // A backend that cannot run here (no GPU, driver or kernel library) fails now in one line, not later in
            // the engine child, after workers started.
            string backendName = r.GetValue(e.Model.Backend)!;
            if (backendName != "sim") BackendFactory.Check(backendName);
            // Children get the resolved model directory, so all of them load the same one whatever their environment.
            string modelDir = r.GetValue(e.Model.Model) ?? ModelOptions.ResolveDefault();
            if (!File.Exists(Path.Combine(modelDir, "config.json"))) throw new FastServeException("model.not_found", "the model directory has no config.json", modelDir);
            // The workers each load the chat template; checking it here stops a bad one at start, in one line.
            if (http.Enabled && http.ResolveTemplate(modelDir) is { IsJinja: true } chatTemplate)
                Console.Error.WriteLine($"fastserve serve: /v1/chat/completions uses {chatTemplate.Source}");
            string exe = Environment.ProcessPath ?? throw new FastServeException("internal", "cannot find the fastserve executable");
            string declaredName = r.GetValue(modelName) ?? ModelIdentity.DefaultName(modelDir);
            if (!ModelIdentity.IsValidLabel(declaredName))
                throw new FastServeException("args.invalid_model_name", "--model-name must have 1 to 64 letters, digits, '.', '_' or '-'", "--model-name");
            string declaredVersion = r.GetValue(modelVersion) ?? ModelIdentity.Fingerprint(modelDir);
            if (!ModelIdentity.IsValidLabel(declaredVersion))
                throw new FastServeException("args.invalid_model_version", "--model-version must have 1 to 64 letters, digits, '.', '_' or '-'", "--model-version");

            var engineArgs = e.Forward(r);
            // The simulated device takes its shape from --model when one is given, else Llama-3.2-1B's; workers
            // always need a tokenizer (the default model's when none is given).
            if (r.GetValue(e.Model.Backend) != "sim" || r.GetValue(e.Model.Model) is not null) engineArgs.AddRange(["--model", modelDir]);
            engineArgs.AddRange(["--host", host]);
            if (mp > 0) engineArgs.AddRange(["--metrics-port", $"{mp}"]);
            if (ap > 0) engineArgs.AddRange(["--agent-port", $"{ap}"]);
            var workerArgs = new List<string> { "--model", modelDir, "--max-in-flight", $"{mif}", "--max-frame", $"{mf}", "--idle-timeout-ms", $"{idleMs}", "--frame-timeout-ms", $"{ftMs}", "--name", replicaName,
                "--model-name", declaredName, "--model-version", declaredVersion };
            if (http.Enabled) workerArgs.AddRange(http.WorkerArgs());
            engineArgs.AddRange(["--model-name", declaredName, "--model-version", declaredVersion]);
            var env = new Dictionary<string, string>();
            if (token is not null) env["FASTSERVE_ADMIN_TOKEN"] = token;
            if (r.GetValue(ApiKeysFileOpt) is { } keysFile) workerArgs.AddRange(["--api-keys-file", Path.GetFullPath(keysFile)]);
            if (security.Tls) workerArgs.AddRange(["--tls-cert", Path.GetFullPath(r.GetValue(TlsCertOpt)!), "--tls-key", Path.GetFullPath(r.GetValue(TlsKeyOpt)!)]);

            Supervisor? sup = null;
            sup = new Supervisor(new SupervisorOptions
            {
                Executable = exe,
                Host = host,
                Port = p,
                HttpPort = http.Port,
                Workers = k,
                EngineArgs = engineArgs,
                WorkerArgs = workerArgs,
                ChildEnvironment = env,
                ProbeKey = security.Keys ? SecurityCli.NewProbeKey() : null,
                ProbeTls = security.Tls,
                Grace = TimeSpan.FromMilliseconds(grace),
                Log = msg => Console.Error.WriteLine($"fastserve serve: {msg}"),
                OnReady = (bound, stages) =>
                {
                    if (json)
                        Output.WriteJsonLine(w =>
                        {
                            w.WriteString("event", "ready");
                            w.WriteString("host", host);
                            w.WriteNumber("port", bound);
                            if (sup!.HttpPort >= 0) w.WriteNumber("http_port", sup.HttpPort);
                            w.WriteNumber("workers", k);
                            w.WriteNumber("metrics_port", mp);
                            w.WriteNumber("agent_port", ap);
                            w.WriteNumber("pid", Environment.ProcessId);
                            w.WriteString("model", declaredName);
                            w.WriteString("model_version", declaredVersion);
                            w.WriteBoolean("api_keys", security.Keys);
                            w.WriteBoolean("tls", security.Tls);
                            // Milliseconds from the supervisor's exec to each stage (Supervisor.StartStages): its own,
                            // then the engine's and the workers' (Supervisor.ChildStages); null where unknown.
                            w.WriteStartObject("start_ms");
                            foreach (var (name, ms) in new[] { ("main", stages.Main), ("spawned", stages.Spawned), ("listening", stages.Listening), ("ready", stages.Ready) }.Concat(stages.Children))
                                if (double.IsFinite(ms)) w.WriteNumber(name, Math.Round(ms, 1)); else w.WriteNull(name);
                            w.WriteEndObject();
                        });
                    else Console.Out.WriteLine($"fastserve: ready on {host}:{bound} in {stages.Ready:F0} ms ({k} worker{(k == 1 ? "" : "s")}, model {declaredName} version {declaredVersion} from {modelDir}{(sup!.HttpPort >= 0 ? $", http :{sup.HttpPort}" : "")}{(mp > 0 ? $", metrics :{mp}" : "")}{(ap > 0 ? $", agent :{ap}" : "")})");
                    Console.Out.Flush();
                },
            });
            return sup.Run();
        });
        return cmd;
    }

    private static Command Engine()
    {
        var e = new EngineCliOptions();
        var metrics = new Option<int>("--metrics-port");
        var agent = new Option<int>("--agent-port");
        var cmd = new Command("serve-engine", "The engine process of a replica (started by serve).") { Hidden = true };
        e.AddTo(cmd);
        foreach (Option o in new Option[] { IpcOpt, ParentOpt, HostOpt, metrics, agent, GraceOpt, StartFileOpt, ModelNameOpt, ModelVersionOpt }) cmd.Add(o);
        cmd.SetAction(r =>
        {
            StartTrace.Mark("main");
            int parent = r.GetValue(ParentOpt);
            if (parent > 0 && !Native.DieWithParent(parent)) return 1;
            using var host = new EngineHost(new EngineHostOptions
            {
                IpcPath = r.GetValue(IpcOpt)!,
                Host = r.GetValue(HostOpt)!,
                MetricsPort = r.GetValue(metrics),
                AgentPort = r.GetValue(agent),
                Grace = TimeSpan.FromMilliseconds(r.GetValue(GraceOpt)),
                StartFile = r.GetValue(StartFileOpt),
                ModelName = r.GetValue(ModelNameOpt) ?? "",
                ModelVersion = r.GetValue(ModelVersionOpt) ?? "",
            });
            return host.Run((after, onStep) =>
            {
                var session = e.Open(r, after, onStep, engineTokenizer: false);
                return new StartedEngine(session.Engine!, session, session.Model is { } m ? WarmupPrompt(m.Config) : null);
            });
        });
        return cmd;
    }

    // The warm-up request's prompt: BOS (when the model has one) and a few ordinary ids. Any valid ids do: the warm-up
    // exists to fault in the weights and run the prefill, decode and sampling paths once, not to read text.
    private static int[] WarmupPrompt(ModelConfig config)
    {
        var ids = new List<int>();
        if (config.BosTokenId is int bos) ids.Add(bos);
        for (int i = 0; ids.Count < 4; i++) ids.Add((1000 + 37 * i) % config.VocabSize);
        return [.. ids];
    }

    private static Command Worker()
    {
        var model = new Option<string>("--model") { Required = true };
        var port = new Option<int>("--port") { Required = true };
        var index = new Option<int>("--index");
        var maxInFlight = new Option<int>("--max-in-flight") { DefaultValueFactory = _ => 1024 };
        var maxFrame = new Option<int>("--max-frame") { DefaultValueFactory = _ => 1 << 20 };
        var idle = new Option<int>("--idle-timeout-ms") { DefaultValueFactory = _ => 60_000 };
        var frameTimeout = new Option<int>("--frame-timeout-ms") { DefaultValueFactory = _ => 10_000 };
        var name = new Option<string>("--name") { DefaultValueFactory = _ => "fastserve" };
        var cmd = new Command("serve-worker", "A worker process of a replica (started by serve).") { Hidden = true };
        foreach (Option o in new Option[] { IpcOpt, ParentOpt, HostOpt, model, port, index, maxInFlight, maxFrame, idle, frameTimeout, name, GraceOpt, StartFileOpt, ModelNameOpt, ModelVersionOpt, ApiKeysFileOpt, TlsCertOpt, TlsKeyOpt, HttpPortOpt, HttpOpts.Template, HttpOpts.MaxBody, HttpOpts.HeaderTimeout }) cmd.Add(o);
        cmd.SetAction(r =>
        {
            StartTrace.Mark("main");
            int parent = r.GetValue(ParentOpt);
            if (parent > 0 && !Native.DieWithParent(parent)) return 1;
            var http = HttpCli.Read(r, HttpPortOpt, HttpOpts.Template, HttpOpts.MaxBody, HttpOpts.HeaderTimeout);
            using var host = new WorkerHost(new WorkerOptions
            {
                IpcPath = r.GetValue(IpcOpt)!,
                ModelDir = r.GetValue(model)!,
                Host = r.GetValue(HostOpt)!,
                Port = r.GetValue(port),
                Index = r.GetValue(index),
                ParentPid = parent,
                MaxInFlight = r.GetValue(maxInFlight),
                MaxFrame = r.GetValue(maxFrame),
                IdleTimeout = TimeSpan.FromMilliseconds(r.GetValue(idle)),
                FrameTimeout = TimeSpan.FromMilliseconds(r.GetValue(frameTimeout)),
                HelloTimeout = TimeSpan.FromMilliseconds(Math.Min(10_000, r.GetValue(frameTimeout))),
                Grace = TimeSpan.FromMilliseconds(r.GetValue(GraceOpt)),
                AdminToken = Environment.GetEnvironmentVariable("FASTSERVE_ADMIN_TOKEN"),
                ServerName = r.GetValue(name)!,
                StartFile = r.GetValue(StartFileOpt),
                ModelName = r.GetValue(ModelNameOpt) ?? "",
                ModelVersion = r.GetValue(ModelVersionOpt) ?? "",
                ApiKeysFile = r.GetValue(ApiKeysFileOpt),
                ProbeKey = Environment.GetEnvironmentVariable(SupervisorOptions.ProbeKeyEnvVar),
                TlsCert = r.GetValue(TlsCertOpt),
                TlsKey = r.GetValue(TlsKeyOpt),
            });
            FastServe.Http.HttpFrontDoor? front = null;
            if (http.Enabled)
            {
                // Every worker listens on the shared HTTP port (SO_REUSEPORT, reserved by the supervisor), so HTTP
                // connections spread over the workers as binary ones do, and the engine's CPU stays free.
                string modelName = host.Options.ModelName is { Length: > 0 } mn ? mn : "fastserve";
                string modelDir = host.Options.ModelDir;
                var httpMetrics = new FastServe.Http.HttpMetrics();
                host.HttpCounts = httpMetrics.Snapshot;
                front = http.Start(r.GetValue(HostOpt)!, reusePort: true, s => host.AcceptLocal(s), () => host.IsReady, () => [modelName], modelName, modelDir,
                    msg => Console.Error.WriteLine($"fastserve worker {host.Options.Index}: {msg}"), metrics: httpMetrics, keys: host.Keys, tls: host.Tls);
            }
            try
            {
                return host.Run();
            }
            finally
            {
                front?.DisposeAsync().AsTask().GetAwaiter().GetResult();
            }
        });
        return cmd;
    }
}
