// Row-wise argmax of fp32 logits: out[r] = index of the largest x[r, :] (lowest index on ties; NaN never wins).
// Greedy decoding on the GPU downloads one int per row instead of a vocab-sized row of logits.
// Launch: grid (rows), block 256.
#include "swiftkv_common.cuh"

extern "C" __global__ void argmax_f32(const float* x, int rows, int n, int* out)
{
    __shared__ float best_v[32];
    __shared__ int best_i[32];
    const float* row = x + (long long)blockIdx.x * n;
    float v = -INFINITY;
    int idx = 0x7fffffff;
    for (int c = threadIdx.x; c < n; c += blockDim.x)
    {
        float a = row[c];
        if (a > v) { v = a; idx = c; }   // strided ascending scan: first maximum per thread
    }
    for (int o = 16; o > 0; o >>= 1)
    {
        float ov = __shfl_xor_sync(0xffffffffu, v, o);
        int oi = __shfl_xor_sync(0xffffffffu, idx, o);
        if (ov > v || (ov == v && oi < idx)) { v = ov; idx = oi; }
    }
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) { best_v[warp] = v; best_i[warp] = idx; }
    __syncthreads();
    if (threadIdx.x == 0)
    {
        for (int w = 1; w < (int)(blockDim.x >> 5); w++)
            if (best_v[w] > v || (best_v[w] == v && best_i[w] < idx)) { v = best_v[w]; idx = best_i[w]; }
        out[blockIdx.x] = idx == 0x7fffffff ? 0 : idx;
    }
}
