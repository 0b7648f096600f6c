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
/// finished exactly once. Between a refusal and its retry's jitter delay running out it is owned, the same way, by
/// the router's <see cref="RetryDelays"/>. The session only marks it cancelled and forwards a CANCEL.
/// </remarks>
internal sealed class RoutedRequest
{
    private byte[]? _payload;
    private byte[]? _held;
    private int _heldLength;
    private byte[]? _refusal;       // a replica's refusal FINAL kept while its retry waits out its jitter delay
    private int _refusalLength;
    private byte _refusalFlags;
    private int _released;
    private byte[]? _delivered;     // ids passed to the client (little-endian u32), recorded once it streams
    private int _deliveredLength;
    private long _deliveredText;    // text bytes passed to the client

    /// <summary>A request whose payload is forwarded without its routing fields (the router has chosen the pool, and
    /// replicas of older protocol versions would refuse them): <paramref name="payload"/> is cut at
    /// <paramref name="routeOffset"/> and the <see cref="RequestFlags.Route"/> bit cleared in the copy.</summary>
    public RoutedRequest(DownstreamSession session, ulong clientId, byte headerFlags, ReadOnlySpan<byte> payload, long received, int maxAttempts,
        int routeOffset, PoolKey pool, in RequestShaping shaping = default)
    {
        Session = session;
        ClientId = clientId;
        HeaderFlags = headerFlags;
        payload = payload[..Math.Min(routeOffset, payload.Length)];
        _payload = ArrayPool<byte>.Shared.Rent(Math.Max(payload.Length, 1));
        payload.CopyTo(_payload);
        Length = payload.Length;
        Pool = pool;
        if (Length >= Wire.RequestFixedSize) shaping.Apply(_payload.AsSpan(0, Length));
        payload = _payload.AsSpan(0, Length);
        Received = received;
        uint deadlineMs = BinaryPrimitives.ReadUInt32LittleEndian(payload[24..]);
        DeadlineAt = deadlineMs == 0 ? 0 : received + deadlineMs * Stopwatch.Frequency / 1000;
        Tried = new Endpoint?[maxAttempts];
        Whole = payload.Length > 29 && (payload[29] & (byte)RequestFlags.Whole) != 0;
        TokenLogprobs = payload.Length >= Wire.RequestFixedSize && (payload[36] & (byte)RequestFlags2.TokenLogprobs) != 0;
        if (Length >= Wire.RequestFixedSize) DrawSeed(_payload.AsSpan(0, Length));
    }

    /// <summary>
    /// A sampled request without a seed gets one drawn here, in the copy the replicas see: a replica that resumes it
    /// after a loss then draws exactly the tokens the lost one would have (the counter-based sampler keys each draw
    /// by seed and position). The client still sees a random answer: the seed is drawn anew for every request.
    /// </summary>
    private static void DrawSeed(Span<byte> p)
    {
        if ((p[29] & (byte)RequestFlags.HasSeed) != 0 || !(BinaryPrimitives.ReadSingleLittleEndian(p[4..]) > 0)) return;
        BinaryPrimitives.WriteUInt64LittleEndian(p[16..], (ulong)Random.Shared.NextInt64(long.MinValue, long.MaxValue));
        p[29] |= (byte)RequestFlags.HasSeed;
    }

    /// <summary>A mirror of <paramref name="primary"/> for its shadow comparison: the same payload as forwarded, at
    /// batch priority (a replica shared with live traffic serves the live requests first), sent to
    /// <paramref name="pool"/>. It belongs to no client session's in-flight map.</summary>
    public static RoutedRequest MirrorOf(RoutedRequest primary, PoolKey pool, Shadow.ShadowPair pair, long now) =>
        new(primary.Session, 0, primary.HeaderFlags, primary.Payload, now, 1, primary.Length, pool, new RequestShaping(null, Logprobs: true, Batch: true))
        {
            Pair = pair,
            IsShadow = true,
        };

