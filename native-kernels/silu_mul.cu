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
    out[(long long)r * inter + i] = f32_to_bf16(g / (1.f + expf(-g)) * row[inter + i]);
}
