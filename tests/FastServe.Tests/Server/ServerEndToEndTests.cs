using NUnit.Framework;
using System.Buffers.Binary;
using System.Net.Http;
using System.Text;
using System.Text.RegularExpressions;
using FastServe.Protocol;
using FastServe.Runtime.Formats;
using FastServe.Runtime.Tokenization;

namespace FastServe.Tests.Server;

/// <summary>
/// One replica (simulated device, tiny model's shape and tokenizer, two workers) shared by tests that do not hurt
/// it: streaming from many clients, load reports, metrics, the agent check, and bad input that must leave it up.
/// </summary>
[TestFixture, NonParallelizable]
public sealed class ServerEndToEndTests
{
    private ReplicaProcess _r = null!;
    private TextTokenizer _tok = null!;

    [OneTimeSetUp]
    public void Start()
    {
        _r = ReplicaProcess.Start(["--backend", "sim", "--model", TestModels.Tiny, "--workers", "2", "--max-in-flight", "64"]);
        var cfg = ModelConfig.Load(Path.Combine(TestModels.Tiny, "config.json"));
        _tok = TextTokenizer.Load(TestModels.Tiny, cfg.BosTokenId, cfg.EosTokenIds.Count > 0 ? cfg.EosTokenIds : null);
    }

    [OneTimeTearDown]
    public void Stop() => _r.Dispose();

    [Test]
    public void ManyClientsEachGetTheirStreamsInOrderAndExactlyOneFinal()
    {
        const int clients = 8, perClient = 24, maxTokens = 16;
        var tasks = Enumerable.Range(0, clients).Select(c => Task.Run(() =>
        {
            using var conn = RawConnection.Open(_r.Port);
            for (ulong id = 1; id <= perClient; id++) conn.Request(id, $"Correct the grammar: client {c} sentence {id} have many error.", maxTokens);
            Assert.That(conn.Collect(Enumerable.Range(1, perClient).Select(i => (ulong)i)), Is.True, "connection closed early");
            return conn.Outcomes;
        })).ToArray();
        Task.WaitAll(tasks);
        foreach (var t in tasks)
            foreach (var (id, o) in t.Result)
            {
                Assert.That(o.FinalsSeen, Is.EqualTo(1));
                Assert.That(o.Final.Status, Is.EqualTo(WireStatus.Ok), o.Message);
                Assert.That(o.Final.Finish, Is.EqualTo(WireFinish.Length));
                Assert.That(o.Ids, Has.Count.EqualTo(maxTokens));
                Assert.That(o.Final.CompletionTokens, Is.EqualTo(maxTokens));
                // Incremental detokenization in the worker equals decoding all ids at once.
                Assert.That(o.TextString, Is.EqualTo(_tok.Decode(o.Ids.ToArray())));
                var ts = o.Final.Timings;
                uint[] chain = [ts[(int)Timing.Tokenized], ts[(int)Timing.EngineReceived], ts[(int)Timing.Admitted], ts[(int)Timing.FirstScheduled], ts[(int)Timing.FirstToken], ts[(int)Timing.FinalSent]];
                Assert.That(chain, Is.Ordered, "hand-off timestamps must not go backwards");
                Assert.That(ts[(int)Timing.EngineFinished], Is.LessThanOrEqualTo(ts[(int)Timing.FinalSent]));
                Assert.That(o.Final.PromptTokens, Is.GreaterThan(5u));
            }
    }

    [Test]
    public void ReadyEventReportsEachStartStageInOrder() => _r.AssertStartStages("model_mapped");

