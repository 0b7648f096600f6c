using System.Diagnostics;
using FastServe.Runtime;
using FastServe.Runtime.Generation;
using FastServe.Scheduler.Execution;
using FastServe.Scheduler.Sim;
using NUnit.Framework;

namespace FastServe.Tests.Sim;

public class SimStepExecutorTests
{
    private static readonly SimModelShape Shape = SimCostModelTests.OneBFp8;

    private static SimStepExecutor Fast(int kvBlocks = 1024, ulong seed = 7) =>
        new(Shape, SimDeviceProfile.H100Sxm, new SimOptions { KvBlocks = kvBlocks, TimeScale = 0, Seed = seed });

    // A device whose every step costs `seconds`: only the fixed overhead is non-negligible.
    private static SimStepExecutor FixedCost(double seconds) =>
        new(Shape, SimDeviceProfile.H100Sxm with { StepOverhead = seconds, PerSequenceOverhead = 0, MemoryBandwidth = 1e30, MatmulFlops = 1e30, MatmulFlopsBf16 = 1e30 },
            new SimOptions { KvBlocks = 64 });

    private static double Seconds(long ticks) => ticks / (double)Stopwatch.Frequency;

    // One decode row per sequence at `position`, blocks 0.. for each sequence (the cost model does not care about sharing).
    private static void FillDecode(StepBatch step, int sequences, int position, ulong keyBase, int[] table)
    {
        step.Clear();
        for (int s = 0; s < sequences; s++)
        {
            int seq = step.AddSequence(position, [s + 1], table);
            step.AddSample(step.Layout.RowStart(seq), null, keyBase + (ulong)s, position + 1, null);
        }
    }

    [Test]
    public void ReportsShapeAndLimits()
    {
        using var x = new SimStepExecutor(Shape, SimDeviceProfile.H100Sxm, new SimOptions());
        Assert.That(x.Name, Is.EqualTo("sim"));
        Assert.That(x.VocabSize, Is.EqualTo(128256));
        Assert.That(x.MaxInFlight, Is.EqualTo(2));
        Assert.That(x.MaxTokensPerStep, Is.EqualTo(8192));
        Assert.That(x.MaxSequencesPerStep, Is.EqualTo(256));
        Assert.That(x.MaxContextLength, Is.EqualTo(8192), "131072 from the config, capped");
        var kv = x.KvSpec;
        Assert.That((kv.Layers, kv.KvHeads, kv.HeadDim, kv.BlockSize, kv.DType), Is.EqualTo((16, 8, 64, 16, FastServe.Runtime.Backends.KvDType.BF16)));
        Assert.That(kv.BytesPerToken, Is.EqualTo(Shape.KvBytesPerToken));
        double free = (80L << 30) * 0.90 - Shape.ResidentWeightBytes;
        Assert.That(kv.NumBlocks, Is.EqualTo((int)Math.Floor(free / (16.0 * 32768))));
        Assert.That(kv.NumBlocks, Is.InRange(140_000, 150_000));
    }

    [Test]
    public void DerivedKvBlocksAreCappedAndExplicitOnesKept()
    {
        using var big = new SimStepExecutor(Shape, SimDeviceProfile.H100Sxm with { DeviceMemory = 1L << 50 }, new SimOptions());
        Assert.That(big.KvSpec.NumBlocks, Is.EqualTo(SimOptions.MaxDerivedKvBlocks));
        using var small = new SimStepExecutor(Shape, SimDeviceProfile.H100Sxm, new SimOptions { KvBlocks = 10 });
        Assert.That(small.KvSpec.NumBlocks, Is.EqualTo(10));
        var e = Assert.Throws<FastServeException>(() =>
            new SimStepExecutor(Shape, SimDeviceProfile.H100Sxm with { DeviceMemory = 1_700_000_000 }, new SimOptions()));
        Assert.That(e!.Code, Is.EqualTo("sim.insufficient_memory"));
    }

