using FastServe.Protocol;
using FastServe.Protocol.Net;

namespace FastServe.Server.Ipc;

/// <summary>
/// What both ends of the worker ↔ engine link do with their <see cref="FrameConnection"/>'s frames: hand each message
/// to <see cref="Handle"/>, and stop the read run on one it refuses or one over the IPC limit, saying why in
/// <see cref="ReadError"/>. Runs on the end's reader thread only.
/// </summary>
internal abstract class IpcReader : IFrameConsumer
{
    /// <summary>Why the last read run stopped on a bad message, or null (reader thread only; clear it before a run).</summary>
    protected string? ReadError;

    /// <summary>One message; false when it is malformed (the run then stops).</summary>
    protected abstract bool Handle(in FrameHeader h, ReadOnlySpan<byte> payload);

    /// <summary>After the messages of one read; false stops the run.</summary>
    protected abstract bool ReadDone();

    bool IFrameConsumer.OnFrame(in FrameHeader h, ReadOnlySpan<byte> payload)
    {
        if (Handle(h, payload)) return true;
        ReadError = $"malformed IPC message type 0x{(byte)h.Type:X2}";
        return false;
    }

    void IFrameConsumer.OnTooLarge(in FrameHeader h) => ReadError = $"message of {h.Length} bytes is over the IPC limit";

    bool IFrameConsumer.OnReadDone() => ReadDone();
}