    [Test]
    public void PingLoadQueryAndSubscription()
    {
        using var c = RawConnection.Open(_r.Port);
        Assert.That(c.Server.ContextLength, Is.EqualTo(2048));
        Assert.That(c.Server.MaxInFlight, Is.EqualTo(64));
        c.Send(w => FrameWriter.Ping(w, "abc"u8));
        var pong = c.Read(TimeSpan.FromSeconds(5))!.Value;
        Assert.That(pong.Header.Type, Is.EqualTo(FrameType.Pong));
        Assert.That(pong.Payload, Is.EqualTo("abc"u8.ToArray()));
        var l = c.Load();
        Assert.That(l.State, Is.EqualTo(ReplicaState.Ready));
        Assert.That(l.Workers, Is.EqualTo(2));
        Assert.That(l.MaxRunning, Is.GreaterThan(0));
        Assert.That(l.KvFreeFraction, Is.InRange(0.5f, 1f));
        Assert.That(l.AgeMs, Is.LessThan(1000));
        c.Send(w => FrameWriter.LoadQuery(w, 20));
        var sw = System.Diagnostics.Stopwatch.StartNew();
        while (c.Loads.Count < 5) c.Record(c.Read(TimeSpan.FromSeconds(5))!.Value);
        Assert.That(sw.Elapsed.TotalMilliseconds, Is.InRange(60, 2000), "five reports at a 20 ms interval");
        c.Send(w => FrameWriter.LoadQuery(w, 0, unsubscribe: true));
        Thread.Sleep(100);
        Assert.That(() => { while (true) c.Record(c.Read(TimeSpan.FromMilliseconds(200))!.Value); }, Throws.TypeOf<TimeoutException>());
        int before = c.Loads.Count;
        Thread.Sleep(150);
        Assert.Throws<TimeoutException>(() => c.Read(TimeSpan.FromMilliseconds(100)));
        Assert.That(c.Loads.Count, Is.EqualTo(before), "no reports after unsubscribing");
    }

    [Test]
    public void MetricsScrapeParsesAndCountsRequests()
    {
        using (var c = RawConnection.Open(_r.Port))
        {
            for (ulong i = 1; i <= 5; i++) c.Request(i, "hello metrics", 4);
            c.Send(w => FrameWriter.Request(w, 6, RequestParams.Default with { TopP = 2f }, "x"u8, default));
            Assert.That(c.Collect([1, 2, 3, 4, 5, 6]), Is.True);
        }
        Thread.Sleep(300); // reports travel worker → engine in the next batch
        using var http = new HttpClient();
        string text = http.GetStringAsync($"http://127.0.0.1:{_r.MetricsPort}/metrics").Result;
        var values = new Dictionary<string, double>();
        var line = new Regex(@"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$");
        foreach (var l in text.Split('\n'))
        {
            if (l.Length == 0 || l.StartsWith('#')) continue;
            var m = line.Match(l);
            Assert.That(m.Success, Is.True, $"not exposition format: {l}");
            values[m.Groups[1].Value + m.Groups[2].Value] = double.Parse(m.Groups[3].Value, System.Globalization.CultureInfo.InvariantCulture);
        }
        Assert.That(values["fastserve_requests_total{status=\"ok\"}"], Is.GreaterThanOrEqualTo(5));
        Assert.That(values["fastserve_requests_total{status=\"bad_request\"}"], Is.GreaterThanOrEqualTo(1));
        foreach (var h in new[] { "fastserve_request_queue_seconds", "fastserve_time_to_first_token_seconds", "fastserve_time_per_output_token_seconds", "fastserve_request_duration_seconds", "fastserve_batch_size_sequences" })
        {
            Assert.That(values[h + "_count"], Is.GreaterThanOrEqualTo(5), h);
            Assert.That(values[h + "_bucket{le=\"+Inf\"}"], Is.EqualTo(values[h + "_count"]), h);
        }
        Assert.That(values["fastserve_generation_tokens_total"], Is.GreaterThanOrEqualTo(20));
        Assert.That(values.Keys, Has.Some.StartsWith("fastserve_process_cpu_seconds_total{role=\"engine\""));
        Assert.That(values.Keys, Has.Some.StartsWith("fastserve_process_cpu_seconds_total{role=\"worker\""));
        Assert.That(values, Does.ContainKey("fastserve_kv_cache_usage_ratio"));
        Assert.That(values, Does.ContainKey("fastserve_prefix_cache_hit_ratio"));
        Assert.That(values["fastserve_ready"], Is.EqualTo(1));
    }

