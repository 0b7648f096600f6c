using System.Net;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace FastServe.Tests.Security;

/// <summary>
/// Certificates made for a test, written as PEM into a temporary directory: a CA, a leaf for <c>localhost</c> and
/// 127.0.0.1 it signed, an expired leaf, a leaf for another name, and a leaf from a CA nobody trusts.
/// </summary>
internal sealed class TestCerts : IDisposable
{
    public string Dir { get; } = Directory.CreateTempSubdirectory("fastserve-tls-").FullName;
    public string CaPem => Path.Combine(Dir, "ca.pem");

    /// <summary>(certificate PEM, key PEM) of each leaf.</summary>
    public (string Cert, string Key) Good, Expired, WrongName, Untrusted;

    public TestCerts()
    {
        using var ca = MakeCa("FastServe Test CA");
        File.WriteAllText(CaPem, ca.ExportCertificatePem());
        using var rogue = MakeCa("Rogue CA");
        var now = DateTimeOffset.UtcNow;
        Good = Leaf("good", ca, "localhost", now.AddDays(-1), now.AddDays(30));
        Expired = Leaf("expired", ca, "localhost", now.AddDays(-30), now.AddDays(-1));
        WrongName = Leaf("wrong-name", ca, "other.example", now.AddDays(-1), now.AddDays(30));
        Untrusted = Leaf("untrusted", rogue, "localhost", now.AddDays(-1), now.AddDays(30));
    }

    private static X509Certificate2 MakeCa(string name)
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var req = new CertificateRequest($"CN={name}", key, HashAlgorithmName.SHA256);
        req.CertificateExtensions.Add(new X509BasicConstraintsExtension(true, false, 0, true));
        req.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.KeyCertSign | X509KeyUsageFlags.CrlSign, true));
        req.CertificateExtensions.Add(new X509SubjectKeyIdentifierExtension(req.PublicKey, false));
        return req.CreateSelfSigned(DateTimeOffset.UtcNow.AddDays(-60), DateTimeOffset.UtcNow.AddDays(365));
    }

    private (string, string) Leaf(string file, X509Certificate2 ca, string dns, DateTimeOffset from, DateTimeOffset to)
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var req = new CertificateRequest($"CN={dns}", key, HashAlgorithmName.SHA256);
        var san = new SubjectAlternativeNameBuilder();
        san.AddDnsName(dns);
        if (dns == "localhost") san.AddIpAddress(IPAddress.Loopback);
        req.CertificateExtensions.Add(san.Build());
        req.CertificateExtensions.Add(new X509BasicConstraintsExtension(false, false, 0, false));
        req.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.DigitalSignature, true));
        req.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension([new Oid("1.3.6.1.5.5.7.3.1")], false));
        var serial = new byte[8];
        RandomNumberGenerator.Fill(serial);
        serial[0] &= 0x7F;
        using var cert = req.Create(ca, from, to, serial);
        string certPath = Path.Combine(Dir, file + ".pem"), keyPath = Path.Combine(Dir, file + ".key");
        File.WriteAllText(certPath, cert.ExportCertificatePem());
        File.WriteAllText(keyPath, key.ExportPkcs8PrivateKeyPem());
        return (certPath, keyPath);
    }

    public void Dispose()
    {
        try { Directory.Delete(Dir, recursive: true); } catch (IOException) { }
    }
}
