using System.CommandLine;
using System.Net;
using System.Security.Cryptography;
using FastServe.Protocol.Security;
using FastServe.Runtime;

namespace FastServe.Cli.Commands;

/// <summary>
/// The command-line side of access control and TLS (docs/security.md): the listener checks <c>serve</c> and
/// <c>route</c> run before they start, and the client flags <c>client</c>, <c>bench</c> and <c>admin</c> share.
/// Every refusal is a <see cref="FastServeException"/> with a stable code; nothing here prints key material.
/// </summary>
internal static class SecurityCli
{
    /// <summary>The environment variable with the key a client sends (the key itself, not a file).</summary>
    public const string ClientKeyEnvVar = "FASTSERVE_API_KEY";

    /// <summary>What a checked listener will run with.</summary>
    public readonly record struct ListenerSecurity(bool Keys, bool Tls);

    /// <summary>
    /// Checks a listener's security settings before it starts: the keys load (<c>config.api_keys_*</c>), the loopback
    /// rule holds (<see cref="ListenPolicy.Check"/>: <c>config.keys_required</c>), and a TLS pair is complete
    /// (<c>args.tls_incomplete</c>) and loads (<c>config.tls_invalid</c>).
    /// </summary>
    public static ListenerSecurity CheckListener(IPAddress bind, string? keysFile, bool insecure, string? tlsCert, string? tlsKey, string flag)
    {
        using var keys = OpenKeys(keysFile, static _ => { });
        if (ListenPolicy.Check(bind, keys is not null, insecure, flag) is { } refusal) throw new FastServeException(refusal.Code, refusal.Message, flag);
        bool tls = CheckTlsPair(tlsCert, tlsKey, "--tls-cert", "--tls-key");
        if (tls)
        {
            using var source = CertificateSource.Create(tlsCert!, tlsKey!, static _ => { }, out var error);
            if (error is { } e) throw new FastServeException(e.Code, e.Message, tlsCert);
        }
        return new ListenerSecurity(keys is not null, tls);
    }

    /// <summary>The keys from <paramref name="file"/> and <see cref="ApiKeyStore.EnvVar"/>, null when neither is set;
    /// a <see cref="FastServeException"/> when they do not load.</summary>
    public static ApiKeyStore? OpenKeys(string? file, Action<string> log)
    {
        var keys = ApiKeyStore.Create(file, Environment.GetEnvironmentVariable(ApiKeyStore.EnvVar), log, out var error);
        if (error is { } e) throw new FastServeException(e.Code, e.Message, file);
        return keys;
    }

    /// <summary>True when both files are given, false when neither; <c>args.tls_incomplete</c> for one alone.</summary>
    public static bool CheckTlsPair(string? cert, string? key, string certFlag, string keyFlag)
    {
        if (cert is null && key is null) return false;
        if (cert is null || key is null)
            throw new FastServeException("args.tls_incomplete", $"{certFlag} and {keyFlag} go together", cert is null ? certFlag : keyFlag);
        return true;
    }

    /// <summary>A fresh random key for the supervisor's readiness probe (never written anywhere but the children's
    /// environment).</summary>
    public static string NewProbeKey() => RandomNumberGenerator.GetHexString(48, lowercase: true);

    /// <summary>
    /// Reads a key file for a client end (<c>--api-key-file</c>, <c>--upstream-api-key-file</c>): the file's first
    /// non-empty line, trimmed; else <paramref name="envVar"/>; null when neither is set. <c>args.api_key_invalid</c>
    /// when the file is missing or the key breaks the key rules (the message never quotes it).
    /// </summary>
    public static string? ReadClientKey(string? file, string envVar, string flag)
    {
        string? key;
        if (file is not null)
        {
            if (!File.Exists(file)) throw new FastServeException("args.api_key_invalid", "the API key file does not exist", file);
            key = File.ReadLines(file).Select(l => l.Trim()).FirstOrDefault(l => l.Length > 0);
        }
        else key = Environment.GetEnvironmentVariable(envVar)?.Trim();
        if (string.IsNullOrEmpty(key)) return file is null ? null : throw new FastServeException("args.api_key_invalid", "the API key file is empty", file);
        if (ApiKeyStore.CheckEntry("k", key) is { } why) throw new FastServeException("args.api_key_invalid", why, file ?? envVar);
        return key;
    }
}

/// <summary>
/// The flags a client command (<c>client</c>, <c>bench</c>, <c>admin</c>) takes to reach a server that requires keys
/// or TLS: <c>--api-key-file</c> (or <c>FASTSERVE_API_KEY</c>), <c>--tls</c>, <c>--tls-ca</c>, <c>--tls-host</c> and
/// <c>--tls-insecure</c> (tests only).
/// </summary>
internal sealed class ClientSecurityOptions
{
    public readonly Option<string?> ApiKeyFile = new("--api-key-file") { Description = $"File holding the API key to send in HELLO (or set {SecurityCli.ClientKeyEnvVar})" };
    public readonly Option<bool> Tls = new("--tls") { Description = "Connect with TLS (the server's certificate must chain to the system's roots, or to --tls-ca)" };
    public readonly Option<string?> TlsCa = new("--tls-ca") { Description = "PEM file of the CA certificates to trust for --tls (implies --tls)" };
    public readonly Option<string?> TlsHost = new("--tls-host") { Description = "Name the server's certificate must carry (default: the host connected to)" };
    public readonly Option<bool> TlsInsecure = new("--tls-insecure") { Description = "TLS without checking the server's certificate: for tests only (implies --tls)" };

    /// <summary>Adds the flags to <paramref name="cmd"/>.</summary>
    public void AddTo(Command cmd)
    {
        foreach (Option o in new Option[] { ApiKeyFile, Tls, TlsCa, TlsHost, TlsInsecure }) cmd.Add(o);
    }

    /// <summary>The key to send (null: none) and the TLS settings (null: plaintext).</summary>
    public (string? ApiKey, TlsClientSettings? Tls) Read(ParseResult r)
    {
        string? key = SecurityCli.ReadClientKey(r.GetValue(ApiKeyFile), SecurityCli.ClientKeyEnvVar, "--api-key-file");
        bool tls = r.GetValue(Tls) || r.GetValue(TlsCa) is not null || r.GetValue(TlsInsecure);
        if (!tls) return (key, null);
        var settings = new TlsClientSettings { CaFile = r.GetValue(TlsCa), TargetHost = r.GetValue(TlsHost), AllowUntrusted = r.GetValue(TlsInsecure) };
        if (settings.Check() is { } e) throw new FastServeException(e.Code, e.Message, settings.CaFile);
        return (key, settings);
    }
}
