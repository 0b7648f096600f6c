using BenchmarkDotNet.Running;
using FastServe.Benchmarks.Backends;
using FastServe.Benchmarks.Model;

// BenchmarkDotNet:  dotnet run -c Release --project bench/FastServe.Benchmarks -- --filter '*' [--job short]
// Machine ceilings: dotnet run -c Release --project bench/FastServe.Benchmarks -- probe
// Quick decode check (no BenchmarkDotNet): ... -- decode [threads]
// Kernel paths side by side:              ... -- isas
// Decode tok/s against batch size:        ... -- decode-batch --model DIR [--quantize fp8] [--batches 1,2,4] [--json]
// Engine↔worker IPC cost per message:    ... -- ipc [--json]
if (args.Length > 0 && args[0] == "probe") return QuickChecks.Probe();
if (args.Length > 0 && args[0] == "decode") return QuickChecks.Decode(args.Length > 1 ? int.Parse(args[1]) : 0);
if (args.Length > 0 && args[0] == "isas") return QuickChecks.Isas();
if (args.Length > 0 && args[0] == "decode-batch") return DecodeBatch.Run(args[1..]);
if (args.Length > 0 && args[0] == "ipc") return FastServe.Benchmarks.Server.IpcBench.Run(args[1..]);
BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args);
return 0;
