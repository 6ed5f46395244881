// The prefill MLP's [gate; up] GEMM with SwiGLU in its epilogue, for Hopper (sm_90a):
//   out (M, inter) bf16 = silu(x · Wgᵀ) ⊙ (x · Wuᵀ),  x (M, K) bf16, Wg = W[0, inter), Wu = W[inter, 2 inter) (K-major rows).
//
// Why our own GEMM: cuBLASLt has no gated epilogue, so the engine's prefill wrote [gate | up] (2 x inter bf16 per row)
// and read it back in a separate pass (silu_mul.cu): ~57 us per 8B layer at 2048 rows, 1.8 ms per prefill. Here each
// CTA's accumulator tile holds 128 gate columns and the 128 up columns of the same outputs, so the product is taken in
// registers and only inter bf16 per row are written.
//
// Structure (the warp-specialised TMA + wgmma design of Hopper GEMMs):
//   CTA = 3 warpgroups: WG0 produces (one thread issues TMA loads into a GG_STAGES-deep ring of shared-memory stages,
//   full / empty mbarriers), WG1 and WG2 consume (each wgmma m64n256k16 over 64 rows of the CTA's 128).
//   Stage: A = x rows [m0, m0 + 128) x 64 k (16 KB), B = gate rows [n0, n0 + 128) then up rows (32 KB), both in the
//   128-byte-swizzled layout TMA writes and wgmma's K-major descriptors read.
//   Clusters of GG_CLUSTER (1 or 2) CTAs along M share B: with 2, rank 0 loads the gate half and rank 1 the up half,
//   each multicast into both CTAs, so the L2 -> SM traffic per CTA drops from 48 to 32 KB per stage. Every consumer
//   warp then releases a stage in both CTAs (the peer's producer writes into ours).
//   Persistent: gridDim.x = the clusters that fit at once (one CTA per SM) times the cluster size; cluster c walks the
//   work units c, c + clusters, ... (unit_origin: groups of rows, so the CTAs running together share tiles in L2).
//   Accumulator layout of m64n256 (per warp 16 rows, lane l: row l / 4 and l / 4 + 8, columns 8 i + 2 (l % 4) + {0, 1}):
//   gate column j sits in d[4 (j / 8) ...] and up column j in d[4 (j / 8 + 16) ...] of the same thread.
//   Epilogue: silu(gate) * up in registers, bf16 pairs into swizzled shared-memory panels, TMA stores (GG_TMA_STORE).
// Measured on an H100 against cuBLAS + silu_mul_bf16 (bench/gemm/swiglu_probe.cu; src/SwiftKV.Cuda/NOTES.md): about
// cuBLAS's own GEMM time at 2K-32K rows of the 8B MLP, so the silu pass's time is what is saved.
// Limits (checked by the host): K % 8 == 0 and inter % 8 == 0 (TMA's 16-byte strides); rows past M, columns past
// inter and k past K are zero-filled by the TMA loads and clipped by the TMA stores.
#include "swiftkv_common.cuh"
#include "wgmma_common.cuh"
#include "tma_common.cuh"

#ifndef GG_STAGES
#define GG_STAGES 4
#endif
#ifndef GG_CLUSTER
#define GG_CLUSTER 2
#endif
#ifndef GG_ZERO_INIT
#define GG_ZERO_INIT 1
#endif

