// The element types a safetensors header can name. Only F32, F16 and BF16 convert to the fp32 the
// backends compute with (and F8_E4M3 / F8_E5M2 with their scales); the others are still parsed so that a file
// holding them (the 405B FP8 upload, an int tensor in a shard, a complex rope table, MX scales) opens and fails
// only when such a tensor is actually read. safetensors' sub-byte floats (F4, F6_*) are not listed: a header naming
// one is refused with the name, since their byte sizes are not whole per element.
namespace SwiftKV.Model.Checkpoint;

/// <summary>A safetensors element type; <see cref="TensorDtypes.SafetensorsName"/> gives the header spelling.</summary>
public enum TensorDtype
{
    Bool, U8, I8, F8E5M2, F8E4M3, F8E8M0, I16, U16, F16, BF16, I32, U32, F32, F64, I64, U64, C64,
}

/// <summary>Sizes and names of <see cref="TensorDtype"/> values.</summary>
public static class TensorDtypes
{
    public static int ElementSize(this TensorDtype dtype) => dtype switch
    {
        TensorDtype.Bool or TensorDtype.U8 or TensorDtype.I8 or TensorDtype.F8E5M2 or TensorDtype.F8E4M3 or TensorDtype.F8E8M0 => 1,
        TensorDtype.I16 or TensorDtype.U16 or TensorDtype.F16 or TensorDtype.BF16 => 2,
        TensorDtype.I32 or TensorDtype.U32 or TensorDtype.F32 => 4,
        TensorDtype.F64 or TensorDtype.I64 or TensorDtype.U64 or TensorDtype.C64 => 8,
        _ => throw new ArgumentOutOfRangeException(nameof(dtype), dtype, null),
    };

    /// <summary>The spelling in a safetensors header ("BF16", "F8_E4M3").</summary>
    public static string SafetensorsName(this TensorDtype dtype) => dtype switch
    {
        TensorDtype.F8E5M2 => "F8_E5M2",
        TensorDtype.F8E4M3 => "F8_E4M3",
        TensorDtype.F8E8M0 => "F8_E8M0",
        TensorDtype.Bool => "BOOL",
        _ => dtype.ToString(),
    };

    /// <summary>True for the types <see cref="Fp32Conversion"/> reads and writes.</summary>
    public static bool ConvertsToFloat32(this TensorDtype dtype) =>
        dtype is TensorDtype.F32 or TensorDtype.F16 or TensorDtype.BF16;

    public static bool TryParseSafetensorsName(string name, out TensorDtype dtype)
    {
        foreach (TensorDtype d in Enum.GetValues<TensorDtype>())
        {
            if (d.SafetensorsName() == name) { dtype = d; return true; }
        }
        dtype = default;
        return false;
    }

    /// <summary>The config.json <c>torch_dtype</c> spelling ("bfloat16") of a floating-point type.</summary>
    public static string TorchName(this TensorDtype dtype) => dtype switch
    {
        TensorDtype.F32 => "float32",
        TensorDtype.F16 => "float16",
        TensorDtype.BF16 => "bfloat16",
        _ => throw new ArgumentException($"{dtype.SafetensorsName()} has no config.json torch_dtype spelling used by this project.", nameof(dtype)),
    };

    /// <summary>The storage type a config.json <c>torch_dtype</c> names; throws naming the value when it is not bf16, fp16 or fp32.</summary>
    public static TensorDtype FromTorchName(string torchDtype) => torchDtype switch
    {
        "float32" => TensorDtype.F32,
        "float16" => TensorDtype.F16,
        "bfloat16" => TensorDtype.BF16,
        _ => throw new InvalidModelException($"config.json: torch_dtype '{torchDtype}' is not one of bfloat16, float16, float32."),
    };
}
