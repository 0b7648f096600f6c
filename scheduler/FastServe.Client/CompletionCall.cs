using System.Buffers;
using System.Diagnostics;
using System.Threading.Channels;
using FastServe.Protocol;

namespace FastServe.Client;

/// <summary>
/// One request in flight on a <see cref="FastServeClient"/>: its id, its delta stream and its completion. The
/// <see cref="Completion"/> task completes exactly once, with the server's FINAL or a client-side failure; it never
/// faults. Continuations run on the thread pool, never on the client's receive loop.
/// </summary>
public sealed class CompletionCall
{
    private static readonly ChannelReader<CompletionDelta> s_noDeltas = CreateEmpty();

    private readonly FastServeClient? _owner;
    private readonly TaskCompletionSource<CompletionResult> _tcs = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly Channel<CompletionDelta>? _deltas;
    private readonly bool _collect;
    private readonly ICompletionObserver? _observer;
    private int _cancelSent;

    // Written only by the client's receive loop until the call completes (the completion publishes them).
    private ArrayBufferWriter<int>? _ids;
    private ArrayBufferWriter<byte>? _text;
    private List<TokenLogprobs>? _logprobs;
    private int _received;
    private long _firstToken;

    internal CompletionCall(FastServeClient? owner, ulong id, bool stream, bool collect, ICompletionObserver? observer = null)
    {
        _owner = owner;
        _observer = observer;
        Id = id;
        _collect = collect;
        if (stream) _deltas = Channel.CreateUnbounded<CompletionDelta>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });
    }

    /// <summary>The request id on the connection (assigned by the client, increasing from 1).</summary>
    public ulong Id { get; }

    /// <summary>
    /// The deltas as they arrive; completes after the last one, before <see cref="Completion"/> completes. Empty for a
    /// call started by <see cref="FastServeClient.CompleteAsync"/> or on a client with
    /// <see cref="FastServeClientOptions.CollectOutput"/> off. Unread deltas stay buffered (at most the output's size).
    /// </summary>
    public ChannelReader<CompletionDelta> Deltas => _deltas?.Reader ?? s_noDeltas;

    /// <summary>The outcome; completes exactly once and never faults.</summary>
    public Task<CompletionResult> Completion => _tcs.Task;

    /// <summary>When the call was started (<see cref="Stopwatch"/> ticks).</summary>
    public long StartedTimestamp { get; internal set; }

    /// <summary>When the first token id arrived (<see cref="Stopwatch"/> ticks), 0 until then.</summary>
    public long FirstTokenTimestamp => Volatile.Read(ref _firstToken);

    /// <summary>When the call completed (<see cref="Stopwatch"/> ticks), 0 until then.</summary>
    public long FinalTimestamp => _tcs.Task.IsCompleted ? _tcs.Task.Result.FinalTimestamp : 0;

    /// <summary>
    /// Asks the server to stop the request (sends CANCEL once; later calls do nothing). The call still completes through
    /// the server's FINAL, normally with status <c>cancelled</c>, or <c>ok</c> if it had already finished.
    /// </summary>
    public void Cancel()
    {
        if (_tcs.Task.IsCompleted || Interlocked.Exchange(ref _cancelSent, 1) != 0) return;
        _owner?.SendCancel(Id);
    }

    internal void OnDelta(in DeltaView d, long now)
    {
        int n = d.Count;
        if (n > 0 && _firstToken == 0) Volatile.Write(ref _firstToken, now);
        _received += n;
        if (_collect && n > 0)
        {
            _ids ??= new ArrayBufferWriter<int>(64);
            var dst = _ids.GetSpan(n);
            for (int i = 0; i < n; i++) dst[i] = d.Id(i);
            _ids.Advance(n);
        }
        if (_collect && !d.Text.IsEmpty)
        {
            _text ??= new ArrayBufferWriter<byte>(256);
            d.Text.CopyTo(_text.GetSpan(d.Text.Length));
            _text.Advance(d.Text.Length);
        }
        // Only a request that asked for per-token log-probabilities (protocol 1.4) gets a section, so only it allocates.
        TokenLogprobs[]? logprobs = d.Logprobs.IsEmpty ? null : DeltaLogprobs.Read(d.Logprobs);
        if (_collect && logprobs is not null) (_logprobs ??= new List<TokenLogprobs>(64)).AddRange(logprobs);
        if (_deltas is not null)
        {
            var ids = n == 0 ? [] : new int[n];
            for (int i = 0; i < n; i++) ids[i] = d.Id(i);
            _deltas.Writer.TryWrite(new CompletionDelta(ids, Utf8Text.Decode(d.Text), logprobs));
        }
    }

    internal void OnFinal(in FinalInfo f, ReadOnlySpan<byte> detail, ReadOnlySpan<byte> message, long now)
    {
        bool ok = f.Status == WireStatus.Ok;
        Complete(new CompletionResult
        {
            Status = f.Status,
            StatusName = WireNames.Of(f.Status),
            Finish = ok ? f.Finish : WireFinish.None,
            Detail = detail.IsEmpty ? null : Utf8Text.Decode(detail),
            Message = message.IsEmpty ? null : Utf8Text.Decode(message),
            Retriable = f.Retriable,
            RetryAfter = f.RetryAfterMs == 0 ? null : TimeSpan.FromMilliseconds(f.RetryAfterMs),
            PromptTokens = Sat(f.PromptTokens),
            CachedPromptTokens = Sat(f.CachedPromptTokens),
            CompletionTokens = Sat(f.CompletionTokens),
            Preemptions = Sat(f.Preemptions),
            Ids = _ids is null ? [] : _ids.WrittenSpan.ToArray(),
            Text = _text is null ? "" : Utf8Text.Decode(_text.WrittenSpan),
            ReceivedTokens = _received,
            ServerTimings = ServerTimings.From(f.Timings),
            LogprobMean = f.HasLogprobs ? f.LogprobMean : double.NaN,
            LogprobMin = f.HasLogprobs ? f.LogprobMin : double.NaN,
            TokenLogprobs = _logprobs?.ToArray(),
            StartedTimestamp = StartedTimestamp,
            FirstTokenTimestamp = _firstToken,
            FinalTimestamp = now,
        });
    }

    /// <summary>Completes the call without a FINAL (connection lost, send buffer full, refused or throttled before sending).</summary>
    internal void Fail(ClientFailure failure, WireStatus status, string statusName, string detail, string message, bool retriable,
        uint retryAfterMs = 0)
    {
        long now = Stopwatch.GetTimestamp();
        Complete(new CompletionResult
        {
            Status = status,
            StatusName = statusName,
            ClientFailure = failure,
            Detail = detail,
            Message = message,
            Retriable = retriable,
            RetryAfter = retryAfterMs == 0 ? null : TimeSpan.FromMilliseconds(retryAfterMs),
            ReceivedTokens = _received,
            Ids = _ids is null ? [] : _ids.WrittenSpan.ToArray(),
            Text = _text is null ? "" : Utf8Text.Decode(_text.WrittenSpan),
            StartedTimestamp = StartedTimestamp == 0 ? now : StartedTimestamp,
            FirstTokenTimestamp = _firstToken,
            FinalTimestamp = now,
        });
    }

    private void Complete(CompletionResult r)
    {
        _deltas?.Writer.TryComplete();
        if (_tcs.TrySetResult(r)) _observer?.OnCompleted(this, r);
    }

    private static int Sat(uint x) => (int)Math.Min(x, int.MaxValue);

    private static ChannelReader<CompletionDelta> CreateEmpty()
    {
        var c = Channel.CreateUnbounded<CompletionDelta>();
        c.Writer.Complete();
        return c.Reader;
    }
}

/// <summary>Told of a call's outcome on the thread that completes it (normally the client's receive loop), once, right
/// after <see cref="CompletionCall.Completion"/> completes. For the load generator, which records the outcome and
/// starts the next request there instead of paying a thread-pool hop per request. Must be quick and never throw.</summary>
internal interface ICompletionObserver
{
    void OnCompleted(CompletionCall call, CompletionResult result);
}