    [TestCase("BlockSize")]
    [TestCase("MaxTokensPerStep")]
    [TestCase("MaxSequencesPerStep")]
    [TestCase("MaxContextLength")]
    [TestCase("KvBlocks")]
    [TestCase("TimeScale")]
    public void BadOptionsAreNamed(string field)
    {
        var o = field switch
        {
            "BlockSize" => new SimOptions { BlockSize = 0 },
            "MaxTokensPerStep" => new SimOptions { MaxTokensPerStep = 0 },
            "MaxSequencesPerStep" => new SimOptions { MaxSequencesPerStep = -1 },
            "MaxContextLength" => new SimOptions { MaxContextLength = 200_000 },
            "KvBlocks" => new SimOptions { KvBlocks = -5 },
            _ => new SimOptions { TimeScale = double.NaN },
        };
        var e = Assert.Throws<FastServeException>(() => new SimStepExecutor(Shape, SimDeviceProfile.H100Sxm, o));
        Assert.That(e!.Code, Is.EqualTo("sim.invalid_option"));
        Assert.That(e.Path, Is.EqualTo("SimOptions." + field));
        var p = Assert.Throws<FastServeException>(() =>
            new SimStepExecutor(Shape, SimDeviceProfile.H100Sxm with { MemoryBandwidth = 0 }, new SimOptions()));
        Assert.That(p!.Code, Is.EqualTo("sim.invalid_profile"));
    }

    [Test]
    public void TokensDependOnlyOnSeedKeyAndPosition()
    {
        using var x = Fast();
        int[] table = [0, 1, 2, 3];
        // The same (key, position) alone, then in a batch of 64 at another slot: the same token and logprob.
        var one = new StepBatch(8, 8);
        one.AddSequence(10, [5], table);
        one.AddSample(0, null, 1000 + 17, 11, null);
        x.Launch(one);
        x.Wait(one);

        var many = new StepBatch(64, 64);
        FillDecode(many, 64, 10, 1000, table);
        x.Launch(many);
        x.Wait(many);
        Assert.That(many.OutToken[17], Is.EqualTo(one.OutToken[0]));
        Assert.That(many.OutLogprob[17], Is.EqualTo(one.OutLogprob[0]));
        Assert.That(one.OutToken[0], Is.EqualTo(SimStepExecutor.SampleToken(7, 1017, 11, 128256)));
        Assert.That(one.OutLogprob[0], Is.EqualTo(SimStepExecutor.SampleLogprob(7, 1017, 11)));

        var distinct = new HashSet<int>();
        for (int i = 0; i < 64; i++)
        {
            Assert.That(many.OutToken[i], Is.InRange(0, 128255));
            Assert.That(many.OutLogprob[i], Is.GreaterThan(-10f).And.LessThanOrEqualTo(0f));
            distinct.Add(many.OutToken[i]);
        }
        Assert.That(distinct.Count, Is.GreaterThanOrEqualTo(62), "different keys give different tokens");

        // Another position of the same key, and another seed, change the token (almost surely; checked over many).
        int samePos = 0, sameSeed = 0;
        for (ulong k = 0; k < 1000; k++)
        {
            int t = SimStepExecutor.SampleToken(7, k, 50, 128256);
            if (t == SimStepExecutor.SampleToken(7, k, 51, 128256)) samePos++;
            if (t == SimStepExecutor.SampleToken(8, k, 50, 128256)) sameSeed++;
        }
        Assert.That(samePos + sameSeed, Is.LessThanOrEqualTo(2));
    }

    [Test]
    public void TokensCoverTheVocabularyUniformly()
    {
        const int vocab = 1000, n = 200_000;
        var counts = new int[vocab];
        for (int i = 0; i < n; i++) counts[SimStepExecutor.SampleToken(3, (ulong)(i / 100), i % 100, vocab)]++;
        Assert.That(counts.Min(), Is.GreaterThan(n / vocab / 2));
        Assert.That(counts.Max(), Is.LessThan(n / vocab * 2));
    }

