using System.CommandLine;
using System.Text.Json;
using FastServe.Runtime;
using FastServe.Runtime.Backends;
using FastServe.Runtime.Backends.Cpu;
using FastServe.Runtime.Backends.Reference;
using FastServe.Vulkan;
using Spectre.Console;

namespace FastServe.Cli.Commands;

/// <summary>
/// <c>fastserve check-backend --backend NAME</c>: every IBackend op of backend NAME against the scalar reference
/// backend on seeded random inputs and awkward shapes (<see cref="BackendCheck"/>), one line per op × shape × dtype
/// with its errors and tolerance. Exits 0 only when every case passes (skipped cases, such as a KV dtype the backend
/// refuses, do not fail it).
/// </summary>
internal static class CheckBackendCommand
{
    public static Command Create()
    {
        var backendOpt = new Option<string>("--backend") { Description = "Backend to check: cpu, reference, cuda or vulkan", DefaultValueFactory = _ => "cpu" };
        var seedOpt = new Option<int>("--seed") { Description = "Seed of the random inputs", DefaultValueFactory = _ => 1 };
        var opOpt = new Option<string?>("--op") { Description = "Only ops whose name contains this text (e.g. MatMul)" };
        var threadsOpt = new Option<int>("--threads", "-t") { Description = "Compute threads of the cpu backend (0 = all cores)" };
        var jsonOpt = new Option<bool>("--json") { Description = "Machine-readable JSON output" };
        var cmd = new Command("check-backend", "Check every op of a backend against the scalar reference backend (like ggml's test-backend-ops).")
        {
            backendOpt, seedOpt, opOpt, threadsOpt, jsonOpt,
        };
        cmd.SetAction(r =>
        {
            bool json = r.GetValue(jsonOpt);
            string name = r.GetValue(backendOpt)!;
            int threads = r.GetValue(threadsOpt);
            if (threads < 0 || threads > 1024) throw new FastServeException("args.invalid_threads", "--threads must be between 0 and 1024", "--threads");
            int seed = r.GetValue(seedOpt);
            string? op = r.GetValue(opOpt);
            var cases = BackendCheck.Cases(seed).Where(c => op is null || c.Op.Contains(op, StringComparison.OrdinalIgnoreCase)).ToList();
            if (cases.Count == 0) throw new FastServeException("args.invalid_op", $"no op matches '{op}'", "--op");

            using var backend = BackendFactory.Create(name, threads);
            using var reference = new ReferenceBackend();
            var results = Output.WithProgress($"Checking {name} against reference", json, p =>
            {
                var list = new List<CheckResult>(cases.Count);
                for (int i = 0; i < cases.Count; i++)
                {
                    list.Add(BackendCheck.Run(cases[i], backend, reference));
                    p(i + 1, cases.Count);
                }
                return list;
            });
            int failed = results.Count(x => x.Outcome == CheckOutcome.Fail);
            int skipped = results.Count(x => x.Outcome == CheckOutcome.Skip);
            // The CPU backend's kernel path (avx512, avx2, portable): which build of fastserve ran is part of what passed.
            string? isa = backend is CpuBackend cpu ? cpu.Isa : null;
            // Likewise the Vulkan device and the MatMul shaders it took (GEMV, tiled, cooperative matrix).
            string? device = backend is VulkanBackend vk ? $"{vk.Features}; matmul: {vk.MatMulPaths}" : null;
            if (json) WriteJson(name, isa, device, seed, results, failed, skipped);
            else WriteTable(name, isa, device, seed, results, failed, skipped);
            return failed == 0 ? 0 : 1;
        });
        return cmd;
    }

    private static void WriteJson(string backend, string? isa, string? device, int seed, List<CheckResult> results, int failed, int skipped)
    {
        static void Num(Utf8JsonWriter w, string name, double v)
        {
            if (double.IsFinite(v)) w.WriteNumber(name, v);
            else w.WriteNull(name); // NaN (the op threw) or infinity (non-finite output) have no JSON number
        }
        Output.WriteJson(w =>
        {
            w.WriteString("backend", backend);
            if (isa is not null) w.WriteString("isa", isa);
            if (device is not null) w.WriteString("device", device);
            w.WriteNumber("seed", seed);
            w.WriteBoolean("passed", failed == 0);
            w.WriteNumber("cases", results.Count);
            w.WriteNumber("failed", failed);
            w.WriteNumber("skipped", skipped);
            w.WriteStartArray("results");
            foreach (var x in results)
            {
                w.WriteStartObject();
                w.WriteString("op", x.Op);
                w.WriteString("shape", x.Shape);
                w.WriteString("dtype", x.DType);
                Num(w, "max_abs_error", x.MaxAbsError);
                Num(w, "max_rel_error", x.MaxRelError);
                Num(w, "nrmse", x.Nrmse);
                w.WriteNumber("tolerance", x.Tolerance);
                w.WriteString("result", x.Outcome.ToString().ToLowerInvariant());
                if (x.Detail is not null) w.WriteString("detail", x.Detail);
                w.WriteEndObject();
            }
            w.WriteEndArray();
        });
    }

    private static void WriteTable(string backend, string? isa, string? device, int seed, List<CheckResult> results, int failed, int skipped)
    {
        static string E(double v) => double.IsNaN(v) ? "-" : double.IsInfinity(v) ? "inf" : v == 0 ? "0" : v.ToString("0.00e+00", System.Globalization.CultureInfo.InvariantCulture);
        // Piped output has no terminal width; keep one case per line instead of Spectre's 80-column default.
        if (Console.IsOutputRedirected) AnsiConsole.Profile.Width = 200;
        var t = new Table().AddColumns("op", "shape", "dtype", "max abs err", "max rel err", "nrmse", "tolerance", "result");
        foreach (var x in results)
        {
            string outcome = x.Outcome switch
            {
                CheckOutcome.Pass => "[green]pass[/]",
                CheckOutcome.Skip => "[grey]skip[/]",
                _ => "[red]FAIL[/]",
            };
            if (x.Detail is not null) outcome += $" [grey]{Markup.Escape(x.Detail)}[/]";
            t.AddRow(Markup.Escape(x.Op), Markup.Escape(x.Shape), Markup.Escape(x.DType), E(x.MaxAbsError), E(x.MaxRelError), E(x.Nrmse), E(x.Tolerance), outcome);
        }
        AnsiConsole.Write(t);
        if (device is not null) AnsiConsole.MarkupLine($"device: {Markup.Escape(device)}");
        AnsiConsole.MarkupLine($"backend [bold]{Markup.Escape(backend)}[/]{(isa is null ? "" : $" ({isa})")}, seed {seed}: {results.Count - failed - skipped} passed, " +
            $"{(failed > 0 ? $"[red]{failed} failed[/]" : "0 failed")}, {skipped} skipped");
    }
}
