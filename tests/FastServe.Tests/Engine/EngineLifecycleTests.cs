using System.Diagnostics;
using FastServe.Protocol;
using FastServe.Runtime;
using FastServe.Runtime.Generation;
using FastServe.Runtime.Model;
using FastServe.Scheduler.Engine;
using FastServe.Scheduler.Sim;
using NUnit.Framework;

namespace FastServe.Tests.Engine;

/// <summary>Request lifecycle on the simulated device: exactly one final status, every block back, deadlines and
/// admission decisions exactly when they should happen.</summary>
[NonParallelizable]
public class EngineLifecycleTests
{
    private static SimStepExecutor Sim(double timeScale, int kvBlocks = 0, int maxSeqs = 256) =>
        new(SimModelShape.FromConfig(ModelMaker.ConfigFor(ModelPreset.OneB), DType.F8E4M3), SimDeviceProfile.H100Sxm,
            new SimOptions { TimeScale = timeScale, KvBlocks = kvBlocks, MaxSequencesPerStep = maxSeqs, Seed = 3 });

    private static int[] Prompt(Random r, int n, int[]? prefix = null)
    {
        var p = new int[n];
        for (int i = 0; i < n; i++) p[i] = prefix is not null && i < prefix.Length ? prefix[i] : r.Next(1000, 100000);
        return p;
    }

    [TestCase(true)]
    [TestCase(false)]
    public async Task TenThousandRequestsWithCancelsDeadlinesAndPreemptionsAllEndOnceAndFreeEveryBlock(bool overlap)
    {
        // 96 blocks of 16 tokens hold ~20 requests of ~70 tokens: with 48 sequences allowed, preemption is constant.
        using var sim = Sim(timeScale: 0.02, kvBlocks: 96);
        using var engine = new InferenceEngine(sim, new EngineOptions { Overlap = overlap, MaxSeqs = 48, MaxBatchedTokens = 256, EosTokenIds = [7] });
        engine.Start();
        var r = new Random(42);
        var shared = Prompt(r, 32);
        var handles = new List<RequestHandle>();
        var streams = new List<Task<List<int>>>();
        var toCancel = new List<RequestHandle>();
        for (int i = 0; i < 10_000; i++)
        {
            var req = new EngineRequest
            {
                Prompt = Prompt(r, 1 + r.Next(60), r.Next(2) == 0 ? shared : null),
                Sampling = new SamplingParams { MaxTokens = 1 + r.Next(40), IgnoreEos = r.Next(4) != 0 },
                Priority = r.Next(3) == 0 ? Priority.Batch : Priority.Interactive,
                Deadline = r.Next(10) == 0 ? TimeSpan.FromMilliseconds(r.Next(1, 30)) : null,
            };
            var h = engine.Submit(req);
            handles.Add(h);
            streams.Add(EngineCpuTests.ReadAll(h));
            if (r.Next(10) == 0) toCancel.Add(h);
            if (toCancel.Count > 0 && r.Next(3) == 0)
            {
                toCancel[0].Cancel();
                toCancel[0].Cancel(); // twice: still one status
                toCancel.RemoveAt(0);
            }
            if (i % 500 == 0) await Task.Delay(2);
        }
        var results = await Task.WhenAll(handles.Select(h => h.Completion)).WaitAsync(TimeSpan.FromMinutes(3));
        var tokens = await Task.WhenAll(streams);
        foreach (var h in handles) h.Cancel(); // after the end: no effect

        var stats = engine.GetStats();
        var byStatus = results.GroupBy(x => x.Status).ToDictionary(g => g.Key, g => g.Count());
        TestContext.Out.WriteLine($"overlap={overlap}: " + string.Join(", ", byStatus.Select(kv => $"{kv.Key} {kv.Value}")) +
            $"; preemptions {stats.Preemptions}, prefix hit rate {stats.PrefixHitRate:P0}, {stats.Steps} steps");
        Assert.That(stats.Submitted, Is.EqualTo(10_000));
        Assert.That(stats.Finished + stats.Cancelled + stats.DeadlineExceeded + stats.Overloaded + stats.Invalid + stats.Failed, Is.EqualTo(10_000),
            "every request got exactly one final status");
        Assert.That(stats.Failed + stats.Invalid, Is.Zero);
        Assert.That(byStatus.GetValueOrDefault(RequestStatus.Cancelled), Is.GreaterThan(0));
        Assert.That(byStatus.GetValueOrDefault(RequestStatus.DeadlineExceeded), Is.GreaterThan(0));
        Assert.That(stats.Preemptions, Is.GreaterThan(0));
        Assert.That(stats.PrefixHits, Is.GreaterThan(0));
        for (int i = 0; i < results.Length; i++)
        {
            Assert.That(tokens[i], Is.EqualTo(results[i].OutputTokens), $"request {i}: stream and result agree");
            if (results[i].Status == RequestStatus.Finished)
                Assert.That(results[i].Finish is FinishReason.Length or FinishReason.Eos, Is.True);
        }
        Assert.That(stats.RunningRequests + stats.WaitingRequests, Is.Zero);
        Assert.That(stats.KvBlocksUsed, Is.Zero, "every KV block is free again");
        Assert.That(stats.KvBlocksFree + stats.KvBlocksCachedIdle, Is.EqualTo(stats.KvBlocksTotal));
        Assert.That(stats.WaitingTokens, Is.Zero);
    }

