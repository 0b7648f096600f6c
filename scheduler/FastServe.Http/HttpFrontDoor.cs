using System.Buffers;
using System.IO.Pipelines;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using FastServe.Client;
using FastServe.Protocol;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace FastServe.Http;

/// <summary>
/// The OpenAI-compatible HTTP listener of one process (docs/http.md): Kestrel with one raw request delegate that
/// dispatches by path. Completions are translated into binary-protocol REQUESTs and run through in-process
/// <see cref="FastServeClient"/>s on this process's own host (<see cref="LocalClientPool"/>), so the request rules,
/// routing, overload control and cancellation are the binary protocol's.
/// </summary>
public sealed class HttpFrontDoor : IAsyncDisposable
{
    private static readonly byte[] DataPrefix = "data: "u8.ToArray();
    private static readonly byte[] EventEnd = "\n\n"u8.ToArray();
    private static readonly byte[] Done = "data: [DONE]\n\n"u8.ToArray();
    private static readonly JsonWriterOptions WriterOptions = new() { SkipValidation = true };

    private readonly HttpFrontDoorOptions _options;
    private readonly LocalClientPool _pool;
    private readonly long _created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
    private WebApplication? _app;

    public HttpFrontDoor(HttpFrontDoorOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        _options = options;
        _pool = new LocalClientPool(options.AcceptLocal, options.LocalClients, options.LocalKeepAlive);
    }

    /// <summary>The bound TCP port (after <see cref="StartAsync"/>).</summary>
    public int Port { get; private set; }

    /// <summary>Binds and starts serving; throws <see cref="IOException"/> (Kestrel's wrapper of a bind failure) or
    /// <see cref="SocketException"/> when the address cannot be bound.</summary>
    public async Task StartAsync()
    {
        var o = _options;
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.WebHost.UseSockets(s =>
        {
            if (o.ReusePort) s.CreateBoundListenSocket = BindReusePort;
            // Parse a request and send its answer on the thread that completed the socket operation, not after two
            // more hops (the thread pool for the request, an I/O queue for the send): on a busy replica a hop is a
            // thread wake-up. Safe here because no handler blocks: the delegate only parses, hands the request to an
            // in-process client and awaits it.
            s.UnsafePreferInlineScheduling = true;
        });
        builder.WebHost.ConfigureKestrel(k =>
        {
            k.AddServerHeader = false;
            k.Limits.MaxRequestBodySize = o.MaxBodyBytes;
            k.Limits.RequestHeadersTimeout = o.RequestHeadersTimeout;
            k.Limits.MinRequestBodyDataRate = new MinDataRate(o.MinBodyBytesPerSecond, o.MinBodyRateGrace);
            k.Limits.KeepAliveTimeout = o.KeepAliveTimeout;
            k.Listen(IPAddress.Parse(o.Host), o.Port, l =>
            {
                l.Protocols = HttpProtocols.Http1;
                if (o.ServerCertificate is { } cert) l.UseHttps(h => h.ServerCertificateSelector = (_, _) => cert());
            });
        });
        var app = builder.Build();
        app.Run(DispatchAsync);
        await app.StartAsync().ConfigureAwait(false);
        _app = app;
        foreach (var a in app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses)
        {
            int colon = a.LastIndexOf(':');
            if (colon > 0 && int.TryParse(a.AsSpan(colon + 1).TrimEnd('/'), out int p)) { Port = p; break; }
        }
    }

    private static Socket BindReusePort(EndPoint ep)
    {
        var s = new Socket(ep.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            Span<byte> one = stackalloc byte[4];
            BitConverter.TryWriteBytes(one, 1);
            s.SetRawSocketOption(1 /* SOL_SOCKET */, 15 /* SO_REUSEPORT */, one);
            s.Bind(ep);
        }
        catch
        {
            s.Dispose();
            throw;
        }
        return s;
    }

    // ---------------------------------------------------------------- dispatch

