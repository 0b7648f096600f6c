using FastServe.Fuzz;
using SharpFuzz;

// Modes:
//   fuzz                 run under libFuzzer (run.sh starts this through driver/libfuzzer_driver.c)
//   replay PATH...       run every file (directories: every file inside) through the parse loop, no instrumentation
//   make-corpus DIR      write the seed corpus (CorpusSeeds) into DIR
switch (args.Length > 0 ? args[0] : "")
{
    case "fuzz":
        Fuzzer.LibFuzzer.Run(data => FrameParseLoop.Run(data));
        return 0;
    case "replay" when args.Length > 1:
        return Replay(args[1..]);
    case "make-corpus" when args.Length == 2:
        Console.WriteLine($"wrote {CorpusSeeds.WriteTo(args[1])} seeds to {args[1]}");
        return 0;
    default:
        Console.Error.WriteLine("usage: FastServe.Fuzz fuzz | replay PATH... | make-corpus DIR");
        return 2;
}

static int Replay(string[] paths)
{
    var files = new List<string>();
    foreach (var p in paths)
    {
        if (Directory.Exists(p)) files.AddRange(Directory.GetFiles(p).Order(StringComparer.Ordinal));
        else if (File.Exists(p)) files.Add(p);
        else { Console.Error.WriteLine($"replay: no such file or directory: {p}"); return 2; }
    }
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
