using System.Buffers;
using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using System.Text;
using FastServe.Protocol;
using FastServe.Protocol.Net;
using FastServe.Runtime.Generation;
using FastServe.Scheduler.Engine;
using FastServe.Server.Ipc;

namespace FastServe.Server.Engine;

/// <summary>
/// The engine's end of one worker's IPC link. A reader thread turns Submit/Cancel/Report messages into engine calls;
/// the engine delivers tokens and results to this sink on its scheduler thread, where they are appended to the
/// link's buffer; <see cref="Signal"/> (after each scheduler iteration) sends the whole batch with one write, from
/// the scheduler thread when the socket takes it at once, else through the link's writer thread. When the worker goes away, every request it submitted is cancelled.
/// </summary>
internal sealed class EngineLink : IpcReader, IRequestSink
{
    private sealed class Entry
    {
        public RequestHandle? Handle;
        public long EngineReceived;
        // Log-probability summary of a request that asked for it (scheduler thread only).
        public bool Logprobs;
        // Per-token log-probabilities for the worker (Submit flag 8) and how many alternatives each carries.
        public bool TokenLogprobs;
        public int TopLogprobs;
        public int Tokens;
        public double LogprobSum;
        public float LogprobMin = float.PositiveInfinity;
    }

    private readonly EngineHost _host;
    private readonly FrameConnection _conn;
    private readonly OutBuffer _out;
    private readonly ConcurrentDictionary<long, Entry> _active = new();
    private readonly AutoResetEvent _wake = new(false);
    private int _dirty;             // set by producers (any thread), cleared by Signal
    private volatile bool _closed;

    public EngineLink(EngineHost host, Socket socket)
    {
        _host = host;
        _conn = new FrameConnection(socket, Ipc.Ipc.MaxMessage, 256L << 20, why => Close($"send failed: {why}"), receiveBytes: 1 << 20);
        _out = _conn.Out;
    }

    public int Pid { get; private set; }
    public int Index { get; private set; } = -1;
    public int Active => _active.Count;
    public bool IsClosed => _closed;

    public void Start()
    {
        new Thread(ReadLoop) { IsBackground = true, Name = "fastserve-ipc-read" }.Start();
        new Thread(WriteLoop) { IsBackground = true, Name = "fastserve-ipc-write" }.Start();
    }

    // ---- sink (scheduler thread, or the reader thread for immediate rejections) --------------------------------

    public void OnToken(long tag, in TokenEvent token)
    {
        // Only requests that asked for log-probabilities carry a top list; the others pay no lookup.
        if (token.Top is not null && _active.TryGetValue(tag, out var e))
        {
            if (e.Logprobs)
            {
                e.Tokens++;
                e.LogprobSum += token.Logprob;
                e.LogprobMin = Math.Min(e.LogprobMin, token.Logprob);
            }
            if (e.TokenLogprobs)
            {
                lock (_out.Lock) Ipc.Ipc.WriteTokenLogprobs(_out.Writer, (ulong)tag, token.Id, token.Logprob, token.Top, e.TopLogprobs);
                Volatile.Write(ref _dirty, 1);
                return;
            }
        }
        lock (_out.Lock) Ipc.Ipc.WriteTokens(_out.Writer, (ulong)tag, token.Id);
        Volatile.Write(ref _dirty, 1);
    }

    public void OnFinished(long tag, RequestResult r)
    {
        _active.TryRemove(tag, out var entry);
        var ts = r.Timestamps;
        var f = new FinalMsg
        {
            Status = (byte)r.Status,
            Finish = (byte)(r.Finish switch
            {
                FinishReason.Length => WireFinish.Length,
                FinishReason.Eos => WireFinish.Eos,
                FinishReason.Stop => WireFinish.Stop,
                FinishReason.ContextFull => WireFinish.ContextFull,
                _ => WireFinish.None,
            }),
            RetryAfterMs = r.RetryAfter is { } ra ? (uint)Math.Clamp(ra.TotalMilliseconds, 1, uint.MaxValue) : 0,
            PromptTokens = (uint)r.PromptTokens,
            CachedPromptTokens = (uint)r.CachedPromptTokens,
            CompletionTokens = (uint)r.OutputTokens.Length,
            Preemptions = (uint)r.Preemptions,
            EngineReceived = entry?.EngineReceived ?? 0,
            Admitted = ts.Admitted,
            FirstScheduled = ts.FirstScheduled,
            FirstToken = ts.FirstToken,
            Finished = ts.Finished,
            DeviceUs = (uint)Math.Clamp(Math.Round(r.DeviceTime.TotalMicroseconds), 0, uint.MaxValue),
        };
        if (entry is { Logprobs: true })
        {
            f.HasLogprobs = 1;
            f.LogprobMean = entry.Tokens == 0 ? float.NaN : (float)(entry.LogprobSum / entry.Tokens);
            f.LogprobMin = entry.Tokens == 0 ? float.NaN : entry.LogprobMin;
        }
        lock (_out.Lock) Ipc.Ipc.WriteFinal(_out.Writer, (ulong)tag, f, r.ErrorCode, r.Message);
        Volatile.Write(ref _dirty, 1);
    }

