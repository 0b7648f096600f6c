using System.Diagnostics;
using System.Text;
using System.Text.Json;
using FastServe.Tests.Server;

namespace FastServe.Tests.Router;

/// <summary>A real router (`dist/fastserve route --json`) started for a test in front of replicas.</summary>
internal sealed class RouterProcess : IDisposable
{
    private readonly StringBuilder _err = new();
    private readonly List<string> _lines = [];
    private Task _reader = Task.CompletedTask;
    private bool _disposed;

    private RouterProcess(Process p) => Proc = p;

    public Process Proc { get; }
    public int Port { get; private set; }
    /// <summary>The ready event's <c>http_port</c> (started with <c>--http-listen</c>), else -1.</summary>
    public int HttpPort { get; private set; } = -1;
    public string Stderr { get { lock (_err) return _err.ToString(); } }

    /// <summary>Starts a router over the replicas' ports and waits for its ready line.</summary>
    public static RouterProcess Start(IEnumerable<int> replicaPorts, params string[] extra) =>
        StartOn(string.Join(',', replicaPorts.Select(p => $"127.0.0.1:{p}")), extra);

    /// <summary>Starts a router over an endpoint source (<c>file:PATH</c>, a list, ...) and waits for its ready line.</summary>
    public static RouterProcess StartOn(string endpoints, params string[] extra)
    {
        var psi = new ProcessStartInfo(DistBinary.Path)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var a in new[] { "route", "--listen", "0", "--endpoints", endpoints, "--json" }) psi.ArgumentList.Add(a);
        foreach (var a in extra) psi.ArgumentList.Add(a);
        var p = Process.Start(psi)!;
        var r = new RouterProcess(p);
        p.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (r._err) r._err.AppendLine(e.Data); };
        p.BeginErrorReadLine();
        var ready = p.StandardOutput.ReadLineAsync();
        if (!ready.Wait(TimeSpan.FromSeconds(30)) || ready.Result is null)
        {
            r.Dispose();
            throw new InvalidOperationException($"the router did not become ready; stderr:\n{r.Stderr}");
        }
        using (var doc = JsonDocument.Parse(ready.Result))
        {
            r.Port = doc.RootElement.GetProperty("port").GetInt32();
            if (doc.RootElement.TryGetProperty("http_port", out var hp)) r.HttpPort = hp.GetInt32();
        }
        r._reader = Task.Run(async () =>
        {
            while (await p.StandardOutput.ReadLineAsync() is { } line) lock (r._lines) r._lines.Add(line);
        });
        return r;
    }

    /// <summary>SIGTERM, wait for the exit (code 0 expected), and return the stopped event.</summary>
    public JsonElement Stop()
    {
        ReplicaProcess.Kill(Proc.Id, 15);
        if (!Proc.WaitForExit(20_000)) throw new TimeoutException($"the router did not drain; stderr:\n{Stderr}");
        _reader.Wait(5000);
        if (Proc.ExitCode != 0) throw new InvalidOperationException($"the router exited with {Proc.ExitCode}; stderr:\n{Stderr}");
        string line;
        lock (_lines) line = _lines.LastOrDefault(l => l.Contains("\"stopped\"")) ?? throw new InvalidOperationException($"no stopped event; stderr:\n{Stderr}");
        using var doc = JsonDocument.Parse(line);
        return doc.RootElement.Clone();
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        if (!Proc.HasExited)
        {
            ReplicaProcess.Kill(Proc.Id, 15);
            if (!Proc.WaitForExit(15_000)) Proc.Kill(entireProcessTree: true);
        }
        Proc.Dispose();
    }
}
