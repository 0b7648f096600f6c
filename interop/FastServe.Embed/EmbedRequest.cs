using System.Buffers;
using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Text;
using FastServe.Runtime.Generation;
using FastServe.Runtime.Tokenization;
using FastServe.Scheduler.Engine;

namespace FastServe.Embed;

/// <summary>
/// One submitted request as the C caller sees it (fs_request): the engine's sink for its tokens and its one result,
/// which turns ids into released text (the same detokenizer and stop matcher every server path uses) and hands each
/// event either to the caller's callback, at once, or to a queue that fs_request_next drains.
/// <para>Threads: the engine calls <see cref="OnToken"/> and <see cref="OnFinished"/> on its scheduler thread (a
/// request refused at admission: OnFinished on the submitting thread, inside Submit). Everything below is guarded by
/// this request's own lock (one per request: no lock is shared between requests or engines); the callback runs under
/// it, so once <see cref="Free"/> returns no callback of this request runs again.</para>
/// </summary>
internal sealed unsafe class EmbedRequest : IRequestSink
{
    private readonly object _gate = new();
    private readonly EmbedEngine _engine;
    private readonly TextTokenizer _tokenizer;
    private readonly IncrementalDecoder _decoder;
    private readonly StopMatcher _stop;
    private readonly bool _ignoreEos;
    private readonly delegate* unmanaged<FsEvent*, void*, void> _callback;
    private readonly void* _user;

    // Written on the scheduler thread only (token and final paths never overlap for one request).
    private readonly ArrayBufferWriter<byte> _decoded = new(64);
    private readonly ArrayBufferWriter<byte> _released = new(64);
    private int _tokens;

    // Under _gate: the engine's handle, a cancel asked for before it was known, the pull queue (token events, their
    // released text packed in _queuedText), the final result and its trailing text, and the caller's state.
    private RequestHandle? _handle;
    private bool _cancelAsked;
    private readonly Queue<Queued> _queue = new();
    private readonly ArrayBufferWriter<byte> _queuedText = new(256);
    private RequestResult? _final;
    private long _finalEmitted;
    private byte[] _finalText = [];
    private bool _finalDelivered;
    private bool _freed;
    // Set (outside _gate) whenever an event, the final or a free arrives; reset under _gate by a consumer that found
    // nothing. Waking outside the lock means a woken consumer never spins on a lock the scheduler thread still holds.
    private readonly ManualResetEventSlim _ready = new(false);
    // The pinned bytes the last event's text, error code and message point into (valid until the next event).
    private byte[] _out = [];

    private readonly record struct Queued(int Id, int Index, int TextOffset, int TextLength, long Emitted);

    public EmbedRequest(EmbedEngine engine, SamplingParams sampling, delegate* unmanaged<FsEvent*, void*, void> callback, void* user)
    {
        _engine = engine;
        _tokenizer = engine.Tokenizer;
        _decoder = _tokenizer.CreateDecoder();
        _stop = new StopMatcher(sampling.Stop);
        _ignoreEos = sampling.IgnoreEos;
        _callback = callback;
        _user = user;
    }

    public bool HasCallback => _callback != null;

    /// <summary>Set once Submit returned; a cancel asked for earlier (from a callback inside Submit) is applied now.</summary>
    public void Attach(RequestHandle handle)
    {
        bool cancel;
        lock (_gate)
        {
            _handle = handle;
            cancel = _cancelAsked;
        }
        if (cancel) handle.Cancel();
    }

    /// <summary>Ends the request with status cancelled at the engine's next iteration (during prefill too); its final
    /// event still comes. Any thread, any number of times; a no-op once it has ended.</summary>
    public void Cancel()
    {
        RequestHandle? h;
        lock (_gate)
        {
            h = _handle;
            if (h is null) _cancelAsked = true;
        }
        h?.Cancel();
    }

    /// <summary>fs_request_free: cancels the request if it still runs and drops every undelivered event; wakes a
    /// thread waiting in <see cref="Next"/> (it gets FS_E_INVALID_HANDLE).</summary>
    public void Free()
    {
        lock (_gate)
        {
            _freed = true;
            _queue.Clear();
        }
        _ready.Set();
        Cancel();
    }

