using System.Buffers.Binary;
using System.Text;
using FastServe.Client;
using FastServe.Protocol;
using NUnit.Framework;

namespace FastServe.Tests.Client;

/// <summary>The client against a scripted peer that speaks the protocol through the codec.</summary>
public class FastServeClientTests
{
    private static readonly TimeSpan Limit = TimeSpan.FromSeconds(10);

    private static async Task<(FastServeClient Client, PeerConnection Peer)> ConnectAsync(ScriptedPeer peer, FastServeClientOptions? options = null, HelloOk? hello = null)
    {
        var accept = peer.AcceptHandshakeAsync(hello);
        var client = await FastServeClient.ConnectAsync("127.0.0.1", peer.Port, options);
        return (client, await accept);
    }

    private static CompletionRequest Text(string prompt, int maxTokens = 8) =>
        new() { Prompt = prompt, Params = RequestParams.Default with { MaxTokens = maxTokens } };

    /// <summary>A client connected to a scripted peer (handshake done); disposing it disposes the peer's connection,
    /// the client, then the peer.</summary>
    private sealed class Scripted : IAsyncDisposable
    {
        public required ScriptedPeer Peer { get; init; }
        public required FastServeClient Client { get; init; }
        public required PeerConnection Conn { get; init; }

        public static async Task<Scripted> OpenAsync(FastServeClientOptions? options = null, HelloOk? hello = null)
        {
            var peer = new ScriptedPeer();
            try
            {
                var (client, conn) = await ConnectAsync(peer, options, hello);
                return new Scripted { Peer = peer, Client = client, Conn = conn };
            }
            catch
            {
                peer.Dispose();
                throw;
            }
        }

        public async ValueTask DisposeAsync()
        {
            Conn.Dispose();
            await Client.DisposeAsync();
            Peer.Dispose();
        }
    }

    // One PING answered by the peer: proves everything the client queued before it has been read.
    private static async Task PingRoundTripAsync(FastServeClient client, PeerConnection conn)
    {
        var ping = client.PingAsync();
        var (_, payload) = await conn.ReadFrameAsync();
        await conn.SendAsync(w => FrameWriter.Ping(w, payload, pong: true));
        await ping.WaitAsync(Limit);
    }

    [Test]
    public async Task HandshakeSendsHelloAndExposesServerLimits()
    {
        using var peer = new ScriptedPeer();
        var accept = peer.AcceptAsync();
        var connect = FastServeClient.ConnectAsync("127.0.0.1", peer.Port, new FastServeClientOptions { ClientName = "unit-test" });
        using var conn = await accept;
        var (h, payload) = await conn.ReadFrameAsync();
        Assert.That(h.Type, Is.EqualTo(FrameType.Hello));
        Assert.That(h.Id, Is.Zero);
        Assert.That(HelloView.TryParse(payload, out var hello), Is.True);
        Assert.That(hello.Magic, Is.EqualTo(Wire.Magic));
        Assert.That((hello.Major, hello.Minor), Is.EqualTo((Wire.Major, Wire.Minor)));
        Assert.That(Encoding.UTF8.GetString(hello.ClientName), Is.EqualTo("unit-test"));
        var ok = ScriptedPeer.DefaultHello with { MaxInFlight = 77, ServerName = "srv" };
        await conn.SendAsync(w => FrameWriter.HelloOk(w, ok));
        await using var client = await connect.WaitAsync(Limit);
        Assert.That(client.Server, Is.EqualTo(ok));
        Assert.That(client.IsConnected, Is.True);
    }

    [Test]
    public async Task ErrorOnHelloThrowsWithTheServerStatus()
    {
        using var peer = new ScriptedPeer();
        var accept = peer.AcceptAsync();
        var connect = FastServeClient.ConnectAsync("127.0.0.1", peer.Port);
        using var conn = await accept;
        await conn.ReadFrameAsync();
        await conn.SendAsync(w => FrameWriter.Error(w, WireStatus.UnsupportedVersion, fatal: true, 0, "speak 2.0"));
        conn.Close();
        var e = await Assert.ThrowsAsync<FastServeClientException>(async () => await connect.WaitAsync(Limit));
        Assert.That(e!.Code, Is.EqualTo("client.hello_rejected"));
        Assert.That(e.Status, Is.EqualTo(WireStatus.UnsupportedVersion));
        Assert.That(e.Message, Does.Contain("speak 2.0"));
    }

