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

    [Test]
    public void Utf8OutputEqualsTheStringOutputTokenByToken()
    {
        // Text of every kind plus byte tokens that break UTF-8 (a lone continuation, truncated leads), in random
        // order: the byte path must give exactly the UTF-8 of the string path after every token and at the flush.
        TextTokenizer tok = TokenizerFixture.Default;
        TiktokenRanks ranks = TiktokenLoader.LoadCl100k();
        int[] odd = [Array.FindIndex(ranks.Tokens, t => t is [0x80]), Array.FindIndex(ranks.Tokens, t => t is [0xF0]),
            Array.FindIndex(ranks.Tokens, t => t is [0xE2]), Array.FindIndex(ranks.Tokens, t => t is [0xC3])];
        Assert.That(odd, Has.All.GreaterThanOrEqualTo(0));
        int[] text = tok.Encode(string.Join("\n", TokenizerFixture.Texts) + "😀🫠 naïve", addBos: false);
        var rng = new Random(7);
        for (int round = 0; round < 50; round++)
        {
            var ids = new List<int>();
            for (int i = 0; i < 200; i++) ids.Add(rng.Next(4) == 0 ? odd[rng.Next(odd.Length)] : text[rng.Next(text.Length)]);
            IncrementalDecoder asString = tok.CreateDecoder(), asBytes = tok.CreateDecoder();
            var w = new System.Buffers.ArrayBufferWriter<byte>();
            foreach (int id in ids)
            {
                w.ResetWrittenCount();
                asBytes.AppendUtf8(id, w);
                Assert.That(w.WrittenSpan.ToArray(), Is.EqualTo(Encoding.UTF8.GetBytes(asString.Append(id))), $"round {round}, id {id}");
            }
            w.ResetWrittenCount();
            asBytes.FlushUtf8(w);
            Assert.That(w.WrittenSpan.ToArray(), Is.EqualTo(Encoding.UTF8.GetBytes(asString.Flush())));
        }
    }
}
