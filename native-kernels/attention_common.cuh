// Device helpers shared by the attention kernels (attention_flash.cu, attention_hopper.cu): the softmax's exp2, bf16
// packing, the scales' 4-byte cp.async. One definition each, so both kernels round alike. (Shared-memory addresses,
// 16-byte cp.async and the fp8 (e4m3) KV conversion are swiftkv_common.cuh's, shared with the GEMM kernels.)
#pragma once

// 2^x on the special-function unit (2^-inf = 0); the softmax needs no more accuracy than bf16 P keeps.
__device__ __forceinline__ float fast_exp2(float x)
{
    float r;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
    return r;
}

// Two floats -> bf16x2 (round to nearest even), lo in the low half (the lower column of a fragment pair).
__device__ __forceinline__ unsigned pack_bf16(float lo, float hi)
{
    unsigned r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

// 4-byte async copy (the fp8 scales); src_bytes = 0 zero-fills.
__device__ __forceinline__ void cp_async4(unsigned dst, const void* src, int src_bytes)
{
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" :: "r"(dst), "l"(src), "r"(src_bytes) : "memory");
}

