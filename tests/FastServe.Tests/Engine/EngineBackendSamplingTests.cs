using FastServe.Runtime.Backends;
using FastServe.Runtime.Backends.Cpu;
using FastServe.Runtime.Generation;
using FastServe.Runtime.Model;
using FastServe.Scheduler.Engine;
using FastServe.Scheduler.Execution;
using FastServe.Tests.Backends;
using NUnit.Framework;

namespace FastServe.Tests.Engine;

/// <summary>
/// The engine on a backend that samples where its logits are (as the cuda backend does): the CPU backend behind a
/// wrapper that says <see cref="IBackend.SamplesOnDevice"/> and counts how steps sampled. Seeded requests must draw
/// the same tokens alone or batched, with or without a neighbour that asks for log-probabilities (which makes its
/// steps download logits and draw on the host by the same rules), and greedy output must equal the host sampler's.
/// </summary>
[NonParallelizable]
public class EngineBackendSamplingTests : TinyCpuModelFixture
{
    private static SamplingParams Sampled(int i, int logprobs = 0) => new()
    {
        MaxTokens = 6 + i % 9,
        Temperature = 0.9f,
        TopK = i % 3 == 0 ? 0 : 50,
        TopP = i % 2 == 0 ? 0.9f : 1f,
        Seed = (ulong)(77 + i),
        Logprobs = logprobs,
        IgnoreEos = true,
    };

    private static int[] Prompt(int i)
    {
        var r = new Random(100 + i);
        return [.. Enumerable.Range(0, 3 + r.Next(30)).Select(_ => r.Next(1000, 90000))];
    }

    private static async Task<RequestResult[]> Run(IBackend backend, IEnumerable<(int[] Prompt, SamplingParams Sampling)> requests, bool overlap = true)
    {
        using var ex = new ModelStepExecutor(Model.Config, Model.Weights, backend, new ModelExecutorOptions { ContextLength = 256, KvBlocks = 128 });
        using var engine = new InferenceEngine(ex, new EngineOptions { Overlap = overlap, MaxBatchedTokens = 64, MaxSeqs = 16 });
        engine.Start();
        var handles = requests.Select(r => engine.Submit(new EngineRequest { Prompt = r.Prompt, Sampling = r.Sampling })).ToList();
        var results = await Task.WhenAll(handles.Select(h => h.Completion));
        foreach (var r in results) Assert.That(r.Status, Is.EqualTo(RequestStatus.Finished), $"{r.ErrorCode} {r.Message}");
        return results;
    }

    [Test]
    public async Task SeededDrawsAreTheSameAloneBatchedAndBesideLogprobRequests()
    {
        const int n = 10;
        var alone = new RequestResult[n];
        var backend = new SamplingBackend(Cpu);
        for (int i = 0; i < n; i++) alone[i] = (await Run(backend, [(Prompt(i), Sampled(i))], overlap: i % 2 == 0))[0];
        Assert.That(backend.SampleCalls, Is.GreaterThan(0), "steps sampled through the backend");
        Assert.That(backend.LogitDownloads, Is.Zero, "no step downloaded logits");

        var batched = await Run(backend, Enumerable.Range(0, n).Select(i => (Prompt(i), Sampled(i))));
        for (int i = 0; i < n; i++) Assert.That(batched[i].OutputTokens, Is.EqualTo(alone[i].OutputTokens), $"request {i} batched");

        // Every other request now asks for log-probabilities: the steps they share download logits.
        var before = backend.LogitDownloads;
        var mixed = await Run(backend, Enumerable.Range(0, n).Select(i => (Prompt(i), Sampled(i, logprobs: i % 2))));
        Assert.That(backend.LogitDownloads, Is.GreaterThan(before), "steps with a logprob request download logits");
        for (int i = 0; i < n; i++) Assert.That(mixed[i].OutputTokens, Is.EqualTo(alone[i].OutputTokens), $"request {i} beside logprob requests");

        // The draws really are random: other seeds give other outputs for most requests.
        var reseeded = await Run(backend, Enumerable.Range(0, n).Select(i => (Prompt(i), Sampled(i) with { Seed = (ulong)(5000 + i) })));
        Assert.That(Enumerable.Range(0, n).Count(i => !reseeded[i].OutputTokens.SequenceEqual(alone[i].OutputTokens)), Is.GreaterThan(n / 2));
    }

    [Test]
    public async Task LogprobsAreThoseOfTheTokenDrawn()
    {
        var backend = new SamplingBackend(Cpu);
        using var ex = new ModelStepExecutor(Model.Config, Model.Weights, backend, new ModelExecutorOptions { ContextLength = 256, KvBlocks = 128 });
        using var engine = new InferenceEngine(ex, new EngineOptions());
        engine.Start();
        var h = engine.Submit(new EngineRequest { Prompt = Prompt(1), Sampling = Sampled(1, logprobs: 3) });
        var events = new List<TokenEvent>();
        await foreach (var t in h.Tokens.ReadAllAsync()) events.Add(t);
        var r = await h.Completion;
        Assert.That(events.Select(e => e.Id), Is.EqualTo(r.OutputTokens));
        foreach (var e in events)
        {
            Assert.That(e.Top, Has.Length.EqualTo(3));
            Assert.That(e.Logprob, Is.LessThanOrEqualTo(0f));
            Assert.That(e.Top![0].Logprob, Is.GreaterThanOrEqualTo(e.Logprob), "the top entry is at least as likely as the token drawn");
            var hit = e.Top.Where(t => t.Id == e.Id).ToArray();
            if (hit.Length == 1) Assert.That(hit[0].Logprob, Is.EqualTo(e.Logprob).Within(1e-5f));
        }
    }

    [Test]
    public async Task GreedyOutputEqualsTheHostSampler()
    {
        var greedy = Enumerable.Range(0, 8).Select(i => (Prompt(i), new SamplingParams { MaxTokens = 10, IgnoreEos = true })).ToList();
        var host = await Run(Cpu, greedy);
        var backend = new SamplingBackend(Cpu);
        var device = await Run(backend, greedy);
        for (int i = 0; i < greedy.Count; i++) Assert.That(device[i].OutputTokens, Is.EqualTo(host[i].OutputTokens), $"request {i}");
        Assert.That(backend.SampleCalls, Is.GreaterThan(0));
    }

    /// <summary>The CPU backend presented as one that samples on its device; counts samples and logit downloads.</summary>
    private sealed class SamplingBackend(IBackend inner) : ForwardingBackend(inner)
    {
        public int SampleCalls, LogitDownloads;
        public override string Name => "cpu-sampling";
        public override bool SamplesOnDevice => true;

        public override void Sample(BackendTensor logits, ReadOnlySpan<SampleRow> rows, Span<int> tokens)
        {
            SampleCalls++;
            CounterSampler.SampleOnHost(Inner, logits, rows, tokens);
        }

        public override void CopyToHost(BackendTensor src, Span<float> dst)
        {
            if (src.Name == "logits") LogitDownloads++;
            Inner.CopyToHost(src, dst);
        }
    }
}
