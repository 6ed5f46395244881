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
    const float* kr = row + q_dim;
    const float* vr = kr + kv_dim;
    bf16_t* kc = k_cache + (long long)(pos0 + r) * kv_dim;
    bf16_t* vc = v_cache + (long long)(pos0 + r) * kv_dim;
    // One index space over the row's q units (or, with a table, its head_dim/2 angles), then its K/V units, so each
    // thread has one unit when the launcher gives the row enough blocks.
    const int half = head_dim / 2, q_units = rope_table != nullptr ? half : heads * half, units = q_units + kv_heads * half;
    for (int idx = row_unit_first(); idx < units; idx += row_unit_stride())
    {
        if (idx >= q_units) kv_unit_to_bf16(kr, vr, k_bias, v_bias, inv_freq, idx - q_units, head_dim, pos, kc, vc);
        else if (rope_table == nullptr) rope_unit(row, q_bias, inv_freq, idx, head_dim, pos);
        else
        {
            float sn, co;
            sincosf(inv_freq[idx] * pos, &sn, &co);    // rope_pair's angle
            rope_table[(long long)r * head_dim + idx] = co;
            rope_table[(long long)r * head_dim + half + idx] = sn;
        }
    }
}
