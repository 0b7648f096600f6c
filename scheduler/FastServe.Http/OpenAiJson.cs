using System.Text.Json;
using FastServe.Client;
using FastServe.Protocol;

namespace FastServe.Http;

/// <summary>
/// Writes OpenAI's response shapes (completion, chat completion, their streamed chunks, usage, errors, the model list)
/// with a <see cref="Utf8JsonWriter"/>: no reflection, so it stays NativeAOT-clean.
/// </summary>
internal static class OpenAiJson
{
    /// <summary>OpenAI's <c>finish_reason</c>: <c>length</c> for the token budget or the context's end, else <c>stop</c>.</summary>
    public static string FinishReason(WireFinish f) => f is WireFinish.Length or WireFinish.ContextFull ? "length" : "stop";

    /// <summary>A whole (non-streamed) response; with <paramref name="logprobs"/> (the request asked for them) the
    /// choice's <c>logprobs</c> lists every generated token's.</summary>
    public static void Response(Utf8JsonWriter w, bool chat, string id, long created, string model, CompletionResult r, bool logprobs = false)
    {
        w.WriteStartObject();
        Head(w, id, chat ? "chat.completion" : "text_completion", created, model);
        w.WriteStartArray("choices");
        w.WriteStartObject();
        w.WriteNumber("index", 0);
        if (chat)
        {
            w.WriteStartObject("message");
            w.WriteString("role", "assistant");
            w.WriteString("content", r.Text);
            w.WriteEndObject();
        }
        else w.WriteString("text", r.Text);
        int offset = 0;
        if (logprobs) Logprobs(w, chat, r.TokenLogprobs ?? [], ref offset);
        else w.WriteNull("logprobs");
        w.WriteString("finish_reason", FinishReason(r.Finish));
        w.WriteEndObject();
        w.WriteEndArray();
        Usage(w, r);
        w.WriteEndObject();
    }

    /// <summary>One streamed chunk: a text delta (<paramref name="finish"/> null), the last choice chunk (with
    /// <paramref name="finish"/> and the <c>fastserve</c> timings of <paramref name="final"/>), or the chat's first
    /// chunk (<paramref name="roleOnly"/>: the assistant role, empty content). <paramref name="logprobs"/>: the chunk's
    /// tokens' log-probabilities (null: <c>"logprobs": null</c>); <paramref name="textOffset"/> carries a completion's
    /// <c>text_offset</c> from chunk to chunk (advanced past the chunk's tokens).</summary>
    public static void Chunk(Utf8JsonWriter w, bool chat, string id, long created, string model, string text, string? finish,
        CompletionResult? final = null, bool roleOnly = false, IReadOnlyList<TokenLogprobs>? logprobs = null, System.Runtime.CompilerServices.StrongBox<int>? textOffset = null)
    {
        w.WriteStartObject();
        Head(w, id, chat ? "chat.completion.chunk" : "text_completion", created, model);
        w.WriteStartArray("choices");
        w.WriteStartObject();
        w.WriteNumber("index", 0);
        if (chat)
        {
            w.WriteStartObject("delta");
            if (roleOnly) w.WriteString("role", "assistant");
            if (finish is null) w.WriteString("content", text);
            w.WriteEndObject();
        }
        else w.WriteString("text", text);
        if (logprobs is not null)
        {
            textOffset ??= new();
            Logprobs(w, chat, logprobs, ref textOffset.Value);
        }
        else w.WriteNull("logprobs");
        if (finish is null) w.WriteNull("finish_reason");
        else w.WriteString("finish_reason", finish);
        w.WriteEndObject();
        w.WriteEndArray();
        if (final is not null) FastServeExtras(w, final);
        w.WriteEndObject();
    }

    /// <summary>
    /// A choice's <c>logprobs</c> object. Chat: <c>{"content":[{token, logprob, bytes, top_logprobs:[{token, logprob,
    /// bytes}]}], "refusal":null}</c>. Completions: <c>{tokens, token_logprobs, top_logprobs:[{token: logprob}],
    /// text_offset}</c>, where each <c>top_logprobs</c> map also holds the chosen token (as OpenAI's legacy API) and
    /// <c>text_offset</c> counts characters of the generated text from <paramref name="offset"/> (advanced past these
    /// tokens). A token is named by its bytes read as UTF-8 (U+FFFD for a partial character; <c>bytes</c> has them exact).
    /// </summary>
    public static void Logprobs(Utf8JsonWriter w, bool chat, IReadOnlyList<TokenLogprobs> list, ref int offset)
    {
        w.WriteStartObject("logprobs");
        if (chat)
        {
            w.WriteStartArray("content");
            foreach (var t in list)
            {
                w.WriteStartObject();
                TokenFields(w, t.Bytes, t.Logprob);
                w.WriteStartArray("top_logprobs");
                foreach (var a in t.Top)
                {
                    w.WriteStartObject();
                    TokenFields(w, a.Bytes, a.Logprob);
                    w.WriteEndObject();
                }
                w.WriteEndArray();
                w.WriteEndObject();
            }
            w.WriteEndArray();
            w.WriteNull("refusal");
        }
        else
        {
            w.WriteStartArray("tokens");
            foreach (var t in list) w.WriteStringValue(Utf8Text.Decode(t.Bytes));
            w.WriteEndArray();
            w.WriteStartArray("token_logprobs");
            foreach (var t in list) w.WriteNumberValue(t.Logprob);
            w.WriteEndArray();
            w.WriteStartArray("top_logprobs");
            foreach (var t in list)
            {
                w.WriteStartObject();
                foreach (var a in t.Top) w.WriteNumber(Utf8Text.Decode(a.Bytes), a.Logprob);
                if (!t.Top.Any(a => a.Id == t.Id)) w.WriteNumber(Utf8Text.Decode(t.Bytes), t.Logprob);
                w.WriteEndObject();
            }
            w.WriteEndArray();
            w.WriteStartArray("text_offset");
            foreach (var t in list)
            {
                w.WriteNumberValue(offset);
                offset += Utf8Text.Decode(t.Bytes).Length;
            }
            w.WriteEndArray();
        }
        w.WriteEndObject();
    }

