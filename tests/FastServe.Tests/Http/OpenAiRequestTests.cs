using System.Buffers;
using System.Text;
using FastServe.Http;
using NUnit.Framework;

namespace FastServe.Tests.Http;

/// <summary>The request parser's forms and refusals, and the chat template's mini-format.</summary>
public sealed class OpenAiRequestTests
{
    private static (bool Ok, OpenAiRequest Req, HttpError Err) Parse(string json, bool chat = false)
    {
        bool ok = OpenAiRequest.TryParse(new ReadOnlySequence<byte>(Encoding.UTF8.GetBytes(json)), chat, out var r, out var e);
        return (ok, r, e);
    }

    [Test]
    public void PromptFormsAndDefaults()
    {
        var (ok, r, _) = Parse("""{"prompt":["one"],"stop":"x","seed":-1,"top_k":-1,"stream_options":{"include_usage":null}}""");
        Assert.That(ok);
        Assert.That(r.Prompt, Is.EqualTo("one"));
        Assert.That(r.Stops, Is.EqualTo(new[] { "x" }));
        Assert.That(r.Seed, Is.EqualTo(ulong.MaxValue));
        Assert.That(r.TopK, Is.Zero);
        Assert.That(r.Temperature, Is.EqualTo(1f), "OpenAI's default temperature");
        Assert.That(r.MaxTokens, Is.Null);
        Assert.That(Parse("""{"prompt":[[5,6,7]]}""").Req.PromptIds, Is.EqualTo(new[] { 5, 6, 7 }));
        Assert.That(Parse("""{"prompt":[5,6,7]}""").Req.PromptIds, Is.EqualTo(new[] { 5, 6, 7 }));
        var chat = Parse("""{"messages":[{"role":"system","content":"be brief"},{"role":"user","content":[{"type":"text","text":"a "},{"type":"text","text":"b"}]}],"max_completion_tokens":7,"logprobs":false}""", chat: true);
        Assert.That(chat.Ok, chat.Err.Message);
        Assert.That(chat.Req.Messages!.Select(m => m.Content), Is.EqualTo(new[] { "be brief", "a b" }));
        Assert.That(chat.Req.MaxTokens, Is.EqualTo(7));
    }

    [TestCase("""{"prompt":["a","b"]}""", false, "batch_unsupported")]
    [TestCase("""{"prompt":[]}""", false, "invalid_type")]
    [TestCase("""{"prompt":[1,-2]}""", false, "invalid_type")]
    [TestCase("""{"prompt":"a","temperature":"hot"}""", false, "invalid_type")]
    [TestCase("""{"prompt":"a","stream":"yes"}""", false, "invalid_type")]
    [TestCase("""{"prompt":"a","top_logprobs":3}""", false, "logprobs_unsupported")]
    [TestCase("""{"messages":[{"role":"user","content":"a"}],"logprobs":true}""", true, "logprobs_unsupported")]
    [TestCase("""{"messages":[{"role":"user","content":[{"type":"image_url"}]}]}""", true, "content_unsupported")]
    [TestCase("""{"messages":[]}""", true, "invalid_type")]
    [TestCase("""{"prompt":"a"}""", true, "missing_field")]
    [TestCase("""[1,2]""", false, "invalid_json")]
    [TestCase("""{"prompt":"a","n":3}""", false, "n_unsupported")]
    public void Refusals(string json, bool chat, string code)
    {
        var (ok, _, err) = Parse(json, chat);
        Assert.That(ok, Is.False);
        Assert.That(err.Status, Is.EqualTo(400));
        Assert.That(err.Code, Is.EqualTo(code));
    }

    [Test]
    public void ChatTemplateDefaultAndFile()
    {
        var msgs = new[] { new ChatMessage("system", "S"), new ChatMessage("user", "first"), new ChatMessage("assistant", "A"), new ChatMessage("user", "last {system}") };
        Assert.That(Render(ChatTemplate.Default, msgs), Is.EqualTo("Correct: last {system}\nFixed:"), "the gec prompt format; placeholders in content stay");
        string dir = TestModels.TempDir("chat-template");
        string path = Path.Combine(dir, "t.txt");
        File.WriteAllText(path, "# a comment\nmessage: [{role}] {content}\\n\nprompt: {system}|{messages}<go>\\\\\n");
        Assert.That(Render(ChatTemplate.Load(path), msgs), Is.EqualTo("S|[system] S\n[user] first\n[assistant] A\n[user] last {system}\n<go>\\"));
        File.WriteAllText(path, "template: x\n");
        Assert.Throws<FormatException>(() => ChatTemplate.Load(path));
        File.WriteAllText(path, "message: x\n");
        Assert.Throws<FormatException>(() => ChatTemplate.Load(path));
    }

    private static string Render(ChatTemplate t, ChatMessage[] msgs)
    {
        Assert.That(t.TryRender(msgs, out string prompt, out string error), Is.True, error);
        return prompt;
    }
}
