using BenchmarkDotNet.Running;
using FastServe.Benchmarks.Backends;

// BenchmarkDotNet:  dotnet run -c Release --project bench/FastServe.Benchmarks -- --filter '*' [--job short]
// Machine ceilings: dotnet run -c Release --project bench/FastServe.Benchmarks -- probe
// Quick decode check (no BenchmarkDotNet): ... -- decode [threads]
if (args.Length > 0 && args[0] == "probe") return QuickChecks.Probe();
if (args.Length > 0 && args[0] == "decode") return QuickChecks.Decode(args.Length > 1 ? int.Parse(args[1]) : 0);
BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args);
return 0;
