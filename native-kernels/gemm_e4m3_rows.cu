// Products of a few dozen rows (9..64: batched decode, short chunks) over weights held as fp8 e4m3 codes with one
// fp32 scale per weight row, on bf16 tensor cores, reading each code once:
//   gemm_e4m3_rows_m{MF}:      y (R, ldy) fp32 [+]= x (R, in) bf16 · (codes · scale)ᵀ, R <= 16 · MF
//   gemm_silu_e4m3_rows_m{MF}: out (R, inter) bf16 = silu(x · Wgᵀ) · (x · Wuᵀ) over W = [gate; up] (2 · inter, in)
// Why: above the e4m3 GEMV's 8 rows, a kept matrix used to be dequantized into a bf16 scratch for cuBLAS, so a decode
// step of 9+ sequences read 1 byte, wrote 2 and read 2 again per weight (70B kept e4m3 on 80 GB: an 85 ms step at 8 rows
// in flight, docs/BENCHMARKS.md). Here every code is read once, converted exactly to bf16 in registers
// (e4m3x2_to_bf16x2) and multiplied on mma.sync m16n8k16; the row's scale multiplies the fp32 sum once, as in the e4m3
// GEMV, so code · scale is never rounded to bf16.
// Layout: a CTA of 8 warps owns 32 output columns (16 gate and 16 up columns of the same 16 units for the SwiGLU form):
// warps 0-3 the first 16, warps 4-7 the second, and within each four the K chunks of 64 go round-robin (warp k takes
// chunks k, k + 4, ...), so the two warps on the same chunk read the same x bytes (L1) at about the same time. A lane
// (g = lane / 4, t = lane % 4) loads 16 consecutive codes of weight row g of each 8-column tile and the same 16 columns
// of x rows g and g + 8 of each 16-row fragment: the dot product does not care in which order k is summed, so logical
// k {2t, 2t+1, 2t+8, 2t+9} of MMA step s (0..3) are physical columns 16t + 4s + {0, 1, 2, 3}, one 32-bit word of codes
// and two of x per register operand, no shuffles. Weight loads run PREFETCH chunks ahead (streamed past L1); the four
// K partials are summed through shared memory in a fixed order (deterministic), then scaled and stored.
// Requirements (checked by the launcher): in % 64 == 0, x and codes 16-byte aligned. Rows past R read as zeros and are
// not stored; columns past out read the last row's codes and are not stored.
// Launch: grid ceil(out / 32) (plain) or ceil(inter / 16) (SwiGLU), block 256, no dynamic shared memory.
#include "swiftkv_common.cuh"

#ifndef E4R_KSPLIT
#define E4R_KSPLIT 4   // warps per 16 columns (a CTA is 2 x E4R_KSPLIT warps; the launcher's block is 256 threads)
#endif
#define E4R_CHUNK 64
// Weight chunks in flight per warp, by 16-row fragments: fewer rows want them sooner, more rows have more arithmetic
// to cover them with (bench/e4m3_rows_probe.py, one H200, at 3973467's P = 3 for all: 9-16 rows best at 2, 70B's layer
// 412 -> 342 us at 9 rows; 32 rows at 4, 561 -> 508 us; 64 rows at 6, 1158 -> 1040 us). -DE4R_PREFETCH=n sets all.
#ifdef E4R_PREFETCH
#define E4R_PREFETCH_M1 E4R_PREFETCH
#define E4R_PREFETCH_M2 E4R_PREFETCH
#define E4R_PREFETCH_M3 E4R_PREFETCH
#define E4R_PREFETCH_M4 E4R_PREFETCH
#else
#define E4R_PREFETCH_M1 2
#define E4R_PREFETCH_M2 4
#define E4R_PREFETCH_M3 4
#define E4R_PREFETCH_M4 6
#endif
// Probe switches (bench/e4m3_rows_probe.py): E4R_MINBLOCKS, the launch bounds' CTAs per SM for entries of up to 32
// rows (registers capped to fit them); E4R_XAHEAD 1 loads x rows a chunk ahead as the weights are (slower in the
// engine at 3973467's first try: 8B steps of 32 rows 9.5 -> 10.9 ms).
#ifndef E4R_MINBLOCKS
#define E4R_MINBLOCKS 1
#endif
#ifndef E4R_XAHEAD
#define E4R_XAHEAD 0
#endif

