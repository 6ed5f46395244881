// Weight initialisers for benchmarks, run on the GPU so an 8B-shaped model needs no 16 GB file or host pass:
//   fill_uniform_bf16: out[i] = bf16(scale * (2u - 1)), u uniform in [0, 1) from a counter-based hash of
//     (seed, i) (SplitMix64 finaliser), so the values depend only on the seed and the index, never on the launch.
//   fill_const_f32: out[i] = value (norm weights of 1, zero biases).
//   fill_e4m3: out[i] = a random e4m3 code of magnitude below 2 (exponent field 0..7: never NaN, never large), from the
//     same hash: fp8-held benchmark weights, whose row scales then set their size.
// Launch: any grid-stride grid, e.g. (min(ceil(n / 256), 65535 * 8)), block 256.
#include "swiftkv_common.cuh"

__device__ __forceinline__ unsigned long long splitmix64(unsigned long long x)
{
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

extern "C" __global__ void fill_uniform_bf16(bf16_t* out, long long n, unsigned long long seed, float scale)
{
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
    {
        unsigned long long h = splitmix64(seed ^ splitmix64((unsigned long long)i));
        float u = (float)(h >> 40) * (1.0f / 16777216.0f);   // 24 random bits
        out[i] = f32_to_bf16(scale * (2.f * u - 1.f));
    }
}

extern "C" __global__ void fill_const_f32(float* out, long long n, float value)
{
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) out[i] = value;
}

extern "C" __global__ void fill_e4m3(unsigned char* out, long long n, unsigned long long seed)
{
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        out[i] = (unsigned char)(splitmix64(seed ^ splitmix64((unsigned long long)i)) >> 56) & 0xBFu;   // bit 6 clear: exponent <= 7
}
