using System.Diagnostics;
using NUnit.Framework;

namespace FastServe.Tests;

/// <summary>
/// The published executable the end-to-end tests drive (dist/fastserve, made by ./build.sh), refused when it was not
/// built from the sources in this checkout. build.sh stamps tests/sources-fingerprint.sh's hash of the C# sources
/// (content and path, never mtimes) into dist/fastserve.sources-sha256; <see cref="Path"/> recomputes it once per test
/// run and fails the test, naming ./build.sh, when the binary or its stamp is missing or the stamp differs. So
/// `dotnet test` after an edit fails loudly instead of testing the previous build.
/// </summary>
internal static class DistBinary
{
    /// <summary>The file next to the executable that holds the fingerprint of the sources it was published from.</summary>
    public const string StampSuffix = ".sources-sha256";

    private static readonly Lazy<string?> _problem = new(() => Check(TestModels.RepoRoot, Exe(TestModels.RepoRoot)));

    /// <summary>dist/fastserve of this checkout; fails the calling test when it is missing or stale.</summary>
    public static string Path
    {
        get
        {
            if (_problem.Value is { } problem) Assert.Fail(problem);
            return Exe(TestModels.RepoRoot);
        }
    }

    private static string Exe(string root) => System.IO.Path.Combine(root, "dist", "fastserve");

    /// <summary>Null when <paramref name="exe"/> exists and its stamp equals the fingerprint of
    /// <paramref name="root"/>'s sources; otherwise what is wrong and the command that fixes it.</summary>
    public static string? Check(string root, string exe)
    {
        const string fix = "run ./build.sh (it publishes dist/fastserve and stamps it) and test again";
        if (!File.Exists(exe)) return $"{exe} is missing: {fix}";
        string stamp = exe + StampSuffix;
        if (!File.Exists(stamp))
            return $"{exe} has no source fingerprint ({stamp}), so it may be older than the sources: {fix}";
        string built = File.ReadAllText(stamp).Trim();
        string current = Fingerprint(root);
        if (built != current)
            return $"{exe} is stale: it was built from other sources (fingerprint {Short(built)}) than this checkout's " +
                   $"runtime/, scheduler/ and interop/ ({Short(current)}): {fix}";
        return null;
    }

    /// <summary>tests/sources-fingerprint.sh over <paramref name="root"/>, the one definition build.sh stamps with.</summary>
    public static string Fingerprint(string root)
    {
        string script = System.IO.Path.Combine(TestModels.RepoRoot, "tests", "sources-fingerprint.sh");
        var psi = new ProcessStartInfo("bash") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add(script);
        psi.ArgumentList.Add(root);
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(TimeSpan.FromMinutes(1))) { p.Kill(true); throw new TimeoutException($"{script} timed out"); }
        if (p.ExitCode != 0 || stdout.Result.Trim().Length != 64)
            throw new InvalidOperationException($"{script} {root} failed ({p.ExitCode}): {stderr.Result}{stdout.Result}");
        return stdout.Result.Trim();
    }

    private static string Short(string hash) => hash.Length > 12 ? hash[..12] : hash.Length == 0 ? "(empty)" : hash;
}
