// The prefill attention's [q; k; v] projection with RoPE and the K/V cache write in its epilogue, for Hopper (sm_90a):
//   qkv = x · Wᵀ (fp32 accumulation), x (M, K) bf16, W = [Wq; Wk; Wv] (q_dim + 2 kv_dim, K) bf16 (K-major rows);
//   q rotated -> q_out (M, q_dim) bf16; k rotated -> k_cache rows pos0 .. pos0 + M - 1; v -> v_cache rows (same);
//   caches (capacity, kv_dim) bf16 (= (capacity, kv_heads, 128)). Row r sits at position pos0 + r.
// Why: the engine's prefill wrote [q | k | v] in fp32 (cuBLAS) and a pass read it back to rotate K and write the cache
// (rope_kv.cu: under ncu ~15 us per 8B layer at 2048 rows, 200 us at 32768), while the attention kernel read q in fp32
// and rotated it as it staged it. Here the pass goes, the GEMM writes half the bytes, and the attention stages bf16 q.
// RoPE (rotate-half, head_dim 128): dims c and c + 64 of a head turn by the angle of pair c, whose cos / sin come from
// rope (M, 128) fp32 = [cos of the 64 pairs | their sin] per row (rope.cu's rope_table_f32, computed once per step;
// the same table and formula as attention_hopper.cu's rotation on load), x' = x cos - y sin, y' = y cos + x sin.
// Structure: gemm_common.cuh's pipeline (a TMA producer warpgroup, two wgmma m64n256 consumer warpgroups, clusters of
// 2 CTAs along M multicasting the weight tiles, persistent). A tile is 128 rows x 256 output columns = two heads, so a
// thread holds both halves of each rotation pair (column j in d[4 (j / 8) ..], j + 64 in d[4 (j / 8 + 8) ..]).
// Epilogue: rotate (q and k tiles), bf16 into swizzled 64 x 64 panels (two rounds of two per warpgroup), TMA stores
// into q_out or the cache; the maps' row extents (M, pos0 + M) clip rows past the step.
// Limits (checked by the host): head_dim 128, q_dim and kv_dim multiples of 256 (a tile never straddles q, k and v),
// K % 8 == 0 (TMA strides); k past K is zero-filled by the loads.
#include "swiftkv_common.cuh"
#include "gemm_common.cuh"

#ifndef QG_STAGES
#define QG_STAGES 4
#endif
#ifndef QG_GROUP_ROWS
#define QG_GROUP_ROWS 2048
#endif
// 0 skips the rotation (wrong output: only to time what the epilogue's RoPE costs).
#ifndef QG_ROPE
#define QG_ROPE 1
#endif

// GemmQkvRopeKernel sizes the shared memory for 4 stages: an experiment (SWIFTKV_NVRTC_DEFINES) may only go down.
static_assert(QG_STAGES >= 2 && QG_STAGES <= 4, "QG_STAGES: the launcher allocates shared memory for at most 4 stages");

namespace
{
constexpr int QG_BN = 256, QG_CLUSTER = 2, QG_HD = 128;
// Epilogue staging: a warpgroup's 64 x 256 outputs are four 64 x 64 panels. With 4 stages (192 KB) only two panels per
// warpgroup fit beside them, so the outputs go out in two rounds; the fourth stage is worth it (ncu at 2K rows of the 8B
// projection, H200: 2 stages 207 us, 3 stages 148 us with all four panels staged at once).
constexpr int QG_ROUNDS = QG_STAGES >= 4 ? 2 : 1;
constexpr int QG_PANELS = 4 / QG_ROUNDS;                     // panels per warpgroup and round
constexpr int QG_OUT_BYTES = 2 * QG_PANELS * GM_OUT_PANEL;
} // namespace

