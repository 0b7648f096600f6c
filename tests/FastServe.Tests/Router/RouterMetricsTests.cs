using System.Globalization;
using System.Net;
using System.Net.Sockets;
using FastServe.Client;
using FastServe.Protocol;
using FastServe.Router;
using NUnit.Framework;
using Reply = FastServe.Tests.Router.ScriptedReplica.Reply;

namespace FastServe.Tests.Router;

/// <summary>The router's Prometheus endpoint, scraped over HTTP and parsed line by line.</summary>
public class RouterMetricsTests
{
    private static int FreePort()
    {
        using var s = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        s.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        return ((IPEndPoint)s.LocalEndPoint!).Port;
    }

    // "name{labels} value" lines, keyed by everything before the value.
    private static async Task<Dictionary<string, double>> Scrape(int port)
    {
        using var http = new HttpClient();
        string text = await http.GetStringAsync($"http://127.0.0.1:{port}/metrics");
        var d = new Dictionary<string, double>();
        foreach (var line in text.Split('\n'))
        {
            if (line.Length == 0 || line[0] == '#') continue;
            int sp = line.LastIndexOf(' ');
            d[line[..sp]] = double.Parse(line[(sp + 1)..], CultureInfo.InvariantCulture);
        }
        return d;
    }

    [Test]
    public async Task CountsRequestsRetriesAndPicksPerEndpoint()
    {
        using var x = new ScriptedReplica("x") { OnRequest = _ => Reply.Overloaded };
        using var y = new ScriptedReplica("y");
        var src = new StaticEndpointSource([EndpointSpec.Parse(x.Address), EndpointSpec.Parse(y.Address)]);
        await using var router = new RouterHost(new RouterOptions { Port = 0, SlowStartMs = 0, Seed = 5 }, src);
        await router.StartAsync();
        var until = DateTime.UtcNow.AddSeconds(10);
        while (router.Fleet.Endpoints.Count(e => e.IsReady) < 2 && DateTime.UtcNow < until) await Task.Delay(10);
        int mport = FreePort();
        using var metrics = new RouterMetrics(router, "127.0.0.1", mport);

        await using var c = await FastServeClient.ConnectAsync("127.0.0.1", router.Port);
        var req = new CompletionRequest { Prompt = "hi", Params = RequestParams.Default with { MaxTokens = 2 } };
        var results = await Task.WhenAll(Enumerable.Range(0, 60).Select(_ => c.CompleteAsync(req)));
        Assert.That(results.Select(r => r.StatusName), Is.All.EqualTo("ok"));

        var m = await Scrape(mport);
        Assert.That(m["fastserve_router_requests_total"], Is.EqualTo(60));
        Assert.That(m["fastserve_router_completed_total"], Is.EqualTo(60));
        Assert.That(m["fastserve_router_retries_total"], Is.EqualTo(x.Requests.Count), "every refusal by x was retried");
        Assert.That(m["fastserve_router_in_flight"], Is.Zero);
        Assert.That(m["fastserve_router_endpoints"], Is.EqualTo(2));
        Assert.That(m[$"fastserve_router_endpoint_picks_total{{endpoint=\"{x.Address}\"}}"], Is.EqualTo(x.Requests.Count));
        Assert.That(m[$"fastserve_router_endpoint_picks_total{{endpoint=\"{y.Address}\"}}"], Is.EqualTo(60));
        Assert.That(m[$"fastserve_router_endpoint_eligible{{endpoint=\"{y.Address}\"}}"], Is.EqualTo(1));
        Assert.That(m[$"fastserve_router_endpoint_weight{{endpoint=\"{y.Address}\"}}"], Is.EqualTo(1));
        Assert.That(m[$"fastserve_router_endpoint_ejections_total{{endpoint=\"{x.Address}\"}}"], Is.Zero, "refusals are not errors");
        Assert.That(m["fastserve_router_replays_total"], Is.Zero);
        Assert.That(m["fastserve_router_upstream_overloaded_total"], Is.EqualTo(x.Requests.Count));
        Assert.That(m["fastserve_router_retry_budget_exhausted_total"], Is.Zero, "the reserve covers this many retries");
        Assert.That(m["fastserve_router_fleet_saturation"], Is.EqualTo(x.Requests.Count / (x.Requests.Count + 60.0)).Within(1e-9),
            "x's refusals among all the replicas' answers");
        Assert.That(m["fastserve_router_fleet_ready_endpoints"], Is.EqualTo(2));
        Assert.That(m["fastserve_router_fleet_concurrency"], Is.Zero, "nothing held by either replica now");
        Assert.That(m["fastserve_router_fleet_refused_per_second"], Is.EqualTo(x.Requests.Count / 10.0).Within(1e-9), "x's refusals over the 10 s window");
        Assert.That(m["fastserve_router_fleet_demand"], Is.GreaterThanOrEqualTo(0));
        // One router-added latency per ok request; the scripted replica reports no time of its own, so each is the
        // whole time the request spent in the router: above zero, and under the 10 s this test may take.
        Assert.That(m["fastserve_router_added_seconds_count"], Is.EqualTo(60));
        Assert.That(m["fastserve_router_added_seconds_bucket{le=\"+Inf\"}"], Is.EqualTo(60));
        Assert.That(m["fastserve_router_added_seconds_sum"], Is.GreaterThan(0).And.LessThan(60 * 10.0));
    }
}
