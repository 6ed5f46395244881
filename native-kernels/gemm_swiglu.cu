// The prefill MLP's [gate; up] GEMM with SwiGLU in its epilogue, for Hopper (sm_90a):
//   out (M, inter) bf16 = silu(x · Wgᵀ) ⊙ (x · Wuᵀ),  x (M, K) bf16, Wg = W[0, inter), Wu = W[inter, 2 inter) (K-major rows).
//
// Why our own GEMM: cuBLASLt has no gated epilogue, so the engine's prefill wrote [gate | up] (2 x inter bf16 per row)
// and read it back in a separate pass (silu_mul.cu): ~57 us per 8B layer at 2048 rows, 1.8 ms per prefill. Here each
// CTA's accumulator tile holds 128 gate columns and the 128 up columns of the same outputs, so the product is taken in
// registers and only inter bf16 per row are written.
//
// Structure (the warp-specialised TMA + wgmma design of Hopper GEMMs; the pipeline is gemm_common.cuh's, shared with gemm_qkv.cu):
//   CTA = 3 warpgroups: WG0 produces (one thread issues TMA loads into a GG_STAGES-deep ring of shared-memory stages,
//   full / empty mbarriers), WG1 and WG2 consume (each wgmma m64n256k16 over 64 rows of the CTA's 128).
//   Stage: A = x rows [m0, m0 + 128) x 64 k (16 KB), B = gate rows [n0, n0 + 128) then up rows (32 KB), both in the
//   128-byte-swizzled layout TMA writes and wgmma's K-major descriptors read.
//   Clusters of GG_CLUSTER (1 or 2) CTAs along M share B: with 2, rank 0 loads the gate half and rank 1 the up half,
//   each multicast into both CTAs, so the L2 -> SM traffic per CTA drops from 48 to 32 KB per stage. Every consumer
//   warp then releases a stage in both CTAs (the peer's producer writes into ours).
//   Persistent: gridDim.x = the clusters that fit at once (one CTA per SM) times the cluster size; cluster c walks the
//   work units c, c + clusters, ... (GemmTiles::origin: groups of rows, so the CTAs running together share tiles in L2).
//   Accumulator layout of m64n256 (per warp 16 rows, lane l: row l / 4 and l / 4 + 8, columns 8 i + 2 (l % 4) + {0, 1}):
//   gate column j sits in d[4 (j / 8) ...] and up column j in d[4 (j / 8 + 16) ...] of the same thread.
//   Epilogue: silu(gate) * up in registers, bf16 pairs into swizzled shared-memory panels, TMA stores.
// Measured on an H100 against cuBLAS + silu_mul_bf16 (bench/gemm/swiglu_probe.cu; src/SwiftKV.Cuda/NOTES.md): about
// cuBLAS's own GEMM time at 2K-32K rows of the 8B MLP, so the silu pass's time is what is saved.
// Limits (checked by the host): K % 8 == 0 and inter % 8 == 0 (TMA's 16-byte strides); rows past M, columns past
// inter and k past K are zero-filled by the TMA loads and clipped by the TMA stores.
#include "swiftkv_common.cuh"
#include "gemm_common.cuh"

#ifndef GG_STAGES
#define GG_STAGES 4
#endif
#ifndef GG_CLUSTER
#define GG_CLUSTER 2
#endif
// GemmSwigluKernel sizes the shared memory for 4 stages: an experiment (SWIFTKV_NVRTC_DEFINES) may only go down.
static_assert(GG_STAGES >= 2 && GG_STAGES <= 4, "GG_STAGES: the launcher allocates shared memory for at most 4 stages");
// Units walk groups of this many rows (gemm_common.cuh's GemmTiles::origin).
#ifndef GG_GROUP_ROWS
#define GG_GROUP_ROWS 2048
#endif

