using FastServe.Runtime;
using FastServe.Runtime.Model;
using NUnit.Framework;

namespace FastServe.Tests.Model;

/// <summary>Where the built-in default model (gec-small) is found: $FASTSERVE_DEFAULT_MODEL, next to the executable,
/// or in a directory above it; never made.</summary>
public class DefaultModelTests
{
    private static string WithConfig(string dir)
    {
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, "config.json"), "{}");
        return dir;
    }

    [Test]
    public void TheVariableWinsWhenItNamesAModelDirectory()
    {
        string model = WithConfig(Path.Combine(TestModels.TempDir("defmodel"), "mine"));
        string exeDir = TestModels.TempDir("defmodel-exe");
        WithConfig(Path.Combine(exeDir, "models", DefaultModel.Name));
        Assert.That(DefaultModel.Resolve(model, exeDir), Is.EqualTo(model));
    }

    [Test]
    public void TheVariableNamingADirectoryWithoutConfigIsAnErrorNotAFallback()
    {
        string empty = TestModels.TempDir("defmodel-empty");
        string exeDir = TestModels.TempDir("defmodel-exe");
        WithConfig(Path.Combine(exeDir, "models", DefaultModel.Name));
        var e = Assert.Throws<FastServeException>(() => DefaultModel.Resolve(empty, exeDir))!;
        Assert.That(e.Code, Is.EqualTo("model.default_not_found"));
        Assert.That(e.Path, Is.EqualTo(empty));
        Assert.That(e.Message, Does.Contain(DefaultModel.EnvironmentVariable));
        Assert.That(() => DefaultModel.Resolve(Path.Combine(empty, "missing"), exeDir),
            Throws.InstanceOf<FastServeException>().With.Property(nameof(FastServeException.Code)).EqualTo("model.default_not_found"));
    }

    [Test]
    public void NextToTheExecutableThenUpToSixLevelsAbove()
    {
        string root = TestModels.TempDir("defmodel-tree");
        string exeDir = Path.Combine(root, "a", "b", "c", "d", "e", "f");
        Directory.CreateDirectory(exeDir);
        string above = WithConfig(Path.Combine(root, "models", DefaultModel.Name)); // 6 levels above exeDir
        Assert.That(DefaultModel.Resolve(null, exeDir), Is.EqualTo(above));
        Assert.That(DefaultModel.Resolve("", exeDir), Is.EqualTo(above), "an empty variable counts as unset");
        string beside = WithConfig(Path.Combine(exeDir, "models", DefaultModel.Name));
        Assert.That(DefaultModel.Resolve(null, exeDir), Is.EqualTo(beside), "next to the executable first");

        string deeper = Path.Combine(exeDir, "g");
        Directory.CreateDirectory(deeper);
        Directory.Delete(beside, true);
        var e = Assert.Throws<FastServeException>(() => DefaultModel.Resolve(null, deeper))!;
        Assert.That(e.Code, Is.EqualTo("model.default_not_found"), "7 levels up is not searched");
        Assert.That(e.Message, Does.Contain(Path.Combine(deeper, "models", DefaultModel.Name))
            .And.Contain("--model").And.Contain(DefaultModel.EnvironmentVariable));
    }

    [Test]
    public void TheTestBinariesFindTheCheckoutsCopy()
    {
        if (!string.IsNullOrEmpty(Environment.GetEnvironmentVariable(DefaultModel.EnvironmentVariable)))
            Assert.Ignore($"{DefaultModel.EnvironmentVariable} is set");
        Assert.That(DefaultModel.Resolve(), Is.EqualTo(Path.Combine(TestModels.RepoRoot, "models", DefaultModel.Name)));
    }
}
