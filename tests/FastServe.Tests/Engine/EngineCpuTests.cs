using FastServe.Runtime.Backends.Cpu;
using FastServe.Runtime.Generation;
using FastServe.Runtime.Model;
using FastServe.Scheduler.Engine;
using FastServe.Scheduler.Execution;
using NUnit.Framework;

namespace FastServe.Tests.Engine;

/// <summary>The engine on the real CPU backend (tiny model, F32 weights): batching, preemption and the prefix cache
/// must not change a single token compared with generating each request alone.</summary>
[NonParallelizable]
public class EngineCpuTests : TinyCpuModelFixture
{
    internal sealed record Case(int[] Prompt, SamplingParams Sampling);

    private static List<Case> RandomCases(int n, int seed, int[]? sharedPrefix = null, bool sampled = false)
    {
        var r = new Random(seed);
        var cases = new List<Case>();
        for (int i = 0; i < n; i++)
        {
            int len = 2 + r.Next(40);
            var p = new List<int>(sharedPrefix ?? []);
            for (int j = 0; j < len; j++) p.Add(r.Next(1000, 90000));
            var sp = new SamplingParams
            {
                MaxTokens = 1 + r.Next(24),
                Temperature = sampled ? 0.8f : 0,
                TopK = sampled ? 40 : 0,
                Seed = sampled ? (ulong)(1000 + i) : null,
                IgnoreEos = true,
            };
            cases.Add(new Case([.. p], sp));
        }
        return cases;
    }

    private static int[][] Alone(List<Case> cases)
    {
        using var g = new Generator(Model, Cpu, new GeneratorOptions { ContextLength = 256 });
        return [.. cases.Select(c => g.Generate(c.Prompt, c.Sampling).TokenIds)];
    }

    private static async Task<(RequestResult[] Results, EngineStats Stats)> Batched(List<Case> cases, bool overlap, ModelExecutorOptions exec, int seed, EngineOptions? opts = null)
    {
        using var ex = new ModelStepExecutor(Model.Config, Model.Weights, Cpu, exec with { ContextLength = 256 });
        using var engine = new InferenceEngine(ex, (opts ?? new EngineOptions()) with { Overlap = overlap, MaxBatchedTokens = 64, MaxSeqs = 16 });
        engine.Start();
        var r = new Random(seed);
        var handles = new List<RequestHandle>();
        var streamed = new List<Task<List<int>>>();
        foreach (var c in cases)
        {
            if (r.Next(3) == 0) await Task.Delay(r.Next(1, 15));
            var h = engine.Submit(new EngineRequest { Prompt = c.Prompt, Sampling = c.Sampling, Priority = r.Next(2) == 0 ? Priority.Interactive : Priority.Batch });
            handles.Add(h);
            streamed.Add(ReadAll(h));
        }
        var results = await Task.WhenAll(handles.Select(h => h.Completion));
        var tokens = await Task.WhenAll(streamed);
        for (int i = 0; i < results.Length; i++)
            Assert.That(tokens[i], Is.EqualTo(results[i].OutputTokens), $"request {i}: the stream carries exactly the result's tokens");
        var stats = engine.GetStats();
        Assert.That(stats.KvBlocksUsed, Is.Zero, "every block is released");
        return (results, stats);
    }

    internal static async Task<List<int>> ReadAll(RequestHandle h)
    {
        var ids = new List<int>();
        await foreach (var t in h.Tokens.ReadAllAsync()) ids.Add(t.Id);
        return ids;
    }

    [TestCase(true)]
    [TestCase(false)]
    public async Task EveryRequestPaysForItsRowsAndThePaymentsAddUpToTheBusyTime(bool overlap)
    {
        // Some requests stop at EOS-free limits, some are cut by a tight KV budget (preempted, recomputed).
        var cases = RandomCases(30, 21);
        var (results, stats) = await Batched(cases, overlap, new ModelExecutorOptions { KvBlocks = 24 }, 9);
        double charged = results.Sum(r => r.DeviceTime.TotalSeconds);
        Assert.That(results.All(r => r.DeviceTime > TimeSpan.Zero), "every request computed rows, so every one paid");
        Assert.That(charged + stats.DeviceUnattributedSeconds, Is.EqualTo(stats.DeviceBusySeconds).Within(1e-6 * stats.DeviceBusySeconds + 1e-5),
            "the shares and the unattributed rows are the busy time, exactly");
        Assert.That(stats.DeviceUnattributedSeconds, Is.LessThanOrEqualTo(0.02 * stats.DeviceBusySeconds),
            "requests that end at max_tokens leave no row unpaid (the engine never schedules past the limit)");
    }

    [TestCase(true)]
    [TestCase(false)]
    public async Task BatchedGreedyOutputEqualsGeneratingEachAlone(bool overlap)
    {
        var cases = RandomCases(30, 11);
        var alone = Alone(cases);
        var (results, stats) = await Batched(cases, overlap, new ModelExecutorOptions(), 5);
        for (int i = 0; i < cases.Count; i++)
        {
            Assert.That(results[i].Status, Is.EqualTo(RequestStatus.Finished));
            Assert.That(results[i].Finish, Is.EqualTo(FinishReason.Length));
            Assert.That(results[i].OutputTokens, Is.EqualTo(alone[i]), $"request {i}: {results[i].Status} {results[i].ErrorCode} {results[i].Message}");
        }
        double meanBatch = stats.RowsComputed / (double)stats.Steps;
        TestContext.Out.WriteLine($"overlap={overlap}: {stats.Steps} steps, {meanBatch:F1} rows/step");
        Assert.That(stats.Steps, Is.LessThan(cases.Sum(c => c.Sampling.MaxTokens)), "requests shared steps");
    }

