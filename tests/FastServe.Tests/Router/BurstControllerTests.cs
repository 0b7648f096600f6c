using System.Diagnostics;
using NUnit.Framework;
using FastServe.Router.Burst;

namespace FastServe.Tests.Router;

/// <summary>Burst modes on a synthetic clock: the controller's holds and hysteresis (up one or two levels, down one at
/// a time, no flapping), pinning, and the modes' names and policies.</summary>
[TestFixture]
public sealed class BurstControllerTests
{
    private static long Ms(long ms) => ms * Stopwatch.Frequency / 1000;

    private static readonly long T0 = Ms(1_000_000);

    // Utilization thresholds written out (0.9/0.75 surge, 0.98/0.9 emergency) so the rules are checked on round
    // figures whatever the defaults are.
    private static readonly BurstOptions Thresholds = new()
    {
        SurgeEnterUtilization = 0.9, SurgeExitUtilization = 0.75, EmergencyEnterUtilization = 0.98, EmergencyExitUtilization = 0.9,
    };

    private static BurstController Controller(BurstMode initial = BurstMode.Normal) => new(Thresholds, initial);

    // The router's timer: one observation every `step` ms over [fromMs, toMs), all with the same load. The changes
    // seen, with the time (ms after T0) each came at.
    private static List<(long AtMs, BurstChange Change)> Run(BurstController c, double waitMs, double utilization,
        long fromMs, long toMs, long step = 20)
    {
        var seen = new List<(long, BurstChange)>();
        for (long t = fromMs; t < toMs; t += step)
            if (c.Observe(waitMs, utilization, T0 + Ms(t)) is { } change) seen.Add((t, change));
        return seen;
    }

    // ---------------------------------------------------------------- going up

    [Test]
    public void SurgeIsEnteredOnceItsConditionHasHeldForTheEnterHold()
    {
        var c = Controller();
        var changes = Run(c, 50, 0.95, 0, 2000);   // utilization over surge's 0.9, under emergency's 0.98
        Assert.That(changes, Has.Count.EqualTo(1));
        var (at, ch) = changes[0];
        Assert.That(at, Is.EqualTo(1000), "held from 0 ms: 1,000 ms later, not before");
        Assert.That(ch, Is.EqualTo(new BurstChange(BurstMode.Normal, BurstMode.Surge, "utilization 0.95 ≥ 0.90 for 1.0 s", false)));
        Assert.That((c.Mode, c.Changes, c.IsPinned), Is.EqualTo((BurstMode.Surge, 1, false)));

        var byWait = Controller();
        var w = Run(byWait, 612, 0.5, 0, 2000);
        Assert.That(w.Select(x => (x.AtMs, x.Change.Reason)), Is.EqualTo(new[] { (1000L, "estimated wait 612 ms ≥ 250 ms for 1.0 s") }));
    }

    [Test]
    public void ABreakInTheConditionRestartsTheEnterHold()
    {
        var c = Controller();
        Assert.That(Run(c, 300, 0.5, 0, 900), Is.Empty);
        Assert.That(Run(c, 200, 0.5, 900, 920), Is.Empty, "one observation under 250 ms");
        var changes = Run(c, 300, 0.5, 920, 3000);
        Assert.That(changes.Select(x => x.AtMs), Is.EqualTo(new[] { 1920L }), "a full second from the restart");
    }

    [Test]
    public void EmergencyIsEnteredStraightFromNormal()
    {
        var c = Controller();
        var changes = Run(c, 1500, 1.2, 0, 3000);
        Assert.That(changes, Has.Count.EqualTo(1));
        Assert.That((changes[0].AtMs, changes[0].Change.From, changes[0].Change.To), Is.EqualTo((1000L, BurstMode.Normal, BurstMode.Emergency)));
        Assert.That(changes[0].Change.Reason, Is.EqualTo("estimated wait 1,500 ms ≥ 1,000 ms for 1.0 s"));
        Assert.That(c.Changes, Is.EqualTo(1));

        // Surge's condition began first: surge at 1 s, emergency a second after its own began.
        var stepwise = Controller();
        var s = Run(stepwise, 50, 0.95, 0, 600).Concat(Run(stepwise, 50, 1.2, 600, 3000)).ToList();
        Assert.That(s.Select(x => (x.AtMs, x.Change.From, x.Change.To)), Is.EqualTo(new[]
        {
            (1000L, BurstMode.Normal, BurstMode.Surge),
            (1600L, BurstMode.Surge, BurstMode.Emergency),
        }));
        Assert.That(s[1].Change.Reason, Is.EqualTo("utilization 1.20 ≥ 0.98 for 1.0 s"));
    }

