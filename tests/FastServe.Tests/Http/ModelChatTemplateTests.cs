using System.Text.Json;
using System.Text.Json.Nodes;
using FastServe.Http;
using NUnit.Framework;

namespace FastServe.Tests.Http;

/// <summary>A model directory's <c>chat_template</c> (tokenizer_config.json) read into a <see cref="ChatTemplate"/>: its
/// forms, its special tokens, and the refusals that stop <c>serve</c> at start.</summary>
[TestFixture]
public sealed class ModelChatTemplateTests
{
    private static string ModelDir(JsonObject config)
    {
        string dir = TestModels.TempDir("model-chat-template");
        File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), config.ToJsonString());
        return dir;
    }

    private static string Render(ChatTemplate t, params ChatMessage[] msgs)
    {
        Assert.That(t.TryRender(msgs, out string prompt, out string error), Is.True, error);
        return prompt;
    }

    [Test]
    public void StringFormWithSpecialTokensInBothShapes()
    {
        var t = ChatTemplate.FromModel(ModelDir(new JsonObject
        {
            ["chat_template"] = "{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m.content }}{{ eos_token }}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}",
            ["bos_token"] = new JsonObject { ["content"] = "<s>", ["lstrip"] = false },
            ["eos_token"] = "</s>",
        }));
        Assert.That(t, Is.Not.Null);
        Assert.That(t!.IsJinja, Is.True);
        Assert.That(t.Source, Does.Contain("tokenizer_config.json"));
        Assert.That(Render(t, new ChatMessage("user", "hi"), new ChatMessage("assistant", "yo")), Is.EqualTo("<s><user>hi</s><assistant>yo</s><assistant>"));
    }

    [Test]
    public void ListFormUsesTheTemplateNamedDefault()
    {
        var t = ChatTemplate.FromModel(ModelDir(new JsonObject
        {
            ["chat_template"] = new JsonArray(
                new JsonObject { ["name"] = "tool_use", ["template"] = "TOOLS" },
                new JsonObject { ["name"] = "default", ["template"] = "DEFAULT {{ messages[-1].content }}" }),
        }));
        Assert.That(Render(t!, new ChatMessage("user", "x")), Is.EqualTo("DEFAULT x"));
    }

    [Test]
    public void NoTemplateMeansNull()
    {
        Assert.That(ChatTemplate.FromModel(TestModels.TempDir("no-config")), Is.Null, "no tokenizer_config.json");
        Assert.That(ChatTemplate.FromModel(ModelDir(new JsonObject { ["eos_token"] = "</s>" })), Is.Null, "no chat_template");
        Assert.That(ChatTemplate.FromModel(ModelDir(new JsonObject { ["chat_template"] = null })), Is.Null, "a null chat_template");
        Assert.That(ChatTemplate.FromModel(Path.Combine(TestModels.RepoRoot, "models", "gec-tiny")), Is.Null, "gec-tiny keeps the default");
    }

    [Test]
    public void UnusableTemplatesAreRefusedWithTheReason()
    {
        var e = Assert.Throws<FormatException>(() => ChatTemplate.FromModel(ModelDir(new JsonObject { ["chat_template"] = "ok\n{% if x %}never closed" })));
        Assert.That(e!.Message, Does.Contain("line 2").And.Contain("endif"));
        e = Assert.Throws<FormatException>(() => ChatTemplate.FromModel(ModelDir(new JsonObject
        {
            ["chat_template"] = new JsonArray(new JsonObject { ["name"] = "tool_use", ["template"] = "T" }),
        })));
        Assert.That(e!.Message, Does.Contain("default"));
        e = Assert.Throws<FormatException>(() => ChatTemplate.FromModel(ModelDir(new JsonObject { ["chat_template"] = 3 })));
        Assert.That(e!.Message, Does.Contain("must be a string"));
        string dir = TestModels.TempDir("bad-json");
        File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), "{\"chat_template\": ");
        Assert.Throws<FormatException>(() => ChatTemplate.FromModel(dir));
    }

    [Test]
    public void ARenderErrorIsAReasonNotAnException()
    {
        var t = ChatTemplate.FromModel(ModelDir(new JsonObject
        {
            ["chat_template"] = "{% for m in messages %}{% if m.role == 'tool' %}{{ raise_exception('no tools here') }}{% endif %}{{ m.content }}{% endfor %}",
        }))!;
        Assert.That(t.TryRender([new ChatMessage("tool", "x")], out _, out string error), Is.False);
        Assert.That(error, Does.Contain("no tools here"));
        Assert.That(ChatTemplate.ErrorCode, Is.EqualTo("chat_template.error"));
        Assert.That(Render(t, new ChatMessage("user", "fine")), Is.EqualTo("fine"), "the template still serves other requests");
    }

    [Test]
    public void OutputLimitGrowsWithTheMessages()
    {
        // A template that repeats the content a few times must not be refused for a long (but legitimate) message.
        var t = ChatTemplate.FromModel(ModelDir(new JsonObject { ["chat_template"] = "{{ messages[0].content }}|{{ messages[0].content | trim }}" }))!;
        string big = new('x', 600_000);
        Assert.That(Render(t, new ChatMessage("user", big)), Has.Length.EqualTo(1_200_001));
    }
}
