namespace FastServe.Runtime.Formats;

/// <summary>Splits a stream into lines (JSON Lines input of batch and eval) without ever holding more than the longest
/// allowed line: a longer line is reported as too long and skipped to its end. Line numbers are 1-based and count
/// every line, blank ones too.</summary>
public static class JsonLines
{
    public readonly record struct Line(long Number, ReadOnlyMemory<byte> Bytes, bool TooLong)
    {
        public bool Blank => !TooLong && Bytes.Span.Trim((byte)' ').Trim((byte)'\r').Trim((byte)'\t').IsEmpty;
    }

    public static IEnumerable<Line> Read(Stream s, int maxLine)
    {
        var buf = new byte[Math.Min(maxLine, 1 << 16)];
        var line = new MemoryStream();
        bool tooLong = false;
        long number = 0;
        int n;
        while ((n = s.Read(buf, 0, buf.Length)) > 0)
        {
            int start = 0;
            for (int i = 0; i < n; i++)
            {
                if (buf[i] != (byte)'\n') continue;
                Append(line, buf.AsSpan(start, i - start), maxLine, ref tooLong);
                yield return new Line(++number, tooLong ? default : line.ToArray(), tooLong);
                line.SetLength(0);
                tooLong = false;
                start = i + 1;
            }
            Append(line, buf.AsSpan(start, n - start), maxLine, ref tooLong);
        }
        if (line.Length > 0 || tooLong) yield return new Line(++number, tooLong ? default : line.ToArray(), tooLong);
    }

    private static void Append(MemoryStream line, ReadOnlySpan<byte> part, int maxLine, ref bool tooLong)
    {
        if (tooLong) return;
        if (line.Length + part.Length > maxLine) { tooLong = true; line.SetLength(0); return; }
        line.Write(part);
    }
}
