using System.Diagnostics;
using FastServe.Http.Jinja;
using NUnit.Framework;

namespace FastServe.Tests.Http;

/// <summary>
/// The Jinja interpreter behind model chat templates: templates shaped like the real ones (ChatML, Llama 3, Mistral,
/// Zephyr, Gemma, Phi-3) against outputs worked out by hand under transformers' settings (trim_blocks, lstrip_blocks),
/// single features against Jinja2's answers, and hostile templates that must fail with an error at a bounded cost.
/// </summary>
[TestFixture]
public sealed class JinjaTemplateTests
{
    private static List<object?> Messages(params (string Role, string Content)[] ms) =>
        ms.Select(m => (object?)new Dictionary<string, object?> { ["role"] = m.Role, ["content"] = m.Content }).ToList();

    private static (bool Ok, string Text) Try(string template, List<object?>? messages = null, JinjaLimits? limits = null)
    {
        Assert.That(JinjaTemplate.TryParse(template, out var t, out string perr), Is.True, perr);
        var ctx = new Dictionary<string, object?>
        {
            ["messages"] = messages ?? Messages(("user", "hi")),
            ["add_generation_prompt"] = true,
            ["bos_token"] = "<s>",
            ["eos_token"] = "</s>",
            ["tools"] = null,
        };
        bool ok = t.TryRender(ctx, limits ?? JinjaLimits.Default, out string output, out string error);
        return (ok, ok ? output : error);
    }

    private static string Render(string template, List<object?>? messages = null)
    {
        var (ok, text) = Try(template, messages);
        Assert.That(ok, Is.True, text);
        return text;
    }

