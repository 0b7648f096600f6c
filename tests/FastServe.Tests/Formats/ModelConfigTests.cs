using System.Text.Json;
using FastServe.Runtime;
using FastServe.Runtime.Backends;
using FastServe.Runtime.Formats;
using FastServe.Runtime.Quantization;
using NUnit.Framework;

namespace FastServe.Tests.Formats;

public class ModelConfigTests
{
    // The published config.json of meta-llama/Llama-3.2-1B-Instruct.
    internal const string Llama32 = """
        {
          "architectures": ["LlamaForCausalLM"],
          "attention_bias": false,
          "attention_dropout": 0.0,
          "bos_token_id": 128000,
          "eos_token_id": [128001, 128008, 128009],
          "head_dim": 64,
          "hidden_act": "silu",
          "hidden_size": 2048,
          "initializer_range": 0.02,
          "intermediate_size": 8192,
          "max_position_embeddings": 131072,
          "mlp_bias": false,
          "model_type": "llama",
          "num_attention_heads": 32,
          "num_hidden_layers": 16,
          "num_key_value_heads": 8,
          "pretraining_tp": 1,
          "rms_norm_eps": 1e-05,
          "rope_scaling": {
            "factor": 32.0,
            "high_freq_factor": 4.0,
            "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3"
          },
          "rope_theta": 500000.0,
          "tie_word_embeddings": true,
          "torch_dtype": "bfloat16",
          "transformers_version": "4.45.0.dev0",
          "use_cache": true,
          "vocab_size": 128256
        }
        """;

    // mistralai/Mistral-7B-v0.1.
    internal const string Mistral = """
        {
          "architectures": ["MistralForCausalLM"],
          "bos_token_id": 1,
          "eos_token_id": 2,
          "hidden_act": "silu",
          "hidden_size": 4096,
          "initializer_range": 0.02,
          "intermediate_size": 14336,
          "max_position_embeddings": 32768,
          "model_type": "mistral",
          "num_attention_heads": 32,
          "num_hidden_layers": 32,
          "num_key_value_heads": 8,
          "rms_norm_eps": 1e-05,
          "rope_theta": 10000.0,
          "sliding_window": 4096,
          "tie_word_embeddings": false,
          "torch_dtype": "bfloat16",
          "transformers_version": "4.34.0.dev0",
          "use_cache": true,
          "vocab_size": 32000
        }
        """;

    // Qwen/Qwen2.5-0.5B-Instruct.
    internal const string Qwen2 = """
        {
          "architectures": ["Qwen2ForCausalLM"],
          "attention_dropout": 0.0,
          "bos_token_id": 151643,
          "eos_token_id": 151645,
          "hidden_act": "silu",
          "hidden_size": 896,
          "initializer_range": 0.02,
          "intermediate_size": 4864,
          "max_position_embeddings": 32768,
          "max_window_layers": 21,
          "model_type": "qwen2",
          "num_attention_heads": 14,
          "num_hidden_layers": 24,
          "num_key_value_heads": 2,
          "rms_norm_eps": 1e-06,
          "rope_theta": 1000000.0,
          "sliding_window": 32768,
          "tie_word_embeddings": true,
          "torch_dtype": "bfloat16",
          "transformers_version": "4.43.1",
          "use_cache": true,
          "use_sliding_window": false,
          "vocab_size": 151936
        }
        """;

    [Test]
    public void ParsesLlama32WithLlama3RopeScalingAndEosList()
    {
        var c = ModelConfig.Parse(Llama32, "config.json");
        Assert.That(c.Architecture, Is.EqualTo("LlamaForCausalLM"));
        Assert.That(c.ModelType, Is.EqualTo("llama"));
        Assert.That((c.HiddenSize, c.IntermediateSize, c.NumLayers, c.NumHeads, c.NumKvHeads, c.HeadDim, c.VocabSize),
            Is.EqualTo((2048, 8192, 16, 32, 8, 64, 128256)));
        Assert.That(c.MaxPositionEmbeddings, Is.EqualTo(131072));
        Assert.That(c.RmsNormEps, Is.EqualTo(1e-5));
        Assert.That(c.RopeTheta, Is.EqualTo(500000.0));
        Assert.That(c.RopeScaling, Is.EqualTo(new RopeScaling(32.0, 1.0, 4.0, 8192)));
        Assert.That(c.TieWordEmbeddings, Is.True);
        Assert.That(c.AttentionBias, Is.False);
        Assert.That(c.BosTokenId, Is.EqualTo(128000));
        Assert.That(c.EosTokenIds, Is.EqualTo(new[] { 128001, 128008, 128009 }));
        Assert.That(c.TorchDtype, Is.EqualTo("bfloat16"));
        Assert.That(c.Quantization, Is.Null);
    }

