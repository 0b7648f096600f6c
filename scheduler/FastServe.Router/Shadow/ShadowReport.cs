using System.Globalization;
using System.Numerics;
using System.Text;
using System.Text.Unicode;
using System.Text.Json;

namespace FastServe.Router.Shadow;

/// <summary>A shadow log line that could not be used: 1-based line number and a stable code (docs/errors.md).</summary>
public readonly record struct ShadowReportError(long Line, string Code, string Message)
{
    /// <summary>The one line a terminal shows: <c>error[code]: line N: message</c>.</summary>
    public override string ToString() => $"error[{Code}]: line {Line}: {Message}";
}

/// <summary>A disagreement worth reading: one pair line, texts cut to <see cref="ShadowReport.MaxExampleChars"/>.</summary>
public sealed record ShadowExample(long Line, string Model, string PrimaryVersion, string ShadowVersion, int TokenEditDistance,
    string Prompt, string PrimaryText, string ShadowText);

/// <summary>
/// The figures of one (model, primary version, shadow version) in a shadow log. Means and maxima are over every pair
/// line; percentiles are exact up to <see cref="ShadowReport.MaxStoredValues"/> pair lines and estimated beyond from
/// a uniform sample of that many (reservoir sampling, fixed seed, so a report is reproducible). Percentiles are
/// nearest-rank. A figure with nothing to go on is NaN.
/// </summary>
public sealed class ShadowGroup
{
    internal ShadowGroup(string model, string primary, string shadow) { Model = model; PrimaryVersion = primary; ShadowVersion = shadow; }

    public string Model { get; }
    public string PrimaryVersion { get; }
    public string ShadowVersion { get; }

    /// <summary>The group's last summary line in file order, or null: the router's totals since it started.</summary>
    public ShadowSummary? LastSummary { get; internal set; }

    /// <summary>Exact matches / pairs from <see cref="LastSummary"/>; NaN without one or with 0 pairs.</summary>
    public double ExactMatchRate => LastSummary is { Pairs: > 0 } s ? (double)s.ExactMatches / s.Pairs : double.NaN;

    /// <summary>Pair lines in the file, and those of them whose texts differ.</summary>
    public long PairLines { get; internal set; }
    public long Disagreements { get; internal set; }

    /// <summary>Earliest and latest time of the group's lines (pairs and summaries), UTC.</summary>
    public DateTime FirstTime { get; internal set; } = DateTime.MaxValue;
    public DateTime LastTime { get; internal set; } = DateTime.MinValue;

    internal readonly Reservoir<int> Edit = new(ShadowReport.MaxStoredValues, 1);
    internal readonly Reservoir<double> Latency = new(ShadowReport.MaxStoredValues, 2);
    internal long EditSum, EditMax, LengthSum, LogprobCount;
    internal double LogprobSum;

    public double EditDistanceMean => PairLines == 0 ? double.NaN : (double)EditSum / PairLines;
    public double EditDistanceP50 => Edit.Percentile(0.50);
    public double EditDistanceP90 => Edit.Percentile(0.90);
    public double EditDistanceMax => PairLines == 0 ? double.NaN : EditMax;
    public double LengthDeltaMean => PairLines == 0 ? double.NaN : (double)LengthSum / PairLines;

    /// <summary>Over the pair lines whose logprob_delta is not null.</summary>
    public double LogprobDeltaMean => LogprobCount == 0 ? double.NaN : LogprobSum / LogprobCount;

    /// <summary>Over the pair lines whose latency_delta_ms is not null.</summary>
    public double LatencyDeltaMsMean => Latency.Mean;
    public double LatencyDeltaMsP50 => Latency.Percentile(0.50);
    public double LatencyDeltaMsP99 => Latency.Percentile(0.99);

    /// <summary>True when the percentiles come from a sample (more pair lines than the store holds).</summary>
    public bool Sampled => Edit.Seen > Edit.Capacity || Latency.Seen > Latency.Capacity;
}

/// <summary>
/// Reads a shadow log (docs/shadow.md) as hostile input, streaming: memory is bounded whatever the file's size
/// (a line of at most <see cref="MaxLineBytes"/>, <see cref="MaxStoredValues"/> values per figure and group, at most
/// <see cref="MaxGroups"/> groups, the top examples). A bad line is reported through the callback and left out:
/// <c>shadow_report.line_too_long</c>, <c>shadow_report.invalid_json</c> (not a JSON object, or not UTF-8),
/// <c>shadow_report.invalid_field</c> (a field missing, of the wrong type or out of range); a line of a further group
/// past the cap gets <c>shadow_report.too_many_groups</c> once and is counted. Lines whose <c>type</c> is neither
/// <c>pair</c> nor <c>summary</c> are counted and ignored; blank lines are skipped.
/// </summary>
public sealed class ShadowReport
{
    /// <summary>Longest accepted line, in bytes (without its newline).</summary>
    public const int MaxLineBytes = 1 << 20;

