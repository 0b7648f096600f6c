using System.CommandLine;
using FastServe.Runtime;
using FastServe.Runtime.Backends;
using FastServe.Runtime.Model;
using FastServe.Runtime.Quantization;
using FastServe.Scheduler.Engine;
using FastServe.Runtime.Formats;
using FastServe.Scheduler.Execution;
using FastServe.Scheduler.Sim;

namespace FastServe.Cli.Commands;

/// <summary>Options of the commands that run the engine (batch, bench-engine), and building the engine from them.</summary>
internal sealed class EngineCliOptions
{
    public readonly ModelOptions Model = new();
    public readonly Option<int> MaxBatchedTokens = new("--max-batched-tokens") { Description = "Token budget of one step (decode rows plus prefill chunks)", DefaultValueFactory = _ => 512 };
    public readonly Option<int> MaxSeqs = new("--max-seqs") { Description = "Most sequences running at once", DefaultValueFactory = _ => 64 };
    public readonly Option<string> Overlap = new("--overlap") { Description = "Overlap scheduling and post-processing with the forward pass: on or off", DefaultValueFactory = _ => "on" };
    public readonly Option<int> KvMemoryMiB = new("--kv-memory") { Description = "KV cache budget in MiB (cpu, reference and cuda backends)", DefaultValueFactory = _ => 1024 };
    public readonly Option<string> KvDtype = new("--kv-dtype") { Description = "KV cache storage: f32 or bf16 (never quantized; default f32, bf16 on cuda)", DefaultValueFactory = _ => "f32" };
    public readonly Option<int> Ctx = new("--ctx") { Description = "Context length per sequence in tokens (0 = model maximum, capped at 8192)" };
    public readonly Option<int> BlockSize = new("--block-size") { Description = "Tokens per KV block", DefaultValueFactory = _ => 16 };
    public readonly Option<bool> Eager = new("--eager") { Description = "Run every step op by op (by default the cuda backend records decode steps as CUDA graphs and replays them)" };
    public readonly Option<bool> GraphExactSizes = new("--graph-exact-sizes") { Description = "Record one CUDA graph per exact decode batch size instead of padding batches to 1, 2, 4 and multiples of 8" };
    public readonly Option<bool> NoPrefixCache = new("--no-prefix-cache") { Description = "Do not share KV blocks between requests with equal prefixes" };
    public readonly Option<int> MaxWaiting = new("--max-waiting") { Description = "Requests allowed to wait for admission before new ones are rejected as overloaded", DefaultValueFactory = _ => 4096 };
    public readonly Option<int> QueueTargetMs = new("--queue-target-ms") { Description = "Queue wait allowed to requests without a deadline while the queue stands (CoDel target); longer waits are refused as overloaded", DefaultValueFactory = _ => 50 };
    public readonly Option<int> QueueIntervalMs;
    public readonly Option<int> DefaultDeadlineMs = new("--default-deadline-ms") { Description = "Deadline, end to end, given to requests that bring none (0 = none)" };
    public readonly Option<string> SimWeights = new("--sim-weights") { Description = "--backend sim: weight format the simulated GPU runs, fp8 or bf16", DefaultValueFactory = _ => "fp8" };
    public readonly Option<double> SimTimeScale = new("--sim-time-scale") { Description = "--backend sim: multiply modelled step times (1 = real time)", DefaultValueFactory = _ => 1.0 };
    public readonly Option<double> SimStallEvery = new("--sim-stall-every") { Description = "--backend sim: freeze the device every S seconds on average (exponential gaps; 0 = never)", DefaultValueFactory = _ => 0.0 };
    public readonly Option<int> SimStallMs = new("--sim-stall-ms") { Description = "--backend sim: how long each freeze lasts, in ms", DefaultValueFactory = _ => 2000 };

    /// <param name="offline">True for commands that work through a file (batch, eval): nobody waits on a single
    /// answer, so the queue budget that protects live latency is off unless --queue-interval-ms turns it on.</param>
    public EngineCliOptions(bool offline = false)
    {
        int interval = offline ? 0 : 500;
        QueueIntervalMs = new("--queue-interval-ms")
        {
            Description = "Queue wait allowed to requests without a deadline after the queue emptied within this window (CoDel interval); 0 = no queue budget" +
                (offline ? " (default 0 here: offline work has no latency to protect)" : ""),
            DefaultValueFactory = _ => interval,
        };
    }

