using System.Text.Json;
using Microsoft.ML.Tokenizers;

namespace FastServe.Runtime.Tokenization;

/// <summary>What a loader hands to <see cref="TextTokenizer"/>: the library tokenizer plus the id-indexed tables.</summary>
internal sealed class TokenizerParts
{
    public required Tokenizer Inner { get; init; }
    public required string Kind { get; init; }
    public required string SourceFile { get; init; }

    /// <summary>Bytes each id decodes to, indexed by id; null for ids the tokenizer does not assign.</summary>
    public required byte[]?[] TokenBytes { get; init; }

    /// <summary>SentencePiece only, per id: <see cref="NotText"/> (control, byte, unknown), <see cref="Text"/>, or
    /// <see cref="TextWithLeadingSpace"/> (a piece starting with the space symbol, stripped when it is the first text piece).</summary>
    public byte[]? TextPieceKind { get; init; }

    public const byte NotText = 0, Text = 1, TextWithLeadingSpace = 2;

    /// <summary>Plain-text encoder (no BOS/EOS, special tokens never matched).</summary>
    public required Func<string, IReadOnlyList<int>> Encode { get; init; }

    /// <summary>Id of a token given by its text (tokenizer_config.json's bos_token/eos_token), or null.</summary>
    public required Func<string, int?> FindId { get; init; }

    public int? DefaultBosId { get; init; }
    public int? DefaultEosId { get; init; }
}

/// <summary>One entry of tokenizer.json's added_tokens or tokenizer_config.json's added_tokens_decoder.</summary>
internal readonly record struct AddedToken(int Id, string Content, bool Special);

/// <summary>The parts of tokenizer_config.json the runtime uses.</summary>
internal sealed class TokenizerConfig
{
    public string? BosToken { get; private init; }
    public string? EosToken { get; private init; }
    public List<AddedToken> AddedTokens { get; private init; } = [];

    /// <summary>Reads dir/tokenizer_config.json; null when the file does not exist.</summary>
    public static TokenizerConfig? TryRead(string dir)
    {
        string path = Path.Combine(dir, "tokenizer_config.json");
        if (!File.Exists(path)) return null;
        byte[] json = TokenizerIo.ReadAllBytes(path);
        try
        {
            using JsonDocument doc = JsonDocument.Parse(json);
            JsonElement root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object)
                throw TokenizerIo.Invalid(path, "the top level is not a JSON object");
            var added = new List<AddedToken>();
            if (root.TryGetProperty("added_tokens_decoder", out JsonElement dec) && dec.ValueKind == JsonValueKind.Object)
            {
                foreach (JsonProperty p in dec.EnumerateObject())
                {
                    if (!int.TryParse(p.Name, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int id))
                        throw TokenizerIo.Invalid(path, $"added_tokens_decoder key '{p.Name}' is not a token id");
                    if (p.Value.ValueKind != JsonValueKind.Object || !p.Value.TryGetProperty("content", out JsonElement c) || c.ValueKind != JsonValueKind.String)
                        throw TokenizerIo.Invalid(path, $"added_tokens_decoder entry {id} has no string 'content'");
                    bool special = p.Value.TryGetProperty("special", out JsonElement s) && s.ValueKind == JsonValueKind.True;
                    added.Add(new AddedToken(id, c.GetString()!, special));
                }
            }
            return new TokenizerConfig
            {
                BosToken = TokenText(root, "bos_token", path),
                EosToken = TokenText(root, "eos_token", path),
                AddedTokens = added,
            };
        }
        catch (JsonException e)
        {
            throw TokenizerIo.Invalid(path, "not valid JSON: " + e.Message, e);
        }
    }

    // A token is either a plain string or a serialized AddedToken object with "content".
    private static string? TokenText(JsonElement root, string name, string path)
    {
        if (!root.TryGetProperty(name, out JsonElement v)) return null;
        return v.ValueKind switch
        {
            JsonValueKind.Null => null,
            JsonValueKind.String => v.GetString(),
            JsonValueKind.Object when v.TryGetProperty("content", out JsonElement c) && c.ValueKind == JsonValueKind.String => c.GetString(),
            _ => throw TokenizerIo.Invalid(path, $"'{name}' is neither a string nor an object with 'content'"),
        };
    }
}

/// <summary>File access and error construction shared by the loaders.</summary>
internal static class TokenizerIo
{
    /// <summary>Ids above this are treated as corrupt input rather than allocated for.</summary>
    public const int MaxTokenId = 16 * 1024 * 1024;

    public static byte[] ReadAllBytes(string path)
    {
        try
        {
            return File.ReadAllBytes(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new FastServeException("tokenizer.io_error", $"cannot read tokenizer file: {e.Message}", path, e);
        }
    }

    public static FastServeException Invalid(string path, string message, Exception? inner = null) =>
        new("tokenizer.invalid", message, path, inner);

    public static FastServeException Unsupported(string path, string message) =>
        new("tokenizer.unsupported", message, path);

    public static void CheckId(int id, string path, string what)
    {
        if (id < 0 || id > MaxTokenId) throw Invalid(path, $"{what} has token id {id}, outside 0..{MaxTokenId}");
    }
}
