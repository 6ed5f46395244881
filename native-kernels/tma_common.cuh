// Hopper (sm_90) asynchronous-copy helpers shared by the warp-specialised kernels (gemm_swiglu.cu, attention_hopper.cu's
// TMA entry): the tensor map a TMA load reads, shared-memory mbarriers (a producer thread arms one with the bytes it
// expects, the TMA completes them, consumers wait on its phase parity and arrive to hand a stage back), TMA tile
// loads and the named barrier of one warpgroup.
#pragma once

namespace
{
// The driver's CUtensorMap (opaque, 128 bytes, 64-byte aligned), passed by value as a __grid_constant__ parameter.
struct __align__(64) TensorMap { unsigned long long opaque[16]; };

__device__ __forceinline__ unsigned smem_u32(const void* p) { return (unsigned)__cvta_generic_to_shared(p); }

__device__ __forceinline__ void mbar_init(unsigned bar, unsigned count)
{
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" :: "r"(bar), "r"(count) : "memory");
}

// The producer's arrival, announcing `bytes` that TMA loads will complete on the barrier.
__device__ __forceinline__ void mbar_expect_tx(unsigned bar, unsigned bytes)
{
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" :: "r"(bar), "r"(bytes) : "memory");
}

__device__ __forceinline__ void mbar_wait(unsigned bar, unsigned parity)
{
    asm volatile("{\n.reg .pred p;\nWAIT_%=:\n"
                 "mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
                 "@!p bra WAIT_%=;\n}\n" :: "r"(bar), "r"(parity) : "memory");
}

// A consumer's arrival (default .release.cta semantics: a .cluster release costs a fence per arrival).
__device__ __forceinline__ void mbar_arrive(unsigned bar)
{
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" :: "r"(bar) : "memory");
}

// 2-D TMA load of one box at (c0, c1) (c0 the contiguous dimension) into this CTA's shared memory, completing its
// bytes on `bar`.
__device__ __forceinline__ void tma_load(unsigned dst, const TensorMap* map, int c0, int c1, unsigned bar)
{
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];"
                 :: "r"(dst), "l"(map), "r"(c0), "r"(c1), "r"(bar) : "memory");
}

// The same for a 4-D tensor map.
__device__ __forceinline__ void tma_load_4d(unsigned dst, const TensorMap* map, int c0, int c1, int c2, int c3, unsigned bar)
{
    asm volatile("cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, %5}], [%6];"
                 :: "r"(dst), "l"(map), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(bar) : "memory");
}

// Barrier of one warpgroup (named barrier `id`, 128 threads); id 0 is __syncthreads.
__device__ __forceinline__ void warpgroup_sync(int id) { asm volatile("bar.sync %0, 128;" :: "r"(id) : "memory"); }

// Named barrier `id` of `threads` threads: sync waits for them all, arrive counts this thread without waiting (a
// warpgroup handing a turn to another that syncs on the same id).
__device__ __forceinline__ void named_bar_sync(int id, int threads) { asm volatile("bar.sync %0, %1;" :: "r"(id), "r"(threads) : "memory"); }
__device__ __forceinline__ void named_bar_arrive(int id, int threads) { asm volatile("bar.arrive %0, %1;" :: "r"(id), "r"(threads) : "memory"); }
} // namespace
