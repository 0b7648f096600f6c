using System.Globalization;
using FastServe.Protocol;
using FastServe.Router.Canary;

namespace FastServe.Router;

/// <summary>Mirror <see cref="Percent"/> % of a model's requests to its version <see cref="Version"/>, fire and forget.</summary>
public sealed record ShadowRule(string Version, double Percent);

/// <summary>
/// A cascade: a request naming the tier <see cref="Name"/> runs on the cheap pool first; when the lowest token
/// log-probability of its answer is below <see cref="Threshold"/>, it runs again on the strong pool and the client
/// gets only that answer.
/// </summary>
public sealed record TierRule(string Name, string CheapModel, string? CheapVersion, string StrongModel, string? StrongVersion, double Threshold);

/// <summary>
/// The router's routing rules that change at run time (docs/router.md, "Models, versions and traffic"): traffic splits
/// between versions of a model (canaries), shadow mirrors, and cascade tiers. Immutable: a change makes a new table,
/// which the router swaps in whole, so a request sees one consistent table and no request is dropped by a change.
/// Built from one-line commands (<see cref="TryApply"/>), the same from an ADMIN frame and from the router's config
/// file.
/// </summary>
public sealed record RoutingTable
{
    /// <summary>The empty table: no split, no shadow, no tier.</summary>
    public static readonly RoutingTable Empty = new();

    /// <summary>Traffic splits by model name.</summary>
    public IReadOnlyDictionary<string, TrafficSplit> Splits { get; init; } = new Dictionary<string, TrafficSplit>();
    /// <summary>Shadow mirrors by model name.</summary>
    public IReadOnlyDictionary<string, ShadowRule> Shadows { get; init; } = new Dictionary<string, ShadowRule>();
    /// <summary>Cascade tiers by tier name (the name a request gives as its model).</summary>
    public IReadOnlyDictionary<string, TierRule> Tiers { get; init; } = new Dictionary<string, TierRule>();

    /// <summary>
    /// Applies one command, giving the new table, or an error. Commands (words separated by spaces):
    /// <c>split MODEL VERSION=WEIGHT[,VERSION=WEIGHT...][;sticky]</c> (the first version is the stable one),
    /// <c>split MODEL off</c>; <c>shadow MODEL VERSION PERCENT</c> (0 &lt; percent ≤ 100), <c>shadow MODEL off</c>;
    /// <c>tier NAME CHEAP[@VERSION] STRONG[@VERSION] THRESHOLD</c> (a log-probability ≤ 0), <c>tier NAME off</c>.
    /// Model, version and tier names are 1 to 64 letters, digits, '.', '_' or '-'.
    /// </summary>
    public bool TryApply(string[] words, out RoutingTable table, out string error)
    {
        table = this;
        error = "";
        if (words.Length == 0) { error = "empty command"; return false; }
        switch (words[0])
        {
            case "split" when words.Length == 3:
            {
                if (!IsLabel(words[1])) { error = $"bad model name '{words[1]}'"; return false; }
                var splits = new Dictionary<string, TrafficSplit>(Splits);
                if (words[2] == "off") splits.Remove(words[1]);
                else if (TrafficSplit.TryParse(words[2], out var split, out var why)) splits[words[1]] = split;
                else { error = $"bad split '{words[2]}': {why}"; return false; }
                table = this with { Splits = splits };
                return true;
            }
            case "shadow" when words.Length is 3 or 4:
            {
                if (!IsLabel(words[1])) { error = $"bad model name '{words[1]}'"; return false; }
                var shadows = new Dictionary<string, ShadowRule>(Shadows);
                if (words.Length == 3 && words[2] == "off") shadows.Remove(words[1]);
                else if (words.Length == 4 && IsLabel(words[2]) && double.TryParse(words[3], NumberStyles.Float, CultureInfo.InvariantCulture, out double pct)
                         && pct > 0 && pct <= 100)
                    shadows[words[1]] = new ShadowRule(words[2], pct);
                else { error = "shadow takes MODEL VERSION PERCENT (0 < percent <= 100) or MODEL off"; return false; }
                table = this with { Shadows = shadows };
                return true;
            }
            case "tier" when words.Length is 3 or 5:
            {
                if (!IsLabel(words[1])) { error = $"bad tier name '{words[1]}'"; return false; }
                var tiers = new Dictionary<string, TierRule>(Tiers);
                if (words.Length == 3 && words[2] == "off") tiers.Remove(words[1]);
                else if (words.Length == 5 && TryPool(words[2], out var cm, out var cv) && TryPool(words[3], out var sm, out var sv)
                         && double.TryParse(words[4], NumberStyles.Float, CultureInfo.InvariantCulture, out double th) && th <= 0 && double.IsFinite(th))
                {
                    if (cm == words[1] || sm == words[1]) { error = "a tier cannot name itself as a pool"; return false; }
                    tiers[words[1]] = new TierRule(words[1], cm, cv, sm, sv, th);
                }
                else { error = "tier takes NAME CHEAP[@VERSION] STRONG[@VERSION] THRESHOLD (a log-probability <= 0) or NAME off"; return false; }
                table = this with { Tiers = tiers };
                return true;
            }
            default:
                error = $"unknown command or wrong number of words: '{string.Join(' ', words)}'";
                return false;
        }
    }

    /// <summary>The commands that rebuild this table from <see cref="Empty"/> (for status output and round trips).</summary>
    public IEnumerable<string> ToCommands()
    {
        foreach (var (m, s) in Splits.OrderBy(x => x.Key, StringComparer.Ordinal)) yield return $"split {m} {s}";
        foreach (var (m, s) in Shadows.OrderBy(x => x.Key, StringComparer.Ordinal))
            yield return $"shadow {m} {s.Version} {s.Percent.ToString(CultureInfo.InvariantCulture)}";
        foreach (var (n, t) in Tiers.OrderBy(x => x.Key, StringComparer.Ordinal))
            yield return $"tier {n} {t.CheapModel}{(t.CheapVersion is null ? "" : "@" + t.CheapVersion)} {t.StrongModel}{(t.StrongVersion is null ? "" : "@" + t.StrongVersion)} {t.Threshold.ToString(CultureInfo.InvariantCulture)}";
    }

    /// <summary>
    /// Reads a config file's commands: one per line, <c>#</c> starts a comment, blank lines ignored; the same commands
    /// as <see cref="TryApply"/> plus <c>mode NAME</c>, which is returned separately (the burst mode is not table state).
    /// </summary>
    public static bool TryParseFile(IEnumerable<string> lines, out RoutingTable table, out string? mode, out string error)
    {
        table = Empty;
        mode = null;
        error = "";
        int n = 0;
        foreach (var raw in lines)
        {
            n++;
            int hash = raw.IndexOf('#');
            var words = Words(hash >= 0 ? raw[..hash] : raw);
            if (words.Length == 0) continue;
            if (words[0] == "mode" && words.Length == 2) { mode = words[1]; continue; }
            if (!table.TryApply(words, out table, out var why)) { error = $"line {n}: {why}"; return false; }
        }
        return true;
    }

    /// <summary>A command line split into words (runs of spaces or tabs separate them).</summary>
    public static string[] Words(string line) => line.Split([' ', '\t'], StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);

    private static bool TryPool(string s, out string model, out string? version)
    {
        int at = s.IndexOf('@');
        model = at < 0 ? s : s[..at];
        version = at < 0 ? null : s[(at + 1)..];
        return IsLabel(model) && (version is null || IsLabel(version));
    }

    private static bool IsLabel(string? s) => RequestRules.IsModelLabel(s);
}
