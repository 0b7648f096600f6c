using FastServe.Tests.Http;
using FastServe.Tests.Server;
using NUnit.Framework;

namespace FastServe.Tests.Security;

/// <summary>
/// The HTTP front door of a replica that requires API keys and serves TLS (dist/fastserve, <c>--backend sim</c>): the
/// same key file and certificate as the binary port, with curl as the client. A request without a key, or with a
/// wrong one, is 401 in OpenAI's shape; the key file's rotation reaches HTTP as it reaches HELLO; a client that does
/// not trust the certificate never gets an answer; no key appears in the replica's output.
/// </summary>
[NonParallelizable]
public sealed class SecureHttpTests
{
    private const string KeyA = "alpha-http-0123456789", KeyB = "bravo-http-0123456789";
    private static readonly string Body = "{\"model\":\"" + Path.GetFileName(TestModels.Tiny) + "\",\"prompt\":\"Fix: he go home.\",\"max_tokens\":4,\"temperature\":0}";

    private static (int Code, string Out, string Err) Post(int port, string ca, string? key)
    {
        var args = new List<string> { "-sS", "-o", "/dev/stdout", "-w", "\n%{http_code}", "--cacert", ca, "--resolve", $"localhost:{port}:127.0.0.1",
            "-H", "Content-Type: application/json", "-d", Body };
        if (key is not null) args.AddRange(["-H", $"Authorization: Bearer {key}"]);
        args.Add($"https://localhost:{port}/v1/completions");
        return HttpTools.Run("curl", args);
    }

    private static int Status(int port, string ca, string? key)
    {
        var (code, output, err) = Post(port, ca, key);
        Assert.That(code, Is.Zero, err);
        return int.Parse(output[(output.LastIndexOf('\n') + 1)..]);
    }

    [Test]
    public async Task HttpsWithKeysFromTheReplicasFileAndCertificate()
    {
        using var certs = new TestCerts();
        string keys = Path.Combine(certs.Dir, "keys");
        File.WriteAllText(keys, $"alpha {KeyA}\n");
        using var r = ReplicaProcess.Start(["--backend", "sim", "--model", TestModels.Tiny, "--sim-time-scale", "100", "--workers", "2", "--http-port", "0",
            "--api-keys-file", keys, "--tls-cert", certs.Good.Cert, "--tls-key", certs.Good.Key], metrics: false, agent: false);
        int port = r.HttpPort;

        Assert.That(Status(port, certs.CaPem, null), Is.EqualTo(401), "no key");
        var (_, refused, _) = Post(port, certs.CaPem, KeyB);
        Assert.That(refused, Does.Contain("\"code\":\"invalid_api_key\"").And.EndWith("401"), "a wrong key, in OpenAI's error shape");
        var (_, ok, _) = Post(port, certs.CaPem, KeyA);
        Assert.That(ok, Does.EndWith("200").And.Contain("\"text_completion\""), ok);

        // A client that does not trust the replica's CA gets no answer at all (curl: exit 60, certificate problem).
        var untrusted = HttpTools.Run("curl", ["-sS", "--resolve", $"localhost:{port}:127.0.0.1", "-d", Body, $"https://localhost:{port}/v1/completions"]);
        Assert.That(untrusted.Code, Is.EqualTo(60), untrusted.Err);

        File.WriteAllText(keys, $"bravo {KeyB}\n");
        var until = DateTime.UtcNow.AddSeconds(5);
        bool rotated = false;
        while (!rotated && DateTime.UtcNow < until)
        {
            await Task.Delay(250);
            // Connections land on either worker; each polls the file on its own.
            rotated = Enumerable.Range(0, 6).All(_ => Status(port, certs.CaPem, KeyA) == 401);
        }
        Assert.That(rotated, Is.True, "the old key is refused over HTTP by every worker after the rotation");
        Assert.That(Status(port, certs.CaPem, KeyB), Is.EqualTo(200));
        Assert.That(r.Stderr, Does.Not.Contain(KeyA).And.Not.Contain(KeyB), "no key material in the logs");
    }
}