    public readonly DownstreamSession Session;
    public readonly ulong ClientId;
    public readonly byte HeaderFlags;
    public readonly int Length;
    /// <summary>When the router read the REQUEST (Stopwatch ticks).</summary>
    public readonly long Received;
    /// <summary>When its deadline passes (Stopwatch ticks); 0 = no deadline.</summary>
    public readonly long DeadlineAt;
    /// <summary>The pool it is sent to (every attempt; a tier's escalation moves it to the strong pool). Written only
    /// by whoever owns the request (see remarks).</summary>
    public PoolKey Pool;
    /// <summary>The version in <see cref="Pool"/> was drawn by the model's traffic split, not named by the client: when
    /// no replica of it can take the request, another version of the model may.</summary>
    public bool DrawnVersion;
    /// <summary>The cascade tier it runs under (null: none): its output is held until its FINAL decides whether it
    /// is escalated.</summary>
    public TierRule? Tier;
    /// <summary>It has been sent on to the tier's strong pool (so it is not escalated again).</summary>
    public bool Escalated;
    /// <summary>Device time of the attempts before an escalation, µs, added to the FINAL the client gets.</summary>
    public uint PriorDeviceUs;
    /// <summary>The shadow comparison this request takes part in (as the primary, or as the mirror when
    /// <see cref="IsShadow"/>); null when not mirrored.</summary>
    public Shadow.ShadowPair? Pair;
    /// <summary>A mirror: no client waits for it; its output goes to <see cref="Pair"/> only, it is never retried.</summary>
    public bool IsShadow;
    /// <summary>Its output is held back until the FINAL: a <c>whole</c> request, or a tier's cheap attempt.</summary>
    public bool Holds => Whole || (Tier is not null && !Escalated);
    /// <summary>The client asked for per-token log-probabilities (<see cref="RequestFlags2.TokenLogprobs"/>), which only
    /// replicas of protocol 1.4 on send.</summary>
    public bool TokenLogprobs { get; }

    /// <summary>The client set <see cref="RequestFlags.Whole"/>: its output is held until the FINAL, so it stays
    /// replayable until then.</summary>
    public readonly bool Whole;

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

    /// <summary>A DELTA has been passed to the client: the request can no longer be replayed from the start, only
    /// resumed from what was delivered (<see cref="WriteRequest"/>). Written by the receive loop of the connection it
    /// runs on.</summary>
    public volatile bool Streamed;

    /// <summary>
    /// Appends a DELTA, framed for the client, to the output held back for a <see cref="Whole"/> request. False (and
    /// nothing appended) when that would pass <paramref name="cap"/> bytes: the caller then passes on what is held and
    /// streams from there. Called only by the receive loop of the connection the request runs on.
    /// </summary>
    public bool TryHold(byte flags, ReadOnlySpan<byte> payload, int cap)
    {
        int frame = Wire.HeaderSize + payload.Length;
        lock (Lock)
        {
            if (_heldLength + frame > cap || _payload is null) return false;
            if (_held is null || _held.Length - _heldLength < frame)
            {
                var grown = ArrayPool<byte>.Shared.Rent(Math.Max(Math.Max(4096, _heldLength + frame), (_held?.Length ?? 0) * 2));
                if (_held is not null)
                {
                    _held.AsSpan(0, _heldLength).CopyTo(grown);
                    ArrayPool<byte>.Shared.Return(_held);
                }
                _held = grown;
            }
            var w = _held.AsSpan(_heldLength, frame);
            BinaryPrimitives.WriteUInt32LittleEndian(w, (uint)payload.Length);
            w[4] = (byte)FrameType.Delta;
            w[5] = flags;
            BinaryPrimitives.WriteUInt16LittleEndian(w[6..], 0);
            BinaryPrimitives.WriteUInt64LittleEndian(w[8..], ClientId);
            payload.CopyTo(w[Wire.HeaderSize..]);
            _heldLength += frame;
            return true;
        }
    }

