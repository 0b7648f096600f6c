using System.Text;
using NUnit.Framework;
using FastServe.Router.Canary;

namespace FastServe.Tests.Router;

/// <summary>The canary traffic split: its spec (every kind of parse error), uniform and sticky picks against the
/// weights, and which sticky keys move when a weight changes.</summary>
[TestFixture]
public sealed class TrafficSplitTests
{
    private static ulong Key(int i) => TrafficSplit.HashKey(Encoding.UTF8.GetBytes($"user-{i}"));

    // ---------------------------------------------------------------- the spec

    [Test]
    public void ASpecParsesIntoEntriesStableAndStickyAndPrintsBack()
    {
        var s = TrafficSplit.Parse("a1b2=95,c3d4=5;sticky");
        Assert.That(s.Entries, Is.EqualTo(new[] { new SplitEntry("a1b2", 95), new SplitEntry("c3d4", 5) }));
        Assert.That((s.Stable, s.Sticky, s.TotalWeight), Is.EqualTo(("a1b2", true, 100L)));
        Assert.That(s.ToString(), Is.EqualTo("a1b2=95,c3d4=5;sticky"));
        Assert.That(s.Share("a1b2"), Is.EqualTo(0.95).Within(1e-12));
        Assert.That(s.Share("c3d4"), Is.EqualTo(0.05).Within(1e-12));
        Assert.That(s.Share("nope"), Is.EqualTo(0));
        Assert.That(s.Entries, Is.Not.InstanceOf<SplitEntry[]>(), "no way to edit an immutable split through a cast");

        var spaced = TrafficSplit.Parse("  v1.0 = 3 , v1.1_rc-2=1 ; sticky ");
        Assert.That(spaced.ToString(), Is.EqualTo("v1.0=3,v1.1_rc-2=1;sticky"));
        Assert.That(TrafficSplit.Parse("only=1").ToString(), Is.EqualTo("only=1"));
        Assert.That(TrafficSplit.Parse("only=1").Sticky, Is.False);
    }

    [Test]
    public void TheLimitsThemselvesAreAccepted()
    {
        string name64 = new('x', 64);
        var versions = string.Join(',', Enumerable.Range(0, 16).Select(i => $"v{i}=1000000"));
        Assert.That(TrafficSplit.TryParse($"{name64}=1000000", out var a, out var e1), Is.True, e1);
        Assert.That(a!.Entries[0].Weight, Is.EqualTo(1_000_000));
        Assert.That(TrafficSplit.TryParse(versions, out var b, out var e2), Is.True, e2);
        Assert.That(b!.Entries, Has.Count.EqualTo(16));
        Assert.That(TrafficSplit.TryParse("stable=0,canary=1", out var c, out var e3), Is.True, e3);
        Assert.That((c!.Stable, c.Pick(0.0), c.Pick(Key(1))), Is.EqualTo(("stable", "canary", "canary")),
            "a stable version at weight 0 is still the stable version, but gets nothing");
    }

    [TestCase(null, "empty")]
    [TestCase("", "empty")]
    [TestCase("   ", "empty")]
    [TestCase("a", "is not VERSION=WEIGHT")]
    [TestCase("a=1,b", "'b' is not VERSION=WEIGHT")]
    [TestCase("=5", "a version name is empty")]
    [TestCase("a=1,,b=2", "an entry is empty")]
    [TestCase("a=1,", "an entry is empty")]
    [TestCase("a b=1", "has ' '")]
    [TestCase("a/b=1", "has '/'")]
    [TestCase("ü=1", "has 'ü'")]
    [TestCase("a=x", "must be a whole number from 0 to 1,000,000, not 'x'")]
    [TestCase("a=", "must be a whole number")]
    [TestCase("a=-1", "not '-1'")]
    [TestCase("a=+1", "not '+1'")]
    [TestCase("a=1.5", "not '1.5'")]
    [TestCase("a=1000001", "not '1000001'")]
    [TestCase("a=99999999999", "not '99999999999'")]
    [TestCase("a=1,a=2", "version 'a' appears twice")]
    [TestCase("a=0", "every weight is 0")]
    [TestCase("a=0,b=0,c=0", "every weight is 0")]
    [TestCase("a=1;stiky", "unknown option 'stiky'")]
    [TestCase("a=1;sticky;sticky", "unknown option")]
    [TestCase("a=1;", "nothing after ';'")]
    public void ABadSpecIsRefusedSayingWhy(string? spec, string why)
    {
        Assert.That(TrafficSplit.TryParse(spec, out var split, out var error), Is.False);
        Assert.That(split, Is.Null);
        Assert.That(error, Does.Contain(why));
        if (spec is not null) Assert.That(() => TrafficSplit.Parse(spec), Throws.TypeOf<FormatException>().With.Message.Contains(why));
    }

