using FastServe.Protocol;

namespace FastServe.Runtime;

/// <summary>
/// The one exception type the runtime raises for bad input or an unusable environment.
/// <see cref="Code"/> is stable (documented in docs/errors.md) so scripts and tests can match it;
/// <see cref="Path"/> names the file or argument at fault when there is one. The CLI prints
/// <c>error[code]: path: message</c> and exits non-zero, never a stack trace. Subclasses (the CUDA backend's
/// <c>CudaException</c>) add detail but keep the same code scheme, so every catch of this type still sees them.
/// </summary>
public class FastServeException : Exception
{
    public FastServeException(string code, string message, string? path = null, Exception? inner = null)
        : base(message, inner)
    {
        Code = code;
        Path = path;
    }

    /// <summary>Stable, dotted, lower-case error code, e.g. <c>safetensors.offsets_out_of_range</c>.</summary>
    public string Code { get; }

    /// <summary>File, directory or argument the error is about, or null.</summary>
    public string? Path { get; }

    /// <summary>The exception for a broken request rule: its code, message and field (as the path).</summary>
    public static FastServeException From(RuleViolation v) => new(v.Code, v.Message, v.Field);

    public override string ToString() => Path is null ? $"error[{Code}]: {Message}" : $"error[{Code}]: {Path}: {Message}";
}
