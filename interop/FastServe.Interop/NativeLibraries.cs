using System.Reflection;
using System.Runtime.InteropServices;
using FastServe.Runtime;

namespace FastServe.Interop;

/// <summary>
/// The one place that finds this assembly's native libraries: the CUDA driver (<c>libcuda.so.1</c>) and the kernel
/// library (<c>libfastserve_cuda.so</c>). It is installed as the assembly's <see cref="DllImportResolver"/>, so
/// every [LibraryImport] of <see cref="CudaDriver"/> and <see cref="FastServeCuda"/> binds to what it loaded.
/// </summary>
/// <remarks>
/// Kernel library: <c>$FASTSERVE_CUDA_LIB</c> (a file path) alone when set (a library named on purpose is that
/// library or an error, never a different one found elsewhere); otherwise, in order, <c>libfastserve_cuda.so</c> next to
/// the running executable (<see cref="AppContext.BaseDirectory"/>, then the directory of
/// <see cref="Environment.ProcessPath"/>); the repository's <c>dist/</c> when the executable runs from inside a
/// checkout; then the dynamic loader's default search (LD_LIBRARY_PATH, ld.so.cache, system directories).
/// Driver: <c>$FASTSERVE_CUDA_DRIVER</c> (a file path) alone when set, e.g. a CUDA forward-compatibility
/// libcuda; otherwise <c>libcuda.so.1</c>, then <c>libcuda.so</c>, both by the default search (the driver is
/// installed with the kernel module; it is never shipped next to the executable). A failed load throws
/// <see cref="FastServeException"/> <c>cuda.no_library</c> / <c>cuda.no_driver</c> whose message lists every path
/// tried and why it failed, one per line. Loads are attempted once per process; the outcome is cached.
/// </remarks>
internal static class NativeLibraries
{
    /// <summary>Library name in [LibraryImport] for the kernel library.</summary>
    public const string Kernels = "fastserve_cuda";

    /// <summary>Library name in [LibraryImport] for the CUDA driver.</summary>
    public const string Driver = "libcuda.so.1";

    public const string KernelFileName = "libfastserve_cuda.so";
    public const string KernelPathVariable = "FASTSERVE_CUDA_LIB";
    public const string DriverPathVariable = "FASTSERVE_CUDA_DRIVER";

    private static readonly Lock Gate = new();
    // Both written under Gate once; a handle of 0 with a failure means the load was tried and failed.
    private static Loaded? _kernels, _driver;
    // Set by a host that is itself a shared library (libfastserve.so), before the first load: its own directory, tried
    // first, since the process's executable is the embedding program's and says nothing about where dist/ is.
    private static string? _hostLibraryDirectory;

    /// <summary>Makes the directory of the host shared library the first place (after the variable) the kernel library
    /// is looked for. Call before the first load.</summary>
    public static void SetHostLibraryDirectory(string? directory)
    {
        lock (Gate) _hostLibraryDirectory = directory;
    }

    static NativeLibraries() => NativeLibrary.SetDllImportResolver(typeof(NativeLibraries).Assembly, Resolve);

    /// <summary>Installs the resolver (the static constructor does); call before the first P/Invoke.</summary>
    public static void EnsureResolver()
    {
    }

    /// <summary>One place the resolver looked: the path (or bare name for the default search), where the candidate
    /// came from, and why it failed (null when it loaded).</summary>
    public readonly record struct Attempt(string Path, string Origin, string? Failure);

    private sealed record Loaded(nint Handle, string? Path, IReadOnlyList<Attempt> Attempts);

    /// <summary>Loads the kernel library (once per process) and returns its handle.</summary>
    /// <exception cref="FastServeException"><c>cuda.no_library</c>, listing every path tried.</exception>
    public static nint LoadKernels()
    {
        var k = KernelsOutcome();
        if (k.Handle != 0) return k.Handle;
        throw NoLibrary(k.Attempts);
    }

    /// <summary>The cuda.no_library error: what to do, then one line per path tried with the loader's reason.</summary>
    internal static FastServeException NoLibrary(IReadOnlyList<Attempt> attempts) =>
        new("cuda.no_library",
            $"the CUDA kernel library {KernelFileName} could not be loaded; build it with ./build.sh on a machine with the CUDA toolkit " +
            $"(it lands in dist/ next to fastserve) or set {KernelPathVariable} to its path. Tried:{Describe(attempts)}");

    /// <summary>Path the kernel library was loaded from, or null.</summary>
    public static string? KernelPath => KernelsOutcome().Path;

    /// <summary>Loads the CUDA driver library (once per process) and returns its handle.</summary>
    /// <exception cref="FastServeException"><c>cuda.no_driver</c>, listing every name tried.</exception>
    public static nint LoadDriver()
    {
        var d = DriverOutcome();
        if (d.Handle != 0) return d.Handle;
        throw new FastServeException("cuda.no_driver",
            $"no NVIDIA driver: libcuda.so.1 could not be loaded (install the NVIDIA driver; in a container, run with the GPU exposed, e.g. docker --gpus all). Tried:{Describe(d.Attempts)}");
    }

