using System.CommandLine;
using System.Globalization;
using System.Runtime.InteropServices;
using FastServe.Autoscale;
using FastServe.Autoscale.Actuators;
using FastServe.Autoscale.Control;
using FastServe.Runtime;

namespace FastServe.Cli.Commands;

/// <summary>
/// <c>fastserve autoscale</c> (docs/autoscale.md): reads the fleet's load from routers' metrics, decides the replica
/// count with <see cref="AutoscalePolicy"/> every tick, and has an actuator carry it out: <c>local</c> (serve
/// processes on this machine, published to a routers' endpoints file), <c>k8s:NAMESPACE/DEPLOYMENT</c> (the
/// Deployment's scale subresource) or <c>dry-run</c>. Every tick is an event (<c>--json</c>: one JSON line each).
/// Stops on SIGTERM/SIGINT; <c>local</c> then drains and stops its replicas.
/// </summary>
internal static class AutoscaleCommand
{
    public static Command Create()
    {
        var actuator = new Option<string>("--actuator") { Description = "What carries decisions out: local (serve processes here), k8s:NAMESPACE/DEPLOYMENT (its scale subresource), or dry-run", Required = true };
        var signal = new Option<string[]>("--router-metrics") { Description = "A router's metrics URL, http://HOST:PORT/metrics (fastserve route --metrics-port); repeat for several routers", Required = true, AllowMultipleArgumentsPerToken = false };
        var defaults = new AutoscaleOptions();
        var min = new Option<int>("--min-replicas") { Description = "Fewest replicas (at least 1: without a replica the routers see no demand)", DefaultValueFactory = _ => 1 };
        var max = new Option<int>("--max-replicas") { Description = "Most replicas", DefaultValueFactory = _ => 10 };
        var target = new Option<double>("--target-concurrency") { Description = "Requests in flight plus queued one replica should carry", DefaultValueFactory = _ => defaults.TargetConcurrency };
        var stable = new Option<double>("--stable-window-s") { Description = "Demand is averaged over this window for normal decisions", DefaultValueFactory = _ => defaults.StableWindow.TotalSeconds };
        var panicWin = new Option<double>("--panic-window-s") { Description = "The short window that detects surges (at most the stable window)", DefaultValueFactory = _ => defaults.PanicWindow.TotalSeconds };
        var panicAt = new Option<double>("--panic-threshold") { Description = "Panic when the short window needs this many times the ready replicas", DefaultValueFactory = _ => defaults.PanicThreshold };
        var downDelay = new Option<double>("--scale-down-delay-s") { Description = "Scale down only to the highest count recommended over this window", DefaultValueFactory = _ => defaults.ScaleDownStabilization.TotalSeconds };
        var downRate = new Option<double>("--max-scale-down-per-minute") { Description = "Fraction of the fleet (at least one replica) removed per minute at most, in (0, 1]", DefaultValueFactory = _ => defaults.MaxScaleDownPerMinute };
        var upFactor = new Option<double>("--max-scale-up-factor") { Description = "One decision grows the fleet by at most this factor", DefaultValueFactory = _ => defaults.MaxScaleUpFactor };
        var tolerance = new Option<double>("--tolerance") { Description = "Changes smaller than this fraction of the fleet are not made", DefaultValueFactory = _ => defaults.Tolerance };
        var tick = new Option<int>("--tick-ms") { Description = "How often to read and decide", DefaultValueFactory = _ => 2000 };
        var signalTimeout = new Option<int>("--signal-timeout-ms") { Description = "How long a router's metrics may take to answer", DefaultValueFactory = _ => 1000 };
        var ports = new Option<string>("--ports") { Description = "local: the port range replicas take, FIRST-LAST", DefaultValueFactory = _ => "7900-7999" };
        var replicaHost = new Option<string>("--replica-host") { Description = "local: the address replicas bind and the endpoints file names", DefaultValueFactory = _ => "127.0.0.1" };
        var file = new Option<string?>("--endpoints-file") { Description = "local: the JSON endpoints file to keep up to date (routers: --endpoints file:PATH)" };
        var exe = new Option<string?>("--fastserve") { Description = "local: the fastserve executable to run as serve (default: this one)" };
        var drainDelay = new Option<int>("--drain-delay-ms") { Description = "local: between taking a replica out of the endpoints file and SIGTERM", DefaultValueFactory = _ => 1500 };
        var stopTimeout = new Option<double>("--stop-timeout-s") { Description = "local: after SIGTERM, how long a replica may drain before SIGKILL", DefaultValueFactory = _ => 40 };
        var startTimeout = new Option<double>("--start-timeout-s") { Description = "local: a replica not ready this long after exec is killed", DefaultValueFactory = _ => 120 };
        var metricsPort = new Option<int>("--metrics-port") { Description = "Prometheus metrics at http://127.0.0.1:PORT/metrics (0 = off)", DefaultValueFactory = _ => 0 };
        var json = new Option<bool>("--json") { Description = "One JSON line per event: started, tick, replica, stopped" };
        var serveArgs = new Argument<string[]>("serve-args") { Description = "local: arguments for each replica's fastserve serve, after --", Arity = ArgumentArity.ZeroOrMore };
        var cmd = new Command("autoscale", "Scale a fleet of replicas with its load: fast up, slow down, from the routers' metrics.");
        foreach (Option o in new Option[] { actuator, signal, min, max, target, stable, panicWin, panicAt, downDelay, downRate, upFactor, tolerance, tick, signalTimeout,
                     ports, replicaHost, file, exe, drainDelay, stopTimeout, startTimeout, metricsPort, json }) cmd.Add(o);
        cmd.Add(serveArgs);
        cmd.SetAction(r =>
        {
            bool asJson = r.GetValue(json);
            var policyOptions = new AutoscaleOptions
            {
                MinReplicas = r.GetValue(min),
                MaxReplicas = r.GetValue(max),
                TargetConcurrency = r.GetValue(target),
                StableWindow = Seconds(r.GetValue(stable), "--stable-window-s"),
                PanicWindow = Seconds(r.GetValue(panicWin), "--panic-window-s"),
                PanicThreshold = r.GetValue(panicAt),
                ScaleDownStabilization = Seconds(r.GetValue(downDelay), "--scale-down-delay-s", zeroOk: true),
                MaxScaleDownPerMinute = r.GetValue(downRate),
                MaxScaleUpFactor = r.GetValue(upFactor),
                Tolerance = r.GetValue(tolerance),
            };
            try { policyOptions.Validate(); }
            catch (ArgumentException e) { throw new FastServeException("autoscale.bad_config", e.Message.Split(" (Parameter")[0], "--" + Kebab(e.ParamName)); }
            if (policyOptions.MinReplicas < 1)
                throw new FastServeException("autoscale.bad_config", "--min-replicas must be at least 1: with no replica the routers report no demand, so nothing would ever start one", "--min-replicas");
            int tickMs = r.GetValue(tick), st = r.GetValue(signalTimeout), mport = r.GetValue(metricsPort);
            if (tickMs < 100 || tickMs > 600_000) throw new FastServeException("autoscale.bad_config", "--tick-ms must be between 100 and 600000", "--tick-ms");
            if (st < 10 || st > 60_000) throw new FastServeException("autoscale.bad_config", "--signal-timeout-ms must be between 10 and 60000", "--signal-timeout-ms");
            if (mport < 0 || mport > 65535) throw new FastServeException("args.invalid_port", "--metrics-port must be between 0 and 65535", "--metrics-port");

            var outLock = new Lock();
            AutoscaleMetrics? metrics = null;
            void OnReplica(ReplicaEvent e)
            {
                metrics?.Record(e);
                lock (outLock) WriteReplica(e, asJson);
            }
            string spec = r.GetValue(actuator)!;
            IFleetSignal sig;
            try { sig = new RouterMetricsSignal(r.GetValue(signal) ?? [], TimeSpan.FromMilliseconds(st)); }
            catch (AutoscaleException e) { throw new FastServeException(e.Code, e.Message, "--router-metrics"); }
            using var signalScope = sig;
            IReplicaActuator act;
            try
            {
                act = spec switch
                {
                    "dry-run" => new DryRunActuator(),
                    "local" => new LocalActuator(LocalOptions(r, policyOptions, ports, replicaHost, file, exe, drainDelay, stopTimeout, startTimeout, serveArgs), OnReplica),
                    _ when spec.StartsWith("k8s:", StringComparison.Ordinal) => KubernetesActuator.Create(spec["k8s:".Length..], policyOptions.MinReplicas, policyOptions.MaxReplicas,
                        msg => { lock (outLock) Console.Error.WriteLine($"fastserve autoscale: {msg}"); }),
                    _ => throw new AutoscaleException("autoscale.bad_actuator", $"--actuator must be local, k8s:NAMESPACE/DEPLOYMENT or dry-run, not '{spec}'"),
                };
            }
            catch (AutoscaleException e) { throw new FastServeException(e.Code, e.Message, "--actuator"); }
            if (spec != "local" && r.GetValue(serveArgs) is { Length: > 0 })
            {
                act.DisposeAsync().AsTask().GetAwaiter().GetResult();
                throw new FastServeException("autoscale.bad_config", "serve arguments after -- are for the local actuator only", "serve-args");
            }
            // A cluster that cannot be reached or read at start is a configuration error, said once; later the same
            // failures are a tick's events, and the next tick tries again.
            if (act is KubernetesActuator)
            {
                var first = act.ObserveAsync(CancellationToken.None).AsTask().GetAwaiter().GetResult();
                if (!first.Ok)
                {
                    act.DisposeAsync().AsTask().GetAwaiter().GetResult();
                    throw new FastServeException(first.ErrorCode!, first.Error!, "--actuator");
                }
            }
            if (mport > 0)
            {
                try { metrics = new AutoscaleMetrics("127.0.0.1", mport); }
                catch (System.Net.HttpListenerException e)
                {
                    act.DisposeAsync().AsTask().GetAwaiter().GetResult();
                    throw new FastServeException("autoscale.metrics_listen_failed", $"cannot serve metrics on 127.0.0.1:{mport}: {e.Message}", "--metrics-port");
                }
            }
            using var metricsScope = metrics;

            using var stop = new CancellationTokenSource();
            using var term = PosixSignalRegistration.Create(PosixSignal.SIGTERM, c => { c.Cancel = true; stop.Cancel(); });
            using var intr = PosixSignalRegistration.Create(PosixSignal.SIGINT, c => { c.Cancel = true; stop.Cancel(); });
            var controller = new AutoscaleController(new AutoscalePolicy(policyOptions), sig, act, t =>
            {
                metrics?.Record(t);
                lock (outLock) WriteTick(t, asJson);
            });
            lock (outLock)
            {
                if (asJson)
                    Output.WriteJsonLine(w =>
                    {
                        w.WriteString("event", "started");
                        w.WriteString("actuator", act.Name);
                        w.WriteString("target", act.Description);
                        w.WriteString("signal", sig.Description);
                        w.WriteNumber("min_replicas", policyOptions.MinReplicas);
                        w.WriteNumber("max_replicas", policyOptions.MaxReplicas);
                        w.WriteNumber("target_concurrency", policyOptions.TargetConcurrency);
                        w.WriteNumber("tick_ms", tickMs);
                        w.WriteNumber("metrics_port", mport);
                        w.WriteNumber("pid", Environment.ProcessId);
                    });
                else Console.Out.WriteLine($"fastserve: autoscaling {act.Description}, from {sig.Description}, {policyOptions.MinReplicas}-{policyOptions.MaxReplicas} replicas at {policyOptions.TargetConcurrency:G4} in flight each");
                Console.Out.Flush();
            }
            try { controller.RunAsync(TimeSpan.FromMilliseconds(tickMs), stop.Token).GetAwaiter().GetResult(); }
            catch (OperationCanceledException) when (stop.IsCancellationRequested) { }
            act.DisposeAsync().AsTask().GetAwaiter().GetResult();
            lock (outLock)
            {
                if (asJson) Output.WriteJsonLine(w => w.WriteString("event", "stopped"));
                else Console.Error.WriteLine("fastserve autoscale: stopped");
                Console.Out.Flush();
            }
            return 0;
        });
        return cmd;
    }

