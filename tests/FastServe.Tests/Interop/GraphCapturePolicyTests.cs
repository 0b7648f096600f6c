using FastServe.Interop;
using NUnit.Framework;

namespace FastServe.Tests.Interop;

/// <summary>
/// When the cuda backend captures decode graphs (<see cref="GraphCapturePolicy"/>): never before a key ran eagerly,
/// never twice for a key that has a graph, spaced out by the duty cycle, and which key an idle gap should take.
/// Times are seconds on a simulated clock.
/// </summary>
public class GraphCapturePolicyTests
{
    [Test]
    public void RejectsBadSettings()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => new GraphCapturePolicy(eagerStepsBeforeCapture: 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => new GraphCapturePolicy(dutyCycle: 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => new GraphCapturePolicy(dutyCycle: 1.5));
        Assert.Throws<ArgumentOutOfRangeException>(() => new GraphCapturePolicy(dutyCycle: double.NaN));
    }

    [Test]
    public void DutyCycleComesFromTheEnvironmentWithAClearError()
    {
        Assert.That(GraphCapturePolicy.DutyCycleFromEnvironment(_ => null), Is.EqualTo(0.25));
        Assert.That(GraphCapturePolicy.DutyCycleFromEnvironment(_ => " 1 "), Is.EqualTo(1.0));
        Assert.That(GraphCapturePolicy.DutyCycleFromEnvironment(_ => "0.5"), Is.EqualTo(0.5));
        foreach (var bad in new[] { "0", "-0.1", "1.5", "half", "NaN" })
        {
            var e = Assert.Throws<FastServe.Runtime.FastServeException>(() => GraphCapturePolicy.DutyCycleFromEnvironment(n => n == "FASTSERVE_CUDA_CAPTURE_DUTY" ? bad : null))!;
            Assert.That(e.Code, Is.EqualTo("cuda.invalid_capture_duty"));
            Assert.That(e.Message, Does.Contain("FASTSERVE_CUDA_CAPTURE_DUTY=" + bad));
        }
    }

    [Test]
    public void CapturesOnlyAfterTheEagerStepsAndOnlyOncePerKey()
    {
        var p = new GraphCapturePolicy(eagerStepsBeforeCapture: 2, dutyCycle: 1);
        Assert.That(p.ShouldCapture(8, 0), Is.False, "never ran: its buffers are not grown yet");
        p.OnEager(8);
        Assert.That(p.ShouldCapture(8, 0), Is.False);
        p.OnEager(8);
        Assert.That(p.ShouldCapture(8, 0), Is.True);
        p.OnCapture(8, 0, 0.004, captured: true);
        Assert.That(p.ShouldCapture(8, 1), Is.False, "already has a graph");
        Assert.That(p.Stats, Is.EqualTo(new GraphCaptureStats(1, 1, 0.004, 0.004, 0)));
        Assert.That(p.Deferred, Is.Zero, "not due is not deferred");
    }

    [Test]
    public void DutyCycleSpacesCapturesAndCountsDeferredSteps()
    {
        var p = new GraphCapturePolicy(dutyCycle: 0.25);
        foreach (int k in new[] { 1, 2, 4 }) p.OnEager(k);
        Assert.That(p.ShouldCapture(1, 10.0), Is.True, "the first capture is never held back");
        p.OnCapture(1, 10.0, 10.010, captured: true);
        // 10 ms of capture at 25%: the next one no sooner than 30 ms after it ended.
        Assert.That(p.ShouldCapture(2, 10.020), Is.False);
        Assert.That(p.ShouldCapture(4, 10.0399), Is.False);
        Assert.That(p.Deferred, Is.EqualTo(2));
        Assert.That(p.ShouldCapture(2, 10.0401), Is.True);
        p.OnCapture(2, 10.0401, 10.0421, captured: true);
        Assert.That(p.ShouldCapture(4, 10.045), Is.False, "2 ms of capture hold the next one back 6 ms");
        Assert.That(p.ShouldCapture(4, 10.0482), Is.True);
        Assert.That(p.CaptureSeconds, Is.EqualTo(0.012).Within(1e-9));
        Assert.That(p.LongestCaptureSeconds, Is.EqualTo(0.010).Within(1e-9));
    }

