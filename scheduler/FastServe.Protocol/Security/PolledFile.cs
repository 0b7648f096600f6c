namespace FastServe.Protocol.Security;

/// <summary>
/// One file watched by polling its modification time and size (the way the router's <c>--config</c> watcher looks
/// once a second): no inotify, so it works the same on bind mounts, Kubernetes secret volumes (a symlink swap) and
/// network file systems. Not thread-safe: one poller (a timer callback) owns it.
/// </summary>
internal sealed class PolledFile(string path)
{
    private long _ticks = long.MinValue, _length = -1;

    /// <summary>The watched path, as given.</summary>
    public string Path { get; } = path;

    /// <summary>
    /// True when the file's modification time or size differs from the last call's (the first call: true when the
    /// file exists). A file that cannot be read (gone, no permission) counts as unchanged: the last good contents stay.
    /// </summary>
    public bool Changed()
    {
        try
        {
            var info = new FileInfo(Path);
            if (!info.Exists) return false;
            long ticks = info.LastWriteTimeUtc.Ticks, length = info.Length;
            if (ticks == _ticks && length == _length) return false;
            _ticks = ticks;
            _length = length;
            return true;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return false;
        }
    }
}
