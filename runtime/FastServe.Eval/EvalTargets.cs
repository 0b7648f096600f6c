using FastServe.Client;
using FastServe.Protocol;
using FastServe.Runtime.Generation;
using FastServe.Runtime.Tokenization;
using FastServe.Scheduler.Engine;

namespace FastServe.Eval;

/// <summary>What an evaluation runs against: generates the answer to one prompt, greedily. Called concurrently.</summary>
public interface IEvalTarget
{
    /// <summary>The answer to <paramref name="prompt"/>. Never throws for a refused or failed request: the output
    /// says so. Load refusals are retried after the target's hint, as offline work is never dropped for load.</summary>
    Task<EvalOutput> RunAsync(string prompt, CancellationToken ct);
}

/// <summary>
/// The batching engine in this process. Each request asks for the chosen token's log-probability, which makes the
/// executor sample on the host from downloaded logits (the same rules, the same tokens; slower on a GPU, where
/// tokens are otherwise drawn on the device).
/// </summary>
public sealed class EngineEvalTarget(InferenceEngine engine, TextTokenizer tokenizer, int maxTokens) : IEvalTarget
{
    public async Task<EvalOutput> RunAsync(string prompt, CancellationToken ct)
    {
        var request = new EngineRequest
        {
            Prompt = tokenizer.Encode(prompt, addBos: tokenizer.BosId is not null),
            Sampling = new SamplingParams { MaxTokens = maxTokens, Temperature = 0, Logprobs = 1 },
            Priority = Priority.Batch,
        };
        while (true)
        {
            var handle = engine.Submit(request);
            double sum = 0, min = double.PositiveInfinity;
            int n = 0;
            await foreach (var t in handle.Tokens.ReadAllAsync(ct).ConfigureAwait(false))
            {
                sum += t.Logprob;
                min = Math.Min(min, t.Logprob);
                n++;
            }
            var res = await handle.Completion.WaitAsync(ct).ConfigureAwait(false);
            if (res is { Status: RequestStatus.Overloaded, RetryAfter: { } wait })
            {
                await Task.Delay(wait, ct).ConfigureAwait(false);
                continue;
            }
            var ids = res.OutputTokens.Where(id => !tokenizer.IsEos(id)).ToArray();
            return new EvalOutput(StatusNames.Of(res.Status), res.ErrorCode, res.Message, tokenizer.Decode(ids),
                res.Finish?.WireName(), res.OutputTokens.Length, n > 0 ? sum : double.NaN, n > 0 ? min : double.NaN, res.DeviceTime.TotalSeconds);
        }
    }
}

/// <summary>
/// A running replica or router, over the wire protocol (batch priority, so a judged production replica serves its
/// interactive traffic first). From a protocol 1.2 server it asks for the log-probability summary (FINAL's mean and
/// least token log-probability); an older server gives none. <see cref="Model"/> and <see cref="ModelVersion"/> name
/// what a router should run (a model, a version, or a cascade tier).
/// </summary>
public sealed class ServerEvalTarget(FastServeClient client, int maxTokens) : IEvalTarget
{
    /// <summary>How long a load refusal is retried before the example counts as failed.</summary>
    public TimeSpan RetryFor { get; init; } = TimeSpan.FromMinutes(5);

    /// <summary>The model (or tier) every request names; null: the server's default.</summary>
    public string? Model { get; init; }

    /// <summary>The model version every request names; null: any.</summary>
    public string? ModelVersion { get; init; }

    // The summary's mean back to a sum over the generated tokens, as the engine target reports it.
    private static double Sum(CompletionResult r) => double.IsNaN(r.LogprobMean) ? double.NaN : r.LogprobMean * r.CompletionTokens;

    public async Task<EvalOutput> RunAsync(string prompt, CancellationToken ct)
    {
        var request = new CompletionRequest
        {
            Prompt = prompt,
            Params = RequestParams.Default with
            {
                MaxTokens = maxTokens, Temperature = 0, Priority = (byte)Priority.Batch,
                Logprobs = client.Server.Major == 1 && client.Server.Minor >= 2, Model = Model, ModelVersion = ModelVersion,
            },
        };
        var until = DateTime.UtcNow + RetryFor;
        while (true)
        {
            var res = await client.CompleteAsync(request, ct).ConfigureAwait(false);
            if (!res.IsOk && res.Retriable && res.RetryAfter is { } wait && res.ClientFailure != ClientFailure.ConnectionLost && DateTime.UtcNow < until)
            {
                await Task.Delay(wait, ct).ConfigureAwait(false);
                continue;
            }
            return res.IsOk
                ? new EvalOutput("finished", null, null, res.Text, res.FinishName, res.CompletionTokens, Sum(res), res.LogprobMin, res.ServerTimings.DeviceUs / 1e6)
                : new EvalOutput(res.StatusName, res.Detail, res.Message, res.Text, null, res.CompletionTokens, double.NaN, double.NaN, res.ServerTimings.DeviceUs / 1e6);
        }
    }
}
