// Row helpers of the serving engine's batched step, where one activation holds many sequences' rows:
//   rope_rows_f32   bias + RoPE on query rows, row r at positions[r] (rope.cu's formula, one position per row
//                   instead of pos0 + r, so a batched row rotates exactly as the same row run alone).
//   gather_rows_f32 dst row r = src row index[r] (the SwiftKV row selection: only rows that need logits go on).
// Launch: rope_rows_f32 grid (rows, RowGrid blocks per row), block 128; gather_rows_f32 grid (rows), block 256.
// Programmatic launch is allowed: both read nothing before pdl_wait().
#include "swiftkv_common.cuh"

extern "C" __global__ void rope_rows_f32(float* q, int ld, const float* bias, const float* inv_freq, const int* positions,
    int rows, int heads, int head_dim)
{
    pdl_wait();
    int r = blockIdx.x;
    float pos = (float)positions[r];
    float* row = q + (long long)r * ld;
    rope_row(row, bias, inv_freq, heads, head_dim, pos);
}

extern "C" __global__ void gather_rows_f32(const float* src, const int* index, int cols, float* dst)
{
    pdl_wait();
    const float* s = src + (long long)index[blockIdx.x] * cols;
    float* d = dst + (long long)blockIdx.x * cols;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) d[c] = s[c];
}
