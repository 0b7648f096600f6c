using System.Text.Json;
using NUnit.Framework;

namespace FastServe.Tests.Cli;

/// <summary>The engine commands through the NativeAOT executable.</summary>
[NonParallelizable]
public class EngineCliTests
{
    [Test]
    public void BatchResultsEqualOneAtATimeGenerate()
    {
        string root = TestModels.TempDir("batch");
        string input = Path.Combine(root, "in.jsonl"), output = Path.Combine(root, "out.jsonl");
        string[] prompts = ["The quick brown fox", "Grammar: she go to school yesterday.", "Hello", "Once upon a time, in a land far away, there lived"];
        var lines = new List<string>();
        for (int i = 0; i < prompts.Length; i++)
            lines.Add($$"""{"prompt": "{{prompts[i]}}", "max_tokens": {{6 + 3 * i}}, "ignore_eos": true, "id": "r{{i}}"}""");
        lines.Add("""{"prompt_ids": [1, 2, 3], "max_tokens": 4, "stop": ["zzzz"]}""");
        lines.Add("this is not json");
        lines.Add("""{"prompt": "x", "max_tokens": -1}""");
        lines.Add("""{"prompt": "x", "colour": "red"}""");
        File.WriteAllLines(input, lines);

        var b = CliTests.Run("batch", "--model", TestModels.Tiny, "--input", input, "--output", output, "--max-seqs", "3", "--max-batched-tokens", "16", "--json");
        Assert.That(b.Code, Is.Zero, b.Err);
        using (var summary = JsonDocument.Parse(b.Out))
        {
            Assert.That(summary.RootElement.GetProperty("requests").GetInt32(), Is.EqualTo(8));
            Assert.That(summary.RootElement.GetProperty("errors").GetInt32(), Is.EqualTo(3));
        }
        var results = File.ReadAllLines(output).Select(l => JsonDocument.Parse(l).RootElement).ToArray();
        Assert.That(results, Has.Length.EqualTo(8), "one result per input line");
        for (int i = 0; i < results.Length; i++) Assert.That(results[i].GetProperty("index").GetInt32(), Is.EqualTo(i), "input order");

        for (int i = 0; i < prompts.Length; i++)
        {
            var g = CliTests.Run("generate", "--model", TestModels.Tiny, "--max-tokens", (6 + 3 * i).ToString(), "--ignore-eos", "--json", prompts[i]);
            Assert.That(g.Code, Is.Zero, g.Err);
            using var gen = JsonDocument.Parse(g.Out);
            Assert.That(results[i].GetProperty("id").GetString(), Is.EqualTo($"r{i}"));
            Assert.That(results[i].GetProperty("status").GetString(), Is.EqualTo("finished"));
            Assert.That(Ids(results[i].GetProperty("token_ids")), Is.EqualTo(Ids(gen.RootElement.GetProperty("token_ids"))), $"prompt {i}");
            Assert.That(results[i].GetProperty("text").GetString(), Is.EqualTo(gen.RootElement.GetProperty("text").GetString()), $"prompt {i}");
            Assert.That(results[i].GetProperty("finish_reason").GetString(), Is.EqualTo(gen.RootElement.GetProperty("finish_reason").GetString()));
        }
        var ids = CliTests.Run("generate", "--model", TestModels.Tiny, "--prompt-ids", "1,2,3", "--max-tokens", "4", "--stop", "zzzz", "--json");
        using (var gen = JsonDocument.Parse(ids.Out))
            Assert.That(Ids(results[4].GetProperty("token_ids")), Is.EqualTo(Ids(gen.RootElement.GetProperty("token_ids"))));
        Assert.That(results[5].GetProperty("error").GetProperty("code").GetString(), Is.EqualTo("batch.invalid_json"));
        Assert.That(results[6].GetProperty("error").GetProperty("code").GetString(), Is.EqualTo("sampling.invalid"));
        Assert.That(results[7].GetProperty("error").GetProperty("code").GetString(), Is.EqualTo("batch.unknown_field"));
    }

    private static int[] Ids(JsonElement e) => [.. e.EnumerateArray().Select(x => x.GetInt32())];

    [TestCase(null)]
    [TestCase("500")]
    public void BatchWorksThroughABacklogFarLargerThanTheQueueBudget(string? queueIntervalMs)
    {
        // 1,500 requests queued at once: with the live queue budget on, the engine refuses most of them, and batch
        // must send the refused ones back together after each wait, not one per wait (which took minutes).
        string root = TestModels.TempDir("batch-backlog");
        string input = Path.Combine(root, "in.jsonl"), output = Path.Combine(root, "out.jsonl");
        const int n = 1500;
        File.WriteAllLines(input, Enumerable.Range(0, n).Select(i => $$"""{"prompt": "line {{i}}", "max_tokens": 2, "ignore_eos": true}"""));
        string[] args = ["batch", "--model", TestModels.Tiny, "--input", input, "--output", output, "--json"];
        if (queueIntervalMs is not null) args = [.. args, "--queue-interval-ms", queueIntervalMs];
        var b = CliTests.Run(args);
        Assert.That(b.Code, Is.Zero, b.Err);
        using var summary = JsonDocument.Parse(b.Out);
        Assert.That(summary.RootElement.GetProperty("finished").GetInt32(), Is.EqualTo(n));
        long waits = summary.RootElement.GetProperty("overload_waits").GetInt64();
        if (queueIntervalMs is null) Assert.That(waits, Is.Zero, "offline work has no queue budget by default");
        else Assert.That(waits, Is.LessThan(n / 10), "refused requests go back to the engine together");
        var results = File.ReadAllLines(output);
        Assert.That(results, Has.Length.EqualTo(n));
        Assert.That(results.All(l => l.Contains("\"status\":\"finished\"")), "every line finished, none left overloaded");
    }

    [Test]
    public void BatchRejectsAMissingInputWithACode()
    {
        var b = CliTests.Run("batch", "--model", TestModels.Tiny, "--input", "/nonexistent/in.jsonl", "--output", Path.Combine(TestModels.Root, "o.jsonl"));
        Assert.That(b.Code, Is.EqualTo(1));
        Assert.That(b.Err, Does.StartWith("error[batch.input_not_found]"));
    }

    [Test]
    public void BenchEngineOnTheSimulatedDeviceReportsJson()
    {
        var r = CliTests.Run("bench-engine", "--backend", "sim", "--rate", "300", "--duration", "1", "--warmup", "0.5", "--max-seqs", "256", "--max-batched-tokens", "2048", "--json");
        Assert.That(r.Code, Is.Zero, r.Err);
        using var doc = JsonDocument.Parse(r.Out);
        var best = doc.RootElement.GetProperty("points")[0];
        Assert.That(best.GetProperty("finished").GetInt32(), Is.GreaterThan(100));
        Assert.That(best.GetProperty("e2e").GetProperty("p99_ms").GetDouble(), Is.GreaterThan(30), "50 decode steps of ≥ 0.67 ms each");
        Assert.That(best.GetProperty("device_idle_fraction").GetDouble(), Is.InRange(0, 1));
        var bad = CliTests.Run("bench-engine", "--backend", "sim", "--rate", "10", "--sweep");
        Assert.That(bad.Code, Is.EqualTo(1));
        Assert.That(bad.Err, Does.StartWith("error[args.rate_or_sweep]"));
    }

}
