using System.Buffers;
using System.Collections.Concurrent;
using System.Diagnostics;
using System.Text;
using FastServe.Protocol;

namespace FastServe.Router.Shadow;

/// <summary>Why a mirrored request was not compared (the label of <c>fastserve_router_shadow_dropped_total</c>).</summary>
public enum ShadowDrop : byte
{
    /// <summary>Shadows in flight were at the limit (the bounded queue is full).</summary>
    QueueFull,
    /// <summary>No replica of the shadow version was eligible, or the one picked was already queueing.</summary>
    Saturated,
    /// <summary>The burst mode turns shadows off.</summary>
    BurstMode,
    /// <summary>The shadow or the primary did not end <c>ok</c> (refused, lost, cancelled, failed).</summary>
    Failed,
}

/// <summary>The metric label of a <see cref="ShadowDrop"/>.</summary>
public static class ShadowDropNames
{
    public static string Of(ShadowDrop d) => d switch
    {
        ShadowDrop.QueueFull => "queue_full",
        ShadowDrop.Saturated => "saturated",
        ShadowDrop.BurstMode => "burst_mode",
        _ => "failed",
    };
}

/// <summary>
/// One primary request and its mirror: each side's output (token ids and text, bounded) and how it ended. The
/// primary's side is filled by the receive loop of the connection it runs on, the shadow's by its own; whichever
/// finishes second completes the pair. Thread-safe under its own lock.
/// </summary>
internal sealed class ShadowPair
{
    private const int MaxIds = 4096, MaxTextBytes = 16 << 10;
    private readonly Lock _lock = new();
    private readonly List<int> _pIds = [], _sIds = [];
    private readonly ArrayBufferWriter<byte> _pText = new(256), _sText = new(256);
    private int _done;          // bit 0 primary, bit 1 shadow
    private bool _pOk, _sOk;
    private double _pLogprob = double.NaN, _sLogprob = double.NaN, _pSeconds, _sSeconds;
    private string _pVersion = "";

    public ShadowPair(string model, string shadowVersion, string prompt, long started)
    {
        Model = model;
        ShadowVersion = shadowVersion;
        Prompt = prompt;
        Started = started;
    }

    public readonly string Model, ShadowVersion, Prompt;
    /// <summary>When the router read the client's REQUEST (Stopwatch ticks): both latencies count from here.</summary>
    public readonly long Started;

    /// <summary>A DELTA payload of one side.</summary>
    public void Append(bool shadow, ReadOnlySpan<byte> deltaPayload)
    {
        if (!DeltaView.TryParse(deltaPayload, out var d)) return;
        lock (_lock)
        {
            var ids = shadow ? _sIds : _pIds;
            for (int i = 0; i < d.Count && ids.Count < MaxIds; i++) ids.Add(d.Id(i));
            var text = shadow ? _sText : _pText;
            int room = MaxTextBytes - text.WrittenCount;
            if (room > 0) text.Write(d.Text[..Math.Min(room, d.Text.Length)]);
        }
    }

    /// <summary>One side's FINAL; true when this completed the pair (both sides have ended).</summary>
    public bool Finish(bool shadow, WireStatus status, in FinalInfo f, string version, long now)
    {
        lock (_lock)
        {
            double seconds = (now - Started) / (double)Stopwatch.Frequency;
            double lp = f.HasLogprobs ? f.LogprobMean : double.NaN;
            if (shadow) { _sOk = status == WireStatus.Ok; _sLogprob = lp; _sSeconds = seconds; }
            else { _pOk = status == WireStatus.Ok; _pLogprob = lp; _pSeconds = seconds; _pVersion = version; }
            int before = _done;
            _done |= shadow ? 2 : 1;
            return before != 3 && _done == 3;
        }
    }

    /// <summary>Both sides ended <c>ok</c>.</summary>
    public bool BothOk { get { lock (_lock) return _pOk && _sOk; } }

    /// <summary>The primary's version (from the replica that answered it).</summary>
    public string PrimaryVersion { get { lock (_lock) return _pVersion; } }

    /// <summary>The two answers, for <see cref="ShadowDiff.Compute"/>.</summary>
    public (ShadowAnswer Primary, ShadowAnswer Shadow) Answers()
    {
        lock (_lock)
            return (new ShadowAnswer(Utf8Text.Decode(_pText.WrittenSpan), [.. _pIds], _pLogprob, _pSeconds),
                    new ShadowAnswer(Utf8Text.Decode(_sText.WrittenSpan), [.. _sIds], _sLogprob, _sSeconds));
    }
}