    /// <summary>Sends what was appended since the last call, on the calling thread when the socket takes it at once,
    /// else by waking the writer. Any thread.</summary>
    public void Signal()
    {
        if (Interlocked.Exchange(ref _dirty, 0) == 1 && !_out.TrySendNow()) _wake.Set();
    }

    /// <summary>Appends a message built by <paramref name="write"/> and wakes the writer.</summary>
    public void Send<TState>(TState state, Action<IBufferWriter<byte>, TState> write)
    {
        lock (_out.Lock) write(_out.Writer, state);
        Volatile.Write(ref _dirty, 1);
        Signal();
    }

    private void WriteLoop()
    {
        while (!_closed)
        {
            _wake.WaitOne(200);
            if (!_out.FlushBlocking()) break;
        }
    }

    // ---- reader ---------------------------------------------------------------------------------------------

    private void ReadLoop()
    {
        var r = _conn.Run(this);
        Close(r.End switch
        {
            FrameRunEnd.PeerClosed => "the peer closed the link",
            FrameRunEnd.SocketError => r.Message,
            _ => ReadError ?? "stopped",
        });
    }

    // After each read: immediate rejections produced while handling it go out at once.
    protected override bool ReadDone()
    {
        Signal();
        return !_closed;
    }

    protected override bool Handle(in FrameHeader h, ReadOnlySpan<byte> payload)
    {
        long tag = (long)h.Id;
        switch ((IpcType)h.Type)
        {
            case IpcType.WorkerHello:
                if (payload.Length < 8) return false;
                Pid = MemoryMarshal.Read<int>(payload);
                Index = MemoryMarshal.Read<int>(payload[4..]);
                _host.OnWorkerHello(this);
                return true;
            case IpcType.Submit:
            {
                if (!Ipc.Ipc.TryRead<SubmitMsg>(payload, out var m, out var tail) || tail.Length != ((long)m.PromptCount + m.ResumeCount) * 4) return false;
                long engineReceived = Stopwatch.GetTimestamp();
                var all = MemoryMarshal.Cast<byte, int>(tail);
                var prompt = all[..(int)m.PromptCount].ToArray();
                int[] resumed = m.ResumeCount == 0 ? [] : all[(int)m.PromptCount..].ToArray();
                var sampling = new SamplingParams
                {
                    MaxTokens = (int)Math.Min(m.MaxTokens, int.MaxValue),
                    Temperature = m.Temperature,
                    TopP = m.TopP,
                    TopK = m.TopK,
                    Seed = (m.Flags & 1) != 0 ? m.Seed : null,
                    IgnoreEos = (m.Flags & 2) != 0,
                    // The sampler fills a top list of this length; at least 1 so the chosen token's value is computed.
                    Logprobs = (m.Flags & 8) != 0 ? Math.Clamp((int)m.TopLogprobs, 1, RequestRules.MaxLogprobs) : (m.Flags & 4) != 0 ? 1 : 0,
                };
                var entry = new Entry
                {
                    EngineReceived = engineReceived,
                    Logprobs = (m.Flags & 4) != 0,
                    TokenLogprobs = (m.Flags & 8) != 0,
                    TopLogprobs = Math.Min((int)m.TopLogprobs, RequestRules.MaxLogprobs),
                };
                _active[tag] = entry;
                if (_host.Engine is null)
                {
                    OnFinished(tag, new RequestResult { Status = RequestStatus.Cancelled, ErrorCode = "engine.starting", Message = "the engine is still loading", PromptTokens = (int)m.PromptCount });
                    return true;
                }
                entry.Handle = _host.Engine!.Submit(new EngineRequest
                {
                    Prompt = prompt,
                    Resumed = resumed,
                    Sampling = sampling,
                    Priority = m.Priority == 1 ? Priority.Batch : Priority.Interactive,
                    Deadline = m.DeadlineMs > 0 ? TimeSpan.FromMilliseconds(m.DeadlineMs) : null,
                    ReceivedTicks = m.ReceivedTicks,
                    Sink = this,
                    SinkTag = tag,
                });
                return true;
            }
            case IpcType.Cancel:
                if (_active.TryGetValue(tag, out var e)) e.Handle?.Cancel();
                return true;
            case IpcType.Report:
                if (!Ipc.Ipc.TryRead<ReportMsg>(payload, out var rep, out _)) return false;
                _host.Metrics?.ObserveRequest(rep);
                return true;
            case IpcType.Counters:
            {
                var values = new List<CounterValue>();
                if (!Ipc.WorkerCounters.TryRead(payload, values)) return false;
                if (Index >= 0) _host.WorkerCounters.Update(Index, Pid, values);
                return true;
            }
            default:
                return false;
        }
    }

    /// <summary>Closes the link and cancels every request the worker submitted (it can no longer receive them).</summary>
    public void Close(string why)
    {
        if (_closed) return;
        _closed = true;
        _conn.Close();
        _wake.Set();
        foreach (var kv in _active) kv.Value.Handle?.Cancel();
        _host.OnLinkClosed(this, why);
    }
}