    /// <summary>Values kept per figure and group for the percentiles.</summary>
    public const int MaxStoredValues = 1_000_000;

    /// <summary>Most (model, primary, shadow) groups; lines of further groups are counted and left out.</summary>
    public const int MaxGroups = 100;

    /// <summary>Most examples a report can keep, and the characters kept of each of their texts.</summary>
    public const int MaxExamples = 1000;
    public const int MaxExampleChars = 4096;

    public long Lines { get; private set; }
    public long PairLines { get; private set; }
    public long SummaryLines { get; private set; }
    public long InvalidLines { get; private set; }
    public long UnknownTypeLines { get; private set; }
    public long SkippedGroupLines { get; private set; }
    public long ValidLines => PairLines + SummaryLines;

    /// <summary>The groups, ordered by model, primary version, shadow version (ordinal).</summary>
    public IReadOnlyList<ShadowGroup> Groups => _groupList;

    /// <summary>Disagreeing pairs with the largest token edit distance, largest first (earlier line on a tie).</summary>
    public IReadOnlyList<ShadowExample> Examples { get; private set; } = [];

    private readonly Dictionary<(string, string, string), ShadowGroup> _groups = new();
    private List<ShadowGroup> _groupList = [];
    private readonly PriorityQueue<ShadowExample, (int Distance, long NegLine)> _top = new();
    private readonly int _examples;
    private readonly Action<ShadowReportError> _onError;

    private ShadowReport(int examples, Action<ShadowReportError> onError) { _examples = examples; _onError = onError; }

