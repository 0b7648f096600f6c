using System.Text.Json;
using FastServe.Client;
using FastServe.Protocol;
using FastServe.Runtime.Model;
using FastServe.Tests.Cli;
using FastServe.Tests.Router;
using NUnit.Framework;

namespace FastServe.Tests.Server;

/// <summary>
/// Protocol 1.2 on real processes: a replica declares its model and version (defaults: the directory name and the
/// content fingerprint) in HELLO_OK and load reports, refuses requests naming another model or version with
/// not_found, and returns the log-probability summary; a router in front of two versions routes by them and takes
/// ADMIN commands from <c>fastserve admin</c>.
/// </summary>
[NonParallelizable]
public class ModelVersionTests
{
    [Test]
    public void TheFingerprintFollowsTheContentNotTheDocs()
    {
        string dir = Path.Combine(Path.GetTempPath(), $"fastserve-fp-{Guid.NewGuid():N}");
        Directory.CreateDirectory(dir);
        try
        {
            foreach (var f in Directory.GetFiles(TestModels.Tiny)) File.Copy(f, Path.Combine(dir, Path.GetFileName(f)));
            string a = ModelIdentity.Fingerprint(dir);
            Assert.That(a, Does.Match("^[0-9a-f]{12}$"));
            Assert.That(ModelIdentity.Fingerprint(TestModels.Tiny), Is.EqualTo(a), "the same files, the same version");
            File.WriteAllText(Path.Combine(dir, "MODEL_CARD.md"), "# notes");
            Assert.That(ModelIdentity.Fingerprint(dir), Is.EqualTo(a), "documentation is not the model");
            var weights = Directory.GetFiles(dir, "*.safetensors")[0];
            var bytes = File.ReadAllBytes(weights);
            bytes[^1] ^= 1;
            File.WriteAllBytes(weights, bytes);
            Assert.That(ModelIdentity.Fingerprint(dir), Is.Not.EqualTo(a), "one changed weight byte is another version");
            Assert.That(ModelIdentity.DefaultName(dir + "/"), Does.StartWith("fastserve-fp-"));
        }
        finally { Directory.Delete(dir, true); }
    }

    [Test]
    public async Task AReplicaDeclaresItsModelAndRefusesAnother()
    {
        using var r = ReplicaProcess.Start(["--backend", "sim", "--model", TestModels.Tiny, "--workers", "1"], agent: false);
        await using var c = await FastServeClient.ConnectAsync("127.0.0.1", r.Port);
        string name = ModelIdentity.DefaultName(TestModels.Tiny), version = ModelIdentity.Fingerprint(TestModels.Tiny);
        Assert.That((c.Server.Minor, c.Server.Model, c.Server.ModelVersion), Is.EqualTo((Wire.Minor, name, version)));
        var load = await c.GetLoadAsync();
        Assert.That((load.Model, load.ModelVersion), Is.EqualTo((name, version)));

        CompletionRequest Req(string? model, string? v = null, bool logprobs = false) => new()
        {
            Prompt = "Correct: He go.\nFixed:",
            Params = RequestParams.Default with { MaxTokens = 6, IgnoreEos = true, Model = model, ModelVersion = v, Logprobs = logprobs },
        };
        var ok = await c.CompleteAsync(Req(name, version, logprobs: true));
        Assert.That(ok.IsOk);
        Assert.That(ok.LogprobMean, Is.LessThanOrEqualTo(0).And.Not.NaN);
        Assert.That(ok.LogprobMin, Is.LessThanOrEqualTo(ok.LogprobMean));
        Assert.That(double.IsNaN((await c.CompleteAsync(Req(null))).LogprobMean), "no summary unless asked");

        var other = await c.CompleteAsync(Req("gec-large"));
        Assert.That((other.Status, other.Detail, other.Retriable), Is.EqualTo((WireStatus.NotFound, "model.not_found", false)));
        var otherVersion = await c.CompleteAsync(Req(name, "000000000000"));
        Assert.That((otherVersion.Status, otherVersion.Detail), Is.EqualTo((WireStatus.NotFound, "model.version_not_found")));
    }

    [Test]
    public async Task ARouterRoutesByVersionAndTakesAdminCommands()
    {
        using var v1 = ReplicaProcess.Start(["--backend", "sim", "--model", TestModels.Tiny, "--workers", "1", "--model-name", "gec", "--model-version", "v1"], agent: false);
        using var v2 = ReplicaProcess.Start(["--backend", "sim", "--model", TestModels.Tiny, "--workers", "1", "--model-name", "gec", "--model-version", "v2"], agent: false);
        string token = Path.GetTempFileName();
        File.WriteAllText(token, "admin-secret\n");
        try
        {
            using var router = RouterProcess.Start([v1.Port, v2.Port], "--admin-token-file", token);
            await using var c = await FastServeClient.ConnectAsync("127.0.0.1", router.Port);
            await RouterRulesTests.Until(() => Pools(CliTests.Run("admin", "--port", $"{router.Port}", "--admin-token-file", token, "status").Out) == 2, "both pools eligible");

            var (code, outText, err) = CliTests.Run("admin", "--port", $"{router.Port}", "--admin-token-file", token, "split", "gec", "v1=0,v2=100");
            Assert.That(code, Is.Zero, err);
            var state = JsonDocument.Parse(outText).RootElement;
            Assert.That(state.GetProperty("splits").GetProperty("gec").GetProperty("versions").GetProperty("v2").GetProperty("share").GetDouble(), Is.EqualTo(1));

            var (bad, _, badErr) = CliTests.Run("admin", "--port", $"{router.Port}", "--admin-token-file", token, "split", "gec", "v1=x");
            Assert.That(bad, Is.EqualTo(1));
            Assert.That(badErr, Does.Contain("client.admin_refused"));

            var (cv, cvOut, _) = CliTests.Run("client", "--port", $"{router.Port}", "--model", "gec", "--model-version", "v9", "--json", "hi");
            Assert.That(cv, Is.EqualTo(1));
            Assert.That(JsonDocument.Parse(cvOut).RootElement.GetProperty("detail").GetString(), Is.EqualTo("router.version_not_found"));
            var (okCode, okOut, okErr) = CliTests.Run("client", "--port", $"{router.Port}", "--model", "gec", "--logprobs", "--json", "-n", "4", "hi");
            Assert.That(okCode, Is.Zero, okErr);
            Assert.That(JsonDocument.Parse(okOut).RootElement.GetProperty("logprob_min").GetDouble(), Is.LessThanOrEqualTo(0));
        }
        finally { File.Delete(token); }
    }

    private static int Pools(string statusJson)
    {
        if (string.IsNullOrWhiteSpace(statusJson)) return 0;
        return JsonDocument.Parse(statusJson).RootElement.GetProperty("pools").EnumerateArray().Count(p => p.GetProperty("eligible").GetInt32() > 0);
    }
}
