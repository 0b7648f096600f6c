using System.Diagnostics.CodeAnalysis;
using System.Globalization;
using System.Text;

namespace FastServe.Router.Canary;

/// <summary>One version in a <see cref="TrafficSplit"/> and its relative weight (0 … <see cref="TrafficSplit.MaxWeight"/>;
/// 0 = receives nothing).</summary>
public readonly record struct SplitEntry(string Version, int Weight);

/// <summary>
/// An immutable weighted split of one model's traffic between its versions: the first entry is the stable version,
/// the others are canaries. Spelled <c>VERSION=WEIGHT[,VERSION=WEIGHT...][;sticky]</c>, e.g. <c>a1b2=95,c3d4=5;sticky</c>
/// (<see cref="TryParse"/>, <see cref="ToString"/>). A version's share of traffic is its weight over the sum of
/// weights.
/// </summary>
/// <remarks>
/// <para>Two ways to pick: <see cref="Pick(double)"/> from a uniform draw (cumulative ranges over the weights in
/// entry order), and <see cref="Pick(ulong)"/> from a key's hash for sticky requests (<see cref="Sticky"/> says
/// whether the operator asked for them; the split itself does not care which the caller uses).</para>
/// <para>Sticky picks are weighted rendezvous hashing: each version with weight w scores the key
/// −ln(u)/w, u uniform in (0, 1) from the key's hash mixed with the version's name, and the lowest score wins. So a key
/// maps to the same version while the weights are unchanged (whatever the entry order); setting a version's weight
/// to 0 moves only that version's keys (spread over the others by weight); raising a version's weight only moves keys
/// onto it. Cumulative ranges over a hash would keep this only for a canary at the end of the list: zeroing a middle
/// canary of three would shift the last one's range too.</para>
/// <para>Immutable, so thread-safe; picks allocate nothing.</para>
/// </remarks>
public sealed class TrafficSplit
{
    /// <summary>Most versions in one split.</summary>
    public const int MaxVersions = 16;
    /// <summary>Largest weight of one version.</summary>
    public const int MaxWeight = 1_000_000;
    /// <summary>Longest version name, in characters (of <c>[A-Za-z0-9._-]</c>).</summary>
    public const int MaxVersionLength = 64;

    private const string StickySuffix = "sticky";

    private readonly SplitEntry[] _entries;
    private readonly IReadOnlyList<SplitEntry> _readOnly;   // _entries behind a wrapper a caller cannot cast back
    private readonly long[] _ends;       // _ends[i]: where entry i's range ends in [0, TotalWeight)
    private readonly ulong[] _seeds;     // per-version hash of its name, for sticky picks
    private readonly double[] _inverseWeights;

    private TrafficSplit(SplitEntry[] entries, bool sticky)
    {
        _entries = entries;
        _readOnly = Array.AsReadOnly(entries);
        Sticky = sticky;
        _ends = new long[entries.Length];
        _seeds = new ulong[entries.Length];
        _inverseWeights = new double[entries.Length];
        long sum = 0;
        for (int i = 0; i < entries.Length; i++)
        {
            sum += entries[i].Weight;
            _ends[i] = sum;
            _seeds[i] = HashKey(Encoding.UTF8.GetBytes(entries[i].Version));
            _inverseWeights[i] = entries[i].Weight > 0 ? 1.0 / entries[i].Weight : 0;
        }
        TotalWeight = sum;
    }

    /// <summary>The versions and their weights in spec order; the first is <see cref="Stable"/>.</summary>
    public IReadOnlyList<SplitEntry> Entries => _readOnly;

    /// <summary>The stable version: the first entry (whatever its weight).</summary>
    public string Stable => _entries[0].Version;

    /// <summary>Whether the spec asked for sticky picks (<c>;sticky</c>): requests with a key should go through
    /// <see cref="Pick(ulong)"/>.</summary>
    public bool Sticky { get; }

    /// <summary>The sum of the weights (at least 1).</summary>
    public long TotalWeight { get; }

    /// <summary>Parses a spec; on failure <paramref name="error"/> says what is wrong with it, for people.</summary>
    public static bool TryParse(string? spec, [NotNullWhen(true)] out TrafficSplit? split, [NotNullWhen(false)] out string? error)
    {
        split = null;
        if (string.IsNullOrWhiteSpace(spec)) { error = "the traffic split is empty"; return false; }

        ReadOnlySpan<char> s = spec.AsSpan().Trim();
        bool sticky = false;
        int semi = s.IndexOf(';');
        if (semi >= 0)
        {
            var option = s[(semi + 1)..].Trim();
            if (option.IsEmpty) { error = "nothing after ';' (the only option is 'sticky')"; return false; }
            if (!option.SequenceEqual(StickySuffix)) { error = $"unknown option '{option}' after ';' (only 'sticky')"; return false; }
            sticky = true;
            s = s[..semi].TrimEnd();
        }

        var entries = new List<SplitEntry>(4);
        foreach (var range in s.Split(','))
        {
            var part = s[range].Trim();
            if (part.IsEmpty) { error = "an entry is empty (two commas in a row, or one at an end)"; return false; }
            if (entries.Count == MaxVersions) { error = $"more than {MaxVersions} versions"; return false; }
            int eq = part.IndexOf('=');
            if (eq < 0) { error = $"'{part}' is not VERSION=WEIGHT"; return false; }
            var name = part[..eq].Trim();
            var weightText = part[(eq + 1)..].Trim();
            if (VersionError(name) is { } bad) { error = bad; return false; }
            if (!int.TryParse(weightText, NumberStyles.None, CultureInfo.InvariantCulture, out int weight) || weight > MaxWeight)
            {
                error = $"weight of '{name}' must be a whole number from 0 to 1,000,000, not '{weightText}'";
                return false;
            }
            string version = name.ToString();
            foreach (var e in entries)
                if (e.Version == version) { error = $"version '{version}' appears twice"; return false; }
            entries.Add(new SplitEntry(version, weight));
        }
        long total = 0;
        foreach (var e in entries) total += e.Weight;
        if (total == 0) { error = "every weight is 0: at least one version must have a weight above 0"; return false; }

        split = new TrafficSplit([.. entries], sticky);
        error = null;
        return true;
    }

