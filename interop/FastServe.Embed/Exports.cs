using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Unicode;
using FastServe.Runtime;
using FastServe.Runtime.Generation;
using FastServe.Runtime.Model;
using FastServe.Runtime.Quantization;
using FastServe.Scheduler.Engine;

namespace FastServe.Embed;

/// <summary>
/// The fs_* entry points of libfastserve.so (native/include/fastserve.h says what each does, for C callers). Every
/// one catches everything and returns a status (<see cref="LastError.From"/>), validates each pointer, handle and
/// struct size before use, and never holds a lock shared between engines.
/// </summary>
internal static unsafe class Exports
{
    /// <summary>FS_ABI_VERSION: major in the high 16 bits (incompatible changes), minor in the low 16 (additions).</summary>
    public const uint AbiVersion = 1u << 16 | 1;

    /// <summary>Longest text accepted by fs_submit_text and fs_tokenize, in bytes.</summary>
    public const int MaxTextBytes = 64 << 20;

    /// <summary>Most token ids accepted by fs_submit_tokens and fs_detokenize.</summary>
    public const int MaxTokenIds = 1 << 24;

    private static readonly HandleTable<EmbedModel> Models = new(1);
    private static readonly HandleTable<EmbedEngine> Engines = new(2);
    private static readonly HandleTable<EmbedRequest> Requests = new(3);

    [UnmanagedCallersOnly(EntryPoint = "fs_abi_version")]
    public static uint AbiVersionExport() => AbiVersion;

    [UnmanagedCallersOnly(EntryPoint = "fs_last_error")]
    public static byte* LastErrorExport()
    {
        try { return LastError.Pointer; }
        catch { return Literal(""u8); }
    }

    [UnmanagedCallersOnly(EntryPoint = "fs_status_name")]
    public static byte* StatusName(int status) => (FsStatus)status switch
    {
        FsStatus.Ok => Literal("ok"u8),
        FsStatus.InvalidArgument => Literal("invalid_argument"u8),
        FsStatus.InvalidHandle => Literal("invalid_handle"u8),
        FsStatus.StructSize => Literal("struct_size"u8),
        FsStatus.BufferTooSmall => Literal("buffer_too_small"u8),
        FsStatus.Timeout => Literal("timeout"u8),
        FsStatus.Ended => Literal("ended"u8),
        FsStatus.Cancelled => Literal("cancelled"u8),
        FsStatus.Model => Literal("model"u8),
        FsStatus.Backend => Literal("backend"u8),
        FsStatus.State => Literal("state"u8),
        FsStatus.Limit => Literal("limit"u8),
        FsStatus.OutOfMemory => Literal("out_of_memory"u8),
        FsStatus.Internal => Literal("internal"u8),
        _ => Literal("unknown"u8),
    };

    // ---- models ---------------------------------------------------------------------------------------------

    [UnmanagedCallersOnly(EntryPoint = "fs_model_options_default")]
    public static int ModelOptionsDefault(FsModelOptions* o)
    {
        if (o == null) return Null("options");
        *o = default;
        o->Size = (uint)sizeof(FsModelOptions);
        return 0;
    }

    [UnmanagedCallersOnly(EntryPoint = "fs_model_load")]
    public static int ModelLoad(byte* dir, FsModelOptions* options, ulong* model)
    {
        try
        {
            if (model == null) return Null("model");
            *model = 0;
            if (dir == null) return Null("dir");
            var o = new FsModelOptions { Size = (uint)sizeof(FsModelOptions) };
            if (options != null)
            {
                if (options->Size != sizeof(FsModelOptions)) return WrongSize("fs_model_options", options->Size, sizeof(FsModelOptions));
                o = *options;
            }
            Fp8LoadOptions? quantize = o.Quantize switch
            {
                0 => null,
                1 => new Fp8LoadOptions(Fp8Scheme.PerChannel, QuantizeLayers.All),
                2 => new Fp8LoadOptions(Fp8Scheme.PerTensor, QuantizeLayers.All),
                _ => throw new FastServeException("args.invalid_quantize", "quantize must be FS_QUANTIZE_NONE, FS_QUANTIZE_FP8_PER_CHANNEL or FS_QUANTIZE_FP8_PER_TENSOR", "quantize"),
            };
            if (!TryUtf8(dir, "dir", out string path)) return (int)FsStatus.InvalidArgument;
            var relay = o.Progress == null ? null : new ProgressRelay(o.Progress, o.ProgressUser);
            var loaded = LoadedModel.Load(path, quantize, relay is null ? null : relay.Report);
            var m = new EmbedModel(loaded);
            ulong h = Models.Add(m);
            if (h == 0)
            {
                m.Release();
                return LastError.Set(FsStatus.Limit, "handles.exhausted", "too many live models");
            }
            *model = h;
            return 0;
        }
        catch (Exception ex) { return LastError.From(ex); }
    }

