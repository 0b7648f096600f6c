using System.CommandLine;
using FastServe.Runtime;
using FastServe.Runtime.Backends;
using FastServe.Runtime.Model;
using FastServe.Runtime.Quantization;

namespace FastServe.Cli.Commands;

/// <summary>Options every model-loading command shares, and the loading itself (default model, progress, --quantize).</summary>
internal sealed class ModelOptions
{
    public readonly Option<string?> Model = new("--model", "-m") { Description = "Model directory (Hugging Face layout). Default: the built-in default model (gec-small; see FASTSERVE_DEFAULT_MODEL)." };
    public readonly Option<string?> Quantize = new("--quantize") { Description = "Quantize weights at load time: fp8" };
    public readonly Option<string> Scheme = new("--scheme") { Description = "FP8 scale granularity for --quantize: per-channel or per-tensor", DefaultValueFactory = _ => "per-channel" };
    public readonly Option<string> Backend = new("--backend") { Description = "Compute backend: cpu, reference, cuda or vulkan (serve and bench-engine also take sim, a simulated H100)", DefaultValueFactory = _ => "cpu" };
    public readonly Option<int> Threads = new("--threads", "-t") { Description = "Compute threads (0 = all cores)", DefaultValueFactory = _ => 0 };
    public readonly Option<bool> Json = new("--json") { Description = "Machine-readable JSON output" };

    /// <param name="variants">True for a command that brings its own (multi-valued) --model, --quantize and
    /// --scheme and opens one engine per combination (eval): these three are left out.</param>
    public void AddTo(Command c, bool variants = false)
    {
        if (!variants)
        {
            c.Add(Model);
            c.Add(Quantize);
            c.Add(Scheme);
        }
        c.Add(Backend);
        c.Add(Threads);
        c.Add(Json);
    }

    public Fp8LoadOptions? QuantizeOptions(ParseResult r)
    {
        string? q = r.GetValue(Quantize);
        if (q is null) return null;
        if (q != "fp8") throw new FastServeException("args.invalid_quantize", $"--quantize accepts fp8, not '{q}'", "--quantize");
        return new Fp8LoadOptions(ParseScheme(r.GetValue(Scheme)!), QuantizeLayers.All);
    }

    public static Fp8Scheme ParseScheme(string s) => s switch
    {
        "per-channel" => Fp8Scheme.PerChannel,
        "per-tensor" => Fp8Scheme.PerTensor,
        _ => throw new FastServeException("args.invalid_scheme", $"--scheme accepts per-channel or per-tensor, not '{s}'", "--scheme"),
    };

    /// <summary>Resolves the model directory (<c>--model</c>, else the built-in default) and loads it with progress. A
    /// given <paramref name="dir"/> is loaded with exactly <paramref name="quantize"/> (null: as stored), whatever the
    /// command line says.</summary>
    public LoadedModel Load(ParseResult r, Fp8LoadOptions? quantize = null, string? dir = null)
    {
        bool json = r.GetValue(Json);
        if (dir is null)
        {
            dir = r.GetValue(Model) ?? ResolveDefault();
            quantize ??= QuantizeOptions(r);
        }
        return Output.WithProgress(quantize is null ? "Loading model" : "Loading and quantizing model", json,
            p => LoadedModel.Load(dir, quantize, p));
    }

    public IBackend CreateBackend(ParseResult r)
    {
        int threads = r.GetValue(Threads);
        if (threads < 0 || threads > 1024) throw new FastServeException("args.invalid_threads", "--threads must be between 0 and 1024", "--threads");
        return BackendFactory.Create(r.GetValue(Backend)!, threads);
    }

    /// <summary>The KV cache dtype of <paramref name="option"/>: as given, else f32, or bf16 on the cuda backend
    /// (whose kernels store BF16 only).</summary>
    public KvDType ResolveKvDType(ParseResult r, Option<string> option)
    {
        var given = r.GetResult(option);
        if ((given is null || given.Implicit) && r.GetValue(Backend) == "cuda") return Runtime.Backends.KvDType.BF16;
        return GenerateCommand.ParseKvDType(r.GetValue(option)!);
    }

    /// <summary>The built-in default model's directory (<see cref="DefaultModel.Resolve()"/>): the shipped
    /// <c>gec-small</c>, found, never made; <c>model.default_not_found</c> when there is none.</summary>
    public static string ResolveDefault() => DefaultModel.Resolve();
}
