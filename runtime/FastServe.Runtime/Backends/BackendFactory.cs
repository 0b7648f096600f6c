using FastServe.Runtime.Backends.Cpu;
using FastServe.Runtime.Backends.Reference;

namespace FastServe.Runtime.Backends;

/// <summary>Creates backends by their command-line name.</summary>
public static class BackendFactory
{
    public static IReadOnlyList<string> Names { get; } = ["cpu", "reference"];

    /// <summary>"cpu" (SIMD, all cores unless <paramref name="threads"/> &gt; 0) or "reference" (scalar oracle).
    /// Unknown names: FastServeException "args.unknown_backend".</summary>
    public static IBackend Create(string name, int threads = 0) => name switch
    {
        "cpu" => new CpuBackend(threads),
        "reference" => new ReferenceBackend(),
        _ => throw new FastServeException("args.unknown_backend", $"unknown backend '{name}' (available: {string.Join(", ", Names)})", "backend"),
    };
}
