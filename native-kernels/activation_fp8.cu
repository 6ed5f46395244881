// Activations to fp8 for W8A8 GEMMs: each bf16 row of x becomes e4m3 codes with one fp32 scale, the per-token dynamic
// scheme the published FP8 Llama checkpoints are calibrated for (compressed-tensors "FP8_DYNAMIC": input activations
// dynamic, per token). For a row with largest magnitude amax > 0:
//   scale = amax / 448,   code[i] = e4m3(x[i] * (448 / amax))   (round to nearest even, saturating to +-448),
// both divisions and the multiply rounded once in fp32, so the host reproduces the codes bit for bit. A row whose
// amax is below 1e-30 (zeros, or values so small that 448 / amax would overflow to inf and turn zeros into NaN) gets
// scale 1, and so zero codes; a NaN element stays NaN, and an infinite one makes its row NaN. The GEMM then applies scale(token) · scale(weight row) to each fp32 sum (cuBLASLt's
// outer-vector scaling), so codes · scales stand for x.
// quantize_rows_e4m3: one 256-thread block per row (grid-stride over rows), 8 bf16 per 16-byte load, the row read
// twice (the second pass from L1/L2: a row is 8 KB at 8B's hidden size, 56 KB at 70B's intermediate size). Needs columns % 16 == 0 and 16-byte aligned x
// and codes (the GEMM's own requirement on fp8 operands). sm_89+ only (the cvt to e4m3); other archs trap.
// Launch (these two entries; rms_norm_quantize_e4m3 below says its own): grid min(rows, 65535), block 256.
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

// Largest magnitude of 8 bf16 values (a 16-byte word).
__device__ __forceinline__ float bf16x8_absmax(uint4 v)
{
    const unsigned w[4] = { v.x, v.y, v.z, v.w };
    float m = 0.f;
#pragma unroll
    for (int k = 0; k < 4; k++) m = fmaxf(m, fmaxf(fabsf(__uint_as_float(w[k] << 16)), fabsf(__uint_as_float(w[k] & 0xffff0000u))));
    return m;
}

// 8 bf16 values times inv, as 8 e4m3 codes (element j in byte j).
__device__ __forceinline__ uint2 bf16x8_to_e4m3x8(uint4 v, float inv)
{
    const unsigned w[4] = { v.x, v.y, v.z, v.w };
    unsigned short p[4];
#pragma unroll
    for (int k = 0; k < 4; k++)
        p[k] = f32x2_to_e4m3x2(__fmul_rn(__uint_as_float(w[k] << 16), inv), __fmul_rn(__uint_as_float(w[k] & 0xffff0000u), inv));
    return make_uint2((unsigned)p[0] | ((unsigned)p[1] << 16), (unsigned)p[2] | ((unsigned)p[3] << 16));
}

// The row's scale (amax / 448, or 1 below 1e-30) to scales[r], and the factor its values are multiplied by.
__device__ __forceinline__ float row_scale(float amax, float* scales, long long r)
{
    const bool scaled = amax >= 1e-30f;
    if (threadIdx.x == 0) scales[r] = scaled ? __fdiv_rn(amax, 448.f) : 1.f;
    return scaled ? __fdiv_rn(448.f, amax) : 1.f;
}

extern "C" __global__ void __launch_bounds__(256) quantize_rows_e4m3(const uint4* x, long long rows, int columns, uint2* codes, float* scales)
{
    __shared__ float shm[32];
    const int chunks = columns / 8;
    for (long long r = blockIdx.x; r < rows; r += gridDim.x)
    {
        const uint4* row = x + r * chunks;
        float amax = 0.f;
        for (int c = threadIdx.x; c < chunks; c += blockDim.x) amax = fmaxf(amax, bf16x8_absmax(row[c]));
        const float inv = row_scale(block_max(amax, shm), scales, r);
        for (int c = threadIdx.x; c < chunks; c += blockDim.x) codes[r * chunks + c] = bf16x8_to_e4m3x8(row[c], inv);
        __syncthreads();   // shm is reused by the next row's block_max
    }
}

