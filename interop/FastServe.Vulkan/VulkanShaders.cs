using FastServe.Runtime;

namespace FastServe.Vulkan;

/// <summary>
/// Finds and reads the backend's SPIR-V files (<c>&lt;op&gt;.spv</c>, built from native/vulkan/shaders by glslc). Places, in
/// order: <c>$FASTSERVE_VULKAN_SHADERS</c> alone when set (a directory named on purpose is that directory or an error);
/// otherwise <c>vulkan/</c> next to the host shared library (libfastserve.so, when it set one), next to the executable (<see cref="AppContext.BaseDirectory"/>, then the directory of
/// <see cref="Environment.ProcessPath"/>), then the repository's <c>dist/vulkan</c> when the executable runs from inside
/// a checkout (the nearest directory above it holding FastServe.sln). The first directory holding every file of
/// <see cref="Names"/> wins; none: <c>vulkan.no_shaders</c>, listing each place tried and what it lacked.
/// </summary>
public static class VulkanShaders
{
    public const string DirectoryVariable = "FASTSERVE_VULKAN_SHADERS";

    // Set by a host that is itself a shared library (libfastserve.so) before the first lookup: its own directory, whose
    // vulkan/ is tried first, since the process's executable is the embedding program's.
    private static volatile string? _hostLibraryDirectory;

    /// <summary>Makes <c>vulkan/</c> next to the host shared library the first place (after the variable) looked in.</summary>
    public static void SetHostLibraryDirectory(string? directory) => _hostLibraryDirectory = directory;

    /// <summary>Every shader the backend loads, one per op.</summary>
    public static readonly string[] Names =
        ["embedding", "rmsnorm", "add", "matmul", "matmul_subgroup", "matmul_tiled", "rope", "silu_gate", "kv_store", "attention", "gather_rows"];

    /// <summary>The directory the shaders are loaded from.</summary>
    /// <exception cref="VulkanException">vulkan.no_shaders.</exception>
    public static string Directory()
    {
        var tried = new List<string>();
        foreach (var (dir, origin) in Candidates())
        {
            string? lack = Lacks(dir);
            if (lack is null) return dir;
            tried.Add($"{dir} ({origin}): {lack}");
        }
        throw new VulkanException("vulkan.no_shaders",
            $"no Vulkan shaders: build them with ./build.sh (needs glslc) or set {DirectoryVariable}; tried {string.Join("; ", tried)}");
    }

    /// <summary>Whether <paramref name="directory"/> holds <c>&lt;name&gt;.spv</c>: for the optional shaders outside
    /// <see cref="Names"/> (matmul_coopmat, built only with a compiler that knows GL_KHR_cooperative_matrix).</summary>
    public static bool Has(string directory, string name) => File.Exists(Path.Combine(directory, name + ".spv"));

    /// <summary>Reads <c>&lt;name&gt;.spv</c> from <paramref name="directory"/>.</summary>
    /// <exception cref="VulkanException">vulkan.no_shaders when the file is gone or not SPIR-V.</exception>
    public static byte[] Read(string directory, string name)
    {
        string path = Path.Combine(directory, name + ".spv");
        byte[] code;
        try { code = File.ReadAllBytes(path); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new VulkanException("vulkan.no_shaders", $"cannot read {path}: {e.Message}");
        }
        // SPIR-V: whole 32-bit words, starting with the magic number 0x07230203 (little-endian here).
        if (code.Length < 20 || code.Length % 4 != 0 || BitConverter.ToUInt32(code, 0) != 0x07230203)
            throw new VulkanException("vulkan.no_shaders", $"{path} is not a SPIR-V module; rebuild the shaders with ./build.sh");
        return code;
    }

    private static IEnumerable<(string Dir, string Origin)> Candidates()
    {
        if (Environment.GetEnvironmentVariable(DirectoryVariable) is { Length: > 0 } env)
        {
            yield return (Path.GetFullPath(env), DirectoryVariable);
            yield break;
        }
        var seen = new HashSet<string>(StringComparer.Ordinal);
        string? exeDir = Environment.ProcessPath is { } p ? Path.GetDirectoryName(p) : null;
        string? host = _hostLibraryDirectory;
        foreach (var (start, origin) in new (string?, string)[] { (host, "next to the host library"), (AppContext.BaseDirectory, "next to the executable"), (exeDir, "next to the process") })
        {
            if (string.IsNullOrEmpty(start)) continue;
            string d = Path.GetFullPath(Path.Combine(start, "vulkan"));
            if (seen.Add(d)) yield return (d, origin);
        }
        foreach (var start in new[] { host, AppContext.BaseDirectory, exeDir })
        {
            if (Checkout.Root(start) is { } root && seen.Add(Path.Combine(root, "dist", "vulkan")))
                yield return (Path.Combine(root, "dist", "vulkan"), "the repository's dist");
        }
    }

    private static string? Lacks(string dir)
    {
        if (!System.IO.Directory.Exists(dir)) return "no such directory";
        var missing = Names.Where(n => !File.Exists(Path.Combine(dir, n + ".spv"))).ToList();
        return missing.Count == 0 ? null : $"lacks {string.Join(", ", missing.Select(n => n + ".spv"))}";
    }
}
