using System.Runtime.InteropServices;
using FastServe.Scheduler;
using NUnit.Framework;

namespace FastServe.Tests.Scheduler;

public class KvBlockManagerTests
{
    // Allocates and commits blocks for `tokens` after whatever prefix matched, as the engine will.
    private static List<int> Admit(KvBlockManager m, int[] tokens, out int matched)
    {
        var buf = new int[tokens.Length / m.BlockSize + 1];
        matched = m.MatchPrefix(tokens, tokens.Length - 1, buf, out ulong h);
        var table = buf.Take(matched / m.BlockSize).ToList();
        int bs = m.BlockSize;
        for (int start = matched; start < tokens.Length; start += bs)
        {
            Assert.That(m.TryAllocate(out int b), Is.True);
            table.Add(b);
            if (start + bs <= tokens.Length)
            {
                var blk = tokens.AsSpan(start, bs);
                h = KvBlockManager.ChainHash(h, blk);
                m.Commit(b, h, blk);
            }
        }
        return table;
    }

    private static void Release(KvBlockManager m, List<int> table)
    {
        m.ReleaseAll(CollectionsMarshal.AsSpan(table));
        table.Clear();
    }

    private static void AssertAccounting(KvBlockManager m) =>
        Assert.That(m.FreeBlocks + m.UsedBlocks + m.IdleCachedBlocks, Is.EqualTo(m.NumBlocks));

    [Test]
    public void SharedPrefixIsReusedAndRefCounted()
    {
        var m = new KvBlockManager(16, 4);
        int[] a = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10];
        int[] b = [1, 2, 3, 4, 5, 6, 7, 8, 42, 43, 44];
        var ta = Admit(m, a, out int ma);
        Assert.That(ma, Is.Zero);
        var tb = Admit(m, b, out int mb);
        Assert.That(mb, Is.EqualTo(8), "two full blocks shared");
        Assert.That(tb.Take(2), Is.EqualTo(ta.Take(2)));
        Assert.That(m.RefCount(ta[0]), Is.EqualTo(2));
        Assert.That(m.PrefixHits, Is.EqualTo(2));
        AssertAccounting(m);

        Release(m, ta);
        Assert.That(m.RefCount(tb[0]), Is.EqualTo(1));
        Release(m, tb);
        Assert.That(m.UsedBlocks, Is.Zero);
        Assert.That(m.IdleCachedBlocks, Is.EqualTo(2), "the two shared full blocks stay cached; partial blocks are freed");
        Assert.That(m.FreeBlocks, Is.EqualTo(14));
        AssertAccounting(m);
    }

    [Test]
    public void AFullPromptStillLeavesOneTokenToCompute()
    {
        var m = new KvBlockManager(8, 4);
        int[] p = [1, 2, 3, 4, 5, 6, 7, 8];
        Release(m, Admit(m, p, out _));
        Admit(m, p, out int matched);
        Assert.That(matched, Is.EqualTo(4), "the last block is recomputed so its last token yields logits");
    }

    [Test]
    public void EvictsLeastRecentlyUsedIdleBlocksOnlyWhenNothingIsFree()
    {
        var m = new KvBlockManager(4, 2);
        var t1 = Admit(m, [1, 2, 0], out _);     // block A=[1,2] cached + partial
        var t2 = Admit(m, [3, 4, 0], out _);     // block B=[3,4] cached + partial
        Release(m, t1);                         // A idle first (older)
        Release(m, t2);                         // then B
        Assert.That(m.IdleCachedBlocks, Is.EqualTo(2));
        Assert.That(m.FreeBlocks, Is.EqualTo(2));
        // Two fresh blocks come from the free list; the third evicts A (least recently used), not B.
        Assert.That(m.TryAllocate(out _) && m.TryAllocate(out _) && m.TryAllocate(out _), Is.True);
        var probe = new int[2];
        Assert.That(m.MatchPrefix([1, 2, 9], 2, probe, out _), Is.Zero, "A was evicted");
        Assert.That(m.MatchPrefix([3, 4, 9], 2, probe, out _), Is.EqualTo(2), "B survived");
        Assert.That(m.TryAllocate(out _), Is.False, "everything is held");
        AssertAccounting(m);
    }

    [Test]
    public void RandomWorkloadReturnsEveryBlock()
    {
        var m = new KvBlockManager(64, 4);
        var rng = new Random(17);
        var live = new List<List<int>>();
        int[] shared = [7, 7, 7, 7, 8, 8, 8, 8];
        for (int i = 0; i < 5000; i++)
        {
            if (live.Count > 0 && (rng.Next(3) == 0 || m.AvailableBlocks < 6))
            {
                int k = rng.Next(live.Count);
                Release(m, live[k]);
                live.RemoveAt(k);
            }
            else
            {
                int len = 2 + rng.Next(18);
                var toks = new int[len];
                for (int j = 0; j < len; j++) toks[j] = j < shared.Length && rng.Next(2) == 0 ? shared[j] : rng.Next(5);
                live.Add(Admit(m, toks, out _));
            }
            AssertAccounting(m);
        }
        foreach (var t in live) Release(m, t);
        Assert.That(m.UsedBlocks, Is.Zero);
        Assert.That(m.AvailableBlocks, Is.EqualTo(m.NumBlocks));
        for (int b = 0; b < m.NumBlocks; b++) Assert.That(m.RefCount(b), Is.Zero);
        TestContext.Out.WriteLine($"prefix hit rate {m.PrefixHits / (double)m.PrefixQueries:P1}");
        Assert.That(m.PrefixHits, Is.GreaterThan(0));
    }

    [Test]
    public void OverReleaseIsAnError()
    {
        var m = new KvBlockManager(2, 2);
        Assert.That(m.TryAllocate(out int b), Is.True);
        m.Release(b);
        Assert.Throws<InvalidOperationException>(() => m.Release(b));
    }
}