    /// <summary>Bytes of output held back now.</summary>
    public int HeldBytes { get { lock (Lock) return _heldLength; } }

    /// <summary>Writes the held output (whole client frames) to <paramref name="w"/> and forgets it; with
    /// <paramref name="record"/> (the request streams from here on) the DELTAs passed are recorded as delivered.</summary>
    public void PassHeld(IBufferWriter<byte> w, bool record = false)
    {
        lock (Lock)
        {
            if (_heldLength == 0) return;
            w.Write(_held.AsSpan(0, _heldLength));
            if (record)
            {
                for (int at = 0; at + Wire.HeaderSize <= _heldLength;)
                {
                    int len = (int)BinaryPrimitives.ReadUInt32LittleEndian(_held.AsSpan(at));
                    RecordLocked(_held.AsSpan(at + Wire.HeaderSize, len));
                    at += Wire.HeaderSize + len;
                }
            }
            _heldLength = 0;
        }
    }

    /// <summary>
    /// Records a DELTA passed to the client (its ids and text bytes): what a resume on another replica starts from
    /// (REQUEST flag <see cref="RequestFlags.Resume"/>). A pooled buffer that grows only for requests that stream.
    /// Called by the receive loop of the connection the request runs on.
    /// </summary>
    public void RecordDelivered(ReadOnlySpan<byte> deltaPayload)
    {
        lock (Lock) RecordLocked(deltaPayload);
    }

    private void RecordLocked(ReadOnlySpan<byte> deltaPayload)
    {
        if (_payload is null || !DeltaView.TryParse(deltaPayload, out var d)) return;
        if (d.IdBytes.Length > 0)
        {
            int need = _deliveredLength + d.IdBytes.Length;
            if (_delivered is null || _delivered.Length < need)
            {
                var grown = ArrayPool<byte>.Shared.Rent(Math.Max(Math.Max(256, need), (_delivered?.Length ?? 0) * 2));
                if (_delivered is not null)
                {
                    _delivered.AsSpan(0, _deliveredLength).CopyTo(grown);
                    ArrayPool<byte>.Shared.Return(_delivered);
                }
                _delivered = grown;
            }
            d.IdBytes.CopyTo(_delivered.AsSpan(_deliveredLength));
            _deliveredLength = need;
        }
        _deliveredText += d.Text.Length;
    }

    /// <summary>Token ids passed to the client so far.</summary>
    public int DeliveredIds { get { lock (Lock) return _deliveredLength / 4; } }

    /// <summary>Bytes of the REQUEST frame's payload as the next attempt sends it: the payload, and once the request has
    /// streamed (<see cref="Streamed"/>) the resume fields with what was delivered.</summary>
    public int SendLength { get { lock (Lock) return Length + (Streamed ? ResumeFields.Size(_deliveredLength / 4) : 0); } }

    /// <summary>Writes the REQUEST frame for an attempt under router id <paramref name="rid"/>: the payload as
    /// forwarded, and once the request has streamed, with flag <see cref="RequestFlags.Resume"/> and the ids and
    /// text bytes already delivered (the replica continues from there; docs/router.md, "Failover").</summary>
    public void WriteRequest(IBufferWriter<byte> w, ulong rid)
    {
        lock (Lock)
        {
            if (_payload is null) return;
            if (!Streamed)
            {
                FrameCopy.Write(w, FrameType.Request, HeaderFlags, rid, _payload.AsSpan(0, Length));
                return;
            }
            int n = Length + ResumeFields.Size(_deliveredLength / 4);
            var span = w.GetSpan(Wire.HeaderSize + n);
            BinaryPrimitives.WriteUInt32LittleEndian(span, (uint)n);
            span[4] = (byte)FrameType.Request;
            span[5] = HeaderFlags;
            BinaryPrimitives.WriteUInt16LittleEndian(span[6..], 0);
            BinaryPrimitives.WriteUInt64LittleEndian(span[8..], rid);
            var p = span[Wire.HeaderSize..];
            _payload.AsSpan(0, Length).CopyTo(p);
            p[29] |= (byte)RequestFlags.Resume;
            ResumeFields.Write(p[Length..], _delivered.AsSpan(0, _deliveredLength), (uint)Math.Min(_deliveredText, uint.MaxValue));
            w.Advance(Wire.HeaderSize + n);
        }
    }