template <int MF, bool SILU, int PREFETCH>
__device__ __forceinline__ void gemm_e4m3_rows(const bf16_t* __restrict__ x, const unsigned char* __restrict__ w,
    const float* __restrict__ scales, int rows, int in, int out, float* y, int ldy, int accumulate, bf16_t* silu_out, int inter)
{
    __shared__ float red[2 * E4R_KSPLIT][MF * 8][32];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int ks = warp % E4R_KSPLIT, half = warp / E4R_KSPLIT;
    // The first of this warp's 16 weight rows: plain, columns 32·block + 16·half; SwiGLU, gate or up rows of units 16·block.
    const long long first = SILU ? (long long)half * inter + 16LL * blockIdx.x : 32LL * blockIdx.x + 16 * half;
    const long long last = SILU ? (long long)(half + 1) * inter - 1 : (long long)out - 1;
    const unsigned char* wr[2];
#pragma unroll
    for (int nt = 0; nt < 2; nt++) wr[nt] = w + min(first + nt * 8 + g, last) * in + 16 * t;
    const bf16_t* xr[MF][2];
    bool xv[MF][2];
#pragma unroll
    for (int mf = 0; mf < MF; mf++)
#pragma unroll
        for (int h = 0; h < 2; h++)
        {
            const int r = 16 * mf + g + 8 * h;
            xv[mf][h] = r < rows;
            xr[mf][h] = x + (long long)(xv[mf][h] ? r : 0) * in + 16 * t;
        }

    float acc[MF][2][4];
#pragma unroll
    for (int mf = 0; mf < MF; mf++)
#pragma unroll
        for (int nt = 0; nt < 2; nt++)
#pragma unroll
            for (int j = 0; j < 4; j++) acc[mf][nt][j] = 0.f;

    const int chunks = in / E4R_CHUNK, mine = (chunks - ks + E4R_KSPLIT - 1) / E4R_KSPLIT;
    auto column = [&](int c) { return (long long)(ks + c * E4R_KSPLIT) * E4R_CHUNK; };
    uint4 wb[PREFETCH][2];
#pragma unroll
    for (int p = 0; p < PREFETCH; p++)
        if (p < mine)
#pragma unroll
            for (int nt = 0; nt < 2; nt++) wb[p][nt] = ld_stream16(wr[nt] + column(p));

    auto load_x = [&](uint4 (&dst)[MF][2][2], long long k0)
    {
#pragma unroll
        for (int mf = 0; mf < MF; mf++)
#pragma unroll
            for (int h = 0; h < 2; h++)
            {
                const uint4 z = make_uint4(0u, 0u, 0u, 0u);
                dst[mf][h][0] = xv[mf][h] ? *reinterpret_cast<const uint4*>(xr[mf][h] + k0) : z;
                dst[mf][h][1] = xv[mf][h] ? *reinterpret_cast<const uint4*>(xr[mf][h] + k0 + 8) : z;
            }
    };
#if E4R_XAHEAD
    uint4 xn[MF][2][2];
    if (mine > 0) load_x(xn, column(0));
#endif

    for (int c0 = 0; c0 < mine; c0 += PREFETCH)
    {
#pragma unroll
        for (int p = 0; p < PREFETCH; p++)
        {
            const int c = c0 + p;
            if (c >= mine) break;
            uint4 xa[MF][2][2];
#if E4R_XAHEAD
#pragma unroll
            for (int mf = 0; mf < MF; mf++)
#pragma unroll
                for (int h = 0; h < 2; h++) { xa[mf][h][0] = xn[mf][h][0]; xa[mf][h][1] = xn[mf][h][1]; }
            if (c + 1 < mine) load_x(xn, column(c + 1));
#else
            load_x(xa, column(c));
#endif
            uint4 wc[2] = { wb[p][0], wb[p][1] };
            if (c + PREFETCH < mine)
#pragma unroll
                for (int nt = 0; nt < 2; nt++) wb[p][nt] = ld_stream16(wr[nt] + column(c + PREFETCH));
#pragma unroll
            for (int s = 0; s < 4; s++)
            {
                unsigned b[2][2];
#pragma unroll
                for (int nt = 0; nt < 2; nt++)
                {
                    const unsigned word = s == 0 ? wc[nt].x : s == 1 ? wc[nt].y : s == 2 ? wc[nt].z : wc[nt].w;
                    b[nt][0] = e4m3x2_to_bf16x2(word, 0x1404u);   // codes 4s, 4s+1: logical k 2t, 2t+1
                    b[nt][1] = e4m3x2_to_bf16x2(word, 0x3424u);   // codes 4s+2, 4s+3: logical k 2t+8, 2t+9
                }
#pragma unroll
                for (int mf = 0; mf < MF; mf++)
                {
                    // x words 2s, 2s+1 of the lane's 16 columns: elements 4s..4s+3.
                    const uint4 lo0 = xa[mf][0][s >> 1], lo1 = xa[mf][1][s >> 1];
                    const unsigned a[4] = {
                        (s & 1) ? lo0.z : lo0.x, (s & 1) ? lo1.z : lo1.x,
                        (s & 1) ? lo0.w : lo0.y, (s & 1) ? lo1.w : lo1.y };
#pragma unroll
                    for (int nt = 0; nt < 2; nt++) mma_bf16(acc[mf][nt], a, b[nt][0], b[nt][1]);
                }
            }
        }
    }

#pragma unroll
    for (int mf = 0; mf < MF; mf++)
#pragma unroll
        for (int nt = 0; nt < 2; nt++)
#pragma unroll
            for (int j = 0; j < 4; j++) red[warp][(mf * 2 + nt) * 4 + j][lane] = acc[mf][nt][j];
    __syncthreads();

    // Every thread finishes entries (fragment value i of lane l) of both halves: K partials summed in order 0..3.
    constexpr int entries = MF * 8 * 32;
    for (int e = threadIdx.x; e < (SILU ? 1 : 2) * entries; e += blockDim.x)
    {
        const int hf = e / entries, i = (e % entries) >> 5, l = e & 31;
        const int mf = i >> 3, nt = (i >> 2) & 1, j = i & 3;
        const int r = 16 * mf + (l >> 2) + ((j & 2) ? 8 : 0);
        const int col = nt * 8 + 2 * (l & 3) + (j & 1);   // 0..15 within the half
        if (r >= rows) continue;
        float s0 = 0.f;
#pragma unroll
        for (int k = 0; k < E4R_KSPLIT; k++) s0 += red[E4R_KSPLIT * hf + k][i][l];
        if constexpr (SILU)
        {
            const long long u = 16LL * blockIdx.x + col;
            if (u >= inter) continue;
            float up = 0.f;
#pragma unroll
            for (int k = 0; k < E4R_KSPLIT; k++) up += red[E4R_KSPLIT + k][i][l];
            const float gate = s0 * scales[u];
            silu_out[(long long)r * inter + u] = f32_to_bf16(silu_f32(gate) * (up * scales[inter + u]));
        }
        else
        {
            const long long o = 32LL * blockIdx.x + 16 * hf + col;
            if (o >= out) continue;
            float* p = y + (long long)r * ldy + o;
            const float v = s0 * scales[o];
            *p = accumulate ? *p + v : v;
        }
    }
}

