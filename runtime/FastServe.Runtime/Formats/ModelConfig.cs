using System.Buffers;
using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;
using FastServe.Runtime.Backends;
using FastServe.Runtime.Quantization;

namespace FastServe.Runtime.Formats;

/// <summary>
/// The fields of a Hugging Face <c>config.json</c> that a Llama-family decoder needs, for
/// <c>LlamaForCausalLM</c>, <c>MistralForCausalLM</c> and <c>Qwen2ForCausalLM</c>. Defaults follow the
/// transformers config classes where a field is optional. Newer transformers files (<c>"dtype"</c> instead of
/// <c>"torch_dtype"</c>, <c>"rope_parameters"</c> instead of <c>"rope_theta"</c>/<c>"rope_scaling"</c>) are read too.
/// Fields this type does not model (e.g. Mistral's <c>sliding_window</c>) are ignored.
/// Equality compares <see cref="EosTokenIds"/> element-wise.
/// </summary>
public sealed record class ModelConfig
{
    /// <summary>Architectures this runtime runs, with their <c>model_type</c>.</summary>
    public static readonly IReadOnlyDictionary<string, string> SupportedArchitectures = new Dictionary<string, string>
    {
        ["LlamaForCausalLM"] = "llama",
        ["MistralForCausalLM"] = "mistral",
        ["Qwen2ForCausalLM"] = "qwen2",
    };

    /// <summary>Largest accepted size of any dimension (hidden, intermediate, vocabulary, layers, heads).</summary>
    public const int MaxDim = 1 << 24;

    /// <summary>Written as <c>"transformers_version"</c> by <see cref="ToJson"/>.</summary>
    public const string TransformersVersion = "4.57.1";

    /// <summary>"LlamaForCausalLM" | "MistralForCausalLM" | "Qwen2ForCausalLM".</summary>
    public required string Architecture { get; init; }

    /// <summary>"llama" | "mistral" | "qwen2".</summary>
    public required string ModelType { get; init; }

    /// <summary>Model width (<c>hidden_size</c>).</summary>
    public required int HiddenSize { get; init; }

    /// <summary>MLP inner width (<c>intermediate_size</c>).</summary>
    public required int IntermediateSize { get; init; }

    /// <summary>Decoder blocks (<c>num_hidden_layers</c>).</summary>
    public required int NumLayers { get; init; }

    /// <summary>Query heads (<c>num_attention_heads</c>).</summary>
    public required int NumHeads { get; init; }

    /// <summary>Key/value heads (<c>num_key_value_heads</c>; NumHeads when absent).</summary>
    public required int NumKvHeads { get; init; }

    /// <summary>Per-head width (<c>head_dim</c>; HiddenSize / NumHeads when absent).</summary>
    public required int HeadDim { get; init; }

    /// <summary>Rows of the embedding and lm_head (<c>vocab_size</c>).</summary>
    public required int VocabSize { get; init; }

    /// <summary><c>max_position_embeddings</c>, in tokens.</summary>
    public int MaxPositionEmbeddings { get; init; } = 2048;

    /// <summary><c>rms_norm_eps</c>.</summary>
    public double RmsNormEps { get; init; } = 1e-6;

    /// <summary><c>rope_theta</c> (RoPE base).</summary>
    public double RopeTheta { get; init; } = 10000;

    /// <summary>Llama 3 <c>rope_scaling</c>, or null for plain RoPE.</summary>
    public RopeScaling? RopeScaling { get; init; }

    /// <summary>lm_head shares the embedding matrix (<c>tie_word_embeddings</c>, default false).</summary>
    public bool TieWordEmbeddings { get; init; }

    /// <summary>q/k/v projections carry a bias: always for qwen2, else <c>attention_bias</c>.</summary>
    public bool AttentionBias { get; init; }

    /// <summary><c>bos_token_id</c>, or null.</summary>
    public int? BosTokenId { get; init; }

    /// <summary><c>eos_token_id</c> (an int or a list in the file); empty when absent.</summary>
    public IReadOnlyList<int> EosTokenIds { get; init; } = [];

    /// <summary><c>torch_dtype</c> (or newer <c>dtype</c>), e.g. "bfloat16".</summary>
    public string TorchDtype { get; init; } = "float32";

    /// <summary>The FP8 <c>quantization_config</c>, or null for an unquantized model.</summary>
    public QuantizationConfig? Quantization { get; init; }

