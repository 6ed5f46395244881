// Launcher for native-kernels/init_random.cu.
namespace SwiftKV.Cuda.Kernels;

/// <summary>Fills device buffers with seeded uniform bf16 values or an fp32 constant (benchmark weights).</summary>
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
