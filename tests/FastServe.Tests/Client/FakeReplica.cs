using System.Buffers;
using System.Net;
using System.Net.Sockets;
using FastServe.Protocol;

namespace FastServe.Tests.Client;

/// <summary>
/// A stand-in replica for load-generator tests: accepts any number of connections, answers HELLO, and answers every
/// REQUEST after a fixed delay with one DELTA (all tokens) and a FINAL. Optionally serves one request at a time
/// (a server of fixed capacity), or answers some requests <c>overloaded</c> (at once, with a 50 ms retry-after hint).
/// </summary>
internal sealed class FakeReplica : IDisposable
{
    private readonly TcpListener _listener = new(IPAddress.Loopback, 0);
    private readonly CancellationTokenSource _stop = new();
    private readonly List<Socket> _sockets = new();
    private readonly SemaphoreSlim _serial = new(1, 1);
    private int _requests, _inFlight, _maxInFlight, _loadQueries;

    public FakeReplica()
    {
        _listener.Start();
        _ = AcceptLoopAsync();
    }

    public int Port => ((IPEndPoint)_listener.LocalEndpoint).Port;
    public TimeSpan FirstTokenDelay { get; init; } = TimeSpan.FromMilliseconds(10);
    public TimeSpan FinalDelay { get; init; } = TimeSpan.FromMilliseconds(10);
    /// <summary>Serve requests one at a time (others wait): a server with a fixed capacity.</summary>
    public bool Serial { get; init; }
    /// <summary>Answer every n-th request (1-based count over all connections) with overloaded; 0 = never. May change
    /// while serving.</summary>
    public int OverloadEvery { get => Volatile.Read(ref _overloadEvery); set => Volatile.Write(ref _overloadEvery, value); }
    private int _overloadEvery;
    /// <summary>Serve only every n-th request (1-based count over all connections) and answer the others overloaded;
    /// 0 = serve all (then <see cref="OverloadEvery"/> applies).</summary>
    public int AcceptEvery { get; init; }

    public int Requests => Volatile.Read(ref _requests);
    public int MaxInFlight => Volatile.Read(ref _maxInFlight);
    public int LoadQueries => Volatile.Read(ref _loadQueries);
    public int Connections { get { lock (_sockets) return _sockets.Count; } }

    /// <summary>Closes every connection accepted so far (the listener keeps accepting).</summary>
    public void DropConnections()
    {
        lock (_sockets)
        {
            foreach (var s in _sockets) s.Dispose();
            _sockets.Clear();
        }
    }

    private async Task AcceptLoopAsync()
    {
        while (!_stop.IsCancellationRequested)
        {
            Socket s;
            try { s = await _listener.AcceptSocketAsync(_stop.Token); }
            catch (Exception) { return; }
            s.NoDelay = true;
            lock (_sockets) _sockets.Add(s);
            _ = ServeAsync(s);
        }
    }

    private async Task ServeAsync(Socket s)
    {
        var writeLock = new SemaphoreSlim(1, 1);
        var buf = new byte[1 << 16];
        int start = 0, end = 0;
        try
        {
            while (true)
            {
                while (true)
                {
                    var r = FrameReader.TryRead(buf.AsSpan(start, end - start), Wire.DefaultMaxFrame, out var h, out var payload, out int consumed);
                    if (r != ReadResult.Frame) break;
                    if (h.Type == FrameType.Hello)
                        await SendAsync(s, writeLock, w => FrameWriter.HelloOk(w, ScriptedPeer.DefaultHello with { ServerName = "fake" }));
                    else if (h.Type == FrameType.LoadQuery)
                    {
                        int busy = Volatile.Read(ref _inFlight);
                        Interlocked.Increment(ref _loadQueries);
                        await SendAsync(s, writeLock, w => FrameWriter.LoadReport(w, new LoadReport(ReplicaState.Ready, 1, busy, 0, busy, 1f, 0, 64, 0)));
                    }
                    else if (h.Type == FrameType.Request)
                    {
                        RequestView.TryParse(payload, out var req);
                        _ = AnswerAsync(s, writeLock, h.Id, (int)req.MaxTokens, Interlocked.Increment(ref _requests));
                    }
                    start += consumed;
                }
                if (start == end) start = end = 0;
                if (end == buf.Length)
                {
                    buf.AsSpan(start, end - start).CopyTo(buf);
                    end -= start;
                    start = 0;
                }
                int n = await s.ReceiveAsync(buf.AsMemory(end), SocketFlags.None, _stop.Token);
                if (n == 0) return;
                end += n;
            }
        }
        catch (Exception) { }
        finally { s.Dispose(); }
    }

    private async Task AnswerAsync(Socket s, SemaphoreSlim writeLock, ulong id, int tokens, int n)
    {
        try
        {
            int every = OverloadEvery;
            if ((every > 0 && n % every == 0) || (AcceptEvery > 0 && n % AcceptEvery != 0))
            {
                var f = new FinalInfo { Status = WireStatus.Overloaded, Retriable = true, RetryAfterMs = 50 };
                await SendAsync(s, writeLock, w => FrameWriter.Final(w, id, f, "engine.queue_full", "queue full"));
                return;
            }
            if (Serial) await _serial.WaitAsync(_stop.Token);
            int now = Interlocked.Increment(ref _inFlight);
            int max;
            while ((max = Volatile.Read(ref _maxInFlight)) < now && Interlocked.CompareExchange(ref _maxInFlight, now, max) != max) { }
            bool counted = true;
            try
            {
                await Task.Delay(FirstTokenDelay, _stop.Token);
                var ids = Enumerable.Range(100, tokens).ToArray();
                await SendAsync(s, writeLock, w => FrameWriter.Delta(w, id, ids, "text"u8));
                await Task.Delay(FinalDelay, _stop.Token);
                var fin = PeerConnection.Ok(50, tokens);
                // Finished before the client can see the FINAL and send the next request.
                Interlocked.Decrement(ref _inFlight);
                counted = false;
                if (Serial) _serial.Release();
                await SendAsync(s, writeLock, w => FrameWriter.Final(w, id, fin, "", ""));
            }
            finally
            {
                if (counted)
                {
                    Interlocked.Decrement(ref _inFlight);
                    if (Serial) _serial.Release();
                }
            }
        }
        catch (Exception) { }
    }

    private static async Task SendAsync(Socket s, SemaphoreSlim writeLock, Action<ArrayBufferWriter<byte>> write)
    {
        var w = new ArrayBufferWriter<byte>(256);
        write(w);
        await writeLock.WaitAsync();
        try
        {
            var data = w.WrittenMemory;
            while (!data.IsEmpty) data = data[await s.SendAsync(data, SocketFlags.None)..];
        }
        finally { writeLock.Release(); }
    }

    public void Dispose()
    {
        _stop.Cancel();
        _listener.Stop();
        DropConnections();
    }
}
