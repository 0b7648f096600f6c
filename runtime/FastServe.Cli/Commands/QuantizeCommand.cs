using System.CommandLine;
using FastServe.Runtime;
using FastServe.Runtime.Quantization;

namespace FastServe.Cli.Commands;

/// <summary><c>fastserve quantize --model IN --out OUT [--scheme per-channel|per-tensor] [--layers attn,mlp]</c>.</summary>
internal static class QuantizeCommand
{
    public static Command Create()
    {
        var model = new Option<string>("--model", "-m") { Description = "Input model directory", Required = true };
        var output = new Option<string>("--out", "-o") { Description = "Output directory (must not exist)", Required = true };
        var scheme = new Option<string>("--scheme") { Description = "per-channel (default) or per-tensor weight scales", DefaultValueFactory = _ => "per-channel" };
        var layers = new Option<string>("--layers") { Description = "Which projections to quantize: attn, mlp or attn,mlp", DefaultValueFactory = _ => "attn,mlp" };
        var json = new Option<bool>("--json") { Description = "Machine-readable JSON output" };
        var cmd = new Command("quantize", "Write an FP8 (E4M3) copy of a checkpoint in the compressed-tensors layout.") { model, output, scheme, layers, json };
        cmd.SetAction(r =>
        {
            bool j = r.GetValue(json);
            var s = ModelOptions.ParseScheme(r.GetValue(scheme)!);
            var l = ParseLayers(r.GetValue(layers)!);
            var report = Output.WithProgress("Quantizing", j, p => CheckpointQuantizer.Run(r.GetValue(model)!, r.GetValue(output)!, s, l, p));
            if (j)
                Output.WriteJson(w =>
                {
                    w.WriteString("out", Path.GetFullPath(r.GetValue(output)!));
                    w.WriteNumber("tensors_quantized", report.TensorsQuantized);
                    w.WriteNumber("bytes_in", report.BytesIn);
                    w.WriteNumber("bytes_out", report.BytesOut);
                    w.WriteNumber("seconds", report.Elapsed.TotalSeconds);
                });
            else
                Console.WriteLine($"Quantized {report.TensorsQuantized} tensors: {Output.Bytes(report.BytesIn)} -> {Output.Bytes(report.BytesOut)} in {report.Elapsed.TotalSeconds:F1} s");
            return 0;
        });
        return cmd;
    }

    internal static QuantizeLayers ParseLayers(string s)
    {
        QuantizeLayers l = 0;
        foreach (var part in s.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries))
        {
            l |= part switch
            {
                "attn" => QuantizeLayers.Attention,
                "mlp" => QuantizeLayers.Mlp,
                _ => throw new FastServeException("args.invalid_layers", $"--layers accepts attn and mlp, not '{part}'", "--layers"),
            };
        }
        if (l == 0) throw new FastServeException("args.invalid_layers", "--layers names no layer group", "--layers");
        return l;
    }
}
