namespace FastServe.Interop;

/// <summary>
/// Where each piece of a pipelined host-to-device upload goes: a ring of <see cref="Chunks"/> pinned staging chunks of
/// <see cref="ChunkBytes"/> each. The host copies piece k+1 into the next chunk while piece k's asynchronous copy to
/// the device runs; before it writes into a chunk whose earlier pieces may still be in flight, it waits for that
/// chunk's event (<see cref="UploadPiece.WaitFirst"/>). Items (weights, scale and bias vectors) are packed one after
/// another at <see cref="Alignment"/>-byte offsets and split at chunk ends, so small items share a chunk and need no
/// wait of their own. Pure bookkeeping: <see cref="CudaWeightUploader"/> does the copies, events and waits.
/// </summary>
internal sealed class UploadSchedule
{
    public const int Alignment = 256;

    private readonly bool[] _inFlight;
    private int _chunk;
    private long _offset;
    private bool _started;

    /// <exception cref="ArgumentOutOfRangeException">fewer than 2 chunks (nothing could overlap), or a chunk size that
    /// is not a positive multiple of <see cref="Alignment"/>.</exception>
    public UploadSchedule(int chunks, long chunkBytes)
    {
        if (chunks < 2) throw new ArgumentOutOfRangeException(nameof(chunks), chunks, "a pipelined upload needs at least 2 staging chunks");
        if (chunkBytes < Alignment || chunkBytes % Alignment != 0)
            throw new ArgumentOutOfRangeException(nameof(chunkBytes), chunkBytes, $"the chunk size must be a positive multiple of {Alignment} bytes");
        _inFlight = new bool[chunks];
        ChunkBytes = chunkBytes;
    }

    public int Chunks => _inFlight.Length;
    public long ChunkBytes { get; }

    /// <summary>Whether chunk <paramref name="chunk"/> holds pieces whose copies may not have finished.</summary>
    public bool InFlight(int chunk) => _inFlight[chunk];

    /// <summary>The next piece of an item that has <paramref name="remaining"/> (&gt; 0) bytes left to upload. The caller
    /// waits for the chunk's event when <see cref="UploadPiece.WaitFirst"/> is set, writes the piece's bytes at
    /// <see cref="UploadPiece.Offset"/> of the chunk, enqueues their copy and records the chunk's event: from here on
    /// the chunk counts as in flight until <see cref="TakeInFlight"/> hands it back.</summary>
    public UploadPiece Next(long remaining)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(remaining);
        long off = (_offset + Alignment - 1) & ~(long)(Alignment - 1);
        if (!_started) _started = true;
        else if (off >= ChunkBytes)
        {
            _chunk = (_chunk + 1) % _inFlight.Length;
            off = 0;
        }
        // Pieces written earlier into the current chunk occupy other bytes: only a chunk entered afresh, whose earlier
        // use may still be read by the device, has to be waited for.
        bool wait = off == 0 && _inFlight[_chunk];
        long length = Math.Min(remaining, ChunkBytes - off);
        _offset = off + length;
        _inFlight[_chunk] = true;
        return new UploadPiece(_chunk, off, length, wait);
    }

    /// <summary>Hands back one chunk still in flight (the caller waits for its event), or false when none is; once
    /// every chunk is handed back the next piece starts at chunk 0, offset 0.</summary>
    public bool TakeInFlight(out int chunk)
    {
        for (int i = 0; i < _inFlight.Length; i++)
        {
            if (!_inFlight[i]) continue;
            _inFlight[i] = false;
            chunk = i;
            return true;
        }
        chunk = -1;
        _chunk = 0;
        _offset = 0;
        _started = false;
        return false;
    }
}

/// <summary>One piece of an upload: <see cref="Length"/> bytes at <see cref="Offset"/> of staging chunk
/// <see cref="Chunk"/>; <see cref="WaitFirst"/>: wait for the chunk's event before writing into it.</summary>
internal readonly record struct UploadPiece(int Chunk, long Offset, long Length, bool WaitFirst);

/// <summary>
/// What the weight uploads of a backend achieved, summed over upload sessions (a session runs from its first byte
/// to the moment its last copy is known complete). <see cref="HostCopySeconds"/>: the host copying from the source
/// (for weights, the memory-mapped checkpoint) into pinned chunks; <see cref="TransferWaitSeconds"/>: the host blocked
/// on a chunk whose copy to the device had not finished. A session whose waits are a large part of its time was bound
/// by the host-to-device link; one whose host copies are, by reading the source.
/// </summary>
public readonly record struct WeightUploadStats(long Bytes, double Seconds, double HostCopySeconds, double TransferWaitSeconds, int Sessions, int Pieces)
{
    /// <summary>Achieved bytes per second over the sessions' wall time (0 before anything was uploaded).</summary>
    public double BytesPerSecond => Seconds > 0 ? Bytes / Seconds : 0;

    public double GigabytesPerSecond => BytesPerSecond / 1e9;

    public WeightUploadStats Add(long bytes, double seconds, double hostCopy, double transferWait, int pieces) =>
        new(Bytes + bytes, Seconds + seconds, HostCopySeconds + hostCopy, TransferWaitSeconds + transferWait, Sessions + 1, Pieces + pieces);
}