    [Test]
    public async Task TheSameRequestGetsTheSameTokensAloneOrPreempted()
    {
        var r = new Random(5);
        var reqs = Enumerable.Range(0, 40).Select(_ => new EngineRequest
        {
            Prompt = Prompt(r, 10 + r.Next(40)),
            Sampling = new SamplingParams { MaxTokens = 20 + r.Next(40), IgnoreEos = true },
        }).ToList();
        int[][] alone;
        using (var sim = Sim(0))
        using (var e = new InferenceEngine(sim, new EngineOptions { MaxSeqs = 1 }))
        {
            e.Start();
            alone = [.. (await Task.WhenAll(reqs.Select(q => e.Submit(q).Completion))).Select(x => x.OutputTokens)];
        }
        using (var sim = Sim(0, kvBlocks: 24))
        using (var e = new InferenceEngine(sim, new EngineOptions { MaxSeqs = 32, AdmissionReserveBlocks = 1 }))
        {
            e.Start();
            var res = await Task.WhenAll(reqs.Select(q => e.Submit(q).Completion));
            Assert.That(e.GetStats().Preemptions, Is.GreaterThan(0));
            for (int i = 0; i < reqs.Count; i++) Assert.That(res[i].OutputTokens, Is.EqualTo(alone[i]), $"request {i}");
        }
    }

    [Test]
    public async Task DeadlineEndsARequestAtItsDeadlineAndNotBefore()
    {
        // Time scale 10: a 1B decode step takes ~7 ms. EOS can end requests early here, and the first requests end
        // after 5 tokens, so the engine expects about 5: a request with max_tokens 1000 looks feasible, is admitted,
        // and runs on past its expectation (the simulated device never samples token 7) until its deadline stops it.
        using var sim = Sim(10);
        using var engine = new InferenceEngine(sim, new EngineOptions { EosTokenIds = [7] });
        engine.Start();
        var r = new Random(1);
        for (int i = 0; i < 3; i++)
            Assert.That((await engine.Submit(new EngineRequest { Prompt = Prompt(r, 20), Sampling = new() { MaxTokens = 5 } }).Completion).Status, Is.EqualTo(RequestStatus.Finished));
        var late = engine.Submit(new EngineRequest { Prompt = Prompt(r, 20), Sampling = new() { MaxTokens = 1000 }, Deadline = TimeSpan.FromMilliseconds(300) });
        var onTime = engine.Submit(new EngineRequest { Prompt = Prompt(r, 20), Sampling = new() { MaxTokens = 5, IgnoreEos = true }, Deadline = TimeSpan.FromSeconds(5) });
        var a = await late.Completion;
        var b = await onTime.Completion;
        Assert.That(a.Status, Is.EqualTo(RequestStatus.DeadlineExceeded));
        // Ended at the deadline, or up to a step before it once even one more token would be late.
        Assert.That(a.ErrorCode, Is.AnyOf("request.deadline_exceeded", "request.deadline_unreachable"), a.Message);
        double at = a.Timestamps.EndToEnd;
        double step = sim.TimeSeconds(2, 2, 2, 1000, 1000) * 10;
        Assert.That(at, Is.GreaterThanOrEqualTo(0.300 - 2 * step), "not before its last step");
        Assert.That(at, Is.LessThan(0.300 + 2 * step + 0.1), "within about a step of it");
        Assert.That(a.OutputTokens.Length, Is.InRange(6, 999), "the tokens produced so far were streamed");
        Assert.That(b.Status, Is.EqualTo(RequestStatus.Finished), "a request that finishes in time is not touched");
        Assert.That(engine.GetStats().KvBlocksUsed, Is.Zero);
    }

