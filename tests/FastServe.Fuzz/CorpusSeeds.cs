using System.Buffers;
using System.Buffers.Binary;
using FastServe.Protocol;

namespace FastServe.Fuzz;

/// <summary>
/// The seed corpus (tests/FastServe.Fuzz/corpus): one file per frame type written by <see cref="FrameWriter"/>, a few
/// multi-frame streams, and a few near-misses that reach the parsers' refusals. Deterministic, so the checked-in files
/// can be compared with what this produces (<c>make-corpus</c> rewrites them).
/// </summary>
public static class CorpusSeeds
{
    /// <summary>Every seed: a file name (no directory) and its bytes.</summary>
    public static IReadOnlyList<(string Name, byte[] Bytes)> All()
    {
        var seeds = new List<(string, byte[])>();
        void Add(string name, Action<ArrayBufferWriter<byte>> write)
        {
            var w = new ArrayBufferWriter<byte>();
            write(w);
            seeds.Add((name, w.WrittenSpan.ToArray()));
        }

        Add("hello.bin", w => FrameWriter.Hello(w, "fastserve-client/1"u8));
        Add("hello_key.bin", w => FrameWriter.Hello(w, "fastserve-client/1"u8, apiKey: "example-key-0123456789"u8));
        Add("hello_ok.bin", HelloOk);
        Add("request_text.bin", w => Request(w, 7, ids: false, stops: ["\n\n", "</s>"], seed: 42));
        Add("request_ids.bin", w => Request(w, 8, ids: true, stops: [], seed: null));
        Add("request_eight_stops.bin", w => Request(w, 9, ids: false,
            stops: ["a", "bb", "ccc", "é", "€", "😀", "end", new string('x', Wire.MaxStopBytes)], seed: 1));
        Add("cancel.bin", w => FrameWriter.Cancel(w, 7));
        Add("ping.bin", w => FrameWriter.Ping(w, "0123456789abcdef"u8));
        Add("pong.bin", w => FrameWriter.Ping(w, "0123456789abcdef"u8, pong: true));
        Add("load_query.bin", w => FrameWriter.LoadQuery(w, 250));
        Add("load_query_unsubscribe.bin", w => FrameWriter.LoadQuery(w, 0, unsubscribe: true));
        Add("drain.bin", w => FrameWriter.Drain(w, "s3cret-admin-token"u8));
        Add("drain_ok.bin", w => FrameWriter.DrainOk(w, 30_000));
        Add("admin.bin", w => FrameWriter.Admin(w, "s3cret-admin-token"u8, "split gec-small a1b2c3=95,d4e5f6=5;sticky"u8));
        Add("admin_ok.bin", w => FrameWriter.AdminOk(w, "{\"ok\":true,\"mode\":\"normal\"}"));
        Add("request_route.bin", w => FrameWriter.Request(w, 10, RequestParams.Default with
        {
            MaxTokens = 50, Model = "gec-small", ModelVersion = "a1b2c3", RouteKey = "user-42", Logprobs = true,
        }, "Correct: She go home.\nFixed:"u8, default, ["\n"]));
        Add("request_resume.bin", w => FrameWriter.Request(w, 12, RequestParams.Default with { MaxTokens = 50, Temperature = 0.8f, Seed = 77 },
            "Correct: She go home.\nFixed:"u8, default, ["\n"], [15043, 29892, 278], 9));
        Add("request_route_resume.bin", w => FrameWriter.Request(w, 13, RequestParams.Default with { MaxTokens = 50, Model = "gec-small", RouteKey = "user-42" },
            "Fix: I has a cat."u8, default, null, [42], 3));
        Add("delta.bin", w => FrameWriter.Delta(w, 7, [15043, 29892, 1], "Héllo €😀"u8));
        Add("delta_ids_only.bin", w => FrameWriter.Delta(w, 8, [1, 2, 3, 4], default));
        Add("request_token_logprobs.bin", w => FrameWriter.Request(w, 14, RequestParams.Default with { MaxTokens = 50, TokenLogprobs = true, TopLogprobs = 5 },
            "Correct: She go home.\nFixed:"u8, default, ["\n"]));
        Add("delta_logprobs.bin", w =>
        {
            var s = new ArrayBufferWriter<byte>();
            int at = DeltaLogprobs.Begin(s);
            DeltaLogprobs.WriteToken(s, 15043, -0.25f, " She"u8, 2);
            DeltaLogprobs.WriteTop(s, 15043, -0.25f, " She"u8);
            DeltaLogprobs.WriteTop(s, 940, -1.75f, " he"u8);
            DeltaLogprobs.WriteToken(s, 29892, -3.5f, [0xE2, 0x82], 0);
            DeltaLogprobs.End(s, at, 2);
            FrameWriter.Delta(w, 9, [15043, 29892, 2], " She"u8, s.WrittenSpan);
        });
        Add("final_ok.bin", w => FrameWriter.Final(w, 7, Final(WireStatus.Ok, WireFinish.Stop), ReadOnlySpan<byte>.Empty, ReadOnlySpan<byte>.Empty));
        Add("final_logprobs.bin", w =>
        {
            var f = Final(WireStatus.Ok, WireFinish.Eos);
            f.HasLogprobs = true;
            f.LogprobMean = -0.125f;
            f.LogprobMin = -2.5f;
            FrameWriter.Final(w, 10, f, ReadOnlySpan<byte>.Empty, ReadOnlySpan<byte>.Empty);
        });
        Add("final_not_found.bin", w => FrameWriter.Final(w, 11, Final(WireStatus.NotFound, WireFinish.None), "router.model_not_found"u8,
            "no replica serves model 'gec-large'"u8));
        Add("final_error.bin", w => FrameWriter.Final(w, 8, Final(WireStatus.Overloaded, WireFinish.None), "engine.queue_full"u8,
            "the queue is full; retry after 120 ms"u8));
        Add("load_report.bin", w => FrameWriter.LoadReport(w, new LoadReport(ReplicaState.Ready, 2, 17, 3, 20, 0.625f, 40, 256, 12, "gec-small", "a1b2c3")));
        Add("error.bin", w => FrameWriter.Error(w, WireStatus.UnsupportedVersion, true, 0, "this server speaks protocol 1.x"));

        Add("stream_client.bin", w =>
        {
            FrameWriter.Hello(w, "cli"u8);
            Request(w, 1, ids: false, stops: ["\n"], seed: null);
            Request(w, 2, ids: true, stops: [], seed: 5);
            FrameWriter.Ping(w, "p"u8);
            FrameWriter.Cancel(w, 1);
            FrameWriter.LoadQuery(w, 0);
            FrameWriter.Drain(w, "t"u8);
        });
        Add("stream_server.bin", w =>
        {
            HelloOk(w);
            FrameWriter.Delta(w, 1, [10], "a"u8);
            FrameWriter.Delta(w, 2, [11, 12], [0xE2, 0x82]); // a cut euro sign
            FrameWriter.Delta(w, 1, [13], default);
            FrameWriter.Final(w, 1, Final(WireStatus.Ok, WireFinish.Length), ReadOnlySpan<byte>.Empty, ReadOnlySpan<byte>.Empty);
            FrameWriter.Ping(w, "p"u8, pong: true);
            FrameWriter.LoadReport(w, new LoadReport(ReplicaState.Draining, 1, 0, 0, 1, 1f, 0, 64, 3));
            FrameWriter.DrainOk(w, 5000);
            FrameWriter.Error(w, WireStatus.BadRequest, false, 0, "frame.truncated");
        });
        Add("stream_partial.bin", w =>
        {
            FrameWriter.Cancel(w, 3);
            var whole = new ArrayBufferWriter<byte>();
            Request(whole, 4, ids: false, stops: ["stop"], seed: null);
            w.Write(whole.WrittenSpan[..(whole.WrittenCount - 3)]);
        });

        // Near-misses: each reaches a refusal that valid frames never do.
        Add("too_large.bin", w => Header(w, FrameType.Request, FrameParseLoop.MaxFrame + 1, 1));
        // Fits under a 2 GiB limit but not in any buffer: header + length overflows an int.
        Add("length_near_int_max.bin", w => Header(w, FrameType.Ping, int.MaxValue - 7, 0));
        Add("unknown_type.bin", w => Header(w, (FrameType)0x7E, 0, 0));
        Add("request_trailing.bin", w => WithPayload(w, 5, p => { p.AddRange(RequestPayload(ids: false, stops: ["x"])); p.Add(0); }));
        Add("request_prompt_overflow.bin", w => WithPayload(w, 5, p =>
        {
            var r = RequestPayload(ids: true, stops: []);
            BinaryPrimitives.WriteUInt32LittleEndian(r.AsSpan(32), 0x40000000);
            p.AddRange(r);
        }));
        Add("request_too_many_stops.bin", w => WithPayload(w, 5, p =>
        {
            var r = RequestPayload(ids: false, stops: []);
            BinaryPrimitives.WriteUInt16LittleEndian(r.AsSpan(30), Wire.MaxStops + 1);
            p.AddRange(r);
        }));
        Add("request_empty_stop.bin", w => WithPayload(w, 5, p =>
        {
            var r = RequestPayload(ids: false, stops: []);
            BinaryPrimitives.WriteUInt16LittleEndian(r.AsSpan(30), 1);
            p.AddRange(r);
            p.AddRange([0, 0]);
        }));
        return seeds;
    }

