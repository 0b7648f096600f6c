using System.Buffers;
using System.Net.Sockets;
using System.Runtime.InteropServices;

namespace FastServe.Protocol.Net;

/// <summary>
/// The send side of one connection (<see cref="FrameConnection.Out"/>): frames are appended under <see cref="Lock"/> into a fill buffer, and
/// <see cref="Flush"/> hands everything appended so far to one sender, which writes it with one send while new
/// frames collect in the other buffer (double buffering). So a scheduler step's worth of frames for a connection
/// costs one syscall, and a writer never waits on the network.
///
/// Backpressure: more than <c>limit</c> unsent bytes means the peer stopped reading; the buffer then closes
/// itself and reports it through <c>onFailed</c> (once), and later appends are dropped. A send that fails reports the
/// same way. A caller that would rather refuse new frames than lose the connection (the .NET client) passes
/// <see cref="long.MaxValue"/> and checks <see cref="UnsentUnsafe"/> before appending.
/// </summary>
/// <example>
/// <code>
/// lock (o.Lock) { if (!o.ClosedUnsafe) FrameWriter.Cancel(o.Writer, id); }
/// o.Flush();
/// </code>
/// </example>
public sealed class OutBuffer
{
    private readonly Socket _socket;
    private readonly Stream? _stream;   // TLS: every byte goes through it, one write at a time (the sender owns it)
    private readonly long _limit;
    private readonly Action<string> _onFailed;
    // Guarded by Lock: _fill, _sending, _closed, _leftAt. _send is owned by the sender while _sending is true.
    private ArrayBufferWriter<byte> _fill;
    private ArrayBufferWriter<byte> _send;
    private bool _sending, _closed;
    private int _leftAt = -1;      // where the unsent tail of _send starts after a TrySendNow hit a full socket; -1: none
    private Action? _whenEmpty;

    /// <summary>A send buffer for the connected <paramref name="socket"/> (never closed by it; <see cref="Close"/> only
    /// stops sending).</summary>
    /// <param name="socket">The connected socket the frames go to.</param>
    /// <param name="limit">Unsent bytes past which the peer counts as not reading: the buffer closes and reports it.</param>
    /// <param name="onFailed">Called once, with why, when the limit is passed or a send fails (not on <see cref="Close"/>).
    /// It may run on a sender's thread, never under <see cref="Lock"/>.</param>
    /// <param name="initialBytes">Each of the two buffers' first size (they grow as needed).</param>
    /// <param name="stream">The TLS stream over <paramref name="socket"/>, or null for plaintext. With a stream, every
    /// send is a write to it; since only the one sender (<see cref="Flush"/>'s loop, or <see cref="FlushBlocking"/>)
    /// writes at a time, <c>SslStream</c>'s one-write-at-a-time rule holds. <see cref="TrySendNow"/> then sends
    /// nothing itself (a TLS record cannot be written without blocking) and leaves the batch to the blocking writer.</param>
    public OutBuffer(Socket socket, long limit, Action<string> onFailed, int initialBytes = 16 << 10, Stream? stream = null)
    {
        _socket = socket;
        _stream = stream;
        _limit = limit;
        _onFailed = onFailed;
        _fill = new ArrayBufferWriter<byte>(initialBytes);
        _send = new ArrayBufferWriter<byte>(initialBytes);
    }

    /// <summary>Held while appending frames to <see cref="Writer"/>.</summary>
    public readonly Lock Lock = new();

    /// <summary>The fill buffer; use only while holding <see cref="Lock"/>.</summary>
    public IBufferWriter<byte> Writer => _fill;

    /// <summary>True once closed (by <see cref="Close"/> or a failure): appends are then dropped. Takes the lock; under
    /// it, read <see cref="ClosedUnsafe"/>.</summary>
    public bool Closed { get { lock (Lock) return _closed; } }

    /// <summary><see cref="Closed"/> for a caller already holding <see cref="Lock"/>.</summary>
    public bool ClosedUnsafe => _closed;

    /// <summary>Bytes appended and not yet handed to the socket (read under the lock).</summary>
    public int PendingUnsafe => _fill.WrittenCount;

    /// <summary>Bytes appended and not yet known to be sent: <see cref="PendingUnsafe"/> plus the batch a sender holds
    /// (read under the lock; a batch that just finished may still count).</summary>
    public long UnsentUnsafe => (long)_fill.WrittenCount + _send.WrittenCount;

    /// <summary>Starts sending what was appended, unless a send is already running (it will pick it up).</summary>
    public void Flush()
    {
        string? fail = null;
        lock (Lock)
        {
            if (_closed || _sending || _fill.WrittenCount == 0) return;
            if (_fill.WrittenCount > _limit) { _closed = true; fail = $"more than {_limit} bytes unsent: the peer is not reading"; }
            else _sending = true;
        }
        if (fail is not null) { _onFailed(fail); return; }
        _ = SendLoopAsync();
    }

