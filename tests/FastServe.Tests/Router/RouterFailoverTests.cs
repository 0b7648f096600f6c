using NUnit.Framework;
using System.Diagnostics;
using System.Text.Json;
using FastServe.Client;
using FastServe.Protocol;
using FastServe.Tests.Server;

namespace FastServe.Tests.Router;

/// <summary>
/// Streams that survive a replica's death: two real replicas (simulated device, whose tokens depend only on seed,
/// prompt and position, as the counter-based sampler's do) behind the published router; several streams in flight,
/// greedy and seeded, and the replica serving most of them killed with SIGKILL mid-stream. Every stream must end ok,
/// once, with exactly the ids and text of a run without the fault: the router resumes each lost stream on the other
/// replica from what the client already had.
/// </summary>
[TestFixture, NonParallelizable]
public sealed class RouterFailoverTests
{
    private static ReplicaProcess StartReplica(int port) =>
        ReplicaProcess.Start(["--backend", "sim", "--model", TestModels.Tiny, "--workers", "1", "--sim-time-scale", "10"], metrics: false, agent: false, port: port);

    private static CompletionRequest Request(int i) => new()
    {
        Prompt = $"Correct the grammar: stream {i} have a error in it.",
        Params = RequestParams.Default with
        {
            MaxTokens = 1000, IgnoreEos = true, DeadlineMs = 30_000,
            // Half greedy, half sampled with a seed.
            Temperature = i % 2 == 0 ? 0 : 0.8f, Seed = i % 2 == 0 ? null : 1000UL + (ulong)i,
        },
        Stops = i % 3 == 0 ? ["\u0007\u0007"] : null,
    };

    [Test]
    public async Task KillingTheReplicaMidStreamResumesEveryStreamExactly()
    {
        _ = TestModels.Tiny;
        int[] ports = [ReplicaProcess.FreePort(), ReplicaProcess.FreePort()];
        var rs = new ReplicaProcess[2];
        var starts = ports.Select((p, i) => Task.Run(() => rs[i] = StartReplica(p))).ToArray();
        try
        {
            await Task.WhenAll(starts);
            using var router = RouterProcess.Start(ports, "--slow-start-ms", "0");
            await using var client = await FastServeClient.ConnectAsync("127.0.0.1", router.Port, new FastServeClientOptions { ClientName = "failover" });
            var sw = Stopwatch.StartNew();
            while ((await client.GetLoadAsync()).Workers < 2)
            {
                if (sw.Elapsed.TotalSeconds > 15) Assert.Fail($"the router never saw 2 replicas; stderr:\n{router.Stderr}");
                await Task.Delay(20);
            }

            const int streams = 8;
            // Without a fault: the expected ids and text of each stream.
            sw.Restart();
            var expected = await Task.WhenAll(Enumerable.Range(0, streams).Select(i => client.Start(Request(i)).Completion));
            TestContext.Out.WriteLine($"without a fault: {streams} streams in {sw.ElapsedMilliseconds} ms");
            Assert.That(expected.Select(r => r.StatusName), Is.All.EqualTo("ok"));

            var calls = Enumerable.Range(0, streams).Select(i => client.Start(Request(i))).ToArray();
            // Once every stream has output, kill the replica running most of them.
            sw.Restart();
            while (calls.Any(c => c.FirstTokenTimestamp == 0) && sw.Elapsed.TotalSeconds < 20) await Task.Delay(5);
            await Task.Delay(100);
            var load = rs.Select(r => r.WaitLoad(_ => true).InFlight).ToArray();
            int victim = load[0] >= load[1] ? 0 : 1;
            Assert.That(calls.Count(c => c.Completion.IsCompleted), Is.LessThan(streams / 2), "the kill lands mid-stream");
            RouterChaosTests.KillHard(rs[victim]);
            TestContext.Out.WriteLine($"killed replica {victim} with {load[victim]} of {streams} streams in flight");

            var all = Task.WhenAll(calls.Select(c => c.Completion));
            Assert.That(await Task.WhenAny(all, Task.Delay(30_000)), Is.SameAs(all), "every stream got its final status");
            var got = await all;
            for (int i = 0; i < streams; i++)
            {
                Assert.That((got[i].StatusName, got[i].Detail), Is.EqualTo(("ok", (string?)null)).Or.EqualTo(("ok", "")), $"stream {i}: {got[i].Message}");
                Assert.That(got[i].Ids, Is.EqualTo(expected[i].Ids), $"stream {i}: the ids of a run without the fault");
                Assert.That(got[i].Text, Is.EqualTo(expected[i].Text), $"stream {i}: the text of a run without the fault");
                Assert.That(got[i].CompletionTokens, Is.EqualTo(expected[i].CompletionTokens), $"stream {i}");
                Assert.That(got[i].PromptTokens, Is.EqualTo(expected[i].PromptTokens), $"stream {i}");
            }
            Assert.That(client.IsConnected, Is.True, "a duplicate or stray frame would have closed the client");

            JsonElement stopped = router.Stop();
            TestContext.Out.WriteLine($"router stopped event: {stopped.GetRawText()}");
            Assert.That(stopped.GetProperty("resumes").GetInt64(), Is.InRange(1, load[victim]), "the streams on the killed replica were resumed, each once");
            Assert.That(stopped.GetProperty("upstream_lost").GetInt64(), Is.Zero);
        }
        finally
        {
            await Task.WhenAll(starts.Select(t => t.ContinueWith(_ => { })));
            foreach (var r in rs) r?.Dispose();
        }
    }
}