    [Test]
    public async Task ConnectToAClosedPortFailsClearly()
    {
        int port;
        using (var peer = new ScriptedPeer()) port = peer.Port;
        var e = await Assert.ThrowsAsync<FastServeClientException>(async () => await FastServeClient.ConnectAsync("127.0.0.1", port));
        Assert.That(e!.Code, Is.EqualTo("client.connect_failed"));
    }

    [Test]
    public async Task ConnectTimesOutWithoutHelloOk()
    {
        using var peer = new ScriptedPeer();
        var accept = peer.AcceptAsync();
        var e = await Assert.ThrowsAsync<FastServeClientException>(async () =>
            await FastServeClient.ConnectAsync("127.0.0.1", peer.Port, new FastServeClientOptions { ConnectTimeout = TimeSpan.FromMilliseconds(200) }));
        Assert.That(e!.Code, Is.EqualTo("client.connect_timeout"));
        (await accept).Dispose();
    }

    // 100 requests at once; the peer answers with DELTA and FINAL frames of all of them interleaved in a random order.
    [TestCase(false)]
    [TestCase(true)]
    public async Task MultiplexesConcurrentRequestsWithInterleavedFrames(bool byteByByte)
    {
        await using var scripted = await Scripted.OpenAsync();
        var (client, conn) = (scripted.Client, scripted.Conn);
        conn.ByteByByte = byteByByte;
        const int N = 100;
        var calls = new CompletionCall[N];
        for (int i = 0; i < N; i++) calls[i] = client.Start(Text($"prompt {i} é€", 10 + i % 5));
        Assert.That(calls.Select(c => c.Id), Is.EqualTo(Enumerable.Range(1, N).Select(i => (ulong)i)), "ids are assigned in increasing order from 1");

        // Read every REQUEST and plan each answer: the prompt reversed, in pieces of a few tokens.
        var plans = new Dictionary<ulong, (string Text, int[] Ids)>();
        for (int i = 0; i < N; i++)
        {
            var (h, payload) = await conn.ReadFrameAsync();
            Assert.That(h.Type, Is.EqualTo(FrameType.Request));
            Assert.That(RequestView.TryParse(payload, out var r), Is.EqualTo(RequestParseError.None));
            string prompt = Encoding.UTF8.GetString(r.Prompt);
            int index = int.Parse(prompt.Split(' ')[1]);
            Assert.That(r.MaxTokens, Is.EqualTo((uint)(10 + index % 5)));
            Assert.That(r.TopP, Is.EqualTo(1f));
            string answer = new string(prompt.Reverse().ToArray()) + $" #{h.Id}";
            plans[h.Id] = (answer, Enumerable.Range(0, answer.Length).Select(k => (int)h.Id * 1000 + k).ToArray());
        }
        var rng = new Random(5);
        var frames = new List<(ulong Id, int Seq, byte[] Bytes)>();
        foreach (var (id, (text, ids)) in plans)
        {
            // Split on character boundaries (never inside a UTF-8 sequence, as the server guarantees).
            int pos = 0, seq = 0;
            while (pos < text.Length)
            {
                int n = Math.Min(text.Length - pos, rng.Next(1, 5));
                var w = new System.Buffers.ArrayBufferWriter<byte>();
                FrameWriter.Delta(w, id, ids.AsSpan(pos, n), Encoding.UTF8.GetBytes(text.Substring(pos, n)));
                frames.Add((id, seq++, w.WrittenSpan.ToArray()));
                pos += n;
            }
            var fw = new System.Buffers.ArrayBufferWriter<byte>();
            FrameWriter.Final(fw, id, PeerConnection.Ok(7, ids.Length), "", "");
            frames.Add((id, seq, fw.WrittenSpan.ToArray()));
        }
        // Random interleaving that keeps each request's own frames in order.
        var queues = frames.GroupBy(f => f.Id).Select(g => new Queue<byte[]>(g.OrderBy(f => f.Seq).Select(f => f.Bytes))).ToList();
        var wire = new List<byte>();
        while (queues.Count > 0)
        {
            int k = rng.Next(queues.Count);
            wire.AddRange(queues[k].Dequeue());
            if (queues[k].Count == 0) queues.RemoveAt(k);
        }
        await conn.SendRawAsync(wire.ToArray());

        var results = await Task.WhenAll(calls.Select(c => c.Completion)).WaitAsync(TimeSpan.FromSeconds(30));
        for (int i = 0; i < N; i++)
        {
            var r = results[i];
            var plan = plans[calls[i].Id];
            Assert.That(r.IsOk, Is.True, r.StatusName);
            Assert.That(r.Finish, Is.EqualTo(WireFinish.Length));
            Assert.That(r.Text, Is.EqualTo(plan.Text));
            Assert.That(r.Ids, Is.EqualTo(plan.Ids));
            Assert.That(r.CompletionTokens, Is.EqualTo(plan.Ids.Length));
            Assert.That(r.ReceivedTokens, Is.EqualTo(plan.Ids.Length));
            Assert.That(r.ServerTimings.FirstTokenUs, Is.EqualTo(500u));
            Assert.That(r.TimeToFirstToken, Is.Not.Null);
            Assert.That(r.EndToEnd, Is.GreaterThanOrEqualTo(r.TimeToFirstToken!.Value));
            Assert.That(r.TimePerOutputToken, Is.Not.Null);
            // The streamed deltas concatenate to the same text and ids.
            var streamed = new StringBuilder();
            var streamedIds = new List<int>();
            await foreach (var d in calls[i].Deltas.ReadAllAsync())
            {
                streamed.Append(d.Text);
                streamedIds.AddRange(d.Ids);
            }
            Assert.That(streamed.ToString(), Is.EqualTo(plan.Text));
            Assert.That(streamedIds, Is.EqualTo(plan.Ids));
        }
        Assert.That(client.InFlight, Is.Zero);
        Assert.That(client.IsConnected, Is.True);
    }

