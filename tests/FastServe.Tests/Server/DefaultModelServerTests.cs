using FastServe.Protocol;
using NUnit.Framework;

namespace FastServe.Tests.Server;

/// <summary>A replica started without --model serves the built-in default model (the checkout's trained gec-small),
/// and a request that ends at EOS gets the answer's text without the EOS token's.</summary>
[TestFixture, NonParallelizable]
public sealed class DefaultModelServerTests
{
    [Test]
    public void ServeWithoutModelAnswersInTheGecFormatAndEosAddsNoText()
    {
        if (!string.IsNullOrEmpty(Environment.GetEnvironmentVariable("FASTSERVE_DEFAULT_MODEL")))
            Assert.Ignore("FASTSERVE_DEFAULT_MODEL is set");
        using var r = ReplicaProcess.Start(["--backend", "cpu", "--workers", "1", "--overlap", "off"], metrics: false, agent: false);
        using var c = RawConnection.Open(r.Port);
        c.Request(1, "Correct: She don't like apples.\nFixed:", 32, ignoreEos: false);
        Assert.That(c.Collect([1]), Is.True);
        var o = c.Outcomes[1];
        TestContext.Out.WriteLine($"gec-small: {o.TextString}");
        Assert.That(o.Final.Status, Is.EqualTo(WireStatus.Ok));
        Assert.That(o.Final.Finish, Is.EqualTo(WireFinish.Eos), o.TextString);
        Assert.That(o.Ids[^1], Is.EqualTo(2), "gec-small's <|eos|> is the last id");
        Assert.That(o.TextString, Does.StartWith(" ").And.EndWith("\n").And.Not.Contain("<|eos|>"));

        // With ignore_eos an EOS is an ordinary token: its text is sent.
        c.Request(2, "Correct: She don't like apples.\nFixed:", o.Ids.Count + 1, ignoreEos: true);
        Assert.That(c.Collect([2]), Is.True);
        Assert.That(c.Outcomes[2].TextString, Does.StartWith(o.TextString + "<|eos|>"));
    }
}
