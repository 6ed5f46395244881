// Activations to fp8 for W8A8 GEMMs: each bf16 row of x becomes e4m3 codes with one fp32 scale, the per-token dynamic
// scheme the published FP8 Llama checkpoints are calibrated for (compressed-tensors "FP8_DYNAMIC": input activations
// dynamic, per token). For a row with largest magnitude amax > 0:
//   scale = amax / 448,   code[i] = e4m3(x[i] * (448 / amax))   (round to nearest even, saturating to +-448),
// both divisions and the multiply rounded once in fp32, so the host reproduces the codes bit for bit; a row of zeros
// gets scale 1 and zero codes. The GEMM then applies scale(token) · scale(weight row) to each fp32 sum (cuBLASLt's
// outer-vector scaling), so codes · scales stand for x.
// quantize_rows_e4m3: one 256-thread block per row (grid-stride over rows), 8 bf16 per 16-byte load, the row read
// twice (the second pass from L1/L2: 28 KB at the widest Llama row). Needs columns % 16 == 0 and 16-byte aligned x
// and codes (the GEMM's own requirement on fp8 operands). sm_89+ only (the cvt to e4m3); other archs trap.
#include "swiftkv_common.cuh"

__device__ __forceinline__ unsigned short f32x2_to_e4m3x2(float lo, float hi)
{
#if __CUDA_ARCH__ >= 890
    unsigned short r;
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(r) : "f"(hi), "f"(lo));   // hi -> upper byte
    return r;
#else
    __trap();
    return 0;
#endif
}

extern "C" __global__ void __launch_bounds__(256) quantize_rows_e4m3(const uint4* x, long long rows, int columns, uint2* codes, float* scales)
{
    __shared__ float shm[32];
    const int chunks = columns / 8;
    for (long long r = blockIdx.x; r < rows; r += gridDim.x)
    {
        const uint4* row = x + r * chunks;
        float amax = 0.f;
        for (int c = threadIdx.x; c < chunks; c += blockDim.x)
        {
            const uint4 v = row[c];
            const unsigned w[4] = { v.x, v.y, v.z, v.w };
#pragma unroll
            for (int k = 0; k < 4; k++)
                amax = fmaxf(amax, fmaxf(fabsf(__uint_as_float(w[k] << 16)), fabsf(__uint_as_float(w[k] & 0xffff0000u))));
        }
        amax = block_max(amax, shm);
        const float inv = amax > 0.f ? __fdiv_rn(448.f, amax) : 1.f;
        if (threadIdx.x == 0) scales[r] = amax > 0.f ? __fdiv_rn(amax, 448.f) : 1.f;
        for (int c = threadIdx.x; c < chunks; c += blockDim.x)
        {
            const uint4 v = row[c];
            const unsigned w[4] = { v.x, v.y, v.z, v.w };
            unsigned out[2];
#pragma unroll
            for (int k = 0; k < 4; k += 2)
            {
                unsigned short a = f32x2_to_e4m3x2(__fmul_rn(__uint_as_float(w[k] << 16), inv), __fmul_rn(__uint_as_float(w[k] & 0xffff0000u), inv));
                unsigned short b = f32x2_to_e4m3x2(__fmul_rn(__uint_as_float(w[k + 1] << 16), inv), __fmul_rn(__uint_as_float(w[k + 1] & 0xffff0000u), inv));
                out[k / 2] = (unsigned)a | ((unsigned)b << 16);
            }
            codes[r * chunks + c] = make_uint2(out[0], out[1]);
        }
        __syncthreads();   // shm is reused by the next row's block_max
    }
}