    [Test]
    public void AgentCheckSaysUpWithWeightAndMaxconn()
    {
        using var s = new System.Net.Sockets.TcpClient("127.0.0.1", _r.AgentPort);
        var line = new StreamReader(s.GetStream()).ReadLine();
        Assert.That(line, Does.Match(@"^up ready \d{1,3}% maxconn:\d+$"));
    }

    [Test]
    public void BrokenRequestRulesGetTheSameCodesAsFromTheClientAndTheEngine()
    {
        // The shared table of broken fields (RequestRulesTests.BrokenParams), as raw REQUESTs the client would refuse.
        using var c = RawConnection.Open(_r.Port);
        var cases = FastServe.Tests.Protocol.RequestRulesTests.BrokenParams().Select(d => ((RequestParams)d.Arguments[0]!, (string)d.Arguments[1]!)).ToArray();
        for (int i = 0; i < cases.Length; i++)
        {
            var p = cases[i].Item1;
            c.Send(w => FrameWriter.Request(w, (ulong)(i + 1), p, "x"u8, default));
        }
        // A request for more tokens than the context holds is valid: it runs until the context is full.
        ulong past = (ulong)cases.Length + 1;
        c.Send(w => FrameWriter.Request(w, past, RequestParams.Default with { MaxTokens = 4000, IgnoreEos = true }, "x"u8, default));
        Assert.That(c.Collect([.. Enumerable.Range(1, cases.Length + 1).Select(i => (ulong)i)]), Is.True);
        Assert.Multiple(() =>
        {
            for (int i = 0; i < cases.Length; i++)
            {
                var o = c.Outcomes[(ulong)(i + 1)];
                Assert.That((o.Final.Status, o.Detail), Is.EqualTo((WireStatus.BadRequest, cases[i].Item2)), $"case {i}");
            }
            Assert.That(c.Outcomes[past].Final.Status, Is.EqualTo(WireStatus.Ok));
            Assert.That(c.Outcomes[past].Final.Finish, Is.EqualTo(WireFinish.ContextFull));
        });
    }

