using FastServe.Runtime.Tokenization;
using Google.Protobuf;
using Microsoft.ML.Tokenizers;
using NUnit.Framework;

namespace FastServe.Tests.Tokenization;

/// <summary>SentencePiece through a small ModelProto built here field by field (sentencepiece_model.proto).</summary>
public class SentencePieceTests
{
    private const int Unknown = 2, Control = 3, UserDefined = 4, Byte = 6;
    private static readonly string[] Merged = ["▁t", "he", "▁the", "▁a", "in", "er", "▁w", "or", "ld", "▁wor", "▁world", "▁h", "ll", "▁he", "▁hell", "▁hello", "en", "▁th"];
    private static string? s_dir;

    /// <summary>&lt;unk&gt;, &lt;s&gt;, &lt;/s&gt;, 256 byte pieces, "&lt;sep&gt;" (user-defined), then text pieces.</summary>
    private static byte[] BuildModel(out Dictionary<string, int> ids)
    {
        var pieces = new List<(string Piece, float Score, int Type)>
        {
            ("<unk>", 0, Unknown), ("<s>", 0, Control), ("</s>", 0, Control),
        };
        for (int b = 0; b < 256; b++) pieces.Add(($"<0x{b:X2}>", 0, Byte));
        pieces.Add(("<sep>", 0, UserDefined));
        float score = -1;
        foreach (string m in Merged) pieces.Add((m, score--, 1));
        var chars = "▁abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'-:;()üöäßé";
        foreach (char c in chars) pieces.Add((c.ToString(), score--, 1));

        ids = new Dictionary<string, int>();
        for (int i = 0; i < pieces.Count; i++) ids[pieces[i].Piece] = i;

        using var ms = new MemoryStream();
        var output = new CodedOutputStream(ms);
        foreach ((string piece, float s, int type) in pieces)
        {
            output.WriteTag(1, WireFormat.WireType.LengthDelimited);
            output.WriteBytes(Message(o =>
            {
                o.WriteTag(1, WireFormat.WireType.LengthDelimited);
                o.WriteString(piece);
                o.WriteTag(2, WireFormat.WireType.Fixed32);
                o.WriteFloat(s);
                if (type != 1)
                {
                    o.WriteTag(3, WireFormat.WireType.Varint);
                    o.WriteEnum(type);
                }
            }));
        }
        output.WriteTag(2, WireFormat.WireType.LengthDelimited); // trainer_spec
        output.WriteBytes(Message(o =>
        {
            o.WriteTag(3, WireFormat.WireType.Varint); o.WriteEnum(2);   // model_type BPE
            o.WriteTag(4, WireFormat.WireType.Varint); o.WriteInt32(pieces.Count);
            o.WriteTag(35, WireFormat.WireType.Varint); o.WriteBool(true); // byte_fallback
            o.WriteTag(40, WireFormat.WireType.Varint); o.WriteInt32(0);   // unk_id
            o.WriteTag(41, WireFormat.WireType.Varint); o.WriteInt32(1);   // bos_id
            o.WriteTag(42, WireFormat.WireType.Varint); o.WriteInt32(2);   // eos_id
            o.WriteTag(43, WireFormat.WireType.Varint); o.WriteInt32(-1);  // pad_id
        }));
        output.WriteTag(3, WireFormat.WireType.LengthDelimited); // normalizer_spec
        output.WriteBytes(Message(o =>
        {
            o.WriteTag(1, WireFormat.WireType.LengthDelimited); o.WriteString("identity");
            o.WriteTag(3, WireFormat.WireType.Varint); o.WriteBool(true);  // add_dummy_prefix
            o.WriteTag(4, WireFormat.WireType.Varint); o.WriteBool(false); // remove_extra_whitespaces
            o.WriteTag(5, WireFormat.WireType.Varint); o.WriteBool(true);  // escape_whitespaces
        }));
        output.Flush();
        return ms.ToArray();
    }

    private static ByteString Message(Action<CodedOutputStream> write)
    {
        using var ms = new MemoryStream();
        var o = new CodedOutputStream(ms);
        write(o);
        o.Flush();
        return ByteString.CopyFrom(ms.ToArray());
    }

    private static string ModelDir(out Dictionary<string, int> ids)
    {
        ids = [];
        byte[] model = BuildModel(out ids);
        if (s_dir is null)
        {
            s_dir = TokenizerFixture.NewDir("sentencepiece");
            File.WriteAllBytes(Path.Combine(s_dir, "tokenizer.model"), model);
        }
        return s_dir;
    }

    private static readonly string[] Texts =
    [
        "Hello world",
        "the weather in München is schön",
        "hello  two  spaces and a trailing one ",
        "  leading spaces",
        "数字 12345 😀 👨‍👩‍👧",
        "The <s> and </s> strings are text",
    ];

