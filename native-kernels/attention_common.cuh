// Device helpers shared by the attention kernels (attention_flash.cu, attention_hopper.cu): shared-memory addresses,
// cp.async copies, the softmax's exp2, bf16 packing. One definition each, so both kernels round alike. (The fp8 (e4m3)
// KV conversion is swiftkv_common.cuh's, shared with gemv.cu.)
#pragma once

__device__ __forceinline__ unsigned smem_addr(const void* p)
{
    unsigned r;
    asm volatile("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }" : "=r"(r) : "l"(p));
    return r;
}

// 16-byte async copy global -> shared; src_bytes = 0 zero-fills (keys past the causal end may hold anything).
__device__ __forceinline__ void cp_async16(unsigned dst, const void* src, int src_bytes)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" :: "r"(dst), "l"(src), "r"(src_bytes) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;" :: "n"(N) : "memory"); }

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

