using FastServe.Runtime;
using FastServe.Runtime.Backends;
using FastServe.Runtime.Tokenization;
using FastServe.Scheduler.Engine;
using FastServe.Scheduler.Execution;

namespace FastServe.Embed;

/// <summary>
/// An engine (fs_engine): its own backend (compute threads), step executor (KV cache) and the continuous-batching
/// <see cref="InferenceEngine"/> that `fastserve serve` and `batch` run, over a shared <see cref="EmbedModel"/>. Engines
/// share nothing but the model's read-only weights, so several in one process never wait on each other.
/// </summary>
internal sealed class EmbedEngine : IDisposable
{
    private readonly EmbedModel _model;
    private readonly IBackend _backend;
    private readonly ModelStepExecutor _executor;

    public InferenceEngine Engine { get; }
    public TextTokenizer Tokenizer => _model.Tokenizer;
    public int VocabSize => _model.Model.Config.VocabSize;

    static EmbedEngine() => HostLibrary.RegisterBackends();

    private EmbedEngine(EmbedModel model, IBackend backend, ModelStepExecutor executor, InferenceEngine engine)
    {
        _model = model;
        _backend = backend;
        _executor = executor;
        Engine = engine;
    }

    /// <summary>The defaults fs_engine_options_default writes: serve's (docs/server.md, EngineCliOptions).</summary>
    public static FsEngineOptions Defaults() => new()
    {
        Size = (uint)System.Runtime.CompilerServices.Unsafe.SizeOf<FsEngineOptions>(),
        MaxSeqs = 64,
        MaxBatchedTokens = 512,
        ContextLength = 0,
        KvMemoryBytes = 1L << 30,
        Threads = 0,
        Overlap = 1,
        PrefixCaching = 1,
        MaxWaitingRequests = 4096,
        QueueTargetMs = 50,
        QueueIntervalMs = 500,
        DefaultDeadlineMs = 0,
        KvDType = 0,
    };

    /// <summary>Creates and starts an engine. The caller has taken a model reference for it, which the engine owns
    /// from here on (released by <see cref="Dispose"/>, or here when creation fails). Errors: engine.invalid_option,
    /// args.unknown_backend, backend and model errors.</summary>
    public static EmbedEngine Create(EmbedModel model, in FsEngineOptions o, string backendName)
    {
        IBackend? backend = null;
        ModelStepExecutor? executor = null;
        try
        {
            static void Bad(string field, string why) => throw new FastServeException("engine.invalid_option", why, field);
            if (o.KvMemoryBytes < 1 << 20 || o.KvMemoryBytes > 1L << 40) Bad("kv_memory_bytes", "must be between 1 MiB and 1 TiB");
            if (o.Threads < 0 || o.Threads > 1024) Bad("threads", "must be between 0 and 1024");
            if (o.ContextLength < 0) Bad("context_length", "must be ≥ 0 (0 = the model's, capped at 8192)");
            if (o.MaxWaitingRequests < 0) Bad("max_waiting_requests", "must be ≥ 0");
            if (o.QueueTargetMs < 0 || o.QueueIntervalMs < 0) Bad("queue_target_ms", "queue_target_ms and queue_interval_ms must be ≥ 0");
            if (o.DefaultDeadlineMs < 0) Bad("default_deadline_ms", "must be ≥ 0 (0 = none)");
            if (o.KvDType is < 0 or > 2) Bad("kv_dtype", "must be FS_KV_DEFAULT, FS_KV_F32 or FS_KV_BF16");
            var options = new EngineOptions
            {
                MaxSeqs = o.MaxSeqs,
                MaxBatchedTokens = o.MaxBatchedTokens,
                Overlap = o.Overlap != 0,
                PrefixCaching = o.PrefixCaching != 0,
                MaxWaitingRequests = o.MaxWaitingRequests,
                QueueTarget = TimeSpan.FromMilliseconds(o.QueueTargetMs),
                QueueInterval = TimeSpan.FromMilliseconds(o.QueueIntervalMs),
                DefaultDeadline = o.DefaultDeadlineMs > 0 ? TimeSpan.FromMilliseconds(o.DefaultDeadlineMs) : null,
                EosTokenIds = model.Tokenizer.EosIds,
                Tokenizer = model.Tokenizer,
            };
            options.Validate();
            backend = BackendFactory.Create(backendName, o.Threads);
            executor = new ModelStepExecutor(model.Model.Config, model.Model.Weights, backend, new ModelExecutorOptions
            {
                MaxTokensPerStep = o.MaxBatchedTokens,
                MaxSequencesPerStep = o.MaxSeqs,
                ContextLength = o.ContextLength,
                KvMemoryBytes = o.KvMemoryBytes,
                KvDType = o.KvDType switch { 1 => KvDType.F32, 2 => KvDType.BF16, _ => backendName == "cuda" ? KvDType.BF16 : KvDType.F32 },
            });
            var engine = new InferenceEngine(executor, options);
            engine.Start();
            return new EmbedEngine(model, backend, executor, engine);
        }
        catch
        {
            executor?.Dispose();
            backend?.Dispose();
            model.Release();
            throw;
        }
    }

    /// <summary>Stops the engine (every request still queued or running ends with status cancelled, its final event
    /// delivered before this returns), then frees the KV cache, the backend and the model reference.</summary>
    public void Dispose()
    {
        Engine.Dispose();
        _executor.Dispose();
        _backend.Dispose();
        _model.Release();
    }
}
