using System.CommandLine;
using System.Net.Sockets;
using FastServe.Http;
using FastServe.Protocol.Security;
using FastServe.Runtime;

namespace FastServe.Cli.Commands;

/// <summary>
/// The HTTP front door's command-line settings, shared by <c>serve</c> (which forwards them to its workers),
/// <c>serve-worker</c> and <c>route</c> (docs/http.md).
/// </summary>
/// <param name="Port">TCP port; 0 = any free port; -1 = no HTTP.</param>
/// <param name="TemplatePath">Chat template file (full path), null = the default or the model's.</param>
/// <param name="MaxBodyBytes">Largest request body.</param>
/// <param name="HeaderTimeoutMs">Time allowed for a request's line and headers (slow senders).</param>
internal sealed record HttpCli(int Port, string? TemplatePath, long MaxBodyBytes, int HeaderTimeoutMs)
{
    public bool Enabled => Port >= 0;

    /// <summary>Reads and checks the options (<c>args.*</c> errors naming the option).</summary>
    public static HttpCli Read(ParseResult r, Option<int> port, Option<string?> template, Option<long> maxBody, Option<int> headerTimeout) =>
        Check(r.GetValue(port), port.Name, r.GetValue(template), r.GetValue(maxBody), r.GetValue(headerTimeout));

    /// <summary>The options every HTTP-serving command takes besides its port.</summary>
    public static (Option<string?> Template, Option<long> MaxBody, Option<int> HeaderTimeout) Options() =>
    (
        new("--chat-template") { Description = "Chat template file for /v1/chat/completions (docs/http.md; default: the grammar-correction prompt format)" },
        new("--http-max-body-bytes") { Description = "Largest HTTP request body; larger ones are refused with 413", DefaultValueFactory = _ => 1 << 20 },
        new("--http-header-timeout-ms") { Description = "Time an HTTP client has to send a request's line and headers (slow senders)", DefaultValueFactory = _ => 10_000 }
    );

    /// <summary>Checks the settings; <paramref name="portName"/> names the port option in errors.</summary>
    public static HttpCli Check(int port, string portName, string? template, long maxBody, int headerTimeoutMs)
    {
        if (headerTimeoutMs < 100 || headerTimeoutMs > 600_000) throw new FastServeException("args.invalid_http_header_timeout", "--http-header-timeout-ms must be between 100 and 600000", "--http-header-timeout-ms");
        if (port < -1 || port > 65535) throw new FastServeException("args.invalid_port", $"{portName} must be between 0 and 65535", portName);
        if (maxBody < 1024 || maxBody > 1L << 30) throw new FastServeException("args.invalid_http_max_body", "--http-max-body-bytes must be between 1024 and 1073741824", "--http-max-body-bytes");
        if (template is not null)
        {
            if (!File.Exists(template)) throw new FastServeException("args.chat_template_missing", "the chat template file does not exist", template);
            template = Path.GetFullPath(template);
            LoadTemplate(template);   // refuse a malformed file now, not at the first chat request
        }
        return new HttpCli(port, template, maxBody, headerTimeoutMs);
    }

    /// <summary>The options a worker needs (the port is added by the supervisor).</summary>
    public IEnumerable<string> WorkerArgs()
    {
        yield return "--http-max-body-bytes";
        yield return $"{MaxBodyBytes}";
        yield return "--http-header-timeout-ms";
        yield return $"{HeaderTimeoutMs}";
        if (TemplatePath is not null)
        {
            yield return "--chat-template";
            yield return TemplatePath;
        }
    }

    /// <summary>
    /// The chat template, by precedence: the <c>--chat-template</c> file, else the Jinja <c>chat_template</c> of
    /// <paramref name="modelDir"/>'s tokenizer_config.json (null: no model directory, as in the router), else the
    /// default. Throws <see cref="FastServeException"/> <c>model.invalid_chat_template</c> when the model's template
    /// cannot be read or parsed, so <c>serve</c> stops at start rather than failing every chat request.
    /// </summary>
    public ChatTemplate ResolveTemplate(string? modelDir)
    {
        if (TemplatePath is not null) return LoadTemplate(TemplatePath);
        if (modelDir is null) return ChatTemplate.Default;
        try
        {
            return ChatTemplate.FromModel(modelDir) ?? ChatTemplate.Default;
        }
        catch (Exception e) when (e is FormatException or IOException or UnauthorizedAccessException)
        {
            throw new FastServeException("model.invalid_chat_template",
                $"{e.Message}; pass --chat-template FILE to serve chat requests with another template", modelDir);
        }
    }

    /// <summary>Starts the front door in front of this process's binary host, with the chat template
    /// <see cref="ResolveTemplate"/> picks for <paramref name="modelDir"/> (null: no model's template).</summary>
    /// <paramref name="keys"/> (null: none) are the API keys a <c>Authorization: Bearer</c> header must carry, the same
    /// store the binary listener checks HELLO against (requests counted under the key's name); <paramref name="tls"/>
    /// (null: plain HTTP) the binary listener's reloading certificate, so both listeners serve the same one.
    public HttpFrontDoor Start(string host, bool reusePort, Action<Socket> acceptLocal, Func<bool> ready, Func<IReadOnlyList<string>> models,
        string defaultModel, string? modelDir, Action<string> log, HttpMetrics? metrics = null, ApiKeyStore? keys = null, CertificateSource? tls = null)
    {
        var template = ResolveTemplate(modelDir);
        var front = new HttpFrontDoor(new HttpFrontDoorOptions
        {
            Host = host,
            Port = Port,
            ReusePort = reusePort,
            AcceptLocal = s => acceptLocal(s),
            MaxBodyBytes = MaxBodyBytes,
            RequestHeadersTimeout = TimeSpan.FromMilliseconds(HeaderTimeoutMs),
            Ready = ready,
            Models = models,
            DefaultModelName = defaultModel,
            ChatTemplate = template,
            Metrics = metrics,
            Log = log,
            KeysRequired = keys is not null,
            Authenticate = keys is null ? null : token =>
            {
                if (keys.TryAuthenticate(token, out string name)) { keys.UsageOf(name).CountRequest(); return name; }
                keys.CountRefusal(missing: token.Length == 0);
                return null;
            },
            ServerCertificate = tls is null ? null : () => tls.Current,
        });
        try
        {
            front.StartAsync().GetAwaiter().GetResult();
        }
        catch (Exception e) when (e is IOException or SocketException)
        {
            throw new FastServeException("http.listen_failed", $"cannot serve HTTP on {host}:{Port}: {e.Message}", "--http-port");
        }
        return front;
    }

    private static ChatTemplate LoadTemplate(string path)
    {
        try
        {
            return ChatTemplate.Load(path);
        }
        catch (Exception e) when (e is FormatException or IOException or UnauthorizedAccessException)
        {
            throw new FastServeException("args.invalid_chat_template", $"the chat template cannot be used: {e.Message}", path);
        }
    }
}
