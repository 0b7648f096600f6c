using System.Buffers.Text;
using System.IO.Compression;
using System.Text.RegularExpressions;
using Microsoft.ML.Tokenizers;

namespace FastServe.Runtime.Tokenization;

/// <summary>Mergeable ranks of a tiktoken encoding: token bytes by rank (null where a rank is unused).</summary>
internal sealed class TiktokenRanks
{
    public TiktokenRanks(byte[]?[] tokens, int count)
    {
        Tokens = tokens;
        Count = count;
    }

    public byte[]?[] Tokens { get; }

    /// <summary>Number of ranks actually present.</summary>
    public int Count { get; }

    /// <summary>
    /// Parses a rank file: lines of "base64 rank", or (Microsoft.ML.Tokenizers' embedded form) an optional
    /// "Capacity: N" line followed by base64-only lines whose rank is their position.
    /// </summary>
    public static TiktokenRanks Parse(ReadOnlySpan<byte> data, string path)
    {
        var tokens = new List<byte[]?>(Math.Max(16, data.Length / 12));
        int lineNo = 0, count = 0, implicitRank = 0;
        bool? explicitRanks = null;
        while (!data.IsEmpty)
        {
            int nl = data.IndexOf((byte)'\n');
            ReadOnlySpan<byte> line = nl < 0 ? data : data[..nl];
            data = nl < 0 ? default : data[(nl + 1)..];
            lineNo++;
            if (!line.IsEmpty && line[^1] == (byte)'\r') line = line[..^1];
            if (line.IsEmpty) continue;
            if (lineNo == 1 && line.StartsWith("Capacity: "u8)) continue;

            int sp = line.IndexOf((byte)' ');
            explicitRanks ??= sp >= 0;
            int rank;
            ReadOnlySpan<byte> b64;
            if (explicitRanks.Value)
            {
                if (sp <= 0 || line[(sp + 1)..].IndexOf((byte)' ') >= 0
                    || !System.Buffers.Text.Utf8Parser.TryParse(line[(sp + 1)..], out rank, out int used) || used != line.Length - sp - 1)
                    throw TokenizerIo.Invalid(path, $"line {lineNo} is not \"<base64 token> <rank>\"");
                b64 = line[..sp];
            }
            else
            {
                if (sp >= 0) throw TokenizerIo.Invalid(path, $"line {lineNo} mixes the ranked and the unranked line form");
                rank = implicitRank++;
                b64 = line;
            }
            TokenizerIo.CheckId(rank, path, $"line {lineNo}");
            var bytes = new byte[Base64.GetMaxDecodedFromUtf8Length(b64.Length)];
            if (Base64.DecodeFromUtf8(b64, bytes, out _, out int written) != System.Buffers.OperationStatus.Done || written == 0)
                throw TokenizerIo.Invalid(path, $"line {lineNo} does not start with a base64 token");
            while (tokens.Count <= rank) tokens.Add(null);
            if (tokens[rank] is not null) throw TokenizerIo.Invalid(path, $"rank {rank} appears twice (line {lineNo})");
            tokens[rank] = written == bytes.Length ? bytes : bytes[..written];
            count++;
        }
        if (count == 0) throw TokenizerIo.Invalid(path, "no ranks in the file");
        return new TiktokenRanks(tokens.ToArray(), count);
    }

    /// <summary>Whether a file starts like a tiktoken rank file ("base64 rank" on its first line).</summary>
    public static bool LooksLikeRankFile(ReadOnlySpan<byte> head)
    {
        int nl = head.IndexOf((byte)'\n');
        if (nl <= 0) return false;
        ReadOnlySpan<byte> line = head[..nl];
        if (line[^1] == (byte)'\r') line = line[..^1];
        int sp = line.IndexOf((byte)' ');
        if (sp <= 0 || sp == line.Length - 1) return false;
        foreach (byte c in line[..sp])
            if (!(char.IsAsciiLetterOrDigit((char)c) || c == '+' || c == '/' || c == '=')) return false;
        foreach (byte c in line[(sp + 1)..])
            if (!char.IsAsciiDigit((char)c)) return false;
        return true;
    }
}

/// <summary>tiktoken rank files (a *.tiktoken file, or a tokenizer.model in that format) and the cl100k_base data.</summary>
internal static class TiktokenLoader
{
    private const string Cl100kDataType = "Microsoft.ML.Tokenizers.Cl100kBaseTokenizerData, Microsoft.ML.Tokenizers.Data.Cl100kBase";
    private const string Cl100kResource = "cl100k_base.tiktoken.deflate";

    /// <summary>cl100k_base's special tokens (as tiktoken and Microsoft.ML.Tokenizers define them).</summary>
    public static readonly IReadOnlyDictionary<string, int> Cl100kSpecials = new Dictionary<string, int>
    {
        ["<|endoftext|>"] = 100257,
        ["<|fim_prefix|>"] = 100258,
        ["<|fim_middle|>"] = 100259,
        ["<|fim_suffix|>"] = 100260,
        ["<|endofprompt|>"] = 100276,
    };

    /// <summary>
    /// cl100k_base's ranks, read from the Microsoft.ML.Tokenizers.Data.Cl100kBase package (the same data
    /// TiktokenTokenizer.CreateForEncoding("cl100k_base") loads).
    /// </summary>
    public static TiktokenRanks LoadCl100k()
    {
        Type? marker = Type.GetType(Cl100kDataType, throwOnError: false);
        using Stream? compressed = marker?.Assembly.GetManifestResourceStream(Cl100kResource);
        if (compressed is null)
            throw new FastServeException("tokenizer.default_unavailable",
                $"the cl100k_base data ({Cl100kResource} in Microsoft.ML.Tokenizers.Data.Cl100kBase) is not available in this build");
        using var inflate = new DeflateStream(compressed, CompressionMode.Decompress);
        using var buffer = new MemoryStream(1 << 21);
        inflate.CopyTo(buffer);
        return TiktokenRanks.Parse(buffer.GetBuffer().AsSpan(0, (int)buffer.Length), Cl100kResource);
    }

