using System.CommandLine;
using FastServe.Runtime;
using FastServe.Runtime.Formats;
using FastServe.Runtime.Tokenization;
using Spectre.Console;

namespace FastServe.Cli.Commands;

/// <summary><c>fastserve inspect DIR</c>: architecture, parameter count, dtypes and quantization.</summary>
internal static class InspectCommand
{
    public static Command Create()
    {
        var dir = new Argument<string?>("dir") { Description = "Model directory (default: the built-in default model)", Arity = ArgumentArity.ZeroOrOne };
        var json = new Option<bool>("--json") { Description = "Machine-readable JSON output" };
        var cmd = new Command("inspect", "Describe a model directory.") { dir, json };
        cmd.SetAction(r =>
        {
            bool j = r.GetValue(json);
            string d = r.GetValue(dir) ?? ModelOptions.ResolveDefault();
            if (!Directory.Exists(d)) throw new FastServeException("model.not_found", "model directory does not exist", d);
            var cfg = ModelConfig.Load(Path.Combine(d, "config.json"));
            using var ckpt = Checkpoint.Open(d);
            var tok = TextTokenizer.Load(d, cfg.BosTokenId, cfg.EosTokenIds.Count > 0 ? cfg.EosTokenIds : null);
            long parameters = 0;
            var byDtype = new SortedDictionary<string, (int Count, long Bytes, long Elements)>();
            foreach (var t in ckpt.Tensors)
            {
                bool isScale = t.Name.EndsWith("_scale", StringComparison.Ordinal);
                if (!isScale) parameters += t.ElementCount;
                string k = t.DType.SafeTensorsName();
                var (c, b, e) = byDtype.GetValueOrDefault(k);
                byDtype[k] = (c + 1, b + t.ByteLength, e + t.ElementCount);
            }
            string quant = cfg.Quantization is { } q ? $"fp8 e4m3 ({(q.Scheme == FastServe.Runtime.Quantization.Fp8Scheme.PerChannel ? "per-channel" : "per-tensor")}), ignore: {string.Join(", ", q.Ignore)}" : "none";
            if (j)
            {
                Output.WriteJson(w =>
                {
                    w.WriteString("dir", Path.GetFullPath(d));
                    w.WriteString("architecture", cfg.Architecture);
                    w.WriteNumber("parameters", parameters);
                    w.WriteNumber("hidden_size", cfg.HiddenSize);
                    w.WriteNumber("intermediate_size", cfg.IntermediateSize);
                    w.WriteNumber("layers", cfg.NumLayers);
                    w.WriteNumber("heads", cfg.NumHeads);
                    w.WriteNumber("kv_heads", cfg.NumKvHeads);
                    w.WriteNumber("head_dim", cfg.HeadDim);
                    w.WriteNumber("vocab_size", cfg.VocabSize);
                    w.WriteNumber("max_position_embeddings", cfg.MaxPositionEmbeddings);
                    w.WriteBoolean("tie_word_embeddings", cfg.TieWordEmbeddings);
                    w.WriteString("quantization", quant);
                    w.WriteString("tokenizer", $"{tok.Kind} ({Path.GetFileName(tok.SourceFile)}, {tok.VocabCount} tokens)");
                    w.WriteNumber("checkpoint_bytes", ckpt.TotalBytes);
                    w.WriteStartObject("dtypes");
                    foreach (var (k, v) in byDtype)
                    {
                        w.WriteStartObject(k);
                        w.WriteNumber("tensors", v.Count);
                        w.WriteNumber("bytes", v.Bytes);
                        w.WriteEndObject();
                    }
                    w.WriteEndObject();
                });
                return 0;
            }
            var table = new Table().AddColumn("property").AddColumn("value");
            void Row(string k, string v) => table.AddRow(Markup.Escape(k), Markup.Escape(v));
            Row("directory", Path.GetFullPath(d));
            Row("architecture", cfg.Architecture);
            Row("parameters", $"{parameters:N0} ({parameters / 1e9:F3} B)");
            Row("shape", $"hidden {cfg.HiddenSize}, intermediate {cfg.IntermediateSize}, layers {cfg.NumLayers}, heads {cfg.NumHeads}/{cfg.NumKvHeads} kv, head_dim {cfg.HeadDim}");
            Row("vocabulary", $"{cfg.VocabSize} (tokenizer: {tok.Kind}, {Path.GetFileName(tok.SourceFile)}, {tok.VocabCount} tokens)");
            Row("context", $"{cfg.MaxPositionEmbeddings}, rope theta {cfg.RopeTheta}{(cfg.RopeScaling is { } rs ? $", llama3 scaling x{rs.Factor}" : "")}");
            Row("tied embeddings", cfg.TieWordEmbeddings ? "yes" : "no");
            Row("quantization", quant);
            foreach (var (k, v) in byDtype) Row($"dtype {k}", $"{v.Count} tensors, {Output.Bytes(v.Bytes)}");
            Row("checkpoint", $"{ckpt.Files.Count} file(s), {Output.Bytes(ckpt.TotalBytes)}");
            AnsiConsole.Write(table);
            return 0;
        });
        return cmd;
    }
}
