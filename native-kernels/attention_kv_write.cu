// Paged KV-cache write for the serving engine's batched step: the K and V projections of a step's rows (fp32, row
// stride ld, optional biases, K optionally rotated here with RoPE at each row's own position) stored as bf16 into
// their slots of a paged pool (num_blocks, block_size, kv_heads, head_dim), slot = block * block_size + offset as
// given by slot_mapping[r] (the layout of the CPU engine's CpuPagedKvCache). A negative slot skips the row (padding
// of a replayed CUDA graph). RoPE (when inv_freq is not null) rotates dims i and i + head_dim / 2 of each head, as
// kv_cache.cu does for contiguous caches.
// Launch: grid (rows, RowGrid blocks per row), block 128. Programmatic launch is allowed (nothing is read before pdl_wait()).
// paged_rope_qkv_write_bf16: the same write for the K/V columns of a fused [q | k | v] row, plus bias + RoPE on its
// query columns in place (rope_rows_f32's work) in the same pass: one launch per layer instead of two (rope_kv.cu's
// fusion, for paged pools). The q and K/V steps are swiftkv_common.cuh's rope_unit and kv_unit_to_bf16, so the bits
// are those of the two separate kernels. A negative slot skips the row's K/V; its q is still rotated.
// paged_kv_write_fp8 (below) stores the fp8 pool instead: e4m3 bytes plus one fp32 scale per (slot, KV head).
#include "swiftkv_common.cuh"

extern "C" __global__ void paged_kv_write_bf16(const float* k, const float* v, int ld, const float* k_bias, const float* v_bias,
    const float* inv_freq, const int* positions, const int* slot_mapping, int rows, int kv_heads, int head_dim,
    bf16_t* k_cache, bf16_t* v_cache)
{
    pdl_wait();
    const int r = blockIdx.x, kv_dim = kv_heads * head_dim;
    const long long slot = slot_mapping[r];
    if (slot < 0) return;
    const float pos = inv_freq != nullptr ? (float)positions[r] : 0.f;
    const float* kr = k + (long long)r * ld;
    const float* vr = v + (long long)r * ld;
    bf16_t* kc = k_cache + slot * kv_dim;
    bf16_t* vc = v_cache + slot * kv_dim;
    kv_row_to_bf16(kr, vr, k_bias, v_bias, inv_freq, kv_heads, head_dim, pos, kc, vc);
}

extern "C" __global__ void paged_rope_qkv_write_bf16(float* qkv, int ld, const float* q_bias, const float* k_bias,
    const float* v_bias, const float* inv_freq, const int* positions, const int* slot_mapping, int rows, int heads, int kv_heads,
    int head_dim, bf16_t* k_cache, bf16_t* v_cache)
{
    pdl_wait();
    const int r = blockIdx.x, kv_dim = kv_heads * head_dim, half = head_dim / 2;
    const long long slot = slot_mapping[r];
    const long long at = (slot < 0 ? 0 : slot) * kv_dim;
    qkv_row_units(qkv + (long long)r * ld, q_bias, k_bias, v_bias, inv_freq, heads * half, slot < 0 ? 0 : kv_heads * half,
        heads * head_dim, kv_dim, head_dim, (float)positions[r], k_cache + at, v_cache + at);
}

// float -> e4m3 (1 sign, 4 exponent bits of bias 7, 3 mantissa bits; max 448), round to nearest even, saturating
// at +-448 (the scale maps each head's max to 448, so only rounding can reach past it). No NaN is produced.
__device__ __forceinline__ unsigned f32_to_e4m3(float f)
{
    const unsigned sign = (__float_as_uint(f) >> 24) & 0x80u;
    const float a = fabsf(f);
    unsigned code;
    if (!(a < 448.f)) code = 0x7eu;
    else if (a < 0.015625f) code = (unsigned)__float2int_rn(a * 512.f);    // subnormals m * 2^-9 (8 -> 2^-6, normal)
    else
    {
        unsigned u = __float_as_uint(a);
        u += 0x7ffffu + ((u >> 20) & 1u);                                   // round the 23-bit mantissa to 3 bits
        code = (((u >> 23) - 120u) << 3) | ((u >> 20) & 7u);                // exponent bias 127 -> 7
        if (code > 0x7eu) code = 0x7eu;
    }
    return sign | code;
}

// The fp8 pool's write: as paged_kv_write_bf16, but each (row, KV head) of K and of V is stored as e4m3 bytes
// x / scale with scale = max|x| / 448 over the head's head_dim values (after bias and RoPE), scale at
// k_scale / v_scale[slot * kv_heads + head]. A scale per token and head, not per block: a block's tokens arrive
// in different steps, and a block scale fixed by its first token would clip the later ones.
// One warp per KV head; head_dim <= 256. Launch: grid (rows), block 128.
extern "C" __global__ void paged_kv_write_fp8(const float* k, const float* v, int ld, const float* k_bias, const float* v_bias,
    const float* inv_freq, const int* positions, const int* slot_mapping, int rows, int kv_heads, int head_dim,
    unsigned char* k_cache, unsigned char* v_cache, float* k_scale, float* v_scale)
{
    pdl_wait();
    const int r = blockIdx.x, half = head_dim / 2, kv_dim = kv_heads * head_dim;
    const long long slot = slot_mapping[r];
    if (slot < 0) return;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    const float pos = inv_freq != nullptr ? (float)positions[r] : 0.f;
    const float* kr = k + (long long)r * ld;
    const float* vr = v + (long long)r * ld;
    unsigned char* kc = k_cache + slot * kv_dim;
    unsigned char* vc = v_cache + slot * kv_dim;
    for (int h = warp; h < kv_heads; h += warps)
    {
        float ka[4], kb[4], va[4], vb[4], kmax = 0.f, vmax = 0.f;
        #pragma unroll
        for (int j = 0; j < 4; j++)
        {
            const int i = lane + 32 * j, c = h * head_dim + i;
            ka[j] = kb[j] = va[j] = vb[j] = 0.f;
            if (i >= half) continue;
            float a = kr[c], b = kr[c + half], x = vr[c], y = vr[c + half];
            if (k_bias != nullptr) { a += k_bias[c]; b += k_bias[c + half]; }
            if (v_bias != nullptr) { x += v_bias[c]; y += v_bias[c + half]; }
            if (inv_freq != nullptr) rope_pair(a, b, inv_freq[i], pos);
            ka[j] = a; kb[j] = b; va[j] = x; vb[j] = y;
            kmax = fmaxf(kmax, fmaxf(fabsf(a), fabsf(b)));
            vmax = fmaxf(vmax, fmaxf(fabsf(x), fabsf(y)));
        }
        kmax = warp_max(kmax);
        vmax = warp_max(vmax);
        const float kinv = kmax > 0.f ? 448.f / kmax : 0.f, vinv = vmax > 0.f ? 448.f / vmax : 0.f;
        #pragma unroll
        for (int j = 0; j < 4; j++)
        {
            const int i = lane + 32 * j, c = h * head_dim + i;
            if (i >= half) continue;
            kc[c] = (unsigned char)f32_to_e4m3(ka[j] * kinv);
            kc[c + half] = (unsigned char)f32_to_e4m3(kb[j] * kinv);
            vc[c] = (unsigned char)f32_to_e4m3(va[j] * vinv);
            vc[c + half] = (unsigned char)f32_to_e4m3(vb[j] * vinv);
        }
        if (lane == 0)
        {
            k_scale[slot * kv_heads + h] = kmax / 448.f;
            v_scale[slot * kv_heads + h] = vmax / 448.f;
        }
    }
}
