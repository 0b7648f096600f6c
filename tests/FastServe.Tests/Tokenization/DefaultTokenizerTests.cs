using System.Diagnostics;
using System.Text.Json;
using System.Text.RegularExpressions;
using FastServe.Runtime.Tokenization;
using Microsoft.ML.Tokenizers;
using NUnit.Framework;

namespace FastServe.Tests.Tokenization;

public class DefaultTokenizerTests
{
    private static IEnumerable<string> Texts => TokenizerFixture.Texts;

    [Test]
    public void LoadsAsByteLevelBpeWithCl100kSpecials()
    {
        TextTokenizer tok = TokenizerFixture.Default;
        Assert.That(tok.Kind, Is.EqualTo("bpe"));
        Assert.That(Path.GetFileName(tok.SourceFile), Is.EqualTo("tokenizer.json"));
        Assert.That(tok.Inner, Is.InstanceOf<BpeTokenizer>());
        Assert.That(tok.VocabCount, Is.EqualTo(DefaultTokenizer.MinVocabSize));
        Assert.That(tok.BosId, Is.EqualTo(DefaultTokenizer.BosId));
        Assert.That(tok.EosIds, Is.EqualTo(new[] { DefaultTokenizer.EosId }));
        Assert.That(tok.IsEos(100257), Is.True);
        Assert.That(tok.IsEos(100258), Is.False);
        foreach ((string text, int id) in new[] { ("<|endoftext|>", 100257), ("<|fim_prefix|>", 100258), ("<|fim_middle|>", 100259), ("<|fim_suffix|>", 100260), ("<|endofprompt|>", 100276) })
            Assert.That(tok.Decode([id]), Is.EqualTo(text));
    }

    [TestCaseSource(nameof(Texts))]
    public void EncodesExactlyLikeTiktokenCl100k(string text)
    {
        int[] expected = TokenizerFixture.Cl100k.EncodeToIds(text).ToArray();
        int[] actual = TokenizerFixture.Default.Encode(text, addBos: false);
        Assert.That(actual, Is.EqualTo(expected));
        Assert.That(TokenizerFixture.Default.Decode(actual), Is.EqualTo(text));
    }

    [Test]
    public void AddBosPrependsBosId()
    {
        TextTokenizer tok = TokenizerFixture.Default;
        int[] plain = tok.Encode("Hello there", addBos: false);
        int[] withBos = tok.Encode("Hello there", addBos: true);
        Assert.That(withBos[0], Is.EqualTo(DefaultTokenizer.BosId));
        Assert.That(withBos[1..], Is.EqualTo(plain));
        Assert.That(tok.Encode("", addBos: true), Is.EqualTo(new[] { DefaultTokenizer.BosId }));
        Assert.That(tok.Encode("", addBos: false), Is.Empty);
    }

    [Test]
    public void SpecialTokenTextInUserInputStaysText()
    {
        TextTokenizer tok = TokenizerFixture.Default;
        const string text = "a <|endoftext|> b <|fim_prefix|><|endofprompt|>";
        int[] ids = tok.Encode(text, addBos: false);
        Assert.That(ids, Has.None.GreaterThanOrEqualTo(100256));
        Assert.That(tok.Decode(ids), Is.EqualTo(text));
        // The library's own tokenizer does turn them into specials: this is the difference under test.
        Assert.That(TokenizerFixture.Cl100k.EncodeToIds(text), Has.Member(100257));
    }

    [Test]
    public void UnknownIdsDecodeToNothing()
    {
        TextTokenizer tok = TokenizerFixture.Default;
        int[] hi = tok.Encode("hi", addBos: false);
        int[] ids = [tok.VocabCount, .. hi, tok.VocabCount + 1000, 100256, 100270, -1, int.MaxValue, int.MinValue];
        Assert.That(tok.Decode(ids), Is.EqualTo("hi"));
        Assert.That(tok.Decode([]), Is.EqualTo(""));
    }

    [Test]
    public void MergesRebuildEveryMultiByteToken()
    {
        TiktokenRanks ranks = TiktokenLoader.LoadCl100k();
        (int Left, int Right)[] merges = DefaultTokenizer.DeriveMerges(ranks);
        int count = 0;
        for (int r = 0; r < merges.Length; r++)
        {
            byte[] token = ranks.Tokens[r]!;
            if (token.Length == 1)
            {
                Assert.That(merges[r], Is.EqualTo((-1, -1)));
                continue;
            }
            count++;
            (int l, int rr) = merges[r];
            Assert.That(l, Is.LessThan(r));
            Assert.That(rr, Is.LessThan(r));
            Assert.That(ranks.Tokens[l]!.Concat(ranks.Tokens[rr]!).ToArray(), Is.EqualTo(token), $"rank {r}");
        }
        Assert.That(count, Is.EqualTo(ranks.Count - 256));
    }

