// One entry of a safetensors header: what the tensor is and where its bytes lie in the file.
namespace SwiftKV.Model.Checkpoint;

/// <summary>
/// A tensor's header entry. <see cref="DataOffset"/> is absolute in the file (the header's data_offsets are
/// relative to the end of the header; the reader adds 8 + header length).
/// </summary>
public sealed record TensorInfo(string Name, TensorDtype Dtype, IReadOnlyList<long> Shape, long DataOffset, long ByteLength)
{
    public long ElementCount => Shape.Aggregate(1L, (a, b) => checked(a * b));

    /// <summary>The shape as "[4096, 128256]", for error messages.</summary>
    public string ShapeText => FormatShape(Shape);

    public bool HasShape(IReadOnlyList<long> shape) => Shape.SequenceEqual(shape);

    public static string FormatShape(IReadOnlyList<long> shape) => "[" + string.Join(", ", shape) + "]";
}
