using System.Globalization;

namespace FastServe.Interop;

/// <summary>
/// The cuda backend's one-line reports, written to stderr (a serving engine's log) through <see cref="Write"/>.
/// bench/gpu/startup.py parses these lines; tests/FastServe.Tests/Interop/StartupScriptTests.cs keeps both in step.
/// </summary>
internal static class CudaLog
{
    /// <summary>Where the lines go; stderr unless a test replaces it.</summary>
    internal static Action<string> Write = static line => Console.Error.WriteLine(line);

    /// <summary>Upload sessions smaller than this (check-backend's test weights) are not reported.</summary>
    internal const long UploadBytesWorthReporting = 64L << 20;

    /// <summary>"fastserve cuda: weights uploaded: 1.236 GB in 0.052 s, 23.8 GB/s (...)".</summary>
    public static string Upload(WeightUploadStats s, int chunks, long chunkBytes, double stagingSeconds, int copyThreads) =>
        string.Create(CultureInfo.InvariantCulture,
            $"fastserve cuda: weights uploaded: {s.Bytes / 1e9:F3} GB in {s.Seconds:F3} s, {s.GigabytesPerSecond:F1} GB/s " +
            $"({chunks} x {chunkBytes >> 20} MiB pinned chunks, allocated once in {stagingSeconds:F3} s, {copyThreads} copy threads; " +
            $"host copies {s.HostCopySeconds:F3} s, waits on transfers {s.TransferWaitSeconds:F3} s, {s.Pieces} pieces)");

    /// <summary>"fastserve cuda: graph for batch 8 captured in 3.1 ms (...)": <paramref name="key"/> is the step key,
    /// the padded decode batch size for the engine.</summary>
    public static string Capture(int key, double seconds, GraphCaptureStats s) =>
        string.Create(CultureInfo.InvariantCulture,
            $"fastserve cuda: graph for batch {key} captured in {seconds * 1e3:F1} ms ({s.CapturedKeys} batch sizes captured, " +
            $"{s.CaptureSeconds * 1e3:F1} ms capturing in all, {s.Deferred} steps ran eagerly while captures were spaced out)");
}
