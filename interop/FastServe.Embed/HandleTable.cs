namespace FastServe.Embed;

/// <summary>
/// The objects a C caller holds, by opaque 64-bit handle; the caller never sees a pointer or a GCHandle, so a freed,
/// forged or mistyped handle is recognised and answered with a status instead of touching memory.
/// <para>Handle bits: 63..60 the table's kind (model, engine, request), 59..56 the stripe, 55..32 the slot's
/// generation (24 bits, raised at every free: a stale handle is refused until the same slot has been reused 16 million
/// times), 31..0 the slot index + 1 (so 0 is never a handle).</para>
/// <para>Threads: <see cref="Get"/> takes no lock. <see cref="Add"/> and <see cref="Remove"/> lock one of 16 stripes,
/// picked by the calling thread, for a few instructions; tables are per kind, shared by every engine, so submitters on
/// different threads rarely meet on a stripe and nothing is held across engine work. Slots live in fixed pages that
/// never move, so a lock-free reader never sees a slot copied away.</para>
/// </summary>
internal sealed class HandleTable<T> where T : class
{
    private const int Stripes = 16, PageBits = 10, PageSize = 1 << PageBits, PagesPerStripe = 1024;
    private const uint GenMask = 0xFF_FFFF;

    /// <summary>Most live handles of this kind, over all stripes.</summary>
    public const int Capacity = Stripes * PagesPerStripe * PageSize;

    private readonly ulong _kind;
    private readonly Stripe[] _stripes;

    /// <param name="kind">1..15, distinct per table.</param>
    public HandleTable(int kind)
    {
        _kind = (ulong)kind << 60;
        _stripes = new Stripe[Stripes];
        for (int i = 0; i < Stripes; i++) _stripes[i] = new Stripe();
    }

    private sealed class Slot
    {
        // Gen is raised before Value is cleared (Remove) and never touched by Add, so a reader that reads Value, then
        // Gen, and finds Gen equal to its handle's saw the live object of that handle.
        public T? Value;
        public uint Gen = 1;
        public int NextFree = -1;
    }

    private sealed class Stripe
    {
        public readonly Lock Gate = new();
        public readonly Slot[]?[] Pages = new Slot[PagesPerStripe][];
        // Under Gate: the number of slots ever handed out, and the head of the list of freed ones.
        public int Used;
        public int FreeHead = -1;
    }

    /// <summary>Stores <paramref name="value"/> and returns its handle, or 0 when this stripe is full.</summary>
    public ulong Add(T value)
    {
        int s = Environment.CurrentManagedThreadId & (Stripes - 1);
        var stripe = _stripes[s];
        lock (stripe.Gate)
        {
            int index;
            Slot slot;
            if (stripe.FreeHead >= 0)
            {
                index = stripe.FreeHead;
                slot = stripe.Pages[index >> PageBits]![index & (PageSize - 1)];
                stripe.FreeHead = slot.NextFree;
            }
            else
            {
                if (stripe.Used == PagesPerStripe * PageSize) return 0;
                index = stripe.Used++;
                var page = stripe.Pages[index >> PageBits];
                if (page is null) Volatile.Write(ref stripe.Pages[index >> PageBits], page = new Slot[PageSize]);
                Volatile.Write(ref page[index & (PageSize - 1)], slot = new Slot());
            }
            Volatile.Write(ref slot.Value, value);
            return _kind | (ulong)s << 56 | (ulong)(slot.Gen & GenMask) << 32 | (uint)(index + 1);
        }
    }

    /// <summary>The live object of <paramref name="handle"/>, or null (zero, another kind, freed, forged).</summary>
    public T? Get(ulong handle) => Find(handle, out _) is { } slot && Volatile.Read(ref slot.Value) is { } v &&
        (Volatile.Read(ref slot.Gen) & GenMask) == (uint)(handle >> 32 & GenMask) ? v : null;

    /// <summary>Frees <paramref name="handle"/> and returns its object, or null when it was not live. Of two threads
    /// removing the same handle, one gets the object.</summary>
    public T? Remove(ulong handle)
    {
        if (Find(handle, out var stripe) is not { } slot) return null;
        lock (stripe!.Gate)
        {
            var v = slot.Value;
            if (v is null || (slot.Gen & GenMask) != (uint)(handle >> 32 & GenMask)) return null;
            Volatile.Write(ref slot.Gen, slot.Gen + 1);
            Volatile.Write(ref slot.Value, null);
            int index = (int)(uint)handle - 1;
            slot.NextFree = stripe.FreeHead;
            stripe.FreeHead = index;
            return v;
        }
    }

    private Slot? Find(ulong handle, out Stripe? stripe)
    {
        stripe = null;
        if ((handle & 0xF000_0000_0000_0000) != _kind) return null;
        uint index1 = (uint)handle;
        if (index1 == 0 || index1 > PagesPerStripe * PageSize) return null;
        stripe = _stripes[(int)(handle >> 56 & 0xF)];
        int index = (int)index1 - 1;
        var page = Volatile.Read(ref stripe.Pages[index >> PageBits]);
        return page is null ? null : Volatile.Read(ref page[index & (PageSize - 1)]);
    }
}