    // ---------------------------------------------------------------- going down

    [Test]
    public void TheModeComesDownOneLevelPerExitHold()
    {
        var c = Controller();
        Run(c, 1500, 1.2, 0, 1020);
        Assert.That(c.Mode, Is.EqualTo(BurstMode.Emergency));

        var changes = Run(c, 0, 0.1, 2000, 40_000);
        Assert.That(changes.Select(x => (x.AtMs, x.Change.From, x.Change.To)), Is.EqualTo(new[]
        {
            (12_000L, BurstMode.Emergency, BurstMode.Surge),
            // Surge's own exit hold starts with the next observation after the step down.
            (22_020L, BurstMode.Surge, BurstMode.Normal),
        }));
        Assert.That(changes[0].Change.Reason, Is.EqualTo("estimated wait 0 ms < 400 ms and utilization 0.10 < 0.90 for 10.0 s"));
        Assert.That(changes[1].Change.Reason, Is.EqualTo("estimated wait 0 ms < 100 ms and utilization 0.10 < 0.75 for 10.0 s"));
        Assert.That(c.Changes, Is.EqualTo(3));
    }

    [Test]
    public void LeavingEmergencyNeedsOnlyItsOwnExitThresholds()
    {
        // Wait 300 ms and utilization 0.8: calm for emergency (under 400 ms and 0.9), busy for surge.
        var c = Controller(BurstMode.Emergency);
        var changes = Run(c, 300, 0.8, 0, 60_000);
        Assert.That(changes.Select(x => (x.AtMs, x.Change.To)), Is.EqualTo(new[] { (10_000L, BurstMode.Surge) }));
        Assert.That(c.Mode, Is.EqualTo(BurstMode.Surge), "and stays there: 300 ms is not under surge's 100 ms");
    }

    // ---------------------------------------------------------------- hysteresis

    [Test]
    public void LoadBetweenTheThresholdsChangesNothing()
    {
        // Between exit and enter: wait 150 ms (100 … 250), utilization 0.8 (0.75 … 0.9). Neither level moves.
        foreach (var start in new[] { BurstMode.Normal, BurstMode.Surge })
        {
            var c = Controller(start);
            Assert.That(Run(c, 150, 0.8, 0, 60_000), Is.Empty, start.ToString());
            Assert.That(c.Mode, Is.EqualTo(start));
        }
    }

    [Test]
    public void LoadOscillatingAcrossTheThresholdsDoesNotFlap()
    {
        // 0.95 and 0.7 alternating every 2 s: surge is entered once and never left, since calm never lasts 10 s.
        var c = Controller();
        var changes = new List<(long, BurstChange)>();
        for (long t = 0; t < 120_000; t += 4000)
        {
            changes.AddRange(Run(c, 50, 0.95, t, t + 2000));
            changes.AddRange(Run(c, 50, 0.70, t + 2000, t + 4000));
        }
        Assert.That(changes.Select(x => x.Item1), Is.EqualTo(new[] { 1000L }));
        Assert.That((c.Mode, c.Changes), Is.EqualTo((BurstMode.Surge, 1)));

        // Spikes shorter than the enter hold never enter: 0.95 for 900 ms, 0.5 for 100 ms, over and over.
        var spiky = Controller();
        for (long t = 0; t < 60_000; t += 1000)
        {
            Assert.That(Run(spiky, 50, 0.95, t, t + 900), Is.Empty);
            Assert.That(Run(spiky, 50, 0.5, t + 900, t + 1000), Is.Empty);
        }
        Assert.That(spiky.Changes, Is.EqualTo(0));
    }

    [Test]
    public void ASignalThatIsNotANumberHoldsTheMode()
    {
        var c = Controller(BurstMode.Surge);
        Assert.That(Run(c, double.NaN, double.NaN, 0, 30_000), Is.Empty);
        Assert.That(Run(c, double.NaN, 0.1, 30_000, 60_000), Is.Empty, "a NaN wait is never calm");
        Assert.That(Run(Controller(), 0, double.NaN, 0, 30_000), Is.Empty);
    }

    // ---------------------------------------------------------------- pinning