    [Test]
    public async Task CancelSendsCancelAndTheFinalCompletesTheCall()
    {
        await using var scripted = await Scripted.OpenAsync();
        var (client, conn) = (scripted.Client, scripted.Conn);
        var call = client.Start(Text("long one", 1000));
        var (h, _) = await conn.ReadFrameAsync();
        Assert.That(h.Type, Is.EqualTo(FrameType.Request));
        call.Cancel();
        call.Cancel(); // once only
        var (c, payload) = await conn.ReadFrameAsync();
        Assert.That(c.Type, Is.EqualTo(FrameType.Cancel));
        Assert.That(c.Id, Is.EqualTo(call.Id));
        Assert.That(payload, Is.Empty);
        Assert.That(call.Completion.IsCompleted, Is.False, "a cancelled call waits for the server's FINAL");
        await conn.SendAsync(w => FrameWriter.Final(w, call.Id, new FinalInfo { Status = WireStatus.Cancelled }, "", "cancelled by the client"));
        var r = await call.Completion.WaitAsync(Limit);
        Assert.That(r.Status, Is.EqualTo(WireStatus.Cancelled));
        Assert.That(r.StatusName, Is.EqualTo("cancelled"));

        // A second PING proves no second CANCEL was queued in between.
        var ping = client.PingAsync();
        var (p, pp) = await conn.ReadFrameAsync();
        Assert.That(p.Type, Is.EqualTo(FrameType.Ping));
        await conn.SendAsync(w => FrameWriter.Ping(w, pp, pong: true));
        await ping.WaitAsync(Limit);
    }

