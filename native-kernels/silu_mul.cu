// SwiGLU activation: out (rows, inter) bf16 = silu(gate) * up, where gate_up (rows, 2 * inter) fp32 is the
// output of the fused [gate_proj; up_proj] GEMM (gate in columns 0..inter-1, up in inter..2*inter-1).
// Launch: grid (ceil(inter / 256), rows), block 256.
#include "swiftkv_common.cuh"

extern "C" __global__ void silu_mul_f32(const float* gate_up, int rows, int inter, bf16_t* out)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x, r = blockIdx.y;
    if (i >= inter) return;
    const float* row = gate_up + (long long)r * 2 * inter;
    float g = row[i];
    out[(long long)r * inter + i] = f32_to_bf16(silu_f32(g) * row[inter + i]);
}

// The same on bf16 [gate | up] (the prefill GEMM writes bf16: half the bytes of fp32 on both sides of this pass).
// Eight columns per thread with 16-byte loads and stores when inter % 8 == 0 and both pointers are 16-byte aligned
// (vec != 0), one column per thread otherwise. Launch: grid (ceil(inter / (256 · (vec ? 8 : 1))), rows), block 256.
extern "C" __global__ void silu_mul_bf16(const bf16_t* gate_up, int rows, int inter, bf16_t* out, int vec)
{
    int r = blockIdx.y;
    const bf16_t* g = gate_up + (long long)r * 2 * inter;
    const bf16_t* u = g + inter;
    bf16_t* o = out + (long long)r * inter;
    if (vec)
    {
        int i = (blockIdx.x * blockDim.x + threadIdx.x) * 8;
        if (i >= inter) return;
        *reinterpret_cast<uint4*>(o + i) = silu_mul_bf16x8(*reinterpret_cast<const uint4*>(g + i), *reinterpret_cast<const uint4*>(u + i));
        return;
    }
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= inter) return;
    float gf = bf16_to_f32(g[i]);
    o[i] = f32_to_bf16(silu_f32(gf) * bf16_to_f32(u[i]));
}
