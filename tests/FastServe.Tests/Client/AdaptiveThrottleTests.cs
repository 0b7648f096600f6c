using FastServe.Client;
using FastServe.Protocol;
using NUnit.Framework;

namespace FastServe.Tests.Client;

/// <summary>A clock that moves only when told to (timestamps are <see cref="TimeSpan"/> ticks).</summary>
internal sealed class ManualClock : TimeProvider
{
    private long _now = TimeSpan.TicksPerDay;

    public override long TimestampFrequency => TimeSpan.TicksPerSecond;
    public override long GetTimestamp() => Interlocked.Read(ref _now);
    public void Advance(TimeSpan by) => Interlocked.Add(ref _now, by.Ticks);
}

/// <summary>The adaptive throttle's arithmetic on a manual clock (no network).</summary>
public class AdaptiveThrottleTests
{
    private static AdaptiveThrottle Make(ManualClock clock, double k = 2, int windowSeconds = 10, ulong seed = 7) =>
        new(new AdaptiveThrottleOptions { K = k, Window = TimeSpan.FromSeconds(windowSeconds), Bucket = TimeSpan.FromSeconds(1), Clock = clock, Seed = seed });

    [Test]
    public void ProbabilityFollowsTheBooksFormula()
    {
        var clock = new ManualClock();
        var t = Make(clock);
        Assert.That(t.RejectProbability, Is.Zero, "nothing counted yet");
        for (int i = 0; i < 90; i++) t.OnAnswer(WireStatus.Overloaded, 0);
        for (int i = 0; i < 10; i++) t.OnAnswer(WireStatus.Ok, 0);
        Assert.That(t.WindowRequests, Is.EqualTo(100));
        Assert.That(t.WindowAccepts, Is.EqualTo(10));
        Assert.That(t.RejectProbability, Is.EqualTo((100 - 2 * 10) / 101.0).Within(1e-12));

        var t3 = Make(clock, k: 3);
        for (int i = 0; i < 70; i++) t3.OnAnswer(WireStatus.Overloaded, 0);
        for (int i = 0; i < 30; i++) t3.OnAnswer(WireStatus.Ok, 0);
        Assert.That(t3.RejectProbability, Is.EqualTo((100 - 3 * 30) / 101.0).Within(1e-12));
        for (int i = 0; i < 10; i++) t3.OnAnswer(WireStatus.Ok, 0);
        Assert.That(t3.RejectProbability, Is.Zero, "requests − K·accepts < 0 gives 0, not a negative probability");
    }

    [Test]
    public void NothingIsRefusedBelowTheMinimumOfRequests()
    {
        var t = new AdaptiveThrottle(new AdaptiveThrottleOptions { Clock = new ManualClock(), Seed = 1 });
        for (int i = 0; i < 9; i++) t.OnAnswer(WireStatus.Unavailable, 0);
        Assert.That(t.RejectProbability, Is.Zero, "9 refusals are under the default floor of 10");
        for (int i = 0; i < 100; i++) Assert.That(t.TryAdmit(), Is.True);
        t.OnAnswer(WireStatus.Unavailable, 0);
        Assert.That(t.RejectProbability, Is.EqualTo(10 / 11.0).Within(1e-12));
        var bare = new AdaptiveThrottle(new AdaptiveThrottleOptions { Clock = new ManualClock(), MinRequests = 0 });
        bare.OnAnswer(WireStatus.Overloaded, 0);
        Assert.That(bare.RejectProbability, Is.EqualTo(0.5), "the book's formula alone: one refusal, p = 1/2");
    }

    [Test]
    public void OnlyLoadRefusalsAreNotAccepts()
    {
        var t = Make(new ManualClock());
        foreach (var s in WireNames.All) t.OnAnswer(s, 0);
        var refusals = new[] { WireStatus.Overloaded, WireStatus.TooManyRequests, WireStatus.Draining, WireStatus.Unavailable };
        Assert.That(WireNames.All.Where(AdaptiveThrottle.IsLoadRefusal), Is.EquivalentTo(refusals));
        Assert.That(t.WindowRequests, Is.EqualTo(WireNames.All.Length));
        Assert.That(t.WindowAccepts, Is.EqualTo(WireNames.All.Length - refusals.Length), "ok, cancelled, deadline_exceeded, bad_request, internal ... accept");
        t.OnUnanswered();
        Assert.That((t.WindowRequests, t.WindowAccepts), Is.EqualTo((WireNames.All.Length + 1L, WireNames.All.Length - 4L)));
    }