    public void OnToken(long tag, in TokenEvent token)
    {
        try
        {
            long emitted = Stopwatch.GetTimestamp();
            int index = _tokens++;
            _released.ResetWrittenCount();
            if (_ignoreEos || !_tokenizer.IsEos(token.Id))
            {
                _decoded.ResetWrittenCount();
                _decoder.AppendUtf8(token.Id, _decoded);
                _stop.AppendUtf8(_decoded.WrittenSpan, _released);
            }
            lock (_gate)
            {
                if (_freed) return;
                if (_callback != null)
                {
                    FsEvent ev = default;
                    ev.Size = (uint)sizeof(FsEvent);
                    ev.Kind = (int)FsEventKind.Token;
                    ev.TokenId = token.Id;
                    ev.TokenIndex = index;
                    ev.EmittedNs = Nanoseconds(emitted);
                    FillText(ref ev, _released.WrittenSpan, null, null);
                    Invoke(&ev);
                    return;
                }
                int offset = _queuedText.WrittenCount;
                _queuedText.Write(_released.WrittenSpan);
                _queue.Enqueue(new Queued(token.Id, index, offset, _released.WrittenCount, emitted));
            }
            _ready.Set();
        }
        catch
        {
            // A sink must never throw into the engine's loop; the final event still reports the request's end.
        }
    }

    public void OnFinished(long tag, RequestResult result)
    {
        long emitted = Stopwatch.GetTimestamp();
        try
        {
            _released.ResetWrittenCount();
            if (result.Finish != FinishReason.Stop)
            {
                _decoded.ResetWrittenCount();
                _decoder.FlushUtf8(_decoded);
                _stop.AppendUtf8(_decoded.WrittenSpan, _released);
                _stop.FlushUtf8(_released);
            }
            lock (_gate)
            {
                _final = result;
                _finalEmitted = emitted;
                if (_freed) return;
                if (_callback != null)
                {
                    FsEvent ev = default;
                    FillFinal(ref ev, result, _released.WrittenSpan, emitted);
                    _finalDelivered = true;
                    Invoke(&ev);
                    return;
                }
                _finalText = _released.WrittenSpan.ToArray();
            }
            _ready.Set();
        }
        catch
        {
            lock (_gate)
            {
                _finalEmitted = emitted;
                _final ??= result;
            }
            _ready.Set();
        }
    }

    /// <summary>fs_request_next: the next event into <paramref name="ev"/>, waiting up to <paramref name="timeoutMs"/>
    /// (negative: no limit). Ok, Timeout, Ended (the final was delivered), State (a callback request), InvalidHandle
    /// (freed while waiting).</summary>
    public FsStatus Next(int timeoutMs, FsEvent* ev)
    {
        if (_callback != null)
        {
            LastError.Set(FsStatus.State, "request.callback_mode", "this request delivers its events to its callback; fs_request_next is for requests without one");
            return FsStatus.State;
        }
        long until = timeoutMs > 0 ? Environment.TickCount64 + timeoutMs : 0;
        while (true)
        {
            lock (_gate)
            {
                if (_freed) return FsStatus.InvalidHandle;
                if (_queue.TryDequeue(out var q))
                {
                    *ev = default;
                    ev->Size = (uint)sizeof(FsEvent);
                    ev->Kind = (int)FsEventKind.Token;
                    ev->TokenId = q.Id;
                    ev->TokenIndex = q.Index;
                    ev->EmittedNs = Nanoseconds(q.Emitted);
                    FillText(ref *ev, _queuedText.WrittenSpan.Slice(q.TextOffset, q.TextLength), null, null);
                    // The packed text is reset whenever the queue empties, so it never outgrows one burst of tokens.
                    if (_queue.Count == 0) _queuedText.ResetWrittenCount();
                    return FsStatus.Ok;
                }
                if (_final is { } final)
                {
                    if (_finalDelivered)
                    {
                        LastError.Set(FsStatus.Ended, "request.ended", "the request's final event was already delivered");
                        return FsStatus.Ended;
                    }
                    _finalDelivered = true;
                    FillFinal(ref *ev, final, _finalText, _finalEmitted);
                    return FsStatus.Ok;
                }
                _ready.Reset();
            }
            int wait = timeoutMs < 0 ? Timeout.Infinite : (int)Math.Max(0, until - Environment.TickCount64);
            if (timeoutMs == 0 || (timeoutMs > 0 && wait == 0))
            {
                LastError.Set(FsStatus.Timeout, "request.timeout", "no event within the timeout");
                return FsStatus.Timeout;
            }
            _ready.Wait(wait);
        }
    }