    private static LocalActuatorOptions LocalOptions(ParseResult r, AutoscaleOptions policy, Option<string> ports, Option<string> replicaHost, Option<string?> file,
        Option<string?> exe, Option<int> drainDelay, Option<double> stopTimeout, Option<double> startTimeout, Argument<string[]> serveArgs)
    {
        string range = r.GetValue(ports)!;
        int dash = range.IndexOf('-');
        if (dash <= 0 || !int.TryParse(range.AsSpan(0, dash), NumberStyles.None, CultureInfo.InvariantCulture, out int first)
            || !int.TryParse(range.AsSpan(dash + 1), NumberStyles.None, CultureInfo.InvariantCulture, out int last))
            throw new AutoscaleException("autoscale.bad_config", $"--ports must be FIRST-LAST (for example 7900-7999), not '{range}'");
        string? executable = r.GetValue(exe);
        if (executable is null)
        {
            executable = Environment.ProcessPath;
            // Run as `dotnet fastserve.dll`, the process is the dotnet host, which cannot be told to `serve`.
            if (executable is null || Path.GetFileNameWithoutExtension(executable) == "dotnet")
                throw new AutoscaleException("autoscale.bad_config", "cannot tell which fastserve executable to run as serve; give --fastserve PATH");
        }
        double stopS = r.GetValue(stopTimeout), startS = r.GetValue(startTimeout);
        int dd = r.GetValue(drainDelay);
        if (!(stopS > 0 && stopS <= 3600) || !(startS > 0 && startS <= 3600) || dd < 0 || dd > 600_000)
            throw new AutoscaleException("autoscale.bad_config", "--stop-timeout-s and --start-timeout-s must be in (0, 3600], --drain-delay-ms in 0-600000");
        return new LocalActuatorOptions
        {
            Executable = executable,
            ServeArgs = r.GetValue(serveArgs) ?? [],
            Host = r.GetValue(replicaHost)!,
            FirstPort = first,
            LastPort = last,
            EndpointsFile = r.GetValue(file) ?? throw new AutoscaleException("autoscale.bad_config", "--actuator local needs --endpoints-file PATH (the routers' file: source)"),
            DrainDelay = TimeSpan.FromMilliseconds(dd),
            StopTimeout = TimeSpan.FromSeconds(stopS),
            StartTimeout = TimeSpan.FromSeconds(startS),
            MinReplicas = policy.MinReplicas,
            MaxReplicas = policy.MaxReplicas,
        };
    }

