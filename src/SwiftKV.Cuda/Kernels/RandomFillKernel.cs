// Launcher for native-kernels/init_random.cu.
namespace SwiftKV.Cuda.Kernels;

/// <summary>Fills device buffers with seeded uniform bf16 values, random e4m3 codes or an fp32 constant (benchmark weights).</summary>
public sealed unsafe class RandomFillKernel(KernelLibrary library)
{
    readonly CudaKernel _uniform = library.Get("init_random.cu", "fill_uniform_bf16");
    readonly CudaKernel _const = library.Get("init_random.cu", "fill_const_f32");

    /// <summary>output[i] = bf16(scale · U(-1, 1)), a function of (seed, i) only.</summary>
    public void Uniform(CudaStream stream, DeviceSpan<Bf16> output, ulong seed, float scale)
    {
        long n = output.Length;
        ulong p = output.Address;
        void** args = stackalloc void*[] { &p, &n, &seed, &scale };
        _uniform.Launch(stream, (Blocks(n), 1, 1), 256, 0, args);
    }

    /// <summary>output[i] = a random e4m3 code of magnitude below 2 (never NaN), a function of (seed, i) only.</summary>
    public void E4m3(CudaStream stream, DeviceSpan<byte> output, ulong seed)
    {
        var k = _e4m3 ??= library.Get("init_random.cu", "fill_e4m3");
        long n = output.Length;
        ulong p = output.Address;
        void** args = stackalloc void*[] { &p, &n, &seed };
        k.Launch(stream, (Blocks(n), 1, 1), 256, 0, args);
    }
    CudaKernel? _e4m3;

    /// <summary>output[i] = value.</summary>
    public void Constant(CudaStream stream, DeviceSpan<float> output, float value)
    {
        long n = output.Length;
        ulong p = output.Address;
        void** args = stackalloc void*[] { &p, &n, &value };
        _const.Launch(stream, (Blocks(n), 1, 1), 256, 0, args);
    }

    static uint Blocks(long n) => (uint)Math.Clamp((n + 255) / 256, 1, 132 * 64);
}