    [Test]
    public async Task CompleteAsyncCancellationSendsCancelAndThrows()
    {
        await using var scripted = await Scripted.OpenAsync();
        var (client, conn) = (scripted.Client, scripted.Conn);
        using var cts = new CancellationTokenSource();
        var task = client.CompleteAsync(Text("x"), cts.Token);
        var (h, _) = await conn.ReadFrameAsync();
        cts.Cancel();
        Assert.That(async () => await task, Throws.InstanceOf<OperationCanceledException>());
        var (c, _) = await conn.ReadFrameAsync();
        Assert.That((c.Type, c.Id), Is.EqualTo((FrameType.Cancel, h.Id)));
        // The late FINAL is absorbed, not treated as an unknown id.
        await conn.SendAsync(w => FrameWriter.Final(w, h.Id, new FinalInfo { Status = WireStatus.Cancelled }, "", ""));
        await PingRoundTripAsync(client, conn);
        Assert.That(client.IsConnected, Is.True);
        Assert.That(client.InFlight, Is.Zero);
    }

    [Test]
    public async Task ConnectionDropFailsEveryCallInFlightOnceAsRetriableConnectionLost()
    {
        using var peer = new ScriptedPeer();
        var (client, conn) = await ConnectAsync(peer);
        await using var clientScope = client;
        const int N = 50;
        var calls = Enumerable.Range(0, N).Select(i => client.Start(Text($"p{i}"))).ToArray();
        for (int i = 0; i < N; i++) await conn.ReadFrameAsync();
        // Finish the first ten, stream a little into the next ten, then drop the connection.
        for (int i = 0; i < 10; i++)
            await conn.SendAsync(w => FrameWriter.Final(w, calls[i].Id, PeerConnection.Ok(3, 0), "", ""));
        for (int i = 10; i < 20; i++)
            await conn.SendAsync(w => FrameWriter.Delta(w, calls[i].Id, [42], "hi"u8));
        int completions = 0;
        foreach (var c in calls) _ = c.Completion.ContinueWith(_ => Interlocked.Increment(ref completions), TaskScheduler.Default);
        await Task.WhenAll(calls.Take(10).Select(c => c.Completion)).WaitAsync(Limit);
        conn.Close();

        var results = await Task.WhenAll(calls.Select(c => c.Completion)).WaitAsync(Limit);
        Assert.That(results.Take(10).All(r => r.IsOk), Is.True);
        foreach (var r in results.Skip(10))
        {
            Assert.That(r.ClientFailure, Is.EqualTo(ClientFailure.ConnectionLost));
            Assert.That(r.StatusName, Is.EqualTo("connection_lost"));
            Assert.That(r.Status, Is.EqualTo(WireStatus.Unavailable));
            Assert.That(r.Retriable, Is.True);
            Assert.That(r.Detail, Is.EqualTo("client.connection_closed"));
        }
        Assert.That(results.Skip(10).Take(10).All(r => r.Text == "hi" && r.ReceivedTokens == 1), Is.True, "partial output is kept");
        await Task.Delay(50);
        Assert.That(completions, Is.EqualTo(N));
        Assert.That(client.IsConnected, Is.False);
        Assert.That(client.CloseDetail, Is.EqualTo("client.connection_closed"));

        // Afterwards: a new call completes at once the same way, control calls throw.
        var late = await client.Start(Text("late")).Completion.WaitAsync(Limit);
        Assert.That(late.StatusName, Is.EqualTo("connection_lost"));
        var e = await Assert.ThrowsAsync<FastServeClientException>(async () => await client.PingAsync());
        Assert.That(e!.Code, Is.EqualTo("client.connection_lost"));
    }

    [Test]
    public async Task FrameForUnknownIdIsAProtocolErrorThatClosesTheConnection()
    {
        await using var scripted = await Scripted.OpenAsync();
        var (client, conn) = (scripted.Client, scripted.Conn);
        var call = client.Start(Text("a"));
        await conn.ReadFrameAsync();
        await conn.SendAsync(w => FrameWriter.Delta(w, call.Id + 1000, [1], "x"u8));
        var r = await call.Completion.WaitAsync(Limit);
        Assert.That(r.StatusName, Is.EqualTo("connection_lost"));
        Assert.That(r.Detail, Is.EqualTo("client.protocol_error"));
        Assert.That(r.Message, Does.Contain("unknown request id"));
        Assert.That(client.IsConnected, Is.False);
    }

