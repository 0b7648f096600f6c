using System.Net.Sockets;
using System.Runtime.InteropServices;
using FastServe.Client;

namespace FastServe.Http;

/// <summary>
/// In-process connections to this process's own binary-protocol host: a connected AF_UNIX stream socket pair, one end
/// handed to the host as if accepted, the other to a <see cref="FastServeClient"/>. The HTTP layer then runs every
/// request through the same sessions, request rules, routing and overload control as a TCP client.
/// </summary>
internal static partial class LocalConnection
{
    private const int AF_UNIX = 1;
    private const int SOCK_STREAM = 1;
    private const int SOCK_CLOEXEC = 0x80000;

    [LibraryImport("libc", EntryPoint = "socketpair", SetLastError = true)]
    private static unsafe partial int SocketPair(int domain, int type, int protocol, int* fds);

    /// <summary>A connected pair of stream sockets (server end, client end). Throws <see cref="SocketException"/> when
    /// the kernel refuses (out of descriptors).</summary>
    public static unsafe (Socket Server, Socket Client) CreatePair()
    {
        int* fds = stackalloc int[2];
        if (SocketPair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) throw new SocketException(Marshal.GetLastPInvokeError());
        Socket? server = null;
        try
        {
            server = new Socket(new SafeSocketHandle(fds[0], ownsHandle: true));
        }
        catch
        {
            Close(fds[0]);
            Close(fds[1]);
            throw;
        }
        try
        {
            return (server, new Socket(new SafeSocketHandle(fds[1], ownsHandle: true)));
        }
        catch
        {
            server.Dispose();
            Close(fds[1]);
            throw;
        }
    }

    [LibraryImport("libc", EntryPoint = "close")]
    private static partial int Close(int fd);
}

/// <summary>
/// A few <see cref="FastServeClient"/>s over in-process connections (<see cref="LocalConnection"/>) that the HTTP
/// handlers share. Requests are packed, not spread: each takes the first open client with fewer than
/// <see cref="PackLimit"/> calls in flight, so at ordinary loads they all ride one connection, whose frames then go
/// many to a syscall and a wake-up each way (with 32 requests in flight, spreading them over 4 connections cost the
/// worker 8.5 syscalls and 2.1 context switches per request, one connection 5.8 and 1.3; docs/benchmarks.md). When every open client is at the limit, or none is open, an empty or closed slot
/// is connected (a closed client is replaced then); with no slot left, the least loaded client takes it. Thread-safe.
/// </summary>
internal sealed class LocalClientPool : IAsyncDisposable
{
    private readonly Action<Socket> _acceptLocal;
    private readonly FastServeClientOptions _options;
    private readonly FastServeClient?[] _clients;                  // slots; replaced under _connect
    private readonly SemaphoreSlim _connect = new(1, 1);
    private volatile bool _disposed;

    /// <param name="acceptLocal">Hands the server end to the host (RouterHost / WorkerHost.AcceptLocal), which starts a
    /// normal session on it.</param>
    /// <param name="size">Clients kept open (1 to 16).</param>
    /// <param name="keepAlive">PING interval, below the host's idle timeout, so a quiet pool is never closed.</param>
    public LocalClientPool(Action<Socket> acceptLocal, int size, TimeSpan keepAlive)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(size, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(size, 16);
        _acceptLocal = acceptLocal;
        _clients = new FastServeClient?[size];
        // No adaptive throttling: HTTP clients see the server's 429s and back off themselves; the pool must not turn
        // one client's overload into refusals of everyone's requests.
        _options = new FastServeClientOptions
        {
            ClientName = "fastserve-http",
            KeepAliveInterval = keepAlive,
            AdaptiveThrottling = null,
            ConnectTimeout = TimeSpan.FromSeconds(10),
            MaxPendingSendBytes = 64 << 20,
        };
    }

    /// <summary>Calls in flight on one client below which it takes the next request before any later slot is used:
    /// enough to keep its frames batched, few enough that a burst of long prompts (tokenized on the session's loop)
    /// spreads over the other connections.</summary>
    public const int PackLimit = 64;

    /// <summary>The first open client with fewer than <see cref="PackLimit"/> calls in flight, else the least loaded
    /// one, connecting a slot that is empty or closed when every open client is at the limit. Throws
    /// <see cref="FastServeClientException"/> when the host refuses the connection (draining) and
    /// <see cref="ObjectDisposedException"/> after <see cref="DisposeAsync"/>.</summary>
    public ValueTask<FastServeClient> GetAsync(CancellationToken ct)
    {
        FastServeClient? best = null;
        int bestLoad = int.MaxValue;
        bool missing = false;
        foreach (var c in _clients)
        {
            if (c is null || !c.IsConnected) { missing = true; continue; }
            int load = c.InFlight;
            if (load < PackLimit) return new ValueTask<FastServeClient>(c);
            if (load < bestLoad) { best = c; bestLoad = load; }
        }
        if (best is not null && !missing) return new ValueTask<FastServeClient>(best);
        return new ValueTask<FastServeClient>(FillAsync(best, ct));
    }

    private async Task<FastServeClient> FillAsync(FastServeClient? fallback, CancellationToken ct)
    {
        await _connect.WaitAsync(ct).ConfigureAwait(false);
        try
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            // A request that waited here behind another's connect takes the client it connected, not a new one.
            foreach (var c in _clients)
                if (c is not null && c.IsConnected && c.InFlight < PackLimit) return c;
            for (int i = 0; i < _clients.Length; i++)
            {
                var c = _clients[i];
                if (c is not null && c.IsConnected) continue;
                if (c is not null) await c.DisposeAsync().ConfigureAwait(false);
                _clients[i] = null;
                var (server, client) = LocalConnection.CreatePair();
                try { _acceptLocal(server); }
                catch
                {
                    server.Dispose();
                    client.Dispose();
                    throw;
                }
                var fresh = await FastServeClient.ConnectAsync(client, _options, ct).ConfigureAwait(false);
                _clients[i] = fresh;
                return fresh;
            }
            // Another request filled the slots meanwhile.
            return fallback is { IsConnected: true } ? fallback : _clients.First(x => x is not null && x.IsConnected)!;
        }
        finally
        {
            _connect.Release();
        }
    }

    public async ValueTask DisposeAsync()
    {
        _disposed = true;
        await _connect.WaitAsync().ConfigureAwait(false);
        try
        {
            for (int i = 0; i < _clients.Length; i++)
            {
                if (_clients[i] is { } c) await c.DisposeAsync().ConfigureAwait(false);
                _clients[i] = null;
            }
        }
        finally
        {
            _connect.Release();
        }
    }
}