    /// <summary>
    /// Reads and validates a config.json. Errors: <c>config.missing</c> (no such file or unreadable) and every
    /// code of <see cref="Parse"/>.
    /// </summary>
    public static ModelConfig Load(string configJsonPath)
    {
        configJsonPath = Path.GetFullPath(configJsonPath);
        string text;
        try
        {
            text = File.ReadAllText(configJsonPath, Encoding.UTF8);
        }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException)
        {
            throw new FastServeException("config.missing", $"{configJsonPath}: no such file", configJsonPath, e);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new FastServeException("config.missing", $"{configJsonPath}: cannot read: {e.Message}", configJsonPath, e);
        }
        return Parse(text, configJsonPath);
    }

    /// <summary>
    /// Parses and validates config.json text. Errors (<see cref="FastServeException"/> with path
    /// <paramref name="pathForErrors"/>): <c>config.invalid_json</c>, <c>config.missing_field</c>,
    /// <c>config.invalid_value</c> (wrong JSON type, out-of-range or inconsistent sizes),
    /// <c>config.unsupported_architecture</c> (also for <c>mlp_bias: true</c>), <c>config.unsupported_rope_scaling</c>,
    /// <c>config.unsupported_activation</c> (hidden_act other than silu), <c>config.unsupported_quantization</c>.
    /// </summary>
    public static ModelConfig Parse(string json, string pathForErrors)
    {
        string p = pathForErrors;
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(json, new JsonDocumentOptions { CommentHandling = JsonCommentHandling.Skip, AllowTrailingCommas = true });
        }
        catch (JsonException e)
        {
            throw new FastServeException("config.invalid_json", $"{p}: not valid JSON: {e.Message}", p, e);
        }
        using (doc)
        {
            var r = doc.RootElement;
            if (r.ValueKind != JsonValueKind.Object)
                throw new FastServeException("config.invalid_json", $"{p}: top level is a JSON {r.ValueKind}, not an object", p);

            if (!Has(r, "architectures"))
                throw new FastServeException("config.missing_field", $"{p}: missing field \"architectures\"", p);
            var archEl = r.GetProperty("architectures");
            if (archEl.ValueKind != JsonValueKind.Array || archEl.GetArrayLength() == 0 || archEl.EnumerateArray().Any(a => a.ValueKind != JsonValueKind.String))
                throw new FastServeException("config.invalid_value", $"{p}: \"architectures\" must be a non-empty array of strings", p);
            string[] archs = archEl.EnumerateArray().Select(a => a.GetString()!).ToArray();
            string? arch = archs.FirstOrDefault(SupportedArchitectures.ContainsKey);
            if (arch is null)
                throw new FastServeException("config.unsupported_architecture",
                    $"{p}: architecture {string.Join(", ", archs)} is not supported (supported: {string.Join(", ", SupportedArchitectures.Keys)})", p);
            string modelType = OptString(r, "model_type", p) ?? SupportedArchitectures[arch];
            if (!SupportedArchitectures.Values.Contains(modelType))
                throw new FastServeException("config.unsupported_architecture", $"{p}: model_type '{modelType}' is not supported", p);

            string act = OptString(r, "hidden_act", p) ?? "silu";
            if (act != "silu")
                throw new FastServeException("config.unsupported_activation", $"{p}: hidden_act '{act}' is not supported (only silu)", p);

            if (OptBool(r, "mlp_bias", p) == true)
                throw new FastServeException("config.unsupported_architecture", $"{p}: mlp_bias true is not supported (Llama-family MLPs have no bias)", p);

            int hidden = ReqInt(r, "hidden_size", p);
            int heads = ReqInt(r, "num_attention_heads", p);
            // heads <= 0 is reported by Validate; 0 here only stands in until then.
            int headDim = OptInt(r, "head_dim", p) ?? (heads <= 0 ? 0 : hidden % heads == 0 ? hidden / heads
                : throw new FastServeException("config.invalid_value", $"{p}: hidden_size {hidden} is not a multiple of num_attention_heads {heads} and head_dim is absent", p));

            JsonElement ropeParams = r.TryGetProperty("rope_parameters", out var rp) && rp.ValueKind == JsonValueKind.Object ? rp : default;
            double ropeTheta = OptDouble(r, "rope_theta", p)
                ?? (ropeParams.ValueKind == JsonValueKind.Object ? OptDouble(ropeParams, "rope_theta", p) : null)
                ?? 10000;
            JsonElement scalingEl = r.TryGetProperty("rope_scaling", out var rs) && rs.ValueKind != JsonValueKind.Null ? rs : ropeParams;

            var cfg = new ModelConfig
            {
                Architecture = arch,
                ModelType = modelType,
                HiddenSize = hidden,
                IntermediateSize = ReqInt(r, "intermediate_size", p),
                NumLayers = ReqInt(r, "num_hidden_layers", p),
                NumHeads = heads,
                NumKvHeads = OptInt(r, "num_key_value_heads", p) ?? heads,
                HeadDim = headDim,
                VocabSize = ReqInt(r, "vocab_size", p),
                MaxPositionEmbeddings = OptInt(r, "max_position_embeddings", p) ?? 2048,
                RmsNormEps = OptDouble(r, "rms_norm_eps", p) ?? 1e-6,
                RopeTheta = ropeTheta,
                RopeScaling = ParseRopeScaling(scalingEl, p),
                TieWordEmbeddings = OptBool(r, "tie_word_embeddings", p) ?? false,
                AttentionBias = modelType == "qwen2" || (OptBool(r, "attention_bias", p) ?? false),
                BosTokenId = OptInt(r, "bos_token_id", p),
                EosTokenIds = ParseEos(r, p),
                TorchDtype = OptString(r, "torch_dtype", p) ?? OptString(r, "dtype", p) ?? "float32",
                Quantization = r.TryGetProperty("quantization_config", out var q) ? QuantizationConfig.FromJson(q, p) : null,
            };
            cfg.Validate(p);
            return cfg;
        }
    }

    /// <summary>
    /// Checks sizes and ratios: every size positive and at most <see cref="MaxDim"/>, NumHeads a multiple of
    /// NumKvHeads, HeadDim even, eps and theta positive and finite, token ids non-negative, supported
    /// architecture/model_type. Throws <c>config.invalid_value</c> (or <c>config.unsupported_architecture</c>).
    /// </summary>
    public void Validate(string pathForErrors)
    {
        string p = pathForErrors;
        if (!SupportedArchitectures.TryGetValue(Architecture, out _))
            throw new FastServeException("config.unsupported_architecture", $"{p}: architecture {Architecture} is not supported", p);
        if (!SupportedArchitectures.Values.Contains(ModelType))
            throw new FastServeException("config.unsupported_architecture", $"{p}: model_type '{ModelType}' is not supported", p);
        Dim(HiddenSize, "hidden_size", p);
        Dim(IntermediateSize, "intermediate_size", p);
        Dim(NumLayers, "num_hidden_layers", p);
        Dim(NumHeads, "num_attention_heads", p);
        Dim(NumKvHeads, "num_key_value_heads", p);
        Dim(HeadDim, "head_dim", p);
        Dim(VocabSize, "vocab_size", p);
        Dim(MaxPositionEmbeddings, "max_position_embeddings", p);
        if (NumHeads % NumKvHeads != 0)
            throw Bad(p, $"num_attention_heads {NumHeads} is not a multiple of num_key_value_heads {NumKvHeads}");
        if (HeadDim % 2 != 0) throw Bad(p, $"head_dim {HeadDim} is odd (RoPE rotates pairs)");
        if ((long)NumHeads * HeadDim > MaxDim) throw Bad(p, $"num_attention_heads × head_dim = {(long)NumHeads * HeadDim} is too large");
        if (!(RmsNormEps > 0) || !double.IsFinite(RmsNormEps)) throw Bad(p, $"rms_norm_eps {RmsNormEps} must be positive");
        if (!(RopeTheta > 0) || !double.IsFinite(RopeTheta)) throw Bad(p, $"rope_theta {RopeTheta} must be positive");
        if (RopeScaling is { } s)
        {
            if (!(s.Factor > 0) || !(s.LowFreqFactor > 0) || !(s.HighFreqFactor > s.LowFreqFactor) || s.OriginalMaxPositionEmbeddings <= 0
                || !double.IsFinite(s.Factor) || !double.IsFinite(s.HighFreqFactor))
                throw Bad(p, $"rope_scaling {s} needs factor > 0, 0 < low_freq_factor < high_freq_factor, original_max_position_embeddings > 0");
        }
        if (BosTokenId is < 0) throw Bad(p, $"bos_token_id {BosTokenId} is negative");
        foreach (int id in EosTokenIds)
            if (id < 0) throw Bad(p, $"eos_token_id {id} is negative");
    }

    /// <summary>
    /// A config.json that Hugging Face transformers loads unchanged: <c>architectures</c>, <c>model_type</c>, every
    /// field of this type under its transformers name, <c>hidden_act</c> "silu", <c>quantization_config</c> when set,
    /// and <c>transformers_version</c>. Indented, UTF-8, ending with a newline.
    /// </summary>
    public string ToJson()
    {
        var buf = new ArrayBufferWriter<byte>();
        using (var w = new Utf8JsonWriter(buf, new JsonWriterOptions { Indented = true, Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            w.WriteStartObject();
            w.WriteStartArray("architectures");
            w.WriteStringValue(Architecture);
            w.WriteEndArray();
            w.WriteString("model_type", ModelType);
            w.WriteBoolean("attention_bias", AttentionBias);
            if (BosTokenId is { } bos) w.WriteNumber("bos_token_id", bos);
            else w.WriteNull("bos_token_id");
            if (EosTokenIds.Count == 0) w.WriteNull("eos_token_id");
            else if (EosTokenIds.Count == 1) w.WriteNumber("eos_token_id", EosTokenIds[0]);
            else
            {
                w.WriteStartArray("eos_token_id");
                foreach (int id in EosTokenIds) w.WriteNumberValue(id);
                w.WriteEndArray();
            }
            w.WriteNumber("head_dim", HeadDim);
            w.WriteString("hidden_act", "silu");
            w.WriteNumber("hidden_size", HiddenSize);
            w.WriteNumber("intermediate_size", IntermediateSize);
            w.WriteNumber("max_position_embeddings", MaxPositionEmbeddings);
            w.WriteNumber("num_attention_heads", NumHeads);
            w.WriteNumber("num_hidden_layers", NumLayers);
            w.WriteNumber("num_key_value_heads", NumKvHeads);
            if (Quantization is not null)
            {
                w.WritePropertyName("quantization_config");
                Quantization.WriteJson(w);
            }
            w.WriteNumber("rms_norm_eps", RmsNormEps);
            if (RopeScaling is { } s)
            {
                w.WriteStartObject("rope_scaling");
                w.WriteNumber("factor", s.Factor);
                w.WriteNumber("high_freq_factor", s.HighFreqFactor);
                w.WriteNumber("low_freq_factor", s.LowFreqFactor);
                w.WriteNumber("original_max_position_embeddings", s.OriginalMaxPositionEmbeddings);
                w.WriteString("rope_type", "llama3");
                w.WriteEndObject();
            }
            else
            {
                w.WriteNull("rope_scaling");
            }
            w.WriteNumber("rope_theta", RopeTheta);
            w.WriteBoolean("tie_word_embeddings", TieWordEmbeddings);
            w.WriteString("torch_dtype", TorchDtype);
            w.WriteString("transformers_version", TransformersVersion);
            w.WriteBoolean("use_cache", true);
            w.WriteNumber("vocab_size", VocabSize);
            w.WriteEndObject();
        }
        return Encoding.UTF8.GetString(buf.WrittenSpan) + "\n";
    }

    /// <summary>Value equality, comparing <see cref="EosTokenIds"/> element by element.</summary>
    public bool Equals(ModelConfig? other) =>
        other is not null
        && Architecture == other.Architecture && ModelType == other.ModelType
        && HiddenSize == other.HiddenSize && IntermediateSize == other.IntermediateSize && NumLayers == other.NumLayers
        && NumHeads == other.NumHeads && NumKvHeads == other.NumKvHeads && HeadDim == other.HeadDim && VocabSize == other.VocabSize
        && MaxPositionEmbeddings == other.MaxPositionEmbeddings && RmsNormEps.Equals(other.RmsNormEps) && RopeTheta.Equals(other.RopeTheta)
        && Equals(RopeScaling, other.RopeScaling) && TieWordEmbeddings == other.TieWordEmbeddings && AttentionBias == other.AttentionBias
        && BosTokenId == other.BosTokenId && EosTokenIds.SequenceEqual(other.EosTokenIds) && TorchDtype == other.TorchDtype
        && Equals(Quantization, other.Quantization);

    public override int GetHashCode() => HashCode.Combine(Architecture, HiddenSize, NumLayers, NumHeads, VocabSize, Quantization);

    private static RopeScaling? ParseRopeScaling(JsonElement e, string p)
    {
        if (e.ValueKind is JsonValueKind.Undefined or JsonValueKind.Null) return null;
        if (e.ValueKind != JsonValueKind.Object) throw Bad(p, "rope_scaling must be an object or null");
        string? type = OptString(e, "rope_type", p) ?? OptString(e, "type", p);
        if (type is null or "default") return null;
        if (type != "llama3")
            throw new FastServeException("config.unsupported_rope_scaling", $"{p}: rope_scaling type '{type}' is not supported (only llama3)", p);
        return new RopeScaling(
            ReqDouble(e, "factor", p, "rope_scaling."),
            ReqDouble(e, "low_freq_factor", p, "rope_scaling."),
            ReqDouble(e, "high_freq_factor", p, "rope_scaling."),
            ReqInt(e, "original_max_position_embeddings", p, "rope_scaling."));
    }

    private static int[] ParseEos(JsonElement r, string p)
    {
        if (!r.TryGetProperty("eos_token_id", out var e) || e.ValueKind == JsonValueKind.Null) return [];
        if (e.ValueKind == JsonValueKind.Number) return [ToInt(e, "eos_token_id", p)];
        if (e.ValueKind != JsonValueKind.Array) throw Bad(p, $"eos_token_id must be an integer or a list of integers, got {e.ValueKind}");
        return e.EnumerateArray().Select(x => x.ValueKind == JsonValueKind.Number ? ToInt(x, "eos_token_id", p)
            : throw Bad(p, "eos_token_id must be an integer or a list of integers")).ToArray();
    }

    private static bool Has(JsonElement o, string name) => o.TryGetProperty(name, out var v) && v.ValueKind != JsonValueKind.Null;

    private static int ReqInt(JsonElement o, string name, string p, string prefix = "") =>
        OptInt(o, name, p, prefix) ?? throw new FastServeException("config.missing_field", $"{p}: missing field \"{prefix}{name}\"", p);

    private static int? OptInt(JsonElement o, string name, string p, string prefix = "")
    {
        if (!o.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null) return null;
        return ToInt(v, prefix + name, p);
    }

    private static int ToInt(JsonElement v, string name, string p)
    {
        if (v.ValueKind != JsonValueKind.Number) throw Bad(p, $"{name} must be an integer, got {v.ValueKind}");
        if (v.TryGetInt32(out int i)) return i;
        // Some writers emit integral values as 4096.0.
        if (v.TryGetDouble(out double d) && d == Math.Floor(d) && d >= int.MinValue && d <= int.MaxValue) return (int)d;
        throw Bad(p, $"{name} must be a 32-bit integer, got {v.GetRawText()}");
    }

    private static double ReqDouble(JsonElement o, string name, string p, string prefix = "") =>
        OptDouble(o, name, p, prefix) ?? throw new FastServeException("config.missing_field", $"{p}: missing field \"{prefix}{name}\"", p);

    private static double? OptDouble(JsonElement o, string name, string p, string prefix = "")
    {
        if (!o.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null) return null;
        if (v.ValueKind != JsonValueKind.Number || !v.TryGetDouble(out double d))
            throw Bad(p, $"{prefix}{name} must be a number, got {v.ValueKind}");
        return d;
    }

    private static bool? OptBool(JsonElement o, string name, string p)
    {
        if (!o.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null) return null;
        return v.ValueKind switch
        {
            JsonValueKind.True => true,
            JsonValueKind.False => false,
            _ => throw Bad(p, $"{name} must be true or false, got {v.ValueKind}"),
        };
    }

    private static string? OptString(JsonElement o, string name, string p)
    {
        if (!o.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null) return null;
        return v.ValueKind == JsonValueKind.String ? v.GetString() : throw Bad(p, $"{name} must be a string, got {v.ValueKind}");
    }

    private static void Dim(int value, string name, string p)
    {
        if (value <= 0 || value > MaxDim) throw Bad(p, $"{name} {value} must be between 1 and {MaxDim}");
    }

    private static FastServeException Bad(string p, string message) => new("config.invalid_value", $"{p}: {message}", p);
}
