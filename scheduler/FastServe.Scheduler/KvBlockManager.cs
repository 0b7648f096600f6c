namespace FastServe.Scheduler;

/// <summary>
/// Owns the block ids of a paged KV cache (<see cref="FastServe.Runtime.Backends.KvCacheSpec"/>): a free list,
/// a reference count per block, and an automatic prefix cache.
///
/// Prefix cache: a full block is keyed by a hash chained over every token from the start of the sequence up to
/// and including that block (so equal keys mean equal prefixes, not just equal blocks); its tokens are stored too
/// and compared on a hit, so a hash collision can never share the wrong KV. Blocks shared by several sequences
/// are reference-counted. A cached block whose count drops to zero stays cached, on a least-recently-used list,
/// until a fresh block is needed and none is free; then the least recently used one is evicted.
///
/// Not thread-safe: the engine's scheduler thread is the only caller. Nothing allocates after construction.
/// </summary>
public sealed class KvBlockManager
{
    private const int None = -1;

    private readonly int _blockSize;
    private readonly int[] _refCount;
    private readonly ulong[] _hash;          // valid when _cached[b]
    private readonly bool[] _cached;
    private readonly int[] _tokens;          // [block * blockSize + i]: the tokens of a cached block
    private readonly int[] _freeStack;
    private int _freeCount;
    // Doubly linked LRU list of cached blocks with refcount 0: head = least recently used.
    private readonly int[] _lruPrev, _lruNext;
    private int _lruHead = None, _lruTail = None;
    private readonly Dictionary<ulong, int> _byHash;

    public KvBlockManager(int numBlocks, int blockSize)
    {
        if (numBlocks <= 0) throw new ArgumentOutOfRangeException(nameof(numBlocks));
        if (blockSize <= 0) throw new ArgumentOutOfRangeException(nameof(blockSize));
        NumBlocks = numBlocks;
        _blockSize = blockSize;
        _refCount = new int[numBlocks];
        _hash = new ulong[numBlocks];
        _cached = new bool[numBlocks];
        _tokens = new int[numBlocks * blockSize];
        _freeStack = new int[numBlocks];
        _lruPrev = new int[numBlocks];
        _lruNext = new int[numBlocks];
        _byHash = new Dictionary<ulong, int>(numBlocks);
        for (int i = 0; i < numBlocks; i++) _freeStack[i] = numBlocks - 1 - i;
        _freeCount = numBlocks;
    }

    public int NumBlocks { get; }
    public int BlockSize => _blockSize;

    /// <summary>Blocks on the free list (never cached, or evicted).</summary>
    public int FreeBlocks => _freeCount;

    /// <summary>Blocks held by at least one sequence.</summary>
    public int UsedBlocks { get; private set; }

    /// <summary>Cached blocks no sequence holds: reusable on a prefix hit, evictable when blocks run out.</summary>
    public int IdleCachedBlocks { get; private set; }

    /// <summary>Blocks a new allocation can get right now (free plus evictable).</summary>
    public int AvailableBlocks => _freeCount + IdleCachedBlocks;

    /// <summary>Prefix-cache lookups (full blocks) and hits since construction.</summary>
    public long PrefixQueries { get; private set; }
    public long PrefixHits { get; private set; }

    /// <summary>Hash of a full block given its parent's hash (0 for the first block) and its tokens.</summary>
    public static ulong ChainHash(ulong parent, ReadOnlySpan<int> tokens)
    {
        // FNV-1a over the parent hash and the token ids, then a final avalanche (SplitMix64 finaliser).
        ulong h = 14695981039346656037UL ^ parent;
        h *= 1099511628211UL;
        foreach (int t in tokens)
        {
            h ^= (uint)t;
            h *= 1099511628211UL;
        }
        h ^= h >> 30; h *= 0xBF58476D1CE4E5B9UL;
        h ^= h >> 27; h *= 0x94D049BB133111EBUL;
        return h ^ (h >> 31);
    }

