using FastServe.Client.Load;
using FastServe.Runtime;
using ScottPlot;

namespace FastServe.Cli.Commands;

/// <summary>
/// The PNG of a sweep (<c>fastserve bench --sweep --chart FILE.png</c>): P50/P90/P99 of end-to-end latency and of
/// time to first token against offered load, with the SLO and the best rate marked. ScottPlot draws it through
/// SkiaSharp, whose native libraries (libSkiaSharp.so, libHarfBuzzSharp.so) ship next to the executable.
/// </summary>
internal static class BenchChart
{
    public static void Write(string path, IReadOnlyList<BenchResult> points, BenchResult? best, double sloMs, string title)
    {
        var sorted = points.Where(p => p.TargetRps is not null).OrderBy(p => p.TargetRps!.Value).ToArray();
        if (sorted.Length == 0) throw new FastServeException("bench.chart_empty", "no open-loop points to plot", path);
        double[] x = sorted.Select(p => p.TargetRps!.Value).ToArray();
        // Unfinished requests make a percentile infinite: draw it off the top of the chart rather than drop it.
        double top = 3 * sloMs;
        double[] Y(Func<BenchResult, double> f) => sorted.Select(p => f(p) is var v && double.IsFinite(v) ? v : double.IsNaN(v) ? double.NaN : 10 * top).ToArray();

        var plt = new Plot();
        var series = new (string Name, Func<BenchResult, double> Value, Color Color, LinePattern Pattern)[]
        {
            ("E2E P50", p => p.EndToEnd.P50, Colors.SteelBlue, LinePattern.Solid),
            ("E2E P90", p => p.EndToEnd.P90, Colors.DarkOrange, LinePattern.Solid),
            ("E2E P99", p => p.EndToEnd.P99, Colors.Crimson, LinePattern.Solid),
            ("TTFT P50", p => p.Ttft.P50, Colors.SteelBlue, LinePattern.Dashed),
            ("TTFT P90", p => p.Ttft.P90, Colors.DarkOrange, LinePattern.Dashed),
            ("TTFT P99", p => p.Ttft.P99, Colors.Crimson, LinePattern.Dashed),
        };
        double highest = 0;
        foreach (var (name, value, color, pattern) in series)
        {
            double[] y = Y(value);
            var keep = Enumerable.Range(0, y.Length).Where(i => !double.IsNaN(y[i])).ToArray();
            if (keep.Length == 0) continue;
            var s = plt.Add.Scatter(keep.Select(i => x[i]).ToArray(), keep.Select(i => y[i]).ToArray(), color);
            s.LegendText = name;
            s.LineWidth = 2;
            s.MarkerSize = 6;
            s.LinePattern = pattern;
            highest = Math.Max(highest, keep.Max(i => y[i]));
        }
        var sloLine = plt.Add.HorizontalLine(sloMs, 1.5f, Colors.Black, LinePattern.Dotted);
        sloLine.LegendText = $"SLO {sloMs:F0} ms";
        if (best?.TargetRps is { } b)
        {
            var bestLine = plt.Add.VerticalLine(b, 1.5f, Colors.ForestGreen, LinePattern.Dotted);
            bestLine.LegendText = $"best {b:F1} req/s";
        }
        plt.Title(title);
        plt.XLabel("offered load (requests/s)");
        plt.YLabel("latency (ms)");
        plt.ShowLegend(Alignment.UpperLeft);
        plt.Axes.SetLimitsY(0, Math.Min(Math.Max(highest, sloMs) * 1.1, top));
        double span = x[^1] - x[0];
        plt.Axes.SetLimitsX(Math.Max(0, x[0] - 0.05 * Math.Max(span, x[0])), x[^1] + 0.05 * Math.Max(span, x[0]));
        ChartFile.Save(path, "bench.chart_unavailable", p => plt.SavePng(p, 1200, 700));
    }
}
