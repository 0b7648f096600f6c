using FastServe.Interop;
using NUnit.Framework;

namespace FastServe.Tests.Interop;

/// <summary>The resolver's order and its failure message (in process; the published binary is driven in CudaCliTests).</summary>
public class NativeLibraryResolverTests
{
    [Test]
    public void CandidatesComeInResolverOrder()
    {
        string repo = TestModels.TempDir("repo");
        File.WriteAllText(Path.Combine(repo, "FastServe.sln"), "");
        string bin = Path.Combine(repo, "runtime", "bin");
        Directory.CreateDirectory(bin);
        string other = TestModels.TempDir("exe");

        Assert.That(NativeLibraries.KernelCandidates("/opt/custom/libfs.so", bin, Path.Combine(other, "fastserve")),
            Is.EqualTo(new[] { ("/opt/custom/libfs.so", "$FASTSERVE_CUDA_LIB") }), "a library named on purpose is the only candidate");
        var c = NativeLibraries.KernelCandidates(null, bin, Path.Combine(other, "fastserve"));
        Assert.That(c.Select(x => x.Path), Is.EqualTo(new[]
        {
            Path.Combine(bin, "libfastserve_cuda.so"),
            Path.Combine(other, "libfastserve_cuda.so"),
            Path.Combine(repo, "dist", "libfastserve_cuda.so"),
            "libfastserve_cuda.so",
        }));
        Assert.That(c[0].Origin, Is.EqualTo("next to the executable"));
        Assert.That(c[^1].Origin, Is.EqualTo("default search"));
    }

    [Test]
    public void AHostSharedLibrarysDirectoryComesFirstAndFindsItsRepository()
    {
        // libfastserve.so embedded in some program: the program's directory says nothing; the library's own does.
        string repo = TestModels.TempDir("repo-lib");
        File.WriteAllText(Path.Combine(repo, "FastServe.sln"), "");
        string dist = Path.Combine(repo, "dist");
        Directory.CreateDirectory(dist);
        string app = TestModels.TempDir("app");
        var c = NativeLibraries.KernelCandidates(null, app, Path.Combine(app, "mail-client"), dist);
        Assert.That(c.Select(x => x.Path), Is.EqualTo(new[]
        {
            Path.Combine(dist, "libfastserve_cuda.so"),
            Path.Combine(app, "libfastserve_cuda.so"),
            "libfastserve_cuda.so",
        }), "the repository's dist/ is the host library's own directory, listed once");
        Assert.That(c[0].Origin, Is.EqualTo("next to the host library"));
        Assert.That(NativeLibraries.KernelCandidates("/opt/x.so", app, null, dist).Select(x => x.Path), Is.EqualTo(new[] { "/opt/x.so" }));
    }

    [Test]
    public void DriverIsTheVariablesPathAloneOrTheDefaultNames()
    {
        Assert.That(NativeLibraries.DriverCandidates("/compat/libcuda.so.1"), Is.EqualTo(new[] { ("/compat/libcuda.so.1", "$FASTSERVE_CUDA_DRIVER") }));
        Assert.That(NativeLibraries.DriverCandidates(null).Select(c => c.Path), Is.EqualTo(new[] { "libcuda.so.1", "libcuda.so" }));
    }

    [Test]
    public void CandidatesWithoutVariableOrRepositoryAndNoDuplicates()
    {
        string dir = TestModels.TempDir("plain");
        var c = NativeLibraries.KernelCandidates(null, dir, Path.Combine(dir, "fastserve"));
        // The executable's directory is the base directory: listed once. No FastServe.sln above a temp dir.
        Assert.That(c.Select(x => x.Path), Is.EqualTo(new[] { Path.Combine(dir, "libfastserve_cuda.so"), "libfastserve_cuda.so" }));
    }

    [Test]
    public void EveryFailedPathIsListedWithItsReason()
    {
        string dir = TestModels.TempDir("badlib");
        string missing = Path.Combine(dir, "missing.so");
        string notLib = Path.Combine(dir, "libnot.so");
        File.WriteAllText(notLib, new string('x', 4096));
        var (handle, path, attempts) = NativeLibraries.TryLoadForTest(
            [(missing, "$FASTSERVE_CUDA_LIB"), (notLib, "next to the executable"), (dir, "repository dist/"), ("libfastserve_cuda_absent.so", "default search")]);
        Assert.That(handle, Is.EqualTo((nint)0));
        Assert.That(path, Is.Null);
        Assert.That(attempts, Has.Count.EqualTo(4));
        Assert.That(attempts[0].Failure, Is.EqualTo("no such file"));
        Assert.That(attempts[1].Failure, Does.Contain("invalid ELF header").Or.Contain("too short"), attempts[1].Failure);
        Assert.That(attempts[1].Failure, Does.Not.Contain("Unable to load shared library"), "the .NET advice paragraph is dropped");
        Assert.That(attempts[2].Failure, Is.EqualTo("is a directory"));
        Assert.That(attempts[3].Failure, Does.Contain("cannot open shared object file"));

        var e = NativeLibraries.NoLibrary(attempts);
        Assert.That(e.Code, Is.EqualTo("cuda.no_library"));
        var lines = e.Message.Split('\n');
        Assert.That(lines, Has.Length.EqualTo(5), e.Message);
        Assert.That(lines[1], Does.StartWith($"  {missing} ($FASTSERVE_CUDA_LIB): no such file"));
        Assert.That(lines[2], Does.StartWith($"  {notLib} (next to the executable): "));
        Assert.That(lines[4], Does.StartWith("  libfastserve_cuda_absent.so (default search): "));
    }

    [Test]
    public void LoadingStopsAtTheFirstLibraryThatLoads()
    {
        var (handle, path, attempts) = NativeLibraries.TryLoadForTest([("/nonexistent/libx.so", "first"), ("libc.so.6", "default search"), ("libm.so.6", "never tried")]);
        Assert.That(handle, Is.Not.EqualTo((nint)0));
        Assert.That(path, Is.EqualTo("libc.so.6"));
        Assert.That(attempts.Select(a => a.Failure), Is.EqualTo(new string?[] { "no such file", null }));
    }

    [Test]
    public void LoaderReasonKeepsTheLoadersWords()
    {
        const string msg = "Unable to load shared library '/x/lib.so' or one of its dependencies. In order to help diagnose loading problems, consider using a tool like strace. If you're using glibc, consider setting the LD_DEBUG environment variable: \n/x/lib.so: invalid ELF header";
        Assert.That(NativeLibraries.LoaderReason(msg, "/x/lib.so"), Is.EqualTo("invalid ELF header"));
    }
}
