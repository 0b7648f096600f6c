using System.Text;
using FastServe.Protocol;
using NUnit.Framework;

namespace FastServe.Tests.Protocol;

/// <summary><see cref="Utf8Text.CompletePrefix"/>: what a text delta may send without splitting a UTF-8 sequence.</summary>
public class Utf8TextTests
{
    [TestCase("é", 2)]
    [TestCase("€", 3)]
    [TestCase("😀", 4)]
    [TestCase("\u007F", 1)]
    [TestCase("\u0080", 2)]
    [TestCase("\u07FF", 2)]
    [TestCase("\u0800", 3)]
    [TestCase("\uFFFF", 3)]
    [TestCase("\U00010000", 4)]
    [TestCase("\U0010FFFF", 4)]
    public void EverySplitOfOneSequence(string ch, int bytes)
    {
        var seq = Encoding.UTF8.GetBytes(ch);
        Assert.That(seq, Has.Length.EqualTo(bytes));
        foreach (var prefix in new[] { "", "a", "ab", "abc", "é", "€" })
        {
            var p = Encoding.UTF8.GetBytes(prefix);
            for (int k = 0; k <= bytes; k++)
            {
                byte[] s = [.. p, .. seq[..k]];
                int expect = k == bytes ? s.Length : p.Length;
                Assert.That(Utf8Text.CompletePrefix(s), Is.EqualTo(expect), $"'{prefix}' + {k} of {bytes} bytes of U+{char.ConvertToUtf32(ch, 0):X4}");
            }
        }
    }

    [Test]
    public void EverySplitOfMixedText()
    {
        var text = Encoding.UTF8.GetBytes("aé€😀b😀😀€éz");
        for (int k = 0; k <= text.Length; k++)
        {
            int boundary = k;
            while (boundary < text.Length && boundary > 0 && (text[boundary] & 0xC0) == 0x80) boundary--;
            int cut = Utf8Text.CompletePrefix(text.AsSpan(0, k));
            Assert.That(cut, Is.EqualTo(boundary), $"split at {k}");
            Assert.That(Utf8Text.IsValid(text.AsSpan(0, cut)), Is.True, $"split at {k}");
        }
    }

    [Test]
    public void Empty() => Assert.That(Utf8Text.CompletePrefix([]), Is.Zero);

    [TestCase(new byte[] { 0x80 }, 1, TestName = "LoneContinuationIsKept")]
    [TestCase(new byte[] { 0x80, 0x80, 0x80, 0x80 }, 4, TestName = "ContinuationRunIsKept")]
    [TestCase(new byte[] { 0x61, 0xBF, 0xBF, 0xBF, 0xBF }, 5, TestName = "LongContinuationRunIsKept")]
    [TestCase(new byte[] { 0xC3, 0xA9, 0xA9 }, 3, TestName = "ExtraContinuationIsKept")]
    [TestCase(new byte[] { 0xE2, 0x82, 0x61 }, 3, TestName = "BrokenSequenceBeforeAsciiIsKept")]
    [TestCase(new byte[] { 0x61, 0xFF }, 1, TestName = "InvalidLeadFFAtEndIsHeld")]
    [TestCase(new byte[] { 0x61, 0xF8, 0x80, 0x80 }, 1, TestName = "InvalidLeadF8WithThreeContinuationsIsHeld")]
    [TestCase(new byte[] { 0x61, 0xC0 }, 1, TestName = "OverlongLeadC0AtEndIsHeld")]
    [TestCase(new byte[] { 0xF0, 0x80, 0x80, 0x80 }, 4, TestName = "OverlongFourByteShapeIsKept")]
    [TestCase(new byte[] { 0xED, 0xA0 }, 0, TestName = "SurrogateLeadPrefixIsHeld")]
    public void InvalidBytes(byte[] s, int expect)
    {
        int cut = Utf8Text.CompletePrefix(s);
        Assert.That(cut, Is.EqualTo(expect));
        Assert.That(s.Length - cut, Is.InRange(0, 3), "never holds back more than 3 bytes");
    }

    [Test]
    public void NeverHoldsBackMoreThanThreeBytes()
    {
        // Every 1 … 5 byte tail over a spread of byte values.
        byte[] vals = [0x00, 0x41, 0x7F, 0x80, 0xBF, 0xC0, 0xC2, 0xDF, 0xE0, 0xEF, 0xF0, 0xF4, 0xF5, 0xF8, 0xFE, 0xFF];
        var s = new byte[5];
        for (int len = 1; len <= 5; len++)
        {
            int combos = (int)Math.Pow(vals.Length, len);
            for (int c = 0; c < combos; c++)
            {
                for (int i = 0, x = c; i < len; i++, x /= vals.Length) s[i] = vals[x % vals.Length];
                int cut = Utf8Text.CompletePrefix(s.AsSpan(0, len));
                if (cut > len || len - cut > 3) Assert.Fail($"{Convert.ToHexString(s, 0, len)} -> {cut}");
            }
        }
    }

    [Test]
    public void DecodeAndIsValid()
    {
        Assert.That(Utf8Text.Decode([]), Is.EqualTo(""));
        Assert.That(Utf8Text.Decode("héllo"u8), Is.EqualTo("héllo"));
        Assert.That(Utf8Text.Decode([0x61, 0xE2, 0x82]), Is.EqualTo("a\uFFFD"));
        Assert.That(Utf8Text.IsValid("😀"u8), Is.True);
        Assert.That(Utf8Text.IsValid([0xF0, 0x9F, 0x98]), Is.False);
        Assert.That(Utf8Text.IsValid([0xED, 0xA0, 0x80]), Is.False, "an encoded surrogate");
    }
}