    private void Invoke(FsEvent* ev)
    {
        var outer = CallbackScope.Engine;
        CallbackScope.Engine = _engine;
        try { _callback(ev, _user); }
        finally { CallbackScope.Engine = outer; }
    }

    // fs_event.emitted_ns is CLOCK_MONOTONIC in nanoseconds, which is what Stopwatch reads on Linux (frequency 1 GHz).
    private static long Nanoseconds(long ticks) =>
        Stopwatch.Frequency == 1_000_000_000 ? ticks : (long)(ticks * (1e9 / Stopwatch.Frequency));

    private void FillFinal(ref FsEvent ev, RequestResult r, ReadOnlySpan<byte> text, long emitted)
    {
        ev = default;
        ev.Size = (uint)sizeof(FsEvent);
        ev.Kind = (int)FsEventKind.Final;
        ev.TokenId = -1;
        ev.TokenIndex = -1;
        ev.Status = (int)r.Status;
        ev.FinishReason = r.Finish is { } f ? (int)f + 1 : 0;
        ev.PromptTokens = r.PromptTokens;
        ev.CachedPromptTokens = r.CachedPromptTokens;
        ev.CompletionTokens = r.OutputTokens.Length;
        ev.Preemptions = r.Preemptions;
        var ts = r.Timestamps;
        ev.TtftMs = double.IsNaN(ts.TimeToFirstToken) ? -1 : ts.TimeToFirstToken * 1000;
        ev.LatencyMs = double.IsNaN(ts.EndToEnd) ? -1 : ts.EndToEnd * 1000;
        ev.RetryAfterMs = r.RetryAfter is { } ra ? ra.TotalMilliseconds : -1;
        ev.EmittedNs = Nanoseconds(emitted);
        FillText(ref ev, text, r.ErrorCode, r.ErrorCode is null ? null : r.Message ?? "");
    }

    // Copies text, code and message (each NUL-terminated) into this request's pinned buffer and points ev at them.
    private void FillText(ref FsEvent ev, ReadOnlySpan<byte> text, string? code, string? message)
    {
        int need = text.Length + 1 + LastError.Utf8Length(code) + LastError.Utf8Length(message);
        if (_out.Length < need) _out = GC.AllocateUninitializedArray<byte>(Math.Max(need, Math.Min(2 * _out.Length, 1 << 20)), pinned: true);
        byte* p = (byte*)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(_out));
        text.CopyTo(_out);
        _out[text.Length] = 0;
        ev.Text = p;
        ev.TextLength = (nuint)text.Length;
        int at = text.Length + 1;
        ev.ErrorCode = code is null ? null : p + at;
        if (code is not null) at += Put(code, at);
        ev.ErrorMessage = message is null ? null : p + at;
        if (message is not null) Put(message, at);
    }

    private int Put(string s, int at)
    {
        int n = Encoding.UTF8.GetBytes(s, _out.AsSpan(at));
        _out[at + n] = 0;
        return n + 1;
    }
}

/// <summary>The engine whose callback this thread is running, if any: fs_engine_free of that engine from inside its
/// own callback would wait for its own scheduler thread, so it is refused (FS_E_STATE).</summary>
internal static class CallbackScope
{
    [ThreadStatic] public static EmbedEngine? Engine;
}
