using System.Text.Json;

namespace FastServe.Runtime.Quantization;

/// <summary>How FP8 weight scales are laid out.</summary>
public enum Fp8Scheme
{
    /// <summary>One F32 scale per output row (compressed-tensors strategy "channel"); <c>weight_scale</c> is [out, 1].</summary>
    PerChannel,

    /// <summary>One F32 scale for the whole matrix (strategy "tensor"); <c>weight_scale</c> is a scalar [].</summary>
    PerTensor,
}

/// <summary>Which linear layers of each decoder block to quantize.</summary>
[Flags]
public enum QuantizeLayers
{
    /// <summary><c>self_attn.{q,k,v,o}_proj</c>.</summary>
    Attention = 1,

    /// <summary><c>mlp.{gate,up,down}_proj</c>.</summary>
    Mlp = 2,

    /// <summary>Both.</summary>
    All = Attention | Mlp,
}

/// <summary>
/// The <c>quantization_config</c> of an FP8 checkpoint in the compressed-tensors layout that vLLM and Hugging Face
/// read: one config group targeting <c>Linear</c> layers, 8-bit float symmetric static weights with per-channel or
/// per-tensor scales, and (optionally) dynamic per-token FP8 input activations. <see cref="Ignore"/> lists module
/// names left unquantized (e.g. <c>lm_head</c>), exactly as written in the file (entries may be <c>re:</c> patterns).
/// Equality compares <see cref="Ignore"/> element-wise.
/// </summary>
public sealed record QuantizationConfig(Fp8Scheme Scheme, IReadOnlyList<string> Ignore)
{
    /// <summary>
    /// Reads a <c>quantization_config</c> element. Returns null for JSON null (no quantization).
    /// Errors (<see cref="FastServeException"/>, path = <paramref name="pathForErrors"/>):
    /// <c>config.unsupported_quantization</c> for any other method, format, number type, bit width, strategy,
    /// asymmetric or dynamic weights, static or non-FP8 activations, several config groups, or a KV-cache scheme;
    /// <c>config.invalid_value</c> when the element or one of its fields has the wrong JSON type.
    /// </summary>
    public static QuantizationConfig? FromJson(JsonElement e, string pathForErrors)
    {
        if (e.ValueKind is JsonValueKind.Null or JsonValueKind.Undefined) return null;
        if (e.ValueKind != JsonValueKind.Object) throw Invalid(pathForErrors, "quantization_config", "an object", e);

        string method = GetString(e, "quant_method", pathForErrors) ?? "(absent)";
        if (method != "compressed-tensors")
            throw Unsupported(pathForErrors, $"quant_method '{method}' (only 'compressed-tensors' FP8 is supported)");
        string format = GetString(e, "format", pathForErrors) ?? "(absent)";
        if (format != "float-quantized")
            throw Unsupported(pathForErrors, $"format '{format}' (only 'float-quantized' is supported)");
        if (e.TryGetProperty("kv_cache_scheme", out var kv) && kv.ValueKind != JsonValueKind.Null)
            throw Unsupported(pathForErrors, "a kv_cache_scheme (the KV cache is never quantized)");
        if (e.TryGetProperty("sparsity_config", out var sp) && sp.ValueKind != JsonValueKind.Null
            && !(sp.ValueKind == JsonValueKind.Object && sp.EnumerateObject().All(p => p.Value.ValueKind == JsonValueKind.Null
                || (p.Name == "format" && p.Value.ValueKind == JsonValueKind.String && p.Value.GetString() == "dense"))))
            throw Unsupported(pathForErrors, "a sparsity_config");

        if (!e.TryGetProperty("config_groups", out var groups) || groups.ValueKind != JsonValueKind.Object)
            throw Unsupported(pathForErrors, "no config_groups object");
        var groupList = groups.EnumerateObject().ToList();
        if (groupList.Count != 1)
            throw Unsupported(pathForErrors, $"{groupList.Count} config groups (exactly one is supported)");
        var g = groupList[0].Value;
        if (g.ValueKind != JsonValueKind.Object) throw Invalid(pathForErrors, $"config_groups.{groupList[0].Name}", "an object", g);

        if (!g.TryGetProperty("targets", out var targets) || targets.ValueKind != JsonValueKind.Array
            || !targets.EnumerateArray().Any(t => t.ValueKind == JsonValueKind.String && t.GetString() == "Linear"))
            throw Unsupported(pathForErrors, "a config group that does not target \"Linear\"");

        if (!g.TryGetProperty("weights", out var weights) || weights.ValueKind != JsonValueKind.Object)
            throw Unsupported(pathForErrors, "a config group without weight quantization");
        CheckFloat8(weights, "weights", pathForErrors);
        if (GetBool(weights, "symmetric", pathForErrors) == false)
            throw Unsupported(pathForErrors, "asymmetric weights");
        if (GetBool(weights, "dynamic", pathForErrors) == true)
            throw Unsupported(pathForErrors, "dynamic weight scales");
        string strategy = GetString(weights, "strategy", pathForErrors) ?? "(absent)";
        Fp8Scheme scheme = strategy switch
        {
            "channel" => Fp8Scheme.PerChannel,
            "tensor" => Fp8Scheme.PerTensor,
            _ => throw Unsupported(pathForErrors, $"weight strategy '{strategy}' (only 'channel' and 'tensor' are supported)"),
        };

        if (g.TryGetProperty("input_activations", out var act) && act.ValueKind != JsonValueKind.Null)
        {
            if (act.ValueKind != JsonValueKind.Object) throw Invalid(pathForErrors, "input_activations", "an object or null", act);
            CheckFloat8(act, "input_activations", pathForErrors);
            if (GetBool(act, "dynamic", pathForErrors) != true)
                throw Unsupported(pathForErrors, "static input activation scales (only dynamic activations are supported)");
        }
        if (g.TryGetProperty("output_activations", out var outAct) && outAct.ValueKind != JsonValueKind.Null)
            throw Unsupported(pathForErrors, "output activation quantization");

        var ignore = new List<string>();
        if (e.TryGetProperty("ignore", out var ig) && ig.ValueKind != JsonValueKind.Null)
        {
            if (ig.ValueKind != JsonValueKind.Array) throw Invalid(pathForErrors, "quantization_config.ignore", "an array of strings", ig);
            foreach (var s in ig.EnumerateArray())
            {
                if (s.ValueKind != JsonValueKind.String) throw Invalid(pathForErrors, "quantization_config.ignore", "an array of strings", ig);
                ignore.Add(s.GetString()!);
            }
        }
        return new QuantizationConfig(scheme, ignore);
    }

