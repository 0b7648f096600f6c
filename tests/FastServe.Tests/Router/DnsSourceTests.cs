using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using FastServe.Router;
using NUnit.Framework;

namespace FastServe.Tests.Router;

/// <summary>The DNS endpoint source against a real dnsmasq on loopback: A/AAAA re-resolved as records change, SRV
/// targets with their ports and weights, and failures that keep the previous set.</summary>
[NonParallelizable]
public class DnsSourceTests
{
    private static async Task<IReadOnlyList<EndpointSpec>> NextAsync(IAsyncEnumerator<IReadOnlyList<EndpointSpec>> e, double seconds = 10)
    {
        var move = e.MoveNextAsync().AsTask();
        Assert.That(await Task.WhenAny(move, Task.Delay(TimeSpan.FromSeconds(seconds))), Is.SameAs(move), "the source yielded a set in time");
        Assert.That(move.Result, Is.True);
        return e.Current;
    }

    [Test]
    public async Task ARecordsAreReResolvedAsTheyChange()
    {
        using var dns = new Dnsmasq();
        dns.Hosts("a", "127.0.0.21 replica.fleet.test\n127.0.0.22 replica.fleet.test\n");
        var src = new DnsEndpointSource("replica.fleet.test", 7700, TimeSpan.FromMilliseconds(200), [dns.Server]);
        Assert.That(src.Description, Is.EqualTo("dns:replica.fleet.test:7700"));
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        await using var e = src.WatchAsync(cts.Token).GetAsyncEnumerator(cts.Token);
        var first = await NextAsync(e);
        Assert.That(first.Select(x => x.Address), Is.EqualTo(new[] { "127.0.0.21:7700", "127.0.0.22:7700" }));

        // One replica leaves and another joins: a new full set, nothing else.
        dns.Hosts("a", "127.0.0.22 replica.fleet.test\n127.0.0.23 replica.fleet.test\n");
        var second = await NextAsync(e);
        Assert.That(second.Select(x => x.Address), Is.EqualTo(new[] { "127.0.0.22:7700", "127.0.0.23:7700" }));
    }

    [Test]
    public async Task SrvRecordsGiveTargetsPortsAndWeightsOfTheBestPriority()
    {
        using var dns = new Dnsmasq(
            "--srv-host=_fastserve._tcp.fleet.test,r1.fleet.test,7001,0,5",
            "--srv-host=_fastserve._tcp.fleet.test,r2.fleet.test,7002,0,0",
            "--srv-host=_fastserve._tcp.fleet.test,backup.fleet.test,7003,10,1",
            "--host-record=r1.fleet.test,127.0.0.31",
            "--host-record=r2.fleet.test,127.0.0.32",
            "--host-record=backup.fleet.test,127.0.0.33");
        var src = new DnsEndpointSource("_fastserve._tcp.fleet.test", null, TimeSpan.FromSeconds(1), [dns.Server]);
        var set = await src.ResolveAsync(CancellationToken.None);
        Assert.That(set.Select(x => (x.Address, x.Weight)), Is.EqualTo(new[] { ("127.0.0.31:7001", 5.0), ("127.0.0.32:7002", 1.0) }),
            "priority 10 is a backup and left out; weight 0 counts as 1");
    }

