using System.Runtime.InteropServices;

namespace FastServe.Protocol.Net;

/// <summary>The libc socket call that .NET's Socket does not offer: a send that never blocks on a blocking socket.</summary>
internal static partial class SocketNative
{
    public const int EINTR = 4;
    public const int EAGAIN = 11;
    public const int EPIPE = 32;
    private const int MSG_DONTWAIT = 0x40;
    private const int MSG_NOSIGNAL = 0x4000;

    [LibraryImport("libc", EntryPoint = "send", SetLastError = true)]
    private static unsafe partial nint Send(int fd, byte* buf, nint len, int flags);

    /// <summary>send(2) that never blocks and never raises SIGPIPE: bytes sent, or -1 with errno (EAGAIN when full).</summary>
    public static unsafe nint SendNoWait(int fd, byte* buf, int len) => Send(fd, buf, len, MSG_DONTWAIT | MSG_NOSIGNAL);
}