    [Test]
    public async Task ARunningRequestThatCannotMakeItsDeadlineIsEndedEarly()
    {
        // 1000 tokens that cannot end early, at ~7 ms a step, cannot finish in 300 ms: once the engine has measured its
        // step time it ends the request instead of spending ~40 more steps on it.
        using var sim = Sim(10);
        using var engine = new InferenceEngine(sim);
        engine.Start();
        var r = new Random(1);
        var hopeless = await engine.Submit(new EngineRequest { Prompt = Prompt(r, 20), Sampling = new() { MaxTokens = 1000, IgnoreEos = true }, Deadline = TimeSpan.FromMilliseconds(300) }).Completion;
        Assert.That(hopeless.Status, Is.EqualTo(RequestStatus.DeadlineExceeded));
        Assert.That(hopeless.ErrorCode, Is.EqualTo("request.deadline_unreachable"));
        Assert.That(hopeless.Timestamps.EndToEnd, Is.LessThan(0.150), "ended long before its deadline");
        Assert.That(hopeless.OutputTokens.Length, Is.InRange(1, 10));
        var st = engine.GetStats();
        Assert.That(st.WastedRows, Is.EqualTo(20 + hopeless.OutputTokens.Length - 1).Within(2), "its rows are counted as wasted");
        Assert.That(st.KvBlocksUsed, Is.Zero);

        // Now that the step time is known, the same request is refused at the door: nothing is spent on it.
        var refused = await engine.Submit(new EngineRequest { Prompt = Prompt(r, 20), Sampling = new() { MaxTokens = 1000, IgnoreEos = true }, Deadline = TimeSpan.FromMilliseconds(300) }).Completion;
        Assert.That(refused.Status, Is.EqualTo(RequestStatus.Overloaded), refused.Message);
        Assert.That(refused.ErrorCode, Is.EqualTo("engine.deadline_unmeetable"));
        Assert.That(refused.RetryAfter, Is.GreaterThan(TimeSpan.Zero));
        Assert.That(engine.GetStats().RowsComputed, Is.EqualTo(st.RowsComputed), "no step ran for it");
    }

    [Test]
    public async Task QueueBoundsRejectWithRetryAfterOnlyWhenFull()
    {
        using var sim = Sim(0);
        using var engine = new InferenceEngine(sim, new EngineOptions { MaxWaitingRequests = 3, MaxWaitingTokens = 100 });
        var r = new Random(2);
        // Not started: everything submitted waits.
        var accepted = Enumerable.Range(0, 3).Select(_ => engine.Submit(new EngineRequest { Prompt = Prompt(r, 20), Sampling = new() { MaxTokens = 3 } })).ToList();
        Assert.That(accepted.All(h => !h.Completion.IsCompleted), Is.True, "three fit");
        var full = await engine.Submit(new EngineRequest { Prompt = Prompt(r, 20) }).Completion;
        Assert.That(full.Status, Is.EqualTo(RequestStatus.Overloaded));
        Assert.That(full.ErrorCode, Is.EqualTo("engine.queue_full"));
        Assert.That(full.RetryAfter, Is.GreaterThan(TimeSpan.Zero));

        using var sim2 = Sim(0);
        using var e2 = new InferenceEngine(sim2, new EngineOptions { MaxWaitingRequests = 10, MaxWaitingTokens = 100 });
        var t1 = e2.Submit(new EngineRequest { Prompt = Prompt(r, 60) });
        var t2 = await e2.Submit(new EngineRequest { Prompt = Prompt(r, 41) }).Completion;
        Assert.That(t2.ErrorCode, Is.EqualTo("engine.queue_tokens_full"), "60 + 41 waiting tokens exceed 100");
        var t3 = e2.Submit(new EngineRequest { Prompt = Prompt(r, 40) });
        Assert.That(t3.Completion.IsCompleted, Is.False, "60 + 40 fit exactly");

        engine.Start();
        e2.Start();
        foreach (var h in accepted.Append(t1).Append(t3)) Assert.That((await h.Completion).Status, Is.EqualTo(RequestStatus.Finished));
        Assert.That(engine.GetStats().Overloaded, Is.EqualTo(1));
    }

