using System.Buffers;
using System.Diagnostics;
using System.Net.Sockets;

namespace FastServe.Protocol.Net;

/// <summary>
/// What a <see cref="FrameConnection"/> hands its frames to (Garnet's message consumer). One consumer per receive run;
/// its methods run on the receive loop, one at a time.
/// </summary>
public interface IFrameConsumer
{
    /// <summary>
    /// One whole frame. <paramref name="payload"/> is a slice of the connection's receive buffer, valid only during the
    /// call. Return true to go on; false to stop the run after this frame (the frame counts as used; bytes after it stay
    /// buffered for the next run, see <see cref="FrameRunEnd.Stopped"/>).
    /// </summary>
    bool OnFrame(in FrameHeader header, ReadOnlySpan<byte> payload);

    /// <summary>
    /// The next header announces a payload over the connection's <see cref="FrameConnection.MaxFrame"/>: the stream
    /// cannot be followed any further, and the run ends with <see cref="FrameRunEnd.TooLarge"/> after
    /// <see cref="OnReadDone"/>. <paramref name="header"/>'s length is clamped to <see cref="int.MaxValue"/>.
    /// </summary>
    void OnTooLarge(in FrameHeader header);

    /// <summary>
    /// After the frames of one socket read were handed over, including when one of them stopped the run or the next
    /// was too large: where the consumer sends, in one go, what those frames produced. Return false to stop the run
    /// (<see cref="FrameRunEnd.Stopped"/>).
    /// </summary>
    bool OnReadDone();
}

/// <summary>Why <see cref="FrameConnection.RunAsync"/> or <see cref="FrameConnection.Run"/> returned.</summary>
public enum FrameRunEnd : byte
{
    /// <summary>The consumer returned false. The connection stays open; unread bytes stay buffered for another run.</summary>
    Stopped,
    /// <summary>The peer closed its side (a read returned 0 bytes). A partial frame left in the buffer is dropped.</summary>
    PeerClosed,
    /// <summary>A header announced more than <see cref="FrameConnection.MaxFrame"/> (reported to
    /// <see cref="IFrameConsumer.OnTooLarge"/> first).</summary>
    TooLarge,
    /// <summary>A read failed: the socket was reset, shut down or closed (also by <see cref="FrameConnection.Close"/>);
    /// the result's <see cref="FrameRunResult.Error"/> says how.</summary>
    SocketError,
}

/// <summary>How a receive run ended.</summary>
/// <param name="End">Why it ended.</param>
/// <param name="Error">For <see cref="FrameRunEnd.SocketError"/>: the <see cref="SocketException"/>,
/// <see cref="ObjectDisposedException"/> or (TLS) <see cref="IOException"/> the read threw (null when the connection
/// was closed before the run).</param>
public readonly record struct FrameRunResult(FrameRunEnd End, Exception? Error = null)
{
    /// <summary>The error's message, or a fixed text when there is no error object.</summary>
    public string Message => Error?.Message ?? (End == FrameRunEnd.SocketError ? "the connection is closed" : End.ToString());
}

