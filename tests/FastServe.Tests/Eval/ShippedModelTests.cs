using System.Text.Json;
using FastServe.Runtime.Model;
using FastServe.Runtime.Tokenization;
using NUnit.Framework;

namespace FastServe.Tests.Eval;

/// <summary>The trained models shipped under models/: each loads, its config is a valid LlamaForCausalLM config, and
/// its tokenizer round-trips the held-out set and encodes it exactly as the training side did.</summary>
[TestFixture("gec-small")]
[TestFixture("gec-tiny")]
public class ShippedModelTests(string name)
{
    private string Dir => Path.Combine(TestModels.RepoRoot, "models", name);

    [Test]
    public void TheConfigIsALlamaForCausalLMConfigAndTheWeightsLoad()
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(Dir, "config.json")));
        var c = doc.RootElement;
        Assert.That(c.GetProperty("architectures")[0].GetString(), Is.EqualTo("LlamaForCausalLM"));
        Assert.That(c.GetProperty("model_type").GetString(), Is.EqualTo("llama"));
        int hidden = c.GetProperty("hidden_size").GetInt32(), heads = c.GetProperty("num_attention_heads").GetInt32();
        Assert.That(c.GetProperty("num_attention_heads").GetInt32() % c.GetProperty("num_key_value_heads").GetInt32(), Is.Zero);
        Assert.That(c.GetProperty("head_dim").GetInt32() * heads, Is.EqualTo(hidden));
        using var model = LoadedModel.Load(Dir);
        Assert.That(model.Config.VocabSize, Is.EqualTo(c.GetProperty("vocab_size").GetInt32()));
        Assert.That(model.Tokenizer.VocabCount, Is.EqualTo(model.Config.VocabSize));
        Assert.That(new FileInfo(Path.Combine(Dir, "model.safetensors")).Length, Is.LessThan(30L << 20), "both models together stay under 50 MB");
    }

    [Test]
    public void TheTokenizerRoundTripsTheTestSetAndMatchesTheTrainingSide()
    {
        var tok = TextTokenizer.Load(Dir);
        int n = 0;
        foreach (string line in File.ReadLines(Path.Combine(Dir, "reference_outputs.jsonl")))
        {
            using var doc = JsonDocument.Parse(line);
            var r = doc.RootElement;
            string prompt = FastServe.Eval.GecFormat.Prompt(r.GetProperty("source").GetString()!);
            int[] ids = tok.Encode(prompt, addBos: true);
            Assert.That(ids, Is.EqualTo(r.GetProperty("prompt_ids").EnumerateArray().Select(x => x.GetInt32()).ToArray()), prompt);
            Assert.That(tok.Decode(ids.AsSpan(1)), Is.EqualTo(prompt));
            string answer = " " + r.GetProperty("target").GetString() + "\n";
            Assert.That(tok.Decode(tok.Encode(answer, addBos: false)), Is.EqualTo(answer));
            n++;
        }
        Assert.That(n, Is.GreaterThanOrEqualTo(1000));
    }
}