    [Test]
    public void LoadsWithControlIdsFromTheModel()
    {
        TextTokenizer tok = TextTokenizer.Load(ModelDir(out Dictionary<string, int> ids));
        Assert.That(tok.Kind, Is.EqualTo("sentencepiece"));
        Assert.That(tok.Inner, Is.InstanceOf<SentencePieceTokenizer>());
        Assert.That(Path.GetFileName(tok.SourceFile), Is.EqualTo("tokenizer.model"));
        Assert.That(tok.BosId, Is.EqualTo(1));
        Assert.That(tok.EosIds, Is.EqualTo(new[] { 2 }));
        Assert.That(tok.VocabCount, Is.EqualTo(ids.Count));
    }

    [TestCaseSource(nameof(Texts))]
    public void RoundTripsAndAgreesWithTheLibrary(string text)
    {
        TextTokenizer tok = TextTokenizer.Load(ModelDir(out _));
        int[] ids = tok.Encode(text, addBos: false);
        Assert.That(tok.Decode(ids), Is.EqualTo(text));
        Assert.That(tok.Decode(ids), Is.EqualTo(tok.Inner.Decode(ids)));
        Assert.That(ids, Has.None.EqualTo(1).And.None.EqualTo(2), "BOS/EOS text is not a control token");
        int[] withBos = tok.Encode(text, addBos: true);
        Assert.That(withBos[0], Is.EqualTo(1));
        Assert.That(withBos[1..], Is.EqualTo(ids));
        Assert.That(tok.Decode(withBos), Is.EqualTo(text), "control tokens decode to nothing");
    }

    [Test]
    public void UsesMergedPiecesAndByteFallback()
    {
        TextTokenizer tok = TextTokenizer.Load(ModelDir(out Dictionary<string, int> ids));
        Assert.That(tok.Encode("hello world", false), Is.EqualTo(new[] { ids["▁hello"], ids["▁world"] }));
        int[] emoji = tok.Encode("😀", false);
        // "▁" then the four UTF-8 bytes F0 9F 98 80 as byte pieces (ids 3 + byte).
        Assert.That(emoji, Is.EqualTo(new[] { ids["▁"], 3 + 0xF0, 3 + 0x9F, 3 + 0x98, 3 + 0x80 }));
        Assert.That(tok.Encode("a<sep>b", false), Has.Member(ids["<sep>"]), "user-defined pieces match in text");
        Assert.That(tok.Decode([ids["<sep>"]]), Is.EqualTo("<sep>"));
        Assert.That(tok.Decode([0]), Is.EqualTo(" \u2047 "), "unknown decodes as sentencepiece does");
        Assert.That(tok.Decode([tok.VocabCount, 99999, -3]), Is.EqualTo(""));
    }

    [Test]
    public void IncrementalDecodingMatchesAndDropsOnlyTheFirstSpace()
    {
        TextTokenizer tok = TextTokenizer.Load(ModelDir(out _));
        foreach (string text in Texts)
        {
            int[] ids = tok.Encode(text, addBos: true);
            IncrementalDecoder dec = tok.CreateDecoder();
            var sb = new System.Text.StringBuilder();
            foreach (int id in ids)
            {
                string piece = dec.Append(id);
                Assert.That(piece, Does.Not.Contain("\uFFFD"));
                sb.Append(piece);
            }
            sb.Append(dec.Flush());
            Assert.That(sb.ToString(), Is.EqualTo(tok.Decode(ids)));
            Assert.That(sb.ToString(), Is.EqualTo(text));
        }
    }

    [Test]
    public void UnsupportedTokenizerJsonFallsBackToTokenizerModel()
    {
        string dir = TokenizerFixture.NewDir("sp-fallback");
        File.Copy(Path.Combine(ModelDir(out _), "tokenizer.model"), Path.Combine(dir, "tokenizer.model"));
        File.WriteAllText(Path.Combine(dir, "tokenizer.json"), """{"model": {"type": "Unigram", "vocab": [["a", 0.0]]}}""");
        File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), """{"bos_token": "</s>", "eos_token": "<s>"}""");
        TextTokenizer tok = TextTokenizer.Load(dir);
        Assert.That(tok.Kind, Is.EqualTo("sentencepiece"));
        Assert.That(Path.GetFileName(tok.SourceFile), Is.EqualTo("tokenizer.model"));
        Assert.That(tok.BosId, Is.EqualTo(2), "tokenizer_config.json wins over the model's own ids");
        Assert.That(tok.EosIds, Is.EqualTo(new[] { 1 }));
    }
}
