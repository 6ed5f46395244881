// One fp8-quantized weight matrix of a checkpoint and its scales (WeightQuantization says the format). Its value
// at [row, column] is code * scale, where the scale is one per matrix, one per output row, or one per
// [b0, b1] block (the last blocks of a row or column may be partial, as in vLLM's reading of such files).
// Dequantize works on any run of elements, so the GPU loader can convert its staging pieces in parallel and the
// CPU loader the whole matrix, through the same code.
namespace SwiftKV.Model.Checkpoint;

/// <summary>A quantized weight with its scales read; <see cref="Dequantize"/> gives fp32 values.</summary>
public sealed class ScaledFp8Tensor
{
    enum Layout { PerTensor, PerChannel, Block }

    readonly SafetensorsFile _file;
    readonly Layout _layout;
    readonly float[] _scales;
    readonly int _blockRows, _blockColumns, _scaleColumns;

    public TensorInfo Weight { get; }
    public long Rows { get; }
    public long Columns { get; }
    /// <summary>Bytes of the scale tensor as stored.</summary>
    public long ScaleByteLength { get; }

    /// <summary>The scales, row-major over the grid of <see cref="BlockRows"/> x <see cref="BlockColumns"/> blocks.</summary>
    public ReadOnlySpan<float> Scales => _scales;
    /// <summary>Rows of one scale's block: all rows for one scale per matrix, 1 for one per output channel.</summary>
    public int BlockRows => _layout switch { Layout.PerTensor => checked((int)Rows), Layout.PerChannel => 1, _ => _blockRows };
    /// <summary>Columns of one scale's block: all columns unless the scales are block-wise.</summary>
    public int BlockColumns => _layout == Layout.Block ? _blockColumns : checked((int)Columns);
    /// <summary>Scales per row of the grid.</summary>
    public int ScaleColumns => _layout == Layout.Block ? _scaleColumns : 1;

    ScaledFp8Tensor(TensorInfo weight, TensorInfo scale, SafetensorsFile file, Layout layout, float[] scales, (int Rows, int Columns) block, int scaleColumns)
    {
        Weight = weight;
        ScaleByteLength = scale.ByteLength;
        _file = file;
        _layout = layout;
        _scales = scales;
        (_blockRows, _blockColumns) = block;
        _scaleColumns = scaleColumns;
        Rows = weight.Shape[0];
        Columns = weight.Shape[1];
    }

    /// <summary>
    /// What is wrong with reading <paramref name="weight"/> (an fp8 tensor) under <paramref name="quantization"/>, or null
    /// when its scale tensor is present with a usable shape and dtype. Reads headers only.
    /// </summary>
    public static string? Problem(WeightQuantization? quantization, SafetensorsCheckpoint checkpoint, TensorInfo weight)
    {
        string what = $"'{weight.Name}' is {weight.Dtype.SafetensorsName()}";
        if (quantization is null)
            return $"{what} but config.json has no quantization_config saying how it is scaled";
        if (weight.Shape.Count != 2)
            return $"{what} with shape {weight.ShapeText}; only 2-D weight matrices can be fp8";
        var names = quantization.ScaleNames(weight.Name);
        string? scaleName = names.FirstOrDefault(checkpoint.Contains);
        if (scaleName is null || !checkpoint.TryGet(scaleName, out var scale, out _))
            return $"{what} but its scale '{names[0]}' is missing ({quantization.Method})";
        if (!scale.Dtype.ConvertsToFloat32())
            return $"scale '{scaleName}' has dtype {scale.Dtype.SafetensorsName()}; only F32, F16 and BF16 are supported";
        return LayoutOf(quantization, weight, scale, out _) is null
            ? $"scale '{scaleName}' has shape {scale.ShapeText}, which fits no {quantization.Method} layout for {weight.ShapeText}: " +
              ExpectedShapes(quantization, weight)
            : null;
    }

    /// <summary>
    /// <see cref="Problem"/>, and then what is wrong with the scale values (read here: one per matrix, row or block, so
    /// small), or null. The loader's check runs this, so a NaN scale fails before any weight is read, in every command.
    /// </summary>
    public static string? ProblemWithScales(WeightQuantization? quantization, SafetensorsCheckpoint checkpoint, TensorInfo weight) =>
        Problem(quantization, checkpoint, weight) ?? ReadScales(quantization!, checkpoint, weight).Problem;

    /// <summary>Opens <paramref name="weight"/> and reads its scales; throws <see cref="InvalidModelException"/> naming the problem.</summary>
    public static ScaledFp8Tensor Open(WeightQuantization? quantization, SafetensorsCheckpoint checkpoint, TensorInfo weight, SafetensorsFile file)
    {
        if (Problem(quantization, checkpoint, weight) is { } problem) throw new InvalidModelException($"{checkpoint.Directory}: {problem}.");
        var (scaleInfo, scales, scaleProblem) = ReadScales(quantization!, checkpoint, weight);
        if (scaleProblem is not null) throw new InvalidModelException($"{checkpoint.Directory}: {scaleProblem}.");
        var layout = LayoutOf(quantization!, weight, scaleInfo, out int scaleColumns)!.Value;
        return new ScaledFp8Tensor(weight, scaleInfo, file, layout, scales, quantization!.BlockSize ?? (1, 1), scaleColumns);
    }

