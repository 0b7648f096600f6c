using System.Buffers.Binary;
using FastServe.Client;
using FastServe.Protocol;
using FastServe.Router;
using NUnit.Framework;
using static FastServe.Tests.Router.RouterRulesTests;

namespace FastServe.Tests.Router;

/// <summary>
/// The router's side of failover, with scripted replicas: what a resume carries (the ids and text bytes passed to the
/// client, the same drawn seed), that only replicas of protocol 1.3 get one, and that the client sees one stream.
/// </summary>
[TestFixture]
public sealed class RouterResumeTests
{
    private static RouterOptions Opt() => new() { Port = 0, SlowStartMs = 0, Seed = 17 };

    // Once the stream runs on `from` and its first token reached the client: `to` (endpoint `toIndex`) becomes ready and
    // `from` loses its connections, so the router must resume the stream elsewhere.
    private static async Task LoseMidStream(RouterHost router, CompletionCall call, ScriptedReplica from, ScriptedReplica to, int toIndex)
    {
        await Until(() => from.HeldCount == 1 && call.FirstTokenTimestamp != 0, $"streaming on {from.Name}, first token at the client");
        to.State = ReplicaState.Ready;
        await Until(() => router.Fleet.Endpoints[toIndex].IsReady, $"{to.Name} ready");
        from.DropConnections();
    }

    private static CompletionRequest Sampled() =>
        new() { Prompt = "hi", Params = RequestParams.Default with { MaxTokens = 8, Temperature = 0.7f } };

    [Test]
    public async Task AStreamWhoseReplicaIsLostGoesOnOnAnotherFromWhatTheClientHad()
    {
        using var x = new ScriptedReplica("x") { Minor = 3, Text = "ab", OnRequest = _ => ScriptedReplica.Reply.StreamThenHold };
        using var y = new ScriptedReplica("y") { Minor = 3, State = ReplicaState.Starting, Text = "cd" };
        await using var router = await Start(Opt(), Src(x, y), 1);
        await using var c = await FastServeClient.ConnectAsync("127.0.0.1", router.Port);
        var call = c.Start(Sampled());
        await LoseMidStream(router, call, x, y, 1);
        var r = await call.Completion;

        Assert.That((r.StatusName, r.Detail ?? ""), Is.EqualTo(("ok", "")), r.Message);
        Assert.That(r.Ids, Is.EqualTo(new[] { 100, 100, 101, 102 }), "x's token, then y's: one stream");
        Assert.That(r.Text, Is.EqualTo("abcd"));
        // One resume, or two when x's second connection outlived the first for a moment and took one.
        Assert.That(router.Stats.Resumes, Is.InRange(1L, 2L));
        Assert.That((router.Stats.UpstreamLost, router.Stats.ResumeFailures), Is.EqualTo((0L, 0L)));
        Assert.That(c.IsConnected, Is.True);

        // x got the request without resume fields, but with a seed the router drew (the client gave none).
        Assert.That(x.Payloads.TryPeek(out var first), Is.True);
        Assert.That(RequestView.TryParse(first, out var v1), Is.EqualTo(RequestParseError.None));
        Assert.That((v1.IsResume, (v1.Flags & RequestFlags.HasSeed) != 0), Is.EqualTo((false, true)));
        ulong seed = v1.Seed;
        // y got the same request, same seed, with what the client had: x's one id and 2 text bytes.
        Assert.That(y.Payloads.TryPeek(out var second), Is.True);
        Assert.That(RequestView.TryParse(second, out var v2), Is.EqualTo(RequestParseError.None));
        Assert.That((v2.IsResume, v2.ResumeCount, v2.ResumeId(0), v2.ResumeTextBytes), Is.EqualTo((true, 1, 100, 2u)));
        Assert.That((v2.Seed, v2.MaxTokens, (v2.Flags & RequestFlags.HasSeed) != 0), Is.EqualTo((seed, 8u, true)));
        Assert.That(v2.Prompt.ToArray(), Is.EqualTo(v1.Prompt.ToArray()));
    }

