using FastServe.Client;
using FastServe.Protocol;
using NUnit.Framework;

namespace FastServe.Tests.Client;

/// <summary>The client's adaptive throttle against a fake replica, on a manual clock: what reaches the server while it
/// refuses everything, and how sending resumes once it accepts again.</summary>
public class ClientThrottleTests
{
    private static readonly CompletionRequest Request = new() { Prompt = "hi", Params = RequestParams.Default with { MaxTokens = 2 } };

    private static FakeReplica Fake(int overloadEvery) =>
        new() { OverloadEvery = overloadEvery, FirstTokenDelay = TimeSpan.FromMilliseconds(1), FinalDelay = TimeSpan.FromMilliseconds(1) };

    private static Task<FastServeClient> ConnectAsync(FakeReplica fake, AdaptiveThrottleOptions? throttle) =>
        FastServeClient.ConnectAsync("127.0.0.1", fake.Port, new FastServeClientOptions { AdaptiveThrottling = throttle });

    [Test]
    public async Task ThrottlingIsOnByDefault()
    {
        Assert.That(new FastServeClientOptions().AdaptiveThrottling, Is.EqualTo(AdaptiveThrottleOptions.Default));
        Assert.That(AdaptiveThrottleOptions.Default.K, Is.EqualTo(2));
        Assert.That(AdaptiveThrottleOptions.Default.Window, Is.EqualTo(TimeSpan.FromMinutes(2)));
        using var fake = Fake(0);
        await using var client = await FastServeClient.ConnectAsync("127.0.0.1", fake.Port);
        Assert.That(client.Throttle, Is.Not.Null);
        Assert.That(client.Throttle!.K, Is.EqualTo(2));
    }

    [Test]
    public async Task AnOverloadedServerIsMostlyRefusedLocallyThenServedAgainAsTheWindowSlides()
    {
        using var fake = Fake(overloadEvery: 1);
        var clock = new ManualClock();
        await using var client = await ConnectAsync(fake, new AdaptiveThrottleOptions
        {
            Window = TimeSpan.FromSeconds(5), Bucket = TimeSpan.FromSeconds(1), Clock = clock, Seed = 3,
        });

        int throttled = 0, refused = 0;
        for (int i = 0; i < 200; i++)
        {
            var r = await client.CompleteAsync(Request);
            Assert.That(r.Status, Is.EqualTo(WireStatus.Overloaded), "a local refusal has the server's refusal status");
            Assert.That(r.Retriable, Is.True);
            if (r.ClientFailure == ClientFailure.Throttled)
            {
                throttled++;
                Assert.That(r.StatusName, Is.EqualTo("throttled"));
                Assert.That(r.Detail, Is.EqualTo("client.throttled"));
                Assert.That(r.RetryAfter, Is.EqualTo(TimeSpan.FromMilliseconds(50)), "the server's last hint");
            }
            else
            {
                refused++;
                Assert.That(r.ClientFailure, Is.EqualTo(ClientFailure.None));
                Assert.That((r.StatusName, r.Detail), Is.EqualTo(("overloaded", "engine.queue_full")));
            }
        }
        TestContext.Out.WriteLine($"overloaded phase: {refused} sent, {throttled} throttled, p = {client.ThrottleRejectProbability:F3}");
        Assert.That(refused, Is.EqualTo(fake.Requests), "a throttled call never reaches the server");
        Assert.That(refused, Is.InRange(10, 30), "the first 10 (the floor), then about ln(200 / 10) ≈ 3 more");
        Assert.That(client.Throttled, Is.EqualTo(throttled));
        Assert.That(client.ThrottleRejectProbability, Is.GreaterThan(0.9));

        // The server accepts again; 20 ms pass per call. Old refusals age out, accepts come back, and p falls to 0.
        fake.OverloadEvery = 0;
        int calls = 0, okRun = 0, sentBefore = fake.Requests;
        while (okRun < 200 && calls < 5000)
        {
            clock.Advance(TimeSpan.FromMilliseconds(20));
            var r = await client.CompleteAsync(Request);
            calls++;
            if (r.IsOk) okRun++;
            else
            {
                Assert.That(r.ClientFailure, Is.EqualTo(ClientFailure.Throttled));
                okRun = 0;
            }
        }
        TestContext.Out.WriteLine($"recovery: 200 ok in a row after {calls} calls ({calls * 0.02:F1} s of the clock), " +
            $"{fake.Requests - sentBefore} sent, p = {client.ThrottleRejectProbability:F3}");
        Assert.That(okRun, Is.EqualTo(200), "sending resumed");
        Assert.That(client.ThrottleRejectProbability, Is.Zero);
        Assert.That(client.Throttled, Is.EqualTo(throttled + calls - (fake.Requests - sentBefore)));
    }

    [TestCase(false)]
    [TestCase(true)]
    public async Task ADisabledThrottleSendsEverything(bool viaKZero)
    {
        using var fake = Fake(overloadEvery: 1);
        await using var client = await ConnectAsync(fake, viaKZero ? new AdaptiveThrottleOptions { K = 0 } : null);
        for (int i = 0; i < 100; i++)
        {
            var r = await client.CompleteAsync(Request);
            Assert.That((r.StatusName, r.ClientFailure), Is.EqualTo(("overloaded", ClientFailure.None)));
        }
        Assert.That(fake.Requests, Is.EqualTo(100));
        Assert.That(client.Throttle, Is.Null);
        Assert.That((client.Throttled, client.ThrottleRejectProbability), Is.EqualTo((0L, 0.0)));
    }

    [Test]
    public async Task AnAcceptingServerIsNeverThrottledEvenWithManyInFlight()
    {
        using var fake = Fake(overloadEvery: 0);
        await using var client = await ConnectAsync(fake, AdaptiveThrottleOptions.Default);
        for (int round = 0; round < 5; round++)
        {
            var calls = Enumerable.Range(0, 100).Select(_ => client.Start(Request)).ToArray();
            foreach (var c in calls) Assert.That((await c.Completion).IsOk, Is.True);
        }
        Assert.That(fake.Requests, Is.EqualTo(500));
        Assert.That(client.Throttled, Is.Zero);
    }
}