    [Test]
    public async Task MalformedFinalIsAProtocolError()
    {
        await using var scripted = await Scripted.OpenAsync();
        var (client, conn) = (scripted.Client, scripted.Conn);
        var call = client.Start(Text("a"));
        await conn.ReadFrameAsync();
        await conn.SendAsync(w =>
        {
            var span = w.GetSpan(Wire.HeaderSize + 10);
            span[..(Wire.HeaderSize + 10)].Clear();
            BinaryPrimitives.WriteUInt32LittleEndian(span, 10);
            span[4] = (byte)FrameType.Final;
            BinaryPrimitives.WriteUInt64LittleEndian(span[8..], call.Id);
            w.Advance(Wire.HeaderSize + 10);
        });
        var r = await call.Completion.WaitAsync(Limit);
        Assert.That(r.Detail, Is.EqualTo("client.protocol_error"));
        Assert.That(r.Message, Does.Contain("malformed FINAL"));
    }

    [Test]
    public async Task FatalServerErrorClosesWithItsStatus()
    {
        await using var scripted = await Scripted.OpenAsync();
        var (client, conn) = (scripted.Client, scripted.Conn);
        var call = client.Start(Text("a"));
        await conn.ReadFrameAsync();
        await conn.SendAsync(w => FrameWriter.Error(w, WireStatus.BadRequest, fatal: true, 0, "frame timeout"));
        var r = await call.Completion.WaitAsync(Limit);
        Assert.That(r.StatusName, Is.EqualTo("connection_lost"));
        Assert.That(r.Detail, Is.EqualTo("server.bad_request"));
        Assert.That(r.Message, Does.Contain("frame timeout"));
        Assert.That(client.LastServerError?.Status, Is.EqualTo(WireStatus.BadRequest));
    }

    [Test]
    public async Task KeepAlivePingsAQuietConnectionAndAbsorbsThePong()
    {
        await using var scripted = await Scripted.OpenAsync(new FastServeClientOptions { KeepAliveInterval = TimeSpan.FromMilliseconds(50) });
        var (client, conn) = (scripted.Client, scripted.Conn);
        var (h, payload) = await conn.ReadFrameAsync().WaitAsync(TimeSpan.FromSeconds(2));
        Assert.That(h.Type, Is.EqualTo(FrameType.Ping));
        await conn.SendAsync(w => FrameWriter.Ping(w, payload, pong: true));
        await Task.Delay(20);
        Assert.That(client.IsConnected, Is.True, "an unsolicited PONG is not a protocol error");
    }

    [Test]
    public async Task PingMeasuresTheRoundTrip()
    {
        await using var scripted = await Scripted.OpenAsync();
        var (client, conn) = (scripted.Client, scripted.Conn);
        var ping = client.PingAsync();
        var (h, payload) = await conn.ReadFrameAsync();
        Assert.That(h.Type, Is.EqualTo(FrameType.Ping));
        Assert.That(payload.Length, Is.LessThanOrEqualTo(Wire.MaxPingBytes));
        await Task.Delay(20);
        await conn.SendAsync(w => FrameWriter.Ping(w, payload, pong: true));
        var rtt = await ping.WaitAsync(Limit);
        Assert.That(rtt, Is.GreaterThanOrEqualTo(TimeSpan.FromMilliseconds(15)).And.LessThan(Limit));
    }

