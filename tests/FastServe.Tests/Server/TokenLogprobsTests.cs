using System.Text;
using System.Text.Json;
using FastServe.Client;
using FastServe.Protocol;
using FastServe.Tests.Cli;
using FastServe.Tests.Client;
using NUnit.Framework;

namespace FastServe.Tests.Server;

/// <summary>
/// Per-token log-probabilities (protocol 1.4) from a real replica of the trained gec-tiny on the CPU: the values the
/// engine's sampler computes reach the client in each DELTA, equal to what <c>fastserve generate --logprobs</c>
/// computes in-process for the same prompt, with the alternatives in order and the token bytes; a request that does
/// not ask gets no section; the rules refuse more than 20 alternatives; an older server is refused by the client.
/// </summary>
[TestFixture, NonParallelizable]
public sealed class TokenLogprobsTests
{
    private const string Prompt = "Correct: she go to school yesterday\nFixed:";
    private ReplicaProcess _r = null!;

    private static string GecTiny => Path.Combine(TestModels.RepoRoot, "models", "gec-tiny");

    [OneTimeSetUp]
    public void Start() =>
        _r = ReplicaProcess.Start(["--backend", "cpu", "--model", GecTiny, "--workers", "1"], metrics: false, agent: false);

    [OneTimeTearDown]
    public void Stop() => _r?.Dispose();

    private static CompletionRequest Req(int top, bool ignoreEos = true, int maxTokens = 12) => new()
    {
        Prompt = Prompt,
        Params = RequestParams.Default with { MaxTokens = maxTokens, Temperature = 0, IgnoreEos = ignoreEos, TokenLogprobs = true, TopLogprobs = top },
    };

    [Test]
    public async Task GreedyTokensCarryTheValuesGenerateComputes()
    {
        await using var c = await FastServeClient.ConnectAsync("127.0.0.1", _r.Port);
        Assert.That(c.Server.Minor, Is.GreaterThanOrEqualTo(4));
        var r = await c.CompleteAsync(Req(3));
        Assert.That(r.IsOk, r.Message);
        var lp = r.TokenLogprobs!;
        Assert.That(lp.Select(t => t.Id), Is.EqualTo(r.Ids), "one entry per id (ignore_eos: no ending EOS)");
        Assert.That(lp, Has.Length.EqualTo(r.CompletionTokens));
        foreach (var t in lp)
        {
            Assert.That(t.Top, Has.Length.EqualTo(3));
            Assert.That(t.Top[0].Id, Is.EqualTo(t.Id), "greedy: the chosen token is the most likely");
            Assert.That(t.Logprob, Is.EqualTo(t.Top[0].Logprob));
            Assert.That(t.Top.Select(a => a.Logprob), Is.Ordered.Descending);
            Assert.That(t.Logprob, Is.LessThanOrEqualTo(0f));
            Assert.That(t.Top.Select(a => a.Id).Distinct().Count(), Is.EqualTo(3));
        }
        // Byte-level BPE: the tokens' bytes are the text.
        Assert.That(Encoding.UTF8.GetString(lp.SelectMany(t => t.Bytes).ToArray()), Is.EqualTo(r.Text));

        var g = CliTests.Run("generate", "--model", GecTiny, "--max-tokens", "12", "--ignore-eos", "--logprobs", "3", "--json", Prompt);
        Assert.That(g.Code, Is.Zero, g.Err);
        using var gen = JsonDocument.Parse(g.Out);
        var want = gen.RootElement.GetProperty("logprobs").EnumerateArray().ToArray();
        Assert.That(want.Select(e => e.GetProperty("id").GetInt32()), Is.EqualTo(r.Ids), "same greedy tokens in-process");
        for (int i = 0; i < want.Length; i++)
        {
            Assert.That(lp[i].Logprob, Is.EqualTo(want[i].GetProperty("logprob").GetSingle()).Within(2e-3), $"token {i}");
            var top = want[i].GetProperty("top").EnumerateArray().ToArray();
            for (int j = 0; j < 3; j++)
                Assert.That(lp[i].Top[j].Logprob, Is.EqualTo(top[j].GetProperty("logprob").GetSingle()).Within(2e-3), $"token {i}, alternative {j}");
        }
    }

    [Test]
    public async Task StreamedDeltasCarryTheirOwnTokensAndAnEndingEosHasNone()
    {
        await using var c = await FastServeClient.ConnectAsync("127.0.0.1", _r.Port);
        var call = c.Start(Req(0, ignoreEos: false, maxTokens: 64));
        int deltas = 0;
        await foreach (var d in call.Deltas.ReadAllAsync())
        {
            if (d.Ids.Length == 0) continue;
            deltas++;
            Assert.That(d.Logprobs, Is.Not.Null);
            Assert.That(d.Logprobs!.Select(t => t.Id), Is.EqualTo(d.Ids).Or.EqualTo(d.Ids[..^1]), "an entry per id, but an ending EOS");
            Assert.That(d.Logprobs!.All(t => t.Top.Length == 0), "top_logprobs 0: no alternatives");
        }
        var r = await call.Completion;
        Assert.That(r.IsOk, r.Message);
        Assert.That(deltas, Is.GreaterThan(1));
        Assert.That(r.Finish, Is.EqualTo(WireFinish.Eos), "the gec model ends its correction with EOS");
        Assert.That(r.TokenLogprobs!.Select(t => t.Id), Is.EqualTo(r.Ids[..^1]), "every token but the EOS that ended it");
    }

    [Test]
    public async Task ARequestThatDoesNotAskGetsNone()
    {
        await using var c = await FastServeClient.ConnectAsync("127.0.0.1", _r.Port);
        var call = c.Start(new CompletionRequest { Prompt = Prompt, Params = RequestParams.Default with { MaxTokens = 4, Temperature = 0 } });
        await foreach (var d in call.Deltas.ReadAllAsync()) Assert.That(d.Logprobs, Is.Null);
        var r = await call.Completion;
        Assert.That((r.IsOk, r.TokenLogprobs), Is.EqualTo((true, (TokenLogprobs[]?)null)));
    }

    [Test]
    public void MoreThan20AlternativesIsASamplingRuleOnTheReplica()
    {
        using var raw = RawConnection.Open(_r.Port);
        var p = RequestParams.Default with { MaxTokens = 4, TokenLogprobs = true, TopLogprobs = 21 };
        raw.Send(w => FrameWriter.Request(w, 1, p, Encoding.UTF8.GetBytes(Prompt), default));
        Assert.That(raw.Collect([1], 30), Is.True, _r.Stderr);
        var o = raw.Outcomes[1];
        Assert.That((o.Final.Status, o.Detail), Is.EqualTo((WireStatus.BadRequest, RequestRules.SamplingInvalid)));
    }

    [Test]
    public async Task TheClientRefusesThemAgainstAnOlderServer()
    {
        using var peer = new ScriptedPeer();
        var accept = peer.AcceptHandshakeAsync(ScriptedPeer.DefaultHello with { Minor = 3 });
        await using var c = await FastServeClient.ConnectAsync("127.0.0.1", peer.Port);
        using var conn = await accept;
        var r = await c.CompleteAsync(Req(2));
        Assert.That((r.ClientFailure, r.Detail), Is.EqualTo((ClientFailure.Rejected, "client.logprobs_unsupported")));
    }
}
