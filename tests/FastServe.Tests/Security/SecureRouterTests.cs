using System.Buffers;
using System.Net;
using System.Net.Sockets;
using System.Text;
using FastServe.Client;
using FastServe.Protocol;
using FastServe.Protocol.Security;
using FastServe.Router;
using FastServe.Tests.Router;
using NUnit.Framework;

namespace FastServe.Tests.Security;

/// <summary>
/// API keys and TLS on the binary protocol, in process: a router (the same <c>FrameSession</c> HELLO gate and TLS
/// accept path a replica's workers run) in front of a scripted replica, reached by the .NET client and by raw
/// sockets. Also a router whose replica is itself a router requiring a key over TLS (router → replica TLS).
/// </summary>
[TestFixture, NonParallelizable]
public sealed class SecureRouterTests
{
    private const string KeyA = "alpha-key-0123456789", KeyB = "bravo-key-0123456789";
    private static readonly CompletionRequest Req = new() { Prompt = "hi", Params = RequestParams.Default with { MaxTokens = 3 } };
    private TestCerts _certs = null!;

    [OneTimeSetUp] public void MakeCerts() => _certs = new TestCerts();
    [OneTimeTearDown] public void DropCerts() => _certs.Dispose();

    private static ApiKeyStore Keys(string env) => ApiKeyStore.Create(null, env, _ => { }, out _)!;

    private static CertificateSource Cert((string Cert, string Key) pair) =>
        CertificateSource.Create(pair.Cert, pair.Key, _ => { }, out var e) ?? throw new InvalidOperationException(e!.Value.Message);

    private static Task<RouterHost> Router(ScriptedReplica replica, ApiKeyStore? keys = null, CertificateSource? tls = null, int helloTimeoutMs = 10_000) =>
        RouterRulesTests.Start(new RouterOptions { Port = 0, SlowStartMs = 0, Seed = 3, ApiKeys = keys, Tls = tls, HelloTimeoutMs = helloTimeoutMs },
            new StaticEndpointSource([EndpointSpec.Parse(replica.Address)]), 1);

    private TlsClientSettings TrustingTestCa => new() { CaFile = _certs.CaPem, TargetHost = "localhost" };

    private static async Task<FastServeClientException> Refused(int port, FastServeClientOptions o) =>
        (await Assert.ThrowsAsync<FastServeClientException>(async () => await (await FastServeClient.ConnectAsync("127.0.0.1", port, o)).DisposeAsync()))!;

    [Test]
    public async Task KeysRequiredRefuseAMissingOrWrongKeyAndCountRequestsByName()
    {
        using var replica = new ScriptedReplica("r");
        var keys = Keys($"alpha:{KeyA},bravo:{KeyB}");
        await using var router = await Router(replica, keys);

        var none = await Refused(router.Port, new FastServeClientOptions());
        Assert.That((none.Code, none.Status), Is.EqualTo(("client.unauthorized", (WireStatus?)WireStatus.Unauthorized)));
        Assert.That(none.Message, Does.Contain("auth.key_required"));
        var wrong = await Refused(router.Port, new FastServeClientOptions { ApiKey = "not-a-valid-key-at-all" });
        Assert.That(wrong.Code, Is.EqualTo("client.unauthorized"));
        Assert.That(wrong.Message, Does.Contain("auth.invalid_key").And.Not.Contain("not-a-valid-key"));

        await using (var c = await FastServeClient.ConnectAsync("127.0.0.1", router.Port, new FastServeClientOptions { ApiKey = KeyB }))
        {
            var results = await Task.WhenAll(Enumerable.Range(0, 5).Select(_ => c.CompleteAsync(Req)));
            Assert.That(results.Select(r => r.StatusName), Is.All.EqualTo("ok"));
        }
        var bravo = keys.Usage.Single();
        Assert.That((bravo.Name, bravo.Connections, bravo.Requests), Is.EqualTo(("bravo", 1L, 5L)));
        Assert.That((keys.RefusedMissing, keys.RefusedInvalid), Is.EqualTo((1L, 1L)));
        Assert.That(replica.Requests.Count, Is.EqualTo(5), "refused connections sent nothing upstream");
    }

    [Test]
    public async Task AnOldHelloWithoutAKeyStillWorksWhereKeysAreNotRequired()
    {
        using var replica = new ScriptedReplica("r");
        await using var router = await Router(replica);
        using var s = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        s.Connect(IPAddress.Loopback, router.Port);
        var w = new ArrayBufferWriter<byte>();
        FrameWriter.Hello(w, "old-client"u8, minor: 2);
        s.Send(w.WrittenSpan);
        var header = new byte[Wire.HeaderSize];
        s.ReceiveTimeout = 5000;
        int got = 0;
        while (got < header.Length) got += s.Receive(header, got, header.Length - got, SocketFlags.None);
        Assert.That((FrameType)header[4], Is.EqualTo(FrameType.HelloOk), "a 1.2 HELLO with no key field is answered HELLO_OK");

        // A key sent to a server without keys is ignored, as an older server ignores the field.
        await using var c = await FastServeClient.ConnectAsync("127.0.0.1", router.Port, new FastServeClientOptions { ApiKey = KeyA });
        Assert.That((await c.CompleteAsync(Req)).IsOk, Is.True);
    }

