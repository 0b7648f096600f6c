using System.Buffers;
using System.Buffers.Binary;
using System.Text;
using FastServe.Protocol;

namespace FastServe.Server.Ipc;

/// <summary>What a worker counts that only it sees: the API keys of its connections and its HTTP answers.</summary>
internal enum CounterKind : byte
{
    /// <summary>Connections authenticated with key <c>A</c> (a name, never key material).</summary>
    KeyConnections = 1,
    /// <summary>Requests sent under key <c>A</c> (binary REQUESTs and HTTP requests).</summary>
    KeyRequests = 2,
    /// <summary>HELLOs and HTTP requests refused for a missing (<c>A</c> = key_required) or wrong (invalid_key) key.</summary>
    AuthRefused = 3,
    /// <summary>Times the worker put a changed keys file in force.</summary>
    KeyReloads = 4,
    /// <summary>Times the worker refused a changed keys file.</summary>
    KeyReloadFailures = 5,
    /// <summary>HTTP requests answered: endpoint <c>A</c>, status <c>B</c>.</summary>
    HttpRequests = 6,
}

/// <summary>One cumulative counter of a worker (since the worker started), with up to two label values.</summary>
internal readonly record struct CounterValue(CounterKind Kind, string A, string B, long Value);

/// <summary>
/// The <see cref="IpcType.Counters"/> message: a worker's cumulative counters, sent every second, so the engine
/// process's /metrics can serve them summed over workers (ReplicaCounters). Payload: u16 n, n × (u8 kind, str16 a,
/// str16 b, u64 value).
/// </summary>
internal static class WorkerCounters
{
    /// <summary>Most counters one message carries (label sets are small and fixed: key names, endpoints, statuses).</summary>
    public const int MaxCounters = 4096;
    private const int MaxLabelBytes = 256;

    public static void Write(IBufferWriter<byte> w, IReadOnlyList<CounterValue> values)
    {
        int n = Math.Min(values.Count, MaxCounters);
        var labels = new (byte[] A, byte[] B)[n];
        int size = 2;
        for (int i = 0; i < n; i++)
        {
            labels[i] = (Label(values[i].A), Label(values[i].B));
            size += 1 + 2 + labels[i].A.Length + 2 + labels[i].B.Length + 8;
        }
        var span = w.GetSpan(Wire.HeaderSize + size);
        BinaryPrimitives.WriteUInt32LittleEndian(span, (uint)size);
        span[4] = (byte)IpcType.Counters;
        span[5] = 0;
        BinaryPrimitives.WriteUInt16LittleEndian(span[6..], 0);
        BinaryPrimitives.WriteUInt64LittleEndian(span[8..], 0);
        var p = span[Wire.HeaderSize..];
        BinaryPrimitives.WriteUInt16LittleEndian(p, (ushort)n);
        int o = 2;
        for (int i = 0; i < n; i++)
        {
            p[o++] = (byte)values[i].Kind;
            o += Str16(p[o..], labels[i].A);
            o += Str16(p[o..], labels[i].B);
            BinaryPrimitives.WriteInt64LittleEndian(p[o..], Math.Max(0, values[i].Value));
            o += 8;
        }
        w.Advance(Wire.HeaderSize + size);
    }

    /// <summary>Reads a message into <paramref name="into"/>; false when it is malformed.</summary>
    public static bool TryRead(ReadOnlySpan<byte> payload, List<CounterValue> into)
    {
        var r = new PayloadReader(payload);
        if (!r.TryU16(out ushort n) || n > MaxCounters) return false;
        for (int i = 0; i < n; i++)
        {
            if (!r.TryU8(out byte kind) || !r.TryStr16(out var a) || !r.TryStr16(out var b) || !r.TryU64(out ulong value)
                || kind is < (byte)CounterKind.KeyConnections or > (byte)CounterKind.HttpRequests || value > long.MaxValue)
                return false;
            into.Add(new CounterValue((CounterKind)kind, Utf8Text.Decode(a), Utf8Text.Decode(b), (long)value));
        }
        return r.Remaining == 0;
    }

    // A label's UTF-8 bytes, cut to MaxLabelBytes on a character boundary.
    private static byte[] Label(string s)
    {
        var bytes = Encoding.UTF8.GetBytes(s);
        return bytes.Length <= MaxLabelBytes ? bytes : bytes[..Utf8Text.CompletePrefix(bytes.AsSpan(0, MaxLabelBytes))];
    }

    private static int Str16(Span<byte> dst, byte[] s)
    {
        BinaryPrimitives.WriteUInt16LittleEndian(dst, (ushort)s.Length);
        s.CopyTo(dst[2..]);
        return 2 + s.Length;
    }
}
