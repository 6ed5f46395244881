// RMSNorm with an optional fused bias add into the residual stream:
//   x (rows, dim) fp32, in place: x += bias (when bias != null, e.g. o_proj's bias after its GEMM added into x)
//   out (rows, dim) bf16 = weight * x / sqrt(mean(x^2) + eps), computed in fp32 (Hugging Face order).
// The residual add itself happens in the GEMM (beta = 1), so this is the "fused residual" norm of the layer.
// Launch: grid (rows), block 256, no dynamic shared memory; programmatic on sm_90+ (waits for the previous kernel
// first, then lets the next one, typically a GEMV prefetching its weights, start).
#include "swiftkv_common.cuh"

extern "C" __global__ void rms_norm_f32(float* x, const float* bias, const float* weight, bf16_t* out, int rows, int dim, float eps)
{
    __shared__ float red[32];
    pdl_wait();
    pdl_launch_dependents();
    int r = blockIdx.x;
    float* row = x + (long long)r * dim;
    float ss = 0.f;
    for (int c = threadIdx.x; c < dim; c += blockDim.x)
    {
        float v = row[c];
        if (bias != nullptr) { v += bias[c]; row[c] = v; }
        ss += v * v;
    }
    ss = block_sum(ss, red);
    float inv = 1.f / sqrtf(ss / (float)dim + eps);
    bf16_t* o = out + (long long)r * dim;
    for (int c = threadIdx.x; c < dim; c += blockDim.x) o[c] = f32_to_bf16(row[c] * inv * weight[c]);
}