    [UnmanagedCallersOnly(EntryPoint = "fs_model_free")]
    public static int ModelFree(ulong model)
    {
        try
        {
            if (Models.Remove(model) is not { } m) return BadHandle("model");
            m.Release();
            return 0;
        }
        catch (Exception ex) { return LastError.From(ex); }
    }

    [UnmanagedCallersOnly(EntryPoint = "fs_tokenize")]
    public static int Tokenize(ulong model, byte* text, nuint length, int addBos, int* ids, nuint capacity, nuint* count)
    {
        try
        {
            if (count == null) return Null("n_ids");
            *count = 0;
            if (Models.Get(model) is not { } m) return BadHandle("model");
            if (!TryText(text, length, out string s)) return (int)FsStatus.InvalidArgument;
            var tok = m.Tokenizer;
            int[] r = tok.Encode(s, addBos: addBos != 0 && tok.BosId is not null);
            *count = (nuint)r.Length;
            if ((nuint)r.Length > capacity)
                return LastError.Set(FsStatus.BufferTooSmall, "buffer.too_small", $"{r.Length} ids do not fit in {capacity}");
            if (r.Length > 0 && ids == null) return Null("ids");
            r.CopyTo(new Span<int>(ids, r.Length));
            return 0;
        }
        catch (Exception ex) { return LastError.From(ex); }
    }

    [UnmanagedCallersOnly(EntryPoint = "fs_detokenize")]
    public static int Detokenize(ulong model, int* ids, nuint count, byte* text, nuint capacity, nuint* length)
    {
        try
        {
            if (length == null) return Null("n_bytes");
            *length = 0;
            if (Models.Get(model) is not { } m) return BadHandle("model");
            if (count > MaxTokenIds) return LastError.Set(FsStatus.InvalidArgument, "args.too_many_ids", $"at most {MaxTokenIds} ids");
            if (count > 0 && ids == null) return Null("ids");
            var span = new ReadOnlySpan<int>(ids, (int)count);
            int vocab = m.Tokenizer.VocabCount;
            foreach (int id in span)
                if ((uint)id >= (uint)vocab) return LastError.Set(FsStatus.InvalidArgument, "prompt.invalid_token", $"token id {id} is outside the vocabulary (0..{vocab - 1})");
            string s = m.Tokenizer.Decode(span);
            int n = Encoding.UTF8.GetByteCount(s);
            *length = (nuint)n;
            if ((nuint)n >= capacity)
                return LastError.Set(FsStatus.BufferTooSmall, "buffer.too_small", $"{n} bytes and the NUL do not fit in {capacity}");
            if (text == null) return Null("text");
            int w = Encoding.UTF8.GetBytes(s, new Span<byte>(text, n));
            text[w] = 0;
            return 0;
        }
        catch (Exception ex) { return LastError.From(ex); }
    }

    // ---- engines --------------------------------------------------------------------------------------------

    [UnmanagedCallersOnly(EntryPoint = "fs_engine_options_default")]
    public static int EngineOptionsDefault(FsEngineOptions* o)
    {
        if (o == null) return Null("options");
        *o = EmbedEngine.Defaults();
        return 0;
    }

