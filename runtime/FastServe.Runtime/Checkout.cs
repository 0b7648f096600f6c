namespace FastServe.Runtime;

/// <summary>
/// The FastServe source checkout a process runs from, if any: where tests and `dotnet run` find what ./build.sh put in
/// dist/ (the CUDA kernel library, the Vulkan shaders) when nothing lies next to the executable.
/// </summary>
public static class Checkout
{
    /// <summary>The nearest directory at or above <paramref name="start"/> that holds FastServe.sln, or null.</summary>
    public static string? Root(string? start)
    {
        if (string.IsNullOrEmpty(start)) return null;
        for (var d = new DirectoryInfo(Path.GetFullPath(start)); d is not null; d = d.Parent)
        {
            if (File.Exists(Path.Combine(d.FullName, "FastServe.sln"))) return d.FullName;
        }
        return null;
    }
}
