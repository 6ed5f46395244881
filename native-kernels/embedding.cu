// Embedding gather: out (rows, hidden) fp32 = table[ids[r]] with table (vocab, hidden) bf16.
// Launch: grid (rows), block 256; ids are checked on the host before the launch.
#include "swiftkv_common.cuh"

extern "C" __global__ void embedding_bf16(const int* ids, const bf16_t* table, float* out, int rows, int hidden)
{
    int r = blockIdx.x;
    const bf16_t* src = table + (long long)ids[r] * hidden;
    float* dst = out + (long long)r * hidden;
    for (int c = threadIdx.x; c < hidden; c += blockDim.x) dst[c] = bf16_to_f32(src[c]);
}