    private static Loaded KernelsOutcome()
    {
        lock (Gate) return _kernels ??= TryLoad(KernelCandidates(Environment.GetEnvironmentVariable(KernelPathVariable), AppContext.BaseDirectory, Environment.ProcessPath, _hostLibraryDirectory));
    }

    private static Loaded DriverOutcome()
    {
        lock (Gate) return _driver ??= TryLoad(DriverCandidates(Environment.GetEnvironmentVariable(DriverPathVariable)));
    }

    /// <summary>Candidate paths for the driver: the variable's path alone when set, else the two default names.</summary>
    internal static List<(string Path, string Origin)> DriverCandidates(string? envPath) =>
        !string.IsNullOrEmpty(envPath)
            ? [(Path.GetFullPath(envPath), $"${DriverPathVariable}")]
            : [("libcuda.so.1", "default search"), ("libcuda.so", "default search")];

    /// <summary>Candidate paths for the kernel library, in resolver order, duplicates removed.</summary>
    internal static List<(string Path, string Origin)> KernelCandidates(string? envPath, string? baseDirectory, string? processPath,
        string? hostLibraryDirectory = null)
    {
        var list = new List<(string, string)>();
        void Add(string path, string origin)
        {
            if (!list.Exists(c => c.Item1 == path)) list.Add((path, origin));
        }
        if (!string.IsNullOrEmpty(envPath))
        {
            Add(Path.GetFullPath(envPath), $"${KernelPathVariable}");
            return list;
        }
        if (!string.IsNullOrEmpty(hostLibraryDirectory)) Add(Path.GetFullPath(Path.Combine(hostLibraryDirectory, KernelFileName)), "next to the host library");
        if (!string.IsNullOrEmpty(baseDirectory)) Add(Path.GetFullPath(Path.Combine(baseDirectory, KernelFileName)), "next to the executable");
        string? exeDir = string.IsNullOrEmpty(processPath) ? null : Path.GetDirectoryName(Path.GetFullPath(processPath));
        if (exeDir is not null) Add(Path.Combine(exeDir, KernelFileName), "next to the executable");
        foreach (var start in new[] { hostLibraryDirectory, baseDirectory, exeDir })
        {
            if (Checkout.Root(start) is { } root) Add(Path.Combine(root, "dist", KernelFileName), "repository dist/");
        }
        Add(KernelFileName, "default search");
        return list;
    }

    /// <summary>Tries each candidate in order; the first that loads wins.</summary>
    internal static (nint Handle, string? Path, IReadOnlyList<Attempt> Attempts) TryLoadForTest(IEnumerable<(string Path, string Origin)> candidates)
    {
        var l = TryLoad(candidates);
        return (l.Handle, l.Path, l.Attempts);
    }

    private static Loaded TryLoad(IEnumerable<(string Path, string Origin)> candidates)
    {
        var attempts = new List<Attempt>();
        foreach (var (path, origin) in candidates)
        {
            bool isPath = path.Contains('/');
            if (isPath && !File.Exists(path))
            {
                attempts.Add(new Attempt(path, origin, Directory.Exists(path) ? "is a directory" : "no such file"));
                continue;
            }
            try
            {
                nint h = NativeLibrary.Load(path);
                attempts.Add(new Attempt(path, origin, null));
                return new Loaded(h, path, attempts);
            }
            catch (Exception e) when (e is DllNotFoundException or BadImageFormatException)
            {
                attempts.Add(new Attempt(path, origin, LoaderReason(e.Message, path)));
            }
        }
        return new Loaded(0, null, attempts);
    }

    /// <summary>The dynamic loader's own words from a load exception: .NET wraps dlerror() in a paragraph of advice;
    /// keep the lines that come from dlerror (they name the file), joined on one line.</summary>
    internal static string LoaderReason(string message, string path)
    {
        var lines = message.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        var fromLoader = lines.Where(l => !l.StartsWith("Unable to load shared library", StringComparison.Ordinal)
                                          && !l.Contains("consider setting the LD_DEBUG", StringComparison.Ordinal)
                                          && !l.Contains("consider using a tool like strace", StringComparison.Ordinal)).ToList();
        string reason = fromLoader.Count > 0 ? string.Join("; ", fromLoader.Distinct()) : message.ReplaceLineEndings(" ");
        // dlerror repeats the path ("/x/lib.so: invalid ELF header"); the line already starts with it.
        string prefix = path + ": ";
        return reason.StartsWith(prefix, StringComparison.Ordinal) ? reason[prefix.Length..] : reason;
    }

    private static string Describe(IReadOnlyList<Attempt> attempts) =>
        string.Concat(attempts.Select(a => $"\n  {a.Path} ({a.Origin}): {a.Failure ?? "loaded"}"));

    private static nint Resolve(string name, Assembly assembly, DllImportSearchPath? searchPath)
    {
        // Returning 0 lets the runtime fall back to its own probing, which then fails with DllNotFoundException;
        // callers load explicitly first (LoadDriver/LoadKernels), so users see the listed paths instead.
        if (name == Kernels) return KernelsOutcome().Handle;
        if (name == Driver) return DriverOutcome().Handle;
        return 0;
    }
}
