using FastServe.Runtime.Generation;
using NUnit.Framework;

namespace FastServe.Tests.Generation;

public class StopMatcherTests
{
    [Test]
    public void HoldsBackPossiblePrefixesAndCutsAtTheStop()
    {
        var m = new StopMatcher(["\n\n", "END"]);
        Assert.That(m.Append("Hello E"), Is.EqualTo("Hello "));
        Assert.That(m.Append("N"), Is.EqualTo(""));
        Assert.That(m.Append("X and"), Is.EqualTo("ENX and"));
        Assert.That(m.Append(" more\n"), Is.EqualTo(" more"));
        Assert.That(m.Append("\nignored"), Is.EqualTo(""));
        Assert.That(m.Stopped, Is.True);
        Assert.That(m.Flush(), Is.EqualTo(""));
    }

    [Test]
    public void FlushReleasesAHeldPrefixThatNeverCompleted()
    {
        var m = new StopMatcher(["###"]);
        Assert.That(m.Append("a##"), Is.EqualTo("a"));
        Assert.That(m.Stopped, Is.False);
        Assert.That(m.Flush(), Is.EqualTo("##"));
    }

    [Test]
    public void EarliestStopWins()
    {
        var m = new StopMatcher(["bc", "ab"]);
        Assert.That(m.Append("xabc"), Is.EqualTo("x"));
        Assert.That(m.Stopped, Is.True);
    }
}
