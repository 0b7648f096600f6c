using System.Buffers;
using System.Text;

namespace FastServe.Runtime.Generation;

/// <summary>
/// Finds stop strings in streamed text. Text that might be the start of a stop string is held back until the
/// next delta decides it, so a streaming client never sees any part of a stop string. Works on UTF-8 bytes
/// (<see cref="AppendUtf8"/>, the serving path, no allocation per delta); the string methods wrap it. Matching the
/// UTF-8 of whole characters byte for byte is the same as ordinal string matching.
/// </summary>
public sealed class StopMatcher
{
    private readonly byte[][] _stops;
    private byte[] _held = [];
    private int _heldCount;

    public StopMatcher(IReadOnlyList<string> stops)
    {
        _stops = new byte[stops.Count][];
        for (int i = 0; i < stops.Count; i++) _stops[i] = Encoding.UTF8.GetBytes(stops[i]);
    }

    public bool Stopped { get; private set; }

    /// <summary>The text held back now (UTF-8): what might still turn into a stop string.</summary>
    public ReadOnlySpan<byte> HeldUtf8 => _held.AsSpan(0, _heldCount);

    /// <summary>Feeds a delta; returns the text now safe to emit. Sets <see cref="Stopped"/> when a stop string appears
    /// (the returned text then ends just before it).</summary>
    public string Append(string delta)
    {
        var w = new ArrayBufferWriter<byte>(Math.Max(16, delta.Length * 3 + _heldCount));
        AppendUtf8(Encoding.UTF8.GetBytes(delta), w);
        return Encoding.UTF8.GetString(w.WrittenSpan);
    }

    /// <summary>As <see cref="Append"/> for UTF-8 text made of whole characters: writes what is safe to emit to
    /// <paramref name="output"/>.</summary>
    public void AppendUtf8(ReadOnlySpan<byte> delta, IBufferWriter<byte> output)
    {
        if (Stopped) return;
        if (_stops.Length == 0)
        {
            output.Write(delta);
            return;
        }
        int total = _heldCount + delta.Length;
        if (_held.Length < total) Array.Resize(ref _held, Math.Max(total, _held.Length * 2));
        delta.CopyTo(_held.AsSpan(_heldCount));
        var s = _held.AsSpan(0, total);
        int cut = -1;
        foreach (var stop in _stops)
        {
            int i = s.IndexOf(stop);
            if (i >= 0 && (cut < 0 || i < cut)) cut = i;
        }
        if (cut >= 0)
        {
            Stopped = true;
            output.Write(s[..cut]);
            _heldCount = 0;
            return;
        }
        // Hold back the longest tail that is a proper prefix of some stop string.
        int keep = 0;
        foreach (var stop in _stops)
        {
            for (int k = Math.Min(stop.Length - 1, s.Length); k > keep; k--)
            {
                if (s[^k..].SequenceEqual(stop.AsSpan(0, k))) { keep = k; break; }
            }
        }
        output.Write(s[..^keep]);
        s[^keep..].CopyTo(_held);
        _heldCount = keep;
    }

    /// <summary>Releases held text at the end of generation (it did not turn into a stop string).</summary>
    public string Flush()
    {
        var w = new ArrayBufferWriter<byte>(Math.Max(1, _heldCount));
        FlushUtf8(w);
        return Encoding.UTF8.GetString(w.WrittenSpan);
    }

    /// <summary>As <see cref="Flush"/>, writing UTF-8 to <paramref name="output"/>.</summary>
    public void FlushUtf8(IBufferWriter<byte> output)
    {
        if (!Stopped) output.Write(_held.AsSpan(0, _heldCount));
        _heldCount = 0;
    }
}
