using FastServe.Runtime.Generation;
using FastServe.Scheduler.Engine;
using FastServe.Scheduler.Execution;
using NUnit.Framework;

namespace FastServe.Tests.Engine;

/// <summary>
/// Initial output tokens (<see cref="EngineRequest.Resumed"/>): an engine given the first k tokens of a run continues
/// it with exactly the run's remaining tokens, greedy and seeded, batched with another request and with a chunked
/// prefill; the resumed tokens count toward max_tokens and the result's output; bad ones are refused.
/// </summary>
[NonParallelizable]
public class EngineResumeTests : TinyCpuModelFixture
{
    private static readonly int[] Prompt = [5, 900, 1200, 77, 3000, 42, 8000];

    private InferenceEngine NewEngine(ModelStepExecutor ex) => new(ex, new EngineOptions { MaxBatchedTokens = 8, MaxSeqs = 8 });

    [TestCase(0f, null)]
    [TestCase(0.9f, 77UL)]
    public async Task AResumedRequestDrawsTheRestOfTheRun(float temperature, ulong? seed)
    {
        var p = new SamplingParams { Temperature = temperature, Seed = seed, MaxTokens = 24, IgnoreEos = true };
        using var ex = new ModelStepExecutor(Model.Config, Model.Weights, Cpu, new ModelExecutorOptions { ContextLength = 256, KvBlocks = 128 });
        using var engine = NewEngine(ex);
        engine.Start();
        var full = await engine.Submit(new EngineRequest { Prompt = Prompt, Sampling = p }).Completion;
        Assert.That(full.Status, Is.EqualTo(RequestStatus.Finished), full.Message);
        foreach (int k in new[] { 1, 9, 23 })
        {
            var other = engine.Submit(new EngineRequest { Prompt = Prompt[..3], Sampling = new SamplingParams { MaxTokens = 12, IgnoreEos = true } });
            var h = engine.Submit(new EngineRequest { Prompt = Prompt, Sampling = p, Resumed = full.OutputTokens[..k] });
            var streamed = new List<int>();
            await foreach (var t in h.Tokens.ReadAllAsync()) streamed.Add(t.Id);
            var r = await h.Completion;
            await other.Completion;
            Assert.That(r.Status, Is.EqualTo(RequestStatus.Finished), r.Message);
            Assert.That(streamed, Is.EqualTo(full.OutputTokens[k..]), $"resumed after {k}: only the new tokens are streamed");
            Assert.That(r.OutputTokens, Is.EqualTo(full.OutputTokens), $"resumed after {k}: the output counts the resumed tokens");
            Assert.That((r.Finish, r.PromptTokens), Is.EqualTo((FinishReason.Length, Prompt.Length)));
        }
    }

    [Test]
    public async Task ResumedTokensThatLeaveNothingToGenerateOrAreOutOfTheVocabularyAreRefused()
    {
        using var ex = new ModelStepExecutor(Model.Config, Model.Weights, Cpu, new ModelExecutorOptions { ContextLength = 256, KvBlocks = 128 });
        using var engine = NewEngine(ex);
        engine.Start();
        var p = new SamplingParams { MaxTokens = 3, IgnoreEos = true };
        var all = await engine.Submit(new EngineRequest { Prompt = Prompt, Sampling = p, Resumed = new[] { 1, 2, 3 } }).Completion;
        Assert.That((all.Status, all.ErrorCode), Is.EqualTo((RequestStatus.Invalid, "request.bad_resume")));
        var bad = await engine.Submit(new EngineRequest { Prompt = Prompt, Sampling = p, Resumed = new[] { 1, -4 } }).Completion;
        Assert.That((bad.Status, bad.ErrorCode), Is.EqualTo((RequestStatus.Invalid, "prompt.invalid_token")));
    }
}
