using System.Text;
using Google.Protobuf;
using Microsoft.ML.Tokenizers;

namespace FastServe.Runtime.Tokenization;

/// <summary>SentencePiece tokenizer.model (a serialized sentencepiece ModelProto).</summary>
internal static class SentencePieceLoader
{
    // sentencepiece_model.proto enum values.
    private const int PieceNormal = 1, PieceUnknown = 2, PieceControl = 3, PieceUserDefined = 4, PieceByte = 6;
    private const int ModelUnigram = 1, ModelBpe = 2;
    private const char SpaceSymbol = '\u2581';

    public static TokenizerParts Load(string path)
    {
        byte[] data = TokenizerIo.ReadAllBytes(path);
        SpModel model = Read(data, path);
        if (model.Pieces.Count == 0) throw TokenizerIo.Invalid(path, "no pieces: this is not a SentencePiece model");
        if (model.ModelType is not (ModelBpe or ModelUnigram))
            throw TokenizerIo.Unsupported(path, $"SentencePiece model type {model.ModelType} is not supported (only BPE and Unigram)");
        if (model.TreatWhitespaceAsSuffix)
            throw TokenizerIo.Unsupported(path, "SentencePiece models with treat_whitespace_as_suffix are not supported");

        int n = model.Pieces.Count;
        var bytes = new byte[]?[n];
        // The first text piece loses the space the dummy prefix added.
        var kinds = model.EscapeWhitespaces && model.AddDummyPrefix ? new byte[n] : null;
        var byPiece = new Dictionary<string, int>(n, StringComparer.Ordinal);
        var userDefined = new Dictionary<string, int>(StringComparer.Ordinal);
        for (int id = 0; id < n; id++)
        {
            (string piece, int type) = model.Pieces[id];
            byPiece.TryAdd(piece, id);
            switch (type)
            {
                case PieceControl:
                    bytes[id] = [];
                    break;
                case PieceUnknown:
                    bytes[id] = " \u2047 "u8.ToArray();
                    break;
                case PieceByte when TryParseBytePiece(piece, out byte b):
                    bytes[id] = [b];
                    break;
                default:
                    if (type == PieceUserDefined && piece.Length > 0) userDefined.TryAdd(piece, id);
                    bytes[id] = Encoding.UTF8.GetBytes(model.EscapeWhitespaces ? piece.Replace(SpaceSymbol, ' ') : piece);
                    if (kinds is not null)
                        kinds[id] = piece.Length > 0 && piece[0] == SpaceSymbol ? TokenizerParts.TextWithLeadingSpace : TokenizerParts.Text;
                    break;
            }
        }

        SentencePieceTokenizer inner;
        try
        {
            inner = SentencePieceTokenizer.Create(new MemoryStream(data, writable: false),
                addBeginningOfSentence: false, addEndOfSentence: false, userDefined.Count > 0 ? userDefined : null);
        }
        catch (InvalidProtocolBufferException e)
        {
            throw TokenizerIo.Invalid(path, "not a valid SentencePiece model: " + e.Message, e);
        }
        catch (Exception e) when (e is ArgumentException or InvalidOperationException or NotSupportedException)
        {
            throw TokenizerIo.Unsupported(path, "the SentencePiece model cannot be loaded: " + e.Message);
        }

        return new TokenizerParts
        {
            Inner = inner,
            Kind = "sentencepiece",
            SourceFile = path,
            TokenBytes = bytes,
            TextPieceKind = kinds,
            Encode = text => inner.EncodeToIds(text, addBeginningOfSentence: false, addEndOfSentence: false),
            FindId = content => byPiece.TryGetValue(content, out int id) ? id : null,
            DefaultBosId = model.BosId >= 0 && model.BosId < n ? model.BosId : null,
            DefaultEosId = model.EosId >= 0 && model.EosId < n ? model.EosId : null,
        };
    }

