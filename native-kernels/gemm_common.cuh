// The pieces of the warp-specialised Hopper GEMMs with fused epilogues (gemm_swiglu.cu, gemm_qkv.cu): a producer
// thread fills a ring of shared-memory stages with TMA (A = 128 rows of x by 64 k, B = two 128-row halves of weight
// rows by 64 k, 48 KB), two consumer warpgroups each multiply their 64 rows of A by the 256 B rows with wgmma
// m64n256k16, and hand the stage back through an mbarrier. Clusters of 2 CTAs along M share B: rank 0 loads the first
// half and rank 1 the second, each multicast into both CTAs, and every consumer warp releases a stage in both.
// Only the epilogue (what is done with a warpgroup's 64 x 256 fp32 accumulators) differs between the kernels.
// The two consumer warpgroups work on one 128-row tile together (cooperative), so the tensor cores idle while both run
// its epilogue (~3-5% of a tile at K = 4096). A ping-pong schedule (each warpgroup on its own 64-row tiles, one's epilogue
// under the other's MMAs) was tried and is 20-28% slower: with 64-row tiles a stage's fill plus the MMAs' operand reads
// need ~156 bytes of shared memory per clock against the SM's 128 (NOTES, branch experiment/gemm-pingpong).
#pragma once
#include "wgmma_common.cuh"
#include "tma_common.cuh"

namespace
{
constexpr int GM_BM = 128, GM_BK = 64;                      // CTA rows, k per stage
constexpr int GM_B_HALF_ROWS = 128;                         // B rows per half (the stage holds two)
constexpr int GM_A_BYTES = GM_BM * GM_BK * 2;               // 16 KB
constexpr int GM_B_HALF = GM_B_HALF_ROWS * GM_BK * 2;       // 16 KB
constexpr int GM_STAGE_BYTES = GM_A_BYTES + 2 * GM_B_HALF;  // 48 KB
constexpr int GM_THREADS = 384;
constexpr int GM_OUT_ROWS = 64, GM_OUT_COLS = 64;           // one TMA store box: 64 x 64 bf16 in the 128-byte swizzle
constexpr int GM_OUT_PANEL = GM_OUT_ROWS * GM_OUT_COLS * 2; // 8 KB

// A consumer's arrival on the same barrier in the peer CTA of the cluster (default .release.cta semantics: a .cluster
// release costs a fence per stage (ncu: half of all stall cycles "waiting on a memory barrier"), and the only ordering
// needed, our wgmma reads before the peer's next TMA write, is already given by wgmma.wait_group).
__device__ __forceinline__ void mbar_arrive_peer(unsigned bar, unsigned rank)
{
    asm volatile("{\n.reg .b32 ra;\nmapa.shared::cluster.u32 ra, %0, %1;\n"
                 "mbarrier.arrive.shared::cluster.b64 _, [ra];\n}\n" :: "r"(bar), "r"(rank) : "memory");
}

// Release a stage to the producers: our own barrier, and with clusters the same barrier in the peer CTA (whose
// producer multicasts into our stages).
template <int CLUSTER>
__device__ __forceinline__ void release_stage(unsigned bar, unsigned rank)
{
    mbar_arrive(bar);
    if (CLUSTER == 2) mbar_arrive_peer(bar, rank ^ 1u);
}

// The same box written to the same offset (and completing on the same barrier offset) in every CTA of `mask`.
__device__ __forceinline__ void tma_load_multicast(unsigned dst, const TensorMap* map, int k0, int row0, unsigned bar, unsigned short mask)
{
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::cluster [%0], [%1, {%2, %3}], [%4], %5;"
                 :: "r"(dst), "l"(map), "r"(k0), "r"(row0), "r"(bar), "h"(mask) : "memory");
}

// 2-D TMA store of a swizzled shared-memory box to (col0, row0) of the output; parts past the tensor are not written.
__device__ __forceinline__ void tma_store(const TensorMap* map, unsigned src, int col0, int row0)
{
    asm volatile("cp.async.bulk.tensor.2d.global.shared::cta.bulk_group [%0, {%2, %3}], [%1];"
                 :: "l"(map), "r"(src), "r"(col0), "r"(row0) : "memory");
}

__device__ __forceinline__ void bulk_commit() { asm volatile("cp.async.bulk.commit_group;" ::: "memory"); }
// Until the committed stores have read their shared memory (the staging buffer may then be rewritten).
__device__ __forceinline__ void bulk_wait_read() { asm volatile("cp.async.bulk.wait_group.read 0;" ::: "memory"); }
__device__ __forceinline__ void bulk_wait_all() { asm volatile("cp.async.bulk.wait_group 0;" ::: "memory"); }

