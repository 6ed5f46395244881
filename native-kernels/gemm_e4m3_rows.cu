// Products of a few to 64 rows (batched decode, short chunks) over weights held as fp8 e4m3 codes with one
// fp32 scale per weight row, on bf16 tensor cores, reading each code once:
//   gemm_e4m3_rows_m{MF}:      y (R, ldy) fp32 [+]= x (R, in) bf16 · (codes · scale)ᵀ, R <= 16 · MF
//   gemm_silu_e4m3_rows_m{MF}: out (R, inter) bf16 = silu(x · Wgᵀ) · (x · Wuᵀ) over W = [gate; up] (2 · inter, in)
// Why: above the e4m3 GEMV's 8 rows, a kept matrix used to be dequantized into a bf16 scratch for cuBLAS, so a decode
// step of 9+ sequences read 1 byte, wrote 2 and read 2 again per weight (70B kept e4m3 on 80 GB: an 85 ms step at 8
// rows in flight, docs/BENCHMARKS.md). Here every code is read once, converted exactly to bf16 in registers
// (e4m3x2_to_bf16x2) and multiplied on mma.sync m16n8k16; the row's scale multiplies the fp32 sum once, as in the e4m3
// GEMV, so code · scale is never rounded to bf16. The engine sends steps from 4 rows here: the GEMV's time grows with
// its rows, this kernel's is one 16-row fragment's up to 16.
// Layout: a CTA of 8 warps owns 32 output columns (16 gate and 16 up columns of the same 16 units for the SwiGLU form),
// 64 in the _wide_ entries, and each warp owns all of them over its own K chunks of 64 (warp w takes chunks w, w + 8,
// ...), so no two warps read the same x bytes and each x fragment feeds four (wide: eight) 8-column tiles. A lane (g =
// lane / 4, t = lane % 4) takes 16 consecutive codes of weight row g of each tile and the same 16 columns of x rows g
// and g + 8 of each 16-row fragment: the dot product does not care in which order k is summed, so logical k {2t, 2t+1,
// 2t+8, 2t+9} of MMA step s (0..3) are physical columns 16t + 4s + {0, 1, 2, 3}, one 32-bit word of codes and two of x
// per register operand, no shuffles.
// The codes and x reach the warp through a shared-memory ring, `stages` chunks deep, filled by cp.async: the copies in
// flight cost no registers, and x's L2 latency is hidden as the codes' is. A lane's codes go to its own slots; x is
// copied by the whole warp in whole 128-byte lines into the warp's own tile (copies of 16 bytes per lane at the lane's
// fragment columns split each 32-byte sector in two, which doubled the requests for x, the lines every CTA reads: up to
// 2.2x slower in bench/e4m3_rows_probe.py). No CTA barrier in the loop: a warp reads only what it filled. The eight K
// partials are summed through shared memory in a fixed order (deterministic), then scaled and stored.
// Requirements (checked by the launcher): in % 64 == 0, x and codes 16-byte aligned, sm_80+, shared memory for two
// stages (the launcher sends longer steps in row blocks that fit, and takes the wide entries only where they fit). Rows
// past R read as zeros and are not stored; columns past out read the last row's codes and are not stored.
// Launch: grid ceil(out / 32) (plain) or ceil(inter / 16) (SwiGLU), 64 and 32 for the wide entries, block 256, dynamic
// shared memory stages · e4r_stage_bytes<MF, NT>() (E4m3RowsGemmKernel.StageBytes), stages 2..8.
#include "swiftkv_common.cuh"

#ifndef E4R_WARPS
#define E4R_WARPS 8   // per CTA, each on its own K chunks (probe switch; the launcher's block is 256 threads)
#endif
#define E4R_CHUNK 64
// Probe switches (bench/e4m3_rows_probe.py): E4R_MINBLOCKS, the launch bounds' CTAs per SM for entries of up to 32
// rows; E4R_PF256 0, the codes' copies without the L2 256-byte prefetch (the CTA's eight warps' chunks are 512 adjacent
// bytes of each weight row, so the line one pulls in is read next by its neighbours).
#ifndef E4R_MINBLOCKS
#define E4R_MINBLOCKS 1
#endif
#ifndef E4R_PF256
#define E4R_PF256 1
#endif
// E4R_STAGGER (on): each CTA walks its warps' chunks from a different start (blockIdx.x), so the CTAs in flight do not
// all ask L2 for the same x lines at once (bench/e4m3_rows_probe.py, one H200: 2-11% less time a layer at 9-64 rows).
#ifndef E4R_STAGGER
#define E4R_STAGGER 1
#endif

