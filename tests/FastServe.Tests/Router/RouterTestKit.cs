using System.Diagnostics;
using FastServe.Protocol;
using FastServe.Router;

namespace FastServe.Tests.Router;

/// <summary>Endpoints in a chosen state on a synthetic clock, for the balancer and endpoint-state tests.</summary>
internal static class RouterTestKit
{
    /// <summary>A point on the synthetic clock far from 0 (Stopwatch ticks).</summary>
    public const long T0 = 1L << 40;

    public static long Ms(double ms) => (long)(ms * Stopwatch.Frequency / 1000);

    public static RouterOptions Options(int slowStartMs = 0, int maxEjectedPercent = 50) =>
        new() { SlowStartMs = slowStartMs, MaxEjectedPercent = maxEjectedPercent };

    public static LoadReport Report(ReplicaState state = ReplicaState.Ready, int queued = 0) =>
        new(state, 1, 0, queued, 0, 1f, 0, 64, 0);

    /// <summary>An endpoint connected and reporting ready at <paramref name="readyAt"/>, with <paramref name="inFlight"/>
    /// requests of this router on it.</summary>
    public static Endpoint Ready(RouterOptions o, string address, double weight = 1, long readyAt = T0, int inFlight = 0, int queued = 0)
    {
        var e = new Endpoint(EndpointSpec.Parse(address, weight), o);
        e.OnConnectionUp(new HelloOk(1, 0, Wire.DefaultMaxFrame, 2047, 1024, 60_000, 2048, "test"), readyAt);
        e.OnLoadReport(Report(queued: queued), readyAt);
        for (int i = 0; i < inFlight; i++) e.AddInFlight();
        return e;
    }

    /// <summary>Picks <paramref name="n"/> times and returns each endpoint's share.</summary>
    public static double[] Shares(Balancer b, Endpoint[] set, long now, int n)
    {
        var counts = new int[set.Length];
        for (int i = 0; i < n; i++)
        {
            var e = b.Pick(set, now) ?? throw new InvalidOperationException("no pick");
            counts[Array.IndexOf(set, e)]++;
        }
        return [.. counts.Select(c => c / (double)n)];
    }

    /// <summary>
    /// The exact p2c shares: the first endpoint drawn with probability w_i / W, the second among the rest with
    /// w_j / (W − w_i); the lower score wins, a tie goes either way with probability 1/2.
    /// </summary>
    public static double[] PowerOfTwoShares(double[] w, double[] score)
    {
        int n = w.Length;
        double total = w.Sum();
        var s = new double[n];
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++)
            {
                if (i == j) continue;
                double p = w[i] / total * (w[j] / (total - w[i]));
                if (score[i] < score[j]) s[i] += p;
                else if (score[j] < score[i]) s[j] += p;
                else { s[i] += p / 2; s[j] += p / 2; }
            }
        return s;
    }

    public static string Fmt(double[] x) => string.Join(" ", x.Select(v => v.ToString("F4")));
}
