using System.Buffers;
using System.Text;
using Microsoft.ML.Tokenizers;

namespace FastServe.Runtime.Tokenization;

/// <summary>
/// The tokenizer a model directory ships, loaded into Microsoft.ML.Tokenizers, plus the id-level facts the
/// runtime needs (BOS/EOS ids, how many ids exist, the bytes each id stands for).
/// <para>
/// Encoding is the library's; decoding is done here from a per-id byte table, so <see cref="Decode"/> and
/// <see cref="IncrementalDecoder"/> agree byte for byte and ids the tokenizer does not know decode to nothing.
/// Instances are immutable and safe to use from many threads at once (the library's caches lock internally);
/// <see cref="IncrementalDecoder"/>s are per stream.
/// </para>
/// </summary>
public sealed class TextTokenizer
{
    /// <summary>The files <see cref="Load"/> looks for, in order of preference (plus any *.tiktoken file last).</summary>
    internal static readonly string[] SearchedFiles = ["tokenizer.json", "vocab.json + merges.txt", "tokenizer.model", "*.tiktoken"];

    private readonly byte[]?[] _tokenBytes;
    private readonly byte[]? _textPieceKind;
    private readonly Func<string, IReadOnlyList<int>> _encode;
    private readonly int[] _eosIds;

    private TextTokenizer(TokenizerParts parts, int? bosId, int[] eosIds)
    {
        Inner = parts.Inner;
        Kind = parts.Kind;
        SourceFile = parts.SourceFile;
        _tokenBytes = parts.TokenBytes;
        _textPieceKind = parts.TextPieceKind;
        _encode = parts.Encode;
        BosId = bosId;
        _eosIds = eosIds;
    }

    /// <summary>
    /// Loads the tokenizer of a Hugging Face-style model directory. Files are tried in this order:
    /// <list type="number">
    /// <item><c>tokenizer.json</c> with a byte-level BPE model (GPT-2 / Llama 3 / Qwen style: pre-tokenizer
    /// Split(regex, Isolated)… + ByteLevel, or plain ByteLevel; ByteLevel decoder; optional NFC normalizer;
    /// ignore_merges honoured). Added tokens marked special decode to their text but are never produced from
    /// text; non-special added tokens are matched in text, as Hugging Face does. When its model is another kind
    /// (Unigram, WordPiece, SentencePiece-style BPE…) and a <c>tokenizer.model</c> exists, that file is used instead.</item>
    /// <item><c>vocab.json</c> + <c>merges.txt</c>: byte-level BPE with GPT-2 pre-tokenization; added tokens
    /// from tokenizer_config.json's added_tokens_decoder.</item>
    /// <item><c>tokenizer.model</c>: a SentencePiece model (BPE or Unigram; user-defined pieces matched in
    /// text), or, when the file is a tiktoken rank file, a tiktoken tokenizer.</item>
    /// <item>The first <c>*.tiktoken</c> rank file (ordinal name order).</item>
    /// </list>
    /// A rank file's split pattern and special tokens are inferred: 50256 ranks → GPT-2, 100256 → cl100k_base,
    /// 199998 → o200k_base, otherwise the cl100k/Llama 3 pattern; tokenizer_config.json's added_tokens_decoder,
    /// when present, replaces the special tokens.
    /// </summary>
    /// <param name="modelDir">The model directory.</param>
    /// <param name="bosId">BOS id from config.json; when null, tokenizer_config.json's bos_token is looked up
    /// in the vocabulary (and for SentencePiece, the model's own bos_id is the last resort). May stay null.</param>
    /// <param name="eosIds">EOS ids from config.json; when null or empty, tokenizer_config.json's eos_token
    /// (then SentencePiece's eos_id) is used.</param>
    /// <exception cref="FastServeException">
    /// <c>tokenizer.missing</c>: the directory or every tokenizer file is absent (the message lists what was looked for);
    /// <c>tokenizer.invalid</c>: a file is corrupt or inconsistent, or bos_token/eos_token is not in the vocabulary;
    /// <c>tokenizer.unsupported</c>: a well-formed tokenizer of a kind this loader does not handle;
    /// <c>tokenizer.invalid_special_id</c>: a negative BOS/EOS id was passed;
    /// <c>tokenizer.io_error</c>: a file exists but cannot be read.
    /// </exception>
    public static TextTokenizer Load(string modelDir, int? bosId = null, IReadOnlyList<int>? eosIds = null)
    {
        ArgumentNullException.ThrowIfNull(modelDir);
        if (!Directory.Exists(modelDir))
            throw new FastServeException("tokenizer.missing", "the model directory does not exist", modelDir);
        if (bosId < 0) throw new FastServeException("tokenizer.invalid_special_id", $"BOS id {bosId} is negative", modelDir);
        if (eosIds is not null && eosIds.Any(e => e < 0))
            throw new FastServeException("tokenizer.invalid_special_id", $"EOS ids [{string.Join(", ", eosIds)}] include a negative id", modelDir);

        TokenizerConfig? config = null;
        bool configRead = false;
        TokenizerConfig? Config()
        {
            if (!configRead)
            {
                config = TokenizerConfig.TryRead(modelDir);
                configRead = true;
            }
            return config;
        }

        TokenizerParts parts = LoadParts(modelDir, Config);

        int? bos = bosId ?? Resolve(Config()?.BosToken, "bos_token", parts, modelDir) ?? parts.DefaultBosId;
        int[] eos;
        if (eosIds is { Count: > 0 })
        {
            eos = eosIds.Distinct().ToArray();
        }
        else
        {
            int? e = Resolve(Config()?.EosToken, "eos_token", parts, modelDir) ?? parts.DefaultEosId;
            eos = e is int id ? [id] : [];
        }
        return new TextTokenizer(parts, bos, eos);
    }