namespace
{
constexpr int GG_BM = 128, GG_BN = 128, GG_BK = 64;          // output tile: 128 rows x 128 gated columns
constexpr int GG_A_BYTES = GG_BM * GG_BK * 2;               // 16 KB
constexpr int GG_B_HALF = GG_BN * GG_BK * 2;                // 16 KB: gate (or up) rows of one stage
constexpr int GG_STAGE_BYTES = GG_A_BYTES + 2 * GG_B_HALF;  // 48 KB
constexpr int GG_THREADS = 384;
// Epilogue staging (GG_TMA_STORE): each consumer warpgroup writes its 64 x 128 bf16 outputs into shared memory as two
// 64 x 64 panels in the 128-byte swizzle, and one of its threads stores them with TMA, so the warpgroup goes back to
// its MMAs without waiting on global stores (the tensor cores are idle while both warpgroups run the epilogue).
#ifndef GG_TMA_STORE
#define GG_TMA_STORE 1
#endif
constexpr int GG_OUT_ROWS = 64, GG_OUT_COLS = 64;           // one TMA store box
constexpr int GG_OUT_PANEL = GG_OUT_ROWS * GG_OUT_COLS * 2; // 8 KB
constexpr int GG_OUT_BYTES = GG_TMA_STORE ? 2 * 2 * GG_OUT_PANEL : 0;   // 2 warpgroups x 2 panels
constexpr int GG_SMEM_BYTES = GG_STAGES * GG_STAGE_BYTES + GG_OUT_BYTES + 2 * GG_STAGES * 8 + 1024;

// Release a stage to the producers: our own barrier, and with clusters the same barrier in the peer CTA (whose
// producer multicasts into our stages). Default .release.cta semantics: a .cluster release here costs a fence per
// stage (ncu: half of all stall cycles "waiting on a memory barrier"), and the only ordering needed, our wgmma reads
// before the peer's next TMA write, is already given by wgmma.wait_group.
__device__ __forceinline__ void mbar_arrive_peer(unsigned bar, unsigned rank)
{
    asm volatile("{\n.reg .b32 ra;\nmapa.shared::cluster.u32 ra, %0, %1;\n"
                 "mbarrier.arrive.shared::cluster.b64 _, [ra];\n}\n" :: "r"(bar), "r"(rank) : "memory");
}

__device__ __forceinline__ void release_stage(unsigned bar, unsigned rank)
{
    mbar_arrive(bar);
    if (GG_CLUSTER == 2) mbar_arrive_peer(bar, rank ^ 1u);
}

__device__ __forceinline__ unsigned cluster_rank()
{
    unsigned r;
    asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
    return r;
}

__device__ __forceinline__ void cluster_sync()
{
    asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;" ::: "memory");
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

// d (64 x 256, fp32) = (scale_d ? d : 0) + A (64 x 16, shared, K-major) * B (256 x 16, shared, K-major)
__device__ __forceinline__ void wgmma_m64n256k16_ss(float* d, unsigned long long desc_a, unsigned long long desc_b, int scale_d)
{
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63,%64,%65,%66,%67,%68,%69,%70,%71,%72,%73,%74,%75,%76,%77,%78,%79,%80,%81,%82,%83,%84,%85,%86,%87,%88,%89,%90,%91,%92,%93,%94,%95,%96,%97,%98,%99,%100,%101,%102,%103,%104,%105,%106,%107,%108,%109,%110,%111,%112,%113,%114,%115,%116,%117,%118,%119,%120,%121,%122,%123,%124,%125,%126,%127}, %128, %129, p, 1, 1, 0, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]), "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
        : "l"(desc_a), "l"(desc_b), "r"(scale_d));
}

// silu(g) = g / (1 + e^-g) with the fast exp and division: accurate to a few ulp of fp32, far below the bf16
// rounding of the output, and ~5x fewer instructions than expf + IEEE division (the epilogue stalls both consumer
// warpgroups, so its length is tensor-core idle time). For g < -88, e^-g = inf and __fdividef gives 0, as silu does.
#ifndef GG_FAST_SILU
#define GG_FAST_SILU 1
#endif
__device__ __forceinline__ float silu(float g)
{
#if GG_FAST_SILU
    return __fdividef(g, 1.f + __expf(-g));
#else
    return g / (1.f + expf(-g));
#endif
}

__device__ __forceinline__ unsigned pack_bf16x2(float lo, float hi)
{
    return (unsigned)f32_to_bf16(lo) | ((unsigned)f32_to_bf16(hi) << 16);
}

// First row and gated column of this CTA's output tile in work unit u: units walk groups of GG_GROUP_ROWS rows (every
// weight column tile of a group before the next group), rows fastest inside a group. The CTAs running together then
// share ~8 weight tiles and one group's rows of x, all in L2; walking all of M first, a 32K-row prefill streamed x
// from DRAM once per weight tile.
#ifndef GG_GROUP_ROWS
#define GG_GROUP_ROWS 2048
#endif
__device__ __forceinline__ void unit_origin(int u, int tilesM, int tilesN, unsigned rank, int& m0, int& n0)
{
    constexpr int G = GG_GROUP_ROWS / (GG_BM * GG_CLUSTER) > 0 ? GG_GROUP_ROWS / (GG_BM * GG_CLUSTER) : 1;
    const int group = u / (G * tilesN), r = u % (G * tilesN);
    const int rows = min(G, tilesM - group * G);
    m0 = ((group * G + r % rows) * GG_CLUSTER + (int)rank) * GG_BM;   // this CTA's rows within its cluster's
    n0 = (r / rows) * GG_BN;
}
} // namespace