    [Test]
    public async Task AdmissionRejectsDeadlinesTheQueueCannotMeet()
    {
        // A slow device (time scale 20) and 64 long prompts queue up; once the engine has measured how fast it drains
        // its queue, a deadline below the estimated wait is refused at once and one well above it is accepted.
        using var sim = Sim(20);
        // No queue budget here: a request without a deadline waits however long the queue is (EngineOverloadTests
        // covers the budget).
        using var engine = new InferenceEngine(sim, new EngineOptions { MaxSeqs = 4, MaxBatchedTokens = 256, QueueInterval = TimeSpan.Zero });
        engine.Start();
        var r = new Random(3);
        var backlog = Enumerable.Range(0, 64).Select(_ => engine.Submit(new EngineRequest { Prompt = Prompt(r, 200), Sampling = new() { MaxTokens = 2, IgnoreEos = true } })).ToList();
        var sw = Stopwatch.StartNew();
        while (engine.EstimatedQueueWait(Priority.Interactive) == TimeSpan.Zero && sw.Elapsed < TimeSpan.FromSeconds(20)) await Task.Delay(10);
        var est = engine.EstimatedQueueWait(Priority.Interactive);
        TestContext.Out.WriteLine($"estimated queue wait {est.TotalMilliseconds:F0} ms with {engine.GetStats().WaitingRequests} waiting");
        Assert.That(est, Is.GreaterThan(TimeSpan.FromMilliseconds(100)));

        var refused = await engine.Submit(new EngineRequest { Prompt = Prompt(r, 10), Deadline = est / 4 }).Completion;
        Assert.That(refused.Status, Is.EqualTo(RequestStatus.Overloaded));
        Assert.That(refused.ErrorCode, Is.EqualTo("engine.deadline_unmeetable"));
        Assert.That(refused.RetryAfter, Is.GreaterThan(TimeSpan.Zero));
        var accepted = engine.Submit(new EngineRequest { Prompt = Prompt(r, 10), Sampling = new() { MaxTokens = 2, IgnoreEos = true }, Deadline = est * 4 + TimeSpan.FromSeconds(5) });
        var noDeadline = engine.Submit(new EngineRequest { Prompt = Prompt(r, 10), Sampling = new() { MaxTokens = 2, IgnoreEos = true } });
        Assert.That((await accepted.Completion).Status, Is.EqualTo(RequestStatus.Finished));
        Assert.That((await noDeadline.Completion).Status, Is.EqualTo(RequestStatus.Finished), "no deadline: never refused for wait");
        await Task.WhenAll(backlog.Select(b => b.Completion));
    }

    [Test]
    public async Task BatchClassIsPreemptedBeforeInteractive()
    {
        // 40 blocks: the 4 interactive requests (8 blocks each at full length) always fit; the 6 batch ones do not.
        using var sim = Sim(0.05, kvBlocks: 40);
        using var engine = new InferenceEngine(sim, new EngineOptions { MaxSeqs = 16, AdmissionReserveBlocks = 1 });
        var r = new Random(4);
        var batch = Enumerable.Range(0, 6).Select(_ => engine.Submit(new EngineRequest { Prompt = Prompt(r, 30), Sampling = new() { MaxTokens = 90, IgnoreEos = true }, Priority = Priority.Batch })).ToList();
        var inter = Enumerable.Range(0, 4).Select(_ => engine.Submit(new EngineRequest { Prompt = Prompt(r, 30), Sampling = new() { MaxTokens = 90, IgnoreEos = true }, Priority = Priority.Interactive })).ToList();
        engine.Start();
        var b = await Task.WhenAll(batch.Select(h => h.Completion));
        var i = await Task.WhenAll(inter.Select(h => h.Completion));
        TestContext.Out.WriteLine($"preemptions: batch {b.Sum(x => x.Preemptions)}, interactive {i.Sum(x => x.Preemptions)}");
        Assert.That(b.Sum(x => x.Preemptions), Is.GreaterThan(0));
        Assert.That(i.Sum(x => x.Preemptions), Is.Zero);
        Assert.That(i.Max(x => x.Timestamps.Finished), Is.LessThan(b.Max(x => x.Timestamps.Finished)), "interactive work finishes first");
    }

