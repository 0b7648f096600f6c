using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace FastServe.Protocol.Security;

/// <summary>
/// A listener's TLS certificate from PEM files (<c>--tls-cert</c>, <c>--tls-key</c>; docs/security.md), re-read when
/// either file changes (polled once a second, modification time and size). A pair that no longer loads leaves the
/// last good certificate in force (one log line, <see cref="ReloadFailures"/>). Each load logs the subject and the
/// expiry date, and a warning when the certificate is expired or not yet valid. The binary listener hands out
/// <see cref="ServerOptions"/>; the HTTP listener (Kestrel) can take <see cref="Current"/> from its certificate
/// selector.
/// </summary>
/// <remarks>Threads: the certificate and its TLS context are swapped together, whole, by the poll timer; any thread
/// may read them.</remarks>
public sealed class CertificateSource : IDisposable
{
    private sealed record Loaded(X509Certificate2 Certificate, SslServerAuthenticationOptions Options);

    private readonly PolledFile _cert, _key;
    private readonly Action<string> _log;
    private readonly Timer _timer;
    private volatile Loaded _current;
    private long _reloads, _reloadFailures, _handshakeFailures;

    private CertificateSource(string certPath, string keyPath, Loaded first, Action<string> log)
    {
        _cert = new PolledFile(certPath);
        _key = new PolledFile(keyPath);
        _cert.Changed();
        _key.Changed();
        _current = first;
        _log = log;
        _timer = new Timer(static s => ((CertificateSource)s!).Poll(), this, 1000, 1000);
    }

    /// <summary>
    /// Loads the certificate (PEM, the leaf first and any intermediates after it) and its private key (PEM,
    /// PKCS#8 or the key type's own format). Null with <paramref name="error"/> <c>config.tls_invalid</c> when the
    /// pair cannot be loaded (missing file, bad PEM, a key that does not match the certificate).
    /// </summary>
    public static CertificateSource? Create(string certPath, string keyPath, Action<string> log, out SecurityError? error)
    {
        error = null;
        if (!TryLoad(certPath, keyPath, out var loaded, out var why))
        {
            error = new SecurityError("config.tls_invalid", $"{certPath} / {keyPath}: {why}");
            return null;
        }
        var source = new CertificateSource(certPath, keyPath, loaded!, log);
        source.Describe(loaded!.Certificate, "loaded");
        return source;
    }

    /// <summary>The certificate in force (for Kestrel's <c>ServerCertificateSelector</c>).</summary>
    public X509Certificate2 Current => _current.Certificate;

    /// <summary>What <see cref="SslStream.AuthenticateAsServerAsync(SslServerAuthenticationOptions, CancellationToken)"/>
    /// takes for the certificate in force (its chain context built once per load).</summary>
    public SslServerAuthenticationOptions ServerOptions => _current.Options;

    /// <summary>Times a changed pair was loaded and put in force.</summary>
    public long Reloads => Volatile.Read(ref _reloads);

    /// <summary>Times a changed pair failed to load (the last good certificate stayed).</summary>
    public long ReloadFailures => Volatile.Read(ref _reloadFailures);

    /// <summary>TLS handshakes that failed or timed out at <see cref="AcceptAsync"/>.</summary>
    public long HandshakeFailures => Volatile.Read(ref _handshakeFailures);

    /// <summary>
    /// The server side of the TLS handshake on an accepted <paramref name="socket"/>, limited to
    /// <paramref name="timeout"/> (the HELLO timeout: a silent client cannot hold the slot). The authenticated stream,
    /// or null when the handshake failed or timed out (counted; the caller closes the socket).
    /// </summary>
    public async Task<SslStream?> AcceptAsync(Socket socket, TimeSpan timeout)
    {
        var ssl = new SslStream(new NetworkStream(socket, ownsSocket: false), leaveInnerStreamOpen: false);
        try
        {
            using var cts = new CancellationTokenSource(timeout);
            await ssl.AuthenticateAsServerAsync(ServerOptions, cts.Token).ConfigureAwait(false);
            return ssl;
        }
        catch (Exception e) when (e is AuthenticationException or IOException or OperationCanceledException or SocketException or ObjectDisposedException)
        {
            Interlocked.Increment(ref _handshakeFailures);
            ssl.Dispose();
            return null;
        }
    }

    /// <summary>Re-loads the pair if either file changed (every second from the timer; tests may call it).</summary>
    public void Poll()
    {
        lock (_timer)
        {
            bool changed = _cert.Changed() | _key.Changed();
            if (!changed) return;
            if (!TryLoad(_cert.Path, _key.Path, out var loaded, out var why))
            {
                // Mid-rotation the two files may be caught half-written; the next change (or poll) tries again.
                Interlocked.Increment(ref _reloadFailures);
                _log($"tls certificate {_cert.Path}: {why}; keeping the previous certificate");
                return;
            }
            _current = loaded!;
            Interlocked.Increment(ref _reloads);
            Describe(loaded!.Certificate, "reloaded");
        }
    }

    private void Describe(X509Certificate2 c, string what)
    {
        var now = DateTime.UtcNow;
        string warning = c.NotAfter.ToUniversalTime() < now ? " (EXPIRED: clients will refuse it)"
            : c.NotBefore.ToUniversalTime() > now ? " (NOT YET VALID: clients will refuse it)" : "";
        _log($"tls certificate {what}: {c.Subject}, expires {c.NotAfter.ToUniversalTime():yyyy-MM-dd HH:mm} UTC{warning}");
    }

    private static bool TryLoad(string certPath, string keyPath, out Loaded? loaded, out string why)
    {
        loaded = null;
        why = "";
        try
        {
            if (!File.Exists(certPath)) { why = "the certificate file does not exist"; return false; }
            if (!File.Exists(keyPath)) { why = "the key file does not exist"; return false; }
            var cert = X509Certificate2.CreateFromPemFile(certPath, keyPath);
            if (!cert.HasPrivateKey) { why = "the key does not belong to the certificate"; return false; }
            var chain = new X509Certificate2Collection();
            chain.ImportFromPemFile(certPath);
            var intermediates = new X509Certificate2Collection();
            foreach (var c in chain)
                if (c.Thumbprint != cert.Thumbprint) intermediates.Add(c);
            var context = SslStreamCertificateContext.Create(cert, intermediates, offline: true);
            loaded = new Loaded(cert, new SslServerAuthenticationOptions { ServerCertificateContext = context, ClientCertificateRequired = false });
            return true;
        }
        catch (Exception e) when (e is CryptographicException or IOException or UnauthorizedAccessException or ArgumentException)
        {
            why = $"cannot load the PEM pair: {e.Message}";
            return false;
        }
    }

    /// <summary>Stops watching the files.</summary>
    public void Dispose() => _timer.Dispose();
}
