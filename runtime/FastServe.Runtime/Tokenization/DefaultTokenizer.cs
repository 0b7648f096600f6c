using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;

namespace FastServe.Runtime.Tokenization;

/// <summary>
/// The built-in tokenizer for models that ship none: cl100k_base (the ranks Microsoft.ML.Tokenizers'
/// TiktokenTokenizer.CreateForEncoding("cl100k_base") uses) rewritten as a Hugging Face byte-level BPE
/// tokenizer in Llama 3's tokenizer.json layout, so both <see cref="TextTokenizer.Load"/> and Hugging Face's
/// AutoTokenizer read it, and both produce cl100k_base's ids.
/// </summary>
public static class DefaultTokenizer
{
    /// <summary>&lt;|endoftext|&gt;, used as both BOS and EOS.</summary>
    public const int BosId = 100257, EosId = 100257;

    /// <summary>A model using this tokenizer needs vocab_size at least this (highest special id + 1).</summary>
    public const int MinVocabSize = 100277;

    private const string EndOfText = "<|endoftext|>";

    /// <summary>Context length written to tokenizer_config.json; advisory only (config.json governs the model).</summary>
    private const int ModelMaxLength = 131072;

    /// <summary>
    /// Writes tokenizer.json, vocab.json, merges.txt, tokenizer_config.json and special_tokens_map.json into
    /// <paramref name="dir"/> (created if needed; existing files of those names are replaced, each atomically).
    /// The merges are derived from the ranks: for each multi-byte token, BPE over its bytes using only lower
    /// ranks ends in two parts, and those two parts are its merge; merges are listed in rank order.
    /// </summary>
    /// <exception cref="FastServeException"><c>tokenizer.io_error</c>: the directory or a file cannot be written;
    /// <c>tokenizer.default_unavailable</c>: the cl100k_base data package is missing from this build.</exception>
    public static void Write(string dir)
    {
        ArgumentNullException.ThrowIfNull(dir);
        TiktokenRanks ranks = TiktokenLoader.LoadCl100k();
        (int Left, int Right)[] merges = DeriveMerges(ranks);

        var tokens = new string[ranks.Tokens.Length];
        for (int r = 0; r < tokens.Length; r++)
            tokens[r] = ranks.Tokens[r] is byte[] b ? ByteLevel.Encode(b)
                : throw new FastServeException("tokenizer.default_unavailable", $"the cl100k_base data has no rank {r}");

        var specials = TiktokenLoader.Cl100kSpecials.OrderBy(kv => kv.Value).ToArray();
        try
        {
            Directory.CreateDirectory(dir);
            WriteAtomically(dir, "tokenizer.json", s => WriteTokenizerJson(s, tokens, merges, specials));
            WriteAtomically(dir, "vocab.json", s => WriteJson(s, w =>
            {
                w.WriteStartObject();
                for (int r = 0; r < tokens.Length; r++) w.WriteNumber(tokens[r], r);
                w.WriteEndObject();
            }));
            WriteAtomically(dir, "merges.txt", s =>
            {
                using var text = new StreamWriter(s, new UTF8Encoding(false), 1 << 16);
                text.NewLine = "\n";
                text.WriteLine("#version: 0.2");
                for (int r = 0; r < merges.Length; r++)
                {
                    if (merges[r].Left < 0) continue;
                    text.Write(tokens[merges[r].Left]);
                    text.Write(' ');
                    text.WriteLine(tokens[merges[r].Right]);
                }
            });
            WriteAtomically(dir, "tokenizer_config.json", s => WriteJson(s, w =>
            {
                w.WriteStartObject();
                w.WriteStartObject("added_tokens_decoder");
                foreach ((string content, int id) in specials)
                {
                    w.WriteStartObject(id.ToString(System.Globalization.CultureInfo.InvariantCulture));
                    WriteAddedTokenFields(w, content);
                    w.WriteEndObject();
                }
                w.WriteEndObject();
                w.WriteString("bos_token", EndOfText);
                w.WriteString("eos_token", EndOfText);
                w.WriteBoolean("clean_up_tokenization_spaces", false);
                w.WriteNumber("model_max_length", ModelMaxLength);
                w.WriteString("tokenizer_class", "PreTrainedTokenizerFast");
                w.WriteEndObject();
            }));
            WriteAtomically(dir, "special_tokens_map.json", s => WriteJson(s, w =>
            {
                w.WriteStartObject();
                w.WriteString("bos_token", EndOfText);
                w.WriteString("eos_token", EndOfText);
                w.WriteEndObject();
            }));
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new FastServeException("tokenizer.io_error", $"cannot write the default tokenizer: {e.Message}", dir, e);
        }
    }

