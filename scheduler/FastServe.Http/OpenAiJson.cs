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

    /// <summary>A whole (non-streamed) response.</summary>
    public static void Response(Utf8JsonWriter w, bool chat, string id, long created, string model, CompletionResult r)
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
        w.WriteNull("logprobs");
        w.WriteString("finish_reason", FinishReason(r.Finish));
        w.WriteEndObject();
        w.WriteEndArray();
        Usage(w, r);
        w.WriteEndObject();
    }

    /// <summary>One streamed chunk: a text delta (<paramref name="finish"/> null), the last choice chunk (with
    /// <paramref name="finish"/> and the <c>fastserve</c> timings of <paramref name="final"/>), or the chat's first
    /// chunk (<paramref name="roleOnly"/>: the assistant role, empty content).</summary>
    public static void Chunk(Utf8JsonWriter w, bool chat, string id, long created, string model, string text, string? finish,
        CompletionResult? final = null, bool roleOnly = false)
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
        w.WriteNull("logprobs");
        if (finish is null) w.WriteNull("finish_reason");
        else w.WriteString("finish_reason", finish);
        w.WriteEndObject();
        w.WriteEndArray();
        if (final is not null) FastServeExtras(w, final);
        w.WriteEndObject();
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