    /// <summary>The scale tensor of a weight that <see cref="Problem"/> passed, its values, and what is wrong with them.</summary>
    static (TensorInfo Info, float[] Scales, string? Problem) ReadScales(WeightQuantization quantization, SafetensorsCheckpoint checkpoint, TensorInfo weight)
    {
        string scaleName = quantization.ScaleNames(weight.Name).First(checkpoint.Contains);
        checkpoint.TryGet(scaleName, out var scaleInfo, out _);
        float[] scales = checkpoint.ReadFloat32(scaleName);
        // A negative scale would flip its weights' signs: no quantizer writes one (scales are amax / 448), so it is damage.
        // Zero is allowed: an all-zero matrix or block quantizes to it.
        foreach (float s in scales)
            if (!float.IsFinite(s) || s < 0)
                return (scaleInfo, scales, $"scale '{scaleName}' holds {s}; every scale must be finite and not negative");
        return (scaleInfo, scales, null);
    }

    static Layout? LayoutOf(WeightQuantization q, TensorInfo weight, TensorInfo scale, out int scaleColumns)
    {
        long rows = weight.Shape[0], columns = weight.Shape[1];
        var s = scale.Shape;
        scaleColumns = 1;
        if (q.BlockSize is var (b0, b1))
        {
            long gridRows = (rows + b0 - 1) / b0, gridColumns = (columns + b1 - 1) / b1;
            scaleColumns = (int)gridColumns;
            return s.Count == 2 && s[0] == gridRows && s[1] == gridColumns ? Layout.Block : null;
        }
        if (scale.ElementCount == 1 && s.Count <= 2) return Layout.PerTensor;
        if ((s.Count == 1 && s[0] == rows) || (s.Count == 2 && s[0] == rows && s[1] == 1)) return Layout.PerChannel;
        return null;
    }

    static string ExpectedShapes(WeightQuantization q, TensorInfo weight)
    {
        long rows = weight.Shape[0], columns = weight.Shape[1];
        return q.BlockSize is var (b0, b1)
            ? $"expected [{(rows + b0 - 1) / b0}, {(columns + b1 - 1) / b1}] (one per {b0} x {b1} block)"
            : $"expected [{rows}, 1] (per output channel) or [1] (per matrix)";
    }

    /// <summary>Fills <paramref name="destination"/> with the fp32 values of elements [first, first + destination.Length) in row-major order.</summary>
    public void Dequantize(long first, Span<float> destination)
    {
        if (first < 0 || first + destination.Length > Weight.ElementCount)
            throw new ArgumentOutOfRangeException(nameof(first), $"elements [{first}, {first + destination.Length}) are outside '{Weight.Name}' ({Weight.ElementCount}).");
        Float8.ToFloat32(_file.GetBytes(Weight, first, destination.Length), Weight.Dtype, destination);
        switch (_layout)
        {
            case Layout.PerTensor:
                float scale = _scales[0];
                for (int i = 0; i < destination.Length; i++) destination[i] *= scale;
                break;
            default:
                // Walk the run row by row; within a row the scale changes only at block edges.
                long at = first, end = first + destination.Length;
                while (at < end)
                {
                    long row = at / Columns, column = at % Columns;
                    long rowEnd = Math.Min(end, (row + 1) * Columns);
                    if (_layout == Layout.PerChannel)
                    {
                        Scale(destination, at - first, rowEnd - at, _scales[row]);
                        at = rowEnd;
                        continue;
                    }
                    long blockEnd = Math.Min(rowEnd, row * Columns + (column / _blockColumns + 1) * _blockColumns);
                    Scale(destination, at - first, blockEnd - at, _scales[row / _blockRows * _scaleColumns + column / _blockColumns]);
                    at = blockEnd;
                }
                break;
        }
    }

    static void Scale(Span<float> values, long start, long count, float scale)
    {
        var run = values.Slice((int)start, (int)count);
        for (int i = 0; i < run.Length; i++) run[i] *= scale;
    }

    /// <summary>
    /// One scale per row, when a single scale spans each whole row (one per matrix, per output channel, or blocks as
    /// wide as the matrix): what the GPU needs to keep the codes as they are and scale each row's dot products once.
    /// Null for block-wise scales that change along a row.
    /// </summary>
    public float[]? RowScales()
    {
        if (ScaleColumns != 1 || BlockColumns < Columns) return null;
        var rows = new float[Rows];
        for (long r = 0; r < Rows; r++) rows[r] = _scales[r / BlockRows];
        return rows;
    }

    /// <summary>The whole matrix as fp32.</summary>
    public float[] ReadFloat32()
    {
        if (Weight.ElementCount > Array.MaxLength)
            throw new InvalidModelException($"'{Weight.Name}' {Weight.ShapeText} has more elements than one array holds.");
        var values = GC.AllocateUninitializedArray<float>((int)Weight.ElementCount);
        const int Chunk = 1 << 20;
        int chunks = (values.Length + Chunk - 1) / Chunk;
        Parallel.For(0, chunks, c =>
        {
            int start = c * Chunk, n = Math.Min(Chunk, values.Length - start);
            Dequantize(start, values.AsSpan(start, n));
        });
        return values;
    }
}
