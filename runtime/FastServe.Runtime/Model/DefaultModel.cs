namespace FastServe.Runtime.Model;

/// <summary>
/// The built-in default model, used by every command given no <c>--model</c>: the shipped, trained grammar-correction
/// model <c>gec-small</c> (tools/gec/README.md; prompt <c>Correct: &lt;sentence&gt;\nFixed:</c>). Nothing is made or
/// downloaded; the directory is found, in this order:
/// <list type="number">
/// <item><c>$FASTSERVE_DEFAULT_MODEL</c> when set and non-empty; it must hold config.json, else
/// <c>model.default_not_found</c> (no fallback, so a mistyped path is never silently replaced by another model);</item>
/// <item><c>models/gec-small</c> next to the executable (<see cref="AppContext.BaseDirectory"/>);</item>
/// <item><c>models/gec-small</c> in one of the <see cref="MaxLevelsUp"/> directories above it, so <c>dist/fastserve</c>
/// and the test binaries of a checkout find the repository's copy.</item>
/// </list>
/// A container image carries no weights (deploy/Dockerfile): mount the model and pass <c>--model</c> or set
/// <c>FASTSERVE_DEFAULT_MODEL</c>.
/// </summary>
public static class DefaultModel
{
    /// <summary>The default model's name, also the directory name under <c>models/</c>.</summary>
    public const string Name = "gec-small";

    /// <summary>The environment variable that names the default model's directory, overriding the search.</summary>
    public const string EnvironmentVariable = "FASTSERVE_DEFAULT_MODEL";

    /// <summary>How many parent directories of the executable's directory are searched for <c>models/gec-small</c>.</summary>
    public const int MaxLevelsUp = 6;

    /// <summary>Error code when no default model is found (docs/errors.md).</summary>
    public const string NotFoundCode = "model.default_not_found";

    /// <summary>The default model's directory, resolved from the environment and <see cref="AppContext.BaseDirectory"/>
    /// as the type's summary says.</summary>
    /// <exception cref="FastServeException"><c>model.default_not_found</c>: the variable names a directory without
    /// config.json, or the search found none; the message lists every place looked at.</exception>
    public static string Resolve() =>
        Resolve(Environment.GetEnvironmentVariable(EnvironmentVariable), AppContext.BaseDirectory);

    /// <summary>The default model's directory given the value of <c>$FASTSERVE_DEFAULT_MODEL</c>
    /// (<paramref name="envValue"/>, null or empty when unset) and the executable's directory
    /// (<paramref name="baseDirectory"/>). The returned path is absolute.</summary>
    /// <exception cref="FastServeException"><c>model.default_not_found</c>, as <see cref="Resolve()"/>.</exception>
    public static string Resolve(string? envValue, string baseDirectory)
    {
        if (!string.IsNullOrEmpty(envValue))
        {
            string dir = Path.GetFullPath(envValue);
            if (HasConfig(dir)) return dir;
            throw new FastServeException(NotFoundCode,
                $"${EnvironmentVariable} names a directory without config.json; set it to a model directory " +
                "(Hugging Face layout) or unset it", dir);
        }

        var looked = new List<string>();
        var d = new DirectoryInfo(Path.GetFullPath(baseDirectory));
        for (int level = 0; d is not null && level <= MaxLevelsUp; level++, d = d.Parent)
        {
            string candidate = Path.Combine(d.FullName, "models", Name);
            if (HasConfig(candidate)) return candidate;
            looked.Add(candidate);
        }
        throw new FastServeException(NotFoundCode,
            $"the built-in default model ({Name}) was not found (looked for config.json in {string.Join(", ", looked)}); " +
            $"pass --model DIR, or set {EnvironmentVariable} to the model's directory");
    }

    private static bool HasConfig(string dir) => File.Exists(Path.Combine(dir, "config.json"));
}
