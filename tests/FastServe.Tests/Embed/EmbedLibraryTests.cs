using System.Text.Json;
using FastServe.Tests.Http;
using NUnit.Framework;

namespace FastServe.Tests.Embed;

/// <summary>
/// dist/libfastserve.so from C (docs/embed.md): the C programs of examples/c and this folder compiled with the system
/// compiler against native/include/fastserve.h and run on the real gec-tiny model. abi_checks.c holds the misuse,
/// cancel, free-in-flight, bad-directory and cancelled-load checks; threads.c 8 submitting threads with one final per
/// request; stream.c the greedy correction, which must equal `fastserve generate`'s; examples/python/stream.py the
/// same through ctypes.
/// </summary>
[TestFixture]
public sealed class EmbedLibraryTests
{
    private static string Root => TestModels.RepoRoot;
    private static string GecTiny => Path.Combine(Root, "models", "gec-tiny");
    private static string Library => Path.Combine(Root, "dist", "libfastserve.so");

    private string _bin = "";
    private string _cc = "";

    [OneTimeSetUp]
    public void Compile()
    {
        _ = DistBinary.Path;   // fails the fixture, naming ./build.sh, when dist/ is missing or stale
        Assert.That(File.Exists(Library), Is.True, $"{Library} is missing: run ./build.sh");
        _cc = Compiler() ?? throw new AssertionException("no C compiler (cc, clang or gcc) on PATH; ./build.sh installs clang");
        _bin = TestModels.TempDir("embed-c");
    }

