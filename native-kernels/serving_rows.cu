// Row helpers of the serving engine's batched step, where one activation holds many sequences' rows:
//   rope_rows_f32   bias + RoPE on query rows, row r at positions[r] (rope.cu's formula, one position per row
//                   instead of pos0 + r, so a batched row rotates exactly as the same row run alone).
//   gather_rows_f32 dst row r = src row index[r] (the SwiftKV row selection: only rows that need logits go on).
// Launch: grid (rows), block 128 / 256.
#include "swiftkv_common.cuh"

extern "C" __global__ void rope_rows_f32(float* q, int ld, const float* bias, const float* inv_freq, const int* positions,
    int rows, int heads, int head_dim)
{
    int r = blockIdx.x, half = head_dim / 2;
    float pos = (float)positions[r];
    float* row = q + (long long)r * ld;
    for (int idx = threadIdx.x; idx < heads * half; idx += blockDim.x)
    {
        int h = idx / half, i = idx % half, c = h * head_dim + i;
        float a = row[c], b = row[c + half];
        if (bias != nullptr) { a += bias[c]; b += bias[c + half]; }
        float s, co;
        sincosf(inv_freq[i] * pos, &s, &co);
        row[c] = a * co - b * s;
        row[c + half] = b * co + a * s;
    }
}

extern "C" __global__ void gather_rows_f32(const float* src, const int* index, int cols, float* dst)
{
    const float* s = src + (long long)index[blockIdx.x] * cols;
    float* d = dst + (long long)blockIdx.x * cols;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) d[c] = s[c];
}
