using FastServe.Client;
using FastServe.Protocol;
using FastServe.Router;
using NUnit.Framework;
using static FastServe.Tests.Router.RouterRulesTests;

namespace FastServe.Tests.Router;

/// <summary>
/// A request for per-token log-probabilities (protocol 1.4) through the router: it reaches only replicas that speak
/// 1.4, with its fields intact; with none, it is refused as having no endpoint rather than answered without them.
/// </summary>
[TestFixture]
public sealed class RouterTokenLogprobsTests
{
    private static RouterOptions Opt() => new() { Port = 0, SlowStartMs = 0, Seed = 17 };

    private static CompletionRequest Asking() =>
        new() { Prompt = "hi", Params = RequestParams.Default with { MaxTokens = 3, TokenLogprobs = true, TopLogprobs = 4 } };

    [Test]
    public async Task OnlyReplicasOfMinor4GetThem()
    {
        using var old = new ScriptedReplica("old") { Minor = 3 };
        using var now = new ScriptedReplica("new") { Minor = 4 };
        await using var router = await Start(Opt(), Src(old, now), 2);
        await using var c = await FastServeClient.ConnectAsync("127.0.0.1", router.Port);
        for (int i = 0; i < 8; i++)
        {
            var r = await c.Start(Asking()).Completion;
            Assert.That(r.IsOk, r.Message);
        }
        Assert.That((old.Requests.Count, now.Requests.Count), Is.EqualTo((0, 8)));
        Assert.That(RequestView.TryParse(now.Payloads.First(), out var v), Is.EqualTo(RequestParseError.None));
        Assert.That((v.WantsTokenLogprobs, v.TopLogprobs), Is.EqualTo((true, (byte)4)), "forwarded as the client wrote them");

        // Requests that do not ask still go to both.
        for (int i = 0; i < 16; i++) await c.Start(Req()).Completion;
        Assert.That(old.Requests, Is.Not.Empty);
    }

    [Test]
    public async Task WithoutAMinor4ReplicaTheyHaveNoEndpoint()
    {
        using var old = new ScriptedReplica("old") { Minor = 3 };
        await using var router = await Start(Opt(), Src(old), 1);
        await using var c = await FastServeClient.ConnectAsync("127.0.0.1", router.Port);
        var r = await c.Start(Asking()).Completion;
        Assert.That((r.StatusName, r.Detail), Is.EqualTo(("unavailable", "router.no_endpoint")), r.Message);
        Assert.That(old.Requests, Is.Empty);
        Assert.That((await c.Start(Req()).Completion).IsOk, "a request that does not ask is served");
    }
}