namespace
{
constexpr int GG_BN = 128;                                   // output tile: 128 rows x 128 gated columns
constexpr int GG_THREADS = GM_THREADS;
// Epilogue staging: each consumer warpgroup writes its 64 x 128 bf16 outputs into shared memory as two 64 x 64 panels
// in the 128-byte swizzle, and one of its threads stores them with TMA, so the warpgroup goes back to its MMAs without
// waiting on global stores (the tensor cores are idle while both warpgroups run the epilogue; direct stores measured
// 3-4% slower).
constexpr int GG_OUT_BYTES = 2 * 2 * GM_OUT_PANEL;           // 2 warpgroups x 2 panels
constexpr int GG_SMEM_BYTES = GG_STAGES * GM_STAGE_BYTES + GG_OUT_BYTES + 2 * GG_STAGES * 8 + 1024;

// silu_f32 (swiftkv_common.cuh); GG_FAST_SILU=0 gives the precise form, for probes.
#ifndef GG_FAST_SILU
#define GG_FAST_SILU 1
#endif
__device__ __forceinline__ float silu(float g)
{
#if GG_FAST_SILU
    return silu_f32(g);
#else
    return g / (1.f + expf(-g));
#endif
}
} // namespace

extern "C" __global__ void __launch_bounds__(GG_THREADS, 1)
#if GG_CLUSTER == 2
__cluster_dims__(2, 1, 1)
#endif
gemm_swiglu_bf16(const __grid_constant__ TensorMap map_x, const __grid_constant__ TensorMap map_gate,
                 const __grid_constant__ TensorMap map_up, const __grid_constant__ TensorMap map_out, int M, int inter, int K)
{
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    extern __shared__ unsigned char smem_raw[];
    // TMA's 128-byte swizzle repeats every 1024 bytes: stages start on 1024-byte boundaries (the host asks for 1 KB more).
    const unsigned base = (smem_u32(smem_raw) + 1023u) & ~1023u;
    const unsigned staging = base + GG_STAGES * GM_STAGE_BYTES;        // epilogue panels
    GemmRing<GG_STAGES, GG_CLUSTER> ring{base, staging + GG_OUT_BYTES};
    const int wg = threadIdx.x / 128, t = threadIdx.x % 128;

    if (threadIdx.x == 0) ring.init();
    if (GG_CLUSTER == 2) cluster_sync(); else __syncthreads();
    const GemmTiles<GG_BN, GG_CLUSTER, GG_GROUP_ROWS> tiles(M, inter, K);

    if (wg == 0)
    {
        asm volatile("setmaxnreg.dec.sync.aligned.u32 40;");
        // B = gate rows [n0, n0 + 128) then the up rows of the same outputs.
        if (t == 0) tiles.produce(ring, &map_x, &map_gate, &map_up, 0);
    }
    else
    {
        asm volatile("setmaxnreg.inc.sync.aligned.u32 232;");
        const int cw = wg - 1, warp = t / 32, lane = t % 32;
        const unsigned panels = staging + cw * 2 * GM_OUT_PANEL;
        consume_tiles(ring, tiles, cw, t, [&](float* acc, int row0, int n0)
        {
            // out = silu(gate) * up from the accumulators (gate column j in d[4 (j / 8) ..], its up partner in
            // d[4 (j / 8 + 16) ..] of the same thread), bf16 pairs.
            const int rl = warp * 16 + lane / 4;                 // row within this warpgroup's 64 (and rl + 8)
            // The previous tile's stores must have read the panels before they are rewritten (long done by now).
            if (t == 0) bulk_wait_read();
            warpgroup_sync(1 + cw);
#pragma unroll
            for (int i = 0; i < 16; i++)
#pragma unroll
                for (int h = 0; h < 2; h++)
                {
                    const float g0 = acc[4 * i + 2 * h], g1 = acc[4 * i + 2 * h + 1];
                    const float u0 = acc[4 * (i + 16) + 2 * h], u1 = acc[4 * (i + 16) + 2 * h + 1];
                    asm volatile("st.shared.b32 [%0], %1;" :: "r"(panel_addr(panels, i, rl + 8 * h, lane)),
                                 "r"(pack_bf16x2(silu(g0) * u0, silu(g1) * u1)) : "memory");
                }
            fence_proxy_async();
            warpgroup_sync(1 + cw);
            if (t == 0)
            {
                tma_store(&map_out, panels, n0, row0);
                tma_store(&map_out, panels + GM_OUT_PANEL, n0 + 64, row0);
                bulk_commit();
            }
        });
    }
    // The peer CTA may still multicast into our stages or arrive on our barriers until it is done.
    if (GG_CLUSTER == 2) cluster_sync();
#else
    __trap();
#endif
}