    [Test]
    public async Task LoadQueryAndSubscription()
    {
        await using var scripted = await Scripted.OpenAsync();
        var (client, conn) = (scripted.Client, scripted.Conn);
        var report = new LoadReport(ReplicaState.Ready, 4, 10, 3, 15, 0.75f, 12, 64, 5);
        var query = client.GetLoadAsync();
        var (h, payload) = await conn.ReadFrameAsync();
        Assert.That(h.Type, Is.EqualTo(FrameType.LoadQuery));
        Assert.That(BinaryPrimitives.ReadUInt32LittleEndian(payload), Is.Zero);
        Assert.That(h.Flags, Is.Zero);
        await conn.SendAsync(w => FrameWriter.LoadReport(w, report));
        Assert.That(await query.WaitAsync(Limit), Is.EqualTo(report));

        var seen = new List<LoadReport>();
        var three = new TaskCompletionSource();
        var sub = client.SubscribeLoad(50, r => { lock (seen) { seen.Add(r); if (seen.Count == 3) three.SetResult(); } });
        (h, payload) = await conn.ReadFrameAsync();
        Assert.That((h.Type, h.Flags, BinaryPrimitives.ReadUInt32LittleEndian(payload)), Is.EqualTo((FrameType.LoadQuery, (byte)0, 50u)));
        for (int i = 0; i < 3; i++) await conn.SendAsync(w => FrameWriter.LoadReport(w, report with { Running = i }));
        await three.Task.WaitAsync(Limit);
        Assert.That(seen.Select(r => r.Running), Is.EqualTo(new[] { 0, 1, 2 }));
        sub.Dispose();
        (h, _) = await conn.ReadFrameAsync();
        Assert.That((h.Type, h.Flags), Is.EqualTo((FrameType.LoadQuery, (byte)1)), "the last subscriber leaving unsubscribes");
    }

    [Test]
    public async Task DrainReturnsGraceOrThrowsUnauthorized()
    {
        await using var scripted = await Scripted.OpenAsync();
        var (client, conn) = (scripted.Client, scripted.Conn);
        var bad = client.DrainAsync("wrong");
        var (h, payload) = await conn.ReadFrameAsync();
        Assert.That(h.Type, Is.EqualTo(FrameType.Drain));
        var pr = new PayloadReader(payload);
        Assert.That(pr.TryStr16(out var token), Is.True);
        Assert.That(Encoding.UTF8.GetString(token), Is.EqualTo("wrong"));
        await conn.SendAsync(w => FrameWriter.Error(w, WireStatus.Unauthorized, fatal: false, 0, "bad token"));
        var e = await Assert.ThrowsAsync<FastServeClientException>(async () => await bad.WaitAsync(Limit));
        Assert.That(e!.Code, Is.EqualTo("client.unauthorized"));
        Assert.That(e.Status, Is.EqualTo(WireStatus.Unauthorized));

        var good = client.DrainAsync("secret");
        await conn.ReadFrameAsync();
        await conn.SendAsync(w => FrameWriter.DrainOk(w, 2500));
        Assert.That(await good.WaitAsync(Limit), Is.EqualTo(TimeSpan.FromMilliseconds(2500)));
        Assert.That(client.IsConnected, Is.True);
    }

    [TestCaseSource(typeof(FastServe.Tests.Protocol.RequestRulesTests), nameof(FastServe.Tests.Protocol.RequestRulesTests.BrokenParams))]
    public async Task BrokenRequestRulesAreRefusedBeforeSendingWithTheServersCode(RequestParams p, string code)
    {
        await using var scripted = await Scripted.OpenAsync();
        var (peer, client, conn) = (scripted.Peer, scripted.Client, scripted.Conn);
        var refused = await client.Start(new CompletionRequest { Prompt = "a", Params = p }).Completion;
        Assert.That((refused.StatusName, refused.Detail, refused.ClientFailure), Is.EqualTo(("bad_request", code, ClientFailure.Rejected)));
        // Nothing reached the wire: the next frame the peer sees is the valid request that follows.
        _ = client.Start(Text("b"));
        var (h, _) = await conn.ReadFrameAsync();
        Assert.That((h.Type, h.Id), Is.EqualTo((FrameType.Request, 2UL)));
    }