extern "C" __global__ void __launch_bounds__(GG_THREADS, 1)
#if GG_CLUSTER == 2
__cluster_dims__(2, 1, 1)
#endif
gemm_swiglu_bf16(const __grid_constant__ TensorMap map_x, const __grid_constant__ TensorMap map_gate,
                 const __grid_constant__ TensorMap map_up, const __grid_constant__ TensorMap map_out, bf16_t* __restrict__ out,
                 int M, int inter, int K)
{
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    extern __shared__ unsigned char smem_raw[];
    // TMA's 128-byte swizzle repeats every 1024 bytes: stages start on 1024-byte boundaries (the host asks for 1 KB more).
    const unsigned base = (smem_u32(smem_raw) + 1023u) & ~1023u;
    const unsigned staging = base + GG_STAGES * GG_STAGE_BYTES;        // epilogue panels (GG_TMA_STORE)
    const unsigned bars = staging + GG_OUT_BYTES;                      // full[s] at bars + 8 s, empty[s] after them
    const int wg = threadIdx.x / 128, t = threadIdx.x % 128;
    const unsigned rank = GG_CLUSTER == 2 ? cluster_rank() : 0u;

    if (threadIdx.x == 0)
    {
        for (int s = 0; s < GG_STAGES; s++)
        {
            mbar_init(bars + 8 * s, 1);                                       // the local producer's expect_tx
            mbar_init(bars + 8 * (GG_STAGES + s), 8 * GG_CLUSTER);            // each consumer warp of each CTA
        }
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    if (GG_CLUSTER == 2) cluster_sync(); else __syncthreads();

    const int tilesM = (M + GG_BM * GG_CLUSTER - 1) / (GG_BM * GG_CLUSTER);   // cluster row tiles
    const int tilesN = (inter + GG_BN - 1) / GG_BN;
    const int units = tilesM * tilesN;
    const int cluster = blockIdx.x / GG_CLUSTER, clusters = gridDim.x / GG_CLUSTER;
    const int KT = (K + GG_BK - 1) / GG_BK;

    if (wg == 0)
    {
        asm volatile("setmaxnreg.dec.sync.aligned.u32 40;");
        if (t == 0)
        {
            int stage = 0;
            unsigned phase = 0;
            for (int u = cluster; u < units; u += clusters)
            {
                int m0, n0;
                unit_origin(u, tilesM, tilesN, rank, m0, n0);
                for (int kt = 0; kt < KT; kt++)
                {
                    const unsigned full = bars + 8 * stage, empty = bars + 8 * (GG_STAGES + stage);
                    const unsigned a = base + stage * GG_STAGE_BYTES, b = a + GG_A_BYTES;
                    mbar_wait(empty, phase ^ 1u);
                    mbar_expect_tx(full, GG_STAGE_BYTES);
                    tma_load(a, &map_x, kt * GG_BK, m0, full);
#if GG_CLUSTER == 2
                    if (rank == 0) tma_load_multicast(b, &map_gate, kt * GG_BK, n0, full, (unsigned short)3);
                    else tma_load_multicast(b + GG_B_HALF, &map_up, kt * GG_BK, n0, full, (unsigned short)3);
#else
                    tma_load(b, &map_gate, kt * GG_BK, n0, full);
                    tma_load(b + GG_B_HALF, &map_up, kt * GG_BK, n0, full);
#endif
                    if (++stage == GG_STAGES) { stage = 0; phase ^= 1u; }
                }
            }
        }
    }
    else
    {
        asm volatile("setmaxnreg.inc.sync.aligned.u32 232;");
        const int cw = wg - 1, warp = t / 32, lane = t % 32;
        float acc[128];
        int stage = 0;
        unsigned phase = 0;
        for (int u = cluster; u < units; u += clusters)
        {
            int m0, n0;
            unit_origin(u, tilesM, tilesN, rank, m0, n0);
            int prev = -1;
#if GG_ZERO_INIT
            // Zeroed here, before the tile's first wgmma.fence, although the first k step ignores them (scale-d 0):
            // left undefined, ptxas serialises every wgmma of the loop (C7515, "non wgmma instructions defining
            // accumulator registers ... between start and end of the pipeline stage").
#pragma unroll
            for (int i = 0; i < 128; i++) acc[i] = 0.f;
#endif
            for (int kt = 0; kt < KT; kt++)
            {
                const unsigned full = bars + 8 * stage;
                const unsigned a = base + stage * GG_STAGE_BYTES + cw * (64 * 128), b = base + stage * GG_STAGE_BYTES + GG_A_BYTES;
                mbar_wait(full, phase);
                wgmma_fence();
#pragma unroll
                for (int k = 0; k < GG_BK / 16; k++)
                    wgmma_m64n256k16_ss(acc, kmajor_desc(a + 32 * k), kmajor_desc(b + 32 * k), (kt > 0 || k > 0) ? 1 : 0);
                wgmma_commit();
                wgmma_wait<1>();
                if (prev >= 0 && lane == 0)
                    release_stage(bars + 8 * (GG_STAGES + prev), rank);
                prev = stage;
                if (++stage == GG_STAGES) { stage = 0; phase ^= 1u; }
            }
            wgmma_wait<0>();
            pin_registers<128>(acc);
            if (prev >= 0 && lane == 0)
                release_stage(bars + 8 * (GG_STAGES + prev), rank);

            // Epilogue: out = silu(gate) * up from the accumulators, bf16 pairs.
            const int rl = warp * 16 + lane / 4;                 // row within this warpgroup's 64 (and rl + 8)
#if GG_TMA_STORE
            // The previous tile's stores must have read the panels before they are rewritten (long done by now).
            if (t == 0) bulk_wait_read();
            warpgroup_sync(1 + cw);
            const unsigned panels = staging + cw * 2 * GG_OUT_PANEL;
#pragma unroll
            for (int i = 0; i < 16; i++)
#pragma unroll
                for (int h = 0; h < 2; h++)
                {
                    const int r = rl + 8 * h;
                    const float g0 = acc[4 * i + 2 * h], g1 = acc[4 * i + 2 * h + 1];
                    const float u0 = acc[4 * (i + 16) + 2 * h], u1 = acc[4 * (i + 16) + 2 * h + 1];
                    // Column 8 i + 2 (lane % 4) of the tile: panel i / 8, 16-byte chunk i % 8 swizzled by the row.
                    const unsigned addr = panels + (i / 8) * GG_OUT_PANEL + r * 128 + ((((unsigned)i % 8) ^ ((unsigned)r & 7)) << 4) + 4 * (lane % 4);
                    asm volatile("st.shared.b32 [%0], %1;" :: "r"(addr), "r"(pack_bf16x2(silu(g0) * u0, silu(g1) * u1)) : "memory");
                }
            fence_proxy_async();
            warpgroup_sync(1 + cw);
            if (t == 0)
            {
                tma_store(&map_out, panels, n0, m0 + cw * 64);
                tma_store(&map_out, panels + GG_OUT_PANEL, n0 + 64, m0 + cw * 64);
                bulk_commit();
            }
#else
            const int row0 = m0 + cw * 64 + rl;
            const int colq = n0 + 2 * (lane % 4);
#pragma unroll
            for (int i = 0; i < 16; i++)
            {
                const int col = colq + 8 * i;
                if (col >= inter) continue;
#pragma unroll
                for (int h = 0; h < 2; h++)
                {
                    const int row = row0 + 8 * h;
                    if (row < M)
                    {
                        const float g0 = acc[4 * i + 2 * h], g1 = acc[4 * i + 2 * h + 1];
                        const float u0 = acc[4 * (i + 16) + 2 * h], u1 = acc[4 * (i + 16) + 2 * h + 1];
                        *reinterpret_cast<unsigned*>(out + (long long)row * inter + col) = pack_bf16x2(silu(g0) * u0, silu(g1) * u1);
                    }
                }
            }
#endif
        }
#if GG_TMA_STORE
        if (t == 0) bulk_wait_all();   // the last stores must finish reading the panels before the CTA exits
#endif
    }
    // The peer CTA may still multicast into our stages or arrive on our barriers until it is done.
    if (GG_CLUSTER == 2) cluster_sync();
#else
    __trap();
#endif
}
