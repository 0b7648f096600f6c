using System.Diagnostics;
using System.Text.Json;
using FastServe.Interop;
using NUnit.Framework;

namespace FastServe.Tests.Interop;

/// <summary>
/// bench/gpu/startup.py, which a GPU session runs to report time to ready, the weight upload's GB/s and the lazy
/// graph captures, against a stand-in <c>fastserve</c> (a Python script) that prints the ready event and exactly the
/// lines <see cref="CudaLog"/> formats, so the script's patterns and the backend's lines cannot drift apart; and the
/// log lines themselves. No GPU.
/// </summary>
public class StartupScriptTests
{
    private static string Script => Path.Combine(TestModels.RepoRoot, "bench", "gpu", "startup.py");

    [Test]
    public void LogLinesCarryTheNumbers()
    {
        var up = default(WeightUploadStats).Add(1_236_000_000, 0.052, 0.030, 0.011, 80);
        Assert.That(CudaLog.Upload(up, 4, 16L << 20, 0.004, 2), Is.EqualTo(
            "fastserve cuda: weights uploaded: 1.236 GB in 0.052 s, 23.8 GB/s (4 x 16 MiB pinned chunks, allocated once in 0.004 s, " +
            "2 copy threads; host copies 0.030 s, waits on transfers 0.011 s, 80 pieces)"));
        Assert.That(CudaLog.Capture(16, 0.0031, new GraphCaptureStats(3, 3, 0.0102, 0.0041, 5)), Is.EqualTo(
            "fastserve cuda: graph for batch 16 captured in 3.1 ms (3 batch sizes captured, 10.2 ms capturing in all, " +
            "5 steps ran eagerly while captures were spaced out)"));
    }

    [Test]
    public void ReportsReadyUploadAndCapturesFromTheBackendsLines()
    {
        var upload = CudaLog.Upload(default(WeightUploadStats).Add(2_470_000_000, 0.1, 0.06, 0.02, 160), 4, 16L << 20, 0.003, 4);
        var caps = new[]
        {
            CudaLog.Capture(1, 0.0025, new GraphCaptureStats(1, 1, 0.0025, 0.0025, 0)),
            CudaLog.Capture(8, 0.0040, new GraphCaptureStats(2, 2, 0.0065, 0.0040, 3)),
        };
        var (code, stdout, json) = Run(new() { ["FAKE_UPLOAD"] = upload, ["FAKE_CAPTURES"] = string.Join('\n', caps) });
        Assert.That(code, Is.Zero, stdout);
        var s = json!.RootElement.GetProperty("summary");
        Assert.That(s.GetProperty("starts").GetInt32(), Is.EqualTo(2));
        Assert.That(s.GetProperty("failed").GetInt32(), Is.Zero);
        Assert.That(s.GetProperty("ready_ms_median").GetDouble(), Is.EqualTo(400), "median of the two starts' 300 and 500 ms");
        Assert.That(s.GetProperty("stages_ms_median").GetProperty("main").GetDouble(), Is.EqualTo(15));
        Assert.That(s.GetProperty("upload_gb_per_s_median").GetDouble(), Is.EqualTo(24.7));
        Assert.That(s.GetProperty("upload_gb").GetDouble(), Is.EqualTo(2.47));
        Assert.That(s.GetProperty("graphs_captured").GetInt32(), Is.EqualTo(2), "captures are collected on the first start only");
        Assert.That(s.GetProperty("capture_ms_total").GetDouble(), Is.EqualTo(6.5));
        Assert.That(s.GetProperty("capture_ms_max").GetDouble(), Is.EqualTo(4.0));
        Assert.That(s.GetProperty("captures_before_ready").GetInt32(), Is.Zero);
        Assert.That(s.GetProperty("last_capture_after_ready_s").GetDouble(), Is.GreaterThan(0));
        Assert.That(stdout, Does.Contain("time to ready: median 400 ms from exec over 2 starts"));
        Assert.That(stdout, Does.Contain("weight upload: 2.470 GB at 24.7 GB/s"));
        Assert.That(stdout, Does.Contain("graph capture: 2 batch sizes in 6.5 ms in all (longest 4.0 ms), 0 before ready"));
        var starts = json.RootElement.GetProperty("starts");
        Assert.That(starts[0].GetProperty("argv").EnumerateArray().Select(a => a.GetString()), Does.Contain("--eager"), "arguments after -- reach serve");
    }