    private static bool TryParseBytePiece(string piece, out byte value)
    {
        value = 0;
        return piece.Length == 6 && piece.StartsWith("<0x", StringComparison.Ordinal) && piece[5] == '>'
            && byte.TryParse(piece.AsSpan(3, 2), System.Globalization.NumberStyles.AllowHexSpecifier, System.Globalization.CultureInfo.InvariantCulture, out value);
    }

    private sealed class SpModel
    {
        public List<(string Piece, int Type)> Pieces { get; } = [];
        public int ModelType { get; set; } = ModelUnigram;
        public bool TreatWhitespaceAsSuffix { get; set; }
        public int BosId { get; set; } = 1;
        public int EosId { get; set; } = 2;
        public bool AddDummyPrefix { get; set; } = true;
        public bool RemoveExtraWhitespaces { get; set; } = true;
        public bool EscapeWhitespaces { get; set; } = true;
    }

    // Reads only the fields the runtime needs; the library parses the full message itself.
    private static SpModel Read(byte[] data, string path)
    {
        var model = new SpModel();
        try
        {
            var input = new CodedInputStream(data);
            uint tag;
            while ((tag = input.ReadTag()) != 0)
            {
                int field = WireFormat.GetTagFieldNumber(tag);
                bool delimited = WireFormat.GetTagWireType(tag) == WireFormat.WireType.LengthDelimited;
                if (field == 1 && delimited) model.Pieces.Add(ReadPiece(input.ReadBytes()));
                else if (field == 2 && delimited) ReadTrainerSpec(input.ReadBytes(), model);
                else if (field == 3 && delimited) ReadNormalizerSpec(input.ReadBytes(), model);
                else input.SkipLastField();
            }
        }
        catch (InvalidProtocolBufferException e)
        {
            throw TokenizerIo.Invalid(path, "not a valid SentencePiece model: " + e.Message, e);
        }
        return model;
    }

    private static (string, int) ReadPiece(ByteString message)
    {
        string piece = "";
        int type = PieceNormal;
        CodedInputStream input = message.CreateCodedInput();
        uint tag;
        while ((tag = input.ReadTag()) != 0)
        {
            switch (WireFormat.GetTagFieldNumber(tag), WireFormat.GetTagWireType(tag))
            {
                case (1, WireFormat.WireType.LengthDelimited): piece = input.ReadString(); break;
                case (3, WireFormat.WireType.Varint): type = input.ReadEnum(); break;
                default: input.SkipLastField(); break;
            }
        }
        return (piece, type);
    }

    private static void ReadTrainerSpec(ByteString message, SpModel model)
    {
        CodedInputStream input = message.CreateCodedInput();
        uint tag;
        while ((tag = input.ReadTag()) != 0)
        {
            if (WireFormat.GetTagWireType(tag) != WireFormat.WireType.Varint)
            {
                input.SkipLastField();
                continue;
            }
            switch (WireFormat.GetTagFieldNumber(tag))
            {
                case 3: model.ModelType = input.ReadEnum(); break;
                case 24: model.TreatWhitespaceAsSuffix = input.ReadBool(); break;
                case 41: model.BosId = input.ReadInt32(); break;
                case 42: model.EosId = input.ReadInt32(); break;
                default: input.SkipLastField(); break;
            }
        }
    }

    private static void ReadNormalizerSpec(ByteString message, SpModel model)
    {
        CodedInputStream input = message.CreateCodedInput();
        uint tag;
        while ((tag = input.ReadTag()) != 0)
        {
            if (WireFormat.GetTagWireType(tag) != WireFormat.WireType.Varint)
            {
                input.SkipLastField();
                continue;
            }
            switch (WireFormat.GetTagFieldNumber(tag))
            {
                case 3: model.AddDummyPrefix = input.ReadBool(); break;
                case 4: model.RemoveExtraWhitespaces = input.ReadBool(); break;
                case 5: model.EscapeWhitespaces = input.ReadBool(); break;
                default: input.SkipLastField(); break;
            }
        }
    }
}
