using System.Net;
using System.Text;
using FastServe.Protocol;
using FastServe.Protocol.Security;
using NUnit.Framework;

namespace FastServe.Tests.Security;

/// <summary>The API key store: file and environment parsing (hostile lines refused with a line number and no key),
/// authentication by digest, rotation by file change, and the loopback rule.</summary>
public class ApiKeyStoreTests
{
    private const string KeyA = "alpha-key-0123456789", KeyB = "bravo-key-0123456789", KeyC = "charlie-key-012345678";

    private static string TempFile(string text)
    {
        string path = Path.Combine(Path.GetTempPath(), $"fastserve-keys-{Guid.NewGuid():N}");
        File.WriteAllText(path, text);
        return path;
    }

    [Test]
    public void ParsesNamesKeysCommentsAndBlankLinesAndAuthenticatesByKey()
    {
        string f = TempFile($"# team keys\n\nalpha {KeyA}\r\n  bravo\t{KeyB}  \n");
        try
        {
            using var s = ApiKeyStore.Create(f, null, _ => { }, out var error);
            Assert.That(error, Is.Null);
            Assert.That(s!.Count, Is.EqualTo(2));
            Assert.That(s.TryAuthenticate(Encoding.ASCII.GetBytes(KeyA), out var a) && a == "alpha", Is.True);
            Assert.That(s.TryAuthenticate(KeyB, out var b) && b == "bravo", Is.True);
            Assert.That(s.TryAuthenticate(KeyC, out _), Is.False);
            Assert.That(s.TryAuthenticate(KeyA[..^1], out _), Is.False, "a prefix of a key is not the key");
            Assert.That(s.TryAuthenticate(ReadOnlySpan<byte>.Empty, out _), Is.False);
            Assert.That(s.TryAuthenticate(new string('x', 10_000), out _), Is.False, "an oversized key is refused, not hashed");
        }
        finally { File.Delete(f); }
    }

    [TestCase("alpha", "line 1: expected 'name key'")]
    [TestCase("alpha short", "line 1: a key has 16 to 256 characters")]
    [TestCase("bad/name alpha-key-0123456789", "line 1: a key name has")]
    [TestCase("ok alpha-key-0123456789 extra", "line 1: expected 'name key' (a key has no spaces)")]
    [TestCase("# c\nok alpha-key-0123456789\nok2 bravo-key-0123456789\u00e9", "line 3: a key has only printable ASCII")]
    [TestCase("a alpha-key-0123456789\nb alpha-key-0123456789", "are the same key")]
    [TestCase("# nothing\n", "holds no key")]
    public void RefusesABadFileWithAStableCodeAndNeverQuotesTheKey(string text, string why)
    {
        string f = TempFile(text);
        try
        {
            var s = ApiKeyStore.Create(f, null, _ => { }, out var error);
            Assert.That(s, Is.Null);
            Assert.That(error!.Value.Code, Does.StartWith("config.api_keys_"));
            Assert.That(error.Value.Message, Does.Contain(why));
            Assert.That(error.Value.Message, Does.Not.Contain("alpha-key").And.Not.Contain("bravo-key"), "no key material in errors");
        }
        finally { File.Delete(f); }
    }

    [Test]
    public void AMissingFileAndNothingConfiguredAreTellApart()
    {
        Assert.That(ApiKeyStore.Create(null, null, _ => { }, out var none), Is.Null);
        Assert.That(none, Is.Null, "no keys configured is not an error");
        Assert.That(ApiKeyStore.Create("/nonexistent/keys", null, _ => { }, out var missing), Is.Null);
        Assert.That(missing!.Value.Code, Is.EqualTo("config.api_keys_missing"));
    }

    [Test]
    public void ReadsKeysFromTheEnvironmentValue()
    {
        using var s = ApiKeyStore.Create(null, $"alpha:{KeyA}, bravo:{KeyB}", _ => { }, out var error);
        Assert.That(error, Is.Null);
        Assert.That(s!.TryAuthenticate(KeyB, out var n) && n == "bravo", Is.True);
        Assert.That(ApiKeyStore.Create(null, "alpha", _ => { }, out var bad), Is.Null);
        Assert.That(bad!.Value.Code, Is.EqualTo("config.api_keys_invalid"));
        Assert.That(bad.Value.Message, Does.Contain(ApiKeyStore.EnvVar));
    }

