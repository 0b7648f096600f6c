using System.Diagnostics;

namespace FastServe.Interop;

/// <summary>
/// Uploads weights through a ring of pinned staging chunks (<see cref="UploadSchedule"/>) on the backend's stream:
/// the host copies the next piece from the source (the memory-mapped checkpoint) into one chunk while the previous
/// piece's cuMemcpyHtoDAsync runs from another, and waits on a chunk's event only before overwriting it. A copy from
/// pinned memory is a true DMA, so reading the file and crossing PCIe overlap; a copy straight from pageable
/// (mmapped) memory, as before, is staged by the driver and returns only once the source was read, which serializes
/// both. Sources are copied before <see cref="Upload"/> returns, so a caller may drop them at once; the device
/// copies complete later, in stream order before any kernel that reads them. <see cref="Finish"/> waits for the
/// last one and closes the session's statistics. The chunks are allocated on first use and kept until disposed.
/// Used by the backend's thread only. Every driver result goes to <c>check</c> (the backend's: a failure faults it and
/// throws); <c>issued</c> is told that work was enqueued on the stream.
/// </summary>
internal sealed unsafe class CudaWeightUploader : IDisposable
{
    private readonly Action<int, string> _check;
    private readonly Action _issued;
    private readonly CudaContextHandle _context;
    private readonly nint _stream;
    private readonly UploadSchedule _schedule;
    private readonly CudaPinnedMemory?[] _chunks;
    private readonly CudaEventHandle?[] _events;

    // The open session: from its first piece to Finish.
    private bool _active;
    private long _start, _bytes;
    private long _copyTicks, _waitTicks;
    private int _pieces;

    public CudaWeightUploader(CudaContextHandle context, nint stream, UploadOptions options, Action<int, string> check, Action issued)
    {
        _check = check;
        _issued = issued;
        _context = context;
        _stream = stream;
        _schedule = new UploadSchedule(options.Chunks, options.ChunkBytes);
        _chunks = new CudaPinnedMemory?[options.Chunks];
        _events = new CudaEventHandle?[options.Chunks];
        CopyThreads = options.CopyThreads;
    }

    public int Chunks => _schedule.Chunks;
    public long ChunkBytes => _schedule.ChunkBytes;
    public int CopyThreads { get; }

    /// <summary>An upload session is open: copies may still be in flight.</summary>
    public bool Active => _active;

    /// <summary>Seconds it took to allocate the pinned chunks and their events (once, before the first session).</summary>
    public double StagingSeconds { get; private set; }

    /// <summary>Every session closed so far.</summary>
    public WeightUploadStats Stats { get; private set; }

    /// <summary>Enqueues the copy of <paramref name="bytes"/> from host memory <paramref name="src"/> to device memory
    /// <paramref name="dst"/>; <paramref name="src"/> has been read when this returns.</summary>
    public void Upload(byte* src, long bytes, nint dst)
    {
        if (bytes <= 0) return;
        if (!_active)
        {
            AllocateStaging();
            _active = true;
            _start = Stopwatch.GetTimestamp();
            _bytes = _copyTicks = _waitTicks = 0;
            _pieces = 0;
        }
        long done = 0;
        while (done < bytes)
        {
            var p = _schedule.Next(bytes - done);
            if (p.WaitFirst) Wait(p.Chunk);
            byte* chunk = _chunks[p.Chunk]!.Ptr;
            long t0 = Stopwatch.GetTimestamp();
            HostCopy(src + done, chunk + p.Offset, p.Length);
            _copyTicks += Stopwatch.GetTimestamp() - t0;
            _check(CudaDriver.cuMemcpyHtoDAsync_v2(dst + (nint)done, chunk + p.Offset, (nuint)p.Length, _stream), "cuMemcpyHtoDAsync_v2");
            _check(CudaDriver.cuEventRecord(_events[p.Chunk]!.Event, _stream), "cuEventRecord");
            done += p.Length;
            _pieces++;
        }
        _bytes += bytes;
        _issued();
    }

    /// <summary>Waits until every copy of the open session has completed and adds the session to <see cref="Stats"/>;
    /// nothing when no session is open. Returns the closed session alone (default when none).</summary>
    public WeightUploadStats Finish()
    {
        if (!_active) return default;
        while (_schedule.TakeInFlight(out int c)) Wait(c);
        _active = false;
        double f = Stopwatch.Frequency;
        var session = default(WeightUploadStats).Add(_bytes, (Stopwatch.GetTimestamp() - _start) / f, _copyTicks / f, _waitTicks / f, _pieces);
        Stats = Stats.Add(session.Bytes, session.Seconds, session.HostCopySeconds, session.TransferWaitSeconds, session.Pieces);
        return session;
    }