    /// <param name="variants">True for a command that opens one engine per model, weight format and KV dtype it
    /// is given (eval, through <see cref="EngineVariant"/>): --model, --quantize, --scheme and --kv-dtype are its own.</param>
    public void AddTo(Command c, bool variants = false)
    {
        Model.AddTo(c, variants);
        foreach (Option o in new Option[] { MaxBatchedTokens, MaxSeqs, Overlap, KvMemoryMiB, KvDtype, Ctx, BlockSize, Eager, GraphExactSizes, NoPrefixCache, MaxWaiting, QueueTargetMs, QueueIntervalMs, DefaultDeadlineMs, SimWeights, SimTimeScale, SimStallEvery, SimStallMs })
            if (!(variants && o == KvDtype)) c.Add(o);
    }

    public bool Json(ParseResult r) => r.GetValue(Model.Json);

    /// <summary>The engine and model options given on this command line, as arguments for a child process
    /// (`serve` starting `serve-engine`); --model and --json are left to the caller.</summary>
    public List<string> Forward(ParseResult r)
    {
        var args = new List<string>();
        foreach (Option o in new Option[] { Model.Quantize, Model.Scheme, Model.Backend, Model.Threads, MaxBatchedTokens, MaxSeqs, Overlap, KvMemoryMiB,
                     KvDtype, Ctx, BlockSize, Eager, GraphExactSizes, NoPrefixCache, MaxWaiting, QueueTargetMs, QueueIntervalMs, DefaultDeadlineMs, SimWeights, SimTimeScale, SimStallEvery, SimStallMs })
        {
            var res = r.GetResult(o);
            if (res is null || res.Implicit) continue;
            args.Add(o.Name);
            foreach (var t in res.Tokens) args.Add(t.Value);
        }
        return args;
    }

    /// <summary>Loads the model (or the simulated device) and starts an engine over it.</summary>
    /// <param name="engineTokenizer">False for a replica's engine process: its workers tokenize, detokenize and match
    /// stop strings, so the engine sees token ids only, loads no tokenizer (its EOS ids come from config.json, or the
    /// tokenizer loaded then when config.json has none) and needs --model.</param>
    /// <param name="variant">The model, weight format and KV dtype to use instead of this command line's.</param>
    public EngineSession Open(ParseResult r, Action? afterIteration = null, Action<StepRecord>? onStep = null, bool engineTokenizer = true,
        EngineVariant? variant = null)
    {
        string overlap = r.GetValue(Overlap)!;
        if (overlap is not ("on" or "off")) throw new FastServeException("args.invalid_overlap", $"--overlap accepts on or off, not '{overlap}'", "--overlap");
        int kvMiB = r.GetValue(KvMemoryMiB);
        if (kvMiB < 1 || kvMiB > 1 << 20) throw new FastServeException("args.invalid_kv_memory", "--kv-memory must be between 1 and 1048576 MiB", "--kv-memory");
        var session = new EngineSession();
        try
        {
            if (r.GetValue(Model.Backend) == "sim")
            {
                session.Executor = OpenSim(r);
                session.Engine = new InferenceEngine(session.Executor, EngineOptions(r, null) with { AfterIteration = afterIteration, OnStep = onStep });
                session.Engine.Start();
                return session;
            }
            // The backend first: a missing GPU or driver is reported before a model is loaded (or made).
            session.Backend = Model.CreateBackend(r);
            session.Model = variant is not null ? Model.Load(r, variant.Quantize, variant.ModelDir)
                : engineTokenizer ? Model.Load(r)
                : LoadedModel.Load(r.GetValue(Model.Model) ?? throw new FastServeException("args.missing_model", "serve-engine needs --model", "--model"),
                    Model.QuantizeOptions(r), loadTokenizer: false);
            session.Executor = new ModelStepExecutor(session.Model.Config, session.Model.Weights, session.Backend, new ModelExecutorOptions
            {
                MaxTokensPerStep = r.GetValue(MaxBatchedTokens),
                MaxSequencesPerStep = r.GetValue(MaxSeqs),
                ContextLength = r.GetValue(Ctx),
                BlockSize = r.GetValue(BlockSize),
                KvMemoryBytes = (long)kvMiB << 20,
                KvDType = variant?.KvDType ?? Model.ResolveKvDType(r, KvDtype),
                StepGraphs = !r.GetValue(Eager),
                PadGraphBatches = !r.GetValue(GraphExactSizes),
            });
            var options = engineTokenizer ? EngineOptions(r, session.Model) : EngineOptions(r, null) with { EosTokenIds = [.. session.Model.EosIds] };
            session.Engine = new InferenceEngine(session.Executor, options with { AfterIteration = afterIteration, OnStep = onStep });
            session.Engine.Start();
            return session;
        }
        catch
        {
            session.Dispose();
            throw;
        }
    }

