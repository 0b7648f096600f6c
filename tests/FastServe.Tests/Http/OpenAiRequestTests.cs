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
    [TestCase("""{"prompt":"a","logprobs":true}""", false, "invalid_type")]
    [TestCase("""{"prompt":"a","n":"3"}""", false, "invalid_type")]
    [TestCase("""{"prompt":"a","max_tokens":"5"}""", false, "invalid_type")]
    [TestCase("""{"prompt":[1,"x"]}""", false, "invalid_type")]
    [TestCase("""{"prompt":"a","seed":"1"}""", false, "invalid_type")]
    [TestCase("""{"messages":[{"role":"user","content":"a"}],"logprobs":2}""", true, "invalid_type")]
    [TestCase("""{"messages":[{"role":"user","content":"a"}],"top_logprobs":3}""", true, "invalid_request")]
    [TestCase("""{"messages":[{"role":"user","content":"a"}],"logprobs":true,"top_logprobs":"3"}""", true, "invalid_type")]
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

    /// <summary>Every field given every kind of JSON value: a 400 or a parse, never an exception (JsonElement's
    /// TryGet* throw on a string where a number belongs).</summary>
    [Test]
    public void AnyValueInAnyFieldIsAnswerNeverAnException([Values] bool chat)
    {
        string[] fields = ["model", "prompt", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "seed", "stop", "n",
            "stream", "stream_options", "logprobs", "top_logprobs"];
        string[] values = ["\"3\"", "1.5", "-1", "1e300", "99999999999999999999999", "true", "[]", "[\"x\",1]", "[[1,\"x\"]]", "{}", "{\"include_usage\":\"y\"}",
            "[{\"role\":1}]", "[{\"role\":\"user\",\"content\":5}]"];
        string input = chat ? "\"messages\":[{\"role\":\"user\",\"content\":\"a\"}]" : "\"prompt\":\"a\"";
        foreach (var f in fields)
            foreach (var v in values)
            {
                string json = $"{{{input},\"{f}\":{v}}}";
                bool ok = false;
                HttpError err = default;
                Assert.DoesNotThrow(() => (ok, _, err) = Parse(json, chat), json);
                Assert.That(ok || err.Status == 400, json);
            }
    }

    [Test]
    public void LogprobsFieldsAsOpenAiSpellsThem()
    {
        var c = Parse("""{"prompt":"a","logprobs":3}""").Req;
        Assert.That((c.TokenLogprobs, c.TopLogprobs), Is.EqualTo((true, 3)));
        c = Parse("""{"prompt":"a","logprobs":0,"top_logprobs":7}""").Req;
        Assert.That((c.TokenLogprobs, c.TopLogprobs), Is.EqualTo((true, 0)), "completions: top_logprobs is not a field");
        Assert.That(Parse("""{"prompt":"a"}""").Req.TokenLogprobs, Is.False);
        var chat = Parse("""{"messages":[{"role":"user","content":"a"}],"logprobs":true,"top_logprobs":5}""", chat: true).Req;
        Assert.That((chat.TokenLogprobs, chat.TopLogprobs), Is.EqualTo((true, 5)));
        chat = Parse("""{"messages":[{"role":"user","content":"a"}],"logprobs":false,"top_logprobs":0}""", chat: true).Req;
        Assert.That((chat.TokenLogprobs, chat.TopLogprobs), Is.EqualTo((false, 0)));
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
