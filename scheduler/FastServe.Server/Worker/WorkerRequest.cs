using FastServe.Runtime.Generation;
using FastServe.Runtime.Tokenization;

namespace FastServe.Server.Worker;

/// <summary>
/// A request as a worker tracks it between the client and the engine. Created by the session's receive loop;
/// from submission on, touched only by the engine link's reader thread (tokens, final), so it needs no lock.
/// </summary>
internal sealed class WorkerRequest
{
    public required ulong Key;                 // the worker's id for the engine
    public required ulong ClientId;            // the client's request id on its connection
    public required ClientSession Session;
    public IncrementalDecoder? Decoder;        // null with no_text
    public StopMatcher? Stop;
    /// <summary>The request stops at EOS (no ignore_eos): an EOS id ends it and adds no text, as in
    /// <c>fastserve generate</c>; with ignore_eos it is an ordinary token and its text is sent.</summary>
    public bool EosEnds;
    public int PromptTokens;
    /// <summary>The client asked for the log-probability summary in its FINAL (REQUEST flag <c>logprobs</c>).</summary>
    public bool Logprobs;
    /// <summary>Completion tokens so far: a resumed request (REQUEST flag <c>resume</c>) starts at its resumed ids.</summary>
    public int Completion;
    /// <summary>Text bytes still to drop from the output before any is sent: the part of a resumed request's text the
    /// client already had beyond what its resumed ids released (text a stop string held back at the moment of loss).</summary>
    public long SkipBytes;
    public long Received, Tokenized;           // Stopwatch ticks
    public long FirstTokenSent, LastTokenSent;
    /// <summary>The client already has its FINAL (a stop string matched); the engine's final only clears the entry.</summary>
    public bool Done;
}
