namespace FastServe.Runtime.Model;

/// <summary>
/// The built-in default model: the <c>small</c> preset with seed 0, made on first use and cached under
/// <c>$FASTSERVE_HOME/models</c> (default <c>~/.cache/fastserve/models</c>).
/// </summary>
public static class DefaultModel
{
    public const string Preset = "small";
    public const ulong Seed = 0;

    public static string CacheRoot
    {
        get
        {
            string? home = Environment.GetEnvironmentVariable("FASTSERVE_HOME");
            if (string.IsNullOrEmpty(home))
            {
                string? xdg = Environment.GetEnvironmentVariable("XDG_CACHE_HOME");
                string baseDir = !string.IsNullOrEmpty(xdg) ? xdg : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache");
                home = Path.Combine(baseDir, "fastserve");
            }
            return Path.Combine(home, "models");
        }
    }

    public static string Directory => Path.Combine(CacheRoot, $"{Preset}-seed{Seed}");

    /// <summary>Returns the default model's directory, making it first if it is not cached yet.</summary>
    public static string Ensure(Action<long, long>? progress = null)
    {
        string dir = Directory;
        if (File.Exists(Path.Combine(dir, "config.json"))) return dir;
        System.IO.Directory.CreateDirectory(CacheRoot);
        try
        {
            ModelMaker.Make(ModelPreset.Parse(Preset), dir, Seed, progress);
        }
        catch (Exception e) when (e is IOException or FastServeException && File.Exists(Path.Combine(dir, "config.json")))
        {
            // Another process made it at the same time; its rename won.
        }
        return dir;
    }
}