    [Test]
    public void TooLongANameAndTooManyVersionsAreRefused()
    {
        Assert.That(TrafficSplit.TryParse($"{new string('x', 65)}=1", out _, out var e1), Is.False);
        Assert.That(e1, Does.Contain("longer than 64 characters"));
        var seventeen = string.Join(',', Enumerable.Range(0, 17).Select(i => $"v{i}=1"));
        Assert.That(TrafficSplit.TryParse(seventeen, out _, out var e2), Is.False);
        Assert.That(e2, Does.Contain("more than 16 versions"));
    }

    // ---------------------------------------------------------------- changing weights

    [Test]
    public void WithWeightChangesOneVersionAndRefusesWhatCannotBe()
    {
        var s = TrafficSplit.Parse("a=95,b=5;sticky");
        var rolledBack = s.WithWeight("b", 0);
        Assert.That(rolledBack.ToString(), Is.EqualTo("a=95,b=0;sticky"));
        Assert.That(s.ToString(), Is.EqualTo("a=95,b=5;sticky"), "immutable: the original is unchanged");
        Assert.That(rolledBack.Share("b"), Is.EqualTo(0));
        Assert.That(rolledBack.Share("a"), Is.EqualTo(1));
        Assert.That(s.WithWeight("b", 5), Is.SameAs(s));
        Assert.That(s.WithWeight("a", 0).Stable, Is.EqualTo("a"));

        Assert.That(() => s.WithWeight("c", 1), Throws.ArgumentException.With.Message.Contains("'c' is not in the split"));
        Assert.That(() => s.WithWeight("b", -1), Throws.InstanceOf<ArgumentOutOfRangeException>());
        Assert.That(() => s.WithWeight("b", 1_000_001), Throws.InstanceOf<ArgumentOutOfRangeException>());
        Assert.That(() => rolledBack.WithWeight("a", 0), Throws.ArgumentException.With.Message.Contains("every weight at 0"));
    }

    // ---------------------------------------------------------------- uniform picks

    [Test]
    public void UniformPicksFollowTheWeights()
    {
        var s = TrafficSplit.Parse("s=70,zero=0,c1=20,c2=10");
        var rng = new Random(12345);
        var counts = new Dictionary<string, int> { ["s"] = 0, ["zero"] = 0, ["c1"] = 0, ["c2"] = 0 };
        const int N = 100_000;
        for (int i = 0; i < N; i++) counts[s.Pick(rng.NextDouble())]++;
        // Binomial σ is at most 0.16 % here; 1 % is over six σ.
        Assert.That(counts["s"] / (double)N, Is.EqualTo(0.70).Within(0.01));
        Assert.That(counts["c1"] / (double)N, Is.EqualTo(0.20).Within(0.01));
        Assert.That(counts["c2"] / (double)N, Is.EqualTo(0.10).Within(0.01));
        Assert.That(counts["zero"], Is.EqualTo(0));
    }

    [Test]
    public void UniformPicksAreCumulativeRangesInEntryOrderAndClampOutOfRangeDraws()
    {
        var s = TrafficSplit.Parse("s=70,zero=0,c1=20,c2=10");
        Assert.That(s.Pick(0.0), Is.EqualTo("s"));
        Assert.That(s.Pick(0.6999), Is.EqualTo("s"));
        Assert.That(s.Pick(0.7), Is.EqualTo("c1"));
        Assert.That(s.Pick(0.8999), Is.EqualTo("c1"));
        Assert.That(s.Pick(0.9), Is.EqualTo("c2"));
        Assert.That(s.Pick(Math.BitDecrement(1.0)), Is.EqualTo("c2"));
        Assert.That(s.Pick(1.0), Is.EqualTo("c2"));
        Assert.That(s.Pick(7.0), Is.EqualTo("c2"));
        Assert.That(s.Pick(-3.0), Is.EqualTo("s"));
        Assert.That(s.Pick(double.NaN), Is.EqualTo("s"));
        var big = TrafficSplit.Parse(string.Join(',', Enumerable.Range(0, 16).Select(i => $"v{i}=1000000")));
        Assert.That(big.Pick(Math.BitDecrement(1.0)), Is.EqualTo("v15"), "the largest total still rounds inside the last range");
    }

