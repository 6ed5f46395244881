// Hopper (sm_90a) warpgroup-MMA helpers shared by the wgmma kernels (attention_hopper.cu, gemm_swiglu.cu): the
// ordering instructions around wgmma.mma_async, the register pin that keeps the compiler from moving accumulator
// accesses across an asynchronous MMA, and the shared-memory matrix descriptor of the 128-byte swizzle.
#pragma once

namespace
{
// Shared memory written by ordinary stores or cp.async is read next by the async proxy (tensor cores, TMA stores).
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;" ::: "memory"); }

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
template <int N> __device__ __forceinline__ void wgmma_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;" :: "n"(N) : "memory"); }

// Keeps the compiler from moving accumulator reads or writes across an asynchronous wgmma.
template <int N> __device__ __forceinline__ void pin_registers(float* r)
{
#pragma unroll
    for (int i = 0; i < N; i++) asm volatile("" : "+f"(r[i]) :: "memory");
}

// Shared-memory matrix descriptor, 128-byte swizzle. K-major: sbo = stride of 8-row groups (lbo unused).
// MN-major: lbo = stride between 64-element blocks along M/N, sbo = stride of 8-row groups along K.
__device__ __forceinline__ unsigned long long gmma_desc(unsigned addr, unsigned lbo, unsigned sbo)
{
    return (unsigned long long)((addr & 0x3FFFFu) >> 4) | ((unsigned long long)((lbo & 0x3FFFFu) >> 4) << 16)
         | ((unsigned long long)((sbo & 0x3FFFFu) >> 4) << 32) | (1ull << 62);
}
} // namespace
