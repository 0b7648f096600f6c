using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text;
using FastServe.Runtime;
using FastServe.Runtime.Formats;

namespace FastServe.Tests.Formats;

/// <summary>A fresh directory under the system temp dir, deleted on Dispose.</summary>
public sealed class TempDir : IDisposable
{
    public TempDir()
    {
        Path = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "fastserve-tests", Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(Path);
    }

    public string Path { get; }

    public string File(string name) => System.IO.Path.Combine(Path, name);

    public void Dispose()
    {
        try { Directory.Delete(Path, recursive: true); }
        catch (IOException) { }
    }
}

/// <summary>Builders for safetensors files, including deliberately malformed ones.</summary>
public static class TestFiles
{
    /// <summary>Writes 8-byte length + header text + data, exactly as given (no validation, no padding).</summary>
    public static void WriteRaw(string path, string header, byte[] data, ulong? headerLengthOverride = null) =>
        WriteRaw(path, Encoding.UTF8.GetBytes(header), data, headerLengthOverride);

    public static void WriteRaw(string path, byte[] header, byte[] data, ulong? headerLengthOverride = null)
    {
        var bytes = new byte[8 + header.Length + data.Length];
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, headerLengthOverride ?? (ulong)header.Length);
        header.CopyTo(bytes, 8);
        data.CopyTo(bytes, 8 + header.Length);
        System.IO.File.WriteAllBytes(path, bytes);
    }

    public static SafeTensorsEntry F32(string name, long[] shape, float[] values) =>
        new(name, DType.F32, shape, s => s.Write(MemoryMarshal.AsBytes(values.AsSpan())));

    public static SafeTensorsEntry Bytes(string name, DType dtype, long[] shape, byte[] data) =>
        new(name, dtype, shape, s => s.Write(data));

    public static float[] Normal(Random rng, int n, double sigma)
    {
        var v = new float[n];
        for (int i = 0; i < n; i++)
        {
            double u1 = 1.0 - rng.NextDouble(), u2 = rng.NextDouble();
            v[i] = (float)(sigma * Math.Sqrt(-2 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2));
        }
        return v;
    }
}
