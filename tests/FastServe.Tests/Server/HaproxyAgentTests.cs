using NUnit.Framework;
using System.Diagnostics;
using System.Text;
using FastServe.Protocol;

namespace FastServe.Tests.Server;

/// <summary>
/// The agent check against a real HAProxy (Debian's; test.sh installs it): two replicas behind HAProxy in TCP mode
/// with `agent-check`; once one drains, HAProxy sends it no new connections while its in-flight work finishes.
/// </summary>
[TestFixture, NonParallelizable]
public sealed class HaproxyAgentTests
{
    [Test]
    public void ADrainingReplicaStopsReceivingNewConnections()
    {
        string haproxyPath = new[] { "/usr/sbin/haproxy", "/usr/bin/haproxy" }.FirstOrDefault(File.Exists)
            ?? throw new InconclusiveException("haproxy is not installed (test.sh installs it)");
        string token = "t-" + Guid.NewGuid().ToString("N");
        var env = new Dictionary<string, string> { ["FASTSERVE_ADMIN_TOKEN"] = token };
        string[] common = ["--backend", "sim", "--model", TestModels.Tiny, "--sim-time-scale", "100", "--workers", "1", "--grace-ms", "20000"];
        using var a = ReplicaProcess.Start([.. common, "--name", "replica-a"], env, metrics: false);
        using var b = ReplicaProcess.Start([.. common, "--name", "replica-b"], env, metrics: false);
        int front = ReplicaProcess.FreePort();
        string dir = TestModels.TempDir("haproxy");
        string cfg = Path.Combine(dir, "haproxy.cfg");
        File.WriteAllText(cfg, $"""
            global
              maxconn 4096
            defaults
              mode tcp
              timeout connect 2s
              timeout client 30s
              timeout server 30s
            frontend fe
              bind 127.0.0.1:{front}
              default_backend replicas
            backend replicas
              balance roundrobin
              server a 127.0.0.1:{a.Port} check inter 200ms agent-check agent-port {a.AgentPort} agent-inter 200ms
              server b 127.0.0.1:{b.Port} check inter 200ms agent-check agent-port {b.AgentPort} agent-inter 200ms
            """ + "\n");
        var psi = new ProcessStartInfo(haproxyPath) { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false };
        foreach (var x in new[] { "-db", "-f", cfg }) psi.ArgumentList.Add(x);
        using var hp = Process.Start(psi)!;
        var hpErr = new StringBuilder();
        hp.ErrorDataReceived += (_, e) => { lock (hpErr) hpErr.AppendLine(e.Data); };
        hp.BeginErrorReadLine();
        try
        {
            string NameThroughHaproxy()
            {
                var until = DateTime.UtcNow.AddSeconds(10);
                while (true)
                {
                    try
                    {
                        using var c = RawConnection.Open(front);
                        return c.Server.ServerName;
                    }
                    catch (Exception e) when (e is System.Net.Sockets.SocketException or IOException && DateTime.UtcNow < until) { Thread.Sleep(100); }
                }
            }
            Thread.Sleep(1000); // first health and agent checks
            var before = Enumerable.Range(0, 20).Select(_ => NameThroughHaproxy()).ToList();
            Assert.That(before, Does.Contain("replica-a").And.Contain("replica-b"), "both replicas receive connections at first");

            // A long request keeps replica A draining for a while; then A is drained with the admin token.
            using var longRun = RawConnection.Open(a.Port);
            longRun.Request(1, "keeps the replica busy", 300);
            while (!longRun.Outcomes.ContainsKey(1)) longRun.Record(longRun.Read(TimeSpan.FromSeconds(10))!.Value);
            using (var admin = RawConnection.Open(a.Port))
            {
                admin.Send(w => FrameWriter.Drain(w, Encoding.UTF8.GetBytes(token)));
                Assert.That(admin.Read(TimeSpan.FromSeconds(5))?.Header.Type, Is.EqualTo(FrameType.DrainOk));
            }
            Thread.Sleep(800); // several agent-check intervals
            Assert.That(a.Proc.HasExited, Is.False, "A is still finishing its request");
            var after = Enumerable.Range(0, 30).Select(_ => NameThroughHaproxy()).ToList();
            Assert.That(after, Is.All.EqualTo("replica-b"), "HAProxy sends new connections only to the replica that is not draining");
            Assert.That(longRun.Collect([1]), Is.True);
            Assert.That(longRun.Outcomes[1].Final.Status, Is.EqualTo(WireStatus.Ok), "the draining replica finished its in-flight request");
            Assert.That(a.Proc.WaitForExit(15_000), Is.True);
        }
        finally
        {
            if (!hp.HasExited) hp.Kill();
            hp.WaitForExit(5000);
            lock (hpErr) TestContext.Out.WriteLine(hpErr.ToString());
        }
    }
}
