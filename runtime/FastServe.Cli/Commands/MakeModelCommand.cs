using System.CommandLine;
using System.Diagnostics;
using FastServe.Runtime.Model;

namespace FastServe.Cli.Commands;

/// <summary><c>fastserve make-model --preset tiny|small|1b --out DIR [--seed N]</c>.</summary>
internal static class MakeModelCommand
{
    public static Command Create()
    {
        var preset = new Option<string>("--preset") { Description = "tiny, small or 1b (the shape of Llama-3.2-1B)", DefaultValueFactory = _ => "small" };
        var output = new Option<string>("--out", "-o") { Description = "Output directory (must not exist or be empty)", Required = true };
        var seed = new Option<ulong>("--seed") { Description = "Random seed; the same seed gives identical files" };
        var json = new Option<bool>("--json") { Description = "Machine-readable JSON output" };
        var cmd = new Command("make-model", "Write a deterministic random-weight Llama model with a real tokenizer.") { preset, output, seed, json };
        cmd.SetAction(r =>
        {
            bool j = r.GetValue(json);
            var p = ModelPreset.Parse(r.GetValue(preset)!);
            string dir = r.GetValue(output)!;
            var sw = Stopwatch.StartNew();
            Output.WithProgress($"Making {p.Name} ({p.ParameterCount / 1e6:F0} M parameters)", j, prog => ModelMaker.Make(p, dir, r.GetValue(seed), prog));
            long bytes = new DirectoryInfo(dir).EnumerateFiles().Sum(f => f.Length);
            if (j)
                Output.WriteJson(w =>
                {
                    w.WriteString("out", Path.GetFullPath(dir));
                    w.WriteString("preset", p.Name);
                    w.WriteNumber("parameters", p.ParameterCount);
                    w.WriteNumber("bytes", bytes);
                    w.WriteNumber("seconds", sw.Elapsed.TotalSeconds);
                });
            else
                Console.WriteLine($"Wrote {p.Name} ({p.ParameterCount / 1e6:F1} M parameters, {Output.Bytes(bytes)}) to {dir} in {sw.Elapsed.TotalSeconds:F1} s");
            return 0;
        });
        return cmd;
    }
}