// K-major operand in the 128-byte swizzle: rows of 64 bf16 (128 B), 8-row groups 1024 B apart (SBO); LBO unused.
__device__ __forceinline__ unsigned long long kmajor_desc(unsigned addr) { return gmma_desc(addr, 16, 1024); }

__device__ __forceinline__ unsigned pack_bf16x2(float lo, float hi)
{
    return (unsigned)f32_to_bf16(lo) | ((unsigned)f32_to_bf16(hi) << 16);
}

// d (64 x 256, fp32) = (scale_d ? d : 0) + A (64 x 16, shared, K-major) * B (256 x 16, shared, K-major)
__device__ __forceinline__ void wgmma_m64n256k16_ss(float* d, unsigned long long desc_a, unsigned long long desc_b, int scale_d)
{
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63,%64,%65,%66,%67,%68,%69,%70,%71,%72,%73,%74,%75,%76,%77,%78,%79,%80,%81,%82,%83,%84,%85,%86,%87,%88,%89,%90,%91,%92,%93,%94,%95,%96,%97,%98,%99,%100,%101,%102,%103,%104,%105,%106,%107,%108,%109,%110,%111,%112,%113,%114,%115,%116,%117,%118,%119,%120,%121,%122,%123,%124,%125,%126,%127}, %128, %129, p, 1, 1, 0, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]), "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
        : "l"(desc_a), "l"(desc_b), "r"(scale_d));
}

// The ring of STAGES stages at `base` (1024-byte aligned) and its barriers at `bars`: full[s] at bars + 8 s, completed
// by the local producer's expect_tx and the TMA bytes; empty[s] after them, one arrival per consumer warp of each CTA.
template <int STAGES, int CLUSTER>
struct GemmRing
{
    unsigned base, bars;
    int stage = 0;
    unsigned phase = 0;

    __device__ __forceinline__ unsigned full(int s) const { return bars + 8 * s; }
    __device__ __forceinline__ unsigned empty(int s) const { return bars + 8 * (STAGES + s); }
    __device__ __forceinline__ void advance() { if (++stage == STAGES) { stage = 0; phase ^= 1u; } }

    // Run by thread 0 before the cluster (or CTA) barrier that precedes any use.
    __device__ __forceinline__ void init() const
    {
        for (int s = 0; s < STAGES; s++)
        {
            mbar_init(full(s), 1);
            mbar_init(empty(s), 8 * CLUSTER);
        }
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }

    // The producer thread's loads for one output tile: x rows [m0, m0 + 128), and this CTA's half of the 256 B rows:
    // (map_b0, row_b0) into the first half and (map_b1, row_b1) into the second, multicast to the cluster when it has 2.
    __device__ __forceinline__ void produce(const TensorMap* map_x, int m0, const TensorMap* map_b0, int row_b0,
        const TensorMap* map_b1, int row_b1, int KT, unsigned rank)
    {
        for (int kt = 0; kt < KT; kt++)
        {
            const unsigned a = base + stage * GM_STAGE_BYTES, b = a + GM_A_BYTES;
            mbar_wait(empty(stage), phase ^ 1u);
            mbar_expect_tx(full(stage), GM_STAGE_BYTES);
            tma_load(a, map_x, kt * GM_BK, m0, full(stage));
            if (CLUSTER == 2)
            {
                if (rank == 0) tma_load_multicast(b, map_b0, kt * GM_BK, row_b0, full(stage), (unsigned short)3);
                else tma_load_multicast(b + GM_B_HALF, map_b1, kt * GM_BK, row_b1, full(stage), (unsigned short)3);
            }
            else
            {
                tma_load(b, map_b0, kt * GM_BK, row_b0, full(stage));
                tma_load(b + GM_B_HALF, map_b1, kt * GM_BK, row_b1, full(stage));
            }
            advance();
        }
    }

    // A consumer warpgroup's (cw: 0 or 1) accumulators for one tile: acc (64 x 256) = its 64 rows of A times the 256 B
    // rows over KT k steps, one wgmma batch in flight while the next stage is awaited.
    __device__ __forceinline__ void consume(float* acc, int cw, int lane, int KT, unsigned rank)
    {
        int prev = -1;
        // Zeroed although the first k step ignores them (scale-d 0): left undefined, CUDA 12's ptxas serialises every
        // wgmma of the loop (C7515, "non wgmma instructions defining accumulator registers ... between start and end
        // of the pipeline stage").
#pragma unroll
        for (int i = 0; i < 128; i++) acc[i] = 0.f;
        for (int kt = 0; kt < KT; kt++)
        {
            const unsigned a = base + stage * GM_STAGE_BYTES + cw * (64 * 128), b = base + stage * GM_STAGE_BYTES + GM_A_BYTES;
            mbar_wait(full(stage), phase);
            wgmma_fence();
#pragma unroll
            for (int k = 0; k < GM_BK / 16; k++)
                wgmma_m64n256k16_ss(acc, kmajor_desc(a + 32 * k), kmajor_desc(b + 32 * k), (kt > 0 || k > 0) ? 1 : 0);
            wgmma_commit();
            wgmma_wait<1>();
            if (prev >= 0 && lane == 0) release_stage<CLUSTER>(empty(prev), rank);
            prev = stage;
            advance();
        }
        wgmma_wait<0>();
        pin_registers<128>(acc);
        if (prev >= 0 && lane == 0) release_stage<CLUSTER>(empty(prev), rank);
    }
};