    private const string ChatMl =
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}" +
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

    [Test]
    public void ChatMlTemplate()
    {
        Assert.That(Render(ChatMl, Messages(("system", "You are helpful."), ("user", "Hi"))),
            Is.EqualTo("<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"));
    }

    [Test]
    public void Llama3Template()
    {
        const string llama3 =
            "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + " +
            "'<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}" +
            "{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}";
        Assert.That(Render(llama3, Messages(("system", "Be brief."), ("user", "  Hi there \n"))),
            Is.EqualTo("<s><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
                + "<|start_header_id|>assistant<|end_header_id|>\n\n"));
    }

    private const string Mistral =
        "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}" +
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}" +
        "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}" +
        "{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}";

    [Test]
    public void MistralTemplateAndItsRefusals()
    {
        Assert.That(Render(Mistral, Messages(("user", "a"), ("assistant", "b"), ("user", "c"))), Is.EqualTo("<s>[INST] a [/INST]b</s>[INST] c [/INST]"));
        var (ok, error) = Try(Mistral, Messages(("user", "a"), ("user", "b")));
        Assert.That(ok, Is.False);
        Assert.That(error, Does.Contain("Conversation roles must alternate user/assistant/user/assistant/..."));
        (ok, error) = Try(Mistral, Messages(("system", "s")));
        Assert.That(ok, Is.False);
        Assert.That(error, Does.Contain("Conversation roles must alternate"), "role order is checked first");
    }

    [Test]
    public void ZephyrTemplateUsesTrimAndLstripBlocks()
    {
        // Written over several lines as in the model's file: block tags alone on their lines leave no trace, output
        // lines keep their newline.
        const string zephyr = """
            {% for message in messages %}
            {% if message['role'] == 'user' %}
            {{ '<|user|>\n' + message['content'] + eos_token }}
            {% elif message['role'] == 'system' %}
            {{ '<|system|>\n' + message['content'] + eos_token }}
            {% elif message['role'] == 'assistant' %}
            {{ '<|assistant|>\n'  + message['content'] + eos_token }}
            {% endif %}
            {% if loop.last and add_generation_prompt %}
            {{ '<|assistant|>' }}
            {% endif %}
            {% endfor %}
            """;
        Assert.That(Render(zephyr, Messages(("system", "S"), ("user", "U"))), Is.EqualTo("<|system|>\nS</s>\n<|user|>\nU</s>\n<|assistant|>\n"));
    }

    [Test]
    public void GemmaAndPhi3Templates()
    {
        const string gemma =
            "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}" +
            "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate') }}{% endif %}" +
            "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}" +
            "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}" +
            "{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}";
        Assert.That(Render(gemma, Messages(("user", " Hi "), ("assistant", "Yo"), ("user", "Q"))),
            Is.EqualTo("<s><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nYo<end_of_turn>\n<start_of_turn>user\nQ<end_of_turn>\n<start_of_turn>model\n"));
        Assert.That(Try(gemma, Messages(("system", "s"), ("user", "u"))).Text, Does.Contain("System role not supported"));

        const string phi3 =
            "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\\n' + message['content'] + '<|end|>\\n'}}" +
            "{% elif message['role'] == 'user' %}{{'<|user|>\\n' + message['content'] + '<|end|>\\n'}}{% elif message['role'] == 'assistant' %}" +
            "{{'<|assistant|>\\n' + message['content'] + '<|end|>\\n'}}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}{% endif %}";
        Assert.That(Render(phi3, Messages(("user", "Hi"))), Is.EqualTo("<|user|>\nHi<|end|>\n<|assistant|>\n"));
    }

    [Test]
    public void QwenStyleNamespaceReverseAndSplit()
    {
        // The constructs of the Qwen3 template: a namespace written from inside a loop over messages[::-1], string
        // methods chained on split results, `is string`, and `-` whitespace control over indented lines.
        const string t = """
            {%- set ns = namespace(last_query_index=messages|length - 1) %}
            {%- for message in messages[::-1] %}
                {%- set index = (messages|length - 1) - loop.index0 %}
                {%- if message.role == "user" and message.content is string and not message.content.startswith('<tool_response>') and ns.last_query_index == messages|length - 1 %}
                    {%- set ns.last_query_index = index %}
                {%- endif %}
            {%- endfor %}
            {%- for message in messages %}
                {%- set content = message.content %}
                {%- if message.role == "assistant" and '</think>' in content %}
                    {%- set content = content.split('</think>')[-1].lstrip('\n') %}
                {%- endif %}
                {{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>\n' }}
            {%- endfor %}
            {{- 'last user at ' ~ ns.last_query_index }}
            """;
        Assert.That(Render(t, Messages(("user", "q"), ("assistant", "<think>\nhmm\n</think>\n\nanswer"), ("user", "again"), ("assistant", "x"))),
            Is.EqualTo("<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\nanswer<|im_end|>\n<|im_start|>user\nagain<|im_end|>\n<|im_start|>assistant\nx<|im_end|>\nlast user at 2"));
    }

    // Each expected value is what Jinja2 3.1 renders under transformers' environment.
    [TestCase("{{ 7 // 2 }} {{ 7 / 2 }} {{ -7 // 2 }} {{ -7 % 3 }} {{ 2 ** 10 }} {{ 1.5 + 1 }} {{ 10 / 4 }} {{ 3.0 }}", "3 3.5 -4 2 1024 2.5 2.5 3.0")]
    [TestCase("{{ 'a' ~ 1 ~ none }} {{ 'x' * 3 }} {{ [0] * 2 }} {{ \"multi\" \"part\" }}", "a1None xxx [0, 0] multipart")]
    [TestCase("{{ [1, 2, 3][1:] }} {{ [1,2,3][-1] }} {{ 'hello'[::-1] }} {{ 'hello'[1:3] }} {{ [1,2,3,4][::2] }}", "[2, 3] 3 olleh el [1, 3]")]
    [TestCase("{{ {'a': 1, 'b': [true, none]} }} {{ [1, 'a', none, true] }} {{ [\"it's\"] }}", "{'a': 1, 'b': [True, None]} [1, 'a', None, True] [\"it's\"]")]
    [TestCase("{{ {'a': 1, 'b': [true, none, 'x\"y']} | tojson }}", "{\"a\": 1, \"b\": [true, null, \"x\\\"y\"]}")]
    [TestCase("{{ {'z': 1, 'a': {'q': [2]}} | tojson(indent=2) }}", "{\n  \"z\": 1,\n  \"a\": {\n    \"q\": [\n      2\n    ]\n  }\n}")]
    [TestCase("{{ 'a\\tb\\n\u00e9' | tojson }}", "\"a\\tb\\n\u00e9\"")]
    [TestCase("{{ ['x', 'y'] | join(', ') }} {{ 'A-B-C'.split('-') }} {{ 'a b  c '.split() }} {{ '  pad  '.strip() }}|{{ 'xxhixx'.strip('x') }}", "x, y ['A', 'B', 'C'] ['a', 'b', 'c'] pad|hi")]
    [TestCase("{{ 'abc'.startswith('a') }} {{ 'abc'.endswith(('z', 'c')) }} {{ 'Hello World'.lower() }} {{ 'hello world' | title }} {{ 'hello' | capitalize }} {{ 'abc'.upper() }}", "True True hello world Hello World Hello ABC")]
    [TestCase("{{ nothing | default('dflt') }} {{ '' | default('empty', true) }} {{ '' | default('kept') }} {{ none is none }} {{ 1 is number }} {{ 'x' is string }} {{ messages is iterable }}", "dflt empty  True True True True")]
    [TestCase("{{ 'b' in 'abc' }} {{ 2 in [1,2] }} {{ 'role' in messages[0] }} {{ 'x' not in 'abc' }} {{ not true }} {{ 1 < 2 and 2 >= 2 or false }} {{ 0 or 'z' }} {{ 1 and 0 }}", "True True True True False True z 0")]
    [TestCase("{% for k, v in {'one': 1, 'two': 2}.items() %}{{ k }}={{ v }};{% endfor %} {{ {'a': 1}.get('a') }} {{ {'a': 1}.get('b', 'no') }} {{ {'a': 1}.get('b') }}", "one=1;two=2; 1 no None")]
    [TestCase("{% set x = 'outer' %}{% for i in range(3) %}{% set x = 'inner' ~ i %}{{ x }}{% if i == 1 %}{% break %}{% endif %}{% endfor %} {{ x }}", "inner0inner1 outer")]
    [TestCase("{% for i in range(5) %}{% if i is odd %}{% continue %}{% endif %}{{ i }}{% endfor %}{% for x in [] %}x{% else %} empty{% endfor %}", "024 empty")]
    [TestCase("{% for m in ['a', 'b', 'c'] if m != 'b' %}{{ loop.index }}/{{ loop.length }}{{ m }}{{ '.' if not loop.last }}{% endfor %}", "1/2a.2/2c")]
    [TestCase("{% macro greet(name, punct='!') %}Hi {{ name }}{{ punct }}{% endmacro %}{{ greet('Bob') }} {{ greet('Al', punct='?') }}", "Hi Bob! Hi Al?")]
    [TestCase("{% set block %}captured {{ 1 + 1 }}{% endset %}{{ block | upper }}", "CAPTURED 2")]
    [TestCase("{{ messages | map(attribute='role') | join('|') }} {{ messages | selectattr('role', 'equalto', 'user') | list | length }} {{ (messages | last).role }}", "user 1 user")]
    [TestCase("{{ 'a,b'.replace(',', ';') }} {{ 'aXbXc' | replace('X', '-') }} {{ 'abc' | reverse }} {{ [3,1] | reverse | list }} {{ 'ab' | length }}", "a;b a-b-c cba [1, 3] 2")]
    [TestCase("a\n    {%- if true %}\n    indented\n    {% endif %}\n  {%+ if true %}plus{% endif %}\n{# gone #}\nz", "a    indented\n  plusz")]
    [TestCase("{{ loop is defined }} {{ messages[0].nope is defined }} {{ messages[0].nope is not defined }} {{ x if false }}|", "False False True |")]
    [TestCase("{% raw %}{{ not evaluated }}{% endraw %}", "{{ not evaluated }}")]
    [TestCase("{{- ' a ' -}}  \n  {{- 'b' }} {# c -#}   d", " a b d")]
    public void Feature(string template, string expected) => Assert.That(Render(template), Is.EqualTo(expected));

    [TestCase("{{ x", "unterminated expression")]
    [TestCase("{% if x %}", "expected {% elif or else or endif %}")]
    [TestCase("{% for x in y %}a", "endfor")]
    [TestCase("{# comment", "unterminated comment")]
    [TestCase("{{ 'abc }}", "unterminated string")]
    [TestCase("{% endif %}", "unexpected")]
    [TestCase("{% include 'other.jinja' %}", "unsupported tag")]
    [TestCase("{% break %}", "outside a loop")]
    [TestCase("{{ (1 }}", "expected")]
    [TestCase("{{ 1 + }}", "expected an expression")]
    [TestCase("{{ a ]] }}", "unexpected ']'")]
    [TestCase("line1\nline2 {{ @ }}", "line 2")]
    public void MalformedTemplatesFailToParseWithTheReason(string template, string reason)
    {
        Assert.That(JinjaTemplate.TryParse(template, out _, out string error), Is.False);
        Assert.That(error, Does.Contain(reason));
    }

    [Test]
    public void DeepNestingIsRefusedAtParseNotByTheStack()
    {
        foreach (var t in new[] { "{{ " + new string('(', 5000) + "1" + new string(')', 5000) + " }}", string.Concat(Enumerable.Repeat("{% if x %}", 5000)),
                     "{{ " + string.Concat(Enumerable.Repeat("not ", 5000)) + "x }}", "{{ " + new string('-', 5000) + "1 }}", "{{ " + new string('[', 100) + " }}" })
        {
            Assert.That(JinjaTemplate.TryParse(t, out _, out string error), Is.False);
            Assert.That(error, Does.Contain("deep").Or.Contain("deeply"));
        }
        Assert.That(JinjaTemplate.TryParse(new string('x', JinjaTemplate.MaxSourceChars + 1), out _, out string tooLong), Is.False);
        Assert.That(tooLong, Does.Contain("longer than"));
    }

    [TestCase("{% for i in range(100000000) %}{% endfor %}", "loop iterations")]
    [TestCase("{% for a in range(1000) %}{% for b in range(1000) %}{% endfor %}{% endfor %}", "loop iterations")]
    [TestCase("{% for i in range(50000) %}{{ 'x' * 1000 }}{% endfor %}", "longer than")]
    [TestCase("{{ 'x' * 100000000000 }}", "longer than")]
    [TestCase("{% set ns = namespace(x='ab') %}{% for i in range(100) %}{% set ns.x = ns.x ~ ns.x %}{% endfor %}", "longer than")]
    [TestCase("{% set ns = namespace(x=[1]) %}{% for i in range(100) %}{% set ns.x = ns.x + ns.x %}{% endfor %}", "longer than")]
    [TestCase("{% set ns = namespace(x=[1]) %}{% for i in range(100) %}{% set ns.x = [ns.x, ns.x] %}{% endfor %}{{ ns.x }}", "longer than")]
    [TestCase("{% set ns = namespace(x='y' * 10000) %}{% for i in range(20000) %}{% set s = ns.x ~ i %}{% endfor %}", "in all")]
    [TestCase("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "deeper")]
    [TestCase("{% set ns = namespace() %}{% set ns.me = ns %}{{ ns }}", "deeper")]
    [TestCase("{% set ns = namespace() %}{% set ns.me = ns %}{{ ns | tojson }}", "deeper")]
    [TestCase("{{ 2 ** 100 }}", "overflow")]
    [TestCase("{{ ('a' * 1000) | replace('a', 'b' * 100000) }}", "longer than")]
    [TestCase("{{ raise_exception('refused: ' ~ messages[0].role) }}", "refused: user")]
    [TestCase("{{ messages[0].content + 1 }}", "cannot apply '+'")]
    [TestCase("{{ missing.attr }}", "'missing' is undefined")]
    [TestCase("{{ 1 / 0 }}", "division by zero")]
    [TestCase("{{ messages | nosuchfilter }}", "unknown filter")]
    [TestCase("{% set x = 1 %}{% set x.y = 2 %}", "only a namespace")]
    public void HostileOrFailingRendersStopWithAnErrorAtBoundedCost(string template, string reason)
    {
        var sw = Stopwatch.StartNew();
        var (ok, error) = Try(template);
        Assert.That(ok, Is.False, "rendered instead of failing");
        Assert.That(error, Does.Contain(reason));
        Assert.That(sw.Elapsed.TotalSeconds, Is.LessThan(5), "bounded time");
    }

    [Test]
    public void ALongLeftNestedExpressionFailsOnDepthNotTheStack()
    {
        var t = "{{ " + string.Join(" + ", Enumerable.Repeat("1", 20000)) + " }}";
        var (ok, error) = Try(t);
        Assert.That(ok, Is.False);
        Assert.That(error, Does.Contain("deeper"));
        Assert.That(Render("{{ " + string.Join(" + ", Enumerable.Repeat("1", 100)) + " }}"), Is.EqualTo("100"));
    }

    [Test]
    public void OneParsedTemplateRendersOnManyThreadsAtOnce()
    {
        Assert.That(JinjaTemplate.TryParse(ChatMl, out var t, out _), Is.True);
        var outputs = new string[64];
        Parallel.For(0, outputs.Length, i =>
        {
            var ctx = new Dictionary<string, object?> { ["messages"] = Messages(("user", $"m{i}")), ["add_generation_prompt"] = true };
            Assert.That(t.TryRender(ctx, JinjaLimits.Default, out outputs[i], out string e), Is.True, e);
        });
        for (int i = 0; i < outputs.Length; i++) Assert.That(outputs[i], Is.EqualTo($"<|im_start|>user\nm{i}<|im_end|>\n<|im_start|>assistant\n"));
    }
}
