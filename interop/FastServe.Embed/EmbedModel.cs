using FastServe.Runtime.Model;
using FastServe.Runtime.Tokenization;

namespace FastServe.Embed;

/// <summary>
/// A loaded model (fs_model): the mapped checkpoint, bound weights and tokenizer, shared by the engines created on
/// it. Reference counted: the caller's handle is one reference and each engine holds one, so fs_model_free with
/// engines still alive only drops the handle; the weights are released when the last engine is freed.
/// </summary>
internal sealed class EmbedModel(LoadedModel model)
{
    private int _refs = 1;

    public LoadedModel Model { get; } = model;
    public TextTokenizer Tokenizer => Model.Tokenizer;

    /// <summary>Takes a reference for a new engine; false once the model has been released.</summary>
    public bool TryAddRef()
    {
        int n = Volatile.Read(ref _refs);
        while (n > 0)
        {
            int seen = Interlocked.CompareExchange(ref _refs, n + 1, n);
            if (seen == n) return true;
            n = seen;
        }
        return false;
    }

    /// <summary>Drops one reference; the last one disposes the model.</summary>
    public void Release()
    {
        if (Interlocked.Decrement(ref _refs) == 0) Model.Dispose();
    }
}
