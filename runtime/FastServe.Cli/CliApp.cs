using System.CommandLine;
using FastServe.Cli.Commands;
using FastServe.Interop;
using FastServe.Runtime;
using FastServe.Vulkan;

namespace FastServe.Cli;

/// <summary>Builds the command tree and maps failures to one-line errors and exit codes.</summary>
internal static class CliApp
{
    /// <summary>Exit codes: 0 success, 1 runtime error (bad input, missing file...), 2 bad command line.</summary>
    public static int Run(string[] args)
    {
        // Backends that live above the runtime. Every fastserve process passes through here (serve's engine and
        // workers are this executable too), so --backend cuda means the same in each of them.
        CudaBackend.Register();
        VulkanBackend.Register();
        var root = new RootCommand("FastServe: serve Llama-family models with FP8 weights at high request rates.")
        {
            GenerateCommand.Create(),
            MakeModelCommand.Create(),
            QuantizeCommand.Create(),
            InspectCommand.Create(),
            BenchModelCommand.Create(),
            BatchCommand.Create(),
            EvalCommand.Create(),
            ShadowReportCommand.Create(),
            BenchEngineCommand.Create(),
            ClientCommand.Create(),
            BenchCommand.Create(),
            RouteCommand.Create(),
            AdminCommand.Create(),
            CompareChartCommand.Create(),
            CheckBackendCommand.Create(),
            SimulateFleetCommand.Create(),
            AutoscaleCommand.Create(),
        };
        foreach (var c in ServeCommand.Create()) root.Add(c);
        var parse = root.Parse(args);
        if (parse.Errors.Count > 0)
        {
            foreach (var e in parse.Errors) Console.Error.WriteLine($"error[args.invalid]: {e.Message}");
            Console.Error.WriteLine("Run 'fastserve --help' for usage.");
            return 2;
        }
        try
        {
            return parse.Invoke(new InvocationConfiguration { EnableDefaultExceptionHandler = false });
        }
        catch (FastServeException e)
        {
            return Output.Fail(e, JsonRequested(args));
        }
        catch (OperationCanceledException)
        {
            // Ctrl+C or SIGTERM stopped a command that was waiting (bench, client, admin): not a fault.
            Console.Error.WriteLine("error[interrupted]: stopped by a signal before it finished");
            return 130;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return Output.Fail(new FastServeException("io.error", e.Message), JsonRequested(args));
        }
        catch (Exception e) when (Environment.GetEnvironmentVariable("FASTSERVE_DEBUG") != "1")
        {
            // Unexpected: still one line; FASTSERVE_DEBUG=1 lets it through with its stack trace.
            return Output.Fail(new FastServeException("internal", $"{e.GetType().Name}: {e.Message}"), JsonRequested(args));
        }
    }

    internal static bool JsonRequested(string[] args) => args.Contains("--json");
}