/// <summary>
/// Shadow traffic of a router: decides which requests to mirror, bounds the mirrors in flight, compares each
/// completed pair (<see cref="ShadowDiff"/>), keeps per-pool totals, feeds the metrics hook and writes disagreements
/// to the shadow log. Thread-safe.
/// </summary>
internal sealed class ShadowMirror : IAsyncDisposable
{
    private readonly int _maxInFlight;
    private readonly ShadowLog? _log;
    private readonly ConcurrentDictionary<(string Model, string Primary, string Shadow), Totals> _totals = new();
    private readonly long[] _dropped = new long[4];
    private int _inFlight;
    private long _lastSummary;

    private sealed class Totals { public long Pairs, Matches; }

    /// <param name="maxInFlight">Mirrors in flight at most; more are dropped (<see cref="ShadowDrop.QueueFull"/>).</param>
    /// <param name="log">Where disagreements go (null: nowhere).</param>
    public ShadowMirror(int maxInFlight, ShadowLog? log)
    {
        _maxInFlight = maxInFlight;
        _log = log;
    }

    /// <summary>Called for every compared pair (the metrics' histograms); on a receive loop, so it must be quick.</summary>
    public Action<string, string, string, ShadowDiffResult>? OnPair { get; set; }

    /// <summary>Mirrors in flight now.</summary>
    public int InFlight => Volatile.Read(ref _inFlight);

    /// <summary>Mirrors dropped for <paramref name="why"/> so far.</summary>
    public long Dropped(ShadowDrop why) => Interlocked.Read(ref _dropped[(int)why]);

    /// <summary>Pairs compared and pairs whose texts matched, per (model, primary version, shadow version).</summary>
    public IEnumerable<(string Model, string Primary, string Shadow, long Pairs, long Matches)> PairTotals() =>
        _totals.Select(kv => (kv.Key.Model, kv.Key.Primary, kv.Key.Shadow, Interlocked.Read(ref kv.Value.Pairs), Interlocked.Read(ref kv.Value.Matches)));

    /// <summary>Takes a slot for one more mirror; false (and counted) when the queue is full.</summary>
    public bool TryReserve()
    {
        if (Interlocked.Increment(ref _inFlight) <= _maxInFlight) return true;
        Interlocked.Decrement(ref _inFlight);
        Drop(ShadowDrop.QueueFull);
        return false;
    }

    /// <summary>Gives a slot back (the mirror ended, or was never sent).</summary>
    public void Release() => Interlocked.Decrement(ref _inFlight);

    public void Drop(ShadowDrop why) => Interlocked.Increment(ref _dropped[(int)why]);

    /// <summary>A pair has both answers: compare, count, observe, log.</summary>
    public void Complete(ShadowPair pair)
    {
        if (!pair.BothOk) { Drop(ShadowDrop.Failed); return; }
        var (p, s) = pair.Answers();
        var diff = ShadowDiff.Compute(p, s);
        string pv = pair.PrimaryVersion;
        var t = _totals.GetOrAdd((pair.Model, pv, pair.ShadowVersion), static _ => new Totals());
        Interlocked.Increment(ref t.Pairs);
        if (diff.ExactMatch) Interlocked.Increment(ref t.Matches);
        OnPair?.Invoke(pair.Model, pv, pair.ShadowVersion, diff);
        if (_log is not null && !diff.ExactMatch)
            _log.TryWritePair(new ShadowRecord(DateTime.UtcNow, pair.Model, pv, pair.ShadowVersion, pair.Prompt, p.Text, s.Text, diff, p.Tokens.Length, s.Tokens.Length));
    }

    /// <summary>Every 10 s (the router's timer): a summary line per pool pair in the shadow log, so a report knows
    /// the agreement rate, not only the disagreements.</summary>
    public void Tick(long now)
    {
        if (_log is null || now - _lastSummary < 10 * Stopwatch.Frequency) return;
        _lastSummary = now;
        long dropped = 0;
        for (int i = 0; i < _dropped.Length; i++) dropped += Interlocked.Read(ref _dropped[i]);
        foreach (var (m, p, s, pairs, matches) in PairTotals())
            _log.WriteSummary(new ShadowSummary(DateTime.UtcNow, m, p, s, pairs, matches, dropped));
    }

    /// <summary>The prompt as the log shows it: the text, or the token ids when the request sent ids.</summary>
    public static string PromptOf(ReadOnlySpan<byte> requestPayload)
    {
        if (RequestView.TryParse(requestPayload, out var v) != RequestParseError.None) return "";
        if (!v.PromptIsIds) return Utf8Text.Decode(v.Prompt[..Math.Min(v.Prompt.Length, ShadowLog.MaxTextBytes)]);
        var sb = new StringBuilder("[");
        for (int i = 0; i < Math.Min(v.PromptIdCount, 256); i++) sb.Append(i == 0 ? "" : ",").Append(v.PromptId(i));
        return sb.Append(']').ToString();
    }

    public async ValueTask DisposeAsync()
    {
        if (_log is not null) await _log.DisposeAsync().ConfigureAwait(false);
    }
}
