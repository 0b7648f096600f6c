using FastServe.Runtime;
using FastServe.Runtime.Tokenization;
using NUnit.Framework;

namespace FastServe.Tests.Tokenization;

public class TokenizerLoadTests
{
    // A tiny byte-level BPE: "abc" is in the vocabulary but no merge builds it, so only ignore_merges emits it whole.
    private static string TinyTokenizerJson(bool ignoreMerges, string modelType = "BPE") => $$"""
        {
          "version": "1.0",
          "added_tokens": [
            {"id": 20, "content": "<tool>", "special": false},
            {"id": 21, "content": "<|s|>", "special": true}
          ],
          "normalizer": null,
          "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
          "decoder": {"type": "ByteLevel"},
          "model": {
            "type": "{{modelType}}", "ignore_merges": {{(ignoreMerges ? "true" : "false")}},
            "vocab": {"a": 0, "b": 1, "c": 2, "ab": 3, "abc": 4, "Ġ": 5, "<": 6, ">": 7, "|": 8, "s": 9,
                      "t": 10, "o": 11, "l": 12, "Ġa": 13},
            "merges": ["a b", ["Ġ", "a"]]
          }
        }
        """;

    private static string DirWith(string name, params (string File, string Text)[] files)
    {
        string dir = TokenizerFixture.NewDir(name);
        foreach ((string file, string text) in files) File.WriteAllText(Path.Combine(dir, file), text);
        return dir;
    }

    private static FastServeException LoadFails(string dir, string code)
    {
        var e = Assert.Throws<FastServeException>(() => TextTokenizer.Load(dir))!;
        Assert.That(e.Code, Is.EqualTo(code), e.ToString());
        return e;
    }

    [Test]
    public void IgnoreMergesEmitsWholeVocabularyPieces()
    {
        TextTokenizer with = TextTokenizer.Load(DirWith("im-on", ("tokenizer.json", TinyTokenizerJson(true))));
        TextTokenizer without = TextTokenizer.Load(DirWith("im-off", ("tokenizer.json", TinyTokenizerJson(false))));
        Assert.That(with.Encode("abc", false), Is.EqualTo(new[] { 4 }));
        Assert.That(without.Encode("abc", false), Is.EqualTo(new[] { 3, 2 }));
        Assert.That(with.Encode("abc ab a", false), Is.EqualTo(new[] { 4, 5, 3, 13 }));
        Assert.That(with.Decode([4, 5, 3]), Is.EqualTo("abc ab"));
    }

    [Test]
    public void NonSpecialAddedTokensMatchInTextSpecialOnesNever()
    {
        TextTokenizer tok = TextTokenizer.Load(DirWith("added", ("tokenizer.json", TinyTokenizerJson(true))));
        int[] ids = tok.Encode("a<tool>b<|s|>", false);
        Assert.That(ids, Has.Member(20));
        Assert.That(ids, Has.None.EqualTo(21));
        Assert.That(tok.Decode(ids), Is.EqualTo("a<tool>b<|s|>"));
        Assert.That(tok.Decode([21]), Is.EqualTo("<|s|>"));
        Assert.That(tok.VocabCount, Is.EqualTo(22));
        Assert.That(tok.Decode([14, 15, 19]), Is.EqualTo(""), "gaps in the id space decode to nothing");
    }

    [Test]
    public void BosAndEosComeFromTokenizerConfigUnlessGiven()
    {
        string dir = DirWith("cfg", ("tokenizer.json", TinyTokenizerJson(true)),
            ("tokenizer_config.json", """{"bos_token": "<|s|>", "eos_token": {"content": "<tool>", "special": false}}"""));
        TextTokenizer fromConfig = TextTokenizer.Load(dir);
        Assert.That(fromConfig.BosId, Is.EqualTo(21));
        Assert.That(fromConfig.EosIds, Is.EqualTo(new[] { 20 }));
        Assert.That(fromConfig.Encode("a", addBos: true), Is.EqualTo(new[] { 21, 0 }));

        TextTokenizer given = TextTokenizer.Load(dir, bosId: 3, eosIds: [4, 13, 4]);
        Assert.That(given.BosId, Is.EqualTo(3));
        Assert.That(given.EosIds, Is.EqualTo(new[] { 4, 13 }));
        Assert.That(given.IsEos(13) && !given.IsEos(20), Is.True);

        TextTokenizer none = TextTokenizer.Load(DirWith("nocfg", ("tokenizer.json", TinyTokenizerJson(true))));
        Assert.That(none.BosId, Is.Null);
        Assert.That(none.EosIds, Is.Empty);
        Assert.That(none.Encode("a", addBos: true), Is.EqualTo(new[] { 0 }));
    }

    [Test]
    public void MissingDirectoryOrFilesIsTokenizerMissing()
    {
        LoadFails(Path.Combine(TokenizerFixture.Root, "does-not-exist"), "tokenizer.missing");
        FastServeException e = LoadFails(TokenizerFixture.NewDir("empty"), "tokenizer.missing");
        Assert.That(e.Message, Does.Contain("tokenizer.json").And.Contain("tokenizer.model").And.Contain("vocab.json").And.Contain(".tiktoken"));
        e = LoadFails(DirWith("half", ("vocab.json", "{\"a\": 0}")), "tokenizer.missing");
        Assert.That(e.Message, Does.Contain("merges.txt"));
    }