    [UnmanagedCallersOnly(EntryPoint = "fs_engine_create")]
    public static int EngineCreate(ulong model, FsEngineOptions* options, ulong* engine)
    {
        try
        {
            if (engine == null) return Null("engine");
            *engine = 0;
            var o = EmbedEngine.Defaults();
            if (options != null)
            {
                if (options->Size != sizeof(FsEngineOptions)) return WrongSize("fs_engine_options", options->Size, sizeof(FsEngineOptions));
                o = *options;
            }
            string backend = "cpu";
            if (o.Backend != null && !TryUtf8(o.Backend, "backend", out backend)) return (int)FsStatus.InvalidArgument;
            if (Models.Get(model) is not { } m || !m.TryAddRef()) return BadHandle("model");
            var e = EmbedEngine.Create(m, o, backend);
            ulong h = Engines.Add(e);
            if (h == 0)
            {
                e.Dispose();
                return LastError.Set(FsStatus.Limit, "handles.exhausted", "too many live engines");
            }
            *engine = h;
            return 0;
        }
        catch (Exception ex) { return LastError.From(ex); }
    }

    [UnmanagedCallersOnly(EntryPoint = "fs_engine_free")]
    public static int EngineFree(ulong engine)
    {
        try
        {
            if (CallbackScope.Engine is not null)
                return LastError.Set(FsStatus.State, "engine.free_in_callback", "an engine cannot be freed from inside an event callback (it would wait for its own delivery thread)");
            if (Engines.Remove(engine) is not { } e) return BadHandle("engine");
            e.Dispose();
            return 0;
        }
        catch (Exception ex) { return LastError.From(ex); }
    }

    [UnmanagedCallersOnly(EntryPoint = "fs_engine_stats_get")]
    public static int EngineStatsExport(ulong engine, FsEngineStats* stats)
    {
        try
        {
            if (stats == null) return Null("stats");
            if (stats->Size != sizeof(FsEngineStats)) return WrongSize("fs_engine_stats", stats->Size, sizeof(FsEngineStats));
            if (Engines.Get(engine) is not { } e) return BadHandle("engine");
            var s = e.Engine.GetStats();
            *stats = new FsEngineStats
            {
                Size = (uint)sizeof(FsEngineStats),
                RunningRequests = s.RunningRequests,
                WaitingRequests = s.WaitingRequests,
                KvBlocksTotal = s.KvBlocksTotal,
                KvBlocksUsed = s.KvBlocksUsed,
                KvBlocksFree = s.KvBlocksFree,
                Submitted = s.Submitted,
                Finished = s.Finished,
                Cancelled = s.Cancelled,
                DeadlineExceeded = s.DeadlineExceeded,
                Overloaded = s.Overloaded,
                Invalid = s.Invalid,
                Failed = s.Failed,
                Preemptions = s.Preemptions,
                Steps = s.Steps,
                TokensGenerated = s.TokensGenerated,
                PrefixHitRate = s.PrefixHitRate,
                DeviceBusySeconds = s.DeviceBusySeconds,
            };
            return 0;
        }
        catch (Exception ex) { return LastError.From(ex); }
    }

    // ---- requests -------------------------------------------------------------------------------------------

    [UnmanagedCallersOnly(EntryPoint = "fs_request_options_default")]
    public static int RequestOptionsDefault(FsRequestOptions* o)
    {
        if (o == null) return Null("options");
        *o = RequestDefaults();
        return 0;
    }

    [UnmanagedCallersOnly(EntryPoint = "fs_submit_text")]
    public static int SubmitText(ulong engine, byte* text, nuint length, FsRequestOptions* options, ulong* request)
    {
        try
        {
            if (request == null) return Null("request");
            *request = 0;
            if (Engines.Get(engine) is not { } e) return BadHandle("engine");
            if (!TryOptions(options, out var o, out var sampling, out int status)) return status;
            if (!TryText(text, length, out string s)) return (int)FsStatus.InvalidArgument;
            int[] prompt = e.Tokenizer.Encode(s, addBos: o.AddBos != 0 && e.Tokenizer.BosId is not null);
            return Submit(e, prompt, o, sampling, request);
        }
        catch (Exception ex) { return LastError.From(ex); }
    }