    private static TimeSpan Seconds(double s, string flag, bool zeroOk = false)
    {
        if (!double.IsFinite(s) || s < 0 || (!zeroOk && s == 0) || s > 86_400)
            throw new FastServeException("autoscale.bad_config", $"{flag} must be {(zeroOk ? "0" : "above 0")} … 86400 seconds", flag);
        return TimeSpan.FromSeconds(s);
    }

    /// <summary>MaxScaleUpFactor → max-scale-up-factor, to name the flag an option came from.</summary>
    private static string Kebab(string? name) => name is null ? "?" : name switch
    {
        nameof(AutoscaleOptions.ScaleDownStabilization) => "scale-down-delay-s",
        nameof(AutoscaleOptions.StableWindow) => "stable-window-s",
        nameof(AutoscaleOptions.PanicWindow) => "panic-window-s",
        _ => string.Concat(name.Select((c, i) => char.IsUpper(c) ? (i > 0 ? "-" : "") + char.ToLowerInvariant(c) : c.ToString())),
    };

    private static void WriteTick(in AutoscaleTick t, bool json)
    {
        var tt = t;
        if (json)
        {
            Output.WriteJsonLine(w =>
            {
                w.WriteString("event", "tick");
                w.WriteNumber("at_s", Math.Round(tt.At.TotalSeconds, 3));
                w.WriteString("action", tt.Action);
                if (tt.Observation is { } o)
                {
                    w.WriteNumber("ready", o.Ready);
                    w.WriteNumber("starting", o.Starting);
                    w.WriteNumber("concurrency", Math.Round(o.Concurrency, 3));
                    w.WriteNumber("refused_per_second", Math.Round(o.RefusedPerSecond, 3));
                    w.WriteNumber("service_s", Math.Round(o.ServiceSeconds, 4));
                    w.WriteNumber("routers", tt.Sources);
                }
                if (tt.Decision is { } d)
                {
                    w.WriteNumber("current", d.Current);
                    w.WriteNumber("desired", d.Desired);
                    w.WriteNumber("demand", Math.Round(d.Demand, 3));
                    w.WriteNumber("stable_demand", Math.Round(d.StableDemand, 3));
                    w.WriteNumber("panic_demand", Math.Round(d.PanicDemand, 3));
                    w.WriteBoolean("panic", d.Panic);
                    w.WriteString("reason", d.Reason);
                }
                if (tt.SizeAfter is { } s)
                {
                    w.WriteStartObject("fleet");
                    w.WriteNumber("ready", s.Ready);
                    w.WriteNumber("starting", s.Starting);
                    w.WriteNumber("draining", s.Draining);
                    w.WriteEndObject();
                }
                if (tt.ErrorCode is not null)
                {
                    w.WriteStartObject("error");
                    w.WriteString("code", tt.ErrorCode);
                    w.WriteString("message", tt.Error);
                    w.WriteEndObject();
                }
            });
            Console.Out.Flush();
            return;
        }
        // A terminal gets what changed, not a line every tick.
        string at = $"{t.At.TotalSeconds,8:F1}s";
        if (t.Action is "up" or "down" && t.Decision is { } dd)
            Console.Out.WriteLine($"{at} {t.Action} {dd.Current} -> {dd.Desired}: {dd.Reason} (demand {dd.Demand:F1}, stable {dd.StableDemand:F1}, panic {dd.PanicDemand:F1}{(dd.Panic ? ", PANIC" : "")})");
        else if (t.Action is "failed" || (t.Action is "hold" && t.ErrorCode != _lastHold))
            Console.Out.WriteLine($"{at} {t.Action}: {t.ErrorCode}: {t.Error}");
        _lastHold = t.Action == "hold" ? t.ErrorCode : null;
    }

    private static string? _lastHold;   // a hold is printed once per streak, not every tick

    private static void WriteReplica(ReplicaEvent e, bool json)
    {
        if (json)
            Output.WriteJsonLine(w =>
            {
                w.WriteString("event", e.Event);
                w.WriteString("replica", e.Replica);
                if (e.Pid is { } pid) w.WriteNumber("pid", pid); else w.WriteNull("pid");
                w.WriteString("detail", e.Detail);
            });
        else Console.Out.WriteLine($"          {e.Event} {e.Replica}{(e.Pid is { } p ? $" (pid {p})" : "")}: {e.Detail}");
        Console.Out.Flush();
    }
}