    [Test]
    public void ParsesMistralWithEosInt()
    {
        var c = ModelConfig.Parse(Mistral, "config.json");
        Assert.That(c.ModelType, Is.EqualTo("mistral"));
        Assert.That((c.HiddenSize, c.NumHeads, c.NumKvHeads, c.HeadDim), Is.EqualTo((4096, 32, 8, 128)), "head_dim defaults to hidden/heads");
        Assert.That(c.EosTokenIds, Is.EqualTo(new[] { 2 }));
        Assert.That(c.BosTokenId, Is.EqualTo(1));
        Assert.That(c.RopeScaling, Is.Null);
        Assert.That(c.TieWordEmbeddings, Is.False);
        Assert.That(c.AttentionBias, Is.False);
    }

    [Test]
    public void ParsesQwen2WithAttentionBias()
    {
        var c = ModelConfig.Parse(Qwen2, "config.json");
        Assert.That(c.ModelType, Is.EqualTo("qwen2"));
        Assert.That(c.AttentionBias, Is.True, "qwen2 always has q/k/v bias");
        Assert.That((c.HiddenSize, c.NumHeads, c.NumKvHeads, c.HeadDim, c.VocabSize), Is.EqualTo((896, 14, 2, 64, 151936)));
        Assert.That(c.RmsNormEps, Is.EqualTo(1e-6));
        Assert.That(c.RopeTheta, Is.EqualTo(1e6));
    }

    [Test]
    public void DefaultsWhenOptionalFieldsAbsent()
    {
        const string minimal = """
            {"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
             "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 100}
            """;
        var c = ModelConfig.Parse(minimal, "config.json");
        Assert.That(c.ModelType, Is.EqualTo("llama"), "model_type inferred from the architecture");
        Assert.That(c.NumKvHeads, Is.EqualTo(4));
        Assert.That(c.HeadDim, Is.EqualTo(16));
        Assert.That(c.MaxPositionEmbeddings, Is.EqualTo(2048));
        Assert.That(c.RmsNormEps, Is.EqualTo(1e-6));
        Assert.That(c.RopeTheta, Is.EqualTo(10000));
        Assert.That(c.EosTokenIds, Is.Empty);
        Assert.That(c.BosTokenId, Is.Null);
        Assert.That(c.TorchDtype, Is.EqualTo("float32"));
    }

    [Test]
    public void ReadsNewerTransformersFieldNames()
    {
        const string v5 = """
            {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
             "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": null, "vocab_size": 100, "dtype": "float16",
             "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}
            """;
        var c = ModelConfig.Parse(v5, "config.json");
        Assert.That(c.TorchDtype, Is.EqualTo("float16"));
        Assert.That(c.RopeTheta, Is.EqualTo(500000.0));
        Assert.That(c.RopeScaling, Is.EqualTo(new RopeScaling(8.0, 1.0, 4.0, 8192)));
        Assert.That(c.NumKvHeads, Is.EqualTo(4), "null means absent");

        var plain = ModelConfig.Parse(v5.Replace("\"llama3\"", "\"default\""), "config.json");
        Assert.That(plain.RopeScaling, Is.Null);
    }

    [TestCase(Llama32)]
    [TestCase(Mistral)]
    [TestCase(Qwen2)]
    public void ToJsonRoundTrips(string json)
    {
        var c = ModelConfig.Parse(json, "config.json");
        string written = c.ToJson();
        var back = ModelConfig.Parse(written, "written.json");
        Assert.That(back, Is.EqualTo(c));

        using var doc = JsonDocument.Parse(written);
        var r = doc.RootElement;
        Assert.That(r.GetProperty("architectures")[0].GetString(), Is.EqualTo(c.Architecture));
        Assert.That(r.GetProperty("model_type").GetString(), Is.EqualTo(c.ModelType));
        Assert.That(r.GetProperty("transformers_version").ValueKind, Is.EqualTo(JsonValueKind.String));
        Assert.That(r.GetProperty("hidden_act").GetString(), Is.EqualTo("silu"));
        Assert.That(r.TryGetProperty("quantization_config", out _), Is.False);
        // eos stays an int when single, a list when several (transformers accepts both; keep the original shape).
        Assert.That(r.GetProperty("eos_token_id").ValueKind,
            Is.EqualTo(c.EosTokenIds.Count == 1 ? JsonValueKind.Number : JsonValueKind.Array));
    }

