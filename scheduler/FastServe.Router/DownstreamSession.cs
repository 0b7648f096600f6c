using System.Net.Sockets;
using FastServe.Protocol;
using FastServe.Protocol.Net;

namespace FastServe.Router;

/// <summary>
/// One client connection to the router. <see cref="FrameSession{TRequest}"/> runs the connection (receive loop,
/// HELLO, PING, LOAD_QUERY, the id and per-connection limit checks, timeouts); here a REQUEST gets what a router can
/// check of it (frame size, draining) and goes to the router, which forwards it upstream; CANCEL goes to the replica
/// running the request. Requests forwarded in one batch leave in one send per upstream connection. Closing (by either
/// side) cancels the client's requests upstream.
/// </summary>
internal sealed class DownstreamSession : FrameSession<RoutedRequest>
{
    private readonly RouterHost _router;
    private readonly RouterOptions _opt;
    private readonly HashSet<UpstreamConnection> _touched = [];         // receive loop only

    public DownstreamSession(RouterHost router, Socket socket, long id) : base(socket, id, router.SessionOptions)
    {
        _router = router;
        _opt = router.Options;
    }

    /// <summary>The session settings of a router with <paramref name="o"/> (one object for all its sessions).</summary>
    internal static FrameSessionOptions SessionOptionsOf(RouterOptions o) =>
        new("router", o.MaxFrame, o.MaxInFlight, o.ClientSendLimitBytes, RouterOptions.Ticks(o.HelloTimeoutMs), RouterOptions.Ticks(o.FrameTimeoutMs),
            $"a frame did not complete within {o.FrameTimeoutMs} ms", RouterOptions.Ticks(o.IdleTimeoutMs));

    protected override HelloOk HelloReply()
    {
        var fleet = _router.Fleet;
        return new HelloOk(Wire.Major, Wire.Minor, _opt.MaxFrame, fleet.MaxPromptTokens(), _opt.MaxInFlight,
            _opt.IdleTimeoutMs, fleet.ContextLength(), _opt.Name);
    }

    protected override LoadReport CurrentLoad(long now) => _router.CurrentLoad(now);

    protected override void OnRequest(in FrameHeader h, ReadOnlySpan<byte> payload, long now)
    {
        ulong id = h.Id;
        // The replica checks the rest; the router only needs the fixed part (the deadline lives there).
        if (payload.Length < Wire.RequestFixedSize) { Reject(id, WireStatus.BadRequest, "frame.truncated", "malformed REQUEST payload"); return; }
        if (_router.IsDraining) { Reject(id, WireStatus.Draining, "router.draining", "the router is draining; send the request elsewhere", 0); return; }
        var req = new RoutedRequest(this, id, h.Flags, payload, now, _opt.MaxAttempts);
        AddInFlight(id, req);
        _router.Admit(req, now, _touched);
    }

    protected override void CancelRequest(RoutedRequest request) => RouterHost.CancelUpstream(request);

    protected override void OnDrain(ReadOnlySpan<byte> payload) =>
        Error(WireStatus.Unauthorized, "a router takes no DRAIN frame; send it SIGTERM, or drain the replicas themselves");

    protected override void OnRejected(WireStatus status) => _router.CountRejected();

    protected override void OnClosed() => _router.OnSessionClosed(this);

    // REQUESTs of one read leave in one send per upstream connection, even when a later frame was fatal.
    protected override void OnFramesConsumed()
    {
        foreach (var u in _touched) u.Flush();
        _touched.Clear();
    }

    protected override void OnInternalError(Exception e) =>
        _router.Log($"client session {Id}: internal error: {e.GetType().Name}: {e.Message}");
}
