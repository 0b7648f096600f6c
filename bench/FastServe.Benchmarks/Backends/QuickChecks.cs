using System.Diagnostics;
using FastServe.Runtime.Backends;
using FastServe.Runtime.Backends.Cpu;

namespace FastServe.Benchmarks.Backends;

/// <summary>Hand-timed checks that print the figures the CPU backend's targets are stated in.</summary>
internal static class QuickChecks
{
    public static int Probe()
    {
        Console.WriteLine($"isa {CpuIsaInfo.Best.Name()}, {Environment.ProcessorCount} cores");
        for (int t = 1; t <= Environment.ProcessorCount; t++)
        {
            double bw = MachineProbe.MeasureCopyBandwidth(t);
            double fma = MachineProbe.MeasureFmaPeak(t);
            Console.WriteLine($"threads {t}: copy {bw / 1e9:F2} GB/s, fma peak {fma / 1e9:F1} GFLOP/s");
        }
        return 0;
    }

    /// <summary>Llama-1B decode-step matmuls (BF16 and FP8) and a 64-row prefill chunk, against the probes.</summary>
    public static int Decode(int threads)
    {
        int t = threads == 0 ? Environment.ProcessorCount : threads;
        double copy = MachineProbe.MeasureCopyBandwidth(t);
        double peak = MachineProbe.MeasureFmaPeak(t);
        Console.WriteLine($"threads {t}: copy {copy / 1e9:F2} GB/s, fma peak {peak / 1e9:F1} GFLOP/s");
        var results = new Dictionary<BenchDType, double>();
        foreach (var dt in new[] { BenchDType.BF16, BenchDType.Fp8 })
        {
            var b = new CpuDecodeStepBenchmarks { DType = dt, Threads = t };
            b.Setup();
            double best = Time(b.DecodeStepMatMuls, 1.5);
            b.Cleanup();
            double gbs = b.WeightBytes / best;
            results[dt] = best;
            Console.WriteLine($"decode {dt}: {best * 1e3:F2} ms/token, {gbs / 1e9:F2} GB/s = {gbs / copy * 100:F0}% of copy bandwidth");
        }
        Console.WriteLine($"FP8 speed-up over BF16: {results[BenchDType.BF16] / results[BenchDType.Fp8]:F2}x");
        foreach (var dt in new[] { BenchDType.F32, BenchDType.BF16, BenchDType.Fp8 })
        {
            foreach (int rows in new[] { 8, 64 })
            {
                var m = new CpuMatMulBenchmarks { DType = dt, Rows = rows, Shape = "8192x2048" };
                m.Setup();
                double s = Time(m.MatMul, 1.0);
                m.Cleanup();
                double flops = 2.0 * rows * 8192 * 2048 / s;
                Console.WriteLine($"matmul {dt} {rows} rows 8192x2048: {s * 1e6:F0} us, {flops / 1e9:F1} GFLOP/s = {flops / peak * 100:F0}% of FMA peak");
            }
        }
        return 0;
    }

    /// <summary>Every supported kernel path on the same matmul and attention shapes.</summary>
    public static int Isas()
    {
        foreach (var dt in new[] { BenchDType.F32, BenchDType.Fp8 })
        {
            foreach (int rows in new[] { 1, 8, 64 })
            {
                var line = $"matmul {dt} {rows,2} rows 8192x2048:";
                foreach (var isa in CpuIsaInfo.Supported)
                {
                    var m = new CpuMatMulBenchmarks { DType = dt, Rows = rows, Shape = "8192x2048", Isa = isa };
                    m.Setup();
                    double s = Time(m.MatMul, 0.7);
                    m.Cleanup();
                    line += $"  {isa.Name()} {s * 1e6,7:F0} us";
                }
                Console.WriteLine(line);
            }
        }
        foreach (var kv in new[] { KvDType.F32, KvDType.BF16 })
        {
            var line = $"attention decode 2048 positions {kv}:";
            foreach (var isa in CpuIsaInfo.Supported)
            {
                var a = new CpuAttentionBenchmarks { Positions = 2048, Kv = kv, Isa = isa };
                a.Setup();
                double s = Time(a.AttentionDecode, 0.5);
                a.Cleanup();
                line += $"  {isa.Name()} {s * 1e6,6:F0} us";
            }
            Console.WriteLine(line);
        }
        return 0;
    }

    private static double Time(Action a, double seconds)
    {
        a();
        double best = double.MaxValue;
        var total = Stopwatch.StartNew();
        while (total.Elapsed.TotalSeconds < seconds)
        {
            long s = Stopwatch.GetTimestamp();
            a();
            best = Math.Min(best, Stopwatch.GetElapsedTime(s).TotalSeconds);
        }
        return best;
    }
}
