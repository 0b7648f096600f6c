namespace FastServe.Vulkan;

/// <summary>
/// The per-submission host arena: a host-visible, mapped buffer that the shaders read directly, holding the small
/// arrays ops take from the host (token ids, positions, KV slots, block tables, gather indices, RoPE cos/sin,
/// CopyFromHost data). Each op appends its array and passes the word offset in its push constants; the whole arena is
/// bound to every set, so descriptor sets stay cacheable. Space is reused only after the work that reads it has
/// completed (<see cref="Reset"/> after a wait); when full, the owner submits, waits, resets and, if one array is larger
/// than the arena, grows it (<see cref="Grow"/>).
/// </summary>
internal sealed unsafe class VulkanArena : IDisposable
{
    private readonly VulkanManager _m;
    private ulong _usedWords;

    public VulkanArena(VulkanManager m, ulong bytes)
    {
        _m = m;
        Buffer = VulkanBuffer.Create(m, bytes, VulkanMemory.Host, "arena");
    }

    public VulkanBuffer Buffer { get; private set; }

    /// <summary>Appends <paramref name="data"/> (4-byte elements) and returns its word offset, or false when it does not fit.</summary>
    public bool TryPut<T>(ReadOnlySpan<T> data, out uint wordOffset) where T : unmanaged
    {
        ulong words = (ulong)data.Length;
        if (sizeof(T) != 4) throw new ArgumentException("arena arrays are of 4-byte elements");
        if (_usedWords + words > Buffer.Size / 4)
        {
            wordOffset = 0;
            return false;
        }
        wordOffset = (uint)_usedWords;
        data.CopyTo(new Span<T>(Buffer.Mapped + _usedWords * 4, data.Length));
        _usedWords += words;
        return true;
    }

    /// <summary>Space for <paramref name="words"/> more 4-byte elements, without copying: the caller fills it.</summary>
    public bool TryReserve(int words, out uint wordOffset, out Span<uint> space)
    {
        if (_usedWords + (ulong)words > Buffer.Size / 4)
        {
            wordOffset = 0;
            space = default;
            return false;
        }
        wordOffset = (uint)_usedWords;
        space = new Span<uint>(Buffer.Mapped + _usedWords * 4, words);
        _usedWords += (ulong)words;
        return true;
    }

    /// <summary>Forgets everything appended; only after the work reading it has completed.</summary>
    public void Reset() => _usedWords = 0;

    /// <summary>Replaces the buffer with one of at least <paramref name="minBytes"/> (and at least twice the old size);
    /// only when idle and reset.</summary>
    public void Grow(ulong minBytes)
    {
        var old = Buffer;
        Buffer = VulkanBuffer.Create(_m, Math.Max(minBytes, old.Size * 2), VulkanMemory.Host, "arena");
        old.Dispose();
        _usedWords = 0;
    }

    public void Dispose() => Buffer.Dispose();
}