    private static void HelloOk(ArrayBufferWriter<byte> w) =>
        FrameWriter.HelloOk(w, new HelloOk(Wire.Major, Wire.Minor, Wire.DefaultMaxFrame, 4095, 1024, 60_000, 4096, "fastserve 0.1 (llama-1b-fp8)", "gec-small", "a1b2c3"));

    private static FinalInfo Final(WireStatus status, WireFinish finish)
    {
        var f = new FinalInfo
        {
            Status = status, Finish = finish, Retriable = WireNames.IsRetriable(status), RetryAfterMs = status == WireStatus.Ok ? 0u : 120u,
            PromptTokens = 12, CachedPromptTokens = 8, CompletionTokens = 64, Preemptions = 1,
        };
        for (int i = 0; i < Wire.TimingSlots - 1; i++) f.Timings[i] = (uint)(100 * (i + 1));
        return f;
    }

    private static void Request(ArrayBufferWriter<byte> w, ulong id, bool ids, string[] stops, ulong? seed)
    {
        var rp = new RequestParams
        {
            MaxTokens = 128, Temperature = 0.7f, TopP = 0.95f, TopK = 40, Seed = seed, DeadlineMs = 5000, Priority = 1,
            IgnoreEos = ids, NoText = ids,
        };
        if (ids) FrameWriter.Request(w, id, rp, default, [1, 15043, 3186, 29991], stops);
        else FrameWriter.Request(w, id, rp, "The capital of France is"u8, default, stops);
    }

