using System.CommandLine;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using FastServe.Router;
using FastServe.Runtime;

namespace FastServe.Cli.Commands;

/// <summary>
/// <c>fastserve route</c>: a fleet router in front of replicas (docs/router.md). Clients connect to it as to a
/// replica; it spreads their requests over the endpoints and retries what can be retried. Drains on SIGTERM/SIGINT.
/// </summary>
internal static class RouteCommand
{
    public static Command Create()
    {
        var listen = new Option<int>("--listen", "-l") { Description = "Client port (0 = any free port, printed when ready)", DefaultValueFactory = _ => 7800 };
        var endpoints = new Option<string>("--endpoints", "-e") { Description = "Replicas: host:port,host:port; file:PATH (JSON, re-read when it changes); dns:NAME:PORT (A/AAAA) or dns:NAME (SRV), re-resolved every 5 s; k8s:NAMESPACE/SERVICE[:PORT] (the Service's EndpointSlices, watched; in-cluster or kubeconfig)", Required = true };
        var host = new Option<string>("--host") { Description = "Address to bind (loopback unless told otherwise)", DefaultValueFactory = _ => "127.0.0.1" };
        var policy = new Option<string>("--policy") { Description = "Balancing: p2c, round-robin, random or least-loaded", DefaultValueFactory = _ => "p2c" };
        var slowStart = new Option<int>("--slow-start-ms") { Description = "Ramp a newly ready endpoint's weight from 10% to 100% over this time (0 = off)", DefaultValueFactory = _ => 5000 };
        var attempts = new Option<int>("--max-attempts") { Description = "Most replicas one request is sent to (retries of requests refused or lost before any output)", DefaultValueFactory = _ => 3 };
        var conns = new Option<int>("--connections-per-endpoint") { Description = "Persistent connections to each replica", DefaultValueFactory = _ => 2 };
        var ejected = new Option<int>("--max-ejected-percent") { Description = "Never eject more than this share of the endpoints at once", DefaultValueFactory = _ => 50 };
        var grace = new Option<int>("--grace-ms") { Description = "On SIGTERM, how long in-flight requests may take before connections close", DefaultValueFactory = _ => 30_000 };
        var maxInFlight = new Option<int>("--max-in-flight") { Description = "Requests in flight per client connection", DefaultValueFactory = _ => 1024 };
        var maxFrame = new Option<int>("--max-frame") { Description = "Largest frame payload accepted from clients, in bytes", DefaultValueFactory = _ => 1 << 20 };
        var name = new Option<string>("--name") { Description = "Name sent in HELLO_OK and to replicas in HELLO (at most 64 characters)", DefaultValueFactory = _ => "fastserve-router" };
        var httpListen = new Option<string?>("--http-listen") { Description = "Also serve the OpenAI-compatible HTTP API (docs/http.md) on [HOST:]PORT (0 = any free port, printed when ready)" };
        var (chatTemplate, httpMaxBody, httpHeaderTimeout) = HttpCli.Options();
        var json = new Option<bool>("--json") { Description = "Print the ready and stopped events as JSON lines" };
        var maxHeld = new Option<int>("--max-held-bytes")
        {
            Description = "Output of a 'whole' request held back until its final, so it can be replayed if its replica is lost (past this it streams; 0 = hold nothing)",
            DefaultValueFactory = _ => 256 << 10,
        };
        var budget = new Option<int>("--retry-budget-percent")
        {
            Description = "Retries (of refusals and lost connections) allowed as a percentage of the requests of the last 10 s, or the floor if more (0 = no retries)",
            DefaultValueFactory = _ => 10,
        };
        var minRetries = new Option<int>("--min-retries-per-second") { Description = "Retry budget floor: this many retries per second are allowed even when the percentage allows fewer", DefaultValueFactory = _ => 10 };
        var jitter = new Option<int>("--retry-jitter-ms") { Description = "A retry of an overloaded refusal waits a random delay up to this (and the refusal's retry-after); 0 = at once", DefaultValueFactory = _ => 25 };
        var metricsPort = new Option<int>("--metrics-port") { Description = "Prometheus metrics at http://HOST:PORT/metrics (0 = off)", DefaultValueFactory = _ => 0 };
        var defaultModel = new Option<string?>("--default-model") { Description = "Model for requests that name none (default: the fleet's only model, else any replica)" };
        var tokenFile = new Option<string?>("--admin-token-file") { Description = "File holding the admin token ADMIN frames must carry (or set FASTSERVE_ADMIN_TOKEN); none: ADMIN refused" };
        var config = new Option<string?>("--config") { Description = "File of routing commands (split, shadow, tier, mode; docs/router.md) applied at start and whenever it changes" };
        var shadowLog = new Option<string?>("--shadow-log") { Description = "JSONL file for shadow disagreements and summaries (read it with fastserve shadow-report)" };
        var shadowMax = new Option<int>("--shadow-max-in-flight") { Description = "Shadow mirrors in flight at most; more are dropped and counted", DefaultValueFactory = _ => 256 };
        var costPerHour = new Option<double>("--cost-per-hour") { Description = "Device price per hour for the per-pool cost metrics (0 = no cost figures)" };
        var canaryMin = new Option<int>("--canary-min-samples") { Description = "Requests each of canary and stable needs in the window before a canary is judged", DefaultValueFactory = _ => 200 };
        var canaryWindow = new Option<int>("--canary-window-ms") { Description = "Sliding window over which canaries are judged", DefaultValueFactory = _ => 60_000 };
        var canaryErr = new Option<double>("--canary-max-error-delta") { Description = "Roll back a canary whose error rate exceeds the stable version's by more than this (absolute, 0..1)", DefaultValueFactory = _ => 0.02 };
        var canaryP99 = new Option<double>("--canary-max-p99-ratio") { Description = "Roll back a canary whose P99 latency exceeds this multiple of the stable version's", DefaultValueFactory = _ => 1.5 };
        var apiKeysFile = new Option<string?>("--api-keys-file") { Description = "File of API keys clients must present in HELLO: one 'name key' per line, re-read on change (also FASTSERVE_API_KEYS=name:key,...; docs/security.md)" };
        var insecure = new Option<bool>("--insecure") { Description = "Listen on a non-loopback --host without API keys (refused otherwise)" };
        var tlsCert = new Option<string?>("--tls-cert") { Description = "PEM certificate (chain) for TLS on the client port, re-read on change (with --tls-key)" };
        var tlsKey = new Option<string?>("--tls-key") { Description = "PEM private key of --tls-cert" };
        var upKeyFile = new Option<string?>("--upstream-api-key-file") { Description = "File holding the API key the router sends to replicas that require keys (or set FASTSERVE_UPSTREAM_API_KEY)" };
        var upTls = new Option<bool>("--upstream-tls") { Description = "Connect to the replicas with TLS (their certificates must chain to the system's roots, or to --upstream-tls-ca)" };
        var upTlsCa = new Option<string?>("--upstream-tls-ca") { Description = "PEM file of the CA certificates to trust for the replicas (implies --upstream-tls)" };
        var upTlsHost = new Option<string?>("--upstream-tls-host") { Description = "Name the replicas' certificates must carry (default: each endpoint's host)" };
        var cmd = new Command("route", "Route requests over a fleet of replicas: one address for clients, power-of-two-choices balancing, retries.");
        foreach (Option o in new Option[] { listen, endpoints, host, policy, slowStart, attempts, budget, minRetries, jitter, conns, ejected, grace, maxInFlight, maxFrame, maxHeld, name, json, metricsPort,
                     defaultModel, tokenFile, config, shadowLog, shadowMax, costPerHour, canaryMin, canaryWindow, canaryErr, canaryP99,
                     apiKeysFile, insecure, tlsCert, tlsKey, upKeyFile, upTls, upTlsCa, upTlsHost, httpListen, chatTemplate, httpMaxBody, httpHeaderTimeout }) cmd.Add(o);
        cmd.SetAction(r =>
        {
            bool asJson = r.GetValue(json);
            string h = r.GetValue(host)!;
            if (!System.Net.IPAddress.TryParse(h, out var ip) || ip.AddressFamily != AddressFamily.InterNetwork)
                throw new FastServeException("args.invalid_host", $"--host must be an IPv4 address, not '{h}'", "--host");
            int port = r.GetValue(listen);
            if (port < 0 || port > 65535) throw new FastServeException("args.invalid_port", "--listen must be between 0 and 65535", "--listen");
            string p = r.GetValue(policy)!;
            if (!BalancePolicyNames.TryParse(p, out var pol))
                throw new FastServeException("args.invalid_policy", $"--policy accepts p2c, round-robin, random or least-loaded, not '{p}'", "--policy");
            int ss = r.GetValue(slowStart), ma = r.GetValue(attempts), cpe = r.GetValue(conns), mep = r.GetValue(ejected), g = r.GetValue(grace);
            int mif = r.GetValue(maxInFlight), mf = r.GetValue(maxFrame);
            if (ss < 0 || ss > 3_600_000) throw new FastServeException("args.invalid_slow_start", "--slow-start-ms must be between 0 and 3600000", "--slow-start-ms");
            if (ma < 1 || ma > 16) throw new FastServeException("args.invalid_max_attempts", "--max-attempts must be between 1 and 16", "--max-attempts");
            if (cpe < 1 || cpe > 64) throw new FastServeException("args.invalid_connections", "--connections-per-endpoint must be between 1 and 64", "--connections-per-endpoint");
            if (mep < 0 || mep > 100) throw new FastServeException("args.invalid_max_ejected_percent", "--max-ejected-percent must be between 0 and 100", "--max-ejected-percent");
            if (g < 0 || g > 3_600_000) throw new FastServeException("args.invalid_grace", "--grace-ms must be between 0 and 3600000", "--grace-ms");
            if (mif < 1 || mif > 1 << 20) throw new FastServeException("args.invalid_max_in_flight", "--max-in-flight must be between 1 and 1048576", "--max-in-flight");
            if (mf < 4096 || mf > 64 << 20) throw new FastServeException("args.invalid_max_frame", "--max-frame must be between 4096 and 67108864", "--max-frame");
            int rbp = r.GetValue(budget), mrs = r.GetValue(minRetries), rj = r.GetValue(jitter);
            if (rbp < 0 || rbp > 1000) throw new FastServeException("args.invalid_retry_budget", "--retry-budget-percent must be between 0 and 1000", "--retry-budget-percent");
            if (mrs < 0 || mrs > 100_000) throw new FastServeException("args.invalid_min_retries", "--min-retries-per-second must be between 0 and 100000", "--min-retries-per-second");
            if (rj < 0 || rj > 1000) throw new FastServeException("args.invalid_retry_jitter", "--retry-jitter-ms must be between 0 and 1000", "--retry-jitter-ms");
            int mhb = r.GetValue(maxHeld);
            if (mhb < 0 || mhb > 64 << 20) throw new FastServeException("args.invalid_max_held", "--max-held-bytes must be between 0 and 67108864", "--max-held-bytes");
            int mport = r.GetValue(metricsPort);
            if (mport < 0 || mport > 65535) throw new FastServeException("args.invalid_port", "--metrics-port must be between 0 and 65535", "--metrics-port");
            string routerName = r.GetValue(name)!;
            if (routerName.Length is 0 or > 64) throw new FastServeException("args.invalid_name", "--name must have 1 to 64 characters", "--name");

            string httpHost = h;
            HttpCli? http = null;
            if (r.GetValue(httpListen) is { } hl)
            {
                int colon = hl.LastIndexOf(':');
                if (colon >= 0)
                {
                    httpHost = hl[..colon];
                    if (!System.Net.IPAddress.TryParse(httpHost, out var hip) || hip.AddressFamily != AddressFamily.InterNetwork)
                        throw new FastServeException("args.invalid_host", $"--http-listen's host must be an IPv4 address, not '{httpHost}'", "--http-listen");
                }
                if (!int.TryParse(hl.AsSpan(colon + 1), out int hp) || hp < 0 || hp > 65535)
                    throw new FastServeException("args.invalid_port", "--http-listen must be [HOST:]PORT with PORT between 0 and 65535", "--http-listen");
                http = HttpCli.Check(hp, "--http-listen", r.GetValue(chatTemplate), r.GetValue(httpMaxBody), r.GetValue(httpHeaderTimeout));
            }
            string? dm = ClientCommand.CheckLabel(r.GetValue(defaultModel), "--default-model");
            string? adminToken = Environment.GetEnvironmentVariable("FASTSERVE_ADMIN_TOKEN");
            if (r.GetValue(tokenFile) is { } tf)
            {
                if (!File.Exists(tf)) throw new FastServeException("args.admin_token_file_missing", "the admin token file does not exist", tf);
                adminToken = File.ReadAllText(tf).Trim();
                if (adminToken.Length == 0) throw new FastServeException("args.admin_token_empty", "the admin token file is empty", tf);
            }
            string? configPath = r.GetValue(config);
            if (configPath is not null && !File.Exists(configPath)) throw new FastServeException("args.config_missing", "the config file does not exist", configPath);
            int sm = r.GetValue(shadowMax);
            if (sm < 1 || sm > 100_000) throw new FastServeException("args.invalid_shadow_max", "--shadow-max-in-flight must be between 1 and 100000", "--shadow-max-in-flight");
            double cph = r.GetValue(costPerHour);
            if (!(cph >= 0) || double.IsInfinity(cph)) throw new FastServeException("args.invalid_cost", "--cost-per-hour must be a number >= 0", "--cost-per-hour");
            var canary = new FastServe.Router.Canary.CanaryOptions
            {
                MinSamples = r.GetValue(canaryMin),
                WindowMs = r.GetValue(canaryWindow),
                MaxErrorRateDelta = r.GetValue(canaryErr),
                MaxP99Ratio = r.GetValue(canaryP99),
            };
            try { canary.Validate(); }
            catch (ArgumentOutOfRangeException e) { throw new FastServeException("args.invalid_canary", e.Message, "--canary-*"); }

            Action<string> log = msg => Console.Error.WriteLine($"fastserve route: {msg}");
            // Security (docs/security.md): checked before anything starts; the stores live as long as the router.
            var security = SecurityCli.CheckListener(ip, r.GetValue(apiKeysFile), r.GetValue(insecure), r.GetValue(tlsCert), r.GetValue(tlsKey), "--host");
            // The HTTP listener may bind another address than --host: the loopback rule holds for it too.
            if (http is not null && !httpHost.Equals(h, StringComparison.Ordinal) &&
                FastServe.Protocol.Security.ListenPolicy.Check(System.Net.IPAddress.Parse(httpHost), security.Keys, r.GetValue(insecure), "--http-listen") is { } httpRefusal)
                throw new FastServeException(httpRefusal.Code, httpRefusal.Message, "--http-listen");
            string? upstreamKey = SecurityCli.ReadClientKey(r.GetValue(upKeyFile), "FASTSERVE_UPSTREAM_API_KEY", "--upstream-api-key-file");
            FastServe.Protocol.Security.TlsClientSettings? upstreamTls = null;
            if (r.GetValue(upTls) || r.GetValue(upTlsCa) is not null)
            {
                upstreamTls = new FastServe.Protocol.Security.TlsClientSettings { CaFile = r.GetValue(upTlsCa), TargetHost = r.GetValue(upTlsHost) };
                if (upstreamTls.Check() is { } te) throw new FastServeException(te.Code, te.Message, "--upstream-tls-ca");
            }
            var apiKeys = SecurityCli.OpenKeys(r.GetValue(apiKeysFile), log);
            FastServe.Protocol.Security.CertificateSource? tls = null;
            if (security.Tls)
            {
                tls = FastServe.Protocol.Security.CertificateSource.Create(r.GetValue(tlsCert)!, r.GetValue(tlsKey)!, log, out var certError);
                if (certError is { } ce) throw new FastServeException(ce.Code, ce.Message, "--tls-cert");
            }
            // Traffic events (rollbacks, burst modes, admin and config changes): JSON lines with --json, else the log.
            Action<RouterEvent>? onEvent = !asJson ? null : ev => Output.WriteJsonLine(w =>
            {
                w.WriteString("event", ev.Kind);
                w.WriteString("detail", ev.Detail);
                foreach (var (k, v) in ev.Fields) w.WriteString(k, v);
            });
            IEndpointSource source;
            try
            {
                source = EndpointSources.Parse(r.GetValue(endpoints)!, log);
            }
            catch (EndpointSourceException e)
            {
                throw new FastServeException(e.Code, e.Message, "--endpoints");
            }

            RouterHost router;
            try
            {
                router = new RouterHost(new RouterOptions
                {
                    Host = h,
                    Port = port,
                    Policy = pol,
                    SlowStartMs = ss,
                    MaxAttempts = ma,
                    RetryBudgetRatio = rbp / 100.0,
                    MinRetriesPerSecond = mrs,
                    RetryJitterMs = rj,
                    ConnectionsPerEndpoint = cpe,
                    MaxEjectedPercent = mep,
                    GraceMs = g,
                    MaxInFlight = mif,
                    MaxFrame = mf,
                    MaxHeldBytes = mhb,
                    Name = routerName,
                    Log = log,
                    DefaultModel = dm,
                    AdminToken = adminToken,
                    ConfigPath = configPath,
                    ShadowLogPath = r.GetValue(shadowLog),
                    ShadowMaxInFlight = sm,
                    CostPerHour = cph,
                    Canary = canary,
                    OnEvent = onEvent,
                    ApiKeys = apiKeys,
                    Tls = tls,
                    UpstreamApiKey = upstreamKey,
                    UpstreamTls = upstreamTls,
                }, source);
            }
            catch (IOException e) when (r.GetValue(shadowLog) is { } sl)
            {
                throw new FastServeException("route.shadow_log_failed", $"cannot open the shadow log for appending: {e.Message}", sl);
            }
            try
            {
                router.StartAsync().GetAwaiter().GetResult();
            }
            catch (SocketException e)
            {
                throw new FastServeException("route.listen_failed", $"cannot listen on {h}:{port}: {e.Message}", "--listen");
            }
            catch (EndpointSourceException e)
            {
                throw new FastServeException(e.Code, e.Message, "--endpoints");
            }
            using var term = PosixSignalRegistration.Create(PosixSignal.SIGTERM, c => { c.Cancel = true; router.BeginDrain(); });
            using var intr = PosixSignalRegistration.Create(PosixSignal.SIGINT, c => { c.Cancel = true; router.BeginDrain(); });

            RouterMetrics? metrics = null;
            if (mport > 0)
            {
                try { metrics = new RouterMetrics(router, h, mport); }
                catch (System.Net.HttpListenerException e)
                {
                    router.DisposeAsync().AsTask().GetAwaiter().GetResult();
                    throw new FastServeException("route.metrics_listen_failed", $"cannot serve metrics on {h}:{mport}: {e.Message}", "--metrics-port");
                }
            }
            using var metricsScope = metrics;
            FastServe.Http.HttpFrontDoor? front = null;
            FastServe.Http.HttpMetrics? httpMetrics = null;
            if (http is not null)
            {
                httpMetrics = new FastServe.Http.HttpMetrics();
                if (metrics is not null) metrics.HttpRequests = httpMetrics.Snapshot;
                try
                {
                    front = http.Start(httpHost, reusePort: false, s => router.AcceptLocal(s), router.CanServe, router.ServedModels,
                        dm ?? "fastserve", modelDir: null, log, httpMetrics, apiKeys, tls);
                }
                catch
                {
                    router.DisposeAsync().AsTask().GetAwaiter().GetResult();
                    throw;
                }
            }
            int n = router.Fleet.Endpoints.Length;
            if (asJson)
                Output.WriteJsonLine(w =>
                {
                    w.WriteString("event", "ready");
                    w.WriteString("host", h);
                    w.WriteNumber("port", router.Port);
                    w.WriteNumber("endpoints", n);
                    w.WriteNumber("metrics_port", mport);
                    if (front is not null) w.WriteNumber("http_port", front.Port);
                    w.WriteString("source", source.Description);
                    w.WriteString("policy", BalancePolicyNames.Of(pol));
                    w.WriteBoolean("api_keys", apiKeys is not null);
                    w.WriteBoolean("tls", tls is not null);
                    w.WriteNumber("pid", Environment.ProcessId);
                });
            else Console.Out.WriteLine($"fastserve: routing on {h}:{router.Port} to {n} endpoint{(n == 1 ? "" : "s")} ({source.Description}, policy {BalancePolicyNames.Of(pol)}){(front is not null ? $"; HTTP on {httpHost}:{front.Port}" : "")}");
            Console.Out.Flush();

            router.Completion.GetAwaiter().GetResult();
            front?.DisposeAsync().AsTask().GetAwaiter().GetResult();
            var st = router.Stats;
            if (asJson)
                Output.WriteJsonLine(w =>
                {
                    w.WriteString("event", "stopped");
                    w.WriteNumber("requests", st.Requests);
                    w.WriteNumber("rejected", st.Rejected);
                    w.WriteNumber("completed", st.Completed);
                    w.WriteNumber("retries", st.Retries);
                    w.WriteNumber("replays", st.Replays);
                    w.WriteNumber("upstream_lost", st.UpstreamLost);
                    w.WriteNumber("resumes", st.Resumes);
                    w.WriteNumber("resume_failures", st.ResumeFailures);
                    w.WriteNumber("no_endpoint", st.NoEndpoint);
                    w.WriteNumber("retry_budget_exhausted", st.BudgetExhausted);
                    w.WriteNumber("upstream_overloaded", st.UpstreamOverloaded);
                    w.WriteStartArray("endpoints");
                    foreach (var e in router.Fleet.Endpoints)
                    {
                        w.WriteStartObject();
                        w.WriteString("address", e.Address);
                        w.WriteNumber("forwarded", e.Forwarded);
                        w.WriteEndObject();
                    }
                    w.WriteEndArray();
                });
            else log($"stopped after {st.Requests} request(s): {st.Retries} retried ({st.Replays} replayed after held output, {st.BudgetExhausted} not for want of retry budget), {st.UpstreamLost} lost with a replica, {st.NoEndpoint} with no replica ready");
            Console.Out.Flush();
            return 0;
        });
        return cmd;
    }
}
