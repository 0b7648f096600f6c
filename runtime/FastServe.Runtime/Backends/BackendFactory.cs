using FastServe.Runtime.Backends.Cpu;
using FastServe.Runtime.Backends.Reference;

namespace FastServe.Runtime.Backends;

/// <summary>
/// Creates backends by their command-line name. "cpu" and "reference" are built in; backends that live in higher
/// layers (the "cuda" backend of FastServe.Interop, which the runtime must not depend on) are added by the host at
/// startup with <see cref="Register"/>, before any command runs, in every process (the CLI does it in its entry
/// point, so `serve`'s engine child, which is the same executable, has it too).
/// </summary>
public static class BackendFactory
{
    private static readonly Lock Gate = new();
    // Written under Gate by Register (startup); read lock-free afterwards through the volatile snapshot.
    private static volatile Dictionary<string, Registration> _registered = new();

    /// <summary>A backend added by the host: how to make one, and how to tell cheaply whether one could be made.</summary>
    /// <param name="Create">Makes the backend; <c>threads</c> is the --threads value (backends may ignore it).</param>
    /// <param name="Check">Throws the <see cref="FastServeException"/> that <paramref name="Create"/> would throw for a
    /// missing driver, device or library, without taking device resources; null when there is nothing to check.</param>
    public sealed record Registration(Func<int, IBackend> Create, Action? Check = null);

    /// <summary>Every name <see cref="Create"/> accepts, built-in first.</summary>
    public static IReadOnlyList<string> Names => ["cpu", "reference", .. _registered.Keys.Order(StringComparer.Ordinal)];

    /// <summary>Adds (or replaces) a backend by name. "cpu" and "reference" cannot be replaced.</summary>
    public static void Register(string name, Registration registration)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(name);
        ArgumentNullException.ThrowIfNull(registration);
        if (name is "cpu" or "reference") throw new ArgumentException($"'{name}' is a built-in backend", nameof(name));
        lock (Gate)
        {
            _registered = new Dictionary<string, Registration>(_registered) { [name] = registration };
        }
    }

    /// <summary>"cpu" (SIMD, all cores unless <paramref name="threads"/> &gt; 0), "reference" (scalar oracle), or a
    /// registered name. Unknown names: FastServeException "args.unknown_backend".</summary>
    public static IBackend Create(string name, int threads = 0) => name switch
    {
        "cpu" => new CpuBackend(threads),
        "reference" => new ReferenceBackend(),
        _ when _registered.TryGetValue(name, out var r) => r.Create(threads),
        _ => throw Unknown(name),
    };

    /// <summary>Throws what <see cref="Create"/> would for an unusable environment (no driver, no device...) without
    /// creating the backend, so a command can fail in one line before loading a model or starting processes.</summary>
    public static void Check(string name)
    {
        if (name is "cpu" or "reference") return;
        if (!_registered.TryGetValue(name, out var r)) throw Unknown(name);
        r.Check?.Invoke();
    }

    private static FastServeException Unknown(string name) =>
        new("args.unknown_backend", $"unknown backend '{name}' (available: {string.Join(", ", Names)})", "backend");
}