    [Test]
    public void LocalRefusalsFollowTheProbabilityAndCountAsRequests()
    {
        var clock = new ManualClock();
        var t = Make(clock);
        for (int i = 0; i < 900; i++) t.OnAnswer(WireStatus.Overloaded, 250);
        for (int i = 0; i < 100; i++) t.OnAnswer(WireStatus.Ok, 0);
        double p0 = t.RejectProbability;
        int refused = 0;
        for (int i = 0; i < 1000; i++) if (!t.TryAdmit()) refused++;
        // Each refusal adds a request, so p climbs from 800/1001 towards (1000 + refused − 200) / (1000 + refused + 1).
        Assert.That(p0, Is.EqualTo(800 / 1001.0).Within(1e-12));
        Assert.That(refused, Is.InRange(750, 900));
        Assert.That(t.Throttled, Is.EqualTo(refused));
        Assert.That(t.WindowRequests, Is.EqualTo(1000 + refused), "admitted requests are counted at their answer, not here");
        Assert.That(t.RetryAfterMs, Is.EqualTo(250), "the server's last hint");
    }

    [Test]
    public void AnAcceptingServerIsNeverThrottled()
    {
        var clock = new ManualClock();
        var t = Make(clock);
        for (int i = 0; i < 20_000; i++)
        {
            Assert.That(t.TryAdmit(), Is.True, $"request {i}");
            t.OnAnswer(i % 3 == 0 ? WireStatus.DeadlineExceeded : WireStatus.Ok, 0);
            if (i % 100 == 0) clock.Advance(TimeSpan.FromMilliseconds(370));
        }
        Assert.That(t.Throttled, Is.Zero);
        Assert.That(t.RejectProbability, Is.Zero);
    }

    [Test]
    public void CountsAgeOutAsTheWindowSlides()
    {
        var clock = new ManualClock();
        var t = Make(clock, windowSeconds: 10);
        for (int i = 0; i < 50; i++) t.OnAnswer(WireStatus.Overloaded, 0);
        clock.Advance(TimeSpan.FromSeconds(5));
        for (int i = 0; i < 10; i++) t.OnAnswer(WireStatus.Ok, 0);
        Assert.That((t.WindowRequests, t.WindowAccepts), Is.EqualTo((60L, 10L)));
        Assert.That(t.RejectProbability, Is.EqualTo(40 / 61.0).Within(1e-12));
        clock.Advance(TimeSpan.FromSeconds(4.5));
        Assert.That(t.WindowRequests, Is.EqualTo(60), "9.5 s later the first second is still in the window");
        clock.Advance(TimeSpan.FromSeconds(1));
        Assert.That((t.WindowRequests, t.WindowAccepts), Is.EqualTo((10L, 10L)), "10.5 s later it is out");
        Assert.That(t.RejectProbability, Is.Zero);
        clock.Advance(TimeSpan.FromMinutes(5));
        Assert.That((t.WindowRequests, t.WindowAccepts), Is.EqualTo((0L, 0L)), "a jump past the whole window empties it");
        t.OnAnswer(WireStatus.Overloaded, 0);
        Assert.That(t.WindowRequests, Is.EqualTo(1));
    }

    [Test]
    public void KZeroIsOffAndBadOptionsAreRefused()
    {
        var t = Make(new ManualClock(), k: 0);
        for (int i = 0; i < 1000; i++)
        {
            t.OnAnswer(WireStatus.Overloaded, 0);
            Assert.That(t.TryAdmit(), Is.True);
        }
        Assert.That((t.Throttled, t.RejectProbability), Is.EqualTo((0L, 0.0)));
        Assert.That(() => new AdaptiveThrottle(new AdaptiveThrottleOptions { K = 0.5 }), Throws.InstanceOf<ArgumentOutOfRangeException>());
        Assert.That(() => new AdaptiveThrottle(new AdaptiveThrottleOptions { K = double.NaN }), Throws.InstanceOf<ArgumentOutOfRangeException>());
        Assert.That(() => new AdaptiveThrottle(new AdaptiveThrottleOptions { Window = TimeSpan.FromSeconds(2.5) }), Throws.InstanceOf<ArgumentOutOfRangeException>());
        Assert.That(() => new AdaptiveThrottle(new AdaptiveThrottleOptions { Bucket = TimeSpan.Zero }), Throws.InstanceOf<ArgumentOutOfRangeException>());
        Assert.That(() => new AdaptiveThrottle(new AdaptiveThrottleOptions { MinRequests = -1 }), Throws.InstanceOf<ArgumentOutOfRangeException>());
    }

    [Test]
    public void ConcurrentCallersLoseNoCounts()
    {
        var t = Make(new ManualClock());
        Parallel.For(0, 8, _ =>
        {
            for (int i = 0; i < 10_000; i++) t.OnAnswer(i % 2 == 0 ? WireStatus.Ok : WireStatus.Overloaded, 0);
        });
        Assert.That((t.WindowRequests, t.WindowAccepts), Is.EqualTo((80_000L, 40_000L)));
    }
}