    [Test]
    public void APinnedModeIgnoresLoadUntilUnpinned()
    {
        var c = Controller();
        var pinned = c.Pin(BurstMode.Emergency, T0);
        Assert.That(pinned, Is.EqualTo(new BurstChange(BurstMode.Normal, BurstMode.Emergency, "pinned to emergency by the operator", true)));
        Assert.That((c.Mode, c.IsPinned, c.Changes), Is.EqualTo((BurstMode.Emergency, true, 1)));
        Assert.That(c.Pin(BurstMode.Emergency, T0), Is.Null, "already there");

        Assert.That(Run(c, 0, 0.1, 0, 30_000), Is.Empty, "30 s of calm while pinned: no change");
        Assert.That(c.Mode, Is.EqualTo(BurstMode.Emergency));

        Assert.That(c.Pin(null, T0 + Ms(30_000)), Is.Null, "unpinning changes no mode by itself");
        Assert.That((c.Mode, c.IsPinned), Is.EqualTo((BurstMode.Emergency, false)));
        // The calm has held all along: automatic again, from emergency, one level at a time.
        var after = Run(c, 0, 0.1, 30_000, 50_000);
        Assert.That(after.Select(x => (x.AtMs, x.Change.To, x.Change.Pinned)), Is.EqualTo(new[]
        {
            (30_000L, BurstMode.Surge, false),
            (40_020L, BurstMode.Normal, false),
        }));
    }

    [Test]
    public void PinningNormalUnderLoadAndUnpinningLetsLoadDecideAgain()
    {
        var c = Controller();
        Assert.That(Run(c, 2000, 1.5, 0, 5000).Select(x => x.Change.To), Is.EqualTo(new[] { BurstMode.Emergency }));
        var down = c.Pin(BurstMode.Normal, T0 + Ms(5000));
        Assert.That((down!.From, down.To, down.Pinned), Is.EqualTo((BurstMode.Emergency, BurstMode.Normal, true)));
        Assert.That(Run(c, 2000, 1.5, 5000, 20_000), Is.Empty);
        c.Pin(null, T0 + Ms(20_000));
        var up = Run(c, 2000, 1.5, 20_000, 21_000);
        Assert.That(up.Select(x => (x.AtMs, x.Change.From, x.Change.To)), Is.EqualTo(new[] { (20_000L, BurstMode.Normal, BurstMode.Emergency) }));
        Assert.That(c.Changes, Is.EqualTo(3));
    }

    [Test]
    public void PinAndObserveFromTwoThreadsCountEveryChangeOnce()
    {
        var c = new BurstController(Thresholds with { EnterHoldMs = 0, ExitHoldMs = 0 });
        int returned = 0;
        var observer = Task.Run(() =>
        {
            for (int i = 0; i < 50_000; i++)
                if (c.Observe(i % 2 == 0 ? 2000 : 0, i % 2 == 0 ? 1.5 : 0.1, T0 + i) is not null) Interlocked.Increment(ref returned);
        });
        var admin = Task.Run(() =>
        {
            for (int i = 0; i < 5_000; i++)
                if (c.Pin(i % 3 == 0 ? null : (BurstMode)(i % 3), T0 + i) is not null) Interlocked.Increment(ref returned);
        });
        Task.WaitAll(observer, admin);
        Assert.That(c.Changes, Is.EqualTo(returned));
        Assert.That(returned, Is.GreaterThan(0));
    }

    // ---------------------------------------------------------------- options, names, policies

    [Test]
    public void OptionsOutOfRangeOrOrderAreRefused()
    {
        Assert.That(() => new BurstOptions().Validate(), Throws.Nothing);
        static void Refused(BurstOptions o, string name) =>
            Assert.That(() => new BurstController(o), Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains(name), name);
        Refused(new BurstOptions { SurgeExitWaitMs = 250 }, "SurgeExitWaitMs must be below SurgeEnterWaitMs");
        Refused(Thresholds with { EmergencyExitUtilization = 0.98 }, "EmergencyExitUtilization must be below EmergencyEnterUtilization");
        Refused(Thresholds with { SurgeExitUtilization = 0.8, SurgeEnterUtilization = 0.7 }, "SurgeExitUtilization must be below");
        Refused(new BurstOptions { SurgeEnterWaitMs = 1500 }, "SurgeEnterWaitMs must be at most EmergencyEnterWaitMs");
        Refused(Thresholds with { SurgeEnterUtilization = 0.99 }, "SurgeEnterUtilization must be at most EmergencyEnterUtilization");
        Refused(new BurstOptions { SurgeExitWaitMs = 500, SurgeEnterWaitMs = 600 }, "SurgeExitWaitMs must be at most EmergencyExitWaitMs");
        Refused(new BurstOptions { SurgeEnterWaitMs = double.NaN }, "SurgeEnterWaitMs");
        Refused(new BurstOptions { EmergencyEnterUtilization = -1 }, "EmergencyEnterUtilization");
        Refused(new BurstOptions { EnterHoldMs = -1 }, "EnterHoldMs");
        Refused(new BurstOptions { ExitHoldMs = 3_600_001 }, "ExitHoldMs");
    }