    private static void TokenFields(Utf8JsonWriter w, byte[] bytes, float logprob)
    {
        w.WriteString("token", Utf8Text.Decode(bytes));
        w.WriteNumber("logprob", logprob);
        w.WriteStartArray("bytes");
        foreach (byte b in bytes) w.WriteNumberValue(b);
        w.WriteEndArray();
    }

    /// <summary>The usage chunk of <c>stream_options.include_usage</c>: no choices, the usage object.</summary>
    public static void UsageChunk(Utf8JsonWriter w, bool chat, string id, long created, string model, CompletionResult r)
    {
        w.WriteStartObject();
        Head(w, id, chat ? "chat.completion.chunk" : "text_completion", created, model);
        w.WriteStartArray("choices");
        w.WriteEndArray();
        Usage(w, r);
        w.WriteEndObject();
    }

    /// <summary><c>{"error":{"message","type","param","code"}}</c>.</summary>
    public static void Error(Utf8JsonWriter w, in HttpError e)
    {
        w.WriteStartObject();
        w.WriteStartObject("error");
        w.WriteString("message", e.Message);
        w.WriteString("type", e.Type);
        if (e.Param is null) w.WriteNull("param");
        else w.WriteString("param", e.Param);
        w.WriteString("code", e.Code);
        w.WriteEndObject();
        w.WriteEndObject();
    }

    /// <summary><c>GET /v1/models</c>.</summary>
    public static void Models(Utf8JsonWriter w, IReadOnlyList<string> models, long created, string owner)
    {
        w.WriteStartObject();
        w.WriteString("object", "list");
        w.WriteStartArray("data");
        foreach (var m in models)
        {
            w.WriteStartObject();
            w.WriteString("id", m);
            w.WriteString("object", "model");
            w.WriteNumber("created", created);
            w.WriteString("owned_by", owner);
            w.WriteEndObject();
        }
        w.WriteEndArray();
        w.WriteEndObject();
    }

    /// <summary>The hand-off timings as one header value: <c>tokenized=US;engine_received=US;...;device=US</c>
    /// (microseconds after the server read the request; <c>device</c> is a duration).</summary>
    public static string TimingHeader(in ServerTimings t)
    {
        // Formatted on the stack: one string per response.
        var h = new System.Runtime.CompilerServices.DefaultInterpolatedStringHandler(0, 0, System.Globalization.CultureInfo.InvariantCulture, stackalloc char[256]);
        bool first = true;
        foreach (var (slot, name) in ServerTimings.Names)
        {
            if (!first) h.AppendLiteral(";");
            first = false;
            h.AppendLiteral(name);
            h.AppendLiteral("=");
            h.AppendFormatted(t[slot]);
        }
        return h.ToStringAndClear();
    }

    private static void Head(Utf8JsonWriter w, string id, string obj, long created, string model)
    {
        w.WriteString("id", id);
        w.WriteString("object", obj);
        w.WriteNumber("created", created);
        w.WriteString("model", model);
    }

    private static void Usage(Utf8JsonWriter w, CompletionResult r)
    {
        w.WriteStartObject("usage");
        w.WriteNumber("prompt_tokens", r.PromptTokens);
        w.WriteNumber("completion_tokens", r.CompletionTokens);
        w.WriteNumber("total_tokens", (long)r.PromptTokens + r.CompletionTokens);
        w.WriteEndObject();
    }

    // FastServe's own fields on the last streamed chunk (clients ignore unknown fields): the FINAL's finish reason
    // as FastServe names it, its token counts and hand-off timings (µs).
    private static void FastServeExtras(Utf8JsonWriter w, CompletionResult r)
    {
        w.WriteStartObject("fastserve");
        w.WriteString("finish", r.FinishName);
        w.WriteNumber("cached_prompt_tokens", r.CachedPromptTokens);
        w.WriteStartObject("timing_us");
        foreach (var (slot, name) in ServerTimings.Names) w.WriteNumber(name, r.ServerTimings[slot]);
        w.WriteEndObject();
        w.WriteEndObject();
    }
}
