using System.Buffers;
using System.Text.Json;
using FastServe.Protocol;

namespace FastServe.Http;

/// <summary>One message of a chat request (role and text content).</summary>
public readonly record struct ChatMessage(string Role, string Content);

/// <summary>
/// An error answered to an HTTP client in OpenAI's shape (<c>{"error":{"message","type","param","code"}}</c>).
/// </summary>
/// <param name="Status">HTTP status.</param>
/// <param name="Code">Stable code: a FastServe detail code (<c>sampling.invalid</c>, <c>prompt.too_long</c>) or an HTTP
/// layer one (<c>invalid_json</c>, <c>invalid_type</c>, <c>n_unsupported</c>, ...; docs/http.md).</param>
/// <param name="RetryAfterMs">Back-off hint; sent as <c>Retry-After</c> (whole seconds, rounded up) when non-zero.</param>
internal readonly record struct HttpError(int Status, string Code, string Message, string? Param = null, uint RetryAfterMs = 0)
{
    /// <summary>OpenAI's error <c>type</c> for the status.</summary>
    public string Type => Status switch
    {
        400 or 404 or 413 => "invalid_request_error",
        401 => "authentication_error",
        429 => "rate_limit_error",
        503 => "service_unavailable",
        504 => "timeout_error",
        _ => "server_error",
    };

    public static HttpError BadRequest(string code, string message, string? param = null) => new(400, code, message, param);
}

/// <summary>
/// The fields of <c>POST /v1/completions</c> and <c>POST /v1/chat/completions</c> that FastServe serves
/// (docs/http.md); unknown fields are ignored, as OpenAI's peers do. Parsed from a JSON body of at most the front
/// door's body limit.
/// </summary>
internal sealed class OpenAiRequest
{
    /// <summary>Default <c>max_tokens</c> of a completion (OpenAI's and vLLM's).</summary>
    public const int DefaultCompletionMaxTokens = 16;
    /// <summary>Default <c>max_tokens</c> of a chat completion: the binary limit, so the context's end (finish
    /// <c>length</c>) or EOS ends it.</summary>
    public const int DefaultChatMaxTokens = RequestRules.MaxTokensLimit;

    public string? Model;
    public string? Prompt;
    public int[]? PromptIds;
    public List<ChatMessage>? Messages;
    public long? MaxTokens;
    public float Temperature = 1f;
    public float TopP = 1f;
    public int TopK;
    public ulong? Seed;
    public List<string>? Stops;
    public bool Stream;
    public bool IncludeUsage;
    /// <summary>Per-token log-probabilities asked for: completions <c>logprobs: N</c>, chat <c>logprobs: true</c>.</summary>
    public bool TokenLogprobs;
    /// <summary>Alternatives per token: completions' <c>logprobs</c> N, chat's <c>top_logprobs</c> (range checked by the
    /// request rules, as <c>sampling.invalid</c>).</summary>
    public int TopLogprobs;

