using System.Text;
using FastServe.Runtime.Tokenization;
using NUnit.Framework;

namespace FastServe.Tests.Tokenization;

public class IncrementalDecoderTests
{
    private static string Stream(TextTokenizer tok, IEnumerable<int> ids, List<string>? chunks = null)
    {
        IncrementalDecoder dec = tok.CreateDecoder();
        var sb = new StringBuilder();
        foreach (int id in ids)
        {
            string s = dec.Append(id);
            chunks?.Add(s);
            sb.Append(s);
        }
        string tail = dec.Flush();
        chunks?.Add(tail);
        return sb.Append(tail).ToString();
    }

    [Test]
    public void ConcatenationEqualsFullDecodeAndNeverHalfACharacter()
    {
        TextTokenizer tok = TokenizerFixture.Default;
        string all = string.Join("\n", TokenizerFixture.Texts);
        int[] ids = tok.Encode(all, addBos: false);
        var chunks = new List<string>();
        Assert.That(Stream(tok, ids, chunks), Is.EqualTo(tok.Decode(ids)).And.EqualTo(all));
        Assert.That(chunks, Has.None.Contains("\uFFFD"));
        // A chunk never ends in a lone high surrogate, i.e. half a UTF-16 pair either.
        Assert.That(chunks.Where(c => c.Length > 0), Has.None.Matches<string>(c => char.IsHighSurrogate(c![^1])));
    }

    [Test]
    public void EmojiSplitAcrossTokensAppearsOnlyWhenComplete()
    {
        TextTokenizer tok = TokenizerFixture.Default;
        foreach (string emoji in new[] { "😀", "🫠", "👨‍👩‍👧‍👦", "🇩🇪" })
        {
            int[] ids = tok.Encode(emoji, addBos: false);
            var chunks = new List<string>();
            Assert.That(Stream(tok, ids, chunks), Is.EqualTo(emoji));
            Assert.That(chunks, Has.None.Contains("\uFFFD"), emoji);
            if (emoji == "😀")
            {
                Assert.That(ids.Length, Is.GreaterThan(1), "the test needs an emoji split over several byte tokens");
                Assert.That(chunks[0], Is.EqualTo(""), "the first byte token alone completes nothing");
            }
        }
    }

    [Test]
    public void FlushTurnsAnUnfinishedSequenceIntoReplacementCharacterLikeDecode()
    {
        TextTokenizer tok = TokenizerFixture.Default;
        int[] melt = tok.Encode("🫠", addBos: false);
        Assert.That(melt.Length, Is.GreaterThan(1));
        int[] cut = [.. tok.Encode("ok", addBos: false), .. melt[..^1]];
        IncrementalDecoder dec = tok.CreateDecoder();
        var sb = new StringBuilder();
        foreach (int id in cut) sb.Append(dec.Append(id));
        Assert.That(sb.ToString(), Does.Not.Contain("\uFFFD"));
        sb.Append(dec.Flush());
        Assert.That(sb.ToString(), Is.EqualTo(tok.Decode(cut)));
        Assert.That(sb.ToString(), Does.EndWith("\uFFFD"));
        Assert.That(dec.Flush(), Is.EqualTo(""), "flush empties the decoder");
    }

    [Test]
    public void ResetForgetsPendingBytes()
    {
        TextTokenizer tok = TokenizerFixture.Default;
        int[] emoji = tok.Encode("😀", addBos: false);
        IncrementalDecoder dec = tok.CreateDecoder();
        Assert.That(dec.Append(emoji[0]), Is.EqualTo(""));
        dec.Reset();
        Assert.That(string.Concat(tok.Encode("hi", false).Select(dec.Append)) + dec.Flush(), Is.EqualTo("hi"));
    }

    [Test]
    public void UnknownAndSpecialIds()
    {
        TextTokenizer tok = TokenizerFixture.Default;
        IncrementalDecoder dec = tok.CreateDecoder();
        Assert.That(dec.Append(tok.VocabCount + 7), Is.EqualTo(""));
        Assert.That(dec.Append(-1), Is.EqualTo(""));
        Assert.That(dec.Append(DefaultTokenizer.EosId), Is.EqualTo("<|endoftext|>"));
    }

    [Test]
    public void InvalidUtf8MatchesDecode()
    {
        // Byte tokens that do not form UTF-8: a lone continuation byte, a truncated sequence before ASCII.
        TextTokenizer tok = TokenizerFixture.Default;
        TiktokenRanks ranks = TiktokenLoader.LoadCl100k();
        int continuation = Array.FindIndex(ranks.Tokens, t => t is [0x80]);
        int lead = Array.FindIndex(ranks.Tokens, t => t is [0xF0]);
        Assert.That(continuation, Is.GreaterThanOrEqualTo(0));
        Assert.That(lead, Is.GreaterThanOrEqualTo(0));
        int[] ids = [.. tok.Encode("a", false), continuation, lead, .. tok.Encode("b", false), lead];
        Assert.That(Stream(tok, ids), Is.EqualTo(tok.Decode(ids)));
        Assert.That(tok.Decode(ids), Does.Contain("\uFFFD"));
    }
}