    [Test]
    public void OnlyFsFunctionsAreExported()
    {
        var (code, stdout, stderr) = HttpTools.Run("nm", ["-D", "--defined-only", Library]);
        Assert.That(code, Is.Zero, stderr);
        var names = new List<string>();
        foreach (var line in stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries))
        {
            var parts = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
            // "A" is the version node the linker's version script defines (V1.0), not a symbol of the library.
            if (parts.Length < 3 || parts[1] == "A") continue;
            names.Add(parts[2].Split('@')[0]);
        }
        Assert.That(names, Has.Member("fs_abi_version").And.Member("fs_request_next").And.Member("fs_submit_text"));
        Assert.That(names.Where(n => !n.StartsWith("fs_", StringComparison.Ordinal)), Is.Empty, "exports other than fs_*");
        // Every function the header declares is exported, and nothing else.
        var declared = System.Text.RegularExpressions.Regex.Matches(File.ReadAllText(Path.Combine(Root, "native", "include", "fastserve.h")),
            @"^(?:int|uint32_t|const char\*) (fs_\w+)\(", System.Text.RegularExpressions.RegexOptions.Multiline).Select(m => m.Groups[1].Value);
        Assert.That(names, Is.EquivalentTo(declared));
    }

    [Test]
    public void MisuseCancelAndFreeChecksPassFromC()
    {
        string exe = Build(Path.Combine(Root, "tests", "FastServe.Tests", "Embed", "abi_checks.c"), "abi_checks");
        var (code, stdout, stderr) = HttpTools.Run(exe, [GecTiny], seconds: 120);
        Assert.That(code, Is.Zero, stdout + stderr);
        Assert.That(stdout, Does.Match(@"(?m)^ok: \d+ checks$").And.Contain("prefill cancel: "));
        // Where this process can run the vulkan backend (lavapipe on CI), the library must run it too, finding the
        // shaders next to itself (dist/vulkan), with cpu's greedy tokens.
        bool vulkanHere;
        try
        {
            FastServe.Vulkan.VulkanEnvironment.Check();
            vulkanHere = true;
        }
        catch (FastServe.Runtime.FastServeException) { vulkanHere = false; }
        Assert.That(stdout, vulkanHere ? Does.Match(@"(?m)^vulkan: \d+ greedy tokens, equal to cpu's$") : Does.Contain("vulkan: unavailable (vulkan."));
    }

    [Test]
    public void EightThreadsEachRequestGetsExactlyOneFinal()
    {
        string exe = Build(Path.Combine(Root, "examples", "c", "threads.c"), "threads");
        var (code, stdout, stderr) = HttpTools.Run(exe, [GecTiny, "8", "16"], seconds: 120);
        Assert.That(code, Is.Zero, stdout + stderr);
        Assert.That(stdout, Does.Contain("8 threads, 128 requests, 128 finals").And.Contain(" 0 violations"));
    }

    [Test]
    public void UnderAddressSanitizer()
    {
        string probe = Path.Combine(_bin, "asan_probe.c");
        File.WriteAllText(probe, "int main(void) { return 0; }\n");
        if (HttpTools.Run(_cc, ["-fsanitize=address", probe, "-o", probe + ".out"]).Code != 0)
            Assert.Ignore($"{_cc} cannot build with -fsanitize=address here (no sanitizer runtime)");
        string exe = Build(Path.Combine(Root, "tests", "FastServe.Tests", "Embed", "abi_checks.c"), "abi_checks_asan", asan: true);
        string threads = Build(Path.Combine(Root, "examples", "c", "threads.c"), "threads_asan", asan: true);
        // First with leak checking off (the .NET runtime keeps a small record per exited thread until process exit,
        // which LeakSanitizer reports): out-of-bounds and use-after-free on the C side.
        var env = new Dictionary<string, string> { ["ASAN_OPTIONS"] = "detect_leaks=0:abort_on_error=0" };
        var (code, stdout, stderr) = HttpTools.Run(exe, [GecTiny], env, 180);
        Assert.That(code, Is.Zero, stdout + stderr);
        Assert.That(stdout, Does.Match(@"(?m)^ok: \d+ checks$").And.Contain("prefill cancel: "));
        (code, stdout, stderr) = HttpTools.Run(threads, [GecTiny, "8", "8"], env, 180);
        Assert.That(code, Is.Zero, stdout + stderr);
        Assert.That(stdout, Does.Contain(" 0 violations"));

        // Leaks: LeakSanitizer on, the same 8-thread program with 16 and then 192 requests. What the runtime keeps per
        // exited thread is reported both times; anything that leaked per request would make the second report larger.
        var leakEnv = new Dictionary<string, string> { ["ASAN_OPTIONS"] = "detect_leaks=1:abort_on_error=0:exitcode=0" };
        var few = Leaked(HttpTools.Run(threads, [GecTiny, "8", "2"], leakEnv, 180));
        var many = Leaked(HttpTools.Run(threads, [GecTiny, "8", "24"], leakEnv, 180));
        Assert.That(few.Allocations, Is.GreaterThan(0), "LeakSanitizer reported nothing, not even the runtime's per-thread records: leak checking did not run");
        Assert.That(many, Is.EqualTo(few), "leaks grew with the number of requests");
        Assert.That(few.Allocations, Is.LessThanOrEqualTo(32), "more than one leaked record per thread that entered the library");
    }

    // LeakSanitizer's "SUMMARY: AddressSanitizer: B byte(s) leaked in N allocation(s)." (none: 0, 0).
    private static (long Bytes, int Allocations) Leaked((int Code, string Out, string Err) run)
    {
        Assert.That(run.Code, Is.Zero, run.Out + run.Err);
        Assert.That(run.Out, Does.Contain(" 0 violations"));
        var m = System.Text.RegularExpressions.Regex.Match(run.Err, @"SUMMARY: AddressSanitizer: (\d+) byte\(s\) leaked in (\d+) allocation");
        return m.Success ? (long.Parse(m.Groups[1].Value), int.Parse(m.Groups[2].Value)) : (0, 0);
    }

    [TestCase("She was refreshingly free into shyness.")]
    [TestCase("He go to school every days.")]
    [TestCase("Turn about is fair play.")]
    public void GreedyStreamEqualsFastserveGenerate(string sentence)
    {
        string exe = Build(Path.Combine(Root, "examples", "c", "stream.c"), "stream");
        var (code, streamed, stderr) = HttpTools.Run(exe, [GecTiny, sentence], seconds: 60);
        Assert.That(code, Is.Zero, stderr);
        var (gcode, gout, gerr) = HttpTools.Run(DistBinary.Path, ["generate", "--model", GecTiny, "--backend", "cpu", "--json", "-n", "64", $"Correct: {sentence}\nFixed:"]);
        Assert.That(gcode, Is.Zero, gerr);
        using var doc = JsonDocument.Parse(gout);
        Assert.That(streamed, Is.EqualTo(doc.RootElement.GetProperty("text").GetString()));
        Assert.That(streamed, Is.Not.Empty);
        Assert.That(stderr, Does.Contain($"{doc.RootElement.GetProperty("token_ids").GetArrayLength()} generated"));
    }

    [Test]
    public void PythonCtypesExampleStreamsTheSameText()
    {
        const string sentence = "She was refreshingly free into shyness.";
        string exe = Build(Path.Combine(Root, "examples", "c", "stream.c"), "stream");
        var (code, fromC, stderr) = HttpTools.Run(exe, [GecTiny, sentence], seconds: 60);
        Assert.That(code, Is.Zero, stderr);
        var (pcode, fromPython, perr) = HttpTools.Run("python3", [Path.Combine(Root, "examples", "python", "stream.py"), "--lib", Library, GecTiny, sentence], seconds: 60);
        Assert.That(pcode, Is.Zero, perr);
        Assert.That(fromPython, Is.EqualTo(fromC).And.Not.Empty);
    }

    private static readonly Lock BuildGate = new();

    /// <summary>Compiles one C file against the header and dist/libfastserve.so (once per name per run).</summary>
    private string Build(string source, string name, bool asan = false)
    {
        string exe = Path.Combine(_bin, name);
        lock (BuildGate)
        {
            if (File.Exists(exe)) return exe;
            var args = new List<string> { "-std=c11", "-O1", "-g", "-Wall", "-Wextra", "-Werror", "-pthread", "-I", Path.Combine(Root, "native", "include"), source,
                "-L", Path.GetDirectoryName(Library)!, "-lfastserve", $"-Wl,-rpath,{Path.GetDirectoryName(Library)}", "-o", exe };
            if (asan) args.InsertRange(0, ["-fsanitize=address", "-fno-omit-frame-pointer"]);
            var (code, stdout, stderr) = HttpTools.Run(_cc, args, seconds: 120);
            Assert.That(code, Is.Zero, $"{_cc} {string.Join(' ', args)}:\n{stdout}{stderr}");
            return exe;
        }
    }

    private static string? Compiler()
    {
        foreach (string name in new[] { "cc", "clang", "gcc" })
            foreach (var dir in (Environment.GetEnvironmentVariable("PATH") ?? "/usr/bin").Split(':', StringSplitOptions.RemoveEmptyEntries))
                if (File.Exists(Path.Combine(dir, name))) return Path.Combine(dir, name);
        return null;
    }
}
