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

    [Test]
    public void Utf8PathMatchesMultiByteStopsAcrossDeltas()
    {
        var m = new StopMatcher(["—end", "日本"]);
        var w = new System.Buffers.ArrayBufferWriter<byte>();
        void Feed(string d) => m.AppendUtf8(System.Text.Encoding.UTF8.GetBytes(d), w);
        Feed("café —");
        Assert.That(System.Text.Encoding.UTF8.GetString(w.WrittenSpan), Is.EqualTo("café "), "a possible stop start is held back");
        Feed("en");
        Feed("x 日");
        Assert.That(System.Text.Encoding.UTF8.GetString(w.WrittenSpan), Is.EqualTo("café —enx "));
        Feed("本 after");
        Assert.That(m.Stopped, Is.True);
        Assert.That(System.Text.Encoding.UTF8.GetString(w.WrittenSpan), Is.EqualTo("café —enx "));
        m.FlushUtf8(w);
        Assert.That(System.Text.Encoding.UTF8.GetString(w.WrittenSpan), Is.EqualTo("café —enx "), "nothing after a stop");
    }
}