    /// <summary>After a fault: forget the open session without waiting (the stream's work is lost).</summary>
    public void Abandon()
    {
        while (_schedule.TakeInFlight(out _)) { }
        _active = false;
    }

    private void Wait(int chunk)
    {
        long t0 = Stopwatch.GetTimestamp();
        _check(CudaDriver.cuEventSynchronize(_events[chunk]!.Event), "cuEventSynchronize");
        _waitTicks += Stopwatch.GetTimestamp() - t0;
    }

    // Once, outside the timed sessions: pinning host memory costs milliseconds per chunk, which would otherwise be
    // charged to the first session's bandwidth (StagingSeconds reports it apart).
    private void AllocateStaging()
    {
        if (_events[^1] is not null) return;
        long t0 = Stopwatch.GetTimestamp();
        for (int i = 0; i < _chunks.Length; i++)
        {
            _chunks[i] ??= CudaPinnedMemory.Alloc(_context, _schedule.ChunkBytes, "weight upload staging");
            _events[i] ??= CudaEventHandle.Create(_context);
        }
        StagingSeconds = Stopwatch.GetElapsedTime(t0).TotalSeconds;
    }

    // Reading a cold mmapped checkpoint is page faults and a memcpy: one core reaches a few GB/s, a PCIe 4 or 5 link
    // 25 to 55 GB/s, so large pieces are copied by several threads.
    private void HostCopy(byte* src, byte* dst, long bytes)
    {
        const long MinSlice = 2L << 20;
        int parts = (int)Math.Min(CopyThreads, Math.Max(1, bytes / MinSlice));
        if (parts <= 1)
        {
            Buffer.MemoryCopy(src, dst, bytes, bytes);
            return;
        }
        long slice = (bytes / parts + UploadSchedule.Alignment - 1) & ~(long)(UploadSchedule.Alignment - 1);
        nint s = (nint)src, d = (nint)dst;
        Parallel.For(0, parts, new ParallelOptions { MaxDegreeOfParallelism = parts }, i =>
        {
            long off = i * slice, n = Math.Min(slice, bytes - off);
            if (n > 0) Buffer.MemoryCopy((byte*)(s + (nint)off), (byte*)(d + (nint)off), n, n);
        });
    }

    public void Dispose()
    {
        foreach (var e in _events) e?.Dispose();
        foreach (var c in _chunks) c?.Dispose();
    }
}

/// <summary>
/// How weights are uploaded: <see cref="Chunks"/> pinned staging chunks of <see cref="ChunkBytes"/> each, host copies
/// of a piece split over up to <see cref="CopyThreads"/> threads. Defaults: 4 chunks of 16 MiB (64 MiB pinned), and a
/// quarter of the cores, 1 to 8, for the copies. <see cref="FromEnvironment"/> reads overrides for tuning on a GPU
/// machine: <c>FASTSERVE_CUDA_UPLOAD_CHUNKS</c> (2 to 64), <c>FASTSERVE_CUDA_UPLOAD_CHUNK_MIB</c> (1 to 1024),
/// <c>FASTSERVE_CUDA_UPLOAD_THREADS</c> (1 to 64).
/// </summary>
internal readonly record struct UploadOptions(int Chunks, long ChunkBytes, int CopyThreads)
{
    public static UploadOptions Default => new(4, 16L << 20, Math.Clamp(Environment.ProcessorCount / 4, 1, 8));

    /// <exception cref="Runtime.FastServeException">cuda.invalid_upload_option: a value that is not an integer in
    /// range, naming the variable.</exception>
    public static UploadOptions FromEnvironment(Func<string, string?> get)
    {
        var d = Default;
        int chunks = Read(get, "FASTSERVE_CUDA_UPLOAD_CHUNKS", 2, 64, d.Chunks);
        int mib = Read(get, "FASTSERVE_CUDA_UPLOAD_CHUNK_MIB", 1, 1024, (int)(d.ChunkBytes >> 20));
        int threads = Read(get, "FASTSERVE_CUDA_UPLOAD_THREADS", 1, 64, d.CopyThreads);
        return new UploadOptions(chunks, (long)mib << 20, threads);
    }

    private static int Read(Func<string, string?> get, string name, int min, int max, int dflt)
    {
        string? v = get(name);
        if (string.IsNullOrWhiteSpace(v)) return dflt;
        if (int.TryParse(v.Trim(), System.Globalization.NumberStyles.Integer, System.Globalization.CultureInfo.InvariantCulture, out int n) && n >= min && n <= max) return n;
        throw new Runtime.FastServeException("cuda.invalid_upload_option", $"{name}={v}: expected an integer from {min} to {max}", name);
    }
}
