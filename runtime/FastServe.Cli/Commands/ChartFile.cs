using FastServe.Runtime;

namespace FastServe.Cli.Commands;

/// <summary>Writes a chart the commands drew with ScottPlot: makes the folder, and turns SkiaSharp's native library
/// failing to load (libSkiaSharp.so must sit next to the executable) into one clear error with the caller's code.</summary>
internal static class ChartFile
{
    public static void Save(string path, string unavailableCode, Action<string> save)
    {
        try
        {
            string? dir = Path.GetDirectoryName(Path.GetFullPath(path));
            if (dir is not null) Directory.CreateDirectory(dir);
            save(path);
        }
        catch (Exception e) when (e is TypeInitializationException or DllNotFoundException or EntryPointNotFoundException)
        {
            throw new FastServeException(unavailableCode,
                $"cannot draw the chart: SkiaSharp's native library did not load ({e.GetBaseException().Message}); libSkiaSharp.so must sit next to the fastserve executable", path);
        }
    }
}