    [Test]
    public void TokenizerJsonHasTheLlama3Layout()
    {
        using JsonDocument doc = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(TokenizerFixture.DefaultDir, "tokenizer.json")));
        JsonElement root = doc.RootElement;
        JsonElement model = root.GetProperty("model");
        Assert.That(model.GetProperty("type").GetString(), Is.EqualTo("BPE"));
        Assert.That(model.GetProperty("ignore_merges").GetBoolean(), Is.True);
        Assert.That(model.GetProperty("vocab").EnumerateObject().Count(), Is.EqualTo(100256));
        Assert.That(model.GetProperty("vocab").GetProperty("Ġthe").GetInt32(), Is.EqualTo(279));
        Assert.That(model.GetProperty("merges").GetArrayLength(), Is.EqualTo(100000));
        Assert.That(model.GetProperty("merges")[0].GetString(), Is.EqualTo("Ġ Ġ"));
        JsonElement pre = root.GetProperty("pre_tokenizer").GetProperty("pretokenizers");
        Assert.That(pre[0].GetProperty("type").GetString(), Is.EqualTo("Split"));
        Assert.That(pre[0].GetProperty("pattern").GetProperty("Regex").GetString(), Is.EqualTo(KnownPatterns.Cl100k));
        Assert.That(pre[0].GetProperty("behavior").GetString(), Is.EqualTo("Isolated"));
        Assert.That(pre[1].GetProperty("type").GetString(), Is.EqualTo("ByteLevel"));
        Assert.That(pre[1].GetProperty("use_regex").GetBoolean(), Is.False);
        Assert.That(root.GetProperty("decoder").GetProperty("type").GetString(), Is.EqualTo("ByteLevel"));
        Assert.That(root.GetProperty("added_tokens").EnumerateArray().Select(a => a.GetProperty("id").GetInt32()),
            Is.EqualTo(new[] { 100257, 100258, 100259, 100260, 100276 }));

        using JsonDocument cfg = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(TokenizerFixture.DefaultDir, "tokenizer_config.json")));
        Assert.That(cfg.RootElement.GetProperty("tokenizer_class").GetString(), Is.EqualTo("PreTrainedTokenizerFast"));
        Assert.That(cfg.RootElement.GetProperty("bos_token").GetString(), Is.EqualTo("<|endoftext|>"));
        Assert.That(cfg.RootElement.GetProperty("eos_token").GetString(), Is.EqualTo("<|endoftext|>"));
        Assert.That(cfg.RootElement.GetProperty("model_max_length").GetInt32(), Is.GreaterThan(0));
        Assert.That(File.Exists(Path.Combine(TokenizerFixture.DefaultDir, "special_tokens_map.json")), Is.True);
        Assert.That(Directory.GetFiles(TokenizerFixture.DefaultDir, "*.tmp"), Is.Empty);
    }

    [Test]
    public void VocabJsonAndMergesTxtGiveTheSameIdsAsTiktokenWithGpt2Splitting()
    {
        string dir = TokenizerFixture.NewDir("vocab-merges");
        foreach (string f in new[] { "vocab.json", "merges.txt", "tokenizer_config.json" })
            File.Copy(Path.Combine(TokenizerFixture.DefaultDir, f), Path.Combine(dir, f));
        TextTokenizer tok = TextTokenizer.Load(dir);
        Assert.That(tok.Kind, Is.EqualTo("bpe"));
        Assert.That(Path.GetFileName(tok.SourceFile), Is.EqualTo("vocab.json"));
        Assert.That(tok.VocabCount, Is.EqualTo(DefaultTokenizer.MinVocabSize));
        Assert.That(tok.BosId, Is.EqualTo(100257));
        Assert.That(tok.Decode([100276]), Is.EqualTo("<|endofprompt|>"));

        // The files carry no split pattern, so GPT-2's applies; the reference is tiktoken BPE over the same ranks
        // with the same splitting, which the derived merges must reproduce exactly.
        string rankFile = Path.Combine(dir, "ranks.bin");
        TokenizerFixture.WriteCl100kRankFile(rankFile);
        TiktokenTokenizer reference = TiktokenTokenizer.Create(rankFile, new RegexPreTokenizer(new Regex(KnownPatterns.Gpt2), null), null);
        foreach (string text in TokenizerFixture.Texts)
        {
            int[] ids = tok.Encode(text, addBos: false);
            Assert.That(ids, Is.EqualTo(reference.EncodeToIds(text).ToArray()), text);
            Assert.That(tok.Decode(ids), Is.EqualTo(text));
        }
        // Where GPT-2 and cl100k splitting agree, the ids are cl100k's.
        Assert.That(tok.Encode("Hello world, this is fine.", false), Is.EqualTo(TokenizerFixture.Cl100k.EncodeToIds("Hello world, this is fine.").ToArray()));
    }

    [Test]
    public void TiktokenRankFileWorks()
    {
        string dir = TokenizerFixture.NewDir("tiktoken");
        TokenizerFixture.WriteCl100kRankFile(Path.Combine(dir, "cl100k_base.tiktoken"));
        var sw = Stopwatch.StartNew();
        TextTokenizer tok = TextTokenizer.Load(dir);
        TestContext.Progress.WriteLine($"tiktoken rank file Load {sw.Elapsed.TotalSeconds:F2} s");
        Assert.That(tok.Kind, Is.EqualTo("tiktoken"));
        Assert.That(tok.Inner, Is.InstanceOf<TiktokenTokenizer>());
        Assert.That(tok.VocabCount, Is.EqualTo(DefaultTokenizer.MinVocabSize));
        Assert.That(tok.BosId, Is.Null);
        Assert.That(tok.EosIds, Is.Empty);
        foreach (string text in TokenizerFixture.Texts)
        {
            int[] ids = tok.Encode(text, addBos: false);
            Assert.That(ids, Is.EqualTo(TokenizerFixture.Cl100k.EncodeToIds(text).ToArray()), text);
            Assert.That(tok.Decode(ids), Is.EqualTo(text));
        }
        Assert.That(tok.Encode("x <|endoftext|>", false), Has.None.EqualTo(100257));
        Assert.That(tok.Decode([100257, 100276]), Is.EqualTo("<|endoftext|><|endofprompt|>"));
    }

    [Test]
    public void TokenizerModelInTiktokenFormatWithConfigSpecials()
    {
        string dir = TokenizerFixture.NewDir("tiktoken-model");
        TokenizerFixture.WriteCl100kRankFile(Path.Combine(dir, "tokenizer.model"));
        File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), """
            {"bos_token": "<|begin|>", "eos_token": {"content": "<|end|>"},
             "added_tokens_decoder": {"100300": {"content": "<|begin|>", "special": true},
                                      "100301": {"content": "<|end|>", "special": true}}}
            """);
        TextTokenizer tok = TextTokenizer.Load(dir);
        Assert.That(tok.Kind, Is.EqualTo("tiktoken"));
        Assert.That(tok.BosId, Is.EqualTo(100300));
        Assert.That(tok.EosIds, Is.EqualTo(new[] { 100301 }));
        Assert.That(tok.VocabCount, Is.EqualTo(100302));
        Assert.That(tok.Decode([100300, .. tok.Encode("Hi", false), 100301]), Is.EqualTo("<|begin|>Hi<|end|>"));
        Assert.That(tok.Encode("<|begin|>", false), Has.None.EqualTo(100300));
    }

    [Test]
    public void WriteAndLoadAreFastEnough()
    {
        // Measured in the fixture; the bound only catches gross regressions on a loaded 2-core machine.
        TestContext.Out.WriteLine($"Write {TokenizerFixture.WriteSeconds:F2} s, Load {TokenizerFixture.LoadSeconds:F2} s");
        Assert.That(TokenizerFixture.WriteSeconds, Is.LessThan(15));
        Assert.That(TokenizerFixture.LoadSeconds, Is.LessThan(15));
        var sw = Stopwatch.StartNew();
        TextTokenizer again = TextTokenizer.Load(TokenizerFixture.DefaultDir);
        double warmLoad = sw.Elapsed.TotalSeconds;
        string text = string.Concat(Enumerable.Repeat(string.Concat(TokenizerFixture.Texts), 20));
        sw.Restart();
        int[] ids = again.Encode(text, false);
        double firstEncode = sw.Elapsed.TotalSeconds;
        sw.Restart();
        again.Encode(text, false);
        double secondEncode = sw.Elapsed.TotalSeconds;
        TestContext.Progress.WriteLine($"second Load {warmLoad:F2} s; encode {text.Length} chars -> {ids.Length} ids: first {firstEncode * 1e3:F1} ms, cached {secondEncode * 1e3:F1} ms");
    }
}
