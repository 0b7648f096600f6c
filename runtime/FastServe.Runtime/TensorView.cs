namespace FastServe.Runtime;

/// <summary>
/// A read-only view of one stored tensor: a pointer into memory owned by someone else (normally a
/// memory-mapped safetensors file, which must outlive the view). Shape is row-major, outermost first.
/// </summary>
public sealed unsafe class TensorView
{
    public TensorView(string name, DType dtype, long[] shape, byte* data, long byteLength)
    {
        Name = name;
        DType = dtype;
        Shape = shape;
        Data = data;
        ByteLength = byteLength;
    }

    public string Name { get; }
    public DType DType { get; }
    public long[] Shape { get; }
    public byte* Data { get; }
    public long ByteLength { get; }

    public long ElementCount
    {
        get
        {
            long n = 1;
            foreach (long d in Shape) n *= d;
            return n;
        }
    }

    public ReadOnlySpan<byte> Bytes => ByteLength <= int.MaxValue
        ? new ReadOnlySpan<byte>(Data, (int)ByteLength)
        : throw new InvalidOperationException($"tensor {Name} is larger than 2 GiB; read it through Data");

    public override string ToString() => $"{Name} {DType.SafeTensorsName()}[{string.Join(",", Shape)}]";
}
