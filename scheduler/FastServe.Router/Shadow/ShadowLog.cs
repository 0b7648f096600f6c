using System.Buffers;
using System.Collections.Concurrent;
using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;
using System.Threading.Channels;

namespace FastServe.Router.Shadow;

/// <summary>One mirrored request, as the shadow log writes it (a <c>pair</c> line, docs/shadow.md).</summary>
/// <param name="Time">When the later of the two answers arrived; UTC (a Local time is converted, Unspecified is
/// taken as UTC).</param>
/// <param name="Model">The pool's model name.</param>
/// <param name="PrimaryVersion">Version that served the client.</param>
/// <param name="ShadowVersion">Version that got the mirrored copy.</param>
/// <param name="Prompt">The prompt text. This and the two answers are cut to <see cref="ShadowLog.MaxTextBytes"/>
/// UTF-8 bytes when written.</param>
/// <param name="PrimaryTokens">Tokens the primary generated.</param>
/// <param name="ShadowTokens">Tokens the shadow generated.</param>
public readonly record struct ShadowRecord(DateTime Time, string Model, string PrimaryVersion, string ShadowVersion, string Prompt,
    string PrimaryText, string ShadowText, ShadowDiffResult Diff, int PrimaryTokens, int ShadowTokens);

/// <summary>Running totals of one (model, primary version, shadow version), cumulative since the router started (a
/// <c>summary</c> line). <paramref name="Pairs"/> counts every compared pair, logged or not; <paramref name="Dropped"/>
/// the pairs the log left out.</summary>
public readonly record struct ShadowSummary(DateTime Time, string Model, string PrimaryVersion, string ShadowVersion, long Pairs, long ExactMatches, long Dropped);

/// <summary>
/// Appends shadow comparisons to a JSON Lines file (schema in docs/shadow.md) from the router's receive loops without
/// ever blocking or throwing on the caller's thread. <see cref="TryWritePair"/> puts the record in a bounded queue
/// and returns; a background task formats and writes the lines, flushing whenever the queue runs empty and at least
/// once a second while it does not. A pair is dropped (and counted in <see cref="Dropped"/>) when the queue is full
/// or more than <c>maxLinesPerSecond</c> pairs came in the current second. Summaries bypass both: the latest one
/// per (model, primary version, shadow version) waits in its own slot, so only a newer summary of the same group
/// replaces it. On an I/O error the writer stops for good, keeps the message in <see cref="LastError"/> and counts
/// every later line as dropped. Calls racing <see cref="DisposeAsync"/> may be lost uncounted.
/// </summary>
public sealed class ShadowLog : IAsyncDisposable
{
    /// <summary>Longest prompt or answer text written, in UTF-8 bytes; longer ones are cut at a character boundary.</summary>
    public const int MaxTextBytes = 4096;

    /// <summary>Longest model or version name written, in UTF-8 bytes (the report refuses longer ones).</summary>
    public const int MaxNameBytes = 256;

    /// <summary>Most groups the log takes summaries of; a summary of a further group is dropped.</summary>
    public const int MaxSummaryGroups = 1024;

