using System.Globalization;
using FastServe.Runtime;
using FastServe.Runtime.Backends;

namespace FastServe.Benchmarks.Model;

/// <summary>
/// Command line of the <c>decode-batch</c> quick check. Every mistake is a <see cref="FastServeException"/> with an
/// <c>args.*</c> code and the flag as its path: <c>args.invalid</c> (unknown flag, missing or non-integer value,
/// missing <c>--model</c>), <c>args.invalid_batches</c>, <c>args.invalid_context</c>, <c>args.invalid_steps</c>,
/// <c>args.invalid_threads</c>, <c>args.invalid_quantize</c>, <c>args.invalid_kv_dtype</c>.
/// </summary>
internal sealed record DecodeBatchOptions(
    string ModelDir, bool Quantize, int[] Batches, int Context, int Steps, int Threads, KvDType KvDType, bool Json)
{
    public const int MaxBatch = 256;
    public const int MaxContext = 32768;
    public const int MaxSteps = 4096;

    public const string Usage =
        "usage: decode-batch --model DIR [--quantize fp8|none] [--batches 1,2,4,8,16,32,64] [--context 64] [--steps 16] " +
        "[--threads 0] [--kv-dtype f32|bf16] [--json]";

    /// <summary>Parses the arguments after the mode name; <c>--flag value</c> and <c>--flag=value</c> both work.
    /// Returns null when help was asked for.</summary>
    public static DecodeBatchOptions? Parse(string[] args)
    {
        string? model = null;
        bool quantize = false, json = false;
        int[] batches = [1, 2, 4, 8, 16, 32, 64];
        int context = 64, steps = 16, threads = 0;
        var kv = KvDType.F32;
        for (int i = 0; i < args.Length; i++)
        {
            string a = args[i];
            string? inline = null;
            int eq = a.IndexOf('=');
            if (a.StartsWith("--", StringComparison.Ordinal) && eq > 0)
            {
                inline = a[(eq + 1)..];
                a = a[..eq];
            }
            string Value()
            {
                if (inline is not null) return inline;
                if (i + 1 >= args.Length) throw new FastServeException("args.invalid", "missing value", a);
                return args[++i];
            }
            switch (a)
            {
                case "-h" or "--help": return null;
                case "--json":
                    if (inline is not null) throw new FastServeException("args.invalid", "takes no value", a);
                    json = true;
                    break;
                case "--model" or "-m": model = Value(); break;
                case "--quantize":
                    quantize = Value() switch
                    {
                        "fp8" => true,
                        "none" => false,
                        var q => throw new FastServeException("args.invalid_quantize", $"accepts fp8 or none, not '{q}'", a),
                    };
                    break;
                case "--kv-dtype":
                    kv = Value() switch
                    {
                        "f32" => KvDType.F32,
                        "bf16" => KvDType.BF16,
                        var k => throw new FastServeException("args.invalid_kv_dtype", $"accepts f32 or bf16, not '{k}'", a),
                    };
                    break;
                case "--batches": batches = ParseBatches(Value(), a); break;
                case "--context": context = Int(Value(), a, 1, MaxContext, "args.invalid_context"); break;
                case "--steps": steps = Int(Value(), a, 1, MaxSteps, "args.invalid_steps"); break;
                case "--threads" or "-t": threads = Int(Value(), a, 0, 1024, "args.invalid_threads"); break;
                default: throw new FastServeException("args.invalid", "unknown option (" + Usage + ")", a);
            }
        }
        if (model is null) throw new FastServeException("args.invalid", "--model DIR is required", "--model");
        return new DecodeBatchOptions(model, quantize, batches, context, steps, threads, kv, json);
    }

    private static int Int(string s, string flag, int min, int max, string rangeCode)
    {
        if (!int.TryParse(s, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out int v))
            throw new FastServeException("args.invalid", $"expects an integer, not '{s}'", flag);
        if (v < min || v > max) throw new FastServeException(rangeCode, $"must be {min}..{max}, got {v}", flag);
        return v;
    }

    private static int[] ParseBatches(string s, string flag)
    {
        var parts = s.Split(',', StringSplitOptions.TrimEntries);
        var list = new List<int>(parts.Length);
        foreach (var p in parts)
        {
            if (!int.TryParse(p, NumberStyles.None, CultureInfo.InvariantCulture, out int b) || b < 1 || b > MaxBatch)
                throw new FastServeException("args.invalid_batches", $"expects a comma-separated list of batch sizes 1..{MaxBatch}, got '{s}'", flag);
            if (!list.Contains(b)) list.Add(b);
        }
        list.Sort();
        return [.. list];
    }
}