    [Test]
    public async Task ATlsClientGetsTheSameCompletionAsAPlaintextOne()
    {
        using var replica = new ScriptedReplica("r") { Text = "héllo", Tokens = 4 };
        await using var plain = await Router(replica);
        await using var tls = await Router(replica, tls: Cert(_certs.Good));
        await using var pc = await FastServeClient.ConnectAsync("127.0.0.1", plain.Port);
        await using var tc = await FastServeClient.ConnectAsync("127.0.0.1", tls.Port, new FastServeClientOptions { Tls = TrustingTestCa });
        var p = await pc.CompleteAsync(Req);
        var t = await tc.CompleteAsync(Req);
        Assert.That(t.StatusName, Is.EqualTo("ok"));
        Assert.That((t.Text, t.Ids), Is.EqualTo((p.Text, p.Ids)));
        Assert.That(t.Text, Is.Not.Empty);
        // Many requests at once over one TLS connection: the stream's writes are serialized, nothing interleaves.
        var many = await Task.WhenAll(Enumerable.Range(0, 200).Select(_ => tc.CompleteAsync(Req)));
        Assert.That(many.All(r => r.IsOk && r.Text == p.Text), Is.True);
    }

    [TestCase("expired")]
    [TestCase("wrong-name")]
    [TestCase("untrusted")]
    public async Task ABadCertificateFailsTheClientWithTlsFailedAndTheServerKeepsServing(string which)
    {
        var pair = which switch { "expired" => _certs.Expired, "wrong-name" => _certs.WrongName, _ => _certs.Untrusted };
        using var replica = new ScriptedReplica("r");
        var cert = Cert(pair);
        await using var router = await Router(replica, tls: cert);
        var e = await Refused(router.Port, new FastServeClientOptions { Tls = TrustingTestCa });
        Assert.That(e.Code, Is.EqualTo("client.tls_failed"), e.Message);
        // (Under TLS 1.3 the server's side of the handshake completes before the client judges the certificate, so
        // the refusal reaches the server as a closed connection, not as a failed handshake.)
        // The server is up and serves a client that accepts its certificate (the test-only switch).
        await using var c = await FastServeClient.ConnectAsync("127.0.0.1", router.Port, new FastServeClientOptions { Tls = new TlsClientSettings { AllowUntrusted = true } });
        Assert.That((await c.CompleteAsync(Req)).IsOk, Is.True);
    }

    [Test]
    public async Task PlaintextAndTlsMismatchesFailCleanlyAndASilentClientLosesItsSlot()
    {
        using var replica = new ScriptedReplica("r");
        var cert = Cert(_certs.Good);
        await using var tls = await Router(replica, tls: cert, helloTimeoutMs: 300);
        await using var plain = await Router(replica);
        var p = await Refused(tls.Port, new FastServeClientOptions { ConnectTimeout = TimeSpan.FromSeconds(5) });
        Assert.That(p.Code, Is.EqualTo("client.connect_failed").Or.EqualTo("client.protocol_error"), p.Message);
        var t = await Refused(plain.Port, new FastServeClientOptions { Tls = TrustingTestCa, ConnectTimeout = TimeSpan.FromSeconds(5) });
        Assert.That(t.Code, Is.EqualTo("client.tls_failed"), t.Message);

        using var silent = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { ReceiveTimeout = 5000 };
        silent.Connect(IPAddress.Loopback, tls.Port);
        long before = cert.HandshakeFailures;
        var sw = System.Diagnostics.Stopwatch.StartNew();
        int n;
        try { n = silent.Receive(new byte[16]); } catch (SocketException) { n = 0; }
        Assert.That(n, Is.Zero, "the server closed the silent connection");
        Assert.That(sw.ElapsedMilliseconds, Is.LessThan(3000), "within the handshake (HELLO) timeout");
        Assert.That(cert.HandshakeFailures, Is.GreaterThan(before));
    }

    [Test]
    public async Task ARouterReachesAReplicaThatRequiresAKeyOverTls()
    {
        using var replica = new ScriptedReplica("r");
        var innerKeys = Keys($"router:{KeyA}");
        // The "replica" here is a router that requires a key and speaks TLS only: what `serve --tls-cert --api-keys-file` does.
        await using var inner = await Router(replica, innerKeys, Cert(_certs.Good));
        var src = new StaticEndpointSource([EndpointSpec.Parse($"127.0.0.1:{inner.Port}")]);
        await using var outer = await RouterRulesTests.Start(new RouterOptions
        {
            Port = 0, SlowStartMs = 0, Seed = 4, UpstreamApiKey = KeyA, UpstreamTls = TrustingTestCa,
        }, src, 1);
        await using var c = await FastServeClient.ConnectAsync("127.0.0.1", outer.Port);
        var results = await Task.WhenAll(Enumerable.Range(0, 10).Select(_ => c.CompleteAsync(Req)));
        Assert.That(results.Select(r => r.StatusName), Is.All.EqualTo("ok"));
        Assert.That(innerKeys.Usage.Single().Name, Is.EqualTo("router"));
        Assert.That(innerKeys.Usage.Single().Requests, Is.EqualTo(10));

        // Without the key, the outer router cannot bring the endpoint up.
        var log = new List<string>();
        await using var keyless = new RouterHost(new RouterOptions { Port = 0, SlowStartMs = 0, UpstreamTls = TrustingTestCa, Log = l => { lock (log) log.Add(l); } },
            new StaticEndpointSource([EndpointSpec.Parse($"127.0.0.1:{inner.Port}")]));
        await keyless.StartAsync();
        await RouterRulesTests.Until(() => { lock (log) return log.Any(l => l.Contains("auth.key_required")); }, "the refusal logged");
        Assert.That(keyless.Fleet.Endpoints.Any(e => e.IsReady), Is.False);
    }
}