    [Test]
    public void FailsWhenServeNeverGetsReadyOrLogsNoUpload()
    {
        var (code, stdout, json) = Run(new() { ["FAKE_NO_READY"] = "1" });
        Assert.That(code, Is.EqualTo(1));
        Assert.That(stdout, Does.Contain("FAILED: no ready event"));
        Assert.That(stdout, Does.Contain("engine: cuda.no_device"), "the serve's last stderr lines are shown");
        Assert.That(json!.RootElement.GetProperty("summary").GetProperty("failed").GetInt32(), Is.EqualTo(2));

        (code, stdout, _) = Run([]);
        Assert.That(code, Is.EqualTo(1));
        Assert.That(stdout, Does.Contain("no 'weights uploaded' line"));
    }

    private static (int Code, string Stdout, JsonDocument? Json) Run(Dictionary<string, string> env)
    {
        string python = Python();
        string dir = TestModels.TempDir("startup-py");
        string fake = Path.Combine(dir, "fastserve"), counter = Path.Combine(dir, "starts"), outJson = Path.Combine(dir, "out.json");
        File.WriteAllText(fake, """
            #!/usr/bin/env python3
            import json, os, signal, sys, time
            cmd = sys.argv[1]
            if cmd == "bench":
                time.sleep(0.3)
                print(json.dumps({"requests": 1}))
                sys.exit(0)
            if os.environ.get("FAKE_NO_READY"):
                print("fastserve engine: cuda.no_device: no CUDA device", file=sys.stderr, flush=True)
                sys.exit(3)
            counter = os.environ["FAKE_COUNTER"]
            n = int(open(counter).read()) if os.path.exists(counter) else 0
            open(counter, "w").write(str(n + 1))
            stop = []
            signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
            if os.environ.get("FAKE_UPLOAD"):
                print(os.environ["FAKE_UPLOAD"], file=sys.stderr, flush=True)
            print(json.dumps(dict(event="ready", port=7701, start_ms=dict(main=10 + 10 * n, ready=300 + 200 * n))), flush=True)
            time.sleep(0.1)
            for line in filter(None, os.environ.get("FAKE_CAPTURES", "").split("\n")):
                print(line, file=sys.stderr, flush=True)
            while not stop:
                time.sleep(0.02)
            """);
        if (OperatingSystem.IsWindows()) Assert.Ignore("startup.py runs serve on Linux GPU machines");
        else File.SetUnixFileMode(fake, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        var psi = new ProcessStartInfo(python) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in new[] { Script, "--exe", fake, "--model", dir, "--out", outJson, "--starts", "2", "--load", "0.5", "--timeout", "20", "--", "--eager" })
            psi.ArgumentList.Add(a);
        psi.Environment["FAKE_COUNTER"] = counter;
        foreach (var (k, v) in env) psi.Environment[k] = v;
        using var p = Process.Start(psi)!;
        var o = p.StandardOutput.ReadToEndAsync();
        var e = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(TimeSpan.FromMinutes(2))) { p.Kill(true); Assert.Fail("startup.py timed out"); }
        string output = o.Result + e.Result;
        return (p.ExitCode, output, File.Exists(outJson) ? JsonDocument.Parse(File.ReadAllText(outJson)) : null);
    }

    private static string Python()
    {
        foreach (var dir in (Environment.GetEnvironmentVariable("PATH") ?? "/usr/bin").Split(':'))
        {
            string p = Path.Combine(dir, "python3");
            if (File.Exists(p)) return p;
        }
        Assert.Ignore("python3 is not installed (./test.sh installs it)");
        return "";
    }
}
