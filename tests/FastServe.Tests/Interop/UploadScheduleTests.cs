using FastServe.Interop;
using FastServe.Runtime;
using NUnit.Framework;

namespace FastServe.Tests.Interop;

/// <summary>
/// The cuda backend's pipelined weight upload, its CPU side: which pinned chunk and offset each piece goes to and when
/// the host must wait (<see cref="UploadSchedule"/>), checked against a model of what the device may still be reading,
/// and a timeline simulation showing that host copies and transfers overlap; the statistics and the environment
/// overrides. The copies themselves need a GPU (bench/gpu/e2e.sh reports the achieved GB/s).
/// </summary>
public class UploadScheduleTests
{
    private const long Chunk = 4096;

    [Test]
    public void RejectsFewerThanTwoChunksAndUnalignedSizes()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => new UploadSchedule(1, Chunk));
        Assert.Throws<ArgumentOutOfRangeException>(() => new UploadSchedule(2, 1000));
        Assert.Throws<ArgumentOutOfRangeException>(() => new UploadSchedule(2, 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => new UploadSchedule(2, Chunk).Next(0));
    }

    [Test]
    public void LargeItemCyclesThroughChunksAndWaitsOnlyOnReuse()
    {
        var s = new UploadSchedule(3, Chunk);
        var pieces = Pieces(s, 7 * Chunk + 100);
        Assert.That(pieces.Select(p => p.Chunk), Is.EqualTo(new[] { 0, 1, 2, 0, 1, 2, 0, 1 }));
        Assert.That(pieces.Select(p => p.Offset), Is.All.EqualTo(0));
        Assert.That(pieces.Select(p => p.Length), Is.EqualTo(Enumerable.Repeat(Chunk, 7).Append(100)));
        Assert.That(pieces.Select(p => p.WaitFirst), Is.EqualTo(new[] { false, false, false, true, true, true, true, true }),
            "the first lap finds every chunk free; every later entry into a chunk must wait for its previous copies");
    }

    [Test]
    public void SmallItemsShareAChunkAtAlignedOffsetsAndSplitAtItsEnd()
    {
        var s = new UploadSchedule(2, Chunk);
        var a = Pieces(s, 1000);
        var b = Pieces(s, 10);
        var c = Pieces(s, 3000);
        Assert.That(a, Is.EqualTo(new[] { new UploadPiece(0, 0, 1000, false) }));
        Assert.That(b, Is.EqualTo(new[] { new UploadPiece(0, 1024, 10, false) }), "next 256-byte boundary, no wait: other bytes of the chunk");
        Assert.That(c, Is.EqualTo(new[] { new UploadPiece(0, 1280, Chunk - 1280, false), new UploadPiece(1, 0, 3000 - (Chunk - 1280), false) }));
        var d = Pieces(s, Chunk);
        Assert.That(d[0], Is.EqualTo(new UploadPiece(1, 256, Chunk - 256, false)));
        Assert.That(d[1], Is.EqualTo(new UploadPiece(0, 0, 256, true)), "back in chunk 0: its copies may still run");
    }

    [Test]
    public void TakeInFlightHandsBackEveryUsedChunkOnceThenRestartsAtChunkZero()
    {
        var s = new UploadSchedule(4, Chunk);
        Pieces(s, 2 * Chunk + 1);
        var taken = new List<int>();
        while (s.TakeInFlight(out int c)) taken.Add(c);
        Assert.That(taken, Is.EqualTo(new[] { 0, 1, 2 }));
        Assert.That(Enumerable.Range(0, 4).Select(s.InFlight), Is.All.False);
        Assert.That(Pieces(s, 10), Is.EqualTo(new[] { new UploadPiece(0, 0, 10, false) }), "after a drain nothing needs waiting for");
    }

    // The device is modelled as reading every byte range submitted from a chunk until the host waits for that chunk's
    // event. Over random item sizes the host must never write a range the device may still read, every byte of every
    // item must be sent exactly once and in order, and the host must not wait for a chunk it could still write to.
    [TestCase(2, 1)]
    [TestCase(3, 2)]
    [TestCase(4, 3)]
    [TestCase(8, 4)]
    public void NeverOverwritesBytesInFlightAndCoversEveryItem(int chunks, int seed)
    {
        var rng = new Random(seed);
        var s = new UploadSchedule(chunks, Chunk);
        var reading = Enumerable.Range(0, chunks).Select(_ => new List<(long Start, long End)>()).ToArray();
        for (int item = 0; item < 500; item++)
        {
            long size = rng.Next(4) switch { 0 => rng.Next(1, 64), 1 => rng.Next(1, (int)Chunk), 2 => rng.Next(1, 5 * (int)Chunk), _ => Chunk };
            long sent = 0;
            while (sent < size)
            {
                var p = s.Next(size - sent);
                Assert.That(p.Length, Is.InRange(1, size - sent));
                Assert.That(p.Offset % UploadSchedule.Alignment, Is.Zero);
                Assert.That(p.Offset + p.Length, Is.LessThanOrEqualTo(Chunk));
                if (p.WaitFirst)
                {
                    Assert.That(reading[p.Chunk], Is.Not.Empty, "a wait for a chunk with nothing in flight stalls the host for nothing");
                    reading[p.Chunk].Clear();
                }
                foreach (var (start, end) in reading[p.Chunk])
                    Assert.That(p.Offset >= end || p.Offset + p.Length <= start, $"item {item}: [{p.Offset}, {p.Offset + p.Length}) of chunk {p.Chunk} is still being read at [{start}, {end})");
                reading[p.Chunk].Add((p.Offset, p.Offset + p.Length));
                sent += p.Length;
            }
            Assert.That(sent, Is.EqualTo(size));
            if (rng.Next(50) == 0)
            {
                while (s.TakeInFlight(out int c)) reading[c].Clear();
                Assert.That(reading.All(r => r.Count == 0), "a drain hands back every chunk the device may read");
            }
        }
    }

    // A timeline: the host copies a piece at hostRate into its chunk (after waiting for the chunk's last transfer when
    // told to), the link moves it at linkRate once the copy is done and the link is free. With pieces this size the
    // pipelined upload must take about the slower of the two, not their sum.
    [TestCase(2, 1.0, 1.0)]
    [TestCase(2, 1.0, 3.0)]
    [TestCase(4, 2.0, 1.0)]
    public void HostCopiesAndTransfersOverlap(int chunks, double hostPerByte, double linkPerByte)
    {
        var s = new UploadSchedule(chunks, Chunk);
        var chunkFree = new double[chunks];
        double host = 0, link = 0;
        long total = 0;
        foreach (long size in new[] { 40 * Chunk, 300, 5 * Chunk + 17, 64 * Chunk })
        {
            long sent = 0;
            while (sent < size)
            {
                var p = s.Next(size - sent);
                if (p.WaitFirst) host = Math.Max(host, chunkFree[p.Chunk]);
                host += p.Length * hostPerByte;
                link = Math.Max(link, host) + p.Length * linkPerByte;
                chunkFree[p.Chunk] = link;
                sent += p.Length;
            }
            total += size;
        }
        double serial = total * (hostPerByte + linkPerByte), bound = total * Math.Max(hostPerByte, linkPerByte);
        Assert.That(link, Is.LessThan(bound * 1.1), $"pipelined {link:F0} against the slower side alone {bound:F0} (serial {serial:F0})");
    }

    [Test]
    public void StatsAddSessionsAndReportGigabytesPerSecond()
    {
        Assert.That(default(WeightUploadStats).GigabytesPerSecond, Is.Zero);
        var s = default(WeightUploadStats).Add(2_000_000_000, 0.1, 0.05, 0.02, 120).Add(1_000_000_000, 0.2, 0.1, 0.01, 60);
        Assert.That(s.Bytes, Is.EqualTo(3_000_000_000));
        Assert.That(s.Sessions, Is.EqualTo(2));
        Assert.That(s.Pieces, Is.EqualTo(180));
        Assert.That(s.Seconds, Is.EqualTo(0.3).Within(1e-12));
        Assert.That(s.GigabytesPerSecond, Is.EqualTo(10.0).Within(1e-9));
        Assert.That(s.HostCopySeconds, Is.EqualTo(0.15).Within(1e-12));
        Assert.That(s.TransferWaitSeconds, Is.EqualTo(0.03).Within(1e-12));
    }

    [Test]
    public void OptionsComeFromTheEnvironmentWithClearErrors()
    {
        var d = UploadOptions.FromEnvironment(_ => null);
        Assert.That(d, Is.EqualTo(UploadOptions.Default));
        Assert.That(d.Chunks, Is.GreaterThanOrEqualTo(2));
        Assert.That(d.CopyThreads, Is.InRange(1, 8));
        var env = new Dictionary<string, string>
        {
            ["FASTSERVE_CUDA_UPLOAD_CHUNKS"] = "2", ["FASTSERVE_CUDA_UPLOAD_CHUNK_MIB"] = " 8 ", ["FASTSERVE_CUDA_UPLOAD_THREADS"] = "3",
        };
        Assert.That(UploadOptions.FromEnvironment(env.GetValueOrDefault), Is.EqualTo(new UploadOptions(2, 8L << 20, 3)));
        foreach (var (name, value) in new[] { ("FASTSERVE_CUDA_UPLOAD_CHUNKS", "1"), ("FASTSERVE_CUDA_UPLOAD_CHUNK_MIB", "0"),
                     ("FASTSERVE_CUDA_UPLOAD_CHUNK_MIB", "2048"), ("FASTSERVE_CUDA_UPLOAD_THREADS", "four") })
        {
            var e = Assert.Throws<FastServeException>(() => UploadOptions.FromEnvironment(n => n == name ? value : null))!;
            Assert.That(e.Code, Is.EqualTo("cuda.invalid_upload_option"));
            Assert.That(e.Message, Does.Contain(name).And.Contain(value));
        }
    }

    private static List<UploadPiece> Pieces(UploadSchedule s, long size)
    {
        var list = new List<UploadPiece>();
        for (long sent = 0; sent < size;)
        {
            var p = s.Next(size - sent);
            list.Add(p);
            sent += p.Length;
        }
        return list;
    }
}
