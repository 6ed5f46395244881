// Bias + RoPE on the query columns of a fused [q | k | v] projection (fp32, in place) and the K/V cache write of
// the same rows (K bias + RoPE, V bias, stored bf16) in one pass: one launch per layer instead of rope_f32 then
// kv_write_bf16. The RoPE and K/V-store steps are swiftkv_common.cuh's rope_unit and kv_unit_to_bf16, shared with them.
//   qkv (rows, ld): q in columns [0, heads·hd), k in [heads·hd, +kv_dim), v after it; row r at position pos0 + r,
//   or pos_base[0] + r when pos_base is not null (replayable CUDA graphs). Caches (capacity, kv_heads, head_dim).
//   rope_table (may be null): q is left as it is (no bias may be given for it) and row r's angles are written
//   instead, cos of its head_dim/2 pairs then their sin at rope_table + r * head_dim, for the wgmma attention
//   kernel to rotate q as it loads it (a pass over q in memory fewer: its read and write are ~70% of this kernel's bytes).
// Launch: grid (rows, RowGrid blocks per row), block 128; programmatic on sm_90+ (waits for the previous kernel before any access).
#include "swiftkv_common.cuh"

extern "C" __global__ void rope_qkv_write_bf16(float* qkv, int ld, const float* q_bias, const float* k_bias, const float* v_bias,
    const float* inv_freq, int rows, int heads, int kv_heads, int head_dim, int pos0, bf16_t* k_cache, bf16_t* v_cache, const int* pos_base,
    float* rope_table)
{
    const int r = blockIdx.x, q_dim = heads * head_dim, kv_dim = kv_heads * head_dim;
    pdl_wait();
    pdl_launch_dependents();
    if (pos_base != nullptr) pos0 = *pos_base;
    const float pos = (float)(pos0 + r);
    float* row = qkv + (long long)r * ld;
    bf16_t* kc = k_cache + (long long)(pos0 + r) * kv_dim;
    bf16_t* vc = v_cache + (long long)(pos0 + r) * kv_dim;
    const int half = head_dim / 2;
    if (rope_table == nullptr)
    {
        qkv_row_units(row, q_bias, k_bias, v_bias, inv_freq, heads * half, kv_heads * half, q_dim, kv_dim, head_dim, pos, kc, vc);
        return;
    }
    // With a table: the row's head_dim/2 angles instead of its q units, then its K/V units, in one index space.
    const float* kr = row + q_dim;
    for (int idx = row_unit_first(); idx < half + kv_heads * half; idx += row_unit_stride())
    {
        if (idx >= half) kv_unit_to_bf16(kr, kr + kv_dim, k_bias, v_bias, inv_freq, idx - half, head_dim, pos, kc, vc);
        else
        {
            float sn, co;
            sincosf(inv_freq[idx] * pos, &sn, &co);    // rope_pair's angle
            rope_table[(long long)r * head_dim + idx] = co;
            rope_table[(long long)r * head_dim + half + idx] = sn;
        }
    }
}
