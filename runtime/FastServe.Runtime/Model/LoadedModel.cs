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
    private readonly Lazy<TextTokenizer> _tokenizer;

    private LoadedModel(string dir, ModelConfig config, Checkpoint checkpoint, Lazy<TextTokenizer> tokenizer, ModelWeights weights, TimeSpan loadTime)
    {
        Directory = dir;
        Config = config;
        Checkpoint = checkpoint;
        _tokenizer = tokenizer;
        Weights = weights;
        LoadTime = loadTime;
    }

    public string Directory { get; }
    public ModelConfig Config { get; }
    public Checkpoint Checkpoint { get; }
    /// <summary>The model's tokenizer: loaded by <see cref="Load"/>, or on first use when it was told not to
    /// (tokenizer.* errors then surface here).</summary>
    public TextTokenizer Tokenizer => _tokenizer.Value;

    /// <summary>End-of-sequence ids: config.json's, else the tokenizer's (which loads it).</summary>
    public IReadOnlyList<int> EosIds => Config.EosTokenIds.Count > 0 ? Config.EosTokenIds : Tokenizer.EosIds;
    public ModelWeights Weights { get; }
    public TimeSpan LoadTime { get; }

    /// <summary>Opens <paramref name="dir"/>. Errors: model.not_found, config.*, safetensors.*, checkpoint.*, tokenizer.*.</summary>
    /// <param name="loadTokenizer">False leaves the tokenizer to its first use: a replica's engine process gets
    /// token ids from its workers and never needs one, and loading it is a large share of a replica's start (docs/autoscale.md).</param>
    public static LoadedModel Load(string dir, Fp8LoadOptions? quantize = null, Action<long, long>? progress = null, bool loadTokenizer = true)
    {
        var sw = Stopwatch.StartNew();
        if (!System.IO.Directory.Exists(dir))
            throw new FastServeException("model.not_found", "model directory does not exist", dir);
        var config = ModelConfig.Load(Path.Combine(dir, "config.json"));
        var ckpt = Checkpoint.Open(dir);
        try
        {
            var weights = ModelWeights.Bind(ckpt, config, quantize, progress);
            StartTrace.Mark("model_mapped");
            var tokenizer = new Lazy<TextTokenizer>(() =>
            {
                var t = TextTokenizer.Load(dir, config.BosTokenId, config.EosTokenIds.Count > 0 ? config.EosTokenIds : null);
                StartTrace.Mark("tokenizer");
                return t;
            }, LazyThreadSafetyMode.ExecutionAndPublication);
            if (loadTokenizer)
            {
                try { _ = tokenizer.Value; }
                catch { weights.Dispose(); throw; }
            }
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
