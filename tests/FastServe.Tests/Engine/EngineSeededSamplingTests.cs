using FastServe.Runtime.Backends;
using FastServe.Runtime.Backends.Reference;
using FastServe.Runtime.Generation;
using FastServe.Scheduler.Engine;
using FastServe.Scheduler.Execution;
using NUnit.Framework;

namespace FastServe.Tests.Engine;

/// <summary>
/// One sampler for every backend: a seeded temperature-sampling request draws each token by CounterSampler's rules,
/// keyed only by (seed, position), so it gets the same tokens on the cpu and reference backends, alone or batched
/// with other requests, with the engine's overlap on or off, and from the single-sequence Generator.
/// </summary>
[NonParallelizable]
public class EngineSeededSamplingTests : TinyCpuModelFixture
{
    private static readonly SamplingParams Seeded = new() { Temperature = 0.8f, TopP = 0.95f, TopK = 40, Seed = 20251206, MaxTokens = 16, IgnoreEos = true };

    private static int[] Prompt(int i)
    {
        var r = new Random(300 + i);
        return [.. Enumerable.Range(0, 4 + r.Next(24)).Select(_ => r.Next(1000, 90000))];
    }

    // Request 0 is the seeded one; the others are its neighbours when batched (other seeds, one greedy, one unseeded).
    private static SamplingParams Neighbour(int i) => i switch
    {
        1 => new SamplingParams { MaxTokens = 10, IgnoreEos = true },
        2 => Seeded with { Seed = null, MaxTokens = 20 },
        _ => Seeded with { Seed = (ulong)i, Temperature = 1.1f, TopK = 0, MaxTokens = 8 + i },
    };

    private static async Task<int[]> Run(IBackend backend, bool batched, bool overlap)
    {
        using var ex = new ModelStepExecutor(Model.Config, Model.Weights, backend, new ModelExecutorOptions { ContextLength = 256, KvBlocks = 128 });
        using var engine = new InferenceEngine(ex, new EngineOptions { Overlap = overlap, MaxBatchedTokens = 64, MaxSeqs = 16 });
        engine.Start();
        var handles = new List<RequestHandle> { engine.Submit(new EngineRequest { Prompt = Prompt(0), Sampling = Seeded }) };
        if (batched)
        {
            for (int i = 1; i < 6; i++) handles.Add(engine.Submit(new EngineRequest { Prompt = Prompt(i), Sampling = Neighbour(i) }));
        }
        var results = await Task.WhenAll(handles.Select(h => h.Completion));
        foreach (var r in results) Assert.That(r.Status, Is.EqualTo(RequestStatus.Finished), $"{r.ErrorCode} {r.Message}");
        return results[0].OutputTokens.ToArray();
    }

    [Test]
    public async Task SeededRequestDrawsTheSameTokensOnCpuAndReferenceBatchedAndAloneWithOverlapOnAndOff()
    {
        using var reference = new ReferenceBackend();
        int[]? expected = null;
        foreach (var (name, backend) in new (string, IBackend)[] { ("cpu", Cpu), ("reference", reference) })
        {
            foreach (bool batched in new[] { false, true })
            {
                foreach (bool overlap in new[] { true, false })
                {
                    var tokens = await Run(backend, batched, overlap);
                    TestContext.Progress.WriteLine($"{name,-9} {(batched ? "batched" : "alone"),-7} overlap={(overlap ? "on " : "off")}: [{string.Join(", ", tokens)}]");
                    Assert.That(tokens, Has.Length.EqualTo(Seeded.MaxTokens));
                    expected ??= tokens;
                    Assert.That(tokens, Is.EqualTo(expected), $"{name}, {(batched ? "batched" : "alone")}, overlap {overlap}");
                }
            }
        }
        using var g = new Generator(Model, reference, new GeneratorOptions { ContextLength = 256 });
        var generated = g.Generate(Prompt(0), Seeded).TokenIds;
        TestContext.Progress.WriteLine($"generator (reference): [{string.Join(", ", generated)}]");
        Assert.That(generated, Is.EqualTo(expected), "the single-sequence generator draws the same tokens");
        Assert.That(expected!.Distinct().Count(), Is.GreaterThan(1), "a sampled request, not a constant");
    }

    [Test]
    public async Task AnotherSeedDrawsOtherTokens()
    {
        var a = await Run(Cpu, batched: false, overlap: true);
        using var ex = new ModelStepExecutor(Model.Config, Model.Weights, Cpu, new ModelExecutorOptions { ContextLength = 256, KvBlocks = 128 });
        using var engine = new InferenceEngine(ex, new EngineOptions { MaxBatchedTokens = 64, MaxSeqs = 16 });
        engine.Start();
        var r = await engine.Submit(new EngineRequest { Prompt = Prompt(0), Sampling = Seeded with { Seed = 7 } }).Completion;
        Assert.That(r.OutputTokens, Is.Not.EqualTo(a), "the draw depends on the seed");
    }
}