    [Test]
    public void ToJsonRoundTripsQuantizationConfig()
    {
        var c = ModelConfig.Parse(Llama32, "config.json") with
        {
            Quantization = new QuantizationConfig(Fp8Scheme.PerChannel, ["lm_head", "model.layers.0.mlp.down_proj"]),
        };
        string written = c.ToJson();
        var back = ModelConfig.Parse(written, "written.json");
        Assert.That(back, Is.EqualTo(c));
        Assert.That(back.Quantization, Is.EqualTo(c.Quantization));

        using var doc = JsonDocument.Parse(written);
        var q = doc.RootElement.GetProperty("quantization_config");
        Assert.That(q.GetProperty("quant_method").GetString(), Is.EqualTo("compressed-tensors"));
        Assert.That(q.GetProperty("format").GetString(), Is.EqualTo("float-quantized"));
        var g = q.GetProperty("config_groups").GetProperty("group_0");
        Assert.That(g.GetProperty("weights").GetProperty("strategy").GetString(), Is.EqualTo("channel"));
        Assert.That(g.GetProperty("input_activations").GetProperty("strategy").GetString(), Is.EqualTo("token"));
        Assert.That(q.GetProperty("ignore").EnumerateArray().Select(e => e.GetString()), Is.EqualTo(new[] { "lm_head", "model.layers.0.mlp.down_proj" }));

        var t = c with { Quantization = new QuantizationConfig(Fp8Scheme.PerTensor, ["lm_head"]) };
        Assert.That(ModelConfig.Parse(t.ToJson(), "t.json").Quantization!.Scheme, Is.EqualTo(Fp8Scheme.PerTensor));
    }

    [Test]
    public void ParsesPublishedCompressedTensorsFp8Config()
    {
        // Shape of the quantization_config llm-compressor writes for FP8_DYNAMIC (e.g. RedHatAI/*-FP8-dynamic).
        const string q = """
            {"quantization_config": {"config_groups": {"group_0": {"input_activations": {"actorder": null, "block_structure": null,
               "dynamic": true, "group_size": null, "num_bits": 8, "observer": null, "observer_kwargs": {}, "strategy": "token",
               "symmetric": true, "type": "float"}, "output_activations": null, "targets": ["Linear"], "weights": {"actorder": null,
               "block_structure": null, "dynamic": false, "group_size": null, "num_bits": 8, "observer": "minmax", "observer_kwargs": {},
               "strategy": "channel", "symmetric": true, "type": "float"}}}, "format": "float-quantized", "global_compression_ratio": null,
               "ignore": ["lm_head"], "kv_cache_scheme": null, "quant_method": "compressed-tensors", "quantization_status": "compressed",
               "sparsity_config": {}}}
            """;
        using var doc = JsonDocument.Parse(q);
        var qc = QuantizationConfig.FromJson(doc.RootElement.GetProperty("quantization_config"), "config.json");
        Assert.That(qc, Is.EqualTo(new QuantizationConfig(Fp8Scheme.PerChannel, ["lm_head"])));
    }

