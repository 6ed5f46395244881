// Causal GQA attention of a step's query rows over one KV cache (simple, correct, not yet fast).
//   q (rows, ldq) fp32, already rotated; row r sits at position pos0 + r and sees cache slots 0 .. pos0 + r.
//   k_cache, v_cache (capacity, kv_heads, head_dim) bf16; query head h reads kv head h / (heads / kv_heads).
//   out (rows, heads * head_dim) bf16 = softmax(q k^T * scale) v, fp32 math with an online softmax over
//   tiles of ATT_THREADS keys: each thread scores one key of the tile, then owns head_dim / ATT_THREADS
//   output dims (head_dim <= 4 * ATT_THREADS).
//   pos_dev (optional): pos0 read from device memory instead (a decode step replayed as a CUDA graph).
// Launch: grid (heads, rows), block ATT_THREADS (128), dynamic shared memory head_dim floats.
#include "swiftkv_common.cuh"

#define ATT_THREADS 128
#define ATT_DIMS_PER_THREAD 4

extern "C" __global__ void attention_bf16(const float* q, int ldq, const bf16_t* k_cache, const bf16_t* v_cache, bf16_t* out,
    int rows, int heads, int kv_heads, int head_dim, int pos0, float scale, const int* pos_dev)
{
    extern __shared__ float q_s[];
    __shared__ float p_s[ATT_THREADS];
    __shared__ float red[32];
    if (pos_dev != nullptr) pos0 = *pos_dev;
    int h = blockIdx.x, r = blockIdx.y, t = threadIdx.x;
    int kvh = h / (heads / kv_heads), kv_dim = kv_heads * head_dim, len = pos0 + r + 1;
    const float* qr = q + (long long)r * ldq + h * head_dim;
    for (int d = t; d < head_dim; d += ATT_THREADS) q_s[d] = qr[d];
    __syncthreads();

    float m = -INFINITY, l = 0.f, acc[ATT_DIMS_PER_THREAD];
    #pragma unroll
    for (int j = 0; j < ATT_DIMS_PER_THREAD; j++) acc[j] = 0.f;

    for (int k0 = 0; k0 < len; k0 += ATT_THREADS)
    {
        int key = k0 + t;
        float s = -INFINITY;
        if (key < len)
        {
            const bf16_t* kr = k_cache + (long long)key * kv_dim + kvh * head_dim;
            float dot = 0.f;
            for (int d = 0; d < head_dim; d++) dot += q_s[d] * bf16_to_f32(kr[d]);
            s = dot * scale;
        }
        float m_new = fmaxf(m, block_max(s, red));
        float p = key < len ? expf(s - m_new) : 0.f;
        p_s[t] = p;
        float tile_sum = block_sum(p, red);   // its barriers also publish p_s
        float alpha = expf(m - m_new);
        l = l * alpha + tile_sum;
        int n = min(ATT_THREADS, len - k0);
        #pragma unroll
        for (int j = 0; j < ATT_DIMS_PER_THREAD; j++)
        {
            int d = t + j * ATT_THREADS;
            if (d < head_dim)
            {
                float a = acc[j] * alpha;
                const bf16_t* vc = v_cache + (long long)k0 * kv_dim + kvh * head_dim + d;
                for (int i = 0; i < n; i++) a += p_s[i] * bf16_to_f32(vc[(long long)i * kv_dim]);
                acc[j] = a;
            }
        }
        m = m_new;
        __syncthreads();   // p_s is rewritten by the next tile
    }
    bf16_t* o = out + (long long)r * heads * head_dim + h * head_dim;
    #pragma unroll
    for (int j = 0; j < ATT_DIMS_PER_THREAD; j++)
    {
        int d = t + j * ATT_THREADS;
        if (d < head_dim) o[d] = f32_to_bf16(acc[j] / l);
    }
}