/// <summary>
/// One stream connection carrying frames with the 16-byte header of docs/protocol.md (client ↔ replica, client ↔ router,
/// router ↔ replica, and worker ↔ engine IPC, which reuses the header): the single receive loop every FastServe end
/// runs, and its send side. Like Garnet's network handler, the connection owns the socket, a pooled receive buffer
/// and the sender; what the frames mean is the <see cref="IFrameConsumer"/>'s business.
/// </summary>
/// <remarks>
/// <para>
/// Receive: one buffer from <see cref="ArrayPool{T}.Shared"/> per connection, parsed in place by
/// <see cref="FrameReader"/>; the consumer sees zero-copy payload slices. A partial frame stays in the buffer; it is
/// moved to the front only when the next read would lack room, and the buffer is swapped for a larger pooled one when
/// the next frame's header asks for more than it holds, so a frame is never read in pieces twice. A well-formed stream
/// allocates nothing and throws nothing on this path. A run can be asynchronous (<see cref="RunAsync"/>, on the thread
/// pool) or blocking on a dedicated thread (<see cref="Run"/>); only one runs at a time, and a run a consumer
/// stopped can be followed by another (a client reads the HELLO_OK with one consumer, then the stream with another).
/// </para>
/// <para>
/// Send: <see cref="Out"/>, frames appended under its lock and flushed (see <see cref="OutBuffer"/>, which also does
/// the backpressure: over the send limit, the connection counts as not reading and <c>onSendFailed</c> runs once).
/// </para>
/// <para>
/// TLS (docs/security.md): given an authenticated stream, the same loop reads through it and <see cref="Out"/> writes
/// through it; the plaintext path is untouched (one null check per read and per send).
/// </para>
/// <para>
/// Threads: a run's loop is the only reader of the buffer. <see cref="LastReceiveTicks"/> and
/// <see cref="PartialSinceTicks"/> are written by it and may be read from any thread (a timer checking timeouts).
/// <see cref="Close"/> may run on any thread, at any time, more than once.
/// </para>
/// </remarks>
public sealed class FrameConnection
{
    private const int MinReadBytes = 4 << 10;

    private readonly Socket _socket;
    private readonly Stream? _stream;    // TLS (an SslStream over the socket), null for plaintext
    // Owned by the running loop; between runs by whoever starts the next one. Returned to the pool once (see Close).
    private byte[] _buf;
    private int _start, _end;
    private long _lastReceive, _partialSince;
    private int _running, _closed, _returned;

    /// <summary>
    /// A connection over a connected <paramref name="socket"/>; nothing is read until a run starts.
    /// </summary>
    /// <param name="socket">The connected stream socket (TCP or Unix-domain); the connection disposes it on <see cref="Close"/>.</param>
    /// <param name="maxFrame">The largest payload a received header may announce (see <see cref="FrameRunEnd.TooLarge"/>).</param>
    /// <param name="sendLimitBytes">Unsent bytes after which <see cref="Out"/> gives up on the peer (<see cref="long.MaxValue"/>: never).</param>
    /// <param name="onSendFailed">Called once when sending fails or passes the limit, with why.</param>
    /// <param name="receiveBytes">The receive buffer's first size (it grows to the largest frame seen).</param>
    /// <param name="sendBytes">Each of the send side's two buffers' first size.</param>
    /// <param name="stream">For TLS: the authenticated <c>SslStream</c> over <paramref name="socket"/>; every read and
    /// write then goes through it (the connection disposes it on <see cref="Close"/>). Null: plaintext, straight on
    /// the socket.</param>
    public FrameConnection(Socket socket, int maxFrame, long sendLimitBytes, Action<string> onSendFailed,
        int receiveBytes = 16 << 10, int sendBytes = 16 << 10, Stream? stream = null)
    {
        ArgumentNullException.ThrowIfNull(socket);
        ArgumentOutOfRangeException.ThrowIfNegative(maxFrame);
        _socket = socket;
        _stream = stream;
        MaxFrame = maxFrame;
        _buf = ArrayPool<byte>.Shared.Rent(Math.Max(receiveBytes, Wire.HeaderSize));
        _lastReceive = Stopwatch.GetTimestamp();
        Out = new OutBuffer(socket, sendLimitBytes, onSendFailed, sendBytes, stream);
    }

    /// <summary>True when the connection runs over TLS.</summary>
    public bool IsTls => _stream is not null;

    /// <summary>
    /// Writes <paramref name="data"/> directly, bypassing <see cref="Out"/>: for a handshake sent before any run or
    /// flush (a client's HELLO). Never while <see cref="Out"/> may be sending.
    /// </summary>
    public async ValueTask SendDirectAsync(ReadOnlyMemory<byte> data, CancellationToken ct)
    {
        if (_stream is not null)
        {
            await _stream.WriteAsync(data, ct).ConfigureAwait(false);
            return;
        }
        while (!data.IsEmpty) data = data[await _socket.SendAsync(data, SocketFlags.None, ct).ConfigureAwait(false)..];
    }