    /// <summary>
    /// For each rank, the ranks of the two parts it merges from ((-1, -1) for single bytes). Throws
    /// tokenizer.default_unavailable if a token's restricted BPE does not end in exactly two parts (never the
    /// case for cl100k_base).
    /// </summary>
    internal static (int Left, int Right)[] DeriveMerges(TiktokenRanks ranks)
    {
        byte[]?[] tokens = ranks.Tokens;
        var byBytes = new Dictionary<byte[], int>(tokens.Length, ByteArrayComparer.Instance);
        for (int r = 0; r < tokens.Length; r++)
            if (tokens[r] is byte[] t) byBytes.TryAdd(t, r);
        var lookup = byBytes.GetAlternateLookup<ReadOnlySpan<byte>>();

        var merges = new (int, int)[tokens.Length];
        int maxLen = tokens.Max(t => t?.Length ?? 0);
        var starts = new int[maxLen + 1];  // part i covers bytes [starts[i], starts[i + 1])
        var pairRank = new int[maxLen];    // rank of part i joined with part i + 1, or int.MaxValue
        for (int r = 0; r < tokens.Length; r++)
        {
            if (tokens[r] is not byte[] token || token.Length == 1)
            {
                merges[r] = (-1, -1);
                continue;
            }
            int parts = token.Length;
            for (int i = 0; i <= parts; i++) starts[i] = i;
            for (int i = 0; i < parts - 1; i++) pairRank[i] = PairRank(token, starts[i], starts[i + 2], r, lookup);
            while (parts > 2)
            {
                int best = int.MaxValue, at = -1;
                for (int i = 0; i < parts - 1; i++)
                {
                    if (pairRank[i] < best)
                    {
                        best = pairRank[i];
                        at = i;
                    }
                }
                if (at < 0) break;
                Array.Copy(starts, at + 2, starts, at + 1, parts - at - 1);
                Array.Copy(pairRank, at + 2, pairRank, at + 1, parts - at - 3 > 0 ? parts - at - 3 : 0);
                parts--;
                if (at > 0) pairRank[at - 1] = PairRank(token, starts[at - 1], starts[at + 1], r, lookup);
                if (at < parts - 1) pairRank[at] = PairRank(token, starts[at], starts[at + 2], r, lookup);
            }
            if (parts != 2)
                throw new FastServeException("tokenizer.default_unavailable", $"cl100k_base rank {r} is not reachable by merging two lower-ranked tokens");
            merges[r] = (lookup[token.AsSpan(0, starts[1])], lookup[token.AsSpan(starts[1])]);
        }
        return merges;
    }

    private static int PairRank(byte[] token, int from, int to, int below,
        Dictionary<byte[], int>.AlternateLookup<ReadOnlySpan<byte>> lookup) =>
        lookup.TryGetValue(token.AsSpan(from, to - from), out int rank) && rank < below ? rank : int.MaxValue;

