using System.CommandLine;
using System.Text;
using System.Text.Json;
using FastServe.Router.Shadow;
using FastServe.Runtime;
using Spectre.Console;

namespace FastServe.Cli.Commands;

/// <summary>
/// <c>fastserve shadow-report FILE [--json] [--examples N]</c>: reads the router's shadow log (docs/shadow.md) and
/// reports, per (model, primary version, shadow version), the router's pair count and exact-match rate, the
/// disagreements in the file with their token edit distance, length, logprob and latency deltas, then the
/// disagreements with the largest edit distance. Bad lines get an error line each (stable code) and are left out;
/// the report goes on. Streams the file: memory stays bounded whatever its size (<see cref="ShadowReport"/>).
/// </summary>
internal static class ShadowReportCommand
{
    public static Command Create()
    {
        var file = new Argument<string>("file") { Description = "Shadow log: the JSON Lines file of the router's --shadow-log" };
        var json = new Option<bool>("--json") { Description = "Machine-readable JSON output" };
        var examples = new Option<int>("--examples") { Description = $"Disagreements to show, largest token edit distance first (0 to {ShadowReport.MaxExamples})", DefaultValueFactory = _ => 5 };
        var cmd = new Command("shadow-report", "Compare a model version with its shadow: agreement, edit distance, length, logprob and latency deltas from the router's shadow log.")
        {
            file, json, examples,
        };
        cmd.SetAction(r =>
        {
            bool j = r.GetValue(json);
            int n = r.GetValue(examples);
            string path = r.GetValue(file)!;
            if (n < 0 || n > ShadowReport.MaxExamples)
                throw new FastServeException("args.invalid_examples", $"--examples must be between 0 and {ShadowReport.MaxExamples}", "--examples");
            if (!File.Exists(path)) throw new FastServeException("shadow_report.file_not_found", "the shadow log does not exist", path);
            var errors = new List<ShadowReportError>();
            using var s = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite, 1 << 16);
            long total = s.CanSeek ? s.Length : 0;
            bool live = Output.Interactive(j);
            var report = Output.WithProgress(Path.GetFileName(path), j, progress =>
            {
                long shown = 0;
                return ShadowReport.Read(s, n, e =>
                {
                    if (errors.Count < MaxJsonErrors) errors.Add(e);
                    // Through Spectre while its progress bar is live, so the bar is redrawn below the line.
                    if (live) Output.Err.WriteLine(e.ToString()); else Console.Error.WriteLine(e.ToString());
                }, pos =>
                {
                    if (pos - shown < 1 << 20) return;
                    shown = pos;
                    progress(pos, total);
                });
            });
            if (report.ValidLines == 0)
                throw new FastServeException("shadow_report.empty", $"no valid line among {report.Lines} ({report.InvalidLines} invalid, {report.UnknownTypeLines} of unknown type)", path);
            if (j) WriteJson(path, report, errors);
            else WriteText(path, report);
            return 0;
        });
        return cmd;
    }

    /// <summary>Errors listed in the JSON output (all of them go to stderr).</summary>
    private const int MaxJsonErrors = 100;

    private static void WriteJson(string path, ShadowReport report, List<ShadowReportError> errors) => Output.WriteJson(w =>
    {
        w.WriteString("file", path);
        w.WriteNumber("lines", report.Lines);
        w.WriteNumber("pair_lines", report.PairLines);
        w.WriteNumber("summary_lines", report.SummaryLines);
        w.WriteNumber("invalid_lines", report.InvalidLines);
        w.WriteNumber("unknown_type_lines", report.UnknownTypeLines);
        w.WriteNumber("skipped_group_lines", report.SkippedGroupLines);
        w.WriteStartArray("errors");
        foreach (var e in errors)
        {
            w.WriteStartObject();
            w.WriteNumber("line", e.Line);
            w.WriteString("code", e.Code);
            w.WriteString("message", e.Message);
            w.WriteEndObject();
        }
        w.WriteEndArray();
        w.WriteStartArray("groups");
        foreach (var g in report.Groups)
        {
            w.WriteStartObject();
            w.WriteString("model", g.Model);
            w.WriteString("primary_version", g.PrimaryVersion);
            w.WriteString("shadow_version", g.ShadowVersion);
            if (g.LastSummary is { } s)
            {
                w.WriteNumber("pairs", s.Pairs);
                w.WriteNumber("exact_matches", s.ExactMatches);
                Num(w, "exact_match_rate", g.ExactMatchRate);
                w.WriteNumber("dropped", s.Dropped);
            }
            else
            {
                w.WriteNull("pairs");
                w.WriteNull("exact_matches");
                w.WriteNull("exact_match_rate");
                w.WriteNull("dropped");
            }
            w.WriteNumber("pair_lines", g.PairLines);
            w.WriteNumber("disagreements", g.Disagreements);
            w.WriteString("first_time", g.FirstTime);
            w.WriteString("last_time", g.LastTime);
            w.WriteStartObject("token_edit_distance");
            Num(w, "mean", g.EditDistanceMean);
            Num(w, "p50", g.EditDistanceP50);
            Num(w, "p90", g.EditDistanceP90);
            Num(w, "max", g.EditDistanceMax);
            w.WriteEndObject();
            Num(w, "length_delta_mean", g.LengthDeltaMean);
            Num(w, "logprob_delta_mean", g.LogprobDeltaMean);
            w.WriteStartObject("latency_delta_ms");
            Num(w, "mean", g.LatencyDeltaMsMean);
            Num(w, "p50", g.LatencyDeltaMsP50);
            Num(w, "p99", g.LatencyDeltaMsP99);
            w.WriteEndObject();
            w.WriteBoolean("percentiles_sampled", g.Sampled);
            w.WriteEndObject();
        }
        w.WriteEndArray();
        w.WriteStartArray("examples");
        foreach (var e in report.Examples)
        {
            w.WriteStartObject();
            w.WriteNumber("line", e.Line);
            w.WriteString("model", e.Model);
            w.WriteString("primary_version", e.PrimaryVersion);
            w.WriteString("shadow_version", e.ShadowVersion);
            w.WriteNumber("token_edit_distance", e.TokenEditDistance);
            w.WriteString("prompt", e.Prompt);
            w.WriteString("primary_text", e.PrimaryText);
            w.WriteString("shadow_text", e.ShadowText);
            w.WriteEndObject();
        }
        w.WriteEndArray();
    });

    private static void Num(Utf8JsonWriter w, string name, double v)
    {
        if (double.IsFinite(v)) w.WriteNumber(name, v);
        else w.WriteNull(name);
    }

    private static void WriteText(string path, ShadowReport report)
    {
        var t = new Table().Border(TableBorder.Rounded)
            .AddColumn("model").AddColumn("primary → shadow")
            .AddColumn(new TableColumn("pairs").RightAligned()).AddColumn(new TableColumn("exact match").RightAligned())
            .AddColumn(new TableColumn("disagreements\nin file").RightAligned())
            .AddColumn(new TableColumn("edit distance\nmean · p50 · p90 · max").RightAligned())
            .AddColumn(new TableColumn("length Δ\nmean").RightAligned()).AddColumn(new TableColumn("logprob Δ\nmean").RightAligned())
            .AddColumn(new TableColumn("latency Δ ms\nmean · p50 · p99").RightAligned());
        foreach (var g in report.Groups)
        {
            var s = g.LastSummary;
            t.AddRow(
                Markup.Escape(g.Model), Markup.Escape($"{g.PrimaryVersion} → {g.ShadowVersion}"),
                s is null ? "–" : $"{s.Value.Pairs}",
                double.IsNaN(g.ExactMatchRate) ? "–" : $"{g.ExactMatchRate:P1}",
                $"{g.Disagreements} of {g.PairLines}",
                g.PairLines == 0 ? "–" : $"{F(g.EditDistanceMean, 1)} · {F(g.EditDistanceP50, 0)} · {F(g.EditDistanceP90, 0)} · {F(g.EditDistanceMax, 0)}",
                F(g.LengthDeltaMean, 2, signed: true), F(g.LogprobDeltaMean, 3, signed: true),
                double.IsNaN(g.LatencyDeltaMsMean) ? "–" : $"{F(g.LatencyDeltaMsMean, 1, true)} · {F(g.LatencyDeltaMsP50, 1, true)} · {F(g.LatencyDeltaMsP99, 1, true)}");
        }
        // Redirected output has no width; a table for a file or a pipe is laid out unwrapped.
        if (Console.IsOutputRedirected) AnsiConsole.Profile.Width = 240;
        AnsiConsole.Write(t);
        var line = new StringBuilder($"{report.PairLines} pair and {report.SummaryLines} summary lines from {path}");
        if (report.InvalidLines > 0) line.Append($", {report.InvalidLines} invalid left out");
        if (report.UnknownTypeLines > 0) line.Append($", {report.UnknownTypeLines} of unknown type ignored");
        if (report.SkippedGroupLines > 0) line.Append($", {report.SkippedGroupLines} of groups past the first {ShadowReport.MaxGroups} left out");
        line.Append("; pairs and exact match from each group's last summary line; deltas are shadow − primary");
        if (report.Groups.Any(g => g.Sampled)) line.Append($"; percentiles from a sample of {ShadowReport.MaxStoredValues:N0} per group");
        Console.WriteLine(line.ToString());
        int i = 0;
        foreach (var e in report.Examples)
        {
            Console.WriteLine();
            Console.WriteLine($"#{++i} edit distance {e.TokenEditDistance} · {e.Model} {e.PrimaryVersion} → {e.ShadowVersion} · line {e.Line}");
            Console.WriteLine($"  prompt:  {Shown(e.Prompt)}");
            Console.WriteLine($"  primary: {Shown(e.PrimaryText)}");
            Console.WriteLine($"  shadow:  {Shown(e.ShadowText)}");
        }
    }

    private static string F(double v, int decimals, bool signed = false) =>
        double.IsNaN(v) ? "–" : (signed && v > 0 ? "+" : "") + v.ToString("F" + decimals, System.Globalization.CultureInfo.InvariantCulture);

    // One line each: control characters shown as escapes, long texts cut.
    private static string Shown(string s)
    {
        const int max = 400;
        var b = new StringBuilder(Math.Min(s.Length, max) + 8);
        foreach (char c in s)
        {
            if (b.Length >= max) { b.Append('…'); break; }
            if (c == '\n') b.Append("\\n");
            else if (c == '\r') b.Append("\\r");
            else if (c == '\t') b.Append("\\t");
            else if (char.IsControl(c)) b.Append($"\\u{(int)c:x4}");
            else b.Append(c);
        }
        return b.ToString();
    }
}
