using System.Buffers;
using System.Net;
using System.Net.Sockets;
using FastServe.Protocol;

namespace FastServe.Tests.Client;

/// <summary>A listening socket on 127.0.0.1 that tests drive by hand, speaking the protocol with the codec.</summary>
internal sealed class ScriptedPeer : IDisposable
{
    private readonly TcpListener _listener = new(IPAddress.Loopback, 0);

    public ScriptedPeer() => _listener.Start();

    public int Port => ((IPEndPoint)_listener.LocalEndpoint).Port;

    public static readonly HelloOk DefaultHello = new(Wire.Major, Wire.Minor, Wire.DefaultMaxFrame, 4096, 1024, 60_000, 8192, "scripted-peer");

    public async Task<PeerConnection> AcceptAsync(CancellationToken ct = default)
    {
        var s = await _listener.AcceptSocketAsync(ct);
        s.NoDelay = true;
        return new PeerConnection(s);
    }

    /// <summary>Accepts, reads HELLO and answers HELLO_OK.</summary>
    public async Task<PeerConnection> AcceptHandshakeAsync(HelloOk? hello = null)
    {
        var c = await AcceptAsync();
        var (h, _) = await c.ReadFrameAsync();
        if (h.Type != FrameType.Hello) throw new InvalidOperationException($"expected HELLO, got {h.Type}");
        await c.SendAsync(w => FrameWriter.HelloOk(w, hello ?? DefaultHello));
        return c;
    }

    public void Dispose() => _listener.Stop();
}

internal sealed class PeerConnection : IDisposable
{
    private readonly Socket _s;
    private byte[] _buf = new byte[1 << 16];
    private int _start, _end;

    public PeerConnection(Socket s) => _s = s;

    /// <summary>Write every frame one byte per socket call (so the client sees frames split at every byte).</summary>
    public bool ByteByByte { get; set; }

    public async Task<(FrameHeader Header, byte[] Payload)> ReadFrameAsync(CancellationToken ct = default)
    {
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(ct);
        cts.CancelAfter(TimeSpan.FromSeconds(10));
        while (true)
        {
            var r = FrameReader.TryRead(_buf.AsSpan(_start, _end - _start), 64 << 20, out var h, out var payload, out int consumed);
            if (r == ReadResult.Frame)
            {
                var copy = payload.ToArray();
                _start += consumed;
                return (h, copy);
            }
            if (r == ReadResult.TooLarge) throw new InvalidOperationException("frame too large");
            if (_start > 0)
            {
                _buf.AsSpan(_start, _end - _start).CopyTo(_buf);
                _end -= _start;
                _start = 0;
            }
            if (_end == _buf.Length) Array.Resize(ref _buf, _buf.Length * 2);
            int n = await _s.ReceiveAsync(_buf.AsMemory(_end), SocketFlags.None, cts.Token);
            if (n == 0) throw new EndOfStreamException("the client closed the connection");
            _end += n;
        }
    }

    public async Task SendAsync(Action<ArrayBufferWriter<byte>> write)
    {
        var w = new ArrayBufferWriter<byte>();
        write(w);
        await SendRawAsync(w.WrittenMemory);
    }

    public async Task SendRawAsync(ReadOnlyMemory<byte> data)
    {
        if (!ByteByByte)
        {
            while (!data.IsEmpty) data = data[await _s.SendAsync(data, SocketFlags.None)..];
            return;
        }
        for (int i = 0; i < data.Length; i++)
        {
            await _s.SendAsync(data.Slice(i, 1), SocketFlags.None);
            if (i % 7 == 0) await Task.Yield();
        }
    }

    public static FinalInfo Ok(int prompt, int completion, WireFinish finish = WireFinish.Length)
    {
        var f = new FinalInfo { Status = WireStatus.Ok, Finish = finish, PromptTokens = (uint)prompt, CompletionTokens = (uint)completion };
        for (int i = 0; i < 7; i++) f.Timings[i] = (uint)(100 * (i + 1));
        return f;
    }

    public void Close()
    {
        try { _s.Shutdown(SocketShutdown.Both); } catch (SocketException) { }
        _s.Dispose();
    }

    public void Dispose() => _s.Dispose();
}