    [Test]
    public async Task SeededSamplingIsUnchangedByBatching()
    {
        var cases = RandomCases(12, 12, sampled: true);
        var alone = Alone(cases);
        var (results, _) = await Batched(cases, true, new ModelExecutorOptions(), 6);
        for (int i = 0; i < cases.Count; i++) Assert.That(results[i].OutputTokens, Is.EqualTo(alone[i]), $"request {i}: {results[i].Status} {results[i].ErrorCode} {results[i].Message}");
    }

    [TestCase(true)]
    [TestCase(false)]
    public async Task PreemptionAndPrefixHitsGiveIdenticalOutput(bool overlap)
    {
        // 48 shared prefix tokens (3 blocks) and a cache of 24 blocks of 16: requests share the prefix, and their
        // growth forces preemptions.
        var prefix = Enumerable.Range(0, 48).Select(i => 5000 + i * 7).ToArray();
        var cases = RandomCases(16, 13, prefix);
        var longer = cases.Select(c => c with { Sampling = c.Sampling with { MaxTokens = 30 + c.Prompt.Length % 20 } }).ToList();
        var alone = Alone(longer);
        var (results, stats) = await Batched(longer, overlap, new ModelExecutorOptions { KvBlocks = 24 }, 7,
            new EngineOptions { AdmissionReserveBlocks = 1 });
        for (int i = 0; i < longer.Count; i++) Assert.That(results[i].OutputTokens, Is.EqualTo(alone[i]), $"request {i}: {results[i].Status} {results[i].ErrorCode} {results[i].Message}");
        TestContext.Out.WriteLine($"preemptions {stats.Preemptions}, prefix hits {stats.PrefixHits}/{stats.PrefixQueries}, hit tokens {stats.PrefixHitTokens}");
        Assert.That(stats.Preemptions, Is.GreaterThan(0), "the cache was small enough to force preemption");
        Assert.That(stats.PrefixHitTokens, Is.GreaterThan(0), "the shared prefix was served from the cache");
        Assert.That(results.Sum(r => r.Preemptions), Is.EqualTo(stats.Preemptions));
    }

    [Test]
    public async Task StopStringsAndEosEndLikeTheGenerator()
    {
        var tok = Model.Tokenizer;
        var baseCase = RandomCases(1, 14)[0];
        using var g = new Generator(Model, Cpu, new GeneratorOptions { ContextLength = 256 });
        var free = g.Generate(baseCase.Prompt, baseCase.Sampling with { MaxTokens = 20 });
        // A stop string taken from the middle of the free-running output.
        string text = free.Text;
        Assume.That(text.Length, Is.GreaterThan(6));
        string stop = text.Substring(text.Length / 2, 2);
        var sp = baseCase.Sampling with { MaxTokens = 20, Stop = [stop] };
        var expected = g.Generate(baseCase.Prompt, sp);
        // EOS: make the token the model emits third an end-of-sequence id for the engine.
        int eosId = free.TokenIds[2];

        using var ex = new ModelStepExecutor(Model.Config, Model.Weights, Cpu, new ModelExecutorOptions { ContextLength = 256 });
        using var engine = new InferenceEngine(ex, new EngineOptions { Tokenizer = tok, EosTokenIds = [eosId] });
        engine.Start();
        var stopped = await engine.Submit(new EngineRequest { Prompt = baseCase.Prompt, Sampling = sp with { IgnoreEos = true } }).Completion;
        Assert.That(stopped.Finish, Is.EqualTo(FinishReason.Stop));
        Assert.That(stopped.OutputTokens, Is.EqualTo(expected.TokenIds));
        var eos = await engine.Submit(new EngineRequest { Prompt = baseCase.Prompt, Sampling = baseCase.Sampling with { MaxTokens = 20, IgnoreEos = false } }).Completion;
        Assert.That(eos.Finish, Is.EqualTo(FinishReason.Eos));
        Assert.That(eos.OutputTokens, Is.EqualTo(free.TokenIds.Take(Array.IndexOf(free.TokenIds, eosId) + 1)));
        var noTokenizer = new InferenceEngine(ex, new EngineOptions());
        var bad = await noTokenizer.Submit(new EngineRequest { Prompt = baseCase.Prompt, Sampling = sp }).Completion;
        Assert.That(bad.ErrorCode, Is.EqualTo("request.stop_needs_tokenizer"));
        noTokenizer.Dispose();
    }

    [Test]
    public async Task ContextFullEndsLikeTheGenerator()
    {
        var c = RandomCases(1, 15)[0];
        var sp = c.Sampling with { MaxTokens = 500 };
        using var g = new Generator(Model, Cpu, new GeneratorOptions { ContextLength = 64 });
        var expected = g.Generate(c.Prompt, sp);
        Assert.That(expected.Finish, Is.EqualTo(FinishReason.ContextFull));
        using var ex = new ModelStepExecutor(Model.Config, Model.Weights, Cpu, new ModelExecutorOptions { ContextLength = 64 });
        foreach (bool overlap in new[] { true, false })
        {
            using var engine = new InferenceEngine(ex, new EngineOptions { Overlap = overlap });
            engine.Start();
            var r = await engine.Submit(new EngineRequest { Prompt = c.Prompt, Sampling = sp }).Completion;
            Assert.That(r.Finish, Is.EqualTo(FinishReason.ContextFull), $"overlap={overlap}");
            Assert.That(r.OutputTokens, Is.EqualTo(expected.TokenIds), $"overlap={overlap}");
        }
    }
}
