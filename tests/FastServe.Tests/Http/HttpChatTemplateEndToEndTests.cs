using System.Net;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using FastServe.Client;
using FastServe.Protocol;
using FastServe.Tests.Server;
using NUnit.Framework;

namespace FastServe.Tests.Http;

/// <summary>
/// A model's Jinja chat template through a real replica (`serve --http-port`): gec-tiny copied with a
/// <c>chat_template</c> that builds its trained prompt from another message layout, so the chat answer must equal the
/// completion of that prompt; a template's refusal is a 400 and the replica keeps serving; a template that cannot be
/// parsed stops <c>serve</c> at start unless <c>--chat-template</c> replaces it.
/// </summary>
[TestFixture]
[NonParallelizable]
public sealed class HttpChatTemplateEndToEndTests
{
    private const string Sentence = "she go to school yesterday";
    private const string Prompt = "Correct: " + Sentence + "\nFixed:";
    // The sentence comes in the system message, the instruction in the user's: the default template would build
    // "Correct: Correct\nFixed:" from this, so only the model's template gives the trained prompt.
    private const string Template =
        "{%- if messages | length != 2 or messages[0].role != 'system' -%}" +
        "{{ raise_exception('expected a system message with the text and a user message with the instruction') }}" +
        "{%- endif -%}{{ messages[1].content | trim }}: {{ messages[0].content | trim }}\nFixed:";

    private static string CopyModel(string template)
    {
        string src = Path.Combine(TestModels.RepoRoot, "models", "gec-tiny");
        string dir = TestModels.TempDir("gec-tiny-jinja");
        foreach (var f in Directory.GetFiles(src)) File.Copy(f, Path.Combine(dir, Path.GetFileName(f)));
        string configPath = Path.Combine(dir, "tokenizer_config.json");
        var config = JsonNode.Parse(File.ReadAllText(configPath))!.AsObject();
        config["chat_template"] = template;
        File.WriteAllText(configPath, config.ToJsonString());
        return dir;
    }

    private static async Task<(HttpStatusCode Status, JsonElement Body)> Chat(HttpClient http, int port, string messagesJson)
    {
        // No model named: the copy is served under its directory's name.
        string body = $"{{\"messages\":{messagesJson},\"max_tokens\":24,\"temperature\":0}}";
        using var res = await http.PostAsync($"http://127.0.0.1:{port}/v1/chat/completions", new StringContent(body, Encoding.UTF8, "application/json"));
        using var doc = JsonDocument.Parse(await res.Content.ReadAsStringAsync());
        return (res.StatusCode, doc.RootElement.Clone());
    }

    private static async Task<CompletionResult> Greedy(int port)
    {
        await using var bin = await FastServeClient.ConnectAsync("127.0.0.1", port);
        var want = await bin.CompleteAsync(new CompletionRequest { Prompt = Prompt, Params = RequestParams.Default with { MaxTokens = 24, Temperature = 0 } });
        Assert.That(want.IsOk, want.Message);
        Assert.That(want.Text.Trim(), Is.Not.Empty);
        return want;
    }

    [Test]
    public async Task TheModelsTemplateBuildsTheChatPromptAndItsRefusalIsA400()
    {
        using var replica = ReplicaProcess.Start(["--model", CopyModel(Template), "--workers", "1", "--http-port", "0"], agent: false);
        Assert.That(() => replica.Stderr, Does.Contain("Jinja chat_template").After(3000, 50), "the one log line naming the template used");
        using var http = new HttpClient();
        var want = await Greedy(replica.Port);

        var (status, body) = await Chat(http, replica.HttpPort, $"[{{\"role\":\"system\",\"content\":\"{Sentence}\"}},{{\"role\":\"user\",\"content\":\" Correct \"}}]");
        Assert.That(status, Is.EqualTo(HttpStatusCode.OK), body.ToString());
        Assert.That(body.GetProperty("choices")[0].GetProperty("message").GetProperty("content").GetString(), Is.EqualTo(want.Text));
        Assert.That(body.GetProperty("usage").GetProperty("prompt_tokens").GetInt32(), Is.EqualTo(want.PromptTokens), "the same prompt, token for token");

        (status, body) = await Chat(http, replica.HttpPort, $"[{{\"role\":\"user\",\"content\":\"{Sentence}\"}}]");
        Assert.That(status, Is.EqualTo(HttpStatusCode.BadRequest), body.ToString());
        var error = body.GetProperty("error");
        Assert.That(error.GetProperty("code").GetString(), Is.EqualTo("chat_template.error"));
        Assert.That(error.GetProperty("message").GetString(), Does.Contain("expected a system message"));
        Assert.That(error.GetProperty("param").GetString(), Is.EqualTo("messages"));

        (status, _) = await Chat(http, replica.HttpPort, $"[{{\"role\":\"system\",\"content\":\"{Sentence}\"}},{{\"role\":\"user\",\"content\":\"Correct\"}}]");
        Assert.That(status, Is.EqualTo(HttpStatusCode.OK), "still serving after a refusal");
    }

    [Test]
    public async Task ATemplateThatCannotBeParsedStopsServeUnlessAFileReplacesIt()
    {
        string model = CopyModel("{% for m in messages %}{{ m.content }}");   // no endfor
        var (code, stdout, stderr) = HttpTools.Run(DistBinary.Path, ["serve", "--model", model, "--port", "0", "--http-port", "0", "--json"], seconds: 30);
        Assert.That(code, Is.Not.Zero);
        Assert.That(stdout + stderr, Does.Contain("model.invalid_chat_template").And.Contain("endfor"));

        // --chat-template takes precedence over the model's template, so the same model serves with a file.
        string file = Path.Combine(TestModels.TempDir("chat-template-file"), "gec.txt");
        File.WriteAllText(file, "prompt: Correct: {system}\\nFixed:\n");
        using var replica = ReplicaProcess.Start(["--model", model, "--workers", "1", "--http-port", "0", "--chat-template", file], agent: false);
        using var http = new HttpClient();
        var want = await Greedy(replica.Port);
        var (status, body) = await Chat(http, replica.HttpPort, $"[{{\"role\":\"system\",\"content\":\"{Sentence}\"}},{{\"role\":\"user\",\"content\":\"x\"}}]");
        Assert.That(status, Is.EqualTo(HttpStatusCode.OK), body.ToString());
        Assert.That(body.GetProperty("choices")[0].GetProperty("message").GetProperty("content").GetString(), Is.EqualTo(want.Text));
    }
}