    [TestCase("{\"quant_method\": \"gptq\", \"bits\": 4}", TestName = "QuantGptqUnsupported")]
    [TestCase("{\"quant_method\": \"fp8\", \"activation_scheme\": \"dynamic\"}", TestName = "QuantFp8MethodUnsupported")]
    [TestCase("{\"quant_method\": \"compressed-tensors\", \"format\": \"pack-quantized\", \"config_groups\": {}}", TestName = "QuantIntPackedUnsupported")]
    [TestCase("{\"quant_method\": \"compressed-tensors\", \"format\": \"float-quantized\", \"config_groups\": {\"group_0\": {\"targets\": [\"Linear\"], \"weights\": {\"num_bits\": 8, \"type\": \"float\", \"strategy\": \"block\"}}}}", TestName = "QuantBlockStrategyUnsupported")]
    [TestCase("{\"quant_method\": \"compressed-tensors\", \"format\": \"float-quantized\", \"config_groups\": {\"group_0\": {\"targets\": [\"Linear\"], \"weights\": {\"num_bits\": 4, \"type\": \"float\", \"strategy\": \"channel\"}}}}", TestName = "QuantFp4Unsupported")]
    [TestCase("{\"quant_method\": \"compressed-tensors\", \"format\": \"float-quantized\", \"config_groups\": {\"group_0\": {\"targets\": [\"Linear\"], \"weights\": {\"num_bits\": 8, \"type\": \"float\", \"strategy\": \"tensor\"}, \"input_activations\": {\"num_bits\": 8, \"type\": \"float\", \"strategy\": \"tensor\", \"dynamic\": false}}}}", TestName = "QuantStaticActivationsUnsupported")]
    [TestCase("{\"quant_method\": \"compressed-tensors\", \"format\": \"float-quantized\", \"kv_cache_scheme\": {\"num_bits\": 8}, \"config_groups\": {\"group_0\": {\"targets\": [\"Linear\"], \"weights\": {\"num_bits\": 8, \"type\": \"float\", \"strategy\": \"tensor\"}}}}", TestName = "QuantKvCacheUnsupported")]
    public void UnsupportedQuantization(string quant)
    {
        string json = Llama32.Replace("\"use_cache\": true,", $"\"use_cache\": true, \"quantization_config\": {quant},");
        var ex = Assert.Throws<FastServeException>(() => ModelConfig.Parse(json, "/m/config.json"))!;
        Assert.That(ex.Code, Is.EqualTo("config.unsupported_quantization"), ex.Message);
        Assert.That(ex.Message, Does.Contain("/m/config.json"));
    }

    private static FastServeException Bad(string json)
    {
        var ex = Assert.Throws<FastServeException>(() => ModelConfig.Parse(json, "/m/config.json"))!;
        Assert.That(ex.Path, Is.EqualTo("/m/config.json"));
        Assert.That(ex.Message, Does.Contain("/m/config.json"));
        return ex;
    }

    [TestCase("hidden_size")]
    [TestCase("intermediate_size")]
    [TestCase("num_hidden_layers")]
    [TestCase("num_attention_heads")]
    [TestCase("vocab_size")]
    [TestCase("architectures")]
    public void MissingRequiredField(string field)
    {
        using var doc = JsonDocument.Parse(Mistral);
        var without = doc.RootElement.EnumerateObject().Where(p => p.Name != field)
            .ToDictionary(p => p.Name, p => p.Value.GetRawText());
        string json = "{" + string.Join(",", without.Select(kv => $"\"{kv.Key}\": {kv.Value}")) + "}";
        var ex = Bad(json);
        Assert.That(ex.Code, Is.EqualTo("config.missing_field"));
        Assert.That(ex.Message, Does.Contain(field));
    }

    [Test]
    public void RopeScalingMissingFactor()
    {
        var ex = Bad(Llama32.Replace("\"factor\": 32.0,", ""));
        Assert.That(ex.Code, Is.EqualTo("config.missing_field"));
        Assert.That(ex.Message, Does.Contain("rope_scaling.factor"));
    }

    [TestCase("linear")]
    [TestCase("dynamic")]
    [TestCase("yarn")]
    public void UnsupportedRopeScaling(string type)
    {
        var ex = Bad(Llama32.Replace("\"rope_type\": \"llama3\"", $"\"rope_type\": \"{type}\""));
        Assert.That(ex.Code, Is.EqualTo("config.unsupported_rope_scaling"));
        Assert.That(ex.Message, Does.Contain(type));
        // Older files say "type" instead of "rope_type".
        Assert.That(Bad(Llama32.Replace("\"rope_type\": \"llama3\"", $"\"type\": \"{type}\"")).Code, Is.EqualTo("config.unsupported_rope_scaling"));
    }

    [TestCase("GPT2LMHeadModel")]
    [TestCase("MixtralForCausalLM")]
    public void UnsupportedArchitecture(string arch)
    {
        var ex = Bad(Mistral.Replace("MistralForCausalLM", arch));
        Assert.That(ex.Code, Is.EqualTo("config.unsupported_architecture"));
        Assert.That(ex.Message, Does.Contain(arch));
    }

    [Test]
    public void UnsupportedModelTypeAndActivation()
    {
        Assert.That(Bad(Mistral.Replace("\"model_type\": \"mistral\"", "\"model_type\": \"gemma\"")).Code, Is.EqualTo("config.unsupported_architecture"));
        Assert.That(Bad(Mistral.Replace("\"hidden_act\": \"silu\"", "\"hidden_act\": \"gelu\"")).Code, Is.EqualTo("config.unsupported_activation"));
        Assert.That(Bad(Llama32.Replace("\"mlp_bias\": false", "\"mlp_bias\": true")).Code, Is.EqualTo("config.unsupported_architecture"));
    }