    [UnmanagedCallersOnly(EntryPoint = "fs_submit_tokens")]
    public static int SubmitTokens(ulong engine, int* ids, nuint count, FsRequestOptions* options, ulong* request)
    {
        try
        {
            if (request == null) return Null("request");
            *request = 0;
            if (Engines.Get(engine) is not { } e) return BadHandle("engine");
            if (!TryOptions(options, out var o, out var sampling, out int status)) return status;
            if (count > MaxTokenIds) return LastError.Set(FsStatus.InvalidArgument, "args.too_many_ids", $"at most {MaxTokenIds} ids");
            if (count > 0 && ids == null) return Null("ids");
            // Copied: the engine reads the prompt during Submit only, but the caller may reuse its array at once.
            int[] prompt = new ReadOnlySpan<int>(ids, (int)count).ToArray();
            return Submit(e, prompt, o, sampling, request);
        }
        catch (Exception ex) { return LastError.From(ex); }
    }

    [UnmanagedCallersOnly(EntryPoint = "fs_request_next")]
    public static int RequestNext(ulong request, int timeoutMs, FsEvent* ev)
    {
        try
        {
            if (ev == null) return Null("event");
            uint size = ev->Size;
            if (size != sizeof(FsEvent) && size != FsEvent.V10Size) return WrongSize("fs_event", size, sizeof(FsEvent));
            if (Requests.Get(request) is not { } r) return BadHandle("request");
            // A caller built against ABI 1.0 gets the 1.0 prefix of the event (structs only grow at the end).
            FsEvent full;
            var st = r.Next(timeoutMs, size == sizeof(FsEvent) ? ev : &full);
            if (st == FsStatus.Ok && size != sizeof(FsEvent))
            {
                full.Size = size;
                Buffer.MemoryCopy(&full, ev, size, size);
            }
            return st == FsStatus.InvalidHandle ? BadHandle("request") : (int)st;
        }
        catch (Exception ex) { return LastError.From(ex); }
    }

    [UnmanagedCallersOnly(EntryPoint = "fs_request_cancel")]
    public static int RequestCancel(ulong request)
    {
        try
        {
            if (Requests.Get(request) is not { } r) return BadHandle("request");
            r.Cancel();
            return 0;
        }
        catch (Exception ex) { return LastError.From(ex); }
    }

    [UnmanagedCallersOnly(EntryPoint = "fs_request_free")]
    public static int RequestFree(ulong request)
    {
        try
        {
            if (Requests.Remove(request) is not { } r) return BadHandle("request");
            r.Free();
            return 0;
        }
        catch (Exception ex) { return LastError.From(ex); }
    }

    // ---- helpers --------------------------------------------------------------------------------------------

    private static FsRequestOptions RequestDefaults() => new()
    {
        Size = (uint)sizeof(FsRequestOptions),
        MaxTokens = 64,
        Temperature = 0f,
        TopP = 1f,
        TopK = 0,
        Priority = (int)Priority.Interactive,
        AddBos = 1,
    };

    private static bool TryOptions(FsRequestOptions* options, out FsRequestOptions o, out SamplingParams sampling, out int status)
    {
        o = RequestDefaults();
        sampling = null!;
        if (options != null)
        {
            if (options->Size != sizeof(FsRequestOptions))
            {
                status = WrongSize("fs_request_options", options->Size, sizeof(FsRequestOptions));
                return false;
            }
            o = *options;
        }
        status = (int)FsStatus.InvalidArgument;
        if (o.Priority is not ((int)Priority.Interactive or (int)Priority.Batch))
        {
            LastError.Set(FsStatus.InvalidArgument, "request.invalid_priority", "priority must be FS_PRIORITY_INTERACTIVE or FS_PRIORITY_BATCH");
            return false;
        }
        if (o.DeadlineMs < 0 || o.DeadlineMs > 86_400_000)
        {
            LastError.Set(FsStatus.InvalidArgument, "request.invalid_deadline", "deadline_ms must be between 0 (none) and 86400000");
            return false;
        }
        if (o.StopCount > 0 && o.Stop == null) { Null("stop"); return false; }
        // More than the rules allow is refused by Check below; the bound here only caps what is read.
        var stops = new string[(int)Math.Min(o.StopCount, 1024)];
        for (int i = 0; i < stops.Length; i++)
        {
            if (o.Stop[i] == null) { Null("stop[i]"); return false; }
            if (!TryUtf8(o.Stop[i], "stop", out stops[i])) return false;
        }
        sampling = new SamplingParams
        {
            MaxTokens = o.MaxTokens,
            Temperature = o.Temperature,
            TopP = o.TopP,
            TopK = o.TopK,
            Seed = o.HasSeed != 0 ? o.Seed : null,
            Stop = stops,
            IgnoreEos = o.IgnoreEos != 0,
        };
        if (o.StopCount > 1024 || sampling.Check() is not null)
        {
            var v = sampling.Check();
            LastError.Set(FsStatus.InvalidArgument, v?.Code ?? "request.too_many_stops", v is { } x ? $"{x.Field}: {x.Message}" : "too many stop strings");
            return false;
        }
        status = 0;
        return true;
    }

