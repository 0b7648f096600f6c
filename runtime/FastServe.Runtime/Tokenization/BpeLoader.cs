using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;
using Microsoft.ML.Tokenizers;

namespace FastServe.Runtime.Tokenization;

/// <summary>Byte-level BPE from tokenizer.json, or from GPT-2-style vocab.json + merges.txt.</summary>
internal static class BpeLoader
{
    /// <summary>Loads a tokenizer.json whose model is byte-level BPE; anything else is tokenizer.unsupported.</summary>
    public static TokenizerParts FromTokenizerJson(string path)
    {
        byte[] json = TokenizerIo.ReadAllBytes(path);
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(json, new JsonDocumentOptions { MaxDepth = 256 });
        }
        catch (JsonException e)
        {
            throw TokenizerIo.Invalid(path, "not valid JSON: " + e.Message, e);
        }
        using (doc)
        {
            JsonElement root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object) throw TokenizerIo.Invalid(path, "the top level is not a JSON object");
            if (!root.TryGetProperty("model", out JsonElement model) || model.ValueKind != JsonValueKind.Object)
                throw TokenizerIo.Invalid(path, "no 'model' object");

            string type = model.TryGetProperty("type", out JsonElement t) && t.ValueKind == JsonValueKind.String
                ? t.GetString()!
                : model.TryGetProperty("merges", out _) ? "BPE" : "(none)";
            if (type != "BPE")
                throw TokenizerIo.Unsupported(path, $"model type '{type}' is not supported; only byte-level BPE tokenizer.json files are");

            if (Flag(model, "byte_fallback"))
                throw TokenizerIo.Unsupported(path, "BPE with byte_fallback (SentencePiece-style) is not supported; only byte-level BPE is");
            if (model.TryGetProperty("dropout", out JsonElement dropout) && dropout.ValueKind == JsonValueKind.Number && dropout.GetDouble() > 0)
                throw TokenizerIo.Unsupported(path, "BPE dropout is a training feature and is not supported");
            foreach (string affix in new[] { "continuing_subword_prefix", "end_of_word_suffix" })
            {
                if (model.TryGetProperty(affix, out JsonElement a) && a.ValueKind == JsonValueKind.String && a.GetString()!.Length > 0)
                    throw TokenizerIo.Unsupported(path, $"BPE with a {affix} is not supported; only byte-level BPE is");
            }

            Normalizer? normalizer = ParseNormalizer(root, path);
            (Regex[] steps, bool byteLevel) = ParsePreTokenizer(root, path);
            if (!byteLevel) throw TokenizerIo.Unsupported(path, "the pre_tokenizer has no ByteLevel step, so this is not byte-level BPE");
            CheckDecoder(root, path);

            if (!model.TryGetProperty("vocab", out JsonElement vocabEl) || vocabEl.ValueKind != JsonValueKind.Object)
                throw TokenizerIo.Invalid(path, "model.vocab is missing or not an object");
            Dictionary<string, int> vocab = ReadVocab(vocabEl, path, "model.vocab");

            if (!model.TryGetProperty("merges", out JsonElement mergesEl) || mergesEl.ValueKind != JsonValueKind.Array)
                throw TokenizerIo.Invalid(path, "model.merges is missing or not an array");
            var merges = new List<string>(mergesEl.GetArrayLength());
            foreach (JsonElement m in mergesEl.EnumerateArray())
            {
                if (m.ValueKind == JsonValueKind.String)
                {
                    merges.Add(m.GetString()!);
                }
                else if (m.ValueKind == JsonValueKind.Array && m.GetArrayLength() == 2
                         && m[0].ValueKind == JsonValueKind.String && m[1].ValueKind == JsonValueKind.String)
                {
                    string a = m[0].GetString()!, b = m[1].GetString()!;
                    if (a.Contains(' ') || b.Contains(' '))
                        throw TokenizerIo.Unsupported(path, $"merge [\"{a}\", \"{b}\"] has a token with a space, which only non-byte-level vocabularies have");
                    merges.Add(a + " " + b);
                }
                else
                {
                    throw TokenizerIo.Invalid(path, $"model.merges entry {merges.Count} is neither \"a b\" nor [\"a\", \"b\"]");
                }
            }

