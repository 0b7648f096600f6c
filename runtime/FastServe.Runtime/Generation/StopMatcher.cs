namespace FastServe.Runtime.Generation;

/// <summary>
/// Finds stop strings in streamed text. Text that might be the start of a stop string is held back until the
/// next delta decides it, so a streaming client never sees any part of a stop string.
/// </summary>
public sealed class StopMatcher
{
    private readonly IReadOnlyList<string> _stops;
    private string _held = "";

    public StopMatcher(IReadOnlyList<string> stops) => _stops = stops;

    public bool Stopped { get; private set; }

    /// <summary>Feeds a delta; returns the text now safe to emit. Sets <see cref="Stopped"/> when a stop string appears
    /// (the returned text then ends just before it).</summary>
    public string Append(string delta)
    {
        if (Stopped) return "";
        if (_stops.Count == 0) return delta;
        string s = _held + delta;
        int cut = -1;
        foreach (var stop in _stops)
        {
            int i = s.IndexOf(stop, StringComparison.Ordinal);
            if (i >= 0 && (cut < 0 || i < cut)) cut = i;
        }
        if (cut >= 0)
        {
            Stopped = true;
            _held = "";
            return s[..cut];
        }
        int keep = 0;
        foreach (var stop in _stops)
        {
            for (int k = Math.Min(stop.Length - 1, s.Length); k > keep; k--)
            {
                if (s.AsSpan(s.Length - k).SequenceEqual(stop.AsSpan(0, k))) { keep = k; break; }
            }
        }
        _held = s[(s.Length - keep)..];
        return s[..(s.Length - keep)];
    }

    /// <summary>Releases held text at the end of generation (it did not turn into a stop string).</summary>
    public string Flush()
    {
        string s = Stopped ? "" : _held;
        _held = "";
        return s;
    }
}
