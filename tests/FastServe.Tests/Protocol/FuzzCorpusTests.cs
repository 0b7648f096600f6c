using System.Buffers.Binary;
using System.Diagnostics;
using FastServe.Fuzz;
using FastServe.Protocol;
using NUnit.Framework;

namespace FastServe.Tests.Protocol;

/// <summary>
/// The fuzz target's parse loop (tests/FastServe.Fuzz/FrameParseLoop.cs, compiled in) over the checked-in seed corpus
/// and crash inputs, plus a short deterministic mutation run. The coverage-guided run is tests/FastServe.Fuzz/run.sh.
/// </summary>
public class FuzzCorpusTests
{
    private static string FuzzDir => Path.Combine(TestModels.RepoRoot, "tests", "FastServe.Fuzz");

    private static IEnumerable<string> CorpusAndCrashes()
    {
        foreach (var sub in new[] { "corpus", "crashes" })
        {
            var d = Path.Combine(FuzzDir, sub);
            if (Directory.Exists(d))
                foreach (var f in Directory.GetFiles(d).Order(StringComparer.Ordinal)) yield return f;
        }
    }

    [Test]
    public void ReplaysCorpusAndCrashes()
    {
        var files = CorpusAndCrashes().ToList();
        Assert.That(files, Has.Count.GreaterThanOrEqualTo(CorpusSeeds.All().Count));
        int frames = 0;
        foreach (var f in files)
        {
            var bytes = File.ReadAllBytes(f);
            try { frames += FrameParseLoop.Run(bytes); }
            catch (Exception e) { Assert.Fail($"{Path.GetFileName(f)} ({Convert.ToHexString(bytes)}): {e}"); }
        }
        Assert.That(frames, Is.GreaterThanOrEqualTo(40));
    }

    [Test]
    public void CheckedInCorpusMatchesTheGenerator()
    {
        foreach (var (name, bytes) in CorpusSeeds.All())
        {
            var path = Path.Combine(FuzzDir, "corpus", name);
            Assert.That(File.Exists(path), Is.True,
                $"{name} is missing: dotnet run --project tests/FastServe.Fuzz -- make-corpus tests/FastServe.Fuzz/corpus");
            Assert.That(File.ReadAllBytes(path), Is.EqualTo(bytes),
                $"{name} is stale: dotnet run --project tests/FastServe.Fuzz -- make-corpus tests/FastServe.Fuzz/corpus");
        }
    }

    [Test]
    public void SeedsHoldEveryFrameType()
    {
        var seen = new HashSet<FrameType>();
        foreach (var (_, bytes) in CorpusSeeds.All())
        {
            ReadOnlySpan<byte> buf = bytes;
            while (FrameReader.TryRead(buf, FrameParseLoop.MaxFrame, out var h, out _, out int consumed) == ReadResult.Frame)
            {
                seen.Add(h.Type);
                buf = buf[consumed..];
            }
        }
        Assert.That(seen, Is.SupersetOf(Enum.GetValues<FrameType>()));
    }

    /// <summary>The loop counts whole frames and reads nothing past a too-large header or a partial frame.</summary>
    [Test]
    public void LoopCountsFramesAndStopsAtTooLarge()
    {
        var seeds = CorpusSeeds.All().ToDictionary(s => s.Name, s => s.Bytes);
        Assert.That(FrameParseLoop.Run(seeds["stream_client.bin"]), Is.EqualTo(7));
        Assert.That(FrameParseLoop.Run(seeds["stream_partial.bin"]), Is.EqualTo(1));
        Assert.That(FrameParseLoop.Run([.. seeds["too_large.bin"], .. seeds["cancel.bin"]]), Is.Zero, "nothing is read past a too-large header");
        Assert.That(FrameParseLoop.Run([]), Is.Zero);
    }

    /// <summary>Mutations of the seeds (bit flips, byte sets, interesting lengths, cuts, splices) for a fixed budget.
    /// Deterministic: the same inputs every run.</summary>
    [Test]
    public void SeedMutationsKeepEveryInvariant()
    {
        var seeds = CorpusSeeds.All().Select(s => s.Bytes).ToArray();
        var rng = new Random(20240601);
        uint[] interesting = [0, 1, 2, 3, 4, 7, 8, 15, 16, 39, 40, 56, 255, 256, 257, 0x7FFF, 0xFFFF, 0x10000, 0x10001,
            0x3FFFFFFF, 0x40000000, 0x7FFFFFF0, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF];
        var sw = Stopwatch.StartNew();
        int runs = 0;
        while (runs < 200_000 && sw.Elapsed.TotalSeconds < 5)
        {
            var s = seeds[rng.Next(seeds.Length)];
            var b = new List<byte>(s);
            int edits = 1 + rng.Next(4);
            for (int e = 0; e < edits && b.Count > 0; e++)
            {
                int at = rng.Next(b.Count);
                switch (rng.Next(6))
                {
                    case 0: b[at] ^= (byte)(1 << rng.Next(8)); break;
                    case 1: b[at] = (byte)rng.Next(256); break;
                    case 2:
                        if (at + 4 <= b.Count)
                        {
                            var v = new byte[4];
                            BinaryPrimitives.WriteUInt32LittleEndian(v, interesting[rng.Next(interesting.Length)]);
                            for (int i = 0; i < 4; i++) b[at + i] = v[i];
                        }
                        break;
                    case 3: b.RemoveRange(at, b.Count - at); break;
                    case 4: b.InsertRange(at, seeds[rng.Next(seeds.Length)]); break;
                    default:
                        if (at + 2 <= b.Count) { ushort v = (ushort)interesting[rng.Next(interesting.Length)]; b[at] = (byte)v; b[at + 1] = (byte)(v >> 8); }
                        break;
                }
            }
            var input = b.ToArray();
            try { FrameParseLoop.Run(input); }
            catch (Exception ex) { Assert.Fail($"run {runs}: input {Convert.ToHexString(input)}: {ex}"); }
            runs++;
        }
        TestContext.Out.WriteLine($"{runs} mutated inputs in {sw.Elapsed.TotalSeconds:F1}s");
        Assert.That(runs, Is.GreaterThan(1000));
    }
}