    /// <summary>Reads <paramref name="stream"/> to its end. <paramref name="onError"/> gets each bad line as it is
    /// met; <paramref name="progress"/>, if given, the bytes read so far.</summary>
    public static ShadowReport Read(Stream stream, int examples, Action<ShadowReportError> onError, Action<long>? progress = null)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(examples);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(examples, MaxExamples);
        var report = new ShadowReport(examples, onError);
        foreach (var (number, bytes, tooLong, position) in ReadLines(stream))
        {
            report.Lines = number;
            progress?.Invoke(position);
            if (tooLong)
            {
                report.Error(number, "shadow_report.line_too_long", $"the line is longer than {MaxLineBytes} bytes");
                continue;
            }
            if (IsBlank(bytes.Span)) continue;
            report.Add(number, bytes);
        }
        report.Finish();
        return report;
    }

    private void Error(long line, string code, string message)
    {
        InvalidLines++;
        _onError(new ShadowReportError(line, code, message));
    }

    private sealed class LineException(string code, string message) : Exception(message)
    {
        public string Code => code;
    }

    private static LineException Invalid(string message) => new("shadow_report.invalid_field", message);

    private void Add(long number, ReadOnlyMemory<byte> utf8)
    {
        try
        {
            if (!Utf8.IsValid(utf8.Span)) throw new LineException("shadow_report.invalid_json", "the line is not valid UTF-8");
            using var doc = JsonDocument.Parse(utf8, new JsonDocumentOptions { MaxDepth = 8 });
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object) throw new LineException("shadow_report.invalid_json", "each line must be a JSON object");
            if (!root.TryGetProperty("type", out var type) || type.ValueKind != JsonValueKind.String)
                throw Invalid("\"type\" must be present and a string");
            bool pair = type.ValueEquals("pair"u8);
            if (!pair && !type.ValueEquals("summary"u8)) { UnknownTypeLines++; return; }
            var time = Time(root);
            string model = Name(root, "model"), primary = Name(root, "primary_version"), shadow = Name(root, "shadow_version");
            if (pair) AddPair(number, root, time, model, primary, shadow);
            else AddSummary(root, time, model, primary, shadow);
        }
        catch (LineException e) { Error(number, e.Code, e.Message); }
        catch (JsonException e) { Error(number, "shadow_report.invalid_json", $"not a JSON object: {e.Message}"); }
        catch (InvalidOperationException e) { Error(number, "shadow_report.invalid_json", $"a string cannot be read: {e.Message}"); }
    }

    private void AddPair(long number, JsonElement root, DateTime time, string model, string primary, string shadow)
    {
        // Every field is checked before the line counts, so a bad line changes no figure.
        bool exact = Bool(root, "exact_match");
        int edit = Int(root, "token_edit_distance", 0, int.MaxValue);
        int length = Int(root, "length_delta", int.MinValue, int.MaxValue);
        Int(root, "primary_tokens", 0, int.MaxValue);
        Int(root, "shadow_tokens", 0, int.MaxValue);
        double logprob = NullableNumber(root, "logprob_delta");
        double latency = NullableNumber(root, "latency_delta_ms");
        string prompt = Text(root, "prompt"), primaryText = Text(root, "primary_text"), shadowText = Text(root, "shadow_text");
        var g = Group(model, primary, shadow);
        if (g is null) return;
        PairLines++;
        Stamp(g, time);
        g.PairLines++;
        if (!exact) g.Disagreements++;
        g.EditSum += edit;
        g.EditMax = Math.Max(g.EditMax, edit);
        g.Edit.Add(edit);
        g.LengthSum += length;
        if (!double.IsNaN(logprob)) { g.LogprobSum += logprob; g.LogprobCount++; }
        if (!double.IsNaN(latency)) g.Latency.Add(latency);
        if (!exact && _examples > 0)
        {
            var key = (edit, -number);
            if (_top.Count < _examples)
                _top.Enqueue(Example(), key);
            else if (_top.TryPeek(out _, out var least) && edit > least.Distance)
                _top.EnqueueDequeue(Example(), key);
        }

        ShadowExample Example() => new(number, g.Model, g.PrimaryVersion, g.ShadowVersion, edit,
            Cut(prompt), Cut(primaryText), Cut(shadowText));
    }

    private void AddSummary(JsonElement root, DateTime time, string model, string primary, string shadow)
    {
        long pairs = Long(root, "pairs"), exact = Long(root, "exact_matches"), dropped = Long(root, "dropped");
        if (exact > pairs) throw Invalid("\"exact_matches\" is larger than \"pairs\"");
        var g = Group(model, primary, shadow);
        if (g is null) return;
        SummaryLines++;
        Stamp(g, time);
        g.LastSummary = new ShadowSummary(time, model, primary, shadow, pairs, exact, dropped);
    }

    private static void Stamp(ShadowGroup g, DateTime time)
    {
        if (time < g.FirstTime) g.FirstTime = time;
        if (time > g.LastTime) g.LastTime = time;
    }

    private ShadowGroup? Group(string model, string primary, string shadow)
    {
        var key = (model, primary, shadow);
        if (_groups.TryGetValue(key, out var g)) return g;
        if (_groups.Count >= MaxGroups)
        {
            if (SkippedGroupLines++ == 0)
                _onError(new ShadowReportError(Lines, "shadow_report.too_many_groups",
                    $"more than {MaxGroups} (model, primary_version, shadow_version) groups; lines of further groups are counted and left out"));
            return null;
        }
        g = new ShadowGroup(model, primary, shadow);
        _groups.Add(key, g);
        return g;
    }

    private void Finish()
    {
        _groupList = [.. _groups.Values.OrderBy(g => g.Model, StringComparer.Ordinal)
            .ThenBy(g => g.PrimaryVersion, StringComparer.Ordinal).ThenBy(g => g.ShadowVersion, StringComparer.Ordinal)];
        foreach (var g in _groupList) { g.Edit.Seal(); g.Latency.Seal(); }
        var list = new List<ShadowExample>(_top.Count);
        while (_top.TryDequeue(out var e, out _)) list.Add(e);
        list.Reverse(); // the heap yields the least first
        Examples = list;
    }

    // ---- Field readers: each throws a LineException naming the field. ----

    private static JsonElement Field(JsonElement root, string name) =>
        root.TryGetProperty(name, out var v) ? v : throw Invalid($"\"{name}\" is missing");

    private static DateTime Time(JsonElement root)
    {
        var v = Field(root, "time");
        if (v.ValueKind != JsonValueKind.String ||
            !DateTimeOffset.TryParse(v.GetString(), CultureInfo.InvariantCulture, DateTimeStyles.AssumeUniversal, out var t))
            throw Invalid("\"time\" must be an ISO 8601 date and time string");
        return t.UtcDateTime;
    }

    private static string Name(JsonElement root, string name)
    {
        var v = Field(root, name);
        if (v.ValueKind != JsonValueKind.String) throw Invalid($"\"{name}\" must be a string");
        string s = v.GetString()!;
        if (Encoding.UTF8.GetByteCount(s) > ShadowLog.MaxNameBytes) throw Invalid($"\"{name}\" is longer than {ShadowLog.MaxNameBytes} bytes");
        return s;
    }

    private static string Text(JsonElement root, string name)
    {
        var v = Field(root, name);
        return v.ValueKind == JsonValueKind.String ? v.GetString()! : throw Invalid($"\"{name}\" must be a string");
    }

    private static bool Bool(JsonElement root, string name) => Field(root, name).ValueKind switch
    {
        JsonValueKind.True => true,
        JsonValueKind.False => false,
        _ => throw Invalid($"\"{name}\" must be true or false"),
    };

    private static int Int(JsonElement root, string name, int min, int max)
    {
        var v = Field(root, name);
        if (v.ValueKind != JsonValueKind.Number || !v.TryGetInt32(out int i) || i < min || i > max)
            throw Invalid(min == 0 ? $"\"{name}\" must be a non-negative integer" : $"\"{name}\" must be an integer");
        return i;
    }

    private static long Long(JsonElement root, string name)
    {
        var v = Field(root, name);
        if (v.ValueKind != JsonValueKind.Number || !v.TryGetInt64(out long i) || i < 0)
            throw Invalid($"\"{name}\" must be a non-negative integer");
        return i;
    }

    // Absent or null: NaN (unknown).
    private static double NullableNumber(JsonElement root, string name)
    {
        if (!root.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null) return double.NaN;
        if (v.ValueKind != JsonValueKind.Number || !v.TryGetDouble(out double d) || !double.IsFinite(d))
            throw Invalid($"\"{name}\" must be a finite number or null");
        return d;
    }

    private static string Cut(string s) => s.Length <= MaxExampleChars ? s
        : s[..(char.IsHighSurrogate(s[MaxExampleChars - 1]) ? MaxExampleChars - 1 : MaxExampleChars)];

    private static bool IsBlank(ReadOnlySpan<byte> line) => line.Trim(" \t\r"u8).IsEmpty;

    // Splits the stream at '\n' without holding more than MaxLineBytes of one line: a longer line is reported
    // once, as too long, and skipped to its end. Line numbers count every line, blank ones too; a trailing '\r' is
    // dropped. Position is the bytes consumed up to the line's end.
    private static IEnumerable<(long Number, ReadOnlyMemory<byte> Bytes, bool TooLong, long Position)> ReadLines(Stream s)
    {
        var buf = new byte[1 << 16];
        var line = new byte[4096];
        int len = 0;
        bool tooLong = false;
        long number = 0, position = 0;
        int n;
        while ((n = s.Read(buf, 0, buf.Length)) > 0)
        {
            int start = 0;
            for (int i = start; i < n; i++)
            {
                if (buf[i] != (byte)'\n') continue;
                Append(buf.AsSpan(start, i - start));
                position += i + 1 - start;
                var bytes = Trimmed();
                yield return (++number, bytes, tooLong, position);
                len = 0;
                tooLong = false;
                start = i + 1;
            }
            Append(buf.AsSpan(start, n - start));
            position += n - start;
        }
        if (len > 0 || tooLong)
        {
            var bytes = Trimmed();
            yield return (++number, bytes, tooLong, position);
        }

        void Append(ReadOnlySpan<byte> part)
        {
            if (tooLong) return;
            // One byte of slack: the '\r' of a CRLF line at exactly the limit.
            if ((long)len + part.Length > MaxLineBytes + 1) { tooLong = true; len = 0; return; }
            if (len + part.Length > line.Length) Array.Resize(ref line, Math.Min(MaxLineBytes + 1, Math.Max(line.Length * 2, len + part.Length)));
            part.CopyTo(line.AsSpan(len));
            len += part.Length;
        }

        ReadOnlyMemory<byte> Trimmed()
        {
            int l = len > 0 && line[len - 1] == (byte)'\r' ? len - 1 : len;
            if (l > MaxLineBytes) { tooLong = true; return default; }
            return tooLong ? default : line.AsMemory(0, l);
        }
    }
}

