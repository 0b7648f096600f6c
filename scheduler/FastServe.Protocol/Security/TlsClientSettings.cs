using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace FastServe.Protocol.Security;

/// <summary>
/// How a client end (the .NET client, <c>fastserve client/bench/admin</c>, a router towards its replicas) opens TLS
/// (docs/security.md). By default the server's certificate must chain to the system's trusted roots and name the
/// host connected to; <see cref="CaFile"/> trusts only the CAs in a PEM file instead; <see cref="Validate"/> replaces
/// the check; <see cref="AllowUntrusted"/> turns it off (tests only).
/// </summary>
public sealed record TlsClientSettings
{
    /// <summary>The name the server's certificate must carry (SNI too); null: the host connected to.</summary>
    public string? TargetHost { get; init; }

    /// <summary>PEM file of the CA certificates to trust instead of the system's; null: the system's.</summary>
    public string? CaFile { get; init; }

    /// <summary>Accept any certificate (no chain, name or date check). For tests only: it gives up the server's
    /// authentication, so anyone on the path can read and change the traffic.</summary>
    public bool AllowUntrusted { get; init; }

    /// <summary>A validation of one's own (replaces the others when set).</summary>
    public RemoteCertificateValidationCallback? Validate { get; init; }

    /// <summary>Loads <see cref="CaFile"/>: null on success, else the problem (<c>config.tls_invalid</c>).</summary>
    public SecurityError? Check() => Build("check", out _, out var error) ? null : error;

    /// <summary>
    /// The client side of the handshake on a connected <paramref name="socket"/> to <paramref name="host"/>. Throws
    /// <see cref="TlsFailedException"/> (the server's certificate was refused: expired, wrong name, untrusted, or no
    /// TLS at the other end) or <see cref="OperationCanceledException"/>.
    /// </summary>
    public async Task<SslStream> AuthenticateAsync(Socket socket, string host, CancellationToken ct)
    {
        if (!Build(TargetHost ?? host, out var options, out var error)) throw new TlsFailedException(error!.Value.Message);
        var ssl = new SslStream(new NetworkStream(socket, ownsSocket: false), leaveInnerStreamOpen: false);
        try
        {
            await ssl.AuthenticateAsClientAsync(options!, ct).ConfigureAwait(false);
            return ssl;
        }
        catch (Exception e) when (e is AuthenticationException or IOException or SocketException)
        {
            ssl.Dispose();
            throw new TlsFailedException($"TLS handshake with {TargetHost ?? host} failed: {Describe(e)}", e);
        }
        catch
        {
            ssl.Dispose();
            throw;
        }
    }

    private static string Describe(Exception e) =>
        e is AuthenticationException && e.InnerException is { } inner ? $"{e.Message} ({inner.Message})" : e.Message;

    private bool Build(string host, out SslClientAuthenticationOptions? options, out SecurityError? error)
    {
        options = null;
        error = null;
        var o = new SslClientAuthenticationOptions { TargetHost = host, CertificateRevocationCheckMode = X509RevocationMode.NoCheck };
        if (Validate is not null) o.RemoteCertificateValidationCallback = Validate;
        else if (AllowUntrusted) o.RemoteCertificateValidationCallback = static (_, _, _, _) => true;
        else if (CaFile is not null)
        {
            var roots = new X509Certificate2Collection();
            try { roots.ImportFromPemFile(CaFile); }
            catch (Exception e) when (e is CryptographicException or IOException or UnauthorizedAccessException)
            {
                error = new SecurityError("config.tls_invalid", $"{CaFile}: cannot read the CA certificates: {e.Message}");
                return false;
            }
            if (roots.Count == 0)
            {
                error = new SecurityError("config.tls_invalid", $"{CaFile}: the file holds no certificate");
                return false;
            }
            var policy = new X509ChainPolicy { TrustMode = X509ChainTrustMode.CustomRootTrust, RevocationMode = X509RevocationMode.NoCheck };
            policy.CustomTrustStore.AddRange(roots);
            o.CertificateChainPolicy = policy;
        }
        options = o;
        return true;
    }
}

/// <summary>The TLS handshake failed on the client side (code <c>client.tls_failed</c>).</summary>
public sealed class TlsFailedException(string message, Exception? inner = null) : Exception(message, inner);