    [Test]
    public void AChangedFileIsPickedUpWithinTwoSecondsAndABadOneKeepsThePreviousKeys()
    {
        string f = TempFile($"alpha {KeyA}\n");
        var log = new List<string>();
        try
        {
            using var s = ApiKeyStore.Create(f, null, l => { lock (log) log.Add(l); }, out _)!;
            File.WriteAllText(f, $"bravo {KeyB}\n");
            var until = DateTime.UtcNow.AddSeconds(3);
            while (s.Reloads == 0 && DateTime.UtcNow < until) Thread.Sleep(50);
            Assert.That(s.Reloads, Is.EqualTo(1), "the timer re-read the changed file");
            Assert.That(s.TryAuthenticate(KeyA, out _), Is.False, "the old key is out");
            Assert.That(s.TryAuthenticate(KeyB, out _), Is.True, "the new key is in");

            File.WriteAllText(f, $"bravo {KeyB}\nbroken line with spaces in it\n");
            until = DateTime.UtcNow.AddSeconds(3);
            while (s.ReloadFailures == 0 && DateTime.UtcNow < until) Thread.Sleep(50);
            Assert.That(s.ReloadFailures, Is.EqualTo(1));
            Assert.That(s.TryAuthenticate(KeyB, out _), Is.True, "a bad file leaves the previous keys in force");
            lock (log)
            {
                Assert.That(log, Has.Some.Contains("line 2").And.Some.Contains("keeping the previous 1 key(s)"));
                Assert.That(string.Join("\n", log), Does.Not.Contain(KeyA).And.Not.Contain(KeyB), "no key material in logs");
            }
        }
        finally { File.Delete(f); }
    }

    [Test]
    public void TwoKeysMayShareANameForRotationAndUsageIsCountedByName()
    {
        using var s = ApiKeyStore.Create(null, $"svc:{KeyA},svc:{KeyB}", _ => { }, out _)!;
        Assert.That(s.TryAuthenticate(KeyA, out var a) && s.TryAuthenticate(KeyB, out var b) && a == "svc" && b == "svc", Is.True);
        s.CountConnection("svc").CountRequest();
        s.CountRefusal(missing: true);
        s.CountRefusal(missing: false);
        Assert.That(s.Usage.Single().Connections, Is.EqualTo(1));
        Assert.That(s.Usage.Single().Requests, Is.EqualTo(1));
        Assert.That((s.RefusedMissing, s.RefusedInvalid), Is.EqualTo((1L, 1L)));
    }

    [Test]
    public void KeysAreRequiredOnNonLoopbackAddressesUnlessInsecure()
    {
        Assert.That(ListenPolicy.Check(IPAddress.Loopback, hasKeys: false, insecure: false), Is.Null);
        Assert.That(ListenPolicy.Check(IPAddress.Parse("127.0.0.5"), hasKeys: false, insecure: false), Is.Null);
        Assert.That(ListenPolicy.Check(IPAddress.Any, hasKeys: false, insecure: false)!.Value.Code, Is.EqualTo("config.keys_required"));
        Assert.That(ListenPolicy.Check(IPAddress.Parse("10.1.2.3"), hasKeys: false, insecure: false, "--http-listen")!.Value.Message, Does.Contain("--http-listen"));
        Assert.That(ListenPolicy.Check(IPAddress.Any, hasKeys: true, insecure: false), Is.Null);
        Assert.That(ListenPolicy.Check(IPAddress.Any, hasKeys: false, insecure: true), Is.Null);
    }

    [Test]
    public void HelloCarriesTheKeyAfterTheNameAndAnOldHelloParsesWithoutOne()
    {
        var w = new System.Buffers.ArrayBufferWriter<byte>();
        FrameWriter.Hello(w, "c"u8, apiKey: Encoding.ASCII.GetBytes(KeyA));
        Assert.That(HelloView.TryParse(w.WrittenSpan[Wire.HeaderSize..], out var v), Is.True);
        Assert.That(Encoding.ASCII.GetString(v.ApiKey), Is.EqualTo(KeyA));
        Assert.That(Encoding.ASCII.GetString(v.ClientName), Is.EqualTo("c"));
        var old = new System.Buffers.ArrayBufferWriter<byte>();
        FrameWriter.Hello(old, "c"u8, minor: 2);
        Assert.That(HelloView.TryParse(old.WrittenSpan[Wire.HeaderSize..], out var o) && o.ApiKey.IsEmpty && o.Minor == 2, Is.True);
    }
}