    private Task DispatchAsync(HttpContext ctx)
    {
        var path = ctx.Request.Path.Value ?? "";
        var method = ctx.Request.Method;
        switch (path)
        {
            case "/v1/completions": return HttpMethods.IsPost(method) ? CompletionAsync(ctx, chat: false, "completions") : MethodNotAllowed(ctx, "completions", "POST");
            case "/v1/chat/completions": return HttpMethods.IsPost(method) ? CompletionAsync(ctx, chat: true, "chat_completions") : MethodNotAllowed(ctx, "chat_completions", "POST");
            case "/v1/models": return HttpMethods.IsGet(method) ? ModelsAsync(ctx) : MethodNotAllowed(ctx, "models", "GET");
            case "/health": return HttpMethods.IsGet(method) || HttpMethods.IsHead(method) ? Status(ctx, "health", true) : MethodNotAllowed(ctx, "health", "GET");
            case "/ready": return HttpMethods.IsGet(method) || HttpMethods.IsHead(method) ? Status(ctx, "ready", _options.Ready()) : MethodNotAllowed(ctx, "ready", "GET");
            default: return ErrorAsync(ctx, "other", new HttpError(404, "unknown_endpoint", $"no endpoint {path}; see docs/http.md"));
        }
    }

    private Task MethodNotAllowed(HttpContext ctx, string endpoint, string allow)
    {
        ctx.Response.Headers.Allow = allow;
        return ErrorAsync(ctx, endpoint, new HttpError(405, "method_not_allowed", $"{ctx.Request.Path} takes {allow}"));
    }

    private Task Status(HttpContext ctx, string endpoint, bool ok)
    {
        if (!ok) ctx.Response.Headers.RetryAfter = "1";
        return WriteJsonAsync(ctx, endpoint, ok ? 200 : 503, ok, static (w, ok) =>
        {
            w.WriteStartObject();
            w.WriteString("status", ok ? "ok" : "unavailable");
            w.WriteEndObject();
        });
    }

    private Task ModelsAsync(HttpContext ctx)
    {
        if (Authorize(ctx) is { } refused) return ErrorAsync(ctx, "models", refused);
        return WriteJsonAsync(ctx, "models", 200, this, static (w, self) => OpenAiJson.Models(w, self._options.Models(), self._created, "fastserve"));
    }

    private HttpError? Authorize(HttpContext ctx)
    {
        var auth = ctx.Request.Headers.Authorization;
        string? token = null;
        if (auth.Count == 1 && auth[0] is { } a && a.StartsWith("Bearer ", StringComparison.OrdinalIgnoreCase)) token = a[7..].Trim();
        if (!_options.KeysRequired) return null;
        if (token is not null && _options.Authenticate is { } check && check(token) is not null) return null;
        ctx.Response.Headers.WWWAuthenticate = "Bearer";
        return new HttpError(401, "invalid_api_key", token is null ? "an API key is required: Authorization: Bearer KEY" : "the API key was refused");
    }

    // ---------------------------------------------------------------- completions

    private async Task CompletionAsync(HttpContext ctx, bool chat, string endpoint)
    {
        if (Authorize(ctx) is { } refused)
        {
            await ErrorAsync(ctx, endpoint, refused).ConfigureAwait(false);
            return;
        }
        var ct = ctx.RequestAborted;
        var reader = ctx.Request.BodyReader;
        System.IO.Pipelines.ReadResult body;
        try
        {
            // Kestrel enforces the body limit while reading (413 before buffering past it) and the minimum data rate.
            while (true)
            {
                body = await reader.ReadAsync(ct).ConfigureAwait(false);
                if (body.IsCompleted || body.IsCanceled) break;
                reader.AdvanceTo(body.Buffer.Start, body.Buffer.End);
            }
        }
        catch (Microsoft.AspNetCore.Http.BadHttpRequestException e)
        {
            var err = e.StatusCode == StatusCodes.Status413PayloadTooLarge
                ? new HttpError(413, "request_too_large", $"the body is over the limit of {_options.MaxBodyBytes} bytes")
                : new HttpError(e.StatusCode is >= 400 and < 500 ? e.StatusCode : 400, "bad_body", e.Message);
            await ErrorAsync(ctx, endpoint, err).ConfigureAwait(false);
            return;
        }
        catch (Exception e) when (e is OperationCanceledException or IOException)
        {
            Count(endpoint, 499);
            return;
        }

        bool parsed = OpenAiRequest.TryParse(body.Buffer, chat, out var req, out var perr);
        reader.AdvanceTo(body.Buffer.End);
        if (!parsed || !TryBuild(ctx, req, chat, out var request, out perr))
        {
            await ErrorAsync(ctx, endpoint, perr).ConfigureAwait(false);
            return;
        }

        FastServeClient client;
        try
        {
            client = await _pool.GetAsync(ct).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            Count(endpoint, 499);
            return;
        }
        catch (Exception e) when (e is FastServeClientException or SocketException or ObjectDisposedException)
        {
            uint after = e is FastServeClientException { RetryAfterMs: > 0 } fe ? fe.RetryAfterMs : 1000;
            await ErrorAsync(ctx, endpoint, new HttpError(503, "unavailable", $"the server cannot take requests now: {e.Message}", RetryAfterMs: after)).ConfigureAwait(false);
            return;
        }

        string model = req.Model ?? _options.DefaultModelName;
        string id = NewId(chat ? "chatcmpl-" : "cmpl-");
        long created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        if (req.Stream)
        {
            var call = client.Start(request);
            try { await StreamAsync(ctx, call, request, chat, endpoint, id, created, model, req.IncludeUsage).ConfigureAwait(false); }
            // However the handler leaves (a failed write, a cancelled flush, the end), an unfinished upstream request does
            // not outlive it: the RequestAborted registration alone can miss when Kestrel cancels the token only after
            // the handler has returned and disposed it. A no-op once the call has ended or its CANCEL was sent.
            finally { call.Cancel(); }
        }
        else await WholeAsync(ctx, client, request, chat, endpoint, id, created, model).ConfigureAwait(false);
    }