    [Test]
    public async Task InvalidRequestsAreRefusedWithStableCodes()
    {
        using var sim = Sim(0);
        using var engine = new InferenceEngine(sim);
        engine.Start();
        async Task<string?> Code(EngineRequest q) => (await engine.Submit(q).Completion) is { Status: RequestStatus.Invalid } res ? res.ErrorCode : "accepted";
        Assert.That(await Code(new EngineRequest { Prompt = Array.Empty<int>() }), Is.EqualTo("prompt.empty"));
        Assert.That(await Code(new EngineRequest { Prompt = new int[8192] }), Is.EqualTo("prompt.too_long"));
        Assert.That(await Code(new EngineRequest { Prompt = new[] { 1, -5 } }), Is.EqualTo("prompt.invalid_token"));
        Assert.That(await Code(new EngineRequest { Prompt = new[] { 1, 200_000 } }), Is.EqualTo("prompt.invalid_token"));
        Assert.That(await Code(new EngineRequest { Prompt = new[] { 1 }, Sampling = new() { TopP = 0 } }), Is.EqualTo("sampling.invalid"));
        Assert.That(await Code(new EngineRequest { Prompt = new[] { 1 }, Deadline = TimeSpan.Zero }), Is.EqualTo("request.invalid_deadline"));
        Assert.That(await Code(new EngineRequest { Prompt = new[] { 1 }, Sampling = new() { Stop = ["x"] } }), Is.EqualTo("request.stop_needs_tokenizer"));
        Assert.That(await Code(new EngineRequest { Prompt = new[] { 1 }, Sampling = new() { MaxTokens = 2 } }), Is.EqualTo("accepted"));
        Assert.That(engine.GetStats().Invalid, Is.EqualTo(7));
    }

    [TestCaseSource(typeof(FastServe.Tests.Protocol.RequestRulesTests), nameof(FastServe.Tests.Protocol.RequestRulesTests.BrokenParams))]
    public async Task BrokenRequestRulesGetTheSameCodesAsOnTheWire(RequestParams p, string code)
    {
        using var sim = Sim(0);
        using var engine = new InferenceEngine(sim);
        engine.Start();
        var r = await engine.Submit(new EngineRequest
        {
            Prompt = new[] { 1, 2 },
            Sampling = new() { MaxTokens = p.MaxTokens, Temperature = p.Temperature, TopP = p.TopP, TopK = p.TopK },
            Deadline = p.DeadlineMs != 0 ? TimeSpan.FromMilliseconds(p.DeadlineMs) : null,
        }).Completion;
        Assert.That((r.Status, r.ErrorCode), Is.EqualTo((RequestStatus.Invalid, code)));
    }

    [Test]
    public async Task MaxTokensPastTheContextRunsToTheContext()
    {
        using var sim = Sim(0);
        using var engine = new InferenceEngine(sim);
        engine.Start();
        int ctx = sim.MaxContextLength;
        var r = await engine.Submit(new EngineRequest { Prompt = new[] { 1, 2 }, Sampling = new() { MaxTokens = ctx + 10, IgnoreEos = true } }).Completion;
        Assert.That(r.Status, Is.EqualTo(RequestStatus.Finished));
        Assert.That(r.Finish, Is.EqualTo(FinishReason.ContextFull));
    }

    [Test]
    public async Task DisposingTheEngineEndsEveryRequestWithShutdown()
    {
        var sim = Sim(50);
        var engine = new InferenceEngine(sim);
        engine.Start();
        var r = new Random(6);
        var hs = Enumerable.Range(0, 20).Select(_ => engine.Submit(new EngineRequest { Prompt = Prompt(r, 20), Sampling = new() { MaxTokens = 500, IgnoreEos = true } })).ToList();
        await Task.Delay(100);
        engine.Dispose();
        var res = await Task.WhenAll(hs.Select(h => h.Completion)).WaitAsync(TimeSpan.FromSeconds(30));
        Assert.That(res.All(x => x.Status == RequestStatus.Cancelled && x.ErrorCode == "engine.shutdown"), Is.True);
        Assert.That((await engine.Submit(new EngineRequest { Prompt = new[] { 1 } }).Completion).ErrorCode, Is.EqualTo("engine.shutdown"));
        sim.Dispose();
    }
}
