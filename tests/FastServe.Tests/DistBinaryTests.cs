using NUnit.Framework;

namespace FastServe.Tests;

/// <summary>The stale-binary check of the end-to-end tests, on a scratch checkout: a fresh stamp passes; an edit, an
/// added source, a missing stamp or binary fail naming ./build.sh; what the build does not read changes nothing.</summary>
public class DistBinaryTests
{
    private static (string Root, string Exe) Scratch()
    {
        string root = TestModels.TempDir("distcheck");
        Directory.CreateDirectory(Path.Combine(root, "runtime", "App"));
        Directory.CreateDirectory(Path.Combine(root, "scheduler", "Lib", "obj"));
        Directory.CreateDirectory(Path.Combine(root, "dist"));
        File.WriteAllText(Path.Combine(root, "runtime", "App", "App.csproj"), "<Project />\n");
        File.WriteAllText(Path.Combine(root, "runtime", "App", "Program.cs"), "class P { static void Main() { } }\n");
        File.WriteAllText(Path.Combine(root, "scheduler", "Lib", "Lib.cs"), "class L { }\n");
        File.WriteAllText(Path.Combine(root, "Directory.Build.props"), "<Project />\n");
        string exe = Path.Combine(root, "dist", "fastserve");
        File.WriteAllText(exe, "binary");
        return (root, exe);
    }

    private static void Stamp(string root, string exe) => File.WriteAllText(exe + DistBinary.StampSuffix, DistBinary.Fingerprint(root) + "\n");

    [Test]
    public void FreshStampPasses()
    {
        var (root, exe) = Scratch();
        Stamp(root, exe);
        Assert.That(DistBinary.Check(root, exe), Is.Null);
    }

    [TestCase("runtime/App/Program.cs")]
    [TestCase("scheduler/Lib/Lib.cs")]
    [TestCase("runtime/App/App.csproj")]
    [TestCase("Directory.Build.props")]
    public void AnEditedSourceMakesItStale(string file)
    {
        var (root, exe) = Scratch();
        Stamp(root, exe);
        File.AppendAllText(Path.Combine(root, file), "// edited\n");
        Assert.That(DistBinary.Check(root, exe), Does.Contain("is stale").And.Contain("./build.sh"));
    }

    [Test]
    public void AnAddedOrRemovedSourceMakesItStale()
    {
        var (root, exe) = Scratch();
        Stamp(root, exe);
        string added = Path.Combine(root, "interop", "New.cs");
        Directory.CreateDirectory(Path.GetDirectoryName(added)!);
        File.WriteAllText(added, "class N { }\n");
        Assert.That(DistBinary.Check(root, exe), Does.Contain("is stale"));
        File.Delete(added);
        Assert.That(DistBinary.Check(root, exe), Is.Null);
        File.Delete(Path.Combine(root, "scheduler", "Lib", "Lib.cs"));
        Assert.That(DistBinary.Check(root, exe), Does.Contain("is stale"));
    }

    [Test]
    public void MtimesBuildOutputsAndDocsDoNotCount()
    {
        var (root, exe) = Scratch();
        Stamp(root, exe);
        File.SetLastWriteTimeUtc(Path.Combine(root, "runtime", "App", "Program.cs"), DateTime.UtcNow.AddHours(1));
        File.WriteAllText(Path.Combine(root, "scheduler", "Lib", "obj", "Lib.g.cs"), "generated");
        File.WriteAllText(Path.Combine(root, "scheduler", "README.md"), "docs");
        File.WriteAllText(Path.Combine(root, "tests.cs"), "not under runtime/, scheduler/ or interop/");
        Assert.That(DistBinary.Check(root, exe), Is.Null);
    }

    [Test]
    public void MissingStampOrBinaryIsRefused()
    {
        var (root, exe) = Scratch();
        Assert.That(DistBinary.Check(root, exe), Does.Contain("has no source fingerprint").And.Contain("./build.sh"));
        Stamp(root, exe);
        File.Delete(exe);
        Assert.That(DistBinary.Check(root, exe), Does.Contain("is missing").And.Contain("./build.sh"));
    }

    [Test]
    public void FingerprintDependsOnContentAndPath()
    {
        var (root, _) = Scratch();
        string before = DistBinary.Fingerprint(root);
        Assert.That(before, Does.Match("^[0-9a-f]{64}$"));
        Assert.That(DistBinary.Fingerprint(root), Is.EqualTo(before), "deterministic");
        File.Move(Path.Combine(root, "scheduler", "Lib", "Lib.cs"), Path.Combine(root, "scheduler", "Lib", "Lib2.cs"));
        Assert.That(DistBinary.Fingerprint(root), Is.Not.EqualTo(before), "a rename counts");
    }
}
