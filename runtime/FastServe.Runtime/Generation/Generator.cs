using System.Diagnostics;
using FastServe.Protocol;
using FastServe.Runtime.Backends;
using FastServe.Runtime.Model;

namespace FastServe.Runtime.Generation;

/// <summary>Why generation ended.</summary>
public enum FinishReason { Eos, Length, Stop, ContextFull, Cancelled }

/// <summary>Stable wire names of <see cref="FinishReason"/> (JSON output, batch results, the protocol).</summary>
public static class FinishReasonNames
{
    public static string WireName(this FinishReason r) => r switch
    {
        FinishReason.Eos => "eos",
        FinishReason.Length => "length",
        FinishReason.Stop => "stop",
        FinishReason.ContextFull => "context_full",
        _ => "cancelled",
    };
}

/// <summary>One streamed token: its id, the text it completed (may be empty), and log-probabilities when asked.
/// The last event of a generation may carry Id -1: text held back (an incomplete UTF-8 sequence or a possible stop
/// string prefix) released when generation ends, belonging to no new token.</summary>
public readonly record struct GeneratedToken(int Id, string Text, float Logprob, TokenLogprob[]? Top);

/// <summary>Outcome of <see cref="Generator.Generate"/>, with timings.</summary>
public sealed record GenerationResult(
    int[] PromptIds,
    int[] TokenIds,
    string Text,
    FinishReason Finish,
    TimeSpan PrefillTime,
    TimeSpan DecodeTime,
    IReadOnlyList<GeneratedToken> Tokens)
{
    public double PrefillTokensPerSecond => PromptIds.Length / Math.Max(PrefillTime.TotalSeconds, 1e-9);

    /// <summary>Tokens after the first (which the prefill produced) per second of decode.</summary>
    public double DecodeTokensPerSecond => Math.Max(TokenIds.Length - 1, 0) / Math.Max(DecodeTime.TotalSeconds, 1e-9);
}

/// <summary>Options for a single-sequence generator.</summary>
public sealed record GeneratorOptions
{
    /// <summary>Tokens of context (prompt plus output); 0 = the model's max_position_embeddings, capped at 8192.</summary>
    public int ContextLength { get; init; }
    public KvDType KvDType { get; init; } = KvDType.F32;
    /// <summary>Prompt tokens per forward step (chunked prefill).</summary>
    public int PrefillChunk { get; init; } = 256;
    public int BlockSize { get; init; } = 16;
}

/// <summary>
/// Generates for one sequence at a time on any backend: chunked prefill, then one token per step with the KV
/// cache, sampling, EOS, stop strings and max tokens. The engine (scheduler/) batches many sequences instead.
/// </summary>
public sealed class Generator : IDisposable
{
    private readonly LoadedModel _model;
    private readonly ModelRunner _runner;
    private readonly BatchLayout _layout = new(1, 1);
    private readonly int[] _blockTable;
    private readonly float[] _logits;
    private readonly SampleRow[] _sampleRow = new SampleRow[1];
    private readonly int[] _token = new int[1];

    public Generator(LoadedModel model, IBackend backend, GeneratorOptions? options = null)
    {
        options ??= new GeneratorOptions();
        _model = model;
        var cfg = model.Config;
        int ctx = options.ContextLength > 0 ? options.ContextLength : Math.Min(cfg.MaxPositionEmbeddings, 8192);
        if (ctx < 2 || ctx > cfg.MaxPositionEmbeddings)
            throw new FastServeException("args.invalid_context", $"context length must be between 2 and {cfg.MaxPositionEmbeddings}", "ctx");
        ContextLength = ctx;
        int blocks = (ctx + options.BlockSize - 1) / options.BlockSize;
        _blockTable = new int[blocks];
        for (int i = 0; i < blocks; i++) _blockTable[i] = i;
        var spec = new KvCacheSpec(cfg.NumLayers, cfg.NumKvHeads, cfg.HeadDim, options.BlockSize, blocks, options.KvDType);
        _runner = new ModelRunner(cfg, model.Weights, backend, spec, Math.Max(1, Math.Min(options.PrefillChunk, ctx)), 1);
        _logits = new float[cfg.VocabSize];
    }

    public int ContextLength { get; }
    public ModelRunner Runner => _runner;