    [Test]
    public async Task RequestsTheServerWouldRefuseAreRefusedBeforeSending()
    {
        await using var scripted = await Scripted.OpenAsync(hello: ScriptedPeer.DefaultHello with { MaxFrame = 4096 });
        var (peer, client, conn) = (scripted.Peer, scripted.Client, scripted.Conn);
        var tooMany = await client.Start(Text("a") with { Stops = Enumerable.Range(0, 9).Select(i => $"s{i}").ToArray() }).Completion;
        Assert.That((tooMany.StatusName, tooMany.Detail, tooMany.ClientFailure), Is.EqualTo(("bad_request", "client.too_many_stops", ClientFailure.Rejected)));
        var badStop = await client.Start(Text("a") with { Stops = [""] }).Completion;
        Assert.That(badStop.Detail, Is.EqualTo("client.bad_stop"));
        var big = await client.Start(Text(new string('x', 5000))).Completion;
        Assert.That((big.StatusName, big.Detail), Is.EqualTo(("too_large", "client.frame_too_large")));
        var both = await client.Start(new CompletionRequest { Prompt = "a", PromptIds = [1] }).Completion;
        Assert.That(both.Detail, Is.EqualTo("client.prompt_ambiguous"));

        // None of them reached the wire: the next frame the peer sees is this request, with id 5.
        var ok = client.Start(new CompletionRequest { PromptIds = [1, 2, 3], Stops = ["\n"], Params = RequestParams.Default with { Seed = 9, IgnoreEos = true } });
        var (h, payload) = await conn.ReadFrameAsync();
        Assert.That((h.Type, h.Id), Is.EqualTo((FrameType.Request, 5ul)));
        Assert.That(RequestView.TryParse(payload, out var r), Is.EqualTo(RequestParseError.None));
        Assert.That(r.PromptIsIds, Is.True);
        Assert.That(new[] { r.PromptIdCount, r.PromptId(0), r.PromptId(1), r.PromptId(2) }, Is.EqualTo(new[] { 3, 1, 2, 3 }));
        Assert.That(r.Flags & (RequestFlags.HasSeed | RequestFlags.IgnoreEos), Is.EqualTo(RequestFlags.HasSeed | RequestFlags.IgnoreEos));
        Assert.That(Encoding.UTF8.GetString(r.GetStop(0)), Is.EqualTo("\n"));
        await conn.SendAsync(w => FrameWriter.Final(w, ok.Id, PeerConnection.Ok(3, 0), "", ""));
        Assert.That((await ok.Completion.WaitAsync(Limit)).IsOk, Is.True);
    }

    [Test]
    public async Task SendQueueIsBoundedWhenThePeerStopsReading()
    {
        await using var scripted = await Scripted.OpenAsync(new FastServeClientOptions { MaxPendingSendBytes = 256 << 10 });
        var (client, conn) = (scripted.Client, scripted.Conn);
        string prompt = new string('z', 60_000);
        int full = 0;
        var calls = new List<CompletionCall>();
        for (int i = 0; i < 1000 && full == 0; i++)
        {
            var c = client.Start(Text(prompt));
            calls.Add(c);
            if (c.Completion.IsCompleted && c.Completion.Result.ClientFailure == ClientFailure.SendBufferFull) full++;
            if (i % 20 == 19) await Task.Delay(5); // let the send loop fill the socket buffers
        }
        Assert.That(full, Is.EqualTo(1), "the queue filled before 60 MB were accepted");
        var r = calls[^1].Completion.Result;
        Assert.That((r.StatusName, r.Retriable), Is.EqualTo(("send_buffer_full", true)));
        Assert.That(client.IsConnected, Is.True);
    }

    [Test]
    public async Task DisposeCompletesCallsInFlight()
    {
        using var peer = new ScriptedPeer();
        var (client, conn) = await ConnectAsync(peer);
        using var connScope = conn;
        var call = client.Start(Text("a"));
        await conn.ReadFrameAsync();
        await client.DisposeAsync();
        var r = await call.Completion.WaitAsync(Limit);
        Assert.That((r.StatusName, r.Detail), Is.EqualTo(("connection_lost", "client.disposed")));
        Assert.That(client.IsConnected, Is.False);
    }
}
