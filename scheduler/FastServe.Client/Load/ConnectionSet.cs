using System.Diagnostics;

namespace FastServe.Client.Load;

/// <summary>
/// N client connections used round robin. A connection that breaks is skipped and re-established in the background
/// (at most one attempt per slot at a time, 200 ms apart), so a server restart shows up as errors for a while rather
/// than ending the run. Thread-safe.
/// </summary>
internal sealed class ConnectionSet : IAsyncDisposable
{
    private static readonly long RetryTicks = Stopwatch.Frequency / 5;

    private readonly string _host;
    private readonly int _port;
    private readonly FastServeClientOptions _options;
    private readonly FastServeClient?[] _slots;
    private readonly int[] _reconnecting;
    private readonly long[] _nextAttempt;
    private readonly List<FastServeClient> _retired = new();
    private readonly CancellationTokenSource _disposed = new();
    private int _cursor;
    private int _reconnects;

    private ConnectionSet(string host, int port, FastServeClientOptions options, FastServeClient[] clients)
    {
        _host = host;
        _port = port;
        _options = options;
        _slots = clients;
        _reconnecting = new int[clients.Length];
        _nextAttempt = new long[clients.Length];
    }

    public int Count => _slots.Length;

    /// <summary>Successful reconnections so far.</summary>
    public int Reconnects => Volatile.Read(ref _reconnects);

    public FastServeClient First => _slots[0]!;

    /// <summary>Connects all <paramref name="n"/> at once; if any fails, closes the others and rethrows.</summary>
    public static async Task<ConnectionSet> OpenAsync(string host, int port, int n, FastServeClientOptions options, CancellationToken ct)
    {
        var tasks = Enumerable.Range(0, n).Select(_ => FastServeClient.ConnectAsync(host, port, options, ct)).ToArray();
        try
        {
            return new ConnectionSet(host, port, options, await Task.WhenAll(tasks).ConfigureAwait(false));
        }
        catch
        {
            foreach (var t in tasks)
                if (t.IsCompletedSuccessfully) await t.Result.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>The next connected client round robin, or null when none is connected right now.</summary>
    public FastServeClient? Pick()
    {
        int n = _slots.Length;
        for (int k = 0; k < n; k++)
        {
            int i = (int)((uint)Interlocked.Increment(ref _cursor) % (uint)n);
            var c = Volatile.Read(ref _slots[i]);
            if (c is not null && c.IsConnected) return c;
            Reconnect(i);
        }
        return null;
    }

    private void Reconnect(int i)
    {
        if (_disposed.IsCancellationRequested || Stopwatch.GetTimestamp() < Volatile.Read(ref _nextAttempt[i])) return;
        if (Interlocked.Exchange(ref _reconnecting[i], 1) != 0) return;
        _ = Task.Run(async () =>
        {
            try
            {
                var fresh = await FastServeClient.ConnectAsync(_host, _port, _options, _disposed.Token).ConfigureAwait(false);
                bool late;
                lock (_retired)
                {
                    late = _disposed.IsCancellationRequested;
                    if (!late)
                    {
                        var old = Interlocked.Exchange(ref _slots[i], fresh);
                        if (old is not null) _retired.Add(old);
                    }
                }
                if (late) await fresh.DisposeAsync().ConfigureAwait(false);
                else Interlocked.Increment(ref _reconnects);
            }
            catch (Exception e) when (e is FastServeClientException or OperationCanceledException)
            {
                Volatile.Write(ref _nextAttempt[i], Stopwatch.GetTimestamp() + RetryTicks);
            }
            finally
            {
                Volatile.Write(ref _reconnecting[i], 0);
            }
        });
    }

    public async ValueTask DisposeAsync()
    {
        FastServeClient[] all;
        lock (_retired)
        {
            _disposed.Cancel();
            all = _slots.Where(c => c is not null).Select(c => c!).Concat(_retired).ToArray();
        }
        // The token source is not disposed: a reconnect still under way reads it.
        foreach (var c in all) await c.DisposeAsync().ConfigureAwait(false);
    }
}