    /// <summary>Writes this config as a JSON object value (the caller writes the <c>"quantization_config"</c> name).</summary>
    public void WriteJson(Utf8JsonWriter w)
    {
        w.WriteStartObject();
        w.WriteString("quant_method", "compressed-tensors");
        w.WriteString("format", "float-quantized");
        w.WriteString("quantization_status", "compressed");
        w.WriteStartObject("config_groups");
        w.WriteStartObject("group_0");
        w.WriteStartArray("targets");
        w.WriteStringValue("Linear");
        w.WriteEndArray();
        w.WriteStartObject("weights");
        w.WriteNumber("num_bits", 8);
        w.WriteString("type", "float");
        w.WriteString("strategy", Scheme == Fp8Scheme.PerChannel ? "channel" : "tensor");
        w.WriteBoolean("symmetric", true);
        w.WriteBoolean("dynamic", false);
        w.WriteEndObject();
        w.WriteStartObject("input_activations");
        w.WriteNumber("num_bits", 8);
        w.WriteString("type", "float");
        w.WriteString("strategy", "token");
        w.WriteBoolean("symmetric", true);
        w.WriteBoolean("dynamic", true);
        w.WriteEndObject();
        w.WriteEndObject();
        w.WriteEndObject();
        w.WriteStartArray("ignore");
        foreach (string s in Ignore) w.WriteStringValue(s);
        w.WriteEndArray();
        w.WriteEndObject();
    }

    /// <summary>Value equality, comparing <see cref="Ignore"/> element by element.</summary>
    public bool Equals(QuantizationConfig? other) =>
        other is not null && Scheme == other.Scheme && Ignore.SequenceEqual(other.Ignore, StringComparer.Ordinal);

    public override int GetHashCode()
    {
        var h = new HashCode();
        h.Add(Scheme);
        foreach (string s in Ignore) h.Add(s, StringComparer.Ordinal);
        return h.ToHashCode();
    }

    private static void CheckFloat8(JsonElement o, string what, string path)
    {
        string type = GetString(o, "type", path) ?? "(absent)";
        if (type != "float") throw Unsupported(path, $"{what} of type '{type}' (only 'float' is supported)");
        if (!o.TryGetProperty("num_bits", out var bits) || bits.ValueKind != JsonValueKind.Number || !bits.TryGetInt32(out int b) || b != 8)
            throw Unsupported(path, $"{what} with num_bits {(o.TryGetProperty("num_bits", out var nb) ? nb.GetRawText() : "(absent)")} (only 8 is supported)");
    }

    private static string? GetString(JsonElement o, string name, string path)
    {
        if (!o.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null) return null;
        return v.ValueKind == JsonValueKind.String ? v.GetString() : throw Invalid(path, name, "a string", v);
    }

    private static bool? GetBool(JsonElement o, string name, string path)
    {
        if (!o.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null) return null;
        return v.ValueKind switch
        {
            JsonValueKind.True => true,
            JsonValueKind.False => false,
            _ => throw Invalid(path, name, "a boolean", v),
        };
    }

    private static FastServeException Unsupported(string path, string what) =>
        new("config.unsupported_quantization", $"{path}: quantization_config has {what}", path);

    private static FastServeException Invalid(string path, string field, string expected, JsonElement got) =>
        new("config.invalid_value", $"{path}: {field} must be {expected}, got {got.ValueKind}", path);
}