// 16 bytes of codes into the ring, through L2 only (each is read once).
__device__ __forceinline__ void cp_async16_codes(unsigned dst, const void* src)
{
#if E4R_PF256
    asm volatile("cp.async.cg.shared.global.L2::256B [%0], [%1], 16;" :: "r"(dst), "l"(src) : "memory");
#else
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" :: "r"(dst), "l"(src) : "memory");
#endif
}

// One stage of the ring: the codes, 16 bytes per thread per tile, then each warp's x tile, 16 · MF rows of 64 columns
// padded from 128 to 144 bytes so that the fragment reads (row g + 8h, bytes 32t..32t+31) fall in distinct banks.
#define E4R_XROW 144
template <int MF, int NT> __device__ constexpr int e4r_stage_bytes() { return NT * 16 * 32 * E4R_WARPS + E4R_WARPS * 16 * MF * E4R_XROW; }

// NT 8-column tiles per warp: 4 (a CTA owns 32 columns) or 8 (64: half the x reads per code, half the CTAs).
template <int MF, int NT, bool SILU>
__device__ __forceinline__ void gemm_e4m3_rows(const bf16_t* __restrict__ x, const unsigned char* __restrict__ w,
    const float* __restrict__ scales, int rows, int in, int out, float* y, int ldy, int accumulate, bf16_t* silu_out, int inter,
    int stages)
{
    extern __shared__ uint4 ring[];
    constexpr int stage_bytes = e4r_stage_bytes<MF, NT>(), codes_bytes = NT * 16 * 32 * E4R_WARPS, HT = NT / 2, COLS = 8 * NT;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    // Tiles 0..HT-1 start at row a, tiles HT..NT-1 at row b: plain, columns COLS·block and COLS·block + COLS / 2; SwiGLU,
    // the gate and up rows of units (COLS / 2)·block.
    const long long a = SILU ? (long long)(COLS / 2) * blockIdx.x : (long long)COLS * blockIdx.x;
    const long long b = SILU ? inter + (long long)(COLS / 2) * blockIdx.x : (long long)COLS * blockIdx.x + COLS / 2;
    const long long last_a = SILU ? inter - 1 : out - 1, last_b = SILU ? 2LL * inter - 1 : out - 1;
    const unsigned char* wr[NT];
#pragma unroll
    for (int nt = 0; nt < NT; nt++)
        wr[nt] = w + min((nt < HT ? a : b) + (nt % HT) * 8 + g, nt < HT ? last_a : last_b) * in + 16 * t;
    // x copies: the warp's 32 lanes take four rows of 128 bytes per copy (lane / 8 the row, lane % 8 its 16 bytes), so
    // each copy reads whole lines; rows past R are zero-filled.
    const int xrow0 = lane >> 3, xpiece = lane & 7;
    const bf16_t* xsrc = x + (long long)xrow0 * in + 8 * xpiece;

    const unsigned ring_base = smem_addr(ring);
    // The codes' slots: 16 bytes per thread per tile, consecutive threads adjacent (conflict-free).
    auto codes_slot = [&](int stage, int nt) { return ring_base + stage * stage_bytes + 16u * (nt * 32 * E4R_WARPS + threadIdx.x); };
    auto x_tile = [&](int stage) { return stage * stage_bytes + codes_bytes + warp * 16 * MF * E4R_XROW; };   // byte offset
    const int chunks = in / E4R_CHUNK, mine = (chunks - warp + E4R_WARPS - 1) / E4R_WARPS;
    // Chunk c of this warp into ring stage c % stages; one commit group per chunk, empty past the warp's last.
    auto fill = [&](int c)
    {
        if (c < mine)
        {
#if E4R_STAGGER
            const int cc = (c + blockIdx.x) % mine;
#else
            const int cc = c;
#endif
            const long long k0 = (long long)(warp + cc * E4R_WARPS) * E4R_CHUNK;
            const int stage = c % stages;
#pragma unroll
            for (int nt = 0; nt < NT; nt++) cp_async16_codes(codes_slot(stage, nt), wr[nt] + k0);
            const unsigned xt = ring_base + x_tile(stage) + xrow0 * E4R_XROW + 16 * xpiece;
#pragma unroll
            for (int i = 0; i < 4 * MF; i++)
            {
                const bool valid = 4 * i + xrow0 < rows;
                cp_async16(xt + 4 * i * E4R_XROW, valid ? xsrc + 4LL * i * in + k0 : x, valid ? 16 : 0);
            }
        }
        cp_async_commit();
    };

    float acc[MF][NT][4];
#pragma unroll
    for (int mf = 0; mf < MF; mf++)
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int j = 0; j < 4; j++) acc[mf][nt][j] = 0.f;

    for (int c = 0; c < stages - 1; c++) fill(c);
    for (int c = 0; c < mine; c++)
    {
        // Groups committed so far: stages - 1 + c; chunk c's is complete when at most stages - 2 are pending.
        switch (stages)
        {
            case 2: cp_async_wait<0>(); break;
            case 3: cp_async_wait<1>(); break;
            case 4: cp_async_wait<2>(); break;
            case 5: cp_async_wait<3>(); break;
            case 6: cp_async_wait<4>(); break;
            case 7: cp_async_wait<5>(); break;
            default: cp_async_wait<6>(); break;
        }
        // The x tile was filled by the whole warp: every lane's copies landed (the wait above) before any lane reads.
        __syncwarp();
        const int stage = c % stages;
        const unsigned char* sm = reinterpret_cast<const unsigned char*>(ring);
        uint4 wc[NT], xa[MF][2][2];
#pragma unroll
        for (int nt = 0; nt < NT; nt++) wc[nt] = *reinterpret_cast<const uint4*>(sm + stage * stage_bytes + 16 * (nt * 32 * E4R_WARPS + threadIdx.x));
        const unsigned char* xt = sm + x_tile(stage) + g * E4R_XROW + 32 * t;
#pragma unroll
        for (int mf = 0; mf < MF; mf++)
#pragma unroll
            for (int h = 0; h < 2; h++)
#pragma unroll
                for (int q = 0; q < 2; q++) xa[mf][h][q] = *reinterpret_cast<const uint4*>(xt + (16 * mf + 8 * h) * E4R_XROW + 16 * q);
        // Refill the stage read in the previous iteration: every lane's values from it are in registers (the __syncwarp
        // above orders their reads before these copies).
        fill(c + stages - 1);
#pragma unroll
        for (int s = 0; s < 4; s++)
        {
            unsigned bw[NT][2];
#pragma unroll
            for (int nt = 0; nt < NT; nt++)
            {
                const unsigned word = s == 0 ? wc[nt].x : s == 1 ? wc[nt].y : s == 2 ? wc[nt].z : wc[nt].w;
                bw[nt][0] = e4m3x2_to_bf16x2(word, 0x1404u);   // codes 4s, 4s+1: logical k 2t, 2t+1
                bw[nt][1] = e4m3x2_to_bf16x2(word, 0x3424u);   // codes 4s+2, 4s+3: logical k 2t+8, 2t+9
            }
#pragma unroll
            for (int mf = 0; mf < MF; mf++)
            {
                // x words 2s, 2s+1 of the lane's 16 columns: elements 4s..4s+3.
                const uint4 lo0 = xa[mf][0][s >> 1], lo1 = xa[mf][1][s >> 1];
                const unsigned av[4] = {
                    (s & 1) ? lo0.z : lo0.x, (s & 1) ? lo1.z : lo1.x,
                    (s & 1) ? lo0.w : lo0.y, (s & 1) ? lo1.w : lo1.y };
#pragma unroll
                for (int nt = 0; nt < NT; nt++) mma_bf16(acc[mf][nt], av, bw[nt][0], bw[nt][1]);
            }
        }
    }

    // The ring becomes the partials' table: every copy landed and every warp done reading before it is overwritten.
    cp_async_wait<0>();
    __syncthreads();
    float* red = reinterpret_cast<float*>(ring);   // [warp][fragment value i][lane], MF · NT · 4 values
    constexpr int values = MF * NT * 4;
