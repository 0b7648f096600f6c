using System.Buffers;
using System.Buffers.Binary;
using System.Diagnostics;
using FastServe.Protocol;

namespace FastServe.Router;

/// <summary>
/// One client request while the router holds it: who asked (session and the client's id), a pooled copy of its
/// REQUEST payload (so it can be sent again), and where it runs now (upstream connection and router-assigned id).
/// </summary>
/// <remarks>
/// Ownership: each attempt is owned by the upstream connection whose request map holds it; whoever removes it from
/// that map (its FINAL, or the connection breaking) decides what happens next — retry or finish — so a request is
/// finished exactly once. The session only marks it cancelled and forwards a CANCEL.
/// </remarks>
internal sealed class RoutedRequest
{
    private byte[]? _payload;
    private int _released;

    public RoutedRequest(DownstreamSession session, ulong clientId, byte headerFlags, ReadOnlySpan<byte> payload, long received, int maxAttempts)
    {
        Session = session;
        ClientId = clientId;
        HeaderFlags = headerFlags;
        _payload = ArrayPool<byte>.Shared.Rent(Math.Max(payload.Length, 1));
        payload.CopyTo(_payload);
        Length = payload.Length;
        Received = received;
        uint deadlineMs = BinaryPrimitives.ReadUInt32LittleEndian(payload[24..]);
        DeadlineAt = deadlineMs == 0 ? 0 : received + deadlineMs * Stopwatch.Frequency / 1000;
        Tried = new Endpoint?[maxAttempts];
    }

    public readonly DownstreamSession Session;
    public readonly ulong ClientId;
    public readonly byte HeaderFlags;
    public readonly int Length;
    /// <summary>When the router read the REQUEST (Stopwatch ticks).</summary>
    public readonly long Received;
    /// <summary>When its deadline passes (Stopwatch ticks); 0 = no deadline.</summary>
    public readonly long DeadlineAt;

    /// <summary>Guards the fields below.</summary>
    public readonly Lock Lock = new();
    public UpstreamConnection? Upstream;
    public ulong RouterId;
    /// <summary>Times it was sent to a replica.</summary>
    public int Attempts;
    /// <summary>Endpoints it was sent to, distinct, in order (<see cref="TriedCount"/> of them).</summary>
    public readonly Endpoint?[] Tried;
    public int TriedCount;
    public bool Cancelled;
    public bool Done;

    /// <summary>A DELTA has been passed to the client: the request can no longer be replayed. Written by the
    /// receive loop of the connection it runs on.</summary>
    public volatile bool Streamed;

    /// <summary>The REQUEST payload as the client sent it (deadline rewritten on retries).</summary>
    public ReadOnlySpan<byte> Payload => _payload is { } p ? p.AsSpan(0, Length) : default;

    /// <summary>Before a retry: the deadline field becomes the time left (at least 1 ms), since the next replica
    /// counts it from its own receipt.</summary>
    public void RewriteDeadline(long now)
    {
        if (DeadlineAt == 0 || _payload is null) return;
        long left = (DeadlineAt - now) * 1000 / Stopwatch.Frequency;
        BinaryPrimitives.WriteUInt32LittleEndian(_payload.AsSpan(24), (uint)Math.Clamp(left, 1, uint.MaxValue));
    }

    public void AddTried(Endpoint e)
    {
        for (int i = 0; i < TriedCount; i++) if (ReferenceEquals(Tried[i], e)) return;
        if (TriedCount < Tried.Length) Tried[TriedCount++] = e;
    }

    /// <summary>Returns the payload copy to the pool (once).</summary>
    public void Release()
    {
        if (Interlocked.Exchange(ref _released, 1) != 0) return;
        var p = _payload;
        _payload = null;
        if (p is not null) ArrayPool<byte>.Shared.Return(p);
    }
}

/// <summary>Writes a frame from header fields and a payload: how the router forwards frames with a rewritten id.</summary>
internal static class FrameCopy
{
    public static void Write(IBufferWriter<byte> w, FrameType type, byte flags, ulong id, ReadOnlySpan<byte> payload)
    {
        var span = w.GetSpan(Wire.HeaderSize + payload.Length);
        BinaryPrimitives.WriteUInt32LittleEndian(span, (uint)payload.Length);
        span[4] = (byte)type;
        span[5] = flags;
        BinaryPrimitives.WriteUInt16LittleEndian(span[6..], 0);
        BinaryPrimitives.WriteUInt64LittleEndian(span[8..], id);
        payload.CopyTo(span[Wire.HeaderSize..]);
        w.Advance(Wire.HeaderSize + payload.Length);
    }
}
