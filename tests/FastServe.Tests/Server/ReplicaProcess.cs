using NUnit.Framework;
using System.Buffers;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using FastServe.Protocol;

namespace FastServe.Tests.Server;

/// <summary>A real replica (`dist/fastserve serve`) started for a test: supervisor, engine and worker processes.</summary>
internal sealed class ReplicaProcess : IDisposable
{
    private readonly StringBuilder _err = new();
    public Process Proc { get; }
    public int Port { get; private set; }
    /// <summary>The ready event's <c>http_port</c> (started with <c>--http-port</c>), else -1.</summary>
    public int HttpPort { get; private set; } = -1;
    public int MetricsPort { get; }
    public int AgentPort { get; }
    /// <summary>The ready event's <c>start_ms</c> object (stage → milliseconds from the supervisor's exec, or null).</summary>
    public JsonElement StartMs { get; private set; }

    private ReplicaProcess(Process p, int metricsPort, int agentPort)
    {
        Proc = p;
        MetricsPort = metricsPort;
        AgentPort = agentPort;
    }

    public string Stderr { get { lock (_err) return _err.ToString(); } }

    public static int FreePort()
    {
        var l = new TcpListener(IPAddress.Loopback, 0);
        l.Start();
        int port = ((IPEndPoint)l.LocalEndpoint).Port;
        l.Stop();
        return port;
    }

    /// <summary>Starts a replica on <paramref name="port"/> (0 = a free one) and waits for its ready line.</summary>
    public static ReplicaProcess Start(IEnumerable<string> args, IDictionary<string, string>? env = null, bool metrics = true, bool agent = true, int port = 0)
    {
        int mp = metrics ? FreePort() : 0, ap = agent ? FreePort() : 0;
        var psi = new ProcessStartInfo(DistBinary.Path)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var a in new[] { "serve", "--port", $"{port}", "--json", "--metrics-port", $"{mp}", "--agent-port", $"{ap}" }) psi.ArgumentList.Add(a);
        foreach (var a in args) psi.ArgumentList.Add(a);
        if (env is not null) foreach (var kv in env) psi.Environment[kv.Key] = kv.Value;
        var p = Process.Start(psi)!;
        var r = new ReplicaProcess(p, mp, ap);
        p.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (r._err) r._err.AppendLine(e.Data); };
        p.BeginErrorReadLine();
        var ready = p.StandardOutput.ReadLineAsync();
        if (!ready.Wait(TimeSpan.FromSeconds(90)) || ready.Result is null)
        {
            r.Dispose();
            throw new InvalidOperationException($"the replica did not become ready; stderr:\n{r.Stderr}");
        }
        using var doc = JsonDocument.Parse(ready.Result);
        r.Port = doc.RootElement.GetProperty("port").GetInt32();
        if (doc.RootElement.TryGetProperty("http_port", out var hp)) r.HttpPort = hp.GetInt32();
        r.StartMs = doc.RootElement.GetProperty("start_ms").Clone();
        _ = Task.Run(async () => { while (await p.StandardOutput.ReadLineAsync() is not null) { } });
        return r;
    }

    /// <summary>Checks the ready event's start stages: every key present, each a finite number (or null only where
    /// <paramref name="absent"/> names it), and in the order a start must pass them. A child's exec time comes from
    /// /proc (10 ms resolution, in each of two processes), so orderings against an <c>*_exec</c> stage allow 20 ms.</summary>
    public void AssertStartStages(params string[] absent)
    {
        string[] keys = ["main", "spawned", "listening", "ready", "engine_exec", "engine_main", "model_mapped", "engine_built", "warmed_up",
            "engine_ready", "workers_exec", "workers_main", "workers_tokenizer", "workers_listening", "workers_linked"];
        var ms = new Dictionary<string, double>();
        foreach (var k in keys)
        {
            Assert.That(StartMs.TryGetProperty(k, out var v), Is.True, $"start_ms has no '{k}': {StartMs}");
            if (absent.Contains(k))
            {
                Assert.That(v.ValueKind, Is.EqualTo(JsonValueKind.Null), $"'{k}' should be null here: {StartMs}");
                continue;
            }
            Assert.That(v.ValueKind, Is.EqualTo(JsonValueKind.Number), $"'{k}' is not a number: {StartMs}");
            ms[k] = v.GetDouble();
            Assert.That(double.IsFinite(ms[k]) && ms[k] > -20 && ms[k] < 600_000, Is.True, $"'{k}' = {ms[k]}");
        }
        void Ordered(params string[] chain)
        {
            var present = chain.Where(ms.ContainsKey).ToArray();
            for (int i = 1; i < present.Length; i++)
                Assert.That(ms[present[i]], Is.GreaterThanOrEqualTo(ms[present[i - 1]]), $"{present[i]} before {present[i - 1]}: {StartMs}");
        }
        Ordered("main", "spawned", "listening", "ready");
        Ordered("engine_main", "model_mapped", "engine_built", "warmed_up", "engine_ready", "ready");
        Ordered("workers_main", "workers_tokenizer", "workers_listening", "workers_linked", "ready");
        foreach (var child in new[] { "engine", "workers" })
        {
            Assert.That(ms[$"{child}_exec"], Is.GreaterThanOrEqualTo(ms["main"] - 20), $"{child} exec'd before the supervisor's main: {StartMs}");
            Assert.That(ms[$"{child}_exec"], Is.LessThanOrEqualTo(ms[$"{child}_main"] + 20), $"{child} main before its exec: {StartMs}");
        }
    }

    /// <summary>Pids of the children whose command line names <paramref name="role"/> (serve-engine, serve-worker).</summary>
    public int[] Children(string role)
    {
        var pids = new List<int>();
        foreach (var dir in Directory.GetDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(dir), out int pid)) continue;
            try
            {
                string stat = File.ReadAllText(Path.Combine(dir, "stat"));
                int ppid = int.Parse(stat[(stat.LastIndexOf(')') + 2)..].Split(' ')[1]);
                if (ppid != Proc.Id) continue;
                if (File.ReadAllText(Path.Combine(dir, "cmdline")).Contains(role)) pids.Add(pid);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException) { }
        }
        return [.. pids];
    }

    public static long RssKiB(int pid)
    {
        foreach (var line in File.ReadLines($"/proc/{pid}/status"))
            if (line.StartsWith("VmRSS:")) return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1]);
        return -1;
    }

    /// <summary>Waits until a load report satisfies <paramref name="ok"/>.</summary>
    public LoadReport WaitLoad(Func<LoadReport, bool> ok, double seconds = 20)
    {
        var until = DateTime.UtcNow.AddSeconds(seconds);
        LoadReport last = default;
        while (DateTime.UtcNow < until)
        {
            try
            {
                using var c = RawConnection.Open(Port);
                last = c.Load();
                if (ok(last)) return last;
            }
            catch (Exception e) when (e is SocketException or IOException or TimeoutException) { }
            Thread.Sleep(50);
        }
        throw new TimeoutException($"load never satisfied the condition; last {last}; stderr:\n{Stderr}");
    }

    public void Signal(int sig) => Kill(Proc.Id, sig);

    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "kill")]
    public static extern int Kill(int pid, int sig);

    private bool _disposed;

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        if (!Proc.HasExited)
        {
            Signal(15);
            if (!Proc.WaitForExit(15_000)) Proc.Kill(entireProcessTree: true);
        }
        Proc.Dispose();
    }
}

