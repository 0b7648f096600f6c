using FastServe.Runtime.Backends;
using FastServe.Runtime.Generation;
using FastServe.Runtime.Model;
using FastServe.Scheduler.Engine;
using FastServe.Scheduler.Execution;
using FastServe.Vulkan;
using NUnit.Framework;
using Silk.NET.Vulkan;

namespace FastServe.Tests.Vulkan;

/// <summary>
/// The engine on the vulkan backend: recorded decode steps (the backend's <see cref="IStepRecorder"/>, padded batch
/// sizes) give the tokens of op-by-op steps, and a device fault ends the requests with engine.failed naming the
/// vulkan code, the process staying up.
/// </summary>
[TestFixture, NonParallelizable]
public sealed class VulkanEngineTests
{
    private static List<(int[] Prompt, SamplingParams Sampling)> Requests(int n)
    {
        var r = new Random(3);
        return [.. Enumerable.Range(0, n).Select(i => (
            (int[])[.. Enumerable.Range(0, 2 + r.Next(20)).Select(_ => r.Next(3, 4000))],
            new SamplingParams { MaxTokens = 10 + (i % 3) * 4, IgnoreEos = true, Temperature = i % 2 == 0 ? 0 : 0.8f, Seed = (ulong)i }))];
    }

    private static async Task<(RequestResult[] Results, ModelStepExecutor Executor)> Run(IBackend backend, LoadedModel model,
        List<(int[] Prompt, SamplingParams Sampling)> requests, bool graphs, Action<IBackend>? afterStart = null)
    {
        var ex = new ModelStepExecutor(model.Config, model.Weights, backend,
            new ModelExecutorOptions { ContextLength = 128, KvBlocks = 64, StepGraphs = graphs, KvDType = KvDType.BF16 });
        // No queue budget: these tests are about the backend, and on a slow software device the requests beyond MaxSeqs
        // may wait longer than the budget for admission, which would refuse them as overloaded.
        var engine = new InferenceEngine(ex, new EngineOptions { MaxBatchedTokens = 64, MaxSeqs = 8, QueueInterval = TimeSpan.Zero });
        engine.Start();
        afterStart?.Invoke(backend);
        var handles = requests.Select(q => engine.Submit(new EngineRequest { Prompt = q.Prompt, Sampling = q.Sampling })).ToList();
        var results = await Task.WhenAll(handles.Select(h => h.Completion));
        engine.Dispose();
        ex.Dispose();
        return (results, ex);
    }

    [Test]
    public async Task RecordedDecodeStepsGiveTheTokensOfOpByOpStepsAsync()
    {
        using var vk = VulkanBackendTests.CreateOrIgnore();
        using var model = LoadedModel.Load(Path.Combine(TestModels.RepoRoot, "models", "gec-tiny"));
        var requests = Requests(10);
        var (expected, _) = await Run(vk, model, requests, graphs: false);
        var (results, ex) = await Run(vk, model, requests, graphs: true);
        for (int i = 0; i < requests.Count; i++)
        {
            Assert.That(results[i].Status, Is.EqualTo(RequestStatus.Finished), $"{results[i].ErrorCode} {results[i].Message}");
            Assert.That(results[i].OutputTokens, Is.EqualTo(expected[i].OutputTokens), $"request {i}");
        }
        TestContext.Out.WriteLine($"captures {ex.GraphCaptures}, replays {ex.GraphReplays}, fallbacks {ex.GraphFallbacks}, pad rows {ex.GraphPadRows}");
        Assert.That(ex.GraphCaptures, Is.GreaterThan(0));
        Assert.That(ex.GraphReplays, Is.GreaterThan(ex.GraphCaptures), "replays carry most decode steps");
        Assert.That(ex.GraphFallbacks, Is.Zero);
    }

    [Test]
    public async Task ADeviceLostEndsTheRequestsWithItsCodeAsync()
    {
        using var vk = VulkanBackendTests.CreateOrIgnore();
        using var model = LoadedModel.Load(Path.Combine(TestModels.RepoRoot, "models", "gec-tiny"));
        var (results, _) = await Run(vk, model, Requests(3), graphs: true, afterStart: b => ((VulkanBackend)b).InjectFault(Result.ErrorDeviceLost));
        foreach (var r in results)
        {
            Assert.That(r.Status, Is.EqualTo(RequestStatus.Failed));
            Assert.That(r.ErrorCode, Is.EqualTo("engine.failed"));
            Assert.That(r.Message, Does.StartWith("vulkan.device_lost: "));
        }
    }
}
