using System.Buffers;
using System.Buffers.Binary;

namespace FastServe.Protocol;

/// <summary>One of a generated token's most likely alternatives: its id, log-probability and bytes.</summary>
public readonly record struct TopLogprob(int Id, float Logprob, byte[] Bytes);

/// <summary>
/// One generated token's log-probability under the model (before temperature, top-p and top-k shape the draw), its
/// bytes as the tokenizer defines them, and the <c>top_logprobs</c> most likely tokens at its position, most likely
/// first (protocol 1.4: a DELTA's log-probability section; docs/protocol.md, "Per-token log-probabilities").
/// </summary>
public sealed record TokenLogprobs(int Id, float Logprob, byte[] Bytes, TopLogprob[] Top);

/// <summary>
/// The log-probability section of a DELTA (protocol 1.4, DELTA flag <see cref="DeltaFlags.Logprobs"/>), after the
/// text: u16 m entries, each u32 id, f32 logprob, u8 b, b bytes, u8 k (≤ <see cref="RequestRules.MaxLogprobs"/>),
/// k × (u32 id, f32 logprob, u8 b, b bytes). An entry per generated id in order, except an EOS that ends the request
/// (it adds no output). Token bytes longer than 255 are cut to 255.
/// </summary>
public static class DeltaLogprobs
{
    /// <summary>Longest token byte string an entry carries.</summary>
    public const int MaxTokenBytes = 255;

    /// <summary>Starts a section in <paramref name="w"/>: returns the offset of its entry count, which
    /// <see cref="End"/> fills in.</summary>
    public static int Begin(ArrayBufferWriter<byte> w)
    {
        int at = w.WrittenCount;
        w.GetSpan(2)[..2].Clear();
        w.Advance(2);
        return at;
    }

    /// <summary>Writes one entry's head (the chosen token) and its alternatives' count; <see cref="WriteTop"/> then
    /// writes exactly <paramref name="k"/> alternatives.</summary>
    public static void WriteToken(ArrayBufferWriter<byte> w, int id, float logprob, ReadOnlySpan<byte> bytes, int k)
    {
        WriteOne(w, id, logprob, bytes);
        w.GetSpan(1)[0] = (byte)k;
        w.Advance(1);
    }

    /// <summary>Writes one alternative of the entry begun by <see cref="WriteToken"/>.</summary>
    public static void WriteTop(ArrayBufferWriter<byte> w, int id, float logprob, ReadOnlySpan<byte> bytes) => WriteOne(w, id, logprob, bytes);

    /// <summary>Sets the section's entry count (the entries written since <see cref="Begin"/>).</summary>
    public static void End(ArrayBufferWriter<byte> w, int at, int entries)
    {
        var written = System.Runtime.InteropServices.MemoryMarshal.AsMemory(w.WrittenMemory).Span;
        BinaryPrimitives.WriteUInt16LittleEndian(written[at..], (ushort)entries);
    }

    private static void WriteOne(ArrayBufferWriter<byte> w, int id, float logprob, ReadOnlySpan<byte> bytes)
    {
        if (bytes.Length > MaxTokenBytes) bytes = bytes[..MaxTokenBytes];
        var s = w.GetSpan(9 + bytes.Length);
        BinaryPrimitives.WriteInt32LittleEndian(s, id);
        BinaryPrimitives.WriteSingleLittleEndian(s[4..], logprob);
        s[8] = (byte)bytes.Length;
        bytes.CopyTo(s[9..]);
        w.Advance(9 + bytes.Length);
    }

    /// <summary>Whether <paramref name="section"/> is exactly a well-formed section of at most
    /// <paramref name="maxEntries"/> entries (a DELTA's id count). Allocates nothing.</summary>
    public static bool IsValid(ReadOnlySpan<byte> section, int maxEntries)
    {
        var r = new PayloadReader(section);
        if (!r.TryU16(out ushort m) || m > maxEntries) return false;
        for (int e = 0; e < m; e++)
        {
            if (!Skip(ref r) || !r.TryU8(out byte k) || k > RequestRules.MaxLogprobs) return false;
            for (int j = 0; j < k; j++) if (!Skip(ref r)) return false;
        }
        return r.Remaining == 0;
    }

    /// <summary>The entries of a section that <see cref="IsValid"/> accepted.</summary>
    public static TokenLogprobs[] Read(ReadOnlySpan<byte> section)
    {
        var r = new PayloadReader(section);
        if (!r.TryU16(out ushort m) || m == 0) return [];
        var list = new TokenLogprobs[m];
        for (int e = 0; e < m; e++)
        {
            ReadOne(ref r, out int id, out float lp, out byte[] bytes);
            r.TryU8(out byte k);
            var top = k == 0 ? [] : new TopLogprob[k];
            for (int j = 0; j < k; j++)
            {
                ReadOne(ref r, out int tid, out float tlp, out byte[] tb);
                top[j] = new TopLogprob(tid, tlp, tb);
            }
            list[e] = new TokenLogprobs(id, lp, bytes, top);
        }
        return list;
    }

    private static bool Skip(ref PayloadReader r) =>
        r.TryU32(out _) && r.TryF32(out _) && r.TryU8(out byte b) && r.TryBytes(b, out _);

    private static void ReadOne(ref PayloadReader r, out int id, out float lp, out byte[] bytes)
    {
        r.TryI32(out id);
        r.TryF32(out lp);
        r.TryU8(out byte b);
        r.TryBytes(b, out var s);
        bytes = s.IsEmpty ? [] : s.ToArray();
    }
}