/// <summary>What one request received: streamed ids and text, and its FINAL.</summary>
internal sealed class Outcome
{
    public List<int> Ids = [];
    public List<byte> Text = [];
    public int Deltas;
    /// <summary>After each DELTA: the ids and text bytes received so far (where a router's record of a stream stands).</summary>
    public List<(int Ids, int TextBytes)> Marks = [];
    public FinalInfo Final;
    public string Detail = "", Message = "";
    public bool Done;
    public int FinalsSeen;
    public string TextString => Encoding.UTF8.GetString(Text.ToArray());
}

/// <summary>A protocol connection driven frame by frame with the codec (raw enough for bad-input tests).</summary>
internal sealed class RawConnection : IDisposable
{
    private readonly Socket _s;
    private byte[] _buf = new byte[1 << 16];
    private int _have;
    public HelloOk Server;
    public readonly Dictionary<ulong, Outcome> Outcomes = [];
    public readonly List<ErrorInfo> Errors = [];
    public readonly List<LoadReport> Loads = [];

    public RawConnection(int port)
    {
        _s = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        _s.Connect(new IPEndPoint(IPAddress.Loopback, port));
    }

    public static RawConnection Open(int port)
    {
        var c = new RawConnection(port);
        c.Send(w => FrameWriter.Hello(w, "tests"u8));
        var f = c.Read(TimeSpan.FromSeconds(10)) ?? throw new IOException("closed before HELLO_OK");
        if (f.Header.Type != FrameType.HelloOk || !HelloOk.TryParse(f.Payload, out c.Server)) throw new IOException($"expected HELLO_OK, got {f.Header.Type}");
        return c;
    }

    public Socket Socket => _s;

    public void Send(Action<IBufferWriter<byte>> write)
    {
        var w = new ArrayBufferWriter<byte>();
        write(w);
        SendRaw(w.WrittenSpan);
    }

    public void SendRaw(ReadOnlySpan<byte> bytes)
    {
        while (!bytes.IsEmpty) bytes = bytes[_s.Send(bytes)..];
    }