    [TestCase("{", TestName = "ConfigTruncated")]
    [TestCase("[1]", TestName = "ConfigNotObject")]
    [TestCase("", TestName = "ConfigEmpty")]
    public void InvalidJson(string json) => Assert.That(Bad(json).Code, Is.EqualTo("config.invalid_json"));

    [TestCase("\"num_key_value_heads\": 8", "\"num_key_value_heads\": 5", TestName = "HeadsNotMultipleOfKvHeads")]
    [TestCase("\"num_key_value_heads\": 8", "\"num_key_value_heads\": 0", TestName = "KvHeadsZero")]
    [TestCase("\"head_dim\": 64", "\"head_dim\": 63", TestName = "HeadDimOdd")]
    [TestCase("\"hidden_size\": 2048", "\"hidden_size\": -2048", TestName = "HiddenNegative")]
    [TestCase("\"hidden_size\": 2048", "\"hidden_size\": 33554432", TestName = "HiddenAbsurd")]
    [TestCase("\"hidden_size\": 2048", "\"hidden_size\": 1e12", TestName = "HiddenBeyondInt32")]
    [TestCase("\"hidden_size\": 2048", "\"hidden_size\": \"2048\"", TestName = "HiddenString")]
    [TestCase("\"hidden_size\": 2048", "\"hidden_size\": 20.5", TestName = "HiddenFraction")]
    [TestCase("\"vocab_size\": 128256", "\"vocab_size\": 0", TestName = "VocabZero")]
    [TestCase("\"rms_norm_eps\": 1e-05", "\"rms_norm_eps\": 0", TestName = "EpsZero")]
    [TestCase("\"rope_theta\": 500000.0", "\"rope_theta\": -1", TestName = "ThetaNegative")]
    [TestCase("\"eos_token_id\": [128001, 128008, 128009]", "\"eos_token_id\": \"</s>\"", TestName = "EosString")]
    [TestCase("\"eos_token_id\": [128001, 128008, 128009]", "\"eos_token_id\": [1, \"x\"]", TestName = "EosListOfMixed")]
    [TestCase("\"bos_token_id\": 128000", "\"bos_token_id\": -1", TestName = "BosNegative")]
    [TestCase("\"tie_word_embeddings\": true", "\"tie_word_embeddings\": 1", TestName = "TieNotBool")]
    [TestCase("\"low_freq_factor\": 1.0", "\"low_freq_factor\": 5.0", TestName = "RopeScalingLowAboveHigh")]
    [TestCase("\"architectures\": [\"LlamaForCausalLM\"]", "\"architectures\": \"LlamaForCausalLM\"", TestName = "ArchitecturesNotList")]
    public void InvalidValue(string from, string to)
    {
        Assert.That(Llama32, Does.Contain(from));
        var ex = Bad(Llama32.Replace(from, to));
        Assert.That(ex.Code, Is.EqualTo("config.invalid_value"), ex.Message);
    }

    [Test]
    public void HiddenNotDivisibleByHeadsWithoutHeadDim()
    {
        var ex = Bad(Mistral.Replace("\"hidden_size\": 4096", "\"hidden_size\": 4000"));
        Assert.That(ex.Code, Is.EqualTo("config.invalid_value"));
    }

    [Test]
    public void LoadMissingFileAndFromDisk()
    {
        using var dir = new TempDir();
        var ex = Assert.Throws<FastServeException>(() => ModelConfig.Load(dir.File("config.json")))!;
        Assert.That(ex.Code, Is.EqualTo("config.missing"));
        Assert.That(ex.Message, Does.Contain(dir.File("config.json")));

        File.WriteAllText(dir.File("config.json"), Qwen2);
        Assert.That(ModelConfig.Load(dir.File("config.json")), Is.EqualTo(ModelConfig.Parse(Qwen2, "x")));

        File.WriteAllText(dir.File("config.json"), "{oops");
        var bad = Assert.Throws<FastServeException>(() => ModelConfig.Load(dir.File("config.json")))!;
        Assert.That(bad.Code, Is.EqualTo("config.invalid_json"));
        Assert.That(bad.Path, Is.EqualTo(dir.File("config.json")));
    }
}
