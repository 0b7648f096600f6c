using System.Net;
using System.Net.Sockets;
using System.Text;
using FastServe.Autoscale.Actuators;
using FastServe.Autoscale.Control;
using NUnit.Framework;

namespace FastServe.Tests.Autoscale;

/// <summary>The autoscaler's signal: routers' fleet gauges read from their Prometheus pages, which are hostile
/// input like any other.</summary>
public class RouterMetricsSignalTests
{
    internal const string Page = """
        # HELP fastserve_router_fleet_ready_endpoints Endpoints that can be picked now.
        # TYPE fastserve_router_fleet_ready_endpoints gauge
        fastserve_router_fleet_ready_endpoints 3
        fastserve_router_endpoint_in_flight{endpoint="127.0.0.1:7000"} 9
        fastserve_router_fleet_concurrency 12.5
        fastserve_router_fleet_refused_per_second 20 1700000000000
        fastserve_router_fleet_demand 22.5
        fastserve_router_in_flight 4
        """;

    [Test]
    public void ReadsTheFleetGaugesAndDerivesTheServiceTime()
    {
        var r = RouterMetricsSignal.Parse(Page)!.Value;
        Assert.That((r.Ready, r.Concurrency, r.RefusedPerSecond), Is.EqualTo((3, 12.5, 20.0)));
        Assert.That(r.ServiceSeconds, Is.EqualTo(0.5).Within(1e-12), "demand 22.5 = 12.5 + 20/s x 0.5 s");
    }

    [TestCase("fastserve_router_fleet_concurrency 12.5\n", TestName = "Missing gauges")]
    [TestCase("fastserve_router_fleet_ready_endpoints 3\nfastserve_router_fleet_concurrency NaN\nfastserve_router_fleet_refused_per_second 0\nfastserve_router_fleet_demand 0\n", TestName = "NaN")]
    [TestCase("fastserve_router_fleet_ready_endpoints 3\nfastserve_router_fleet_concurrency -1\nfastserve_router_fleet_refused_per_second 0\nfastserve_router_fleet_demand 0\n", TestName = "Negative")]
    [TestCase("fastserve_router_fleet_ready_endpoints x\nfastserve_router_fleet_concurrency 1\nfastserve_router_fleet_refused_per_second 0\nfastserve_router_fleet_demand 0\n", TestName = "Not a number")]
    [TestCase("<html>Not Found</html>", TestName = "Not a metrics page")]
    public void RejectsPagesWithoutValidGauges(string page) => Assert.That(RouterMetricsSignal.Parse(page), Is.Null);

    [Test]
    public void SeveralRoutersShareReplicasButNotRefusals()
    {
        using var a = new TinyHttp(Page);
        using var b = new TinyHttp(Page.Replace("concurrency 12.5", "concurrency 10").Replace("demand 22.5", "demand 20"));
        using var s = new RouterMetricsSignal([a.Url, b.Url], TimeSpan.FromSeconds(2));
        var r = s.ReadAsync(default).Result;
        Assert.That(r.Ok, Is.True, r.Error);
        var g = r.Reading!.Value;
        Assert.That((g.Ready, g.Concurrency, g.RefusedPerSecond, g.Sources), Is.EqualTo((3, 12.5, 40.0, 2)),
            "concurrency comes from the same replicas' reports (the larger), refusals are each router's own (summed)");
    }

    [Test]
    public void OneRouterDownLeavesTheOtherAndAllDownIsAnError()
    {
        using var a = new TinyHttp(Page);
        int closed = ClosedPort();
        using (var s = new RouterMetricsSignal([a.Url, $"http://127.0.0.1:{closed}/metrics"], TimeSpan.FromSeconds(2)))
        {
            var r = s.ReadAsync(default).Result;
            Assert.That((r.Ok, r.Reading!.Value.Sources), Is.EqualTo((true, 1)));
        }
        using (var s = new RouterMetricsSignal([$"http://127.0.0.1:{closed}/metrics"], TimeSpan.FromSeconds(2)))
        {
            var r = s.ReadAsync(default).Result;
            Assert.That((r.Ok, r.ErrorCode), Is.EqualTo((false, "autoscale.signal_unavailable")));
            Assert.That(r.Error, Does.Contain($"127.0.0.1:{closed}"));
        }
        using var junk = new TinyHttp("hello");
        using (var s = new RouterMetricsSignal([junk.Url], TimeSpan.FromSeconds(2)))
            Assert.That(s.ReadAsync(default).Result.ErrorCode, Is.EqualTo("autoscale.signal_invalid"));
    }

    [Test]
    public void ARouterThatNeverAnswersTimesOut()
    {
        var silent = new TcpListener(IPAddress.Loopback, 0);
        silent.Start();
        try
        {
            using var s = new RouterMetricsSignal([$"http://127.0.0.1:{((IPEndPoint)silent.LocalEndpoint).Port}/metrics"], TimeSpan.FromMilliseconds(300));
            var r = s.ReadAsync(default).Result;
            Assert.That((r.Ok, r.ErrorCode), Is.EqualTo((false, "autoscale.signal_unavailable")));
            Assert.That(r.Error, Does.Contain("no answer within 0.3 s"));
        }
        finally { silent.Stop(); }
    }

    [TestCase("https://127.0.0.1:9/metrics")]
    [TestCase("127.0.0.1:9100")]
    [TestCase("")]
    public void BadUrlsAreConfigurationErrors(string url)
    {
        var e = Assert.Throws<AutoscaleException>(() => new RouterMetricsSignal([url], TimeSpan.FromSeconds(1)).Dispose());
        Assert.That(e!.Code, Is.EqualTo("autoscale.bad_signal"));
        e = Assert.Throws<AutoscaleException>(() => new RouterMetricsSignal([], TimeSpan.FromSeconds(1)).Dispose());
        Assert.That(e!.Code, Is.EqualTo("autoscale.bad_signal"));
    }

    private static int ClosedPort()
    {
        var l = new TcpListener(IPAddress.Loopback, 0);
        l.Start();
        int p = ((IPEndPoint)l.LocalEndpoint).Port;
        l.Stop();
        return p;
    }

    /// <summary>Answers every request on a loopback port with one fixed text body.</summary>
    internal sealed class TinyHttp : IDisposable
    {
        private readonly TcpListener _l = new(IPAddress.Loopback, 0);
        private readonly CancellationTokenSource _stop = new();
        public string Url { get; }

        public TinyHttp(string body)
        {
            _l.Start();
            Url = $"http://127.0.0.1:{((IPEndPoint)_l.LocalEndpoint).Port}/metrics";
            byte[] payload = Encoding.UTF8.GetBytes(body);
            _ = Task.Run(async () =>
            {
                while (!_stop.IsCancellationRequested)
                {
                    TcpClient c;
                    try { c = await _l.AcceptTcpClientAsync(_stop.Token); } catch { return; }
                    _ = Task.Run(async () =>
                    {
                        using (c)
                        {
                            var st = c.GetStream();
                            var buf = new byte[4096];
                            int n = 0;
                            while (n < buf.Length && !Encoding.ASCII.GetString(buf, 0, n).Contains("\r\n\r\n"))
                            {
                                int k = await st.ReadAsync(buf.AsMemory(n));
                                if (k == 0) return;
                                n += k;
                            }
                            var head = Encoding.ASCII.GetBytes($"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {payload.Length}\r\nConnection: close\r\n\r\n");
                            await st.WriteAsync(head);
                            await st.WriteAsync(payload);
                        }
                    });
                }
            });
        }

        public void Dispose()
        {
            _stop.Cancel();
            _l.Stop();
        }
    }
}
