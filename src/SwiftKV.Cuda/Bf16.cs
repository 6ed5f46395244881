// bfloat16 as stored on the device: the top 16 bits of an fp32. Conversion rounds to nearest even.
namespace SwiftKV.Cuda;

/// <summary>A bfloat16 value (device storage type for weights, activations fed to GEMMs, and KV caches).</summary>
public readonly record struct Bf16(ushort Bits)
{
    public static Bf16 FromSingle(float value)
    {
        uint bits = BitConverter.SingleToUInt32Bits(value);
        if (float.IsNaN(value)) return new Bf16((ushort)((bits >> 16) | 0x0040));
        return new Bf16((ushort)((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16));
    }

    public float ToSingle() => BitConverter.Int32BitsToSingle(Bits << 16);

    public static Bf16[] FromSingles(ReadOnlySpan<float> values)
    {
        var r = new Bf16[values.Length];
        for (int i = 0; i < values.Length; i++) r[i] = FromSingle(values[i]);
        return r;
    }

    public static float[] ToSingles(ReadOnlySpan<Bf16> values)
    {
        var r = new float[values.Length];
        for (int i = 0; i < values.Length; i++) r[i] = values[i].ToSingle();
        return r;
    }
}