#pragma unroll
    for (int mf = 0; mf < MF; mf++)
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int j = 0; j < 4; j++) red[(warp * values + (mf * NT + nt) * 4 + j) * 32 + lane] = acc[mf][nt][j];
    __syncthreads();

    // Entry (fragment value i of lane l): its K partials summed in warp order 0..7. SwiGLU pairs gate tile nt with up
    // tile nt + HT, so it walks tiles 0..HT-1 only.
    constexpr int entries = values * 32;
    for (int e = threadIdx.x; e < entries; e += blockDim.x)
    {
        const int i = e >> 5, l = e & 31;
        const int mf = i / (4 * NT), nt = (i >> 2) % NT, j = i & 3;
        if (SILU && nt >= HT) continue;
        const int r = 16 * mf + (l >> 2) + ((j & 2) ? 8 : 0);
        const int col = nt * 8 + 2 * (l & 3) + (j & 1);   // 0..31 plain; 0..15 the unit within the block for SwiGLU
        if (r >= rows) continue;
        float s0 = 0.f;
#pragma unroll
        for (int k = 0; k < E4R_WARPS; k++) s0 += red[(k * values + i) * 32 + l];
        if constexpr (SILU)
        {
            const long long u = (long long)(COLS / 2) * blockIdx.x + col;
            if (u >= inter) continue;
            float up = 0.f;
#pragma unroll
            for (int k = 0; k < E4R_WARPS; k++) up += red[(k * values + i + 4 * HT) * 32 + l];
            const float gate = s0 * scales[u];
            silu_out[(long long)r * inter + u] = f32_to_bf16(silu_f32(gate) * (up * scales[inter + u]));
        }
        else
        {
            const long long o = (long long)COLS * blockIdx.x + col;
            if (o >= out) continue;
            float* p = y + (long long)r * ldy + o;
            const float v = s0 * scales[o];
            *p = accumulate ? *p + v : v;
        }
    }
}