    [TestCase("{ \"model\": ", TestName = "Truncated JSON")]
    [TestCase("[1, 2, 3]", TestName = "Not an object")]
    [TestCase("{\"version\": \"1.0\"}", TestName = "No model")]
    [TestCase("{\"pre_tokenizer\": {\"type\": \"ByteLevel\"}, \"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [\"a q\"]}}", TestName = "Merge of unknown token")]
    [TestCase("{\"pre_tokenizer\": {\"type\": \"ByteLevel\"}, \"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": \"zero\"}, \"merges\": []}}", TestName = "Non-integer id")]
    [TestCase("{\"pre_tokenizer\": {\"type\": \"ByteLevel\"}, \"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 0}, \"merges\": []}}", TestName = "Duplicate id")]
    public void CorruptTokenizerJsonIsInvalid(string json)
    {
        string dir = DirWith("corrupt", ("tokenizer.json", json));
        FastServeException e = LoadFails(dir, "tokenizer.invalid");
        Assert.That(e.Path, Is.EqualTo(Path.Combine(dir, "tokenizer.json")));
    }

    [TestCase("Unigram")]
    [TestCase("WordPiece")]
    public void OtherModelTypesAreUnsupported(string type)
    {
        FastServeException e = LoadFails(DirWith("unsupported", ("tokenizer.json", TinyTokenizerJson(false, type))), "tokenizer.unsupported");
        Assert.That(e.Message, Does.Contain(type));
    }

    [Test]
    public void SentencePieceStyleTokenizerJsonIsUnsupported()
    {
        const string json = """
            {"normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"}, {"type": "Replace"}]},
             "pre_tokenizer": null, "decoder": {"type": "Sequence"},
             "model": {"type": "BPE", "byte_fallback": true, "vocab": {"a": 0}, "merges": []}}
            """;
        FastServeException e = LoadFails(DirWith("spjson", ("tokenizer.json", json)), "tokenizer.unsupported");
        Assert.That(e.Message, Does.Contain("byte_fallback"));
    }

    [Test]
    public void CorruptTokenizerModelAndRankFilesAreInvalid()
    {
        string dir = TokenizerFixture.NewDir("badmodel");
        File.WriteAllBytes(Path.Combine(dir, "tokenizer.model"), [0x0A, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01, 0x02]);
        LoadFails(dir, "tokenizer.invalid");

        LoadFails(DirWith("badrank", ("x.tiktoken", "IQ== 0\nIg== one\n")), "tokenizer.invalid");
        LoadFails(DirWith("badb64", ("x.tiktoken", "!!!! 0\n")), "tokenizer.invalid");
        LoadFails(DirWith("duprank", ("x.tiktoken", "IQ== 0\nIg== 0\n")), "tokenizer.invalid");
    }

    [Test]
    public void ConfigNamingAnUnknownEosIsInvalid()
    {
        string dir = DirWith("badeos", ("tokenizer.json", TinyTokenizerJson(true)),
            ("tokenizer_config.json", """{"eos_token": "<|not-there|>"}"""));
        FastServeException e = LoadFails(dir, "tokenizer.invalid");
        Assert.That(e.Message, Does.Contain("<|not-there|>"));
        Assert.That(TextTokenizer.Load(dir, eosIds: [4]).EosIds, Is.EqualTo(new[] { 4 }), "given ids skip the lookup");
    }

    [Test]
    public void NegativeSpecialIdsAreRejected()
    {
        string dir = DirWith("neg", ("tokenizer.json", TinyTokenizerJson(true)));
        Assert.That(Assert.Throws<FastServeException>(() => TextTokenizer.Load(dir, bosId: -1))!.Code, Is.EqualTo("tokenizer.invalid_special_id"));
        Assert.That(Assert.Throws<FastServeException>(() => TextTokenizer.Load(dir, eosIds: [2, -5]))!.Code, Is.EqualTo("tokenizer.invalid_special_id"));
    }

    [Test]
    public void SplitSequenceWithGapsKeepsAllText()
    {
        // A Split that does not match everything: HF's Isolated behaviour keeps the gaps as pieces.
        const string json = """
            {"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"String": "b"}, "behavior": "Isolated", "invert": false},
                {"type": "Digits", "individual_digits": true},
                {"type": "ByteLevel", "add_prefix_space": false, "use_regex": false}]},
             "decoder": {"type": "ByteLevel"},
             "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "1": 2, "2": 3, "ab": 4, "12": 5, "aa": 6},
                       "merges": ["a b", "1 2", "a a"]}}
            """;
        TextTokenizer tok = TextTokenizer.Load(DirWith("split", ("tokenizer.json", json)));
        // "ab" is split at "b" so never merges; "12" is split into digits; "aa" merges inside a gap piece.
        Assert.That(tok.Encode("aab12", false), Is.EqualTo(new[] { 6, 1, 2, 3 }));
        Assert.That(tok.Decode(tok.Encode("aab12ab", false)), Is.EqualTo("aab12ab"));
    }
}