    private static readonly JsonWriterOptions s_json = new() { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    private readonly string _path;
    private readonly FileStream _file;
    private readonly Channel<ShadowRecord> _pairs;
    // Doorbell, capacity 1 with DropWrite: producers ring after enqueueing, the writer waits on it.
    private readonly Channel<bool> _bell = Channel.CreateBounded<bool>(new BoundedChannelOptions(1) { FullMode = BoundedChannelFullMode.DropWrite, SingleReader = true });
    // One slot per group, never removed: producers swap the latest summary in (boxed), the writer swaps it out.
    private readonly ConcurrentDictionary<(string, string, string), SummarySlot> _summaries = new();
    private sealed class SummarySlot { public object? Pending; }
    // Producers, Interlocked: slots made (a lost GetOrAdd race may count one twice, erring on the safe side).
    private int _summaryGroups;
    private readonly TimeProvider _time;
    private readonly int _maxPerSecond;
    private Task? _writer;

    // Producers (CAS loop in Admit): the current second in the high 32 bits, pairs admitted in it in the low 32.
    private long _window = -1L << 32;
    // Producers and writer, Interlocked.
    private long _dropped, _written;
    // Writer sets once, producers read: stop queueing, everything after counts as dropped.
    private volatile bool _failed;
    private volatile string? _lastError;
    // DisposeAsync sets once.
    private int _closed;

    /// <summary>Opens <paramref name="path"/> for appending (created if absent) and starts the writer. Throws
    /// <see cref="IOException"/> naming the path when the file cannot be opened, and
    /// <see cref="ArgumentOutOfRangeException"/> for a rate or capacity below 1.</summary>
    public ShadowLog(string path, int maxLinesPerSecond = 100, int queueCapacity = 1024) : this(path, maxLinesPerSecond, queueCapacity, TimeProvider.System) { }

    /// <summary>With a clock for the per-second cap, and the writer left stopped until <see cref="Start"/> when
    /// <paramref name="start"/> is false (tests: a queue that fills deterministically).</summary>
    internal ShadowLog(string path, int maxLinesPerSecond, int queueCapacity, TimeProvider time, bool start = true)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        ArgumentOutOfRangeException.ThrowIfLessThan(maxLinesPerSecond, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(queueCapacity, 1);
        _path = path;
        _maxPerSecond = maxLinesPerSecond;
        _time = time;
        bool partialLastLine = EndsMidLine(path);
        try { _file = new FileStream(path, FileMode.Append, FileAccess.Write, FileShare.Read, 1 << 16); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or NotSupportedException or ArgumentException)
        {
            throw new IOException($"shadow log {path}: cannot open for appending: {e.Message}", e);
        }
        // A previous writer that died mid-line would glue its fragment to our first line: end it.
        if (partialLastLine) _file.WriteByte((byte)'\n');
        _pairs = Channel.CreateBounded<ShadowRecord>(new BoundedChannelOptions(queueCapacity)
        {
            FullMode = BoundedChannelFullMode.Wait, // with TryWrite only: false when full, never a wait
            SingleReader = true,
        });
        if (start) Start();
    }

    internal Task Start() => _writer ??= Task.Run(WriteLoop);

    /// <summary>The file this log appends to.</summary>
    public string Path => _path;

    /// <summary>Lines left out: pairs refused by the queue or the rate cap, and any line after an I/O error or
    /// after disposal.</summary>
    public long Dropped => Interlocked.Read(ref _dropped);

    /// <summary>Lines written and flushed to the file.</summary>
    public long Written => Interlocked.Read(ref _written);

    /// <summary>The I/O error that stopped the writer, or null.</summary>
    public string? LastError => _lastError;

    /// <summary>Queues a pair line. False (and one more <see cref="Dropped"/>) when the queue is full, this
    /// second's cap is reached, the writer has failed or the log is disposed. Never blocks, never throws.</summary>
    public bool TryWritePair(in ShadowRecord r)
    {
        if (_failed || Volatile.Read(ref _closed) != 0 || !Admit() || !_pairs.Writer.TryWrite(r))
        {
            Interlocked.Increment(ref _dropped);
            return false;
        }
        _bell.Writer.TryWrite(true);
        return true;
    }

    /// <summary>Queues a summary line; it replaces a summary of the same group still waiting. Not subject to the
    /// rate cap or the queue; dropped (and counted) only after an I/O error, after disposal, or for a group past
    /// the first <see cref="MaxSummaryGroups"/>. Never blocks, never throws.</summary>
    public void WriteSummary(in ShadowSummary s)
    {
        var key = (s.Model ?? "", s.PrimaryVersion ?? "", s.ShadowVersion ?? "");
        SummarySlot? slot = null;
        if (_failed || Volatile.Read(ref _closed) != 0 ||
            (!_summaries.TryGetValue(key, out slot) && Volatile.Read(ref _summaryGroups) >= MaxSummaryGroups))
        {
            Interlocked.Increment(ref _dropped);
            return;
        }
        slot ??= _summaries.GetOrAdd(key, _ =>
        {
            Interlocked.Increment(ref _summaryGroups);
            return new SummarySlot();
        });
        Interlocked.Exchange(ref slot.Pending, s);
        _bell.Writer.TryWrite(true);
    }

    // The fixed one-second window: exact under contention (one CAS on one word), no lock.
    private bool Admit()
    {
        long second = _time.GetTimestamp() / _time.TimestampFrequency;
        while (true)
        {
            long cur = Volatile.Read(ref _window);
            long next;
            if (cur >> 32 == second)
            {
                if ((int)cur >= _maxPerSecond) return false;
                next = cur + 1;
            }
            else next = (second << 32) | 1;
            if (Interlocked.CompareExchange(ref _window, next, cur) == cur) return true;
        }
    }

    /// <summary>Stops taking lines, writes what is queued, flushes and closes the file. Never throws; a failure
    /// to close lands in <see cref="LastError"/>.</summary>
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _closed, 1) != 0) return;
        _pairs.Writer.TryComplete();
        _bell.Writer.TryComplete();
        try { await Start().ConfigureAwait(false); }
        catch (Exception e) { _lastError ??= $"shadow log {_path}: writer failed: {e.Message}"; }
        try { _file.Dispose(); }
        catch (Exception e) { _lastError ??= $"shadow log {_path}: close failed: {e.Message}"; }
    }

    // ---- The background writer: the only code that touches _file after the constructor. ----

    private readonly ArrayBufferWriter<byte> _line = new(1024);
    private readonly Utf8JsonWriter _json = new(Stream.Null, s_json);
    private long _lastFlush;
    private int _unflushed;

    private async Task WriteLoop()
    {
        _lastFlush = _time.GetTimestamp();
        while (await _bell.Reader.WaitToReadAsync().ConfigureAwait(false))
        {
            _bell.Reader.TryRead(out _);
            Drain();
        }
        Drain();
    }

    private void Drain()
    {
        // A bug here must not fault the task (DisposeAsync awaits it): it stops the log like an I/O error.
        try { DrainLines(); }
        catch (Exception e) { Fail(e, lost: _unflushed); }
    }

    private void DrainLines()
    {
        while (_pairs.Reader.TryRead(out var r))
        {
            Emit(in r, default, pair: true);
            if (_time.GetElapsedTime(_lastFlush).TotalSeconds >= 1) Flush();
        }
        foreach (var (_, slot) in _summaries)
            if (Interlocked.Exchange(ref slot.Pending, null) is ShadowSummary s) Emit(default, in s, pair: false);
        Flush();
    }

    private void Emit(in ShadowRecord r, in ShadowSummary s, bool pair)
    {
        if (_failed) { Interlocked.Increment(ref _dropped); return; }
        _line.ResetWrittenCount();
        try
        {
            _json.Reset(_line);
            if (pair) WritePair(_json, in r); else WriteSummary(_json, in s);
            _json.Flush();
            _line.Write("\n"u8);
        }
        catch (Exception)
        {
            // A value Utf8JsonWriter refuses: lose this line, not the log.
            Interlocked.Increment(ref _dropped);
            return;
        }
        try
        {
            _file.Write(_line.WrittenSpan);
            _unflushed++;
        }
        catch (Exception e) { Fail(e, lost: _unflushed + 1); }
    }

    private void Flush()
    {
        if (_failed || _unflushed == 0) { _lastFlush = _time.GetTimestamp(); return; }
        try
        {
            _file.Flush();
            Interlocked.Add(ref _written, _unflushed);
            _unflushed = 0;
        }
        catch (Exception e) { Fail(e, lost: _unflushed); }
        _lastFlush = _time.GetTimestamp();
    }

    private void Fail(Exception e, int lost)
    {
        _lastError = $"shadow log {_path}: write failed, logging stopped: {e.Message}";
        _failed = true;
        Interlocked.Add(ref _dropped, lost);
        _unflushed = 0;
    }

    private static void WritePair(Utf8JsonWriter w, in ShadowRecord r)
    {
        w.WriteStartObject();
        w.WriteString("type", "pair");
        WriteHead(w, r.Time, r.Model, r.PrimaryVersion, r.ShadowVersion);
        w.WriteString("prompt", Cut(r.Prompt, MaxTextBytes));
        w.WriteString("primary_text", Cut(r.PrimaryText, MaxTextBytes));
        w.WriteString("shadow_text", Cut(r.ShadowText, MaxTextBytes));
        var d = r.Diff;
        w.WriteBoolean("exact_match", d.ExactMatch);
        w.WriteNumber("token_edit_distance", d.TokenEditDistance);
        w.WriteNumber("length_delta", d.LengthDelta);
        if (double.IsFinite(d.LogprobDelta)) w.WriteNumber("logprob_delta", Math.Round(d.LogprobDelta, 6));
        else w.WriteNull("logprob_delta");
        double ms = d.LatencyDeltaSeconds * 1000;
        if (double.IsFinite(ms)) w.WriteNumber("latency_delta_ms", Math.Round(ms, 3));
        else w.WriteNull("latency_delta_ms");
        w.WriteNumber("primary_tokens", r.PrimaryTokens);
        w.WriteNumber("shadow_tokens", r.ShadowTokens);
        w.WriteEndObject();
    }

    private static void WriteSummary(Utf8JsonWriter w, in ShadowSummary s)
    {
        w.WriteStartObject();
        w.WriteString("type", "summary");
        WriteHead(w, s.Time, s.Model, s.PrimaryVersion, s.ShadowVersion);
        w.WriteNumber("pairs", s.Pairs);
        w.WriteNumber("exact_matches", s.ExactMatches);
        w.WriteNumber("dropped", s.Dropped);
        w.WriteEndObject();
    }

    private static void WriteHead(Utf8JsonWriter w, DateTime time, string model, string primary, string shadow)
    {
        Span<char> t = stackalloc char[32];
        var utc = time.Kind == DateTimeKind.Local ? time.ToUniversalTime() : time;
        utc.TryFormat(t, out int n, "yyyy-MM-dd'T'HH:mm:ss.fff'Z'", System.Globalization.CultureInfo.InvariantCulture);
        w.WriteString("time", t[..n]);
        w.WriteString("model", Cut(model, MaxNameBytes));
        w.WriteString("primary_version", Cut(primary, MaxNameBytes));
        w.WriteString("shadow_version", Cut(shadow, MaxNameBytes));
    }

    /// <summary>The longest prefix of <paramref name="s"/> whose UTF-8 form fits <paramref name="maxBytes"/>, cut
    /// between characters (a surrogate pair stays whole; a lone surrogate counts as U+FFFD's 3 bytes).</summary>
    internal static ReadOnlySpan<char> Cut(string? s, int maxBytes)
    {
        if (s is null) return [];
        if ((long)s.Length * 3 <= maxBytes) return s; // fast path: no UTF-16 char takes more than 3 UTF-8 bytes
        ReadOnlySpan<char> span = s;
        int bytes = 0, i = 0;
        while (i < span.Length)
        {
            Rune.DecodeFromUtf16(span[i..], out var rune, out int used);
            int len = rune.Utf8SequenceLength;
            if (bytes + len > maxBytes) break;
            bytes += len;
            i += used;
        }
        return span[..i];
    }

    // True when the file exists, is not empty, and its last byte is not a newline. Best effort: false on any error.
    private static bool EndsMidLine(string path)
    {
        try
        {
            using var h = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
            long len = RandomAccess.GetLength(h);
            if (len == 0) return false;
            Span<byte> last = stackalloc byte[1];
            return RandomAccess.Read(h, last, len - 1) == 1 && last[0] != (byte)'\n';
        }
        catch (Exception) { return false; }
    }
}