// The persistent schedule both GEMMs share: M in cluster row tiles of GM_BM * CLUSTER rows, the B rows in tiles of BN
// (units = row tiles x B tiles), cluster c walking units c, c + clusters, ...; K in steps of GM_BK.
template <int BN, int CLUSTER, int GROUP_ROWS>
struct GemmTiles
{
    int tilesM, tilesN, units, cluster, clusters, KT;
    unsigned rank;

    __device__ __forceinline__ GemmTiles(int M, int N, int K)
        : tilesM((M + GM_BM * CLUSTER - 1) / (GM_BM * CLUSTER)), tilesN((N + BN - 1) / BN), units(tilesM * tilesN),
          cluster(blockIdx.x / CLUSTER), clusters(gridDim.x / CLUSTER), KT((K + GM_BK - 1) / GM_BK),
          rank(CLUSTER == 2 ? cluster_rank() : 0u) {}

    // First row and first B row of this CTA's tile in unit u. Units walk groups of GROUP_ROWS rows (every column tile
    // of a group before the next group), rows fastest inside a group. The CTAs running together then share a few
    // weight tiles and one group's rows of x, all in L2; walking all of M first, a 32K-row prefill streamed x from
    // DRAM once per weight tile.
    __device__ __forceinline__ void origin(int u, int& m0, int& n0) const
    {
        constexpr int G = GROUP_ROWS / (GM_BM * CLUSTER) > 0 ? GROUP_ROWS / (GM_BM * CLUSTER) : 1;
        const int group = u / (G * tilesN), r = u % (G * tilesN);
        const int rows = min(G, tilesM - group * G);
        m0 = ((group * G + r % rows) * CLUSTER + (int)rank) * GM_BM;   // this CTA's rows within its cluster's
        n0 = (r / rows) * BN;
    }

    // The producer thread's loop over this cluster's units: B rows [n0, n0 + 128) of map_b0 into the first half of
    // each stage, and rows [n0 + b1_offset, + 128) of map_b1 into the second.
    template <int STAGES>
    __device__ __forceinline__ void produce(GemmRing<STAGES, CLUSTER>& ring, const TensorMap* map_x, const TensorMap* map_b0,
        const TensorMap* map_b1, int b1_offset) const
    {
        for (int u = cluster; u < units; u += clusters)
        {
            int m0, n0;
            origin(u, m0, n0);
            ring.produce(map_x, m0, map_b0, n0, map_b1, n0 + b1_offset, KT, rank);
        }
    }
};

// A consumer warpgroup's loop (cw: 0 or 1) over its cluster's units: each tile's accumulators (its 64 of the tile's 128
// rows x 256 B rows, fp32), then epilogue(acc, row0, n0) with row0 the first of those 64 rows, n0 the tile's first B row.
template <int STAGES, int CLUSTER, int BN, int GROUP_ROWS, class Epilogue>
__device__ __forceinline__ void consume_tiles(GemmRing<STAGES, CLUSTER>& ring, const GemmTiles<BN, CLUSTER, GROUP_ROWS>& tiles,
    int cw, int t, Epilogue&& epilogue)
{
    float acc[128];
    for (int u = tiles.cluster; u < tiles.units; u += tiles.clusters)
    {
        int m0, n0;
        tiles.origin(u, m0, n0);
        ring.consume(acc, cw, t % 32, tiles.KT, tiles.rank);
        epilogue(acc, m0 + 64 * cw, n0);
    }
    if (t == 0) bulk_wait_all();   // the last stores must finish reading the staging panels before the CTA exits
}

// Byte address of column (8 i + 2 (lane % 4)) of row r in the epilogue's staging panels (64 x 64 bf16 boxes, 128-byte
// swizzle): panel i / 8, 16-byte chunk i % 8 swizzled by the row.
__device__ __forceinline__ unsigned panel_addr(unsigned panels, int i, int r, int lane)
{
    return panels + (i / 8) * GM_OUT_PANEL + r * 128 + ((((unsigned)i % 8) ^ ((unsigned)r & 7)) << 4) + 4 * (lane % 4);
}
} // namespace