    [Test]
    public async Task AStreamLostTwiceIsResumedTwiceFromEverythingDelivered()
    {
        using var x = new ScriptedReplica("x") { Minor = 3, Text = "a", OnRequest = _ => ScriptedReplica.Reply.StreamThenHold };
        using var y = new ScriptedReplica("y") { Minor = 3, State = ReplicaState.Starting, Text = "b", OnRequest = _ => ScriptedReplica.Reply.StreamThenHold };
        using var z = new ScriptedReplica("z") { Minor = 3, State = ReplicaState.Starting, Text = "c" };
        await using var router = await Start(new RouterOptions { Port = 0, SlowStartMs = 0, Seed = 17, ConnectionsPerEndpoint = 1 }, Src(x, y, z), 1);
        await using var c = await FastServeClient.ConnectAsync("127.0.0.1", router.Port);
        var call = c.Start(Sampled());
        await LoseMidStream(router, call, x, y, 1);
        await Until(() => y.HeldCount == 1, "resumed on y, which streamed a token");
        z.State = ReplicaState.Ready;
        await Until(() => router.Fleet.Endpoints[2].IsReady, "z ready");
        await Task.Delay(50);
        y.DropConnections();
        var r = await call.Completion;
        Assert.That((r.StatusName, r.Ids, r.Text), Is.EqualTo(("ok", new[] { 100, 100, 100, 101, 102 }, "abc")), r.Message);
        Assert.That(z.Payloads.TryPeek(out var last), Is.True);
        Assert.That(RequestView.TryParse(last, out var v), Is.EqualTo(RequestParseError.None));
        Assert.That((v.ResumeCount, v.ResumeTextBytes), Is.EqualTo((2, 2u)), "x's id and text, then y's");
        Assert.That((router.Stats.Resumes, router.Stats.UpstreamLost), Is.EqualTo((2L, 0L)));
    }

    [Test]
    public async Task AReplicaOfAnOlderMinorNeverGetsAResume()
    {
        using var x = new ScriptedReplica("x") { Minor = 3, OnRequest = _ => ScriptedReplica.Reply.StreamThenHold };
        using var y = new ScriptedReplica("y") { Minor = 2, State = ReplicaState.Starting };
        await using var router = await Start(Opt(), Src(x, y), 1);
        await using var c = await FastServeClient.ConnectAsync("127.0.0.1", router.Port);
        var call = c.Start(Sampled());
        await LoseMidStream(router, call, x, y, 1);
        var r = await call.Completion;
        Assert.That((r.StatusName, r.Detail, r.Retriable), Is.EqualTo(("unavailable", "router.upstream_lost", true)));
        Assert.That(y.Requests, Is.Empty, "a 1.2 replica would not understand the resume fields");
        // (x's other connection may take a resume for the moment it outlives the first: x speaks 1.3.)
        Assert.That((router.Stats.UpstreamLost, router.ResumeFailuresBy(ResumeFailure.NoEndpoint)), Is.EqualTo((1L, 1L)));
    }

    [Test]
    public async Task AGreedyOrSeededRequestKeepsItsOwnSeedField()
    {
        using var x = new ScriptedReplica("x") { Minor = 3 };
        await using var router = await Start(Opt(), Src(x), 1);
        await using var c = await FastServeClient.ConnectAsync("127.0.0.1", router.Port);
        await c.Start(Req()).Completion;
        await c.Start(new CompletionRequest { Prompt = "hi", Params = RequestParams.Default with { Temperature = 0.7f, Seed = 99 } }).Completion;
        var payloads = x.Payloads.ToArray();
        Assert.That(BinaryPrimitives.ReadUInt64LittleEndian(payloads[0].AsSpan(16)), Is.Zero, "greedy: no seed drawn");
        Assert.That(payloads[0][29] & (byte)RequestFlags.HasSeed, Is.Zero);
        Assert.That(BinaryPrimitives.ReadUInt64LittleEndian(payloads[1].AsSpan(16)), Is.EqualTo(99UL), "the client's seed stands");
    }
}