    /// <summary>Parses a body; false with the 400 to answer when it is not JSON, a field has the wrong type, or asks for
    /// what FastServe does not serve (<c>n</c> &gt; 1, a batch of prompts). Never throws.</summary>
    public static bool TryParse(in ReadOnlySequence<byte> body, bool chat, out OpenAiRequest request, out HttpError error)
    {
        request = new OpenAiRequest();
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(body, new JsonDocumentOptions { MaxDepth = 16 });
        }
        catch (JsonException e)
        {
            error = HttpError.BadRequest("invalid_json", $"the body is not valid JSON: {e.Message}");
            return false;
        }
        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object)
            {
                error = HttpError.BadRequest("invalid_json", "the body must be a JSON object");
                return false;
            }
            error = default;
            return request.Read(doc.RootElement, chat, ref error);
        }
    }

    private bool Read(JsonElement root, bool chat, ref HttpError error)
    {
        bool sawInput = false;
        foreach (var p in root.EnumerateObject())
        {
            var v = p.Value;
            if (v.ValueKind == JsonValueKind.Null) continue;
            switch (p.Name)
            {
                case "model":
                    if (!String(v, "model", out Model, ref error)) return false;
                    break;
                case "prompt" when !chat:
                    if (!ReadPrompt(v, ref error)) return false;
                    sawInput = true;
                    break;
                case "messages" when chat:
                    if (!ReadMessages(v, ref error)) return false;
                    sawInput = true;
                    break;
                case "max_tokens":
                case "max_completion_tokens" when chat:
                    if (!Int64(v, out long mt)) return Fail(ref error, "invalid_type", $"{p.Name} must be an integer", p.Name);
                    MaxTokens = mt;
                    break;
                case "temperature":
                    if (!Number(v, p.Name, out Temperature, ref error)) return false;
                    break;
                case "top_p":
                    if (!Number(v, p.Name, out TopP, ref error)) return false;
                    break;
                case "top_k":
                    // vLLM's convention: -1 (or 0) = off.
                    if (!Int32(v, out int tk)) return Fail(ref error, "invalid_type", "top_k must be an integer", "top_k");
                    TopK = tk == -1 ? 0 : tk;
                    break;
                case "seed":
                    if (Int64(v, out long sd)) Seed = unchecked((ulong)sd);
                    else if (v.ValueKind == JsonValueKind.Number && v.TryGetUInt64(out ulong us)) Seed = us;
                    else return Fail(ref error, "invalid_type", "seed must be an integer", "seed");
                    break;
                case "stop":
                    if (!ReadStops(v, ref error)) return false;
                    break;
                case "n":
                    if (!Int32(v, out int n)) return Fail(ref error, "invalid_type", "n must be an integer", "n");
                    if (n != 1) return Fail(ref error, "n_unsupported", "only n = 1 is served", "n");
                    break;
                case "stream":
                    if (!Bool(v, "stream", out Stream, ref error)) return false;
                    break;
                case "stream_options":
                    if (v.ValueKind != JsonValueKind.Object) return Fail(ref error, "invalid_type", "stream_options must be an object", "stream_options");
                    if (v.TryGetProperty("include_usage", out var iu) && iu.ValueKind != JsonValueKind.Null
                        && !Bool(iu, "stream_options.include_usage", out IncludeUsage, ref error)) return false;
                    break;
                case "logprobs" when chat:
                    if (!Bool(v, "logprobs", out TokenLogprobs, ref error)) return false;
                    break;
                case "logprobs":
                    // Completions: the number of alternatives per token (OpenAI allows 0 to 5; the request rules, 20).
                    if (!Int32(v, out int lp)) return Fail(ref error, "invalid_type", "logprobs must be an integer", "logprobs");
                    TokenLogprobs = true;
                    TopLogprobs = lp;
                    break;
                case "top_logprobs" when chat:
                    if (!Int32(v, out int tl)) return Fail(ref error, "invalid_type", "top_logprobs must be an integer", "top_logprobs");
                    TopLogprobs = tl;
                    break;
            }
        }
        // As OpenAI: alternatives are served only with the log-probabilities themselves.
        if (chat && TopLogprobs != 0 && !TokenLogprobs)
            return Fail(ref error, "invalid_request", "top_logprobs needs logprobs: true", "top_logprobs");
        if (!sawInput)
            return chat ? Fail(ref error, "missing_field", "messages is required", "messages") : Fail(ref error, "missing_field", "prompt is required", "prompt");
        return true;
    }

    private bool ReadPrompt(JsonElement v, ref HttpError error)
    {
        switch (v.ValueKind)
        {
            case JsonValueKind.String:
                Prompt = v.GetString();
                return true;
            case JsonValueKind.Array:
                int len = v.GetArrayLength();
                if (len == 0) return Fail(ref error, "invalid_type", "prompt must not be an empty array", "prompt");
                var first = v[0];
                if (first.ValueKind == JsonValueKind.String)
                {
                    if (len != 1) return Fail(ref error, "batch_unsupported", "a prompt array holds one prompt (batches are not served)", "prompt");
                    Prompt = first.GetString();
                    return true;
                }
                if (first.ValueKind == JsonValueKind.Array)
                {
                    if (len != 1) return Fail(ref error, "batch_unsupported", "a prompt array holds one prompt (batches are not served)", "prompt");
                    return ReadIds(first, ref error);
                }
                return ReadIds(v, ref error);
            default:
                return Fail(ref error, "invalid_type", "prompt must be a string, an array of one string or an array of token ids", "prompt");
        }
    }

    private bool ReadIds(JsonElement v, ref HttpError error)
    {
        var ids = new int[v.GetArrayLength()];
        int i = 0;
        foreach (var e in v.EnumerateArray())
        {
            if (!Int32(e, out int id) || id < 0) return Fail(ref error, "invalid_type", "token ids must be integers ≥ 0", "prompt");
            ids[i++] = id;
        }
        if (ids.Length == 0) return Fail(ref error, "invalid_type", "prompt must not be an empty array", "prompt");
        PromptIds = ids;
        return true;
    }

    private bool ReadMessages(JsonElement v, ref HttpError error)
    {
        if (v.ValueKind != JsonValueKind.Array || v.GetArrayLength() == 0)
            return Fail(ref error, "invalid_type", "messages must be a non-empty array", "messages");
        Messages = new List<ChatMessage>(v.GetArrayLength());
        foreach (var m in v.EnumerateArray())
        {
            if (m.ValueKind != JsonValueKind.Object) return Fail(ref error, "invalid_type", "each message must be an object", "messages");
            if (!m.TryGetProperty("role", out var role) || role.ValueKind != JsonValueKind.String)
                return Fail(ref error, "invalid_type", "each message needs a string role", "messages");
            string content;
            if (!m.TryGetProperty("content", out var c) || c.ValueKind == JsonValueKind.Null) content = "";
            else if (c.ValueKind == JsonValueKind.String) content = c.GetString()!;
            else if (c.ValueKind == JsonValueKind.Array)
            {
                // The parts form: text parts are joined; any other part (images, audio) is not served.
                var sb = new System.Text.StringBuilder();
                foreach (var part in c.EnumerateArray())
                {
                    if (part.ValueKind != JsonValueKind.Object || !part.TryGetProperty("type", out var t) || t.ValueKind != JsonValueKind.String
                        || t.GetString() != "text" || !part.TryGetProperty("text", out var tx) || tx.ValueKind != JsonValueKind.String)
                        return Fail(ref error, "content_unsupported", "only text content parts are served", "messages");
                    sb.Append(tx.GetString());
                }
                content = sb.ToString();
            }
            else return Fail(ref error, "invalid_type", "message content must be a string or an array of text parts", "messages");
            Messages.Add(new ChatMessage(role.GetString()!, content));
        }
        return true;
    }

    private bool ReadStops(JsonElement v, ref HttpError error)
    {
        if (v.ValueKind == JsonValueKind.String)
        {
            Stops = [v.GetString()!];
            return true;
        }
        if (v.ValueKind != JsonValueKind.Array) return Fail(ref error, "invalid_type", "stop must be a string or an array of strings", "stop");
        Stops = new List<string>(Math.Min(v.GetArrayLength(), RequestRules.MaxStops + 1));
        foreach (var s in v.EnumerateArray())
        {
            if (s.ValueKind != JsonValueKind.String) return Fail(ref error, "invalid_type", "stop must be a string or an array of strings", "stop");
            if (Stops.Count > RequestRules.MaxStops) break;   // the rules refuse it below, with their own code
            Stops.Add(s.GetString()!);
        }
        return true;
    }

    private static bool String(JsonElement v, string name, out string? value, ref HttpError error)
    {
        value = null;
        if (v.ValueKind != JsonValueKind.String) return Fail(ref error, "invalid_type", $"{name} must be a string", name);
        value = v.GetString();
        return true;
    }

    private static bool Number(JsonElement v, string name, out float value, ref HttpError error)
    {
        value = 0;
        if (v.ValueKind != JsonValueKind.Number || !v.TryGetDouble(out double d)) return Fail(ref error, "invalid_type", $"{name} must be a number", name);
        value = (float)d;
        return true;
    }

    private static bool Bool(JsonElement v, string name, out bool value, ref HttpError error)
    {
        value = v.ValueKind == JsonValueKind.True;
        if (v.ValueKind is JsonValueKind.True or JsonValueKind.False) return true;
        return Fail(ref error, "invalid_type", $"{name} must be a boolean", name);
    }

    // JsonElement's TryGet* throw on a value that is not a number (a string "3"): hostile bodies must get a 400.
    private static bool Int32(JsonElement v, out int x)
    {
        x = 0;
        return v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out x);
    }

    private static bool Int64(JsonElement v, out long x)
    {
        x = 0;
        return v.ValueKind == JsonValueKind.Number && v.TryGetInt64(out x);
    }

    private static bool Fail(ref HttpError error, string code, string message, string? param)
    {
        error = HttpError.BadRequest(code, message, param);
        return false;
    }
}