    /// <summary>The socket (for what a run does not do: connecting, a handshake sent directly, socket options).</summary>
    public Socket Socket => _socket;

    /// <summary>The largest payload a received header may announce.</summary>
    public int MaxFrame { get; }

    /// <summary>The send side.</summary>
    public OutBuffer Out { get; }

    /// <summary>Stopwatch ticks when the last read completed (the connection's creation before the first).</summary>
    public long LastReceiveTicks => Volatile.Read(ref _lastReceive);

    /// <summary>
    /// Stopwatch ticks since when a partial frame has been waiting for its rest, 0 when none: set by the first read that
    /// leaves a partial frame, moved on by each read that completes a frame, so a slow sender is measured per frame.
    /// </summary>
    public long PartialSinceTicks => Volatile.Read(ref _partialSince);

    /// <summary>True once <see cref="Close"/> has run.</summary>
    public bool IsClosed => Volatile.Read(ref _closed) != 0;

    /// <summary>
    /// Runs the receive loop on the thread pool until <paramref name="consumer"/> stops it, the peer closes, a frame is
    /// too large or a read fails: first the frames already buffered, then each read's frames, then
    /// <see cref="IFrameConsumer.OnReadDone"/>. Exceptions from the consumer, and cancellation of
    /// <paramref name="ct"/>, propagate (the connection is then left as it was: close it).
    /// </summary>
    public async ValueTask<FrameRunResult> RunAsync(IFrameConsumer consumer, CancellationToken ct = default)
    {
        if (!Enter()) return new FrameRunResult(FrameRunEnd.SocketError);
        try
        {
            if (ConsumeBuffered(consumer, out var end)) return end;
            while (true)
            {
                PrepareRead();
                int n;
                try
                {
                    n = _stream is null
                        ? await _socket.ReceiveAsync(_buf.AsMemory(_end), SocketFlags.None, ct).ConfigureAwait(false)
                        : await _stream.ReadAsync(_buf.AsMemory(_end), ct).ConfigureAwait(false);
                }
                catch (Exception e) when (e is SocketException or ObjectDisposedException or IOException) { return new FrameRunResult(FrameRunEnd.SocketError, e); }
                if (Received(n, consumer, out end)) return end;
            }
        }
        finally
        {
            Leave();
        }
    }

    /// <summary>The same loop as <see cref="RunAsync"/>, blocking the calling thread (for a dedicated reader thread).</summary>
    public FrameRunResult Run(IFrameConsumer consumer)
    {
        if (!Enter()) return new FrameRunResult(FrameRunEnd.SocketError);
        try
        {
            if (ConsumeBuffered(consumer, out var end)) return end;
            while (true)
            {
                PrepareRead();
                int n;
                try { n = _stream is null ? _socket.Receive(_buf, _end, _buf.Length - _end, SocketFlags.None) : _stream.Read(_buf, _end, _buf.Length - _end); }
                catch (Exception e) when (e is SocketException or ObjectDisposedException or IOException) { return new FrameRunResult(FrameRunEnd.SocketError, e); }
                if (Received(n, consumer, out end)) return end;
            }
        }
        finally
        {
            Leave();
        }
    }

    // What a run does first: the frames a stopped run left buffered. True when the run ends (with `end`).
    private bool ConsumeBuffered(IFrameConsumer consumer, out FrameRunResult end)
    {
        end = default;
        return _end > _start && Consume(consumer, Stopwatch.GetTimestamp(), out end);
    }

    // What a run does after each read of n bytes (0: end of stream). True when the run ends (with `end`).
    private bool Received(int n, IFrameConsumer consumer, out FrameRunResult end)
    {
        if (n == 0)
        {
            // Close shuts the socket down before disposing it, so a read it wakes can see end of stream: that is our
            // close, not the peer's.
            end = new FrameRunResult(Volatile.Read(ref _closed) != 0 ? FrameRunEnd.SocketError : FrameRunEnd.PeerClosed);
            return true;
        }
        _end += n;
        return Consume(consumer, Stopwatch.GetTimestamp(), out end);
    }

