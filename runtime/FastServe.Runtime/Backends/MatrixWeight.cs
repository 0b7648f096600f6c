namespace FastServe.Runtime.Backends;

/// <summary>
/// Host-side description of a linear (or embedding) weight, [Rows = out features, Cols = in features],
/// row-major, pointing into memory that outlives every backend weight made from it (a mapped checkpoint or a
/// buffer owned by the model). For <see cref="DType.F8E4M3"/>, <see cref="Scales"/> holds the dequantization
/// scale per output row (length Rows) or for the whole tensor (length 1): w = scale · e4m3(q).
/// </summary>
public sealed unsafe class MatrixWeight
{
    public MatrixWeight(string name, DType dtype, int rows, int cols, byte* data, float[]? scales = null, float[]? bias = null)
    {
        if (dtype is not (DType.F32 or DType.F16 or DType.BF16 or DType.F8E4M3))
            throw new ArgumentException($"{name}: matrices must be F32, F16, BF16 or F8_E4M3, not {dtype.SafeTensorsName()}");
        if (dtype == DType.F8E4M3 && (scales is null || (scales.Length != 1 && scales.Length != rows)))
            throw new ArgumentException($"{name}: FP8 weights need 1 or {rows} scales");
        if (bias is not null && bias.Length != rows)
            throw new ArgumentException($"{name}: bias has {bias.Length} values, expected {rows}");
        Name = name;
        DType = dtype;
        Rows = rows;
        Cols = cols;
        Data = data;
        Scales = scales;
        Bias = bias;
    }

    public string Name { get; }
    public DType DType { get; }
    public int Rows { get; }
    public int Cols { get; }
    public byte* Data { get; }
    public float[]? Scales { get; }
    public float[]? Bias { get; }

    public long ByteLength => (long)Rows * Cols * DType.SizeOf();

    /// <summary>Bytes one full read of the weight touches (data, scales, bias).</summary>
    public long BytesRead => ByteLength + 4L * ((Scales?.Length ?? 0) + (Bias?.Length ?? 0));
}