// silu_mul_quantize_e4m3: the W8A8 MLP's SwiGLU and down_proj's input in one pass. From a bf16 [gate | up] row (rows,
// 2 inter) it forms silu_mul_bf16's values (silu_mul_bf16x8: the same bf16 numbers) into shared memory while taking
// their amax, then writes them as quantize_rows_e4m3 would: the bf16 row is never written to or read from memory.
// Loads and stores stream past L1/L2 (__ldcs / __stcs): with the fast silu_f32 this pass measured 40.0 us against 50.0 at
// 2048 x 14336 and 91.9 against 120.8 at 2048 x 28672 on an H200 (bench/silu_quantize_probe.py); at 32768 rows the
// streaming hints cost 3% against the fast silu alone (574.7 against 559.4 us).
// Dynamic shared memory: inter · 2 bytes. Needs inter % 16 == 0 and 16-byte aligned gate_up and codes.
extern "C" __global__ void __launch_bounds__(256) silu_mul_quantize_e4m3(const uint4* gate_up, long long rows, int inter, uint2* codes, float* scales)
{
    extern __shared__ uint4 staged[];   // the row's silu(gate) · up, bf16
    __shared__ float shm[32];
    const int chunks = inter / 8;
    for (long long r = blockIdx.x; r < rows; r += gridDim.x)
    {
        const uint4* g = gate_up + r * 2 * chunks;
        const uint4* u = g + chunks;
        float amax = 0.f;
        for (int c = threadIdx.x; c < chunks; c += blockDim.x)
        {
            const uint4 v = silu_mul_bf16x8(__ldcs(g + c), __ldcs(u + c));   // streaming: the row is read once
            staged[c] = v;
            amax = fmaxf(amax, bf16x8_absmax(v));
        }
        const float inv = row_scale(block_max(amax, shm), scales, r);   // block_max's barriers also publish staged
        for (int c = threadIdx.x; c < chunks; c += blockDim.x) __stcs(codes + r * chunks + c, bf16x8_to_e4m3x8(staged[c], inv));
        __syncthreads();   // staged and shm are reused by the next row
    }
}

// rms_norm_quantize_e4m3: the W8A8 route's RMSNorm and its GEMM's input in one pass. Each row gets rms_norm_f32's bias
// add (in place) and its bf16 outputs (the same numbers: both kernels form them with rms_row_inv / rms_row_bf16x4),
// kept in shared memory while their amax is taken, then written as quantize_rows_e4m3 would. The bf16 row is never
// written to or read from memory: at 2048 rows of 8B's width, the two passes moved 75 MB per norm and this one 42.
// Launch: grid (rows), block 256, dynamic shared memory dim · 2 bytes; programmatic on sm_90+ like rms_norm_f32 (it
// waits for the kernel before it first). Needs dim % 16 == 0 and 16-byte aligned x, bias, weight and codes.
extern "C" __global__ void __launch_bounds__(256) rms_norm_quantize_e4m3(float* x, const float* bias, const float* weight, int rows, int dim,
    float eps, uint2* codes, float* scales)
{
    extern __shared__ uint4 normed[];   // the row's bf16 outputs
    __shared__ float red[32];
    pdl_wait();
    pdl_launch_dependents();
    const long long r = blockIdx.x;
    float4* row4 = reinterpret_cast<float4*>(x + r * dim);
    const float4* w4 = reinterpret_cast<const float4*>(weight);
    const float inv = rms_row_inv(row4, reinterpret_cast<const float4*>(bias), dim, eps, red);
    uint2* normed4 = reinterpret_cast<uint2*>(normed);
    float amax = 0.f;
    for (int c = threadIdx.x; c < dim / 4; c += blockDim.x)
    {
        const uint2 v = rms_row_bf16x4(row4[c], w4[c], inv);
        normed4[c] = v;
        amax = fmaxf(amax, bf16x8_absmax(make_uint4(v.x, v.y, 0u, 0u)));
    }
    const float q = row_scale(block_max(amax, red), scales, r);   // block_max's barriers also publish normed
    for (int c = threadIdx.x; c < dim / 8; c += blockDim.x) codes[r * (dim / 8) + c] = bf16x8_to_e4m3x8(normed[c], q);
}
