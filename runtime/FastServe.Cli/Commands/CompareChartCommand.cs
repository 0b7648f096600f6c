using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using FastServe.Runtime;
using ScottPlot;

namespace FastServe.Cli.Commands;

/// <summary>
/// <c>fastserve chart --out FILE.png LABEL=BENCH.json ...</c>: end-to-end P50 and P99 of several single-rate
/// <c>fastserve bench --out-json</c> results side by side, as bars on a log scale. A label <c>group/name</c> puts the
/// bar in a group (e.g. <c>slow/p2c</c>, <c>stall/p2c</c>). A P99 of null (requests unfinished at the drain limit) is
/// drawn to the top of the chart and marked ∞. Used by bench/router/balance-bench.sh.
/// </summary>
internal static class CompareChartCommand
{
    private sealed record Entry(string Group, string Name, double P50, double P99);

    public static Command Create()
    {
        var output = new Option<string>("--out", "-o") { Description = "PNG file to write", Required = true };
        var title = new Option<string>("--title") { Description = "Chart title", DefaultValueFactory = _ => "End-to-end latency" };
        var inputs = new Argument<string[]>("results") { Description = "LABEL=FILE.json, one per bar pair (LABEL may be group/name)", Arity = ArgumentArity.OneOrMore };
        var cmd = new Command("chart", "Draw P50/P99 end-to-end latency of several bench results side by side (PNG).") { output, title, inputs };
        cmd.SetAction(r =>
        {
            var entries = r.GetValue(inputs)!.Select(Read).ToArray();
            string path = r.GetValue(output)!;
            Write(path, entries, r.GetValue(title)!);
            Console.Out.WriteLine($"fastserve: wrote {path} ({entries.Length} results)");
            return 0;
        });
        return cmd;
    }

    private static Entry Read(string arg)
    {
        int eq = arg.IndexOf('=');
        if (eq <= 0 || eq == arg.Length - 1) throw new FastServeException("chart.bad_input", $"'{arg}': expected LABEL=FILE.json", "results");
        string label = arg[..eq], file = arg[(eq + 1)..];
        int slash = label.IndexOf('/');
        string group = slash > 0 ? label[..slash] : "", name = slash > 0 ? label[(slash + 1)..] : label;
        if (!File.Exists(file)) throw new FastServeException("chart.input_missing", $"{file} does not exist", "results");
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllBytes(file));
            if (!doc.RootElement.TryGetProperty("points", out var points) || points.ValueKind != JsonValueKind.Array || points.GetArrayLength() == 0)
                throw new FastServeException("chart.bad_input", $"{file}: no \"points\" (write it with fastserve bench --out-json)", "results");
            var e2e = points[0].GetProperty("e2e_ms");
            return new Entry(group, name, Ms(e2e, "p50"), Ms(e2e, "p99"));
        }
        catch (Exception e) when (e is JsonException or KeyNotFoundException or InvalidOperationException)
        {
            throw new FastServeException("chart.bad_input", $"{file}: not a fastserve bench result ({e.Message})", "results");
        }
    }

    // null = unfinished requests in the percentile: infinitely late.
    private static double Ms(JsonElement e, string name) =>
        e.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.Number ? v.GetDouble() : double.PositiveInfinity;

    private static void Write(string path, Entry[] entries, string title)
    {
        double finiteMax = entries.SelectMany(e => new[] { e.P50, e.P99 }).Where(double.IsFinite).DefaultIfEmpty(1).Max();
        // Log scale by hand: bars carry log10(ms) above a base of 0.1 ms, with ticks labelled in ms.
        int topDecade = (int)Math.Ceiling(Math.Log10(Math.Max(finiteMax, 1) * 3));
        double top = topDecade, floor = -1;
        double Y(double ms) => double.IsFinite(ms) ? Math.Clamp(Math.Log10(Math.Max(ms, 0.1)), floor, top) : top;

        var plt = new Plot();
        var bars = new List<Bar>();
        var ticks = new List<(double, string)>();
        double x = 0;
        string? group = null;
        foreach (var e in entries)
        {
            if (group is not null && e.Group != group) x += 1;     // a gap between groups
            group = e.Group;
            foreach (var (ms, color, dx) in new[] { (e.P50, Colors.SteelBlue, -0.2), (e.P99, Colors.Crimson, 0.2) })
                bars.Add(new Bar
                {
                    Position = x + dx,
                    Value = Y(ms),
                    ValueBase = floor,
                    Size = 0.4,
                    FillColor = double.IsFinite(ms) ? color : Colors.Gray,
                    Label = double.IsFinite(ms) ? ms.ToString(ms < 10 ? "F1" : "F0", CultureInfo.InvariantCulture) : "∞",
                });
            ticks.Add((x, e.Group.Length > 0 ? $"{e.Group}\n{e.Name}" : e.Name));
            x += 1.2;
        }
        var plot = plt.Add.Bars(bars);
        plot.ValueLabelStyle.FontSize = 12;
        plt.Axes.Bottom.SetTicks([.. ticks.Select(t => t.Item1)], [.. ticks.Select(t => t.Item2)]);
        var yTicks = Enumerable.Range((int)floor, topDecade - (int)floor + 1).Select(d => (double)d).ToArray();
        plt.Axes.Left.SetTicks(yTicks, [.. yTicks.Select(d => Math.Pow(10, d).ToString(d < 0 ? "0.#" : "#,0", CultureInfo.InvariantCulture))]);
        plt.Axes.SetLimitsY(floor, top + 0.3);
        plt.Axes.SetLimitsX(-0.8, x - 0.4);
        plt.Title(title);
        plt.YLabel("end-to-end latency (ms, log scale)");
        plt.Legend.IsVisible = true;
        plt.Legend.ManualItems.Add(new LegendItem { LabelText = "P50", FillColor = Colors.SteelBlue });
        plt.Legend.ManualItems.Add(new LegendItem { LabelText = "P99", FillColor = Colors.Crimson });
        plt.Legend.ManualItems.Add(new LegendItem { LabelText = "unfinished (∞)", FillColor = Colors.Gray });
        plt.Legend.Alignment = Alignment.UpperRight;
        ChartFile.Save(path, "bench.chart_unavailable", p => plt.SavePng(p, Math.Max(800, 110 * entries.Length + 200), 600));
    }
}
