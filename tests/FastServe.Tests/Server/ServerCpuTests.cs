using NUnit.Framework;
using FastServe.Client;
using FastServe.Protocol;

namespace FastServe.Tests.Server;

/// <summary>A replica on the real CPU backend (tiny model): stop strings matched in the worker, and the client
/// library against the real server.</summary>
[TestFixture, NonParallelizable]
public sealed class ServerCpuTests
{
    private ReplicaProcess _r = null!;

    [OneTimeSetUp]
    public void Start() => _r = ReplicaProcess.Start(["--backend", "cpu", "--model", TestModels.Tiny, "--workers", "1", "--overlap", "off"], metrics: false, agent: false);

    [OneTimeTearDown]
    public void Stop() => _r.Dispose();

    [Test]
    public void ReadyEventReportsEachStartStageInOrder() => _r.AssertStartStages();

    [Test]
    public void StopStringsEndTheStreamJustBeforeTheMatch()
    {
        using var c = RawConnection.Open(_r.Port);
        c.Request(1, "Correct the grammar: she go to school yesterday.", 40);
        Assert.That(c.Collect([1]), Is.True);
        string full = c.Outcomes[1].TextString;
        Assert.That(full.Length, Is.GreaterThan(12), "greedy output long enough to cut");
        string stop = full.Substring(full.Length / 2, 3);
        int cut = full.IndexOf(stop, StringComparison.Ordinal);
        c.Request(2, "Correct the grammar: she go to school yesterday.", 40, stops: [stop]);
        Assert.That(c.Collect([2]), Is.True);
        var o = c.Outcomes[2];
        Assert.That(o.Final.Status, Is.EqualTo(WireStatus.Ok));
        Assert.That(o.Final.Finish, Is.EqualTo(WireFinish.Stop));
        Assert.That(o.TextString, Is.EqualTo(full[..cut]), "text up to, not including, the first match");
        Assert.That(o.Ids, Has.Count.LessThan(40));
        // A stop string that never appears changes nothing.
        c.Request(3, "Correct the grammar: she go to school yesterday.", 40, stops: ["\u0001never\u0002"]);
        Assert.That(c.Collect([3]), Is.True);
        Assert.That(c.Outcomes[3].TextString, Is.EqualTo(full));
        Assert.That(c.Outcomes[3].Final.Finish, Is.EqualTo(WireFinish.Length));
    }

    [Test]
    public async Task TheClientLibraryStreamsFromTheRealServer()
    {
        await using var client = await FastServeClient.ConnectAsync("127.0.0.1", _r.Port);
        var calls = Enumerable.Range(0, 6).Select(i => client.Start(new CompletionRequest
        {
            Prompt = $"Correct the grammar: they was happy {i}.",
            Params = RequestParams.Default with { MaxTokens = 12, IgnoreEos = true },
        })).ToArray();
        var results = await Task.WhenAll(calls.Select(c => c.Completion));
        foreach (var r in results)
        {
            Assert.That(r.IsOk, Is.True, r.Message);
            Assert.That(r.Ids, Has.Length.EqualTo(12));
            Assert.That(r.CompletionTokens, Is.EqualTo(12));
        }
        // Greedy decoding is deterministic: the same prompt again gives the same text.
        var again = await client.CompleteAsync(new CompletionRequest { Prompt = "Correct the grammar: they was happy 0.", Params = RequestParams.Default with { MaxTokens = 12, IgnoreEos = true } });
        Assert.That(again.Text, Is.EqualTo(results[0].Text));
        Assert.That((await client.GetLoadAsync()).State, Is.EqualTo(ReplicaState.Ready));
    }
}