    // Maps the parsed body and the FastServe headers to a binary REQUEST.
    private bool TryBuild(HttpContext ctx, OpenAiRequest req, bool chat, out CompletionRequest request, out HttpError error)
    {
        request = null!;
        error = default;
        var p = RequestParams.Default;
        p.MaxTokens = (int)Math.Clamp(req.MaxTokens ?? (chat ? OpenAiRequest.DefaultChatMaxTokens : OpenAiRequest.DefaultCompletionMaxTokens), int.MinValue, int.MaxValue);
        if (req.MaxTokens is { } mt && (mt < 1 || mt > RequestRules.MaxTokensLimit))
        {
            error = HttpError.BadRequest(RequestRules.SamplingInvalid, $"max_tokens must be between 1 and {RequestRules.MaxTokensLimit}", "max_tokens");
            return false;
        }
        p.Temperature = req.Temperature;
        p.TopP = req.TopP;
        p.TopK = req.TopK;
        p.Seed = req.Seed;
        p.TokenLogprobs = req.TokenLogprobs;
        p.TopLogprobs = req.TopLogprobs;
        var h = ctx.Request.Headers;
        if (h["X-FastServe-Deadline-Ms"] is { Count: > 0 } dl)
        {
            if (!uint.TryParse(dl[0], out uint ms) || ms == 0 || ms > RequestRules.MaxDeadlineMs)
            {
                error = HttpError.BadRequest(RequestRules.InvalidDeadline, $"X-FastServe-Deadline-Ms must be an integer between 1 and {RequestRules.MaxDeadlineMs}", "X-FastServe-Deadline-Ms");
                return false;
            }
            p.DeadlineMs = ms;
        }
        if (h["X-FastServe-Priority"] is { Count: > 0 } pr)
        {
            switch (pr[0])
            {
                case "interactive": p.Priority = 0; break;
                case "batch": p.Priority = 1; break;
                default:
                    error = HttpError.BadRequest(RequestRules.InvalidPriority, "X-FastServe-Priority must be interactive or batch", "X-FastServe-Priority");
                    return false;
            }
        }
        // model "name@version" or the X-FastServe-Model-Version header name a version.
        if (req.Model is { Length: > 0 } m)
        {
            int at = m.IndexOf('@');
            p.Model = at < 0 ? m : m[..at];
            if (at >= 0) p.ModelVersion = m[(at + 1)..];
        }
        if (h["X-FastServe-Model-Version"] is { Count: > 0 } mv && !string.IsNullOrEmpty(mv[0])) p.ModelVersion = mv[0];
        if ((p.Model is { } pm && !RequestRules.IsModelLabel(pm)) || (p.ModelVersion is { } pv && !RequestRules.IsModelLabel(pv)))
        {
            error = HttpError.BadRequest("request.bad_route", "a model name or version is 1 to 64 of a-z A-Z 0-9 . _ -", "model");
            return false;
        }
        string? prompt = req.Prompt;
        if (chat && !_options.ChatTemplate.TryRender(req.Messages!, out prompt, out string why))
        {
            error = HttpError.BadRequest(ChatTemplate.ErrorCode, $"the chat template failed on these messages: {why}", "messages");
            return false;
        }
        request = new CompletionRequest
        {
            Prompt = prompt,
            PromptIds = chat ? null : req.PromptIds,
            Params = p,
            Stops = req.Stops,
        };
        return true;
    }