    public void Request(ulong id, string prompt, int maxTokens = 8, uint deadlineMs = 0, IReadOnlyList<string>? stops = null, bool ignoreEos = true, float temperature = 0)
    {
        var p = RequestParams.Default;
        p.MaxTokens = maxTokens;
        p.DeadlineMs = deadlineMs;
        p.IgnoreEos = ignoreEos;
        p.Temperature = temperature;
        Send(w => FrameWriter.Request(w, id, p, Encoding.UTF8.GetBytes(prompt), default, stops));
    }

    public readonly record struct Frame(FrameHeader Header, byte[] Payload);

    /// <summary>Next frame, or null when the server closed the connection. Throws TimeoutException.</summary>
    public Frame? Read(TimeSpan timeout)
    {
        var until = DateTime.UtcNow + timeout;
        while (true)
        {
            var r = FrameReader.TryRead(_buf.AsSpan(0, _have), 64 << 20, out var h, out var payload, out int consumed);
            if (r == ReadResult.Frame)
            {
                var f = new Frame(h, payload.ToArray());
                _buf.AsSpan(consumed, _have - consumed).CopyTo(_buf);
                _have -= consumed;
                return f;
            }
            if (r == ReadResult.NeedMore && _have >= Wire.HeaderSize && Wire.HeaderSize + h.Length > _buf.Length) Array.Resize(ref _buf, Wire.HeaderSize + h.Length);
            int left = (int)(until - DateTime.UtcNow).TotalMilliseconds;
            if (left <= 0) throw new TimeoutException("no frame in time");
            if (!_s.Poll(left * 1000, SelectMode.SelectRead)) throw new TimeoutException("no frame in time");
            int n;
            try { n = _s.Receive(_buf, _have, _buf.Length - _have, SocketFlags.None); }
            catch (SocketException) { return null; }
            if (n == 0) return null;
            _have += n;
        }
    }

    /// <summary>Reads frames, recording them, until every id in <paramref name="ids"/> has its FINAL (or EOF).</summary>
    public bool Collect(IEnumerable<ulong> ids, double seconds = 30)
    {
        var want = new HashSet<ulong>(ids);
        foreach (var id in want) if (!Outcomes.ContainsKey(id)) Outcomes[id] = new Outcome();
        var until = DateTime.UtcNow.AddSeconds(seconds);
        while (want.Any(id => !Outcomes[id].Done))
        {
            var f = Read(until - DateTime.UtcNow);
            if (f is null) return false;
            Record(f.Value);
        }
        return true;
    }

    public void Record(Frame f)
    {
        var h = f.Header;
        switch (h.Type)
        {
            case FrameType.Delta:
            {
                if (!Outcomes.TryGetValue(h.Id, out var o)) Outcomes[h.Id] = o = new Outcome();
                if (o.Done) throw new InvalidOperationException($"DELTA after FINAL for request {h.Id}");
                Assert.That(DeltaView.TryParse(f.Payload, out var d), Is.True);
                for (int i = 0; i < d.Count; i++) o.Ids.Add(d.Id(i));
                o.Text.AddRange(d.Text.ToArray());
                o.Deltas++;
                o.Marks.Add((o.Ids.Count, o.Text.Count));
                break;
            }
            case FrameType.Final:
            {
                if (!Outcomes.TryGetValue(h.Id, out var o)) Outcomes[h.Id] = o = new Outcome();
                Assert.That(FinalInfo.TryParse(f.Payload, out var fi, out var det, out var msg), Is.True);
                o.Final = fi;
                o.Detail = Encoding.UTF8.GetString(det);
                o.Message = Encoding.UTF8.GetString(msg);
                o.Done = true;
                o.FinalsSeen++;
                break;
            }
            case FrameType.Error:
                Assert.That(ErrorInfo.TryParse(f.Payload, h.Flags, out var e), Is.True);
                Errors.Add(e);
                break;
            case FrameType.LoadReport:
                Assert.That(LoadReport.TryParse(f.Payload, out var l), Is.True);
                Loads.Add(l);
                break;
        }
    }

    public LoadReport Load()
    {
        Send(w => FrameWriter.LoadQuery(w, 0));
        while (true)
        {
            var f = Read(TimeSpan.FromSeconds(10)) ?? throw new IOException("closed");
            if (f.Header.Type == FrameType.LoadReport && LoadReport.TryParse(f.Payload, out var l)) return l;
            Record(f);
        }
    }

    /// <summary>True when the server closes the connection within the time (reading and recording frames until then).</summary>
    public bool ClosedWithin(double seconds)
    {
        var until = DateTime.UtcNow.AddSeconds(seconds);
        try
        {
            while (DateTime.UtcNow < until)
            {
                var f = Read(until - DateTime.UtcNow);
                if (f is null) return true;
                Record(f.Value);
            }
        }
        catch (TimeoutException) { }
        return false;
    }

    public void Dispose() => _s.Dispose();
}