    /// <summary>Generates from <paramref name="prompt"/> (token ids). <paramref name="onToken"/> sees each token as it is
    /// produced, with the text it released (stop strings held back). Errors: prompt.empty, prompt.too_long,
    /// prompt.invalid_token, sampling.invalid.</summary>
    public GenerationResult Generate(ReadOnlySpan<int> prompt, SamplingParams p, Action<GeneratedToken>? onToken = null, CancellationToken ct = default)
    {
        p.Validate();
        int vocab = _model.Config.VocabSize;
        if ((RequestRules.CheckPromptLength(prompt.Length, ContextLength) ?? RequestRules.CheckPromptTokens(prompt, vocab)) is { } bad)
            throw FastServeException.From(bad);

        var sampler = new Sampler(vocab, p);
        var stop = new StopMatcher(p.Stop);
        var decoder = _model.Tokenizer.CreateDecoder();
        var tokens = new List<GeneratedToken>();
        var ids = new List<int>();
        var text = new System.Text.StringBuilder();
        var top = p.Logprobs > 0 ? new TokenLogprob[p.Logprobs] : null;

        var sw = Stopwatch.StartNew();
        int pos = 0;
        while (pos + _runner.MaxTokensPerStep < prompt.Length)
        {
            Prefill(prompt.Slice(pos, _runner.MaxTokensPerStep), pos);
            pos += _runner.MaxTokensPerStep;
        }
        int next = Step(prompt[pos..], pos, sampler, top, out float lp);
        pos = prompt.Length;
        var prefill = sw.Elapsed;
        sw.Restart();

        FinishReason finish = FinishReason.Length;
        while (true)
        {
            ids.Add(next);
            bool eos = !p.IgnoreEos && _model.Tokenizer.IsEos(next);
            string delta = eos ? "" : stop.Append(decoder.Append(next));
            text.Append(delta);
            var tok = new GeneratedToken(next, delta, lp, top is null ? null : (TokenLogprob[])top.Clone());
            tokens.Add(tok);
            onToken?.Invoke(tok);
            if (eos) { finish = FinishReason.Eos; break; }
            if (stop.Stopped) { finish = FinishReason.Stop; break; }
            if (ids.Count >= p.MaxTokens) { finish = FinishReason.Length; break; }
            if (pos >= ContextLength) { finish = FinishReason.ContextFull; break; }
            if (ct.IsCancellationRequested) { finish = FinishReason.Cancelled; break; }
            next = Step([next], pos, sampler, top, out lp);
            pos++;
        }
        if (finish != FinishReason.Stop)
        {
            string tail = stop.Append(decoder.Flush());
            tail += stop.Flush();
            if (tail.Length > 0)
            {
                text.Append(tail);
                var last = new GeneratedToken(-1, tail, 0, null);
                onToken?.Invoke(last);
            }
        }
        return new GenerationResult(prompt.ToArray(), [.. ids], text.ToString(), finish, prefill, sw.Elapsed, tokens);
    }

    // Runs `chunk` at positions pos.. and returns the token drawn from its last row, which takes position
    // pos + chunk.Length: through the backend (IBackend.Sample, as the engine draws) or, when log-probabilities are
    // asked for, from the downloaded logits by the same rules.
    private int Step(ReadOnlySpan<int> chunk, int pos, Sampler sampler, TokenLogprob[]? top, out float logprob)
    {
        _layout.Clear();
        _layout.AddSequence(pos, chunk.Length, _blockTable);
        ReadOnlySpan<int> lastRow = [chunk.Length - 1];
        int position = pos + chunk.Length;
        if (top is null && sampler.Params.Logprobs == 0)
        {
            logprob = 0;
            _sampleRow[0] = sampler.Row(position);
            _runner.ForwardSample(chunk, _layout, lastRow, _sampleRow, _token);
            return _token[0];
        }
        _runner.Forward(chunk, _layout, lastRow, _logits);
        return sampler.Sample(_logits, position, top, out logprob);
    }

    // A prefill chunk that does not end the prompt: K/V only, no logits.
    private void Prefill(ReadOnlySpan<int> chunk, int pos)
    {
        _layout.Clear();
        _layout.AddSequence(pos, chunk.Length, _blockTable);
        _runner.Forward(chunk, _layout, [], []);
    }

    public void Dispose() => _runner.Dispose();
}