/// <summary>At most <see cref="Capacity"/> values kept out of any number seen, each equally likely to be kept
/// (Algorithm R), plus the exact count and sum of all of them.</summary>
internal sealed class Reservoir<T>(int capacity, int seed) where T : struct, INumber<T>
{
    private T[] _items = new T[Math.Min(capacity, 1024)];
    private int _count;
    private readonly Random _rng = new(seed);
    private double _sum;
    private bool _sealed;

    public int Capacity => capacity;
    public long Seen { get; private set; }
    public double Mean => Seen == 0 ? double.NaN : _sum / Seen;

    public void Add(T v)
    {
        _sum += double.CreateChecked(v);
        long k = Seen++;
        if (_count < capacity)
        {
            if (_count == _items.Length) Array.Resize(ref _items, (int)Math.Min(capacity, 2L * _items.Length));
            _items[_count++] = v;
        }
        else
        {
            long j = _rng.NextInt64(k + 1);
            if (j < capacity) _items[j] = v;
        }
    }

    /// <summary>Sorts the kept values; call once, after the last <see cref="Add"/>.</summary>
    public void Seal()
    {
        Array.Sort(_items, 0, _count);
        _sealed = true;
    }

    /// <summary>Nearest-rank percentile (p in (0, 1]) of the kept values; NaN when none.</summary>
    public double Percentile(double p)
    {
        if (_count == 0) return double.NaN;
        if (!_sealed) throw new InvalidOperationException("Seal first");
        int rank = (int)Math.Ceiling(p * _count);
        return double.CreateChecked(_items[Math.Clamp(rank, 1, _count) - 1]);
    }
}
