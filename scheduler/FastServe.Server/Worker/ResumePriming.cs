using System.Buffers;
using FastServe.Protocol;
using FastServe.Runtime.Tokenization;

namespace FastServe.Server.Worker;

/// <summary>
/// Primes a resumed request (REQUEST flag <c>resume</c>, protocol 1.3) before it reaches the engine: its incremental
/// detokenizer and stop-string matcher take the ids the client already has, as if this worker had streamed them, so
/// the first new token's text continues exactly where the lost replica's would have (a character split over the
/// boundary, text held back for a possible stop string). Then it works out which text the client is owed: the
/// primed text past the bytes it already has, and how much of the coming output it already has (text a stop string
/// held back, which the router passed on when it was released). Rare path (a failover): it may allocate.
/// </summary>
internal static class ResumePriming
{
    /// <summary>
    /// Feeds <paramref name="v"/>'s resumed ids to <paramref name="r"/>'s decoder and stop matcher. Writes the text
    /// the client is owed now to <paramref name="owed"/> and sets <see cref="WorkerRequest.SkipBytes"/> and
    /// <see cref="WorkerRequest.Completion"/>. <paramref name="finished"/> is set when the resumed ids already ended
    /// the generation (an EOS, a stop string, max_tokens, the context): the lost replica's FINAL never arrived; the
    /// caller answers with a FINAL at once and <paramref name="owed"/> then includes the held text released at the end.
    /// Returns the violation when the fields do not describe output these ids produce (<c>request.bad_resume</c>).
    /// </summary>
    public static RuleViolation? Prime(WorkerRequest r, in RequestView v, TextTokenizer tokenizer, int promptTokens, int context,
        ArrayBufferWriter<byte> owed, out WireFinish finished)
    {
        finished = WireFinish.None;
        int n = v.ResumeCount;
        var text = new ArrayBufferWriter<byte>(256);
        var piece = new ArrayBufferWriter<byte>(64);
        for (int i = 0; i < n; i++)
        {
            int id = v.ResumeId(i);
            if (r.EosEnds && tokenizer.IsEos(id))
            {
                // An EOS ends the generation: only the last id delivered can be one.
                if (i != n - 1) return new RuleViolation(RequestRules.BadResume, "resume", $"resumed token {i} is an end of sequence, before the last", WireStatus.BadRequest);
                finished = WireFinish.Eos;
                break;
            }
            if (r.Decoder is null) continue;
            if (r.AppendText(id, piece, text)) { finished = WireFinish.Stop; break; }
        }
        if (finished == WireFinish.None)
        {
            if (n >= v.MaxTokens) finished = WireFinish.Length;
            else if (promptTokens + n > context) finished = WireFinish.ContextFull;
        }

        // The client can have at most the text the ids produced (released, or still held for a stop string), and it
        // always ends on a character: deltas never split one.
        uint have = v.ResumeTextBytes;
        var held = r.Stop is { Stopped: false } stop ? stop.HeldUtf8 : default;
        long produced = text.WrittenCount + held.Length;
        if (r.Decoder is null ? have != 0 : have > produced || (have < produced && IsContinuation(ByteAt(text.WrittenSpan, held, have))))
            return RequestRules.BadResumeText(have, (int)Math.Min(produced, int.MaxValue));

        // A generation that has ended releases what was held back, as the replica's FINAL would have.
        if (finished is not (WireFinish.None or WireFinish.Stop) && r.Decoder is not null)
        {
            piece.ResetWrittenCount();
            r.Decoder.FlushUtf8(piece);
            if (r.Stop is null) text.Write(piece.WrittenSpan);
            else
            {
                r.Stop.AppendUtf8(piece.WrittenSpan, text);
                r.Stop.FlushUtf8(text);
            }
        }
        if (have < text.WrittenCount) owed.Write(text.WrittenSpan[(int)have..]);
        else r.SkipBytes = have - text.WrittenCount;
        r.Completion = r.Resumed = n;
        return null;
    }

    private static byte ByteAt(ReadOnlySpan<byte> a, ReadOnlySpan<byte> b, uint i) => i < a.Length ? a[(int)i] : b[(int)(i - a.Length)];

    private static bool IsContinuation(byte b) => (b & 0xC0) == 0x80;
}
