using FastServe.Runtime.Model;

namespace FastServe.Tests;

/// <summary>Models made once per test run (deterministic presets) in a temp directory shared by the tests.</summary>
public static class TestModels
{
    private static readonly Lazy<string> _tiny = new(() => Make(ModelPreset.Tiny, 7));
    private static readonly Lazy<string> _small = new(() => Make(ModelPreset.Small, 0));

    public static string Root { get; } = Path.Combine(Path.GetTempPath(), $"fastserve-tests-{Environment.ProcessId}");

    public static string Tiny => _tiny.Value;
    public static string Small => _small.Value;

    private static string Make(ModelPreset p, ulong seed)
    {
        string dir = Path.Combine(Root, $"{p.Name}-{seed}");
        if (!File.Exists(Path.Combine(dir, "config.json"))) ModelMaker.Make(p, dir, seed);
        return dir;
    }

    /// <summary>A fresh empty temp directory under the run's root.</summary>
    public static string TempDir(string name)
    {
        string d = Path.Combine(Root, name + "-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(d);
        return d;
    }

    /// <summary>The repository root (holds FastServe.sln).</summary>
    public static string RepoRoot
    {
        get
        {
            var d = new DirectoryInfo(AppContext.BaseDirectory);
            while (d is not null && !File.Exists(Path.Combine(d.FullName, "FastServe.sln"))) d = d.Parent;
            return d?.FullName ?? throw new InvalidOperationException("FastServe.sln not found above the test binaries");
        }
    }
}

[NUnit.Framework.SetUpFixture]
public sealed class TestRunCleanup
{
    [NUnit.Framework.OneTimeTearDown]
    public void RemoveTempModels()
    {
        if (Directory.Exists(TestModels.Root)) Directory.Delete(TestModels.Root, true);
    }
}