    private static TokenizerParts LoadParts(string dir, Func<TokenizerConfig?> config)
    {
        string json = Path.Combine(dir, "tokenizer.json");
        string model = Path.Combine(dir, "tokenizer.model");
        if (File.Exists(json))
        {
            try
            {
                return BpeLoader.FromTokenizerJson(json);
            }
            catch (FastServeException e) when (e.Code == "tokenizer.unsupported" && File.Exists(model))
            {
                // The slow-tokenizer file of the same model (Llama 2, Mistral, Gemma ship both).
            }
        }

        string vocab = Path.Combine(dir, "vocab.json");
        string merges = Path.Combine(dir, "merges.txt");
        if (!File.Exists(json) && File.Exists(vocab) && File.Exists(merges))
            return BpeLoader.FromVocabAndMerges(vocab, merges, config());

        if (File.Exists(model)) return LoadModelFile(model, config);

        string? rankFile = Directory.EnumerateFiles(dir, "*.tiktoken").Order(StringComparer.Ordinal).FirstOrDefault();
        if (rankFile is not null) return TiktokenLoader.Load(rankFile, config());

        string partial = File.Exists(vocab) != File.Exists(merges)
            ? $" ({(File.Exists(vocab) ? "vocab.json" : "merges.txt")} was found without its partner)"
            : "";
        throw new FastServeException("tokenizer.missing",
            $"no tokenizer found; looked for {string.Join(", ", SearchedFiles)}{partial}", dir);
    }

    private static TokenizerParts LoadModelFile(string path, Func<TokenizerConfig?> config)
    {
        Span<byte> head = stackalloc byte[512];
        int read;
        try
        {
            using FileStream fs = File.OpenRead(path);
            read = fs.ReadAtLeast(head, head.Length, throwOnEndOfStream: false);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new FastServeException("tokenizer.io_error", $"cannot read tokenizer file: {e.Message}", path, e);
        }
        return TiktokenRanks.LooksLikeRankFile(head[..read])
            ? TiktokenLoader.Load(path, config())
            : SentencePieceLoader.Load(path);
    }

    private static int? Resolve(string? token, string what, TokenizerParts parts, string dir)
    {
        if (token is null) return null;
        return parts.FindId(token)
            ?? throw new FastServeException("tokenizer.invalid",
                $"tokenizer_config.json's {what} '{token}' is not in the vocabulary of {Path.GetFileName(parts.SourceFile)}",
                Path.Combine(dir, "tokenizer_config.json"));
    }

    /// <summary>The Microsoft.ML.Tokenizers tokenizer doing the encoding (BpeTokenizer, TiktokenTokenizer or
    /// SentencePieceTokenizer). It is configured never to add BOS/EOS itself. Its own Decode may differ from
    /// <see cref="Decode"/> in corner cases (SentencePiece unknown/user-defined pieces); prefer <see cref="Decode"/>.</summary>
    public Tokenizer Inner { get; }

    /// <summary>"bpe", "sentencepiece" or "tiktoken".</summary>
    public string Kind { get; }

    /// <summary>Full path of the file the tokenizer was loaded from.</summary>
    public string SourceFile { get; }