            var added = new List<AddedToken>();
            if (root.TryGetProperty("added_tokens", out JsonElement addedEl) && addedEl.ValueKind == JsonValueKind.Array)
            {
                foreach (JsonElement a in addedEl.EnumerateArray())
                {
                    if (a.ValueKind != JsonValueKind.Object
                        || !a.TryGetProperty("id", out JsonElement idEl) || !idEl.TryGetInt32(out int id)
                        || !a.TryGetProperty("content", out JsonElement c) || c.ValueKind != JsonValueKind.String)
                        throw TokenizerIo.Invalid(path, $"added_tokens entry {added.Count} needs an integer 'id' and a string 'content'");
                    TokenizerIo.CheckId(id, path, $"added token '{c.GetString()}'");
                    added.Add(new AddedToken(id, c.GetString()!, Flag(a, "special")));
                }
            }

            return Build(path, vocab, merges, steps, normalizer, Flag(model, "ignore_merges"), added);
        }
    }

    /// <summary>GPT-2-style files: vocab.json (token → id) and merges.txt, GPT-2 pre-tokenization.</summary>
    public static TokenizerParts FromVocabAndMerges(string vocabPath, string mergesPath, TokenizerConfig? config)
    {
        byte[] json = TokenizerIo.ReadAllBytes(vocabPath);
        Dictionary<string, int> vocab;
        try
        {
            using JsonDocument doc = JsonDocument.Parse(json);
            if (doc.RootElement.ValueKind != JsonValueKind.Object) throw TokenizerIo.Invalid(vocabPath, "the top level is not a JSON object");
            vocab = ReadVocab(doc.RootElement, vocabPath, "vocab.json");
        }
        catch (JsonException e)
        {
            throw TokenizerIo.Invalid(vocabPath, "not valid JSON: " + e.Message, e);
        }

        string text = Encoding.UTF8.GetString(TokenizerIo.ReadAllBytes(mergesPath));
        var merges = new List<string>(vocab.Count);
        int lineNo = 0;
        foreach (string raw in text.Split('\n'))
        {
            lineNo++;
            string line = raw.EndsWith('\r') ? raw[..^1] : raw;
            if (line.Length == 0 || (lineNo == 1 && line.StartsWith("#version", StringComparison.Ordinal))) continue;
            int sp = line.IndexOf(' ');
            if (sp <= 0 || sp == line.Length - 1 || line.IndexOf(' ', sp + 1) >= 0)
                throw TokenizerIo.Invalid(mergesPath, $"line {lineNo} is not two tokens separated by one space");
            merges.Add(line);
        }

        Regex gpt2 = KnownPatterns.Resolve(KnownPatterns.Gpt2, out _)!;
        return Build(vocabPath, vocab, merges, [gpt2], normalizer: null, ignoreMerges: false, config?.AddedTokens ?? []);
    }

    private static TokenizerParts Build(string path, Dictionary<string, int> vocab, List<string> merges, Regex[] steps,
        Normalizer? normalizer, bool ignoreMerges, List<AddedToken> added)
    {
        int maxId = -1;
        foreach (int id in vocab.Values) maxId = Math.Max(maxId, id);
        foreach (AddedToken a in added) maxId = Math.Max(maxId, a.Id);
        if (maxId < 0) throw TokenizerIo.Invalid(path, "the vocabulary is empty");

        var bytes = new byte[]?[maxId + 1];
        foreach ((string token, int id) in vocab)
        {
            if (bytes[id] is not null) throw TokenizerIo.Invalid(path, $"token id {id} appears twice in the vocabulary");
            bytes[id] = ByteLevel.DecodeToken(token);
        }

        // Added tokens decode to their content. Ones the vocabulary lacks also enter the library's vocabulary in
        // byte-level form, so its own Decode knows them, yet no merge can ever produce them. Only non-special ones
        // are matched in text (as Hugging Face does for them); special ones never come out of plain text.
        var libVocab = new Dictionary<string, int>(vocab, StringComparer.Ordinal);
        var matchable = new Dictionary<string, int>(StringComparer.Ordinal);
        var addedByContent = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (AddedToken a in added)
        {
            bool known = bytes[a.Id] is not null;
            bytes[a.Id] = Encoding.UTF8.GetBytes(a.Content);
            addedByContent.TryAdd(a.Content, a.Id);
            if (!a.Special && a.Content.Length > 0) matchable.TryAdd(a.Content, a.Id);
            if (!known) libVocab.TryAdd(ByteLevel.EncodeText(a.Content), a.Id);
        }

        var pre = new HfPreTokenizer(steps, matchable.Keys);
        BpeTokenizer inner;
        try
        {
            inner = BpeTokenizer.Create(new BpeOptions(libVocab)
            {
                Merges = merges,
                ByteLevel = true,
                PreTokenizer = pre,
                Normalizer = normalizer,
                SpecialTokens = matchable.Count > 0 ? matchable : null,
            });
        }
        catch (Exception e) when (e is InvalidOperationException or ArgumentException or FormatException)
        {
            throw TokenizerIo.Invalid(path, "the BPE vocabulary and merges are inconsistent: " + e.Message, e);
        }

        Func<string, IReadOnlyList<int>> encode = ignoreMerges
            ? new IgnoreMergesEncoder(inner, pre, normalizer, vocab, matchable).Encode
            : text => inner.EncodeToIds(text);

        return new TokenizerParts
        {
            Inner = inner,
            Kind = "bpe",
            SourceFile = path,
            TokenBytes = bytes,
            Encode = encode,
            FindId = content => addedByContent.TryGetValue(content, out int id) ? id
                : vocab.TryGetValue(ByteLevel.EncodeText(content), out id) ? id : null,
        };
    }

    private static Dictionary<string, int> ReadVocab(JsonElement obj, string path, string what)
    {
        var vocab = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (JsonProperty p in obj.EnumerateObject())
        {
            if (p.Value.ValueKind != JsonValueKind.Number || !p.Value.TryGetInt32(out int id))
                throw TokenizerIo.Invalid(path, $"{what} entry '{p.Name}' does not map to an integer id");
            TokenizerIo.CheckId(id, path, $"{what} entry '{p.Name}'");
            if (!vocab.TryAdd(p.Name, id)) throw TokenizerIo.Invalid(path, $"{what} has '{p.Name}' twice");
        }
        if (vocab.Count == 0) throw TokenizerIo.Invalid(path, $"{what} is empty");
        return vocab;
    }

    private static bool Flag(JsonElement obj, string name) =>
        obj.TryGetProperty(name, out JsonElement v) && v.ValueKind == JsonValueKind.True;

    private static string TypeOf(JsonElement obj) =>
        obj.ValueKind == JsonValueKind.Object && obj.TryGetProperty("type", out JsonElement t) && t.ValueKind == JsonValueKind.String
            ? t.GetString()! : "(no type)";

    private static Normalizer? ParseNormalizer(JsonElement root, string path)
    {
        if (!root.TryGetProperty("normalizer", out JsonElement n) || n.ValueKind == JsonValueKind.Null) return null;
        bool nfc = false;
        void Visit(JsonElement e)
        {
            switch (TypeOf(e))
            {
                case "NFC": nfc = true; break;
                case "Sequence" when e.TryGetProperty("normalizers", out JsonElement list) && list.ValueKind == JsonValueKind.Array:
                    foreach (JsonElement x in list.EnumerateArray()) Visit(x);
                    break;
                default:
                    throw TokenizerIo.Unsupported(path, $"normalizer '{TypeOf(e)}' is not supported (only NFC)");
            }
        }
        Visit(n);
        return nfc ? new NfcNormalizer() : null;
    }

    private static (Regex[] Steps, bool ByteLevel) ParsePreTokenizer(JsonElement root, string path)
    {
        if (!root.TryGetProperty("pre_tokenizer", out JsonElement p) || p.ValueKind == JsonValueKind.Null) return ([], false);
        var steps = new List<Regex>();
        bool byteLevel = false;
        void Visit(JsonElement e)
        {
            string type = TypeOf(e);
            switch (type)
            {
                case "Sequence":
                    if (!e.TryGetProperty("pretokenizers", out JsonElement list) || list.ValueKind != JsonValueKind.Array)
                        throw TokenizerIo.Invalid(path, "pre_tokenizer Sequence has no 'pretokenizers' array");
                    foreach (JsonElement x in list.EnumerateArray()) Visit(x);
                    break;
                case "ByteLevel":
                    // HF adds the prefix space to every piece produced so far, which no offset-based split can express.
                    if (Flag(e, "add_prefix_space"))
                        throw TokenizerIo.Unsupported(path, "ByteLevel pre-tokenizer with add_prefix_space true is not supported");
                    bool useRegex = !e.TryGetProperty("use_regex", out JsonElement ur) || ur.ValueKind != JsonValueKind.False;
                    if (useRegex) steps.Add(Compile(KnownPatterns.Gpt2));
                    byteLevel = true;
                    break;
                case "Split":
                    if (byteLevel) throw TokenizerIo.Unsupported(path, "a Split after the ByteLevel step is not supported");
                    string behavior = e.TryGetProperty("behavior", out JsonElement b) && b.ValueKind == JsonValueKind.String ? b.GetString()! : "(none)";
                    if (behavior != "Isolated") throw TokenizerIo.Unsupported(path, $"Split behavior '{behavior}' is not supported (only Isolated)");
                    if (Flag(e, "invert")) throw TokenizerIo.Unsupported(path, "Split with invert true is not supported");
                    if (!e.TryGetProperty("pattern", out JsonElement pat) || pat.ValueKind != JsonValueKind.Object)
                        throw TokenizerIo.Invalid(path, "Split has no 'pattern' object");
                    if (pat.TryGetProperty("Regex", out JsonElement rx) && rx.ValueKind == JsonValueKind.String)
                        steps.Add(Compile(rx.GetString()!));
                    else if (pat.TryGetProperty("String", out JsonElement str) && str.ValueKind == JsonValueKind.String)
                        steps.Add(Compile(Regex.Escape(str.GetString()!)));
                    else
                        throw TokenizerIo.Invalid(path, "Split pattern is neither {\"Regex\": ...} nor {\"String\": ...}");
                    break;
                case "Digits":
                    if (byteLevel) throw TokenizerIo.Unsupported(path, "a Digits step after the ByteLevel step is not supported");
                    steps.Add(Compile(Flag(e, "individual_digits") ? @"\p{N}" : @"\p{N}+"));
                    break;
                default:
                    throw TokenizerIo.Unsupported(path, $"pre-tokenizer '{type}' is not supported (Split, Digits and ByteLevel are)");
            }
        }
        Regex Compile(string pattern) =>
            KnownPatterns.Resolve(pattern, out string? error)
            ?? throw TokenizerIo.Unsupported(path, $"split pattern cannot be used by .NET regular expressions: {error}");
        Visit(p);
        return (steps.ToArray(), byteLevel);
    }

    private static void CheckDecoder(JsonElement root, string path)
    {
        if (!root.TryGetProperty("decoder", out JsonElement d) || d.ValueKind == JsonValueKind.Null) return;
        string type = TypeOf(d);
        if (type != "ByteLevel") throw TokenizerIo.Unsupported(path, $"decoder '{type}' is not supported with byte-level BPE (only ByteLevel)");
    }

    /// <summary>
    /// Hugging Face's ignore_merges: a pre-token that is itself in the vocabulary is emitted whole, without BPE;
    /// the library's BpeTokenizer has no such switch, so pieces are looked up here first.
    /// </summary>
    private sealed class IgnoreMergesEncoder(BpeTokenizer inner, HfPreTokenizer pre, Normalizer? normalizer,
        Dictionary<string, int> vocab, Dictionary<string, int> matchable)
    {
        private readonly Dictionary<string, int>.AlternateLookup<ReadOnlySpan<char>> _vocab = vocab.GetAlternateLookup<ReadOnlySpan<char>>();
        private readonly Dictionary<string, int>.AlternateLookup<ReadOnlySpan<char>> _matchable = matchable.GetAlternateLookup<ReadOnlySpan<char>>();

        public IReadOnlyList<int> Encode(string text)
        {
            if (normalizer is not null) text = normalizer.Normalize(text);
            var ids = new List<int>(text.Length / 3 + 4);
            Span<byte> utf8 = stackalloc byte[256];
            Span<char> mapped = stackalloc char[256];
            foreach ((int offset, int length) in pre.Split(text))
            {
                ReadOnlySpan<char> piece = text.AsSpan(offset, length);
                if (_matchable.TryGetValue(piece, out int special))
                {
                    ids.Add(special);
                    continue;
                }
                int max = Encoding.UTF8.GetMaxByteCount(piece.Length);
                Span<byte> b = max <= utf8.Length ? utf8 : new byte[max];
                Span<char> c = max <= mapped.Length ? mapped : new char[max];
                int n = Encoding.UTF8.GetBytes(piece, b);
                for (int i = 0; i < n; i++) c[i] = ByteLevel.ToChar(b[i]);
                if (_vocab.TryGetValue(c[..n], out int whole))
                {
                    ids.Add(whole);
                    continue;
                }
                ids.AddRange(inner.EncodeToIds(piece, considerPreTokenization: false, considerNormalization: false));
            }
            return ids;
        }
    }
}
