// Element conversions between checkpoint storage types and fp32. Little-endian only: safetensors is
// little-endian by definition and every machine this project targets is too (checked at file open), so F32
// is a plain copy.
// NOTE: fp32 -> bf16 rounds to nearest, ties to even, and keeps NaN a NaN, which is what torch's
// .to(torch.bfloat16) does; plain truncation would bias every weight towards zero.
using System.Buffers.Binary;
using System.Runtime.InteropServices;

namespace SwiftKV.Model.Checkpoint;

/// <summary>Converts spans of stored elements to and from fp32.</summary>
public static class Fp32Conversion
{
    /// <summary>Decodes <paramref name="destination"/>.Length elements of <paramref name="dtype"/> from <paramref name="source"/>.</summary>
    public static void ToFloat32(ReadOnlySpan<byte> source, TensorDtype dtype, Span<float> destination)
    {
        int size = dtype.ElementSize();
        if (source.Length != destination.Length * size)
            throw new ArgumentException($"{source.Length} bytes of {dtype.SafetensorsName()} do not hold {destination.Length} elements.");
        switch (dtype)
        {
            case TensorDtype.F32:
                MemoryMarshal.Cast<byte, float>(source).CopyTo(destination);
                break;
            case TensorDtype.BF16:
                for (int i = 0; i < destination.Length; i++)
                    destination[i] = BFloat16BitsToSingle(BinaryPrimitives.ReadUInt16LittleEndian(source[(i * 2)..]));
                break;
            case TensorDtype.F16:
                for (int i = 0; i < destination.Length; i++)
                    destination[i] = (float)BinaryPrimitives.ReadHalfLittleEndian(source[(i * 2)..]);
                break;
            default:
                throw new NotSupportedException($"{dtype.SafetensorsName()} cannot be converted to fp32 (supported: F32, F16, BF16).");
        }
    }

    /// <summary>Encodes <paramref name="source"/> as <paramref name="dtype"/> into <paramref name="destination"/>.</summary>
    public static void FromFloat32(ReadOnlySpan<float> source, TensorDtype dtype, Span<byte> destination)
    {
        int size = dtype.ElementSize();
        if (destination.Length != source.Length * size)
            throw new ArgumentException($"{destination.Length} bytes of {dtype.SafetensorsName()} do not hold {source.Length} elements.");
        switch (dtype)
        {
            case TensorDtype.F32:
                MemoryMarshal.AsBytes(source).CopyTo(destination);
                break;
            case TensorDtype.BF16:
                for (int i = 0; i < source.Length; i++)
                    BinaryPrimitives.WriteUInt16LittleEndian(destination[(i * 2)..], SingleToBFloat16Bits(source[i]));
                break;
            case TensorDtype.F16:
                for (int i = 0; i < source.Length; i++)
                    BinaryPrimitives.WriteHalfLittleEndian(destination[(i * 2)..], (Half)source[i]);
                break;
            default:
                throw new NotSupportedException($"fp32 cannot be stored as {dtype.SafetensorsName()} (supported: F32, F16, BF16).");
        }
    }

    /// <summary>bf16 is the top half of an fp32, so widening is a shift.</summary>
    public static float BFloat16BitsToSingle(ushort bits) => BitConverter.Int32BitsToSingle(bits << 16);

    public static ushort SingleToBFloat16Bits(float value)
    {
        uint bits = BitConverter.SingleToUInt32Bits(value);
        if (float.IsNaN(value)) return (ushort)((bits >> 16) | 0x0040); // quiet NaN, sign kept
        uint roundingBias = 0x7FFFu + ((bits >> 16) & 1u);
        return (ushort)((bits + roundingBias) >> 16);
    }
}