    /// <summary>Beginning-of-sequence id, or null when the model has none.</summary>
    public int? BosId { get; }

    /// <summary>End-of-sequence ids (possibly several, e.g. Llama 3 instruct's); may be empty.</summary>
    public IReadOnlyList<int> EosIds => _eosIds;

    /// <summary>One more than the highest id the tokenizer can produce or decode, special tokens included. Ids
    /// below it may still be unassigned (gaps decode to nothing). A model's embedding table may be larger.</summary>
    public int VocabCount => _tokenBytes.Length;

    /// <summary>
    /// Token ids of plain text. Special-token strings in <paramref name="text"/> (e.g. "&lt;|eot_id|&gt;") are
    /// ordinary text and never become special ids. With <paramref name="addBos"/>, <see cref="BosId"/> is
    /// prepended when the model has one. Returns a new array owned by the caller.
    /// </summary>
    public int[] Encode(string text, bool addBos)
    {
        ArgumentNullException.ThrowIfNull(text);
        IReadOnlyList<int> ids = text.Length == 0 ? [] : _encode(text);
        int first = addBos && BosId.HasValue ? 1 : 0;
        var result = new int[ids.Count + first];
        if (first == 1) result[0] = BosId!.Value;
        if (ids is List<int> list) list.CopyTo(result, first);
        else for (int i = 0; i < ids.Count; i++) result[first + i] = ids[i];
        return result;
    }

    /// <summary>
    /// Text of <paramref name="ids"/>: the concatenated bytes of every id, read as UTF-8 (invalid sequences become
    /// U+FFFD). Special tokens decode to their text except SentencePiece control pieces (BOS/EOS/PAD), which
    /// decode to nothing, and SentencePiece's unknown piece, which decodes to " ⁇ ", as sentencepiece does. Ids the
    /// tokenizer does not know decode to nothing.
    /// </summary>
    public string Decode(ReadOnlySpan<int> ids)
    {
        byte[] buffer = ArrayPool<byte>.Shared.Rent(Math.Max(64, ids.Length * 8));
        try
        {
            int length = 0;
            bool atStart = true;
            foreach (int id in ids)
            {
                ReadOnlySpan<byte> bytes = TokenBytes(id, ref atStart);
                if (length + bytes.Length > buffer.Length)
                {
                    byte[] bigger = ArrayPool<byte>.Shared.Rent(Math.Max(buffer.Length * 2, length + bytes.Length));
                    buffer.AsSpan(0, length).CopyTo(bigger);
                    ArrayPool<byte>.Shared.Return(buffer);
                    buffer = bigger;
                }
                bytes.CopyTo(buffer.AsSpan(length));
                length += bytes.Length;
            }
            return Encoding.UTF8.GetString(buffer, 0, length);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    /// <summary>The bytes of token <paramref name="id"/> as the vocabulary defines them (a SentencePiece piece keeps its
    /// leading space; a special token is its text); empty for ids the tokenizer does not know. What per-token
    /// log-probabilities name each token by.</summary>
    public ReadOnlySpan<byte> RawTokenBytes(int id) => (uint)id < (uint)_tokenBytes.Length && _tokenBytes[id] is byte[] b ? b : default;

    /// <summary>Whether <paramref name="id"/> is one of <see cref="EosIds"/>.</summary>
    public bool IsEos(int id) => Array.IndexOf(_eosIds, id) >= 0;

    /// <summary>A new streaming decoder over this tokenizer, for one output stream.</summary>
    public IncrementalDecoder CreateDecoder() => new(this);

    /// <summary>
    /// The bytes <paramref name="id"/> contributes. <paramref name="atStart"/> is true until the first
    /// SentencePiece text piece has been decoded; that piece loses its leading space (the dummy prefix), as in
    /// sentencepiece and Microsoft.ML.Tokenizers. Empty for unknown ids.
    /// </summary>
    internal ReadOnlySpan<byte> TokenBytes(int id, ref bool atStart)
    {
        if ((uint)id >= (uint)_tokenBytes.Length || _tokenBytes[id] is not byte[] bytes) return default;
        if (atStart && _textPieceKind is { } kind && kind[id] != TokenizerParts.NotText)
        {
            atStart = false;
            if (kind[id] == TokenizerParts.TextWithLeadingSpace && bytes.Length > 0 && bytes[0] == (byte)' ') return bytes.AsSpan(1);
        }
        return bytes;
    }
}