    /// <summary>Parses a spec; throws <see cref="FormatException"/> with <see cref="TryParse"/>'s message.</summary>
    public static TrafficSplit Parse(string spec) =>
        TryParse(spec, out var split, out var error) ? split : throw new FormatException(error);

    /// <summary>The version for a request drawn with <paramref name="unit"/> uniform in [0, 1): each version gets the
    /// range of its weight, in entry order. Values outside [0, 1) are clamped (NaN counts as 0).</summary>
    public string Pick(double unit)
    {
        long total = TotalWeight;
        long at = unit > 0 ? (long)(unit * total) : 0;
        if (at >= total) at = total - 1;
        var ends = _ends;
        for (int i = 0; i < ends.Length; i++)
            if (at < ends[i]) return _entries[i].Version;
        return _entries[^1].Version;   // unreachable: ends[^1] == total
    }

    /// <summary>The version for a sticky request whose key hashes to <paramref name="keyHash"/> (see
    /// <see cref="HashKey"/>): stable while the weights are unchanged; see the remarks for what moves when they
    /// change. Each version's share of keys is its weight's share.</summary>
    public string Pick(ulong keyHash)
    {
        ulong k = Mix(keyHash);
        int best = -1;
        double bestScore = double.PositiveInfinity;
        for (int i = 0; i < _entries.Length; i++)
        {
            if (_entries[i].Weight == 0) continue;
            // 53 random bits to a unit in (0, 1): −ln of it is exponential with mean 1, divided by the weight.
            double u = ((Mix(k ^ _seeds[i]) >> 11) + 0.5) * (1.0 / (1UL << 53));
            double score = -Math.Log(u) * _inverseWeights[i];
            if (score < bestScore) { bestScore = score; best = i; }
        }
        return _entries[best].Version;   // some weight is > 0
    }

    /// <summary>A stable 64-bit hash of a sticky key (FNV-1a, then a SplitMix64 finaliser): the same bytes give the
    /// same hash in every process and on every machine.</summary>
    public static ulong HashKey(ReadOnlySpan<byte> key)
    {
        ulong h = 14695981039346656037UL;
        foreach (byte b in key)
        {
            h ^= b;
            h *= 1099511628211UL;
        }
        return Mix(h);
    }

    /// <summary>This split with <paramref name="version"/>'s weight set to <paramref name="weight"/> (the same
    /// instance when it already has it). Throws <see cref="ArgumentException"/> for a version not in the split or when
    /// every weight would be 0, <see cref="ArgumentOutOfRangeException"/> for a weight outside 0 …
    /// <see cref="MaxWeight"/>.</summary>
    public TrafficSplit WithWeight(string version, int weight)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(weight);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(weight, MaxWeight);
        int i = IndexOf(version);
        if (i < 0) throw new ArgumentException($"version '{version}' is not in the split {this}", nameof(version));
        if (_entries[i].Weight == weight) return this;
        if (TotalWeight - _entries[i].Weight + weight == 0)
            throw new ArgumentException($"setting '{version}' to 0 would leave every weight at 0", nameof(weight));
        var entries = (SplitEntry[])_entries.Clone();
        entries[i] = entries[i] with { Weight = weight };
        return new TrafficSplit(entries, Sticky);
    }

    /// <summary><paramref name="version"/>'s share of traffic in [0, 1]; 0 for a version not in the split.</summary>
    public double Share(string version)
    {
        int i = IndexOf(version);
        return i < 0 ? 0 : _entries[i].Weight / (double)TotalWeight;
    }

    /// <summary>Whether <paramref name="version"/> is one of the entries.</summary>
    public bool Contains(string version) => IndexOf(version) >= 0;

    /// <summary>The spec: <c>VERSION=WEIGHT,...</c> in entry order, then <c>;sticky</c> when sticky. Parses back to an
    /// equal split.</summary>
    public override string ToString()
    {
        var sb = new StringBuilder();
        foreach (var e in _entries)
        {
            if (sb.Length > 0) sb.Append(',');
            sb.Append(e.Version).Append('=').Append(e.Weight.ToString(CultureInfo.InvariantCulture));
        }
        if (Sticky) sb.Append(';').Append(StickySuffix);
        return sb.ToString();
    }

    private int IndexOf(string version)
    {
        for (int i = 0; i < _entries.Length; i++)
            if (_entries[i].Version == version) return i;
        return -1;
    }

    private static string? VersionError(ReadOnlySpan<char> name)
    {
        if (name.IsEmpty) return "a version name is empty";
        if (name.Length > MaxVersionLength) return $"version '{name}' is longer than {MaxVersionLength} characters";
        foreach (char c in name)
            if (!(char.IsAsciiLetterOrDigit(c) || c is '.' or '_' or '-'))
                return $"version '{name}' has '{c}': only A-Z, a-z, 0-9, '.', '_' and '-' are allowed";
        return null;
    }

    // SplitMix64's finaliser: every input bit reaches every output bit.
    private static ulong Mix(ulong z)
    {
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }
}