    [Test]
    public async Task AFailingOrEmptyAnswerKeepsThePreviousSet()
    {
        using var dns = new Dnsmasq();
        dns.Hosts("a", "127.0.0.41 replica.fleet.test\n");
        var logs = new List<string>();
        var src = new DnsEndpointSource("replica.fleet.test", 7700, TimeSpan.FromMilliseconds(150), [dns.Server], l => { lock (logs) logs.Add(l); });
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        await using var e = src.WatchAsync(cts.Token).GetAsyncEnumerator(cts.Token);
        Assert.That((await NextAsync(e)).Select(x => x.Address), Is.EqualTo(new[] { "127.0.0.41:7700" }));
        // The name disappears: the source logs and yields nothing (no empty set) ...
        dns.Hosts("a", "");
        var move = e.MoveNextAsync().AsTask();
        await Task.WhenAny(move, Task.Delay(1500));
        Assert.That(move.IsCompleted, Is.False, "no new set while the answer is empty");
        lock (logs) Assert.That(logs, Has.Some.Contains("keeping the previous 1-endpoint set"));
        // ... and picks the name up again when it comes back.
        dns.Hosts("a", "127.0.0.42 replica.fleet.test\n");
        Assert.That(await Task.WhenAny(move, Task.Delay(10_000)), Is.SameAs(move));
        Assert.That(e.Current.Select(x => x.Address), Is.EqualTo(new[] { "127.0.0.42:7700" }));
    }

    [Test]
    public void SourceTextParses()
    {
        var a = EndpointSources.Parse("dns:replica.fleet.test:7700");
        Assert.That(a, Is.TypeOf<DnsEndpointSource>());
        Assert.That(((DnsEndpointSource)a).Port, Is.EqualTo(7700));
        var s = EndpointSources.Parse("dns:_fastserve._tcp.replica.ns.svc.cluster.local");
        Assert.That(((DnsEndpointSource)s).Port, Is.Null);
        Assert.That(Assert.Throws<EndpointSourceException>(() => EndpointSources.Parse("dns:"))!.Code, Is.EqualTo("route.bad_source"));
        Assert.That(Assert.Throws<EndpointSourceException>(() => EndpointSources.Parse("dns:name:99999"))!.Code, Is.EqualTo("route.bad_source"));
        foreach (var bad in new[] { "dns://replicas.local:7700", "dns:a..b:7700", "dns:-a.b", "dns:a b:7700", "dns:x:port" })
            Assert.That(Assert.Throws<EndpointSourceException>(() => EndpointSources.Parse(bad))!.Code, Is.EqualTo("route.bad_source"), bad);
    }
}

/// <summary>A dnsmasq on a free loopback port answering from a watched hosts directory (installed by test.sh: dnsmasq-base).</summary>
internal sealed class Dnsmasq : IDisposable
{
    private readonly Process _p;
    public readonly int Port;
    public readonly string HostsDir;

    public Dnsmasq(params string[] extra)
    {
        HostsDir = Directory.CreateTempSubdirectory("fs-dns-").FullName;
        var probe = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
        probe.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        Port = ((IPEndPoint)probe.LocalEndPoint!).Port;
        probe.Dispose();
        string exe = File.Exists("/usr/sbin/dnsmasq") ? "/usr/sbin/dnsmasq" : "dnsmasq";
        var psi = new ProcessStartInfo(exe) { RedirectStandardError = true, RedirectStandardOutput = true };
        foreach (var a in new[] { "--keep-in-foreground", "--no-daemon", $"--port={Port}", "--listen-address=127.0.0.1", "--bind-interfaces",
                     "--no-resolv", "--no-hosts", "--user=root", $"--hostsdir={HostsDir}", "--local-ttl=0", "--log-facility=-" })
            psi.ArgumentList.Add(a);
        foreach (var a in extra) psi.ArgumentList.Add(a);
        _p = Process.Start(psi) ?? throw new InvalidOperationException("dnsmasq did not start");
        _p.BeginOutputReadLine();
        _p.BeginErrorReadLine();
        Thread.Sleep(300);
        Assert.That(_p.HasExited, Is.False, "dnsmasq is running (installed by test.sh: dnsmasq-base)");
    }

    public IPEndPoint Server => new(IPAddress.Loopback, Port);

    // dnsmasq watches --hostsdir with inotify: writing a new file there changes its answers.
    public void Hosts(string name, string text) => File.WriteAllText(Path.Combine(HostsDir, name), text);

    public void Dispose()
    {
        try { _p.Kill(); _p.WaitForExit(5000); } catch (InvalidOperationException) { }
        _p.Dispose();
        Directory.Delete(HostsDir, recursive: true);
    }
}
