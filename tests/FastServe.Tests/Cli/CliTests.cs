using System.Diagnostics;
using System.Text.Json;
using NUnit.Framework;

namespace FastServe.Tests.Cli;

/// <summary>End to end through the published NativeAOT executable (dist/fastserve, made by ./build.sh).</summary>
[NonParallelizable]
public class CliTests
{
    private static string Exe => DistBinary.Path;

    internal static (int Code, string Out, string Err) Run(params string[] args) => RunWith(null, args);

    /// <summary><see cref="Run"/> with environment changes: a null value removes the variable.</summary>
    internal static (int Code, string Out, string Err) RunWith(IReadOnlyDictionary<string, string?>? env, params string[] args) =>
        RunProgram(Exe, args, env, TimeSpan.FromMinutes(3));

    /// <summary>Runs <paramref name="program"/> to its end and returns its exit code and output; a null value in
    /// <paramref name="env"/> removes that variable. Past <paramref name="timeout"/> it is killed and the test fails.</summary>
    internal static (int Code, string Out, string Err) RunProgram(string program, IReadOnlyList<string> args,
        IReadOnlyDictionary<string, string?>? env, TimeSpan timeout)
    {
        var psi = new ProcessStartInfo(program) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args) psi.ArgumentList.Add(a);
        if (env is not null)
            foreach (var (k, v) in env)
                if (v is null) psi.Environment.Remove(k); else psi.Environment[k] = v;
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(timeout)) { p.Kill(true); Assert.Fail($"{Path.GetFileName(program)} {string.Join(' ', args)} timed out"); }
        return (p.ExitCode, stdout.Result, stderr.Result);
    }

    [Test]
    public void MakeModelQuantizeLoadGenerate()
    {
        string root = TestModels.TempDir("cli");
        string f32 = Path.Combine(root, "tiny"), fp8 = Path.Combine(root, "tiny-fp8");
        var made = Run("make-model", "--preset", "tiny", "--out", f32, "--seed", "3", "--json");
        Assert.That(made.Code, Is.Zero, made.Err);
        var q = Run("quantize", "--model", f32, "--out", fp8, "--json");
        Assert.That(q.Code, Is.Zero, q.Err);
        using (var doc = JsonDocument.Parse(q.Out))
            Assert.That(doc.RootElement.GetProperty("tensors_quantized").GetInt32(), Is.EqualTo(2 * 7));

        var inspect = Run("inspect", fp8, "--json");
        Assert.That(inspect.Code, Is.Zero, inspect.Err);
        using (var doc = JsonDocument.Parse(inspect.Out))
        {
            Assert.That(doc.RootElement.GetProperty("quantization").GetString(), Does.StartWith("fp8"));
            Assert.That(doc.RootElement.GetProperty("dtypes").TryGetProperty("F8_E4M3", out _), Is.True);
        }

        var g = Run("generate", "--model", fp8, "--max-tokens", "8", "--ignore-eos", "--json", "Hello there");
        Assert.That(g.Code, Is.Zero, g.Err);
        using (var doc = JsonDocument.Parse(g.Out))
        {
            Assert.That(doc.RootElement.GetProperty("token_ids").GetArrayLength(), Is.EqualTo(8));
            Assert.That(doc.RootElement.GetProperty("finish_reason").GetString(), Is.EqualTo("length"));
        }

        // Quantize at load gives the same tokens as the checkpoint quantized offline.
        var g2 = Run("generate", "--model", f32, "--quantize", "fp8", "--max-tokens", "8", "--ignore-eos", "--json", "Hello there");
        Assert.That(g2.Code, Is.Zero, g2.Err);
        using var d1 = JsonDocument.Parse(g.Out);
        using var d2 = JsonDocument.Parse(g2.Out);
        Assert.That(d2.RootElement.GetProperty("token_ids").ToString(), Is.EqualTo(d1.RootElement.GetProperty("token_ids").ToString()));
    }

    private static readonly Dictionary<string, string?> s_noDefaultOverride = new() { ["FASTSERVE_DEFAULT_MODEL"] = null };

    [Test]
    public void WithoutModelTheCheckoutsGecSmallIsTheDefault()
    {
        // dist/fastserve finds models/gec-small one level up, in the checkout.
        var inspect = RunWith(s_noDefaultOverride, "inspect", "--json");
        Assert.That(inspect.Code, Is.Zero, inspect.Err);
        using (var doc = JsonDocument.Parse(inspect.Out))
            Assert.That(doc.RootElement.GetProperty("dir").GetString(), Is.EqualTo(Path.Combine(TestModels.RepoRoot, "models", "gec-small")));

        // A trained model: in its prompt format it answers with one line and stops at EOS well before 32 tokens.
        var g = RunWith(s_noDefaultOverride, "generate", "--max-tokens", "32", "--json", "Correct: She don't like apples.\nFixed:");
        Assert.That(g.Code, Is.Zero, g.Err);
        using var gd = JsonDocument.Parse(g.Out);
        string text = gd.RootElement.GetProperty("text").GetString()!;
        TestContext.Out.WriteLine($"gec-small: {text}");
        Assert.That(gd.RootElement.GetProperty("finish_reason").GetString(), Is.EqualTo("eos"), text);
        Assert.That(text, Does.StartWith(" ").And.EndWith("\n").And.Contain("apples"));
    }

    [Test]
    public void ADefaultModelVariableWithoutConfigIsNamed()
    {
        string empty = TestModels.TempDir("nodefault");
        var r = RunWith(new Dictionary<string, string?> { ["FASTSERVE_DEFAULT_MODEL"] = empty }, "inspect");
        Assert.That(r.Code, Is.EqualTo(1));
        Assert.That(r.Err, Does.StartWith("error[model.default_not_found]").And.Contain(empty).And.Contain("FASTSERVE_DEFAULT_MODEL"));
        Assert.That(r.Err, Does.Not.Contain("   at "));
    }

    [Test]
    public void GenerateWithPromptIdsAndLogprobs()
    {
        var g = Run("generate", "--model", TestModels.Tiny, "--prompt-ids", "1,2,3", "--max-tokens", "3", "--logprobs", "4", "--ignore-eos", "--json");
        Assert.That(g.Code, Is.Zero, g.Err);
        using var doc = JsonDocument.Parse(g.Out);
        var lp = doc.RootElement.GetProperty("logprobs");
        Assert.That(lp.GetArrayLength(), Is.EqualTo(3));
        foreach (var t in lp.EnumerateArray())
        {
            var top = t.GetProperty("top");
            Assert.That(top.GetArrayLength(), Is.EqualTo(4));
            // Greedy: the chosen token is the most likely one.
            Assert.That(t.GetProperty("id").GetInt32(), Is.EqualTo(top[0].GetProperty("id").GetInt32()));
            Assert.That(t.GetProperty("logprob").GetDouble(), Is.LessThanOrEqualTo(0));
        }
    }

    [Test]
    public void StreamsTextAndReportsSpeeds()
    {
        var g = Run("generate", "--model", TestModels.Tiny, "--max-tokens", "5", "--ignore-eos", "Good morning");
        Assert.That(g.Code, Is.Zero, g.Err);
        Assert.That(g.Err, Does.Contain("prefill").And.Contain("decode").And.Contain("tok/s").And.Contain("load"));
    }

    [TestCase(new[] { "generate", "--model", "/nonexistent/model", "hi" }, "model.not_found")]
    [TestCase(new[] { "generate", "--temperature", "-1", "--model", "@TINY", "hi" }, "sampling.invalid")]
    [TestCase(new[] { "generate", "--top-p", "2", "--model", "@TINY", "hi" }, "sampling.invalid")]
    [TestCase(new[] { "generate", "--prompt-ids", "1,x", "--model", "@TINY" }, "args.invalid_prompt_ids")]
    [TestCase(new[] { "generate", "--ctx", "8", "--model", "@TINY", "a b c d e f g h i j k l m n o p" }, "prompt.too_long")]
    [TestCase(new[] { "generate", "--quantize", "int4", "--model", "@TINY", "hi" }, "args.invalid_quantize")]
    [TestCase(new[] { "make-model", "--preset", "huge", "--out", "@TMP" }, "args.unknown_preset")]
    [TestCase(new[] { "bench-engine", "--backend", "sim", "--rate", "10", "--queue-target-ms", "600" }, "args.invalid_queue_target")]
    [TestCase(new[] { "bench-engine", "--backend", "sim", "--rate", "10", "--queue-interval-ms", "-1" }, "args.invalid_queue_interval")]
    [TestCase(new[] { "bench-engine", "--backend", "sim", "--rate", "10", "--default-deadline-ms", "-5" }, "args.invalid_default_deadline")]
    [TestCase(new[] { "bench-engine", "--backend", "sim", "--rate", "10", "--batch-fraction", "1.5" }, "args.invalid_batch_fraction")]
    [TestCase(new[] { "inspect", "/nonexistent/model" }, "model.not_found")]
    public void BadInputGetsOneClearErrorAndNoStackTrace(string[] args, string code)
    {
        args = args.Select(a => a == "@TINY" ? TestModels.Tiny : a == "@TMP" ? Path.Combine(TestModels.TempDir("x"), "m") : a).ToArray();
        var r = Run(args);
        Assert.That(r.Code, Is.Not.Zero);
        Assert.That(r.Err, Does.Contain($"error[{code}]"));
        Assert.That(r.Err, Does.Not.Contain("   at "), "no stack trace");
        Assert.That(r.Err.Trim().Split('\n'), Has.Length.EqualTo(1), r.Err);
    }

    [Test]
    public void MalformedCheckpointNamesTheFile()
    {
        string dir = TestModels.TempDir("bad");
        foreach (var f in Directory.GetFiles(TestModels.Tiny))
            if (Path.GetFileName(f) != "model.safetensors") File.Copy(f, Path.Combine(dir, Path.GetFileName(f)));
        var bytes = new byte[64];
        BitConverter.TryWriteBytes(bytes, 1_000_000L); // header length past the end of the file
        File.WriteAllBytes(Path.Combine(dir, "model.safetensors"), bytes);
        var r = Run("generate", "--model", dir, "hi");
        Assert.That(r.Code, Is.Not.Zero);
        Assert.That(r.Err, Does.Contain("error[safetensors.").And.Contain("model.safetensors"));
        Assert.That(r.Err, Does.Not.Contain("   at "));
    }

    [Test]
    public void UnsupportedArchitectureIsNamed()
    {
        string dir = TestModels.TempDir("arch");
        foreach (var f in Directory.GetFiles(TestModels.Tiny))
            File.CreateSymbolicLink(Path.Combine(dir, Path.GetFileName(f)), f);
        File.Delete(Path.Combine(dir, "config.json"));
        File.WriteAllText(Path.Combine(dir, "config.json"), File.ReadAllText(Path.Combine(TestModels.Tiny, "config.json")).Replace("LlamaForCausalLM", "GPTNeoXForCausalLM"));
        var r = Run("inspect", dir);
        Assert.That(r.Err, Does.Contain("error[config.unsupported_architecture]").And.Contain("config.json"));
    }

    [Test]
    public void MissingTokenizerIsNamed()
    {
        string dir = TestModels.TempDir("notok");
        foreach (var f in new[] { "config.json", "model.safetensors" })
            File.CreateSymbolicLink(Path.Combine(dir, f), Path.Combine(TestModels.Tiny, f));
        var r = Run("generate", "--model", dir, "hi");
        Assert.That(r.Err, Does.Contain("error[tokenizer.missing]"));
    }
}
