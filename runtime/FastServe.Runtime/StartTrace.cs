using System.Diagnostics;
using System.Globalization;

namespace FastServe.Runtime;

/// <summary>
/// Start-up stages of this process, for the ready event of `fastserve serve` (docs/autoscale.md). Code on the start
/// path calls <see cref="Mark"/> as each stage ends (model mapped, tokenizer loaded, warm-up done...); a replica's
/// children write their marks to a start file (<see cref="WriteFile"/>) that the supervisor reads once the replica is
/// ready. Marks are CLOCK_MONOTONIC timestamps (<see cref="Stopwatch.GetTimestamp"/> on Linux), so the supervisor can
/// place every child's stages on its own time line. Thread-safe; a stage marked twice keeps its first time.
/// </summary>
public static class StartTrace
{
    private static readonly Lock Gate = new();
    private static readonly List<(string Stage, long Ticks)> Marks = [];   // guarded by Gate
    private static long _execTicks;                                        // 0 until first asked; then fixed

    /// <summary>Records that <paramref name="stage"/> ended now (the first call per stage wins).</summary>
    public static void Mark(string stage)
    {
        long now = Stopwatch.GetTimestamp();
        lock (Gate)
        {
            foreach (var m in Marks) if (m.Stage == stage) return;
            Marks.Add((stage, now));
        }
    }

    /// <summary>The marks so far, in the order they were made.</summary>
    public static IReadOnlyList<(string Stage, long Ticks)> Snapshot()
    {
        lock (Gate) return [.. Marks];
    }

    /// <summary>When this process was exec'd, as a <see cref="Stopwatch"/> timestamp; 0 where unknown (not Linux).
    /// Resolution 10 ms (the kernel's start time is in USER_HZ ticks).</summary>
    public static long ExecTicks
    {
        get
        {
            long t = Volatile.Read(ref _execTicks);
            if (t != 0) return t;
            double ms = SinceExecMs();
            t = double.IsFinite(ms) ? Stopwatch.GetTimestamp() - (long)(ms * Stopwatch.Frequency / 1000) : 0;
            Interlocked.CompareExchange(ref _execTicks, t, 0);
            return Volatile.Read(ref _execTicks);
        }
    }

    /// <summary>Milliseconds from <paramref name="originTicks"/> to <paramref name="ticks"/> (both Stopwatch
    /// timestamps); NaN when either is unknown (0).</summary>
    public static double Ms(long originTicks, long ticks) =>
        originTicks == 0 || ticks == 0 ? double.NaN : (ticks - originTicks) * 1000.0 / Stopwatch.Frequency;

    // Milliseconds since this process was exec'd: its start time in /proc/self/stat (clock ticks since boot; USER_HZ
    // is 100 on Linux whatever the kernel's HZ) against /proc/uptime. NaN off Linux.
    private static double SinceExecMs()
    {
        try
        {
            string stat = File.ReadAllText("/proc/self/stat");
            var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
            double startSeconds = long.Parse(fields[19], CultureInfo.InvariantCulture) / 100.0;
            double uptime = double.Parse(File.ReadAllText("/proc/uptime").Split(' ')[0], CultureInfo.InvariantCulture);
            return Math.Max(0, (uptime - startSeconds) * 1000);
        }
        catch (Exception e) when (e is IOException or FormatException or IndexOutOfRangeException or UnauthorizedAccessException)
        {
            return double.NaN;
        }
    }

    /// <summary>Writes the start file: one line per stage, <c>stage nanoseconds</c> (CLOCK_MONOTONIC), the first line
    /// being <c>exec</c> (when this process was exec'd) where known. Written to a temporary name and renamed, so a
    /// reader sees the whole file or none. An I/O error is reported on stderr and otherwise ignored: the start file
    /// is a report, never a reason to fail a start.</summary>
    public static void WriteFile(string path)
    {
        var lines = new List<string>();
        if (ExecTicks != 0) lines.Add($"exec {Nanos(ExecTicks)}");
        foreach (var (stage, ticks) in Snapshot()) lines.Add($"{stage} {Nanos(ticks)}");
        string tmp = path + ".tmp";
        try
        {
            File.WriteAllLines(tmp, lines);
            File.Move(tmp, path, overwrite: true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            Console.Error.WriteLine($"fastserve: could not write the start file {path}: {e.Message}");
        }
    }

    /// <summary>Reads a start file written by <see cref="WriteFile"/> as Stopwatch timestamps by stage; empty when the
    /// file is missing or unreadable, and lines that do not parse are skipped.</summary>
    public static Dictionary<string, long> ReadFile(string path)
    {
        var stages = new Dictionary<string, long>(StringComparer.Ordinal);
        string[] lines;
        try { lines = File.ReadAllLines(path); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return stages; }
        foreach (var line in lines)
        {
            int sp = line.IndexOf(' ');
            if (sp <= 0 || !long.TryParse(line.AsSpan(sp + 1), NumberStyles.None, CultureInfo.InvariantCulture, out long ns)) continue;
            stages.TryAdd(line[..sp], (long)(ns * (Stopwatch.Frequency / 1e9)));
        }
        return stages;
    }

    private static long Nanos(long ticks) => (long)(ticks * (1e9 / Stopwatch.Frequency));
}