    /// <summary>Forgets the held output of a lost attempt, before the request runs again.</summary>
    public void DropHeld()
    {
        lock (Lock) _heldLength = 0;
    }

    /// <summary>
    /// Keeps a copy of a replica's refusal (its FINAL's flags and payload) while the retry waits out its jitter delay,
    /// so the client gets that answer if the retry cannot go anywhere. Rare path: a pooled buffer, returned on release.
    /// </summary>
    public void KeepRefusal(byte flags, ReadOnlySpan<byte> payload)
    {
        lock (Lock)
        {
            if (_payload is null) return;
            if (_refusal is null || _refusal.Length < payload.Length)
            {
                if (_refusal is not null) ArrayPool<byte>.Shared.Return(_refusal);
                _refusal = ArrayPool<byte>.Shared.Rent(Math.Max(payload.Length, 1));
            }
            payload.CopyTo(_refusal);
            _refusalLength = payload.Length;
            _refusalFlags = flags;
        }
    }

    /// <summary>Writes the refusal kept by <see cref="KeepRefusal"/> as a FINAL for the client; false when none is
    /// kept (nothing written).</summary>
    public bool PassRefusal(IBufferWriter<byte> w)
    {
        lock (Lock)
        {
            if (_refusal is null) return false;
            FrameCopy.Write(w, FrameType.Final, _refusalFlags, ClientId, _refusal.AsSpan(0, _refusalLength));
            return true;
        }
    }

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

    /// <summary>Returns the payload copy, any held output, any kept refusal and the delivered record to the pool (once).</summary>
    public void Release()
    {
        if (Interlocked.Exchange(ref _released, 1) != 0) return;
        byte[]? p, h, f, d;
        lock (Lock)
        {
            p = _payload;
            _payload = null;
            h = _held;
            _held = null;
            _heldLength = 0;
            f = _refusal;
            _refusal = null;
            d = _delivered;
            _delivered = null;
            _deliveredLength = 0;
        }
        if (p is not null) ArrayPool<byte>.Shared.Return(p);
        if (h is not null) ArrayPool<byte>.Shared.Return(h);
        if (f is not null) ArrayPool<byte>.Shared.Return(f);
        if (d is not null) ArrayPool<byte>.Shared.Return(d);
    }
}

/// <summary>
/// What the router changes in a request's payload before it forwards it (the current burst mode, cascades and
/// shadows): a cap on max_tokens, a tightened or default deadline, and the <c>logprobs</c> flag. Default: nothing.
/// </summary>
internal readonly record struct RequestShaping(Burst.ModePolicy? Policy, bool Logprobs, bool Batch = false)
{
    /// <summary>Rewrites the fixed part of a REQUEST payload copy in place.</summary>
    public void Apply(Span<byte> p)
    {
        if (Policy is { } mode)
        {
            BinaryPrimitives.WriteUInt32LittleEndian(p, mode.ApplyMaxTokens(BinaryPrimitives.ReadUInt32LittleEndian(p)));
            BinaryPrimitives.WriteUInt32LittleEndian(p[24..], mode.ApplyDeadlineMs(BinaryPrimitives.ReadUInt32LittleEndian(p[24..])));
        }
        p[29] &= unchecked((byte)~RequestFlags.Route);
        if (Logprobs) p[29] |= (byte)RequestFlags.Logprobs;
        if (Batch) p[28] = 1;
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
