using System.Security.Cryptography;
using System.Text;
using FastServe.Protocol;

namespace FastServe.Runtime.Model;

/// <summary>
/// The name and version a replica declares for the model it serves (HELLO_OK, LOAD_REPORT; docs/protocol.md), when
/// <c>serve</c> is not told them: the name is the model directory's name, the version a fingerprint of its content.
/// </summary>
/// <remarks>
/// The fingerprint is SHA-256 over every regular file at the top of the directory except documentation (<c>*.md</c>)
/// and evaluation outputs (<c>*.jsonl</c>), in ordinal name order: each file's name and length, then its bytes — all
/// of them for files up to <see cref="WholeFileBytes"/>, else the first MiB (a safetensors header and its first
/// tensors) and 63 blocks of 64 KiB at evenly spaced offsets, so a multi-gigabyte checkpoint costs about 5 MiB of
/// reading per file and a replica still starts in seconds. Two checkpoints of one architecture differ in nearly every
/// weight, so sampled blocks tell them apart; a change that touches no sampled block of a large file (a single edited
/// weight) is not seen: name such a version with <c>--model-version</c>. The version is the first 12 hex digits.
/// </remarks>
public static class ModelIdentity
{
    /// <summary>Files up to this size are hashed whole.</summary>
    public const long WholeFileBytes = 64L << 20;
    private const int HeadBytes = 1 << 20, BlockBytes = 64 << 10, Blocks = 63;

    /// <summary>The default model name: the directory's own name, with characters a label does not allow
    /// (<see cref="RequestRules.IsModelLabel"/>) replaced by <c>-</c> and at most 64 kept.</summary>
    public static string DefaultName(string modelDir)
    {
        string name = Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath(modelDir)));
        var chars = name.Select(c => RequestRules.IsLabelChar(c) ? c : '-').Take(64).ToArray();
        return chars.Length == 0 ? "model" : new string(chars);
    }

    /// <summary>The content fingerprint (12 lowercase hex digits) of the model directory (see remarks).</summary>
    /// <exception cref="FastServeException"><c>model.not_found</c> when the directory does not exist, or
    /// <c>model.unreadable</c> when a file cannot be read.</exception>
    public static string Fingerprint(string modelDir)
    {
        if (!Directory.Exists(modelDir)) throw new FastServeException("model.not_found", "the model directory does not exist", modelDir);
        var files = Directory.GetFiles(modelDir)
            .Where(f => !f.EndsWith(".md", StringComparison.OrdinalIgnoreCase) && !f.EndsWith(".jsonl", StringComparison.OrdinalIgnoreCase))
            .Order(StringComparer.Ordinal)
            .ToArray();
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        var buf = new byte[HeadBytes];
        try
        {
            foreach (var path in files)
            {
                using var fs = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1, FileOptions.RandomAccess);
                long len = fs.Length;
                sha.AppendData(Encoding.UTF8.GetBytes($"{Path.GetFileName(path)}\n{len}\n"));
                if (len <= WholeFileBytes)
                {
                    int n;
                    while ((n = fs.Read(buf)) > 0) sha.AppendData(buf, 0, n);
                    continue;
                }
                Append(sha, fs, 0, HeadBytes, buf);
                long stride = (len - BlockBytes) / Blocks;
                for (int i = 1; i <= Blocks; i++) Append(sha, fs, Math.Min(i * stride, len - BlockBytes), BlockBytes, buf);
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new FastServeException("model.unreadable", $"cannot read the model to fingerprint it: {e.Message}", modelDir);
        }
        return Convert.ToHexStringLower(sha.GetHashAndReset())[..12];
    }

    private static void Append(IncrementalHash sha, FileStream fs, long offset, int count, byte[] buf)
    {
        fs.Position = offset;
        int got = 0;
        while (got < count)
        {
            int n = fs.Read(buf, got, count - got);
            if (n == 0) break;
            got += n;
        }
        sha.AppendData(buf, 0, got);
    }

    /// <summary>Whether <paramref name="s"/> is a valid model name or version (<see cref="RequestRules.IsModelLabel"/>).</summary>
    public static bool IsValidLabel(string? s) => RequestRules.IsModelLabel(s);
}