    [Test]
    public void InvalidRequestsGetStableCodesAndTheConnectionStaysUsable()
    {
        using var c = RawConnection.Open(_r.Port);
        var p = RequestParams.Default;
        c.Send(w => FrameWriter.Request(w, 1, p with { MaxTokens = 0 }, "x"u8, default));
        c.Send(w => FrameWriter.Request(w, 2, p with { Temperature = float.NaN }, "x"u8, default));
        c.Send(w => FrameWriter.Request(w, 3, p with { TopK = -1 }, "x"u8, default));
        c.Send(w => FrameWriter.Request(w, 4, p, [0xC3, 0x28], default));                       // invalid UTF-8
        c.Send(w => FrameWriter.Request(w, 5, p, default, [5, 1 << 30]));                      // id outside the vocabulary
        c.Send(w => FrameWriter.Request(w, 6, p, default, new int[3000]));                     // over the context
        c.Send(w => FrameWriter.Request(w, 7, p with { Priority = 9 }, "x"u8, default));
        c.Send(w => FrameWriter.Request(w, 8, p, "x"u8, default, ["\uD800"]));                 // stop string encodes as U+FFFD: valid
        c.Send(w => FrameWriter.Request(w, 9, p with { MaxTokens = 100_000 }, "x"u8, default));
        Assert.That(c.Collect([1, 2, 3, 4, 5, 6, 7, 8, 9]), Is.True);
        string Code(ulong id) => c.Outcomes[id].Detail;
        Assert.Multiple(() =>
        {
            Assert.That(c.Outcomes[1].Final.Status, Is.EqualTo(WireStatus.BadRequest)); Assert.That(Code(1), Is.EqualTo("sampling.invalid"));
            Assert.That(c.Outcomes[2].Final.Status, Is.EqualTo(WireStatus.BadRequest)); Assert.That(Code(2), Is.EqualTo("sampling.invalid"));
            Assert.That(c.Outcomes[3].Final.Status, Is.EqualTo(WireStatus.BadRequest)); Assert.That(Code(3), Is.EqualTo("sampling.invalid"));
            Assert.That(c.Outcomes[4].Final.Status, Is.EqualTo(WireStatus.BadRequest)); Assert.That(Code(4), Is.EqualTo("prompt.invalid_utf8"));
            Assert.That(c.Outcomes[5].Final.Status, Is.EqualTo(WireStatus.BadRequest)); Assert.That(Code(5), Is.EqualTo("prompt.invalid_token"));
            Assert.That(c.Outcomes[6].Final.Status, Is.EqualTo(WireStatus.TooLarge)); Assert.That(Code(6), Is.EqualTo("prompt.too_long"));
            Assert.That(c.Outcomes[7].Final.Status, Is.EqualTo(WireStatus.BadRequest)); Assert.That(Code(7), Is.EqualTo("request.invalid_priority"));
            Assert.That(c.Outcomes[8].Final.Status, Is.EqualTo(WireStatus.Ok));
            Assert.That(c.Outcomes[9].Final.Status, Is.EqualTo(WireStatus.BadRequest)); Assert.That(Code(9), Is.EqualTo("sampling.invalid"));
            Assert.That(c.Outcomes.Values.All(o => o.FinalsSeen == 1), Is.True);
        });
        // Connection-level mistakes: an error frame, and the connection goes on.
        c.Request(0, "id zero");
        c.Send(w => FrameWriter.Empty(w, FrameType.Final, 3));                 // a server-only type
        c.Send(w => FrameWriter.Empty(w, (FrameType)0x7E, 0));                 // unknown type
        c.Send(w => FrameWriter.Hello(w, "again"u8));
        c.Send(w => FrameWriter.Request(w, 20, p, "x"u8, default));
        c.SendRaw(Truncated(20));                                               // REQUEST payload shorter than its fixed part
        Assert.That(c.Collect([20]), Is.True);
        Assert.That(c.Outcomes[20].FinalsSeen, Is.EqualTo(1));
        while (c.Errors.Count < 4) c.Record(c.Read(TimeSpan.FromSeconds(5))!.Value);
        Assert.That(c.Errors.Take(4).Select(e => e.Status), Is.All.EqualTo(WireStatus.BadRequest));
        Assert.That(c.Errors.Any(e => e.Fatal), Is.False);
        c.Request(21, "still works", 4);
        Assert.That(c.Collect([21]), Is.True);
        Assert.That(c.Outcomes[21].Final.Status, Is.EqualTo(WireStatus.Ok));
    }

    // A REQUEST whose payload is only 10 bytes long: parse error, request-level FINAL bad_request.
    private static byte[] Truncated(ulong id)
    {
        var b = new byte[Wire.HeaderSize + 10];
        BinaryPrimitives.WriteUInt32LittleEndian(b, 10);
        b[4] = (byte)FrameType.Request;
        BinaryPrimitives.WriteUInt64LittleEndian(b.AsSpan(8), id + 100);
        return b;
    }