    private static byte[] RequestPayload(bool ids, string[] stops)
    {
        var w = new ArrayBufferWriter<byte>();
        Request(w, 1, ids, stops, null);
        return w.WrittenSpan[Wire.HeaderSize..].ToArray();
    }

    private static void Header(ArrayBufferWriter<byte> w, FrameType type, int length, ulong id)
    {
        var h = w.GetSpan(Wire.HeaderSize)[..Wire.HeaderSize];
        h.Clear();
        BinaryPrimitives.WriteUInt32LittleEndian(h, (uint)length);
        h[4] = (byte)type;
        BinaryPrimitives.WriteUInt64LittleEndian(h[8..], id);
        w.Advance(Wire.HeaderSize);
    }

    private static void WithPayload(ArrayBufferWriter<byte> w, ulong id, Action<List<byte>> build)
    {
        var p = new List<byte>();
        build(p);
        Header(w, FrameType.Request, p.Count, id);
        w.Write(p.ToArray());
    }

    /// <summary>Writes every seed into <paramref name="dir"/> (created if missing); returns how many.</summary>
    public static int WriteTo(string dir)
    {
        Directory.CreateDirectory(dir);
        var all = All();
        foreach (var (name, bytes) in all) File.WriteAllBytes(Path.Combine(dir, name), bytes);
        return all.Count;
    }
}
