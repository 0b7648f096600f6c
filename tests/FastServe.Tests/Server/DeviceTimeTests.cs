using System.Globalization;
using System.Net.Http;
using System.Text.RegularExpressions;
using FastServe.Client;
using FastServe.Protocol;
using NUnit.Framework;

namespace FastServe.Tests.Server;

/// <summary>What each request cost the device (FINAL's <c>device</c> slot, protocol 1.1) on a real replica: every
/// finished request reports some, the metrics count exactly what the requests were told, and the requests' shares
/// plus the unattributed rows reconcile with the engine's busy time.</summary>
[NonParallelizable]
public class DeviceTimeTests
{
    [Test]
    public async Task EveryRequestIsToldItsDeviceTimeAndTheTotalsReconcileWithTheBusyTime()
    {
        using var r = ReplicaProcess.Start(["--backend", "sim", "--model", TestModels.Tiny, "--workers", "2", "--sim-time-scale", "20"], agent: false);
        await using var client = await FastServeClient.ConnectAsync("127.0.0.1", r.Port);
        Assert.That(client.Server.Minor, Is.GreaterThanOrEqualTo(1), "the device slot is protocol 1.1");
        var before = Scrape(r.MetricsPort); // after the start-up warm-up request, whose device time no client is told
        var calls = Enumerable.Range(0, 40).Select(i => client.CompleteAsync(new CompletionRequest
        {
            Prompt = $"Correct: request {i} have an error.\nFixed:",
            Params = RequestParams.Default with { MaxTokens = 4 + i % 12, IgnoreEos = true },
        })).ToArray();
        var results = await Task.WhenAll(calls);
        Assert.That(results.All(x => x.IsOk), Is.True);
        Assert.That(results.All(x => x.ServerTimings.DeviceUs > 0), Is.True, "every finished request paid for its rows");
        double told = results.Sum(x => x.ServerTimings.DeviceUs) / 1e6;

        Thread.Sleep(300); // reports travel worker → engine in the next batch
        var m = Scrape(r.MetricsPort);
        Assert.That(m["fastserve_request_device_seconds_count"], Is.EqualTo(40));
        Assert.That(m["fastserve_request_device_seconds_total"], Is.EqualTo(told).Within(told * 1e-3 + 40e-6), "metrics count what FINAL said");
        double busy = m["fastserve_device_busy_seconds_total"] - before["fastserve_device_busy_seconds_total"];
        double unpaid = m["fastserve_device_unattributed_seconds_total"] - before["fastserve_device_unattributed_seconds_total"];
        Assert.That(busy, Is.GreaterThan(0));
        Assert.That(told + unpaid, Is.EqualTo(busy).Within(0.02 * busy), "shares plus unattributed rows are the busy time");
        Assert.That(told, Is.EqualTo(busy).Within(0.02 * busy), "the requests alone reconcile with the busy time within 2 %");
    }

    private static Dictionary<string, double> Scrape(int port)
    {
        using var http = new HttpClient();
        string text = http.GetStringAsync($"http://127.0.0.1:{port}/metrics").Result;
        var values = new Dictionary<string, double>();
        var line = new Regex(@"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$");
        foreach (var l in text.Split('\n'))
        {
            var x = line.Match(l);
            if (l.Length == 0 || l.StartsWith('#') || !x.Success) continue;
            values[x.Groups[1].Value + x.Groups[2].Value] = double.Parse(x.Groups[3].Value, CultureInfo.InvariantCulture);
        }
        return values;
    }
}
