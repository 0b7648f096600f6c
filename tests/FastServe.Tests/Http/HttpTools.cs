using System.Diagnostics;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using NUnit.Framework;

namespace FastServe.Tests.Http;

/// <summary>Runs the outside HTTP clients of the end-to-end tests: the official <c>openai</c> npm package under Node
/// (tests/http-clients, installed by test.sh) and curl.</summary>
internal static class HttpTools
{
    private static string ClientsDir => Path.Combine(TestModels.RepoRoot, "tests", "http-clients");

    /// <summary>tests/http-clients/run.mjs with the scenario; its one JSON line.</summary>
    public static JsonElement OpenAi(string baseUrl, string model, string scenario, string? prompt = null, string? apiKey = null)
    {
        if (!Directory.Exists(Path.Combine(ClientsDir, "node_modules", "openai")))
            Assert.Fail("the openai npm client is not installed: run (cd tests/http-clients && npm ci) or ./test.sh");
        var args = new List<string> { Path.Combine(ClientsDir, "run.mjs"), baseUrl, model, scenario };
        if (prompt is not null) args.Add(prompt);
        var env = apiKey is null ? null : new Dictionary<string, string> { ["OPENAI_API_KEY"] = apiKey };
        var (code, stdout, stderr) = Run("node", args, env, 60);
        var line = stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries).LastOrDefault();
        Assert.That(line, Is.Not.Null, $"node printed nothing (exit {code}); stderr:\n{stderr}");
        using var doc = JsonDocument.Parse(line!);
        return doc.RootElement.Clone();
    }

    /// <summary>Runs a program; (exit code, stdout, stderr). Fails the test when it runs past <paramref name="seconds"/>.</summary>
    public static (int Code, string Out, string Err) Run(string file, IEnumerable<string> args, IDictionary<string, string>? env = null, double seconds = 60)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args) psi.ArgumentList.Add(a);
        if (env is not null) foreach (var kv in env) psi.Environment[kv.Key] = kv.Value;
        using var p = Process.Start(psi)!;
        var o = p.StandardOutput.ReadToEndAsync();
        var e = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(TimeSpan.FromSeconds(seconds)))
        {
            p.Kill(entireProcessTree: true);
            Assert.Fail($"{file} did not finish in {seconds} s");
        }
        return (p.ExitCode, o.Result, e.Result);
    }

    /// <summary>A shell pipeline (bash -c), for curl fed from a pipe.</summary>
    public static (int Code, string Out, string Err) Sh(string script, double seconds = 60) => Run("bash", ["-c", script], null, seconds);
}