    private async Task WholeAsync(HttpContext ctx, FastServeClient client, CompletionRequest request, bool chat, string endpoint,
        string id, long created, string model)
    {
        CompletionResult r;
        try
        {
            r = await client.CompleteAsync(request, ctx.RequestAborted).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            Count(endpoint, 499);   // the client went away; CompleteAsync sent CANCEL
            return;
        }
        if (!r.IsOk)
        {
            await ErrorAsync(ctx, endpoint, ErrorOf(r)).ConfigureAwait(false);
            return;
        }
        ctx.Response.Headers["X-FastServe-Timing"] = OpenAiJson.TimingHeader(r.ServerTimings);
        await WriteJsonAsync(ctx, endpoint, 200, (chat, id, created, model, r, lp: request.Params.TokenLogprobs),
            static (w, s) => OpenAiJson.Response(w, s.chat, s.id, s.created, s.model, s.r, s.lp)).ConfigureAwait(false);
    }

    private async Task StreamAsync(HttpContext ctx, CompletionCall call, CompletionRequest request, bool chat, string endpoint,
        string id, long created, string model, bool includeUsage)
    {
        var ct = ctx.RequestAborted;
        using var reg = ct.Register(static c => ((CompletionCall)c!).Cancel(), call);
        var deltas = call.Deltas;
        bool any;
        try
        {
            // Nothing is sent before the first delta or the end, so a refused request gets its real status, not a
            // 200 stream carrying an error.
            any = await deltas.WaitToReadAsync(ct).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            Count(endpoint, 499);
            return;
        }
        if (!any)
        {
            var early = await call.Completion.ConfigureAwait(false);
            if (!early.IsOk)
            {
                await ErrorAsync(ctx, endpoint, ErrorOf(early)).ConfigureAwait(false);
                return;
            }
        }
        var res = ctx.Response;
        res.StatusCode = 200;
        res.ContentType = "text/event-stream";
        res.Headers.CacheControl = "no-cache";
        Count(endpoint, 200);
        var pipe = res.BodyWriter;
        using var w = new Utf8JsonWriter(pipe, WriterOptions);
        var text = new StringBuilder();
        List<TokenLogprobs>? logprobs = request.Params.TokenLogprobs ? [] : null;
        var textOffset = new System.Runtime.CompilerServices.StrongBox<int>();
        try
        {
            if (chat)
            {
                Event(pipe, w, static (w, s) => OpenAiJson.Chunk(w, true, s.id, s.created, s.model, "", null, roleOnly: true), (id, created, model));
                if ((await pipe.FlushAsync(ct).ConfigureAwait(false)).IsCanceled) return;
            }
            // Every delta already waiting goes into one chunk: one event and one flush per wake-up.
            while (await deltas.WaitToReadAsync(ct).ConfigureAwait(false))
            {
                text.Clear();
                logprobs?.Clear();
                while (deltas.TryRead(out var d))
                {
                    text.Append(d.Text);
                    if (d.Logprobs is not null) logprobs?.AddRange(d.Logprobs);
                }
                if (text.Length == 0 && logprobs is not { Count: > 0 }) continue;
                Event(pipe, w, static (w, s) => OpenAiJson.Chunk(w, s.chat, s.id, s.created, s.model, s.text, null, logprobs: s.logprobs, textOffset: s.textOffset),
                    (chat, id, created, model, text: text.ToString(), logprobs, textOffset));
                if ((await pipe.FlushAsync(ct).ConfigureAwait(false)).IsCanceled) return;
            }
            var r = await call.Completion.ConfigureAwait(false);
            if (r.IsOk)
            {
                Event(pipe, w, static (w, s) => OpenAiJson.Chunk(w, s.chat, s.id, s.created, s.model, "", OpenAiJson.FinishReason(s.r.Finish), s.r),
                    (chat, id, created, model, r));
                if (includeUsage)
                    Event(pipe, w, static (w, s) => OpenAiJson.UsageChunk(w, s.chat, s.id, s.created, s.model, s.r), (chat, id, created, model, r));
            }
            else
            {
                var err = ErrorOf(r);
                Event(pipe, w, static (w, e) => OpenAiJson.Error(w, e), err);
            }
            pipe.Write(Done);
            await pipe.FlushAsync(ct).ConfigureAwait(false);
        }
        catch (Exception e) when (e is OperationCanceledException or IOException or ObjectDisposedException)
        {
            // The client went away mid-stream: the registration sent CANCEL.
        }
    }