    [Test]
    public void TopLogprobsStartWithTheSampledTokenAndDescend()
    {
        using var x = Fast();
        var step = new StepBatch(8, 8);
        var top = new TokenLogprob[5];
        step.AddSequence(0, [1, 2, 3], [0]);
        step.AddSample(2, null, 99, 3, top);
        x.Launch(step);
        x.Wait(step);
        Assert.That(top[0], Is.EqualTo(new TokenLogprob(step.OutToken[0], step.OutLogprob[0])));
        Assert.That(top.Select(t => t.Id).Distinct().Count(), Is.EqualTo(5));
        for (int j = 1; j < top.Length; j++)
        {
            Assert.That(top[j].Logprob, Is.LessThan(top[j - 1].Logprob));
            Assert.That(top[j].Id, Is.InRange(0, 128255));
        }
        Assert.That(top.Sum(t => Math.Exp(t.Logprob)), Is.LessThanOrEqualTo(1.0));
    }

    private static string LaunchInvalid(Action<StepBatch> fill)
    {
        using var x = Fast(kvBlocks: 100);
        var step = new StepBatch(64, 8);
        fill(step);
        x.Launch(step);
        var e = Assert.Throws<InvalidOperationException>(() => x.Wait(step))!;
        // The executor stays usable after a bad step.
        var ok = new StepBatch(8, 8);
        ok.AddSequence(0, [1], [0]);
        x.Launch(ok);
        Assert.DoesNotThrow(() => x.Wait(ok));
        return e.Message;
    }

    [Test]
    public void ValidationCatchesAShortBlockTable()
    {
        // Positions 30..33 need blocks 0, 1 and 2 (block size 16); the table has 2.
        string m = LaunchInvalid(s => s.AddSequence(30, [1, 2, 3, 4], [5, 6]));
        Assert.That(m, Does.Contain("needs 3 blocks").And.Contain("has 2"));
        // Exactly covering is fine: positions 28..31 need 2 blocks.
        using var x = Fast(kvBlocks: 100);
        var step = new StepBatch(8, 8);
        step.AddSequence(28, [1, 2, 3, 4], [5, 6]);
        x.Launch(step);
        Assert.DoesNotThrow(() => x.Wait(step));
    }

    [Test]
    public void ValidationCatchesOutOfRangeBlockIds()
    {
        Assert.That(LaunchInvalid(s => s.AddSequence(20, [1], [3, 100])), Does.Contain("block 100, outside 0..99"));
        Assert.That(LaunchInvalid(s => s.AddSequence(0, [1], [-1])), Does.Contain("block -1"));
    }

    [Test]
    public void ValidationCatchesBadTokensSamplesAndLimits()
    {
        Assert.That(LaunchInvalid(s => s.AddSequence(0, [1, 128256], [0])), Does.Contain("row 1 has token 128256"));
        Assert.That(LaunchInvalid(s => { s.AddSequence(0, [1, 2], [0]); s.AddSample(2, null, 1, 3, null); }), Does.Contain("reads row 2"));
        Assert.That(LaunchInvalid(s => { s.AddSequence(0, [1, 2], [0]); s.AddSample(1, null, 1, 1, null); }), Does.Contain("position 1 but row 1 is at position 1"));
        Assert.That(LaunchInvalid(s => s.AddSequence(8191, [1, 2], Enumerable.Range(0, 100).ToArray())), Does.Contain("past MaxContextLength"));
        Assert.That(LaunchInvalid(_ => { }), Does.Contain("no sequences"));
    }

