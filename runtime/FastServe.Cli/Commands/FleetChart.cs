using FastServe.Autoscale.Simulation;
using FastServe.Runtime;
using ScottPlot;

namespace FastServe.Cli.Commands;

/// <summary>
/// The PNG of <c>fastserve simulate-fleet --chart FILE.png</c>: three panels over the simulated hours, sharing the time
/// axis: the offered load, each policy's ready replicas, and each policy's P99 latency of offered requests against the
/// SLO (a bucket with over 1 % refused is drawn off the top, as never answered). Drawn with ScottPlot.
/// </summary>
internal static class FleetChart
{
    private static readonly Color[] Palette = [Colors.Crimson, Colors.SteelBlue, Colors.DarkOrange, Colors.Gray, Colors.ForestGreen, Colors.Purple];

    public static void Write(string path, IReadOnlyList<FleetRunResult> results, IReadOnlyList<FleetTimeline> timelines, double sloSeconds, string title)
    {
        if (timelines.Count == 0 || timelines[0].Time.Count == 0) throw new FastServeException("simulate.chart_empty", "nothing was simulated to chart", path);
        double[] hours = timelines[0].Time.Select(t => t / 3600).ToArray();
        var mp = new Multiplot();
        mp.AddPlots(3);
        Plot load = mp.GetPlot(0), replicas = mp.GetPlot(1), p99 = mp.GetPlot(2);

        var l = load.Add.Scatter(hours, timelines[0].Rate.Select(r => r / 1000).ToArray(), Colors.Black);
        l.MarkerSize = 0;
        l.LineWidth = 1.5f;
        l.LegendText = "offered load";
        load.Title(title);
        load.YLabel("thousand requests/s");
        load.ShowLegend(Alignment.UpperLeft);

        double sloMs = sloSeconds * 1000, top = 2 * sloMs;
        for (int i = 0; i < results.Count; i++)
        {
            var color = Palette[i % Palette.Length];
            var tl = timelines[i];
            var r = replicas.Add.Scatter(hours, tl.Ready.ToArray(), color);
            r.MarkerSize = 0;
            r.LineWidth = results[i].Policy == "autoscale" ? 2 : 1;
            r.LegendText = results[i].Policy;
            // Never answered (infinite) is drawn at the top edge rather than dropped.
            var p = p99.Add.Scatter(hours, tl.P99.Select(v => double.IsFinite(v) ? Math.Min(v * 1000, top) : top).ToArray(), color);
            p.MarkerSize = 0;
            p.LineWidth = results[i].Policy == "autoscale" ? 2 : 1;
            p.LegendText = results[i].Policy;
        }
        replicas.YLabel("ready replicas");
        replicas.ShowLegend(Alignment.UpperLeft);
        var slo = p99.Add.HorizontalLine(sloMs, 1.5f, Colors.Black, LinePattern.Dotted);
        slo.LegendText = $"SLO {sloMs:F0} ms";
        p99.YLabel("P99, ms (top: > 1 % refused)");
        p99.XLabel("simulated hour");
        p99.Axes.SetLimitsY(0, top * 1.02);
        p99.ShowLegend(Alignment.UpperLeft);
        foreach (var plot in new[] { load, replicas, p99 }) plot.Axes.SetLimitsX(0, hours[^1]);
        ChartFile.Save(path, "simulate.chart_unavailable", p => mp.SavePng(p, 1400, 1100));
    }
}
