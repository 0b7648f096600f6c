using NUnit.Framework;
using FastServe.Router;

namespace FastServe.Tests.Router;

/// <summary>The <c>--endpoints</c> text, the JSON endpoints file, and the file source's reloads.</summary>
[TestFixture]
public sealed class EndpointSourceTests
{
    private static string Code(Action a)
    {
        try { a(); }
        catch (EndpointSourceException e) { return e.Code; }
        Assert.Fail("expected an EndpointSourceException");
        return "";
    }

    [Test]
    public void StaticListsParseAndBadOnesHaveStableCodes()
    {
        var s = (StaticEndpointSource)EndpointSources.Parse(" 127.0.0.1:7700, replica-b.local:7701 ,[::1]:7702");
        Assert.That(s.Endpoints.Select(e => e.Address), Is.EqualTo(new[] { "127.0.0.1:7700", "replica-b.local:7701", "[::1]:7702" }));
        Assert.That(s.Endpoints.Select(e => e.Weight), Is.All.EqualTo(1.0));
        Assert.That(s.Endpoints[2].Host, Is.EqualTo("::1"));
        Assert.That(Code(() => EndpointSources.Parse("127.0.0.1")), Is.EqualTo("route.bad_endpoint"));
        Assert.That(Code(() => EndpointSources.Parse("127.0.0.1:0")), Is.EqualTo("route.bad_endpoint"));
        Assert.That(Code(() => EndpointSources.Parse("127.0.0.1:70000")), Is.EqualTo("route.bad_endpoint"));
        Assert.That(Code(() => EndpointSources.Parse("::1:7700")), Is.EqualTo("route.bad_endpoint"));
        Assert.That(Code(() => EndpointSources.Parse(" , ")), Is.EqualTo("route.no_endpoints"));
        Assert.That(Code(() => EndpointSources.Parse("a:1,A:1")), Is.EqualTo("route.duplicate_endpoint"));
        Assert.That(Code(() => EndpointSources.Parse("dns://replicas.local:7700")), Is.EqualTo("route.bad_source"));
        Assert.That(Code(() => EndpointSources.Parse("file:")), Is.EqualTo("route.bad_source"));
        Assert.That(Code(() => EndpointSources.Parse("file:/nonexistent/endpoints.json")), Is.EqualTo("route.endpoints_file_missing"));
    }

    [Test]
    public void EndpointsFileJson()
    {
        var set = EndpointSources.ParseJson("""{"endpoints":[{"address":"10.0.0.1:7700","weight":2.5},{"address":"10.0.0.2:7700","zone":"b"}]}"""u8, "t");
        Assert.That(set, Is.EqualTo(new[] { new EndpointSpec("10.0.0.1", 7700, 2.5), new EndpointSpec("10.0.0.2", 7700, 1) }));
        string[] bad =
        [
            "not json", "[]", """{"endpoints":{}}""", """{"endpoints":[1]}""", """{"endpoints":[{"weight":1}]}""",
            """{"endpoints":[{"address":"a:1","weight":"x"}]}""",
        ];
        foreach (var b in bad)
            Assert.That(Code(() => EndpointSources.ParseJson(System.Text.Encoding.UTF8.GetBytes(b), "t")), Is.EqualTo("route.bad_endpoints_file"), b);
        Assert.That(Code(() => EndpointSources.ParseJson("""{"endpoints":[{"address":"a:1","weight":0}]}"""u8, "t")), Is.EqualTo("route.bad_endpoint"));
        Assert.That(Code(() => EndpointSources.ParseJson("""{"endpoints":[]}"""u8, "t")), Is.EqualTo("route.no_endpoints"));
    }

    [Test]
    public async Task TheFileIsReReadWhenItChangesAndABadVersionKeepsThePreviousSet()
    {
        string dir = TestModels.TempDir("endpoints");
        string path = Path.Combine(dir, "endpoints.json");
        await File.WriteAllTextAsync(path, """{"endpoints":[{"address":"10.0.0.1:7700"}]}""");
        var log = new List<string>();
        var src = new FileEndpointSource(path, m => { lock (log) log.Add(m); }, TimeSpan.FromMilliseconds(20));
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(20));
        await using var it = src.WatchAsync(cts.Token).GetAsyncEnumerator(cts.Token);
        Assert.That(await it.MoveNextAsync(), Is.True);
        Assert.That(it.Current.Select(e => e.Address), Is.EqualTo(new[] { "10.0.0.1:7700" }));

        var stamp = File.GetLastWriteTimeUtc(path);
        void Write(string text)
        {
            File.WriteAllText(path, text);
            stamp = stamp.AddSeconds(1);        // a distinct modification time even on a coarse clock
            File.SetLastWriteTimeUtc(path, stamp);
        }

        Write("""{"endpoints":[{"address":"10.0.0.1:7700"},{"address":"10.0.0.2:7700","weight":3}]}""");
        Assert.That(await it.MoveNextAsync(), Is.True);
        Assert.That(it.Current.Select(e => (e.Address, e.Weight)), Is.EqualTo(new[] { ("10.0.0.1:7700", 1.0), ("10.0.0.2:7700", 3.0) }));

        // A broken file: no new set, one log line; then a good one comes through.
        Write("""{"endpoints":[{"address":"10.0.0.3""");
        var next = it.MoveNextAsync().AsTask();
        await Task.Delay(300);
        Assert.That(next.IsCompleted, Is.False, "a bad file yields nothing");
        lock (log)
        {
            Assert.That(log, Has.Count.EqualTo(1));
            Assert.That(log[0], Does.Contain("keeping the previous 2 endpoint(s)"));
        }
        Write("""{"endpoints":[{"address":"10.0.0.3:7700"}]}""");
        Assert.That(await next, Is.True);
        Assert.That(it.Current.Select(e => e.Address), Is.EqualTo(new[] { "10.0.0.3:7700" }));
        cts.Cancel();
        Assert.That(await it.MoveNextAsync(), Is.False, "the stream ends when cancelled");
    }
}