    [Test]
    public void DuplicateIdsAndTooManyInFlightAreRefused()
    {
        using var c = RawConnection.Open(_r.Port);
        // One write: the duplicate of id 1 is parsed microseconds after id 1, long before its 64 tokens are done.
        var p = RequestParams.Default with { MaxTokens = 64, IgnoreEos = true };
        c.Send(w =>
        {
            FrameWriter.Request(w, 1, p, "fill the connection"u8, default);
            FrameWriter.Request(w, 1, p with { MaxTokens = 4 }, "duplicate of a running id"u8, default);
            for (ulong id = 2; id <= 70; id++) FrameWriter.Request(w, id, p, "fill the connection"u8, default);
        });
        Assert.That(c.Collect(Enumerable.Range(1, 70).Select(i => (ulong)i)), Is.True);
        var statuses = c.Outcomes.Values.Select(o => o.Final.Status).ToList();
        Assert.That(statuses.Count(s => s == WireStatus.TooManyRequests), Is.GreaterThanOrEqualTo(6));
        Assert.That(c.Outcomes.Values.Where(o => o.Final.Status == WireStatus.TooManyRequests).All(o => o.Final.Retriable), Is.True);
        Assert.That(c.Outcomes.Values.All(o => o.FinalsSeen == 1), Is.True);
        Assert.That(c.Errors.Any(e => e.Status == WireStatus.BadRequest && e.Message.Contains("already in flight")), Is.True);
    }

    [Test]
    public void GarbageFloodsLeaveTheReplicaUpAndMemoryBounded()
    {
        var rnd = new Random(42);
        var workers = _r.Children("serve-worker");
        long rssBefore = workers.Sum(ReplicaProcess.RssKiB);
        for (int i = 0; i < 200; i++)
        {
            using var s = new System.Net.Sockets.Socket(System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Tcp);
            s.Connect("127.0.0.1", _r.Port);
            var junk = new byte[rnd.Next(1, 4096)];
            rnd.NextBytes(junk);
            if (i % 3 == 0)
            {
                // A valid HELLO first, then garbage: the parser must cope with anything after the handshake too.
                var w = new System.Buffers.ArrayBufferWriter<byte>();
                FrameWriter.Hello(w, "junk"u8);
                s.Send(w.WrittenSpan);
            }
            try { s.Send(junk); } catch (System.Net.Sockets.SocketException) { }
        }
        using var good = RawConnection.Open(_r.Port);
        good.Request(1, "after the flood", 8);
        Assert.That(good.Collect([1]), Is.True);
        Assert.That(good.Outcomes[1].Final.Status, Is.EqualTo(WireStatus.Ok));
        Assert.That(_r.Children("serve-worker"), Is.EquivalentTo(workers), "no worker died");
        long rssAfter = _r.Children("serve-worker").Sum(ReplicaProcess.RssKiB);
        Assert.That(rssAfter - rssBefore, Is.LessThan(64 * 1024), "worker memory grew by more than 64 MiB");
    }

    [Test]
    public void WrongMagicOversizedFrameAndWrongVersionCloseTheConnectionWithAnError()
    {
        static ErrorInfo? FatalAfter(int port, Action<RawConnection> send)
        {
            using var c = new RawConnection(port);
            send(c);
            Assert.That(c.ClosedWithin(5), Is.True, "the server must close the connection");
            return c.Errors.FirstOrDefault();
        }
        var magic = FatalAfter(_r.Port, c => c.SendRaw(Encoding.ASCII.GetBytes("GET / HTTP/1.1\r\nHost: x\r\n\r\n")));
        Assert.That(magic?.Status, Is.AnyOf(WireStatus.BadRequest, WireStatus.TooLarge));
        Assert.That(magic?.Fatal, Is.True);
        var version = FatalAfter(_r.Port, c => c.Send(w => FrameWriter.Hello(w, "v2"u8, major: 2)));
        Assert.That(version?.Status, Is.EqualTo(WireStatus.UnsupportedVersion));
        var big = FatalAfter(_r.Port, c =>
        {
            c.Send(w => FrameWriter.Hello(w, "x"u8));
            var h = new byte[Wire.HeaderSize];
            BinaryPrimitives.WriteUInt32LittleEndian(h, 0xFFFFFFF0);
            h[4] = (byte)FrameType.Request;
            c.SendRaw(h);
        });
        Assert.That(big?.Status, Is.EqualTo(WireStatus.TooLarge));
        using var good = RawConnection.Open(_r.Port);
        Assert.That(good.Load().State, Is.EqualTo(ReplicaState.Ready));
    }
}