#define GEMM_E4M3_ROWS_ENTRIES(MF) \
    extern "C" __global__ void __launch_bounds__(64 * E4R_KSPLIT, MF <= 2 ? E4R_MINBLOCKS : 1) gemm_e4m3_rows_m##MF(const bf16_t* __restrict__ x, \
        const unsigned char* __restrict__ w, const float* __restrict__ scales, float* y, int rows, int in, int out, int ldy, int accumulate) \
        { gemm_e4m3_rows<MF, false, E4R_PREFETCH_M##MF>(x, w, scales, rows, in, out, y, ldy, accumulate, nullptr, 0); } \
    extern "C" __global__ void __launch_bounds__(64 * E4R_KSPLIT, MF <= 2 ? E4R_MINBLOCKS : 1) gemm_silu_e4m3_rows_m##MF(const bf16_t* __restrict__ x, \
        const unsigned char* __restrict__ w, const float* __restrict__ scales, bf16_t* out, int rows, int in, int inter) \
        { gemm_e4m3_rows<MF, true, E4R_PREFETCH_M##MF>(x, w, scales, rows, in, 2 * inter, nullptr, 0, 0, out, inter); }
GEMM_E4M3_ROWS_ENTRIES(1)
GEMM_E4M3_ROWS_ENTRIES(2)
GEMM_E4M3_ROWS_ENTRIES(3)
GEMM_E4M3_ROWS_ENTRIES(4)