    // Hands over every whole frame buffered. True when the run ends (with `end`).
    private bool Consume(IFrameConsumer consumer, long now, out FrameRunResult end)
    {
        Volatile.Write(ref _lastReceive, now);
        end = default;
        bool stop = false, tooLarge = false, used = false;
        while (!stop)
        {
            var r = FrameReader.TryRead(_buf.AsSpan(_start, _end - _start), MaxFrame, out var h, out var payload, out int consumed);
            if (r == ReadResult.NeedMore) break;
            if (r == ReadResult.TooLarge)
            {
                consumer.OnTooLarge(h);
                tooLarge = true;
                break;
            }
            _start += consumed;
            used = true;
            stop = !consumer.OnFrame(h, payload);
        }
        if (_start == _end) _start = _end = 0;
        long since = Volatile.Read(ref _partialSince);
        Volatile.Write(ref _partialSince, _start == _end ? 0 : used || since == 0 ? now : since);
        stop |= !consumer.OnReadDone();
        if (tooLarge) end = new FrameRunResult(FrameRunEnd.TooLarge);
        else if (stop) end = new FrameRunResult(FrameRunEnd.Stopped);
        else return false;
        return true;
    }

    // Room after _end for the rest of the next frame (its header says how much) and at least MinReadBytes more.
    private void PrepareRead()
    {
        int have = _end - _start;
        int need = Wire.HeaderSize;
        if (have >= Wire.HeaderSize)
        {
            uint len = System.Buffers.Binary.BinaryPrimitives.ReadUInt32LittleEndian(_buf.AsSpan(_start));
            need = Wire.HeaderSize + (int)Math.Min(len, (uint)MaxFrame);
        }
        int want = Math.Max(need, have + Math.Min(MinReadBytes, _buf.Length / 2));
        if (_buf.Length - _start >= want) return;
        if (_buf.Length >= want)
        {
            _buf.AsSpan(_start, have).CopyTo(_buf);
        }
        else
        {
            var bigger = ArrayPool<byte>.Shared.Rent(Math.Max(want, _buf.Length * 2));
            _buf.AsSpan(_start, have).CopyTo(bigger);
            ArrayPool<byte>.Shared.Return(_buf);
            _buf = bigger;
        }
        _start = 0;
        _end = have;
    }

    private bool Enter()
    {
        if (Interlocked.Exchange(ref _running, 1) == 1) throw new InvalidOperationException("a receive run is already in progress");
        if (Volatile.Read(ref _closed) == 0) return true;
        Volatile.Write(ref _running, 0);
        return false;
    }

    private void Leave()
    {
        Interlocked.Exchange(ref _running, 0);
        if (Volatile.Read(ref _closed) != 0) ReturnBuffer();
    }

    private void ReturnBuffer()
    {
        if (Interlocked.Exchange(ref _returned, 1) == 1) return;
        ArrayPool<byte>.Shared.Return(_buf);
        _buf = [];
        _start = _end = 0;
    }

    /// <summary>
    /// Closes the connection once (later calls do nothing): unsent frames are dropped, the socket is shut down and
    /// disposed (a run in progress then ends with <see cref="FrameRunEnd.SocketError"/>), and the receive buffer goes
    /// back to the pool when no run holds it.
    /// </summary>
    public void Close()
    {
        if (Interlocked.Exchange(ref _closed, 1) == 1) return;
        Out.Close();
        try { _socket.Shutdown(SocketShutdown.Both); } catch (Exception e) when (e is SocketException or ObjectDisposedException) { }
        _socket.Dispose();
        try { _stream?.Dispose(); } catch (Exception e) when (e is IOException or ObjectDisposedException or InvalidOperationException) { }
        if (Volatile.Read(ref _running) == 0) ReturnBuffer();
    }
}
