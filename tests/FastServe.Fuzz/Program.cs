using System.Runtime.InteropServices;
using FastServe.Fuzz;
using SharpFuzz;

// Modes:
//   fuzz                 run under libFuzzer (run.sh starts this through driver/libfuzzer_driver.c)
//   replay PATH...       run every file (directories: every file inside) through the parse loop, no instrumentation
//   make-corpus DIR      write the seed corpus (CorpusSeeds) into DIR
//   coverage PATH...     like replay, on the SharpFuzz-instrumented build (build/fuzz/app): counts the edges hit
switch (args.Length > 0 ? args[0] : "")
{
    case "fuzz":
        Fuzzer.LibFuzzer.Run(data => FrameParseLoop.Run(data));
        return 0;
    case "replay" when args.Length > 1:
        return Replay(args[1..]);
    case "coverage" when args.Length > 1:
        return Coverage(args[1..]);
    case "make-corpus" when args.Length == 2:
        Console.WriteLine($"wrote {CorpusSeeds.WriteTo(args[1])} seeds to {args[1]}");
        return 0;
    default:
        Console.Error.WriteLine("usage: FastServe.Fuzz fuzz | replay PATH... | coverage PATH... | make-corpus DIR");
        return 2;
}

static List<string>? Inputs(string[] paths)
{
    var files = new List<string>();
    foreach (var p in paths)
    {
        if (Directory.Exists(p)) files.AddRange(Directory.GetFiles(p).Order(StringComparer.Ordinal));
        else if (File.Exists(p)) files.Add(p);
        else { Console.Error.WriteLine($"no such file or directory: {p}"); return null; }
    }
    return files;
}

// The instrumented code bumps SharpFuzz.Common.Trace.SharedMem[edge]; outside libFuzzer nothing has set that map,
// so this sets one up and ORs it over the inputs.
static unsafe int Coverage(string[] paths)
{
    if (Inputs(paths) is not { } files) return 2;
    const int MapSize = 1 << 16;
    var map = (byte*)NativeMemory.AllocZeroed(MapSize);
    SharpFuzz.Common.Trace.SharedMem = map;
    var hit = new bool[MapSize];
    int failed = 0;
    foreach (var f in files)
    {
        NativeMemory.Clear(map, MapSize);
        SharpFuzz.Common.Trace.PrevLocation = 0;
        try { FrameParseLoop.Run(File.ReadAllBytes(f)); }
        catch (Exception) { failed++; }
        for (int i = 0; i < MapSize; i++) hit[i] |= map[i] != 0;
    }
    int edges = hit.Count(h => h);
    Console.WriteLine($"coverage: {edges} edges of FastServe.Protocol hit by {files.Count} inputs ({failed} failed)"
        + (edges == 0 ? " - is this the instrumented build (build/fuzz/app)?" : ""));
    return failed == 0 ? 0 : 1;
}

static int Replay(string[] paths)
{
    if (Inputs(paths) is not { } files) return 2;
    int failed = 0, frames = 0;
    foreach (var f in files)
    {
        var bytes = File.ReadAllBytes(f);
        try { frames += FrameParseLoop.Run(bytes); }
        catch (Exception e)
        {
            failed++;
            Console.Error.WriteLine($"FAIL {f} ({bytes.Length} bytes): {e}");
            Console.Error.WriteLine(Convert.ToHexString(bytes));
        }
    }
    Console.WriteLine($"replayed {files.Count} inputs ({frames} frames): {failed} failed");
    return failed == 0 ? 0 : 1;
}