    [Test]
    public void ModeNamesRoundTrip()
    {
        foreach (var m in Enum.GetValues<BurstMode>())
        {
            Assert.That(BurstModeNames.TryParse(BurstModeNames.Of(m), out var back), Is.True);
            Assert.That(back, Is.EqualTo(m));
        }
        Assert.That(new[] { BurstMode.Normal, BurstMode.Surge, BurstMode.Emergency }.Select(BurstModeNames.Of),
            Is.EqualTo(new[] { "normal", "surge", "emergency" }));
        foreach (var bad in new[] { null, "", "Normal", "SURGE", "panic", " surge" })
            Assert.That(BurstModeNames.TryParse(bad, out _), Is.False, bad ?? "null");
    }

    [Test]
    public void TheDefaultPoliciesAreAsDocumented()
    {
        var p = new BurstPolicies();
        Assert.That(() => p.Validate(), Throws.Nothing);
        Assert.That(p.For(BurstMode.Normal), Is.EqualTo(new ModePolicy
        {
            MaxTokensCap = 0, DeadlineFactor = 1, DefaultDeadlineMs = 0, ShedBatch = false, ShadowOn = true, EscalationOn = true,
        }));
        Assert.That(p.For(BurstMode.Surge), Is.EqualTo(new ModePolicy
        {
            MaxTokensCap = 256, DeadlineFactor = 0.8, DefaultDeadlineMs = 0, ShedBatch = true, ShadowOn = false, EscalationOn = true,
        }));
        Assert.That(p.For(BurstMode.Emergency), Is.EqualTo(new ModePolicy
        {
            MaxTokensCap = 64, DeadlineFactor = 0.5, DefaultDeadlineMs = 2000, ShedBatch = true, ShadowOn = false, EscalationOn = false,
        }));
    }

    [Test]
    public void APolicyCapsTokensAndScalesDeadlines()
    {
        var p = new BurstPolicies();
        Assert.That((p.Normal.ApplyMaxTokens(4096), p.Surge.ApplyMaxTokens(4096), p.Surge.ApplyMaxTokens(100), p.Emergency.ApplyMaxTokens(256)),
            Is.EqualTo((4096u, 256u, 100u, 64u)));
        Assert.That((p.Normal.ApplyDeadlineMs(0), p.Normal.ApplyDeadlineMs(5000)), Is.EqualTo((0u, 5000u)));
        Assert.That((p.Surge.ApplyDeadlineMs(0), p.Surge.ApplyDeadlineMs(5000)), Is.EqualTo((0u, 4000u)));
        Assert.That((p.Emergency.ApplyDeadlineMs(0), p.Emergency.ApplyDeadlineMs(5000), p.Emergency.ApplyDeadlineMs(1)),
            Is.EqualTo((2000u, 2500u, 1u)), "no deadline gets the default; a deadline never drops to 0 (none)");
        Assert.That(p.Emergency.ApplyDeadlineMs(uint.MaxValue), Is.EqualTo(uint.MaxValue / 2));
    }

    [Test]
    public void APolicyOutOfRangeIsRefusedNamingItsMode()
    {
        static void Refused(BurstPolicies p, string name) =>
            Assert.That(() => p.Validate(), Throws.InstanceOf<ArgumentOutOfRangeException>().With.Property("ParamName").EqualTo(name), name);
        Refused(new BurstPolicies { Surge = BurstPolicies.DefaultSurge with { DeadlineFactor = 0 } }, "Surge.DeadlineFactor");
        Refused(new BurstPolicies { Emergency = BurstPolicies.DefaultEmergency with { DeadlineFactor = 1.5 } }, "Emergency.DeadlineFactor");
        Refused(new BurstPolicies { Normal = new ModePolicy { MaxTokensCap = -1 } }, "Normal.MaxTokensCap");
        Refused(new BurstPolicies { Surge = new ModePolicy { MaxTokensCap = 1 << 17 } }, "Surge.MaxTokensCap");
        Refused(new BurstPolicies { Emergency = new ModePolicy { DefaultDeadlineMs = -5 } }, "Emergency.DefaultDeadlineMs");
    }
}
