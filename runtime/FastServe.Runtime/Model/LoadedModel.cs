using System.Diagnostics;
using FastServe.Runtime.Formats;
using FastServe.Runtime.Tokenization;

namespace FastServe.Runtime.Model;

/// <summary>
/// A model directory opened for inference: config.json, the memory-mapped checkpoint, the tokenizer and the bound
/// weights. Owns the mapping; dispose it after every backend and runner made from it.
/// </summary>
public sealed class LoadedModel : IDisposable
{
    private LoadedModel(string dir, ModelConfig config, Checkpoint checkpoint, TextTokenizer tokenizer, ModelWeights weights, TimeSpan loadTime)
    {
        Directory = dir;
        Config = config;
        Checkpoint = checkpoint;
        Tokenizer = tokenizer;
        Weights = weights;
        LoadTime = loadTime;
    }

    public string Directory { get; }
    public ModelConfig Config { get; }
    public Checkpoint Checkpoint { get; }
    public TextTokenizer Tokenizer { get; }
    public ModelWeights Weights { get; }
    public TimeSpan LoadTime { get; }

    /// <summary>Opens <paramref name="dir"/>. Errors: model.not_found, config.*, safetensors.*, checkpoint.*, tokenizer.*.</summary>
    public static LoadedModel Load(string dir, Fp8LoadOptions? quantize = null, Action<long, long>? progress = null)
    {
        var sw = Stopwatch.StartNew();
        if (!System.IO.Directory.Exists(dir))
            throw new FastServeException("model.not_found", "model directory does not exist", dir);
        var config = ModelConfig.Load(Path.Combine(dir, "config.json"));
        var ckpt = Checkpoint.Open(dir);
        try
        {
            var tokenizer = TextTokenizer.Load(dir, config.BosTokenId, config.EosTokenIds.Count > 0 ? config.EosTokenIds : null);
            var weights = ModelWeights.Bind(ckpt, config, quantize, progress);
            return new LoadedModel(dir, config, ckpt, tokenizer, weights, sw.Elapsed);
        }
        catch
        {
            ckpt.Dispose();
            throw;
        }
    }

    public void Dispose()
    {
        Weights.Dispose();
        Checkpoint.Dispose();
    }
}