// Entries: _m{MF} with four tiles a warp (32 columns a CTA), _wide_m{MF} with eight (64) for up to 32 rows.
#define GEMM_E4M3_ROWS_ENTRIES(MF, NT, NAME) \
    extern "C" __global__ void __launch_bounds__(32 * E4R_WARPS, MF <= 2 ? E4R_MINBLOCKS : 1) gemm_e4m3_rows##NAME##MF(const bf16_t* __restrict__ x, \
        const unsigned char* __restrict__ w, const float* __restrict__ scales, float* y, int rows, int in, int out, int ldy, int accumulate, int stages) \
        { gemm_e4m3_rows<MF, NT, false>(x, w, scales, rows, in, out, y, ldy, accumulate, nullptr, 0, stages); } \
    extern "C" __global__ void __launch_bounds__(32 * E4R_WARPS, MF <= 2 ? E4R_MINBLOCKS : 1) gemm_silu_e4m3_rows##NAME##MF(const bf16_t* __restrict__ x, \
        const unsigned char* __restrict__ w, const float* __restrict__ scales, bf16_t* out, int rows, int in, int inter, int stages) \
        { gemm_e4m3_rows<MF, NT, true>(x, w, scales, rows, in, 2 * inter, nullptr, 0, 0, out, inter, stages); }
GEMM_E4M3_ROWS_ENTRIES(1, 4, _m)
GEMM_E4M3_ROWS_ENTRIES(2, 4, _m)
GEMM_E4M3_ROWS_ENTRIES(3, 4, _m)
GEMM_E4M3_ROWS_ENTRIES(4, 4, _m)
GEMM_E4M3_ROWS_ENTRIES(1, 8, _wide_m)
GEMM_E4M3_ROWS_ENTRIES(2, 8, _wide_m)