    /// <summary>Sends synchronously on the calling thread (for a dedicated writer thread); returns false once closed.
    /// Picks up a tail that <see cref="TrySendNow"/> could not finish, and leaves the buffer alone while a
    /// <see cref="TrySendNow"/> caller owns it (that caller hands over whatever it cannot send).</summary>
    public bool FlushBlocking()
    {
        while (true)
        {
            ArrayBufferWriter<byte> batch;
            int from = 0;
            lock (Lock)
            {
                if (_closed) return false;
                if (_sending) return true;
                if (_leftAt >= 0) { from = _leftAt; _leftAt = -1; batch = _send; }
                else
                {
                    if (_fill.WrittenCount == 0) return true;
                    (batch, _fill, _send) = (_fill, _send, _fill);
                }
                _sending = true;
            }
            try
            {
                var mem = batch.WrittenSpan[from..];
                if (_stream is not null) _stream.Write(mem);
                else while (!mem.IsEmpty) mem = mem[_socket.Send(mem)..];
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException or IOException)
            {
                lock (Lock) _sending = false;
                Fail(e.Message);
                return false;
            }
            batch.ResetWrittenCount();
            lock (Lock) _sending = false;
        }
    }

    /// <summary>
    /// Sends what was appended on the calling thread without ever blocking (MSG_DONTWAIT), so a producer that is
    /// done with a batch (the scheduler after an iteration, a worker after a read) pays one syscall instead of
    /// waking a writer thread: on two busy cores a thread wake-up costs more than the send itself. Returns false when
    /// bytes are left that only a blocking writer can move (the peer's socket buffer is full, or concurrent appends
    /// kept coming): the caller then wakes its writer thread, which calls <see cref="FlushBlocking"/>.
    /// </summary>
    public unsafe bool TrySendNow()
    {
        ArrayBufferWriter<byte> batch;
        lock (Lock)
        {
            if (_closed || _sending) return true;        // an owner re-checks the fill buffer before letting go
            if (_leftAt >= 0) return false;              // a tail is waiting for the blocking writer
            if (_stream is not null) return _fill.WrittenCount == 0;
            if (_fill.WrittenCount == 0) return true;
            (batch, _fill, _send) = (_fill, _send, _fill);
            _sending = true;
        }
        for (int round = 0; ; round++)
        {
            int sent = 0, total = batch.WrittenCount, error = 0;
            bool added = false;
            var handle = _socket.SafeHandle;
            try
            {
                handle.DangerousAddRef(ref added);
                fixed (byte* p = batch.WrittenSpan)
                {
                    while (sent < total)
                    {
                        nint n = SocketNative.SendNoWait((int)handle.DangerousGetHandle(), p + sent, total - sent);
                        if (n > 0) { sent += (int)n; continue; }
                        int errno = Marshal.GetLastPInvokeError();
                        if (n < 0 && errno == SocketNative.EINTR) continue;
                        if (n < 0 && errno == SocketNative.EAGAIN) break;
                        error = n < 0 ? errno : SocketNative.EPIPE;
                        break;
                    }
                }
            }
            catch (ObjectDisposedException)
            {
                error = SocketNative.EPIPE;
            }
            finally
            {
                if (added) handle.DangerousRelease();
            }
            if (error != 0)
            {
                // After the release: failing closes the socket, and disposing waits for every reference to go.
                lock (Lock) _sending = false;
                Fail(new SocketException(error).Message);
                return true;
            }
            lock (Lock)
            {
                if (sent < total)
                {
                    _leftAt = sent;
                    _sending = false;
                    return false;
                }
                batch.ResetWrittenCount();
                if (_closed || _fill.WrittenCount == 0 || round == 3)
                {
                    _sending = false;
                    return _closed || _fill.WrittenCount == 0;
                }
                (batch, _fill, _send) = (_fill, _send, _fill);
            }
        }
    }

    private async Task SendLoopAsync()
    {
        while (true)
        {
            ArrayBufferWriter<byte> batch;
            lock (Lock)
            {
                if (_closed || _fill.WrittenCount == 0)
                {
                    _sending = false;
                    var then = _whenEmpty;
                    _whenEmpty = null;
                    if (then is not null) ThreadPool.UnsafeQueueUserWorkItem(static a => a(), then, preferLocal: false);
                    return;
                }
                if (_fill.WrittenCount > _limit) { _sending = false; _closed = true; }
                batch = _fill;
                _fill = _send;
                _send = batch;
            }
            if (_closed) { _onFailed($"more than {_limit} bytes unsent: the peer is not reading"); return; }
            try
            {
                var mem = batch.WrittenMemory;
                if (_stream is not null) await _stream.WriteAsync(mem).ConfigureAwait(false);
                else while (!mem.IsEmpty) mem = mem[await _socket.SendAsync(mem, SocketFlags.None).ConfigureAwait(false)..];
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException or IOException or InvalidOperationException)
            {
                lock (Lock) _sending = false;
                Fail(e.Message);
                return;
            }
            batch.ResetWrittenCount();
        }
    }

    private void Fail(string why)
    {
        bool first;
        lock (Lock) { first = !_closed; _closed = true; }
        if (first) _onFailed(why);
    }

    /// <summary>Sends what is appended, then runs <paramref name="then"/> once (to close the socket after a fatal
    /// error frame has left). Runs it at once if nothing is pending or the buffer is closed.</summary>
    public void FlushThen(Action then)
    {
        bool now;
        lock (Lock)
        {
            now = _closed || (!_sending && _fill.WrittenCount == 0);
            if (!now) _whenEmpty = then;
        }
        if (now) then();
        else Flush();
    }

    /// <summary>Drops unsent frames and refuses new ones.</summary>
    public void Close()
    {
        lock (Lock) _closed = true;
    }
}
