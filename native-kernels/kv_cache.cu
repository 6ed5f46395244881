// KV-cache write: the K and V projections of a step (fp32, row stride ld, biases fused, K rotated with RoPE)
// stored as bf16 at cache slots pos0 .. pos0+rows-1. Cache layout (capacity, kv_heads, head_dim) per layer
// (or per AcrossKV group). Row r of k/v is token pos0 + r; when pos_base is not null the first slot is read from
// device memory instead of pos0 (replayable CUDA graphs: the engine writes the position before each launch).
// Launch: grid (rows, RowGrid blocks per row), block 128; programmatic on sm_90+ (waits for the previous kernel before any access).
#include "swiftkv_common.cuh"

extern "C" __global__ void kv_write_bf16(const float* k, const float* v, int ld, const float* k_bias, const float* v_bias,
    const float* inv_freq, int rows, int kv_heads, int head_dim, int pos0, bf16_t* k_cache, bf16_t* v_cache, const int* pos_base)
{
    int r = blockIdx.x, kv_dim = kv_heads * head_dim;
    pdl_wait();
    pdl_launch_dependents();
    if (pos_base != nullptr) pos0 = *pos_base;
    float pos = (float)(pos0 + r);
    const float* kr = k + (long long)r * ld;
    const float* vr = v + (long long)r * ld;
    bf16_t* kc = k_cache + (long long)(pos0 + r) * kv_dim;
    bf16_t* vc = v_cache + (long long)(pos0 + r) * kv_dim;
    kv_row_to_bf16(kr, vr, k_bias, v_bias, inv_freq, kv_heads, head_dim, pos, kc, vc);
}
