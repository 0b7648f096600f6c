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

    public DownstreamSession(RouterHost router, Socket socket, long id, Stream? stream = null, bool trusted = false)
        : base(socket, id, router.SessionOptions, stream, trusted)
    {
        _router = router;
        _opt = router.Options;
    }

    /// <summary>The session settings of a router with <paramref name="o"/> (one object for all its sessions).</summary>
    internal static FrameSessionOptions SessionOptionsOf(RouterOptions o) =>
        new("router", o.MaxFrame, o.MaxInFlight, o.ClientSendLimitBytes, RouterOptions.Ticks(o.HelloTimeoutMs), RouterOptions.Ticks(o.FrameTimeoutMs),
            $"a frame did not complete within {o.FrameTimeoutMs} ms", RouterOptions.Ticks(o.IdleTimeoutMs), o.ApiKeys);

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
        // The replica checks values; the router checks the layout, since it reads the routing fields at its end.
        var pe = RequestView.TryParse(payload, out var v);
        if (pe != RequestParseError.None) { Reject(id, WireStatus.BadRequest, RequestView.DetailCode(pe), "malformed REQUEST payload"); return; }
        if (_router.IsDraining) { Reject(id, WireStatus.Draining, "router.draining", "the router is draining; send the request elsewhere", 0); return; }
        var d = _router.Decide(v);
        if (d.Rejected) { Reject(id, d.RejectStatus, d.RejectCode, d.RejectMessage, d.RetryAfterMs); return; }
        var req = new RoutedRequest(this, id, h.Flags, payload, now, _opt.MaxAttempts, v.RouteOffset, d.Pool, d.Shaping) { Tier = d.Tier, DrawnVersion = d.DrawnVersion };
        AddInFlight(id, req);
        _router.Admit(req, now, _touched, d.Shadow);
    }

    protected override void CancelRequest(RoutedRequest request) => RouterHost.CancelUpstream(request);

    protected override void OnDrain(ReadOnlySpan<byte> payload) =>
        Error(WireStatus.Unauthorized, "a router takes no DRAIN frame; send it SIGTERM, or drain the replicas themselves");

    protected override void OnRejected(WireStatus status) => _router.CountRejected();

    // ADMIN: the token first (constant time), then one routing command; its answer is ADMIN_OK with JSON, a refused
    // command a non-fatal bad_request saying why.
    protected override void OnAdmin(ReadOnlySpan<byte> payload)
    {
        if (!AdminView.TryParse(payload, out var a)) { Error(WireStatus.BadRequest, "malformed ADMIN payload"); return; }
        if (!_router.CheckAdminToken(a.Token)) { Error(WireStatus.Unauthorized, "ADMIN needs the router's admin token"); return; }
        if (!Utf8Text.IsValid(a.Command)) { Error(WireStatus.BadRequest, "the ADMIN command is not valid UTF-8"); return; }
        string? json = _router.Admin(Utf8Text.Decode(a.Command), out var error);
        if (json is null) { Error(WireStatus.BadRequest, error); return; }
        lock (Out.Lock) FrameWriter.AdminOk(Out.Writer, json);
    }

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