    public static TokenizerParts Load(string path, TokenizerConfig? config)
    {
        byte[] data = TokenizerIo.ReadAllBytes(path);
        TiktokenRanks ranks = TiktokenRanks.Parse(data, path);

        // A rank file carries neither its split pattern nor its special tokens: known encodings are recognised by
        // size; anything else gets the cl100k/Llama 3 pattern and only the special tokens tokenizer_config.json lists.
        (string pattern, Dictionary<string, int> specials) = ranks.Count switch
        {
            50256 => (KnownPatterns.Gpt2, new Dictionary<string, int> { ["<|endoftext|>"] = 50256 }),
            100256 => (KnownPatterns.Cl100k, new Dictionary<string, int>(Cl100kSpecials)),
            199998 => (KnownPatterns.O200k, new Dictionary<string, int> { ["<|endoftext|>"] = 199999, ["<|endofprompt|>"] = 200018 }),
            _ => (KnownPatterns.Cl100k, new Dictionary<string, int>()),
        };
        var matchable = new Dictionary<string, int>(StringComparer.Ordinal);
        if (config is { AddedTokens.Count: > 0 })
        {
            specials.Clear();
            foreach (AddedToken a in config.AddedTokens)
            {
                TokenizerIo.CheckId(a.Id, path, $"added token '{a.Content}'");
                if (a.Content.Length == 0) continue;
                specials[a.Content] = a.Id;
                if (!a.Special) matchable[a.Content] = a.Id;
            }
        }
        return Build(path, data, ranks, pattern, specials, matchable);
    }

    private static TokenizerParts Build(string path, byte[] data, TiktokenRanks ranks, string pattern,
        Dictionary<string, int> specials, Dictionary<string, int> matchable)
    {
        int maxId = ranks.Tokens.Length - 1;
        foreach (int id in specials.Values) maxId = Math.Max(maxId, id);
        var bytes = new byte[]?[maxId + 1];
        Array.Copy(ranks.Tokens, bytes, ranks.Tokens.Length);
        var byBytes = new Dictionary<byte[], int>(ranks.Count, ByteArrayComparer.Instance);
        for (int r = 0; r < ranks.Tokens.Length; r++)
        {
            if (ranks.Tokens[r] is byte[] t && !byBytes.TryAdd(t, r))
                throw TokenizerIo.Invalid(path, $"rank {r} repeats the token of rank {byBytes[t]}");
        }

        Regex regex = KnownPatterns.Resolve(pattern, out _)!;
        var pre = new HfPreTokenizer([regex], matchable.Keys);
        // The library maps any piece equal to a special token's text to the special id; a special token that the
        // split pattern could produce as one piece is therefore kept out of the library and decoded here only.
        var libSpecials = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach ((string content, int id) in specials)
        {
            byte[] contentBytes = System.Text.Encoding.UTF8.GetBytes(content);
            if (bytes[id] is byte[] existing && !existing.AsSpan().SequenceEqual(contentBytes))
                throw TokenizerIo.Invalid(path, $"special token '{content}' has id {id}, which is already another token's rank");
            bytes[id] = contentBytes;
            bool onePiece = pre.Split(content) is [var only] && only.Length == content.Length;
            if (id >= ranks.Tokens.Length || ranks.Tokens[id] is null)
            {
                if (matchable.ContainsKey(content) || !onePiece) libSpecials[content] = id;
            }
        }

        TiktokenTokenizer inner;
        try
        {
            inner = TiktokenTokenizer.Create(new MemoryStream(data, writable: false), pre, normalizer: null,
                libSpecials.Count > 0 ? libSpecials : null);
        }
        catch (Exception e) when (e is InvalidOperationException or ArgumentException or FormatException)
        {
            throw TokenizerIo.Invalid(path, "the rank file cannot be loaded: " + e.Message, e);
        }

        var byContent = new Dictionary<string, int>(specials, StringComparer.Ordinal);
        return new TokenizerParts
        {
            Inner = inner,
            Kind = "tiktoken",
            SourceFile = path,
            TokenBytes = bytes,
            Encode = text => inner.EncodeToIds(text),
            FindId = content => byContent.TryGetValue(content, out int id) ? id
                : byBytes.TryGetValue(System.Text.Encoding.UTF8.GetBytes(content), out id) ? id : null,
        };
    }
}

/// <summary>Ordinal equality on byte arrays, with span lookups.</summary>
internal sealed class ByteArrayComparer : IEqualityComparer<byte[]>, IAlternateEqualityComparer<ReadOnlySpan<byte>, byte[]>
{
    public static readonly ByteArrayComparer Instance = new();

    public bool Equals(byte[]? x, byte[]? y) => x.AsSpan().SequenceEqual(y);
    public int GetHashCode(byte[] obj) => GetHashCode((ReadOnlySpan<byte>)obj);
    public bool Equals(ReadOnlySpan<byte> alternate, byte[] other) => alternate.SequenceEqual(other);

    public int GetHashCode(ReadOnlySpan<byte> alternate)
    {
        var h = new HashCode();
        h.AddBytes(alternate);
        return h.ToHashCode();
    }

    public byte[] Create(ReadOnlySpan<byte> alternate) => alternate.ToArray();
}
