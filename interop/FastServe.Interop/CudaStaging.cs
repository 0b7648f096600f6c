namespace FastServe.Interop;

/// <summary>
/// The cuda backend's host staging allocator: one pinned host buffer and a device mirror of it. Host arrays an op
/// needs (tokens, positions, slots, block tables, row indices, CopyFromHost data) are written at increasing
/// 256-byte-aligned offsets and copied, on the stream and in op order, to the same offset of the mirror (or to an
/// op's own target). Offsets only grow until <see cref="Reset"/>, which the backend calls once the stream has
/// drained (after a synchronization), so nothing the stream has yet to read is overwritten; the buffers grow (after a
/// synchronization) only until the largest step has been seen: no allocation per op. Arrays that repeat within a step
/// (positions for every layer's RoPE, the batch's slots and block tables) are staged once: see <see cref="StageCache"/>.
/// A recorded step (a CUDA graph) reads the offsets it was recorded with, so a replay rewrites its host arrays at the
/// same offsets, starting from a reset buffer as the recording did.
/// </summary>
internal sealed unsafe class CudaStaging : IDisposable
{
    public const int Alignment = 256;

    private readonly CudaContextHandle _context;
    private CudaPinnedMemory _host;
    private CudaDeviceMemory _mirror;
    private long _used;
    private int[] _hostInts = new int[256];

    public CudaStaging(CudaContextHandle context, long initialBytes)
    {
        _context = context;
        _host = CudaPinnedMemory.Alloc(context, initialBytes, "staging");
        try { _mirror = CudaDeviceMemory.Alloc(context, initialBytes, "staging mirror"); }
        catch
        {
            _host.Dispose();
            throw;
        }
    }

    /// <summary>Bumped by every <see cref="Reset"/>: a <see cref="StageCache"/> of an older epoch is stale.</summary>
    public int Epoch { get; private set; }

    public long Capacity => _host.Bytes;

    /// <summary>Reserves <paramref name="bytes"/> at the next aligned offset and returns it; -1 when they do not fit
    /// (the caller synchronizes and calls <see cref="Grow"/>, or, while a step is recorded, refuses the step).</summary>
    public long TryReserve(long bytes)
    {
        long off = (_used + Alignment - 1) & ~(long)(Alignment - 1);
        if (off + bytes > _host.Bytes) return -1;
        _used = off + bytes;
        return off;
    }

    public byte* Host(long offset) => _host.Ptr + offset;

    public nint Device(long offset) => _mirror.Ptr + (nint)offset;

    /// <summary>Starts again at offset 0. Only when the stream reads nothing staged any more.</summary>
    public void Reset()
    {
        _used = 0;
        Epoch++;
    }

    /// <summary>Empties the buffer and makes room for at least <paramref name="bytes"/> (doubling). Only after a
    /// synchronization. True when the buffers were reallocated: recordings that read the old ones are stale.</summary>
    public bool Grow(long bytes)
    {
        Reset();
        if (bytes <= _host.Bytes) return false;
        long cap = Math.Max(bytes, _host.Bytes * 2);
        _host.Dispose();
        _mirror.Dispose();
        _host = CudaPinnedMemory.Alloc(_context, cap, "staging");
        _mirror = CudaDeviceMemory.Alloc(_context, cap, "staging mirror");
        return true;
    }

    /// <summary>True when <paramref name="data"/> was staged for the same purpose in this epoch; its offset then.</summary>
    public bool TryReuse(ReadOnlySpan<int> data, ref StageCache cache, out long offset)
    {
        offset = cache.Offset;
        return cache.Epoch == Epoch && cache.Host is not null && data.SequenceEqual(cache.Host.AsSpan(0, cache.Count));
    }

    /// <summary>Remembers that <paramref name="data"/> is staged at <paramref name="offset"/> in this epoch.</summary>
    public void Remember(ReadOnlySpan<int> data, ref StageCache cache, long offset)
    {
        if (cache.Host is null || cache.Host.Length < data.Length) cache.Host = new int[Math.Max(64, data.Length * 2)];
        data.CopyTo(cache.Host);
        cache.Count = data.Length;
        cache.Offset = offset;
        cache.Epoch = Epoch;
    }

    /// <summary>Host scratch of at least <paramref name="n"/> ints for arrays computed from a layout before staging.</summary>
    public int[] HostInts(int n)
    {
        if (_hostInts.Length < n) _hostInts = new int[Math.Max(n, _hostInts.Length * 2)];
        return _hostInts;
    }

    public void Dispose()
    {
        _host.Dispose();
        _mirror.Dispose();
    }
}

/// <summary>What one purpose (RoPE positions, KV slots, ...) last staged: the values and where.</summary>
internal struct StageCache
{
    public int[]? Host;
    public int Count;
    public long Offset;
    public int Epoch;
}