    private static void WriteTokenizerJson(Stream s, string[] tokens, (int Left, int Right)[] merges, KeyValuePair<string, int>[] specials)
    {
        WriteJson(s, w =>
        {
            w.WriteStartObject();
            w.WriteString("version", "1.0");
            w.WriteNull("truncation");
            w.WriteNull("padding");
            w.WriteStartArray("added_tokens");
            foreach ((string content, int id) in specials)
            {
                w.WriteStartObject();
                w.WriteNumber("id", id);
                w.WriteString("content", content);
                w.WriteBoolean("single_word", false);
                w.WriteBoolean("lstrip", false);
                w.WriteBoolean("rstrip", false);
                w.WriteBoolean("normalized", false);
                w.WriteBoolean("special", true);
                w.WriteEndObject();
            }
            w.WriteEndArray();
            w.WriteNull("normalizer");

            w.WriteStartObject("pre_tokenizer");
            w.WriteString("type", "Sequence");
            w.WriteStartArray("pretokenizers");
            w.WriteStartObject();
            w.WriteString("type", "Split");
            w.WriteStartObject("pattern");
            w.WriteString("Regex", KnownPatterns.Cl100k);
            w.WriteEndObject();
            w.WriteString("behavior", "Isolated");
            w.WriteBoolean("invert", false);
            w.WriteEndObject();
            w.WriteStartObject();
            WriteByteLevelFields(w, addPrefixSpace: false, trimOffsets: true, useRegex: false);
            w.WriteEndObject();
            w.WriteEndArray();
            w.WriteEndObject();

            // As Llama 3: the template prepends BOS, so AutoTokenizer(text) matches Encode(text, addBos: true).
            w.WriteStartObject("post_processor");
            w.WriteString("type", "Sequence");
            w.WriteStartArray("processors");
            w.WriteStartObject();
            WriteByteLevelFields(w, addPrefixSpace: true, trimOffsets: false, useRegex: true);
            w.WriteEndObject();
            w.WriteStartObject();
            w.WriteString("type", "TemplateProcessing");
            w.WriteStartArray("single");
            WriteTemplatePiece(w, "SpecialToken", EndOfText, 0);
            WriteTemplatePiece(w, "Sequence", "A", 0);
            w.WriteEndArray();
            w.WriteStartArray("pair");
            WriteTemplatePiece(w, "SpecialToken", EndOfText, 0);
            WriteTemplatePiece(w, "Sequence", "A", 0);
            WriteTemplatePiece(w, "SpecialToken", EndOfText, 1);
            WriteTemplatePiece(w, "Sequence", "B", 1);
            w.WriteEndArray();
            w.WriteStartObject("special_tokens");
            w.WriteStartObject(EndOfText);
            w.WriteString("id", EndOfText);
            w.WriteStartArray("ids");
            w.WriteNumberValue(BosId);
            w.WriteEndArray();
            w.WriteStartArray("tokens");
            w.WriteStringValue(EndOfText);
            w.WriteEndArray();
            w.WriteEndObject();
            w.WriteEndObject();
            w.WriteEndObject();
            w.WriteEndArray();
            w.WriteEndObject();

            w.WriteStartObject("decoder");
            WriteByteLevelFields(w, addPrefixSpace: true, trimOffsets: true, useRegex: true);
            w.WriteEndObject();

            w.WriteStartObject("model");
            w.WriteString("type", "BPE");
            w.WriteNull("dropout");
            w.WriteNull("unk_token");
            w.WriteNull("continuing_subword_prefix");
            w.WriteNull("end_of_word_suffix");
            w.WriteBoolean("fuse_unk", false);
            w.WriteBoolean("byte_fallback", false);
            w.WriteBoolean("ignore_merges", true);
            w.WriteStartObject("vocab");
            for (int r = 0; r < tokens.Length; r++) w.WriteNumber(tokens[r], r);
            w.WriteEndObject();
            w.WriteStartArray("merges");
            for (int r = 0; r < merges.Length; r++)
            {
                if (merges[r].Left >= 0) w.WriteStringValue(tokens[merges[r].Left] + " " + tokens[merges[r].Right]);
            }
            w.WriteEndArray();
            w.WriteEndObject();
            w.WriteEndObject();
        });
    }

    private static void WriteByteLevelFields(Utf8JsonWriter w, bool addPrefixSpace, bool trimOffsets, bool useRegex)
    {
        w.WriteString("type", "ByteLevel");
        w.WriteBoolean("add_prefix_space", addPrefixSpace);
        w.WriteBoolean("trim_offsets", trimOffsets);
        w.WriteBoolean("use_regex", useRegex);
    }

    private static void WriteTemplatePiece(Utf8JsonWriter w, string kind, string id, int typeId)
    {
        w.WriteStartObject();
        w.WriteStartObject(kind);
        w.WriteString("id", id);
        w.WriteNumber("type_id", typeId);
        w.WriteEndObject();
        w.WriteEndObject();
    }

    private static void WriteAddedTokenFields(Utf8JsonWriter w, string content)
    {
        w.WriteString("content", content);
        w.WriteBoolean("lstrip", false);
        w.WriteBoolean("normalized", false);
        w.WriteBoolean("rstrip", false);
        w.WriteBoolean("single_word", false);
        w.WriteBoolean("special", true);
    }

    private static void WriteJson(Stream s, Action<Utf8JsonWriter> body)
    {
        // Relaxed escaping keeps byte-level characters (Ġ, Ċ…) readable, as in Hugging Face's own files.
        using var w = new Utf8JsonWriter(s, new JsonWriterOptions { Indented = true, Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping });
        body(w);
    }

    private static void WriteAtomically(string dir, string name, Action<Stream> write)
    {
        string final = Path.Combine(dir, name);
        string temp = final + ".tmp";
        using (var fs = new FileStream(temp, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 16))
        {
            write(fs);
        }
        File.Move(temp, final, overwrite: true);
    }
}
