// RMSNorm with an optional fused bias add into the residual stream:
//   x (rows, dim) fp32, in place: x += bias (when bias != null, e.g. o_proj's bias after its GEMM added into x)
//   out (rows, dim) bf16 = weight * x / sqrt(mean(x^2) + eps), computed in fp32 (Hugging Face order).
// The residual add itself happens in the GEMM (beta = 1), so this is the "fused residual" norm of the layer.
// Launch: grid (rows), block 256, no dynamic shared memory; programmatic on sm_90+ (waits for the previous kernel
// first, then lets the next one, typically a GEMV prefetching its weights, start).
#include "swiftkv_common.cuh"

// Rows of whole float4s at 16-byte aligned addresses (every Llama width) take 16-byte loads and 8-byte stores: the
// scalar loop ran at about half the copy bandwidth (H100, ncu: 30 us for a 2048 x 4096 row block, 48 MB moved).
extern "C" __global__ void rms_norm_f32(float* x, const float* bias, const float* weight, bf16_t* out, int rows, int dim, float eps)
{
    __shared__ float red[32];
    pdl_wait();
    pdl_launch_dependents();
    int r = blockIdx.x;
    float* row = x + (long long)r * dim;
    bf16_t* o = out + (long long)r * dim;
    const unsigned long long align = (unsigned long long)x | (unsigned long long)weight | (unsigned long long)bias;
    const bool vec = (dim & 3) == 0 && (align & 15) == 0 && ((unsigned long long)out & 7) == 0;
    if (vec)
    {
        float4* row4 = reinterpret_cast<float4*>(row);
        const float4* w4 = reinterpret_cast<const float4*>(weight);
        const float inv = rms_row_inv(row4, reinterpret_cast<const float4*>(bias), dim, eps, red);
        uint2* o2 = reinterpret_cast<uint2*>(o);
        for (int c = threadIdx.x; c < dim / 4; c += blockDim.x) o2[c] = rms_row_bf16x4(row4[c], w4[c], inv);
        return;
    }
    float ss = 0.f;
    for (int c = threadIdx.x; c < dim; c += blockDim.x)
    {
        float v = row[c];
        if (bias != nullptr) { v += bias[c]; row[c] = v; }
        ss += v * v;
    }
    ss = block_sum(ss, red);
    const float inv = 1.f / sqrtf(ss / (float)dim + eps);
    for (int c = threadIdx.x; c < dim; c += blockDim.x) o[c] = f32_to_bf16(row[c] * inv * weight[c]);
}
