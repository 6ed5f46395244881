// Rotary embedding (rotate-half layout) applied in place to query rows, with the projection's bias fused:
//   q (rows, ld) fp32, heads of head_dim starting at column 0; row r sits at position pos0 + r.
//   angle_i = inv_freq[i] * position (one fp32 multiply, as PyTorch does); inv_freq (head_dim/2) comes from the
//   host (RotaryEmbedding.ComputeInvFreq: llama3 scaling), so CPU and GPU share one formula.
//   x[i] <- x[i] cos - x[i+d/2] sin, x[i+d/2] <- x[i+d/2] cos + x[i] sin, after x += bias (bias may be null).
//   pos_base (may be null): when set, the first row's position is read from device memory instead of pos0, so a
//   captured CUDA graph replays at whatever position the engine writes there before each launch.
// Launch: grid (rows, RowGrid blocks per row), block 128; programmatic on sm_90+ (waits for the previous kernel before any access).
#include "swiftkv_common.cuh"

extern "C" __global__ void rope_f32(float* q, int ld, const float* bias, const float* inv_freq, int rows, int heads, int head_dim, int pos0,
    const int* pos_base)
{
    int r = blockIdx.x;
    pdl_wait();
    pdl_launch_dependents();
    float pos = (float)((pos_base != nullptr ? *pos_base : pos0) + r);
    float* row = q + (long long)r * ld;
    rope_row(row, bias, inv_freq, heads, head_dim, pos);
}

// The step's RoPE angles as a table, for the kernels that rotate as they go (gemm_qkv.cu's epilogue,
// attention_hopper.cu's Q staging): row r (position pos0 + r) holds cos of its head_dim/2 pairs, then their sin, at
// table + r * head_dim; the angle is rope_pair's (inv_freq[i] * position, one fp32 multiply), so every kernel that
// rotates, with or without the table, turns a pair by the same cos and sin.
// Launch: grid (rows), block head_dim / 2.
extern "C" __global__ void rope_table_f32(const float* inv_freq, int rows, int head_dim, int pos0, float* table)
{
    const int r = blockIdx.x, i = threadIdx.x, half = head_dim / 2;
    if (r >= rows || i >= half) return;
    float sn, co;
    sincosf(inv_freq[i] * (float)(pos0 + r), &sn, &co);
    table[(long long)r * head_dim + i] = co;
    table[(long long)r * head_dim + half + i] = sn;
}
