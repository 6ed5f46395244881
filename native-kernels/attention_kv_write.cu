// Paged KV-cache write for the serving engine's batched step: the K and V projections of a step's rows (fp32, row
// stride ld, optional biases, K optionally rotated here with RoPE at each row's own position) stored as bf16 into
// their slots of a paged pool (num_blocks, block_size, kv_heads, head_dim), slot = block * block_size + offset as
// given by slot_mapping[r] (the layout of the CPU engine's CpuPagedKvCache). A negative slot skips the row (padding
// of a replayed CUDA graph). RoPE (when inv_freq is not null) rotates dims i and i + head_dim / 2 of each head, as
// kv_cache.cu does for contiguous caches.
// Launch: grid (rows), block 128.
#include "swiftkv_common.cuh"

extern "C" __global__ void paged_kv_write_bf16(const float* k, const float* v, int ld, const float* k_bias, const float* v_bias,
    const float* inv_freq, const int* positions, const int* slot_mapping, int rows, int kv_heads, int head_dim,
    bf16_t* k_cache, bf16_t* v_cache)
{
    const int r = blockIdx.x, half = head_dim / 2, kv_dim = kv_heads * head_dim;
    const long long slot = slot_mapping[r];
    if (slot < 0) return;
    const float pos = inv_freq != nullptr ? (float)positions[r] : 0.f;
    const float* kr = k + (long long)r * ld;
    const float* vr = v + (long long)r * ld;
    bf16_t* kc = k_cache + slot * kv_dim;
    bf16_t* vc = v_cache + slot * kv_dim;
    for (int idx = threadIdx.x; idx < kv_heads * half; idx += blockDim.x)
    {
        int h = idx / half, i = idx % half, c = h * head_dim + i;
        float a = kr[c], b = kr[c + half];
        float va = vr[c], vb = vr[c + half];
        if (k_bias != nullptr) { a += k_bias[c]; b += k_bias[c + half]; }
        if (v_bias != nullptr) { va += v_bias[c]; vb += v_bias[c + half]; }
        if (inv_freq != nullptr)
        {
            float sn, co;
            sincosf(inv_freq[i] * pos, &sn, &co);
            float ra = a * co - b * sn, rb = b * co + a * sn;
            a = ra;
            b = rb;
        }
        kc[c] = f32_to_bf16(a);
        kc[c + half] = f32_to_bf16(b);
        vc[c] = f32_to_bf16(va);
        vc[c + half] = f32_to_bf16(vb);
    }
}
