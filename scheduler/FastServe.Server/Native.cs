using System.Net.Sockets;
using System.Runtime.InteropServices;

namespace FastServe.Server;

/// <summary>The few libc calls the process model needs (Linux).</summary>
internal static partial class Native
{
    public const int SIGKILL = 9;
    public const int SIGTERM = 15;
    private const int PR_SET_PDEATHSIG = 1;
    private const int SOL_SOCKET = 1;
    private const int SO_REUSEPORT = 15;

    [LibraryImport("libc", EntryPoint = "kill", SetLastError = true)]
    public static partial int Kill(int pid, int sig);

    [LibraryImport("libc", EntryPoint = "getppid")]
    public static partial int GetParentPid();

    [LibraryImport("libc", EntryPoint = "prctl", SetLastError = true)]
    private static partial int Prctl(int option, nuint arg2, nuint arg3, nuint arg4, nuint arg5);

    /// <summary>Asks the kernel to SIGKILL this process when its parent (the supervisor) dies, so a killed supervisor
    /// never leaves workers holding the port. Returns false when the parent is already gone.</summary>
    public static bool DieWithParent(int expectedParent)
    {
        if (!OperatingSystem.IsLinux()) return true;
        Prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
        return GetParentPid() == expectedParent;
    }

    /// <summary>SO_REUSEPORT: several worker processes listen on one port; the kernel spreads connections among them.</summary>
    public static void ReusePort(Socket s)
    {
        Span<byte> one = stackalloc byte[4];
        BitConverter.TryWriteBytes(one, 1);
        s.SetRawSocketOption(SOL_SOCKET, SO_REUSEPORT, one);
    }

    /// <summary>User plus system CPU seconds of a process, from /proc/PID/stat; NaN when it cannot be read.</summary>
    public static double ProcessCpuSeconds(int pid)
    {
        try
        {
            string stat = File.ReadAllText($"/proc/{pid}/stat");
            int close = stat.LastIndexOf(')');
            if (close < 0) return double.NaN;
            var f = stat[(close + 2)..].Split(' ');
            // Fields after the command: state(0) ... utime(11) stime(12), in clock ticks (100 Hz on Linux).
            return (long.Parse(f[11]) + long.Parse(f[12])) / 100.0;
        }
        catch (Exception e) when (e is IOException or FormatException or IndexOutOfRangeException or UnauthorizedAccessException)
        {
            return double.NaN;
        }
    }
}