    private static void Event<TState>(PipeWriter pipe, Utf8JsonWriter w, Action<Utf8JsonWriter, TState> write, TState state)
    {
        pipe.Write(DataPrefix);
        w.Reset(pipe);
        write(w, state);
        w.Flush();
        pipe.Write(EventEnd);
    }

    // ---------------------------------------------------------------- errors and output

    /// <summary>The HTTP error for a failed call: the FINAL's status (or the client-side failure's closest status) to
    /// an HTTP status, with FastServe's detail code as <c>code</c>.</summary>
    internal static HttpError ErrorOf(CompletionResult r)
    {
        string code = r.Detail ?? r.StatusName;
        string message = r.Message ?? r.StatusName;
        uint after = r.RetryAfter is { } ra ? (uint)Math.Min(ra.TotalMilliseconds, uint.MaxValue) : 0;
        return r.Status switch
        {
            WireStatus.BadRequest => new HttpError(400, code, message),
            WireStatus.Unauthorized => new HttpError(401, code, message),
            WireStatus.NotFound => new HttpError(404, code, message, "model"),
            WireStatus.TooLarge => new HttpError(413, code, message),
            WireStatus.Overloaded or WireStatus.TooManyRequests => new HttpError(429, code, message, RetryAfterMs: Math.Max(after, 1000)),
            WireStatus.Draining or WireStatus.Unavailable or WireStatus.Cancelled => new HttpError(503, code, message, RetryAfterMs: Math.Max(after, 1000)),
            WireStatus.DeadlineExceeded => new HttpError(504, code, message),
            _ => new HttpError(500, code, message),
        };
    }

    private Task ErrorAsync(HttpContext ctx, string endpoint, HttpError e)
    {
        if (e.RetryAfterMs > 0) ctx.Response.Headers.RetryAfter = ((e.RetryAfterMs + 999) / 1000).ToString(System.Globalization.CultureInfo.InvariantCulture);
        return WriteJsonAsync(ctx, endpoint, e.Status, e, static (w, e) => OpenAiJson.Error(w, e));
    }

    private Task WriteJsonAsync<TState>(HttpContext ctx, string endpoint, int status, TState state, Action<Utf8JsonWriter, TState> write)
    {
        Count(endpoint, status);
        var res = ctx.Response;
        if (res.HasStarted) return Task.CompletedTask;
        var json = JsonScratch.Take();
        try
        {
            write(json.Writer, state);
            json.Writer.Flush();
            res.StatusCode = status;
            res.ContentType = "application/json";
            res.ContentLength = json.Buffer.WrittenCount;
            // No flush here: Kestrel sends the buffered body with the response's end, in the same write as the headers.
            if (!HttpMethods.IsHead(ctx.Request.Method)) res.BodyWriter.Write(json.Buffer.WrittenSpan);
        }
        finally
        {
            JsonScratch.Return(json);
        }
        return Task.CompletedTask;
    }

    private void Count(string endpoint, int status) => _options.Metrics?.Count(endpoint, status);

    // Unique per process run without a random draw per request: a random prefix fixed at start, then a counter.
    private static readonly string s_idPrefix = Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(6));
    private static long s_nextId;

    private static string NewId(string prefix)
    {
        var h = new System.Runtime.CompilerServices.DefaultInterpolatedStringHandler(0, 0, System.Globalization.CultureInfo.InvariantCulture, stackalloc char[64]);
        h.AppendLiteral(prefix);
        h.AppendLiteral(s_idPrefix);
        h.AppendFormatted(Interlocked.Increment(ref s_nextId), "x12");
        return h.ToStringAndClear();
    }

    public async ValueTask DisposeAsync()
    {
        if (_app is { } app)
        {
            using var stop = new CancellationTokenSource(TimeSpan.FromSeconds(1));
            await app.StopAsync(stop.Token).ConfigureAwait(false);
            await app.DisposeAsync().ConfigureAwait(false);
        }
        await _pool.DisposeAsync().ConfigureAwait(false);
    }
}