extern "C" __global__ void __launch_bounds__(GM_THREADS, 1) __cluster_dims__(2, 1, 1)
gemm_qkv_rope_bf16(const __grid_constant__ TensorMap map_x, const __grid_constant__ TensorMap map_w,
                   const __grid_constant__ TensorMap map_q, const __grid_constant__ TensorMap map_k,
                   const __grid_constant__ TensorMap map_v, const float* __restrict__ rope, int M, int q_dim, int kv_dim,
                   int K, int pos0)
{
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    extern __shared__ unsigned char smem_raw[];
    const unsigned base = (smem_u32(smem_raw) + 1023u) & ~1023u;
    const unsigned staging = base + QG_STAGES * GM_STAGE_BYTES;
    GemmRing<QG_STAGES, QG_CLUSTER> ring{base, staging + QG_OUT_BYTES};
    const int wg = threadIdx.x / 128, t = threadIdx.x % 128;

    if (threadIdx.x == 0) ring.init();
    cluster_sync();
    const GemmTiles<QG_BN, QG_CLUSTER, QG_GROUP_ROWS> tiles(M, q_dim + 2 * kv_dim, K);

    if (wg == 0)
    {
        asm volatile("setmaxnreg.dec.sync.aligned.u32 40;");
        // B = the tile's 256 rows of W, in two halves of 128.
        if (t == 0) tiles.produce(ring, &map_x, &map_w, &map_w, GM_B_HALF_ROWS);
    }
    else
    {
        asm volatile("setmaxnreg.inc.sync.aligned.u32 232;");
        const int cw = wg - 1, warp = t / 32, lane = t % 32;
        const unsigned panels = staging + cw * QG_PANELS * GM_OUT_PANEL;
        consume_tiles(ring, tiles, cw, t, [&](float* acc, int m_wg, int n0)
        {
            const int rl = warp * 16 + lane / 4;                 // row within this warpgroup's 64 (and rl + 8)
            const bool is_q = n0 < q_dim, is_k = !is_q && n0 < q_dim + kv_dim;
            if (QG_ROPE && (is_q || is_k))
            {
#pragma unroll
                for (int h = 0; h < 2; h++)
                {
                    // Rows past the step read the last row's angles (their outputs are clipped by the store).
                    const int r = min(m_wg + rl + 8 * h, M - 1);
                    const float* cs = rope + (long long)r * QG_HD + 2 * (lane % 4);
#pragma unroll
                    for (int i = 0; i < 8; i++)
                    {
                        const float2 co = *reinterpret_cast<const float2*>(cs + 8 * i);
                        const float2 sn = *reinterpret_cast<const float2*>(cs + QG_HD / 2 + 8 * i);
#pragma unroll
                        for (int head = 0; head < 2; head++)
#pragma unroll
                            for (int e = 0; e < 2; e++)
                            {
                                float& x = acc[4 * (16 * head + i) + 2 * h + e];
                                float& y = acc[4 * (16 * head + i + 8) + 2 * h + e];
                                const float c = e ? co.y : co.x, s = e ? sn.y : sn.x;
                                const float rx = x * c - y * s, ry = y * c + x * s;
                                x = rx;
                                y = ry;
                            }
                    }
                }
            }
            const TensorMap* map = is_q ? &map_q : is_k ? &map_k : &map_v;
            const int col0 = is_q ? n0 : is_k ? n0 - q_dim : n0 - q_dim - kv_dim;
            const int row0 = (is_q ? 0 : pos0) + m_wg;
#pragma unroll
            for (int round = 0; round < QG_ROUNDS; round++)
            {
                // The previous round's (or tile's) stores must have read the panels before they are rewritten.
                if (t == 0) bulk_wait_read();
                warpgroup_sync(1 + cw);
#pragma unroll
                for (int i = 0; i < 8 * QG_PANELS; i++)
#pragma unroll
                    for (int h = 0; h < 2; h++)
                    {
                        const int j = round * 8 * QG_PANELS + i;     // accumulator column group of this tile
                        asm volatile("st.shared.b32 [%0], %1;" :: "r"(panel_addr(panels, i, rl + 8 * h, lane)),
                                     "r"(pack_bf16x2(acc[4 * j + 2 * h], acc[4 * j + 2 * h + 1])) : "memory");
                    }
                fence_proxy_async();
                warpgroup_sync(1 + cw);
                if (t == 0)
                {
#pragma unroll
                    for (int p = 0; p < QG_PANELS; p++)
                        tma_store(map, panels + p * GM_OUT_PANEL, col0 + 64 * (round * QG_PANELS + p), row0);
                    bulk_commit();
                }
            }
        });
    }
    cluster_sync();
#else
    __trap();
#endif
}
