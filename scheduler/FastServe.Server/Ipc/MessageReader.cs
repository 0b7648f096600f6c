using System.Buffers;
using System.Net.Sockets;
using FastServe.Protocol;

namespace FastServe.Server.Ipc;

/// <summary>Handles one IPC message; false means it was malformed (the link is then closed).</summary>
internal delegate bool MessageHandler(FrameHeader header, ReadOnlySpan<byte> payload);

/// <summary>The blocking receive loop both ends of an IPC link share: read, split into messages in place, hand each
/// to the handler, call <c>afterBatch</c> once per socket read (where batched replies are flushed).</summary>
internal static class MessageReader
{
    /// <summary>Runs until EOF, an error or a malformed message; returns why it stopped.</summary>
    public static string Run(Socket socket, MessageHandler handle, Action afterBatch, Func<bool> stopped)
    {
        byte[] buf = ArrayPool<byte>.Shared.Rent(1 << 20);
        int have = 0;
        try
        {
            while (!stopped())
            {
                if (have == buf.Length)
                {
                    var bigger = ArrayPool<byte>.Shared.Rent(buf.Length * 2);
                    buf.AsSpan(0, have).CopyTo(bigger);
                    ArrayPool<byte>.Shared.Return(buf);
                    buf = bigger;
                }
                int n = socket.Receive(buf, have, buf.Length - have, SocketFlags.None);
                if (n == 0) return "the peer closed the link";
                have += n;
                int used = 0;
                while (true)
                {
                    var r = FrameReader.TryRead(buf.AsSpan(used, have - used), Ipc.MaxMessage, out var h, out var payload, out int consumed);
                    if (r == ReadResult.NeedMore) break;
                    if (r == ReadResult.TooLarge) return $"message of {h.Length} bytes is over the IPC limit";
                    if (!handle(h, payload)) return $"malformed IPC message type 0x{(byte)h.Type:X2}";
                    used += consumed;
                }
                if (used > 0)
                {
                    buf.AsSpan(used, have - used).CopyTo(buf);
                    have -= used;
                }
                afterBatch();
            }
            return "stopped";
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
            return e.Message;
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buf);
        }
    }
}