    private static int Submit(EmbedEngine e, int[] prompt, in FsRequestOptions o, SamplingParams sampling, ulong* request)
    {
        var r = new EmbedRequest(e, sampling, o.OnEvent, o.User);
        ulong h = Requests.Add(r);
        if (h == 0) return LastError.Set(FsStatus.Limit, "handles.exhausted", $"too many live requests (at most {HandleTable<EmbedRequest>.Capacity}); free finished ones");
        // Known to the caller before Submit, since a request refused at admission delivers its final inside Submit.
        *request = h;
        RequestHandle handle;
        try
        {
            handle = e.Engine.Submit(new EngineRequest
            {
                Prompt = prompt,
                Sampling = sampling,
                Priority = (Priority)o.Priority,
                Deadline = o.DeadlineMs > 0 ? TimeSpan.FromMilliseconds(o.DeadlineMs) : null,
                Sink = r,
            });
        }
        catch
        {
            // Submit answers every request with a result rather than throwing; if it ever does, no handle is left behind.
            Requests.Remove(h);
            *request = 0;
            throw;
        }
        r.Attach(handle);
        return 0;
    }

    private static bool TryText(byte* text, nuint length, out string s)
    {
        s = "";
        if (length == 0) return true;
        if (text == null) { Null("text"); return false; }
        if (length > MaxTextBytes) { LastError.Set(FsStatus.InvalidArgument, "args.text_too_long", $"text is longer than {MaxTextBytes} bytes"); return false; }
        var span = new ReadOnlySpan<byte>(text, (int)length);
        if (!Utf8.IsValid(span)) { LastError.Set(FsStatus.InvalidArgument, "args.invalid_utf8", "text is not valid UTF-8"); return false; }
        s = Encoding.UTF8.GetString(span);
        return true;
    }

    private static bool TryUtf8(byte* z, string what, out string s)
    {
        var span = MemoryMarshal.CreateReadOnlySpanFromNullTerminated(z);
        if (!Utf8.IsValid(span))
        {
            s = "";
            LastError.Set(FsStatus.InvalidArgument, "args.invalid_utf8", $"{what} is not valid UTF-8");
            return false;
        }
        s = Encoding.UTF8.GetString(span);
        return true;
    }

    private static int Null(string what) => LastError.Set(FsStatus.InvalidArgument, "args.null", $"{what} must not be NULL");

    private static int BadHandle(string what) =>
        LastError.Set(FsStatus.InvalidHandle, "handle.invalid", $"not a live {what} handle (0, freed, forged, or another kind's)");

    private static int WrongSize(string type, uint given, int expected) =>
        LastError.Set(FsStatus.StructSize, "args.struct_size", $"{type}.size is {given}, this library's {type} has {expected} bytes (set size = sizeof({type}), or call its _default function)");

    private static byte* Literal(ReadOnlySpan<byte> utf8z) => (byte*)Unsafe.AsPointer(ref MemoryMarshal.GetReference(utf8z));

    /// <summary>Turns the C progress callback into the loader's, cancelling by throwing out of the load (the loader
    /// frees what it had bound); the only exception used for control here, on a cold path.</summary>
    private sealed class ProgressRelay(delegate* unmanaged<ulong, ulong, void*, int> callback, void* user)
    {
        private readonly delegate* unmanaged<ulong, ulong, void*, int> _callback = callback;
        private readonly void* _user = user;

        public void Report(long done, long total)
        {
            if (_callback((ulong)done, (ulong)total, _user) != 0) throw new OperationCanceledException();
        }
    }
}