    [Test]
    public void LaunchAndWaitMisuseThrows()
    {
        using var x = Fast();
        var a = new StepBatch(8, 8); a.AddSequence(0, [1], [0]);
        var b = new StepBatch(8, 8); b.AddSequence(0, [1], [1]);
        var c = new StepBatch(8, 8); c.AddSequence(0, [1], [2]);
        Assert.Throws<InvalidOperationException>(() => x.Wait(a), "not launched");
        x.Launch(a);
        Assert.Throws<InvalidOperationException>(() => x.Launch(a), "already in flight");
        x.Launch(b);
        Assert.Throws<InvalidOperationException>(() => x.Launch(c), "a third in flight");
        x.Wait(a);
        x.Launch(c);
        x.Wait(b);
        x.Wait(c);
        Assert.Throws<InvalidOperationException>(() => x.Wait(c), "waited twice");
    }

    [Test]
    public void TimeScaleZeroNeverWaitsAndAllocatesNothing()
    {
        using var x = Fast();
        var steps = new[] { new StepBatch(256, 256), new StepBatch(256, 256) };
        int[] table = Enumerable.Range(0, 128).ToArray();    // 2048 positions
        var top = new TokenLogprob[4];
        for (int i = 0; i < 2; i++) FillDecode(steps[i], 256, 2000, (ulong)i << 20, table);
        steps[0].SampleTop[3] = top;

        x.Launch(steps[0]);           // warm up every path once
        x.Wait(steps[0]);
        var sw = Stopwatch.StartNew();
        long allocated = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 2000; i++)
        {
            var s = steps[i & 1];
            if (i >= 2) x.Wait(s);
            x.Launch(s);
        }
        x.Wait(steps[0]);
        x.Wait(steps[1]);
        long allocatedAfter = GC.GetAllocatedBytesForCurrentThread();
        sw.Stop();
        Assert.That(allocatedAfter - allocated, Is.Zero, "Launch/Wait allocate");
        // 2000 modelled steps of ~3 ms each: with TimeScale 0 they take no modelled time at all.
        Assert.That(sw.Elapsed.TotalSeconds, Is.LessThan(5));
        Assert.That(steps[1].EndTicks, Is.EqualTo(steps[1].StartTicks));
        var st = x.Stats;
        Assert.That(st.Steps, Is.EqualTo(2001));
        Assert.That(st.Rows, Is.EqualTo(2001 * 256));
        Assert.That(st.Samples, Is.EqualTo(2001 * 256));
        Assert.That(st.BusySeconds, Is.Zero);
        Assert.That(st.ModelSeconds, Is.EqualTo(2001 * x.TimeSeconds(steps[0])).Within(1e-6));
        TestContext.Out.WriteLine($"{sw.Elapsed.TotalMilliseconds * 1000 / 2000:F1} µs of CPU per 256-sequence step (launch + wait)");
    }

    [Test]
    public void StallsFreezeTheDeviceNowAndThen()
    {
        // Stalls every 30 ms on average, 80 ms each, on an otherwise free device: over about half a second of steps
        // some step waits out a stall, and the stalls account for the extra wall time.
        using var x = new SimStepExecutor(Shape, SimDeviceProfile.H100Sxm,
            new SimOptions { KvBlocks = 1024, TimeScale = 0, Seed = 3, StallEverySeconds = 0.03, StallSeconds = 0.08 });
        var step = new StepBatch(256, 256);
        int[] table = Enumerable.Range(0, 8).ToArray();
        FillDecode(step, 4, 100, 1, table);
        double longest = 0;
        var sw = Stopwatch.StartNew();
        while (sw.Elapsed.TotalSeconds < 0.5)
        {
            x.Launch(step);
            x.Wait(step);
            longest = Math.Max(longest, Seconds(step.EndTicks - step.LaunchTicks));
        }
        Assert.That(x.Stalls, Is.GreaterThanOrEqualTo(2));
        Assert.That(longest, Is.GreaterThanOrEqualTo(0.079), "a step waited out a whole stall");
        Assert.That(sw.Elapsed.TotalSeconds, Is.GreaterThanOrEqualTo(0.08 * (x.Stalls - 1)), "stalls really block");

        using var calm = Fast();
        Assert.That(calm.Stalls, Is.Zero);
        Assert.Throws<FastServeException>(() => new SimStepExecutor(Shape, SimDeviceProfile.H100Sxm, new SimOptions { StallEverySeconds = -1 }));
    }

    [Test]
    public void TwoMillisecondStepWaitsAtLeastTwoMilliseconds()
    {
        using var x = FixedCost(2e-3);
        var step = new StepBatch(8, 8);
        step.AddSequence(0, [1], [0]);
        step.AddSample(0, null, 1, 1, null);
        Assert.That(x.TimeSeconds(step), Is.EqualTo(2e-3).Within(1e-9));
        for (int i = 0; i < 5; i++)
        {
            long before = Stopwatch.GetTimestamp();
            x.Launch(step);
            x.Wait(step);
            long after = Stopwatch.GetTimestamp();
            Assert.That(after, Is.GreaterThanOrEqualTo(step.EndTicks));
            Assert.That(Seconds(step.EndTicks - step.StartTicks), Is.EqualTo(2e-3).Within(1e-6));
            Assert.That(Seconds(after - before), Is.GreaterThanOrEqualTo(2e-3).And.LessThan(50e-3));
            TestContext.Out.WriteLine($"waited {Seconds(after - step.EndTicks) * 1e6:F0} µs past the end");
        }
        Assert.That(x.Stats.BusySeconds, Is.EqualTo(10e-3).Within(1e-6));
    }

    [Test]
    public void BackToBackLaunchesQueue()
    {
        // 20 ms steps, after a warm-up, so that the two launches are surely closer together than one step.
        using var x = FixedCost(20e-3);
        var a = new StepBatch(8, 8); a.AddSequence(0, [1], [0]);
        var b = new StepBatch(8, 8); b.AddSequence(0, [1], [1]);
        x.Launch(a);
        x.Wait(a);
        long t0 = Stopwatch.GetTimestamp();
        x.Launch(a);
        x.Launch(b);
        Assert.That(a.StartTicks, Is.EqualTo(a.LaunchTicks), "an idle device starts at once");
        Assert.That(b.LaunchTicks, Is.LessThan(a.EndTicks));
        Assert.That(b.StartTicks, Is.EqualTo(a.EndTicks), "the second step starts when the first ends");
        Assert.That(Seconds(b.EndTicks - b.StartTicks), Is.EqualTo(20e-3).Within(1e-6));
        x.Wait(a);
        Assert.That(Stopwatch.GetTimestamp(), Is.LessThan(b.EndTicks), "waiting for the first does not wait for the second");
        x.Wait(b);
        Assert.That(Seconds(Stopwatch.GetTimestamp() - t0), Is.GreaterThanOrEqualTo(40e-3).And.LessThan(500e-3));

        // Launched after the device went idle, a step starts at its launch.
        Thread.Sleep(5);
        x.Launch(a);
        Assert.That(a.StartTicks, Is.EqualTo(a.LaunchTicks));
        x.Wait(a);
    }

    [Test]
    public void HalfTimeScaleHalvesTheInterval()
    {
        using var x = new SimStepExecutor(Shape, SimDeviceProfile.H100Sxm, new SimOptions { KvBlocks = 64, TimeScale = 0.5 });
        var s = new StepBatch(8, 8);
        s.AddSequence(0, [1], [0]);
        s.AddSample(0, null, 1, 1, null);
        x.Launch(s);
        x.Wait(s);
        Assert.That(Seconds(s.EndTicks - s.StartTicks), Is.EqualTo(0.5 * x.TimeSeconds(s)).Within(1e-6));
        Assert.That(x.Stats.ModelSeconds, Is.EqualTo(x.TimeSeconds(s)).Within(1e-12));
    }
}