    // The simulated H100: the model's shape (from --model's config.json, or Llama-3.2-1B's) and no weights.
    private SimStepExecutor OpenSim(ParseResult r)
    {
        string w = r.GetValue(SimWeights)!;
        if (w is not ("fp8" or "bf16")) throw new FastServeException("args.invalid_sim_weights", $"--sim-weights accepts fp8 or bf16, not '{w}'", "--sim-weights");
        string? dir = r.GetValue(Model.Model);
        var config = dir is null ? ModelMaker.ConfigFor(ModelPreset.OneB) : ModelConfig.Load(Path.Combine(dir, "config.json"));
        int ctx = r.GetValue(Ctx);
        return new SimStepExecutor(SimModelShape.FromConfig(config, w == "fp8" ? DType.F8E4M3 : DType.BF16), SimDeviceProfile.H100Sxm, new SimOptions
        {
            MaxContextLength = ctx,
            BlockSize = r.GetValue(BlockSize),
            MaxTokensPerStep = r.GetValue(MaxBatchedTokens),
            MaxSequencesPerStep = r.GetValue(MaxSeqs),
            TimeScale = r.GetValue(SimTimeScale),
            StallEverySeconds = r.GetValue(SimStallEvery),
            StallSeconds = r.GetValue(SimStallMs) / 1000.0,
        });
    }

    public EngineOptions EngineOptions(ParseResult r, LoadedModel? model)
    {
        int target = r.GetValue(QueueTargetMs), interval = r.GetValue(QueueIntervalMs), deadline = r.GetValue(DefaultDeadlineMs);
        if (target < 0 || target > 3_600_000) throw new FastServeException("args.invalid_queue_target", "--queue-target-ms must be between 0 and 3600000", "--queue-target-ms");
        if (interval < 0 || interval > 3_600_000) throw new FastServeException("args.invalid_queue_interval", "--queue-interval-ms must be between 0 and 3600000", "--queue-interval-ms");
        if (interval > 0 && target > interval) throw new FastServeException("args.invalid_queue_target", "--queue-target-ms must not exceed --queue-interval-ms", "--queue-target-ms");
        if (deadline < 0 || deadline > 86_400_000) throw new FastServeException("args.invalid_default_deadline", "--default-deadline-ms must be between 0 and 86400000 (24 hours)", "--default-deadline-ms");
        return new()
        {
            MaxBatchedTokens = r.GetValue(MaxBatchedTokens),
            MaxSeqs = r.GetValue(MaxSeqs),
            Overlap = r.GetValue(Overlap) == "on",
            PrefixCaching = !r.GetValue(NoPrefixCache),
            MaxWaitingRequests = r.GetValue(MaxWaiting),
            EosTokenIds = model?.Tokenizer.EosIds ?? [],
            Tokenizer = model?.Tokenizer,
            QueueTarget = TimeSpan.FromMilliseconds(target),
            QueueInterval = TimeSpan.FromMilliseconds(interval),
            DefaultDeadline = deadline > 0 ? TimeSpan.FromMilliseconds(deadline) : null,
        };
    }
}

/// <summary>One engine configuration of a command that compares several (eval): a model directory, its weight
/// format (null: as stored; else quantized at load) and the KV cache dtype.</summary>
internal sealed record EngineVariant(string ModelDir, Fp8LoadOptions? Quantize, KvDType KvDType);

/// <summary>What an engine command holds open: the model, backend, executor and engine, disposed in reverse order.</summary>
internal sealed class EngineSession : IDisposable
{
    public LoadedModel? Model;
    public IBackend? Backend;
    public IStepExecutor? Executor;
    public InferenceEngine? Engine;

    public void Dispose()
    {
        Engine?.Dispose();
        Executor?.Dispose();
        Backend?.Dispose();
        Model?.Dispose();
    }
}