    /// <summary>
    /// Takes every leading full block of <paramref name="tokens"/> that is in the prefix cache, in order, adding a
    /// reference to each and writing its id to <paramref name="table"/> (which must have room for them). Returns
    /// how many tokens those blocks cover (a multiple of BlockSize; the blocks taken are that / BlockSize);
    /// <paramref name="lastHash"/> is the chain hash after them (0 if none). At most <paramref name="maxTokens"/>
    /// tokens are matched (callers pass prompt length − 1 so at least one token is always computed and yields logits).
    /// </summary>
    public int MatchPrefix(ReadOnlySpan<int> tokens, int maxTokens, Span<int> table, out ulong lastHash)
    {
        lastHash = 0;
        int matched = 0, taken = 0;
        int limit = Math.Min(Math.Min(tokens.Length, maxTokens), table.Length * _blockSize);
        while (matched + _blockSize <= limit)
        {
            var blockTokens = tokens.Slice(matched, _blockSize);
            ulong h = ChainHash(lastHash, blockTokens);
            PrefixQueries++;
            if (!_byHash.TryGetValue(h, out int b) || !blockTokens.SequenceEqual(_tokens.AsSpan(b * _blockSize, _blockSize)))
                break;
            PrefixHits++;
            Acquire(b);
            table[taken++] = b;
            lastHash = h;
            matched += _blockSize;
        }
        return matched;
    }

    /// <summary>Allocates a block for new KV (free list first, else evicts the least recently used idle cached
    /// block). Its reference count is 1. False when every block is held.</summary>
    public bool TryAllocate(out int block)
    {
        if (_freeCount > 0)
        {
            block = _freeStack[--_freeCount];
        }
        else if (_lruHead != None)
        {
            block = _lruHead;
            LruRemove(block);
            IdleCachedBlocks--;
            _byHash.Remove(_hash[block]);
            _cached[block] = false;
        }
        else
        {
            block = None;
            return false;
        }
        _refCount[block] = 1;
        UsedBlocks++;
        return true;
    }

    /// <summary>Registers a block the caller has just filled (all BlockSize slots written) in the prefix cache
    /// under <paramref name="hash"/> = ChainHash(parent, tokens). If an equal block is already cached, nothing
    /// changes (the caller keeps its own copy). Returns true when registered.</summary>
    public bool Commit(int block, ulong hash, ReadOnlySpan<int> tokens)
    {
        if (tokens.Length != _blockSize) throw new ArgumentException("a committed block must be full", nameof(tokens));
        if (_refCount[block] <= 0) throw new InvalidOperationException($"block {block} is not held");
        if (_cached[block] || _byHash.ContainsKey(hash)) return false;
        _cached[block] = true;
        _hash[block] = hash;
        tokens.CopyTo(_tokens.AsSpan(block * _blockSize, _blockSize));
        _byHash.Add(hash, block);
        return true;
    }

    /// <summary>Drops one reference. A block nobody holds goes back to the free list, or, if cached, to the
    /// most-recently-used end of the LRU list.</summary>
    public void Release(int block)
    {
        if (_refCount[block] <= 0) throw new InvalidOperationException($"block {block} released more often than acquired");
        if (--_refCount[block] > 0) return;
        UsedBlocks--;
        if (_cached[block])
        {
            LruAppend(block);
            IdleCachedBlocks++;
        }
        else
        {
            _freeStack[_freeCount++] = block;
        }
    }

    /// <summary>Releases every block of a sequence's table, last first (so a sequence's tail blocks, the least
    /// likely to be shared, are the first evicted among its cached ones).</summary>
    public void ReleaseAll(ReadOnlySpan<int> table)
    {
        for (int i = table.Length - 1; i >= 0; i--) Release(table[i]);
    }

    public int RefCount(int block) => _refCount[block];

    private void Acquire(int block)
    {
        if (_refCount[block]++ == 0)
        {
            LruRemove(block);
            IdleCachedBlocks--;
            UsedBlocks++;
        }
    }

    private void LruAppend(int b)
    {
        _lruPrev[b] = _lruTail;
        _lruNext[b] = None;
        if (_lruTail != None) _lruNext[_lruTail] = b; else _lruHead = b;
        _lruTail = b;
    }

    private void LruRemove(int b)
    {
        int p = _lruPrev[b], n = _lruNext[b];
        if (p != None) _lruNext[p] = n; else _lruHead = n;
        if (n != None) _lruPrev[n] = p; else _lruTail = p;
    }
}
