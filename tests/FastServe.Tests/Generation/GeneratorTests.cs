using FastServe.Runtime;
using FastServe.Runtime.Backends.Cpu;
using FastServe.Runtime.Generation;
using FastServe.Runtime.Model;
using NUnit.Framework;

namespace FastServe.Tests.Generation;

public class GeneratorTests : TinyCpuModelFixture
{
    [Test]
    public void GreedyIsDeterministicAndStreamsTheSameText()
    {
        using var g = new Generator(Model, Cpu, new GeneratorOptions { ContextLength = 128 });
        int[] prompt = Model.Tokenizer.Encode("The quick brown fox", addBos: true);
        var streamed = new System.Text.StringBuilder();
        var a = g.Generate(prompt, new SamplingParams { MaxTokens = 20, IgnoreEos = true }, t => streamed.Append(t.Text));
        var b = g.Generate(prompt, new SamplingParams { MaxTokens = 20, IgnoreEos = true });
        Assert.That(a.TokenIds, Is.EqualTo(b.TokenIds));
        Assert.That(a.TokenIds, Has.Length.EqualTo(20));
        Assert.That(a.Finish, Is.EqualTo(FinishReason.Length));
        Assert.That(streamed.ToString(), Is.EqualTo(a.Text));
        Assert.That(a.Text, Is.EqualTo(Model.Tokenizer.Decode(a.TokenIds)));
    }

    [Test]
    public void SeededSamplingRepeats()
    {
        using var g = new Generator(Model, Cpu, new GeneratorOptions { ContextLength = 64 });
        int[] prompt = [100, 200, 300];
        var p = new SamplingParams { Temperature = 1.5f, TopP = 0.9f, Seed = 11, MaxTokens = 12, IgnoreEos = true };
        Assert.That(g.Generate(prompt, p).TokenIds, Is.EqualTo(g.Generate(prompt, p).TokenIds));
    }

    [Test]
    public void StopStringEndsGenerationAndIsNotReturned()
    {
        using var g = new Generator(Model, Cpu, new GeneratorOptions { ContextLength = 128 });
        int[] prompt = Model.Tokenizer.Encode("Hello", addBos: true);
        var full = g.Generate(prompt, new SamplingParams { MaxTokens = 30, IgnoreEos = true });
        // Use a piece of the greedy output as the stop string.
        string stop = full.Text.Length >= 6 ? full.Text.Substring(full.Text.Length / 2, 3) : full.Text;
        Assume.That(stop, Is.Not.Empty);
        var r = g.Generate(prompt, new SamplingParams { MaxTokens = 30, IgnoreEos = true, Stop = [stop] });
        Assert.That(r.Finish, Is.EqualTo(FinishReason.Stop));
        Assert.That(r.Text, Does.Not.Contain(stop));
        Assert.That(full.Text, Does.StartWith(r.Text + stop));
    }

    [Test]
    public void EosEndsGeneration()
    {
        int[] prompt = [1, 2, 3];
        int[] free;
        using (var g = new Generator(Model, Cpu, new GeneratorOptions { ContextLength = 64 }))
            free = g.Generate(prompt, new SamplingParams { MaxTokens = 8, IgnoreEos = true }).TokenIds;

        // The same weights, with config.json naming the fourth greedy token as EOS.
        string dir = TestModels.TempDir("eos");
        foreach (var f in Directory.GetFiles(TestModels.Tiny))
            if (Path.GetFileName(f) != "config.json") File.CreateSymbolicLink(Path.Combine(dir, Path.GetFileName(f)), f);
        var cfg = Model.Config with { EosTokenIds = [free[3]] };
        File.WriteAllText(Path.Combine(dir, "config.json"), cfg.ToJson());
        using var m = LoadedModel.Load(dir);
        using var g2 = new Generator(m, Cpu, new GeneratorOptions { ContextLength = 64 });
        var r = g2.Generate(prompt, new SamplingParams { MaxTokens = 8 });
        int firstEos = Array.IndexOf(free, free[3]);
        Assert.That(r.Finish, Is.EqualTo(FinishReason.Eos));
        Assert.That(r.TokenIds, Is.EqualTo(free[..(firstEos + 1)]));
        Assert.That(r.Text, Is.EqualTo(m.Tokenizer.Decode(free[..firstEos])));
    }

    [Test]
    public void LongPromptIsChunkedAndContextBoundsGeneration()
    {
        using var g = new Generator(Model, Cpu, new GeneratorOptions { ContextLength = 40, PrefillChunk = 8 });
        int[] prompt = Enumerable.Range(500, 35).ToArray();
        var r = g.Generate(prompt, new SamplingParams { MaxTokens = 100, IgnoreEos = true });
        Assert.That(r.Finish, Is.EqualTo(FinishReason.ContextFull));
        Assert.That(prompt.Length + r.TokenIds.Length, Is.EqualTo(41)); // last token sampled from position 39's logits
    }

    [Test]
    public void BadPromptsAreRejected()
    {
        using var g = new Generator(Model, Cpu, new GeneratorOptions { ContextLength = 16 });
        Assert.That(Assert.Throws<FastServeException>(() => g.Generate(Enumerable.Range(0, 16).ToArray(), new SamplingParams()))!.Code, Is.EqualTo("prompt.too_long"));
        Assert.That(Assert.Throws<FastServeException>(() => g.Generate([], new SamplingParams()))!.Code, Is.EqualTo("prompt.empty"));
        Assert.That(Assert.Throws<FastServeException>(() => g.Generate([1, -5], new SamplingParams()))!.Code, Is.EqualTo("prompt.invalid_token"));
        Assert.That(Assert.Throws<FastServeException>(() => g.Generate([1, 999999999], new SamplingParams()))!.Code, Is.EqualTo("prompt.invalid_token"));
    }
}