    // ---------------------------------------------------------------- sticky picks

    [Test]
    public void HashKeyIsTheSameEverywhere()
    {
        // FNV-1a then SplitMix64's finaliser, computed independently (Python).
        Assert.That(TrafficSplit.HashKey([]), Is.EqualTo(0xf52a15e9a9b5e89bUL));
        Assert.That(TrafficSplit.HashKey("user-42"u8), Is.EqualTo(0x7a1596f0e94b5793UL));
    }

    [Test]
    public void StickyPicksFollowTheWeights()
    {
        var s = TrafficSplit.Parse("s=70,zero=0,c1=20,c2=10;sticky");
        var counts = new Dictionary<string, int> { ["s"] = 0, ["zero"] = 0, ["c1"] = 0, ["c2"] = 0 };
        const int N = 100_000;
        for (int i = 0; i < N; i++) counts[s.Pick(Key(i))]++;
        Assert.That(counts["s"] / (double)N, Is.EqualTo(0.70).Within(0.01));
        Assert.That(counts["c1"] / (double)N, Is.EqualTo(0.20).Within(0.01));
        Assert.That(counts["c2"] / (double)N, Is.EqualTo(0.10).Within(0.01));
        Assert.That(counts["zero"], Is.EqualTo(0));

        // Sequential raw hashes (a caller hashing user ids its own way) spread just as well.
        var seq = new Dictionary<string, int> { ["s"] = 0, ["zero"] = 0, ["c1"] = 0, ["c2"] = 0 };
        for (ulong k = 0; k < N; k++) seq[s.Pick(k)]++;
        Assert.That(seq["c2"] / (double)N, Is.EqualTo(0.10).Within(0.01));
    }

    [Test]
    public void AKeyKeepsItsVersionWhileTheWeightsAreUnchanged()
    {
        var s = TrafficSplit.Parse("a=50,b=30,c=20;sticky");
        var again = TrafficSplit.Parse("a=50,b=30,c=20;sticky");
        var reordered = TrafficSplit.Parse("c=20,a=50,b=30");
        for (int i = 0; i < 10_000; i++)
        {
            ulong k = Key(i);
            string v = s.Pick(k);
            Assert.That(s.Pick(k), Is.EqualTo(v));
            Assert.That(again.Pick(k), Is.EqualTo(v), "another instance (another router) agrees");
            Assert.That(reordered.Pick(k), Is.EqualTo(v), "keys follow version names, not positions");
        }
    }

    [TestCase("c1")]
    [TestCase("c2")]
    [TestCase("c3")]
    public void RollingACanaryBackMovesOnlyItsKeys(string rolledBack)
    {
        // c1 and c2 sit in the middle of the list: ranges laid end to end would shift the others' keys.
        var before = TrafficSplit.Parse("s=85,c1=5,c2=5,c3=5;sticky");
        var after = before.WithWeight(rolledBack, 0);
        int moved = 0, had = 0;
        const int N = 50_000;
        for (int i = 0; i < N; i++)
        {
            ulong k = Key(i);
            string was = before.Pick(k), now = after.Pick(k);
            if (was == rolledBack)
            {
                had++;
                Assert.That(now, Is.Not.EqualTo(rolledBack));
                moved++;
            }
            else Assert.That(now, Is.EqualTo(was), $"key {i} was on {was}, not on the rolled-back {rolledBack}");
        }
        Assert.That(had / (double)N, Is.EqualTo(0.05).Within(0.01));
        Assert.That(moved, Is.EqualTo(had));
    }

    [Test]
    public void RaisingACanaryOnlyMovesKeysOntoIt()
    {
        var five = TrafficSplit.Parse("s=90,c1=5,c2=5;sticky");
        var twenty = five.WithWeight("c1", 20);
        int gained = 0;
        for (int i = 0; i < 50_000; i++)
        {
            ulong k = Key(i);
            string was = five.Pick(k), now = twenty.Pick(k);
            if (now != was)
            {
                Assert.That(now, Is.EqualTo("c1"), $"key {i} moved from {was} to {now}");
                gained++;
            }
        }
        Assert.That(gained, Is.GreaterThan(0));
    }
}