    [Test]
    public void RefusedCapturesCostTimeButNoGraphAndDroppedGraphsAreRecaptured()
    {
        var p = new GraphCapturePolicy(dutyCycle: 0.5);
        p.OnEager(16);
        p.OnCapture(16, 1, 1.25, captured: false);
        Assert.That(p.Stats, Is.EqualTo(new GraphCaptureStats(0, 0, 0.25, 0.25, 0)));
        Assert.That(p.ShouldCapture(16, 1.375), Is.False, "a refused capture took its time too");
        Assert.That(p.ShouldCapture(16, 1.5), Is.True);
        p.OnCapture(16, 1.5, 1.5625, captured: true);
        Assert.That(p.CapturedKeys, Is.EqualTo(1));
        p.OnDropped(16);
        Assert.That(p.CapturedKeys, Is.Zero);
        Assert.That(p.ShouldCapture(16, 2), Is.True, "a dropped graph is captured again");
        p.OnCapture(16, 2, 2.001, captured: true);
        Assert.That(p.Stats.CapturedKeys, Is.EqualTo(1));
        Assert.That(p.Stats.Captures, Is.EqualTo(2));
        p.OnDropped(16);
        p.OnDropped(16);
        Assert.That(p.CapturedKeys, Is.Zero, "dropping a key without a graph changes nothing");
    }

    [Test]
    public void IdleGapTakesTheHottestDueKeyWithoutAGraph()
    {
        var p = new GraphCapturePolicy(eagerStepsBeforeCapture: 2);
        Assert.That(p.NextIdleKey(), Is.EqualTo(-1));
        for (int i = 0; i < 5; i++) p.OnEager(8);
        for (int i = 0; i < 5; i++) p.OnEager(4);
        for (int i = 0; i < 9; i++) p.OnEager(32);
        p.OnEager(1); // not due: one eager step of two
        Assert.That(p.NextIdleKey(), Is.EqualTo(32));
        p.OnCapture(32, 0, 1, captured: true);
        Assert.That(p.NextIdleKey(), Is.EqualTo(4), "a tie goes to the smaller batch; the duty cycle does not hold idle captures back");
        for (int i = 0; i < 3; i++) p.OnCapture(4, 2, 3, captured: false);
        Assert.That(p.NextIdleKey(), Is.EqualTo(8), "a key refused as often as the shared policy allows is given up");
    }

    [Test]
    public void ClearForgetsKeysButKeepsTotals()
    {
        var p = new GraphCapturePolicy();
        p.OnEager(2);
        p.OnCapture(2, 0, 0.5, captured: true);
        p.Clear();
        Assert.That(p.CapturedKeys, Is.Zero);
        Assert.That(p.ShouldCapture(2, 0.6), Is.False, "after a restart a key must run eagerly again first");
        p.OnEager(2);
        Assert.That(p.ShouldCapture(2, 0.6), Is.True, "the duty cycle restarts too");
        Assert.That(p.Captures, Is.EqualTo(1));
        Assert.That(p.CaptureSeconds, Is.EqualTo(0.5));
    }

    // A replica starting under a load that rises and falls: the batch size climbs from 1 to 64 and back, four steps
    // at each size, so the 11 padded sizes (1, 2, 4, then multiples of 8) become due in quick succession. Eager steps
    // take 5 ms, a capture adds 20 ms. With the default 25% duty cycle no two captures come closer than 60 ms, so no
    // run of steps has captures stacked up, and every size still gets its graph.
    [Test]
    public void RampSpreadsCapturesAndStillCapturesEverySize()
    {
        var p = new GraphCapturePolicy();
        double now = 0, lastCaptureEnd = double.NegativeInfinity;
        var captured = new HashSet<int>();
        for (int step = 0; step < 4000; step++)
        {
            int t = step / 4 % 128;
            int n = t < 64 ? t + 1 : 128 - t;
            int key = n <= 4 ? (int)System.Numerics.BitOperations.RoundUpToPowerOf2((uint)n) : (n + 7) & ~7;
            if (captured.Contains(key))
            {
                now += 0.001; // a replay
                continue;
            }
            if (p.ShouldCapture(key, now))
            {
                Assert.That(now - lastCaptureEnd, Is.GreaterThanOrEqualTo(0.060 - 1e-9), $"step {step}: captures too close together");
                p.OnCapture(key, now, now + 0.020, captured: true);
                now += 0.020;
                lastCaptureEnd = now;
                captured.Add(key);
                continue;
            }
            p.OnEager(key);
            now += 0.005;
        }
        Assert.That(captured.Order(), Is.EqualTo(new[] { 1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64 }));
        Assert.That(p.CapturedKeys, Is.EqualTo(11));
        Assert.That(p.Deferred, Is.GreaterThan(0), "the ramp outran the duty cycle at least once");
        Assert.That(p.CaptureSeconds, Is.EqualTo(11 * 0.020).Within(1e-9));
    }
}
