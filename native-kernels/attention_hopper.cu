// Causal GQA prefill attention for Hopper (sm_90a): the FlashAttention algorithm of attention_flash.cu with both
// products on warpgroup MMAs (wgmma.mma_async) instead of mma.sync, head_dim 128.
//
// Why a second kernel: on H100 the mma.sync kernel tops out near 300 TFLOP/s because every K/V fragment goes through
// ldmatrix into registers (shared-memory bandwidth) and the warp's registers are full. wgmma reads B (and here A for
// Q·Kᵀ) straight from shared memory in the 128-byte-swizzled layout, so the same tile costs no register traffic.
//
// Layout and work split (same GQA packing as attention_flash.cu: packed row r = t * group + g, so one K/V tile
// serves all query heads of a KV head):
//   CTA: NWG warpgroups x 64 packed rows (BM = 64 * NWG), BN keys per tile, head_dim 128.
//   Shared memory, every tile stored as two 64-dim "panels" of 128-byte rows, 16-byte chunks XOR-swizzled by
//   (row & 7) (the SWIZZLE_128B layout of the wgmma descriptors), all panels 1024-byte aligned:
//     Q: BM rows (bf16, converted once from the fp32 queries), K and V: 2 stages x BN keys (cp.async, zero-filled
//     past the cache end); over an fp8 pool one bf16 stage plus two e4m3 staging areas (see WgShape).
//   S = Q·Kᵀ: wgmma m64nBNk16, A = Q (K-major descriptor), B = K (K-major: a key's 128 dims are contiguous).
//   O += P·V: wgmma m64n128k16, A = P in registers (the S accumulators rounded to bf16: the accumulator layout of
//   m64nN is the A-fragment layout, as with mma.sync), B = V (MN-major: "transposed" descriptor, no copy of V).
//   Online softmax in fp32 in the exp2 domain, each row's state held by the 4 lanes of a quad.
// Tiles run in order 0..n-1, so the masked tiles (those past the CTA's first row's position) come last and every
// row has seen key 0 before them: no row's running max is ever -inf. Rows past the step (a partial last row tile)
// compute on zero queries and are not stored.
// Entries: contiguous caches, and paged varlen batches over a bf16 or an fp8 pool (the serving engine's prefill
// chunks). No split-K: decode and short steps over long caches stay on attention_flash.cu.
// The contiguous caches also have a warp-specialised entry (flash_wgmma_ws below, the one Auto takes): TMA producer,
// consumers that pipeline softmax and MMAs, 128-key tiles, persistent; H100 +20-35% over the two-CTA entry at 8K-32K.
#include "swiftkv_common.cuh"
#include "attention_common.cuh"
#include "wgmma_common.cuh"
#include "tma_common.cuh"

// 1: a warp keeps its softmax max while the new one is at most 2^8 above it, skipping O's rescale (FlashAttention-4's
// conditional rescaling); 0: rescale every tile. bench/attention/hopper_probe.py times both.
#ifndef WG_LAZY_RESCALE
#define WG_LAZY_RESCALE 1
#endif
// 1: bf16 caches sync the CTA once per key tile (the next tile's copies are issued after it); 0: twice (copies issued
// first, a second barrier at the end of the tile). Timed by the probe as well.
#ifndef WG_ONE_BARRIER
#define WG_ONE_BARRIER 1
#endif

namespace
{
constexpr int HD = 128;              // head_dim
constexpr int PANEL_ROW = 128;       // bytes of one 64-dim row of a panel

// Byte offset of 16-byte chunk c (0..7) of row r inside a 128-byte-swizzled panel.
__device__ __forceinline__ unsigned sw128(int r, int c) { return (unsigned)(r * PANEL_ROW + ((c ^ (r & 7)) << 4)); }

// d (64 x 64, fp32) = (scale_d ? d : 0) + A (64 x 16, shared memory, K-major) * B (64 x 16, shared memory, K-major)
__device__ __forceinline__ void wgmma_m64n64k16_ss(float* d, unsigned long long desc_a, unsigned long long desc_b, int scale_d)
{
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}, %32, %33, p, 1, 1, 0, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
        : "l"(desc_a), "l"(desc_b), "r"(scale_d));
}

// d (64 x 128, fp32) += A (64 x 16 bf16, registers: the accumulator layout packed in pairs) * B (16 x 128, shared memory, MN-major)
__device__ __forceinline__ void wgmma_m64n128k16_rs(float* d, const unsigned* a, unsigned long long desc_b)
{
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}, {%64,%65,%66,%67}, %68, p, 1, 1, 1;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(1));
}

// d (64 x 128, fp32) = (scale_d ? d : 0) + A (64 x 16, shared memory, K-major) * B (128 x 16, shared memory, K-major)
__device__ __forceinline__ void wgmma_m64n128k16_ss(float* d, unsigned long long desc_a, unsigned long long desc_b, int scale_d)
{
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}, %64, %65, p, 1, 1, 0, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
        : "l"(desc_a), "l"(desc_b), "r"(scale_d));
}

template <int BN> __device__ __forceinline__ void wgmma_qk(float* s, unsigned long long da, unsigned long long db, int scale_d);
template <> __device__ __forceinline__ void wgmma_qk<64>(float* s, unsigned long long da, unsigned long long db, int scale_d) { wgmma_m64n64k16_ss(s, da, db, scale_d); }
template <> __device__ __forceinline__ void wgmma_qk<128>(float* s, unsigned long long da, unsigned long long db, int scale_d) { wgmma_m64n128k16_ss(s, da, db, scale_d); }

// Row tile and (sequence, KV head) pair of this CTA: linear block i takes row-tile rank i / gridDim.y (rank 0 = the
// last, longest causal tile) of pair i % gridDim.y, so the longest tiles of every pair start first
// (attention_flash.cu's FA_ORDER).
__device__ __forceinline__ void heavy_first(int& tile_m, int& pair)
{
    const unsigned lin = blockIdx.y * gridDim.x + blockIdx.x;
    tile_m = (int)(gridDim.x - 1 - lin / gridDim.y);
    pair = (int)(lin % gridDim.y);
}

// One row pair's online-softmax state: rows r_lo and r_lo + 8 of the warp's 16, each held by a quad of lanes.
struct RowState
{
    float m0, m1, l0, l1;      // running max (exp2 domain, scaled) and this lane's partial row sums
    int lim0, lim1;            // last key each row may see
};

// Tile `n0`'s scores s (the m64nBN accumulators) -> P (bf16 pairs, A-fragment order), new max and row sums;
// returns via alpha0/alpha1 the factors by which O must be rescaled, and whether it must be at all (false: the warp
// kept its max, see WG_LAZY_RESCALE). `diagonal` masks keys past each row's position.
// fp8 caches: ksc / vsc (shared memory, this tile's keys) scale S's columns before the softmax and P's columns after
// the row sums, so that P·V8 = P·V; null for bf16.
template <int BN>
__device__ __forceinline__ bool softmax_tile(float* s, unsigned* p, RowState& st, int n0, bool diagonal, int quad,
    float scale_log2, float& alpha0, float& alpha1, const float* ksc, const float* vsc)
{
    if (ksc != nullptr)
    {
#pragma unroll
        for (int c = 0; c < BN / 8; c++)
        {
            const float2 k2 = *reinterpret_cast<const float2*>(ksc + 8 * c + 2 * quad);
            s[4 * c] *= k2.x; s[4 * c + 1] *= k2.y;
            s[4 * c + 2] *= k2.x; s[4 * c + 3] *= k2.y;
        }
    }
    if (diagonal)
    {
#pragma unroll
        for (int c = 0; c < BN / 8; c++)
#pragma unroll
            for (int e = 0; e < 2; e++)
            {
                const int col = n0 + 8 * c + 2 * quad + e;
                if (col > st.lim0) s[4 * c + e] = -INFINITY;
                if (col > st.lim1) s[4 * c + 2 + e] = -INFINITY;
            }
    }
    float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
    for (int c = 0; c < BN / 8; c++)
    {
        mx0 = fmaxf(mx0, fmaxf(s[4 * c], s[4 * c + 1]));
        mx1 = fmaxf(mx1, fmaxf(s[4 * c + 2], s[4 * c + 3]));
    }
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
    float mn0 = fmaxf(st.m0, mx0 * scale_log2), mn1 = fmaxf(st.m1, mx1 * scale_log2);
    bool rescale = true;
#if WG_LAZY_RESCALE
    // While no row of the warp has a new max more than 2^8 above the one its P and O are scaled to, keep the old
    // max: P and the sums grow by at most 256x (far inside fp32 and bf16 range), and O needs no rescale this tile.
    if (__all_sync(0xffffffffu, mn0 - st.m0 <= 8.f && mn1 - st.m1 <= 8.f))
    {
        mn0 = st.m0;
        mn1 = st.m1;
        rescale = false;
    }
#endif
    alpha0 = fast_exp2(st.m0 - mn0);
    alpha1 = fast_exp2(st.m1 - mn1);
    st.m0 = mn0;
    st.m1 = mn1;
    float sum0 = 0.f, sum1 = 0.f;
#pragma unroll
    for (int c = 0; c < BN / 8; c++)
    {
        const float a = fast_exp2(s[4 * c] * scale_log2 - mn0), b = fast_exp2(s[4 * c + 1] * scale_log2 - mn0);
        const float cc = fast_exp2(s[4 * c + 2] * scale_log2 - mn1), d = fast_exp2(s[4 * c + 3] * scale_log2 - mn1);
        sum0 += a + b;
        sum1 += cc + d;
        if (vsc != nullptr)
        {
            const float2 v2 = *reinterpret_cast<const float2*>(vsc + 8 * c + 2 * quad);
            p[2 * c] = pack_bf16(a * v2.x, b * v2.y);
            p[2 * c + 1] = pack_bf16(cc * v2.x, d * v2.y);
        }
        else
        {
            p[2 * c] = pack_bf16(a, b);
            p[2 * c + 1] = pack_bf16(cc, d);
        }
    }
    st.l0 = st.l0 * alpha0 + sum0;
    st.l1 = st.l1 * alpha1 + sum1;
    return rescale;
}

__device__ __forceinline__ void rescale_o(float* o, float alpha0, float alpha1)
{
#pragma unroll
    for (int c = 0; c < 16; c++)
    {
        o[4 * c] *= alpha0; o[4 * c + 1] *= alpha0;
        o[4 * c + 2] *= alpha1; o[4 * c + 3] *= alpha1;
    }
}

// S = Q·Kᵀ for this warpgroup's 64 rows and one BN-key tile (issued, not waited).
template <int BN, int BM>
__device__ __forceinline__ void issue_qk(float* s, unsigned sQ, unsigned sK, int wg)
{
#pragma unroll
    for (int kk = 0; kk < HD / 16; kk++)
    {
        const unsigned long long da = gmma_desc(sQ + (kk >> 2) * (BM * PANEL_ROW) + wg * 64 * PANEL_ROW + (kk & 3) * 32, 16, 1024);
        const unsigned long long db = gmma_desc(sK + (kk >> 2) * (BN * PANEL_ROW) + (kk & 3) * 32, 16, 1024);
        wgmma_qk<BN>(s, da, db, kk > 0);
    }
}

// O += P·V for one BN-key tile (issued, not waited).
template <int BN>
__device__ __forceinline__ void issue_pv(float* o, const unsigned* p, unsigned sV)
{
#pragma unroll
    for (int kk = 0; kk < BN / 16; kk++)
        wgmma_m64n128k16_rs(o, p + 4 * kk, gmma_desc(sV + kk * 16 * PANEL_ROW, BN * PANEL_ROW, 1024));
}

// One sequence's view for a CTA: its queries and output rows, its step, and where its K/V rows are (this KV head's
// column). Contiguous: key p at k + p * kv_stride; paged: at k + slot(p) * kv_stride, slot from the block table.
struct WgSeq
{
    const float* q;            // row t at q + t * ldq
    int ldq;
    bf16_t* out;               // row t at out + t * ldo
    int ldo;
    int T, pos0;               // rows of this step; position of row 0
    const bf16_t* k;
    const bf16_t* v;
    const int* table;          // paged: the sequence's block table; null for contiguous
    int block_shift;           // paged: log2(block size)
    const unsigned char* k8;   // fp8 pool: this KV head's column of the e4m3 K / V bytes (k / v unused)
    const unsigned char* v8;
    const float* k_scale;      // fp8 pool: scale of (slot, this KV head) at [slot * kv_heads]
    const float* v_scale;
    const float* rope;         // null: q is rotated; else q is not, and row t's cos / sin are at rope + t * HD
                               // ([cos of the HD/2 pairs | sin of them]): RoPE is applied as Q is staged
    const bf16_t* qb;          // not null: the queries are bf16 and rotated here (q, rope unused), same row stride ldq
};

// A thread's two output rows (packed rows r_lo and r_lo + 8) from O and the row sums: O / l rounded to bf16, rows
// past the step not stored. The 4 lanes of a quad hold a row's partial sums.
__device__ __forceinline__ void store_o(const float* o, const RowState& st, int r_lo, int rows_total, int group, int kvh,
    bf16_t* out, int ldo, int quad)
{
    float l0 = st.l0, l1 = st.l1;
    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
#pragma unroll
    for (int half = 0; half < 2; half++)
    {
        const int pr = r_lo + 8 * half;
        if (pr >= rows_total) continue;
        const float inv = 1.f / (half ? l1 : l0);
        const int t = pr / group, h = kvh * group + pr % group;
        unsigned* dst = reinterpret_cast<unsigned*>(out + (long long)t * ldo + h * HD + 2 * quad);
#pragma unroll
        for (int c = 0; c < 16; c++)
            dst[4 * c] = pack_bf16(o[4 * c + 2 * half] * inv, o[4 * c + 2 * half + 1] * inv);
    }
}

// Q rows [r_begin, r_begin + rcount) of a BM-row tile starting at packed row row0: fp32 -> bf16 (or bf16 as it is)
// into the swizzled panels at sbase (rows past the step are zeros), rotated on the way when sq.rope is set. Threads tid
// of nthreads.
template <int BM, int UNROLL = 2>
__device__ __forceinline__ void stage_q(unsigned char* sbase, const WgSeq& sq, int row0, int r_begin, int rcount, int tid,
    int nthreads, int rows_total, int group, int kvh)
{
    const float* q = sq.q;
    const int ldq = sq.ldq;
    if (sq.qb != nullptr || sq.rope == nullptr)
    {
        // Rotated queries: bf16 (gemm_qkv.cu's output, one 16-byte copy per chunk, half the bytes) or fp32 (rounded here).
#pragma unroll 4
        for (int i = tid; i < rcount * 16; i += nthreads)
        {
            const int r = r_begin + (i >> 4), cc = i & 15, pr = row0 + r;
            uint4 w = make_uint4(0u, 0u, 0u, 0u);
            if (pr < rows_total)
            {
                const int t = pr / group, h = kvh * group + pr % group;
                const long long at = (long long)t * ldq + h * HD + cc * 8;
                if (sq.qb != nullptr) w = *reinterpret_cast<const uint4*>(sq.qb + at);
                else
                {
                    const float4* src = reinterpret_cast<const float4*>(q + at);
                    const float4 a = src[0], c = src[1];
                    w = make_uint4(pack_bf16(a.x, a.y), pack_bf16(a.z, a.w), pack_bf16(c.x, c.y), pack_bf16(c.z, c.w));
                }
            }
            *reinterpret_cast<uint4*>(sbase + (cc >> 3) * (BM * PANEL_ROW) + sw128(r, cc & 7)) = w;
        }
    }
    else
    {
        // RoPE here instead of a pass over Q in memory: chunk cc (dims 8cc..8cc+7) and chunk cc + 8 (the same pairs'
        // other halves) are rotated together, x' = x cos - y sin, y' = y cos + x sin (swiftkv_common.cuh's rope_pair).
#pragma unroll UNROLL
        for (int i = tid; i < rcount * 8; i += nthreads)
        {
            const int r = r_begin + (i >> 3), cc = i & 7, pr = row0 + r;
            uint4 wx = make_uint4(0u, 0u, 0u, 0u), wy = wx;
            if (pr < rows_total)
            {
                const int t = pr / group, h = kvh * group + pr % group;
                const float* qr = q + (long long)t * ldq + h * HD + cc * 8;
                const float* cs = sq.rope + (long long)t * HD + cc * 8;
                float x[8], y[8], co[8], sn[8];
                *reinterpret_cast<float4*>(x) = reinterpret_cast<const float4*>(qr)[0];
                *reinterpret_cast<float4*>(x + 4) = reinterpret_cast<const float4*>(qr)[1];
                *reinterpret_cast<float4*>(y) = reinterpret_cast<const float4*>(qr + HD / 2)[0];
                *reinterpret_cast<float4*>(y + 4) = reinterpret_cast<const float4*>(qr + HD / 2)[1];
                *reinterpret_cast<float4*>(co) = reinterpret_cast<const float4*>(cs)[0];
                *reinterpret_cast<float4*>(co + 4) = reinterpret_cast<const float4*>(cs)[1];
                *reinterpret_cast<float4*>(sn) = reinterpret_cast<const float4*>(cs + HD / 2)[0];
                *reinterpret_cast<float4*>(sn + 4) = reinterpret_cast<const float4*>(cs + HD / 2)[1];
                float rx[8], ry[8];
#pragma unroll
                for (int e = 0; e < 8; e++)
                {
                    rx[e] = x[e] * co[e] - y[e] * sn[e];
                    ry[e] = y[e] * co[e] + x[e] * sn[e];
                }
                wx = make_uint4(pack_bf16(rx[0], rx[1]), pack_bf16(rx[2], rx[3]), pack_bf16(rx[4], rx[5]), pack_bf16(rx[6], rx[7]));
                wy = make_uint4(pack_bf16(ry[0], ry[1]), pack_bf16(ry[2], ry[3]), pack_bf16(ry[4], ry[5]), pack_bf16(ry[6], ry[7]));
            }
            *reinterpret_cast<uint4*>(sbase + sw128(r, cc)) = wx;
            *reinterpret_cast<uint4*>(sbase + BM * PANEL_ROW + sw128(r, cc)) = wy;
        }
    }
}

// Shared memory of an entry: bf16 caches Q + 2 stages x (K, V); fp8 caches Q + one bf16 (K, V) stage + 2 staging
// areas of [K bytes][V bytes][K scales][V scales] + the converted tile's scales. Plus 1024 bytes for the alignment.
// SMEM is what the launcher passes (AttentionKernel.Hopper.cs: HopperSharedBytes, HopperSharedBytesFp8).
template <int BN, int NWG, bool FP8>
struct WgShape
{
    static constexpr int BM = 64 * NWG, Q_BYTES = 2 * BM * PANEL_ROW, KV_BYTES = 2 * BN * PANEL_ROW;
    static constexpr int RAW_BYTES = 2 * BN * HD + 8 * BN;
    static constexpr int SMEM = Q_BYTES + (FP8 ? 2 * KV_BYTES + 2 * RAW_BYTES + 8 * BN : 4 * KV_BYTES) + 1024;
};

// Per tile: S, wait, softmax, P·V, wait. The tensor cores stay busy because two CTAs share each SM (each CTA's
// softmax runs while the other's products do), not by pipelining inside a warpgroup: FlashAttention-3's
// intra-warpgroup overlap (S of tile j+1 issued with P·V of tile j, P double-buffered) was tried and measured
// slower here, since ptxas serialised the in-flight wgmmas (warning C7514); src/SwiftKV.Cuda/NOTES.md has the numbers.
// fp8 pools (FP8): K/V tiles arrive as e4m3 bytes in a staging area two tiles ahead, are converted exactly (unscaled)
// into the one bf16 stage the wgmmas read, and the per-key scales go to S and P (softmax_tile).
template <int BN, int NWG, bool FP8>
__device__ __forceinline__ void flash_wgmma(const WgSeq& sq, int kvh, int tile_m, int heads, int kv_heads, float scale_log2)
{
    typedef WgShape<BN, NWG, FP8> Sh;
    constexpr int BM = Sh::BM, THREADS = 128 * NWG;
    constexpr int Q_BYTES = Sh::Q_BYTES, KV_BYTES = Sh::KV_BYTES;
    extern __shared__ unsigned char smem_raw[];
    const unsigned raw = smem_addr(smem_raw), base = (raw + 1023u) & ~1023u;
    unsigned char* const sbase = smem_raw + (base - raw);
    // K stage s at sKs + s * KV_BYTES, V stage s at sVs + s * KV_BYTES (fp8: one stage each, then the staging areas)
    const unsigned sQ = base, sKs = base + Q_BYTES, sVs = sKs + (FP8 ? 1 : 2) * KV_BYTES;
    const unsigned sRaw = sVs + KV_BYTES;
    float* const conv_scales = reinterpret_cast<float*>(sbase + Q_BYTES + 2 * KV_BYTES + 2 * Sh::RAW_BYTES);

    const int group = heads / kv_heads, T = sq.T, pos0 = sq.pos0;
    const int rows_total = T * group, row0 = tile_m * BM;
    if (row0 >= rows_total) return;                       // varlen: a shorter sequence has fewer row tiles
    const float* q = sq.q;
    const bf16_t* k = sq.k;
    const bf16_t* v = sq.v;
    const int ldq = sq.ldq;
    const long long kv_stride = (long long)kv_heads * HD;
    const int kv_len = pos0 + T, t_first = row0 / group, t_last = min(T - 1, (row0 + BM - 1) / group);
    const int n_tiles = (pos0 + t_last + BN) / BN;        // keys 0 .. pos0 + t_last
    const int tid = threadIdx.x;

    // One BN-key tile of K and of V into a stage (cp.async, 16-byte chunks; keys past the cache end zero-filled).
    // Every chunk's offset (block-table reads included) is computed before the first copy: the copies' asm is a
    // compiler barrier, so interleaving them would serialise the table reads (attention_flash.cu's FA_LOAD_HOIST).
    // Cache row of position p (contiguous: p; paged: through the block table); positions past the cache read row 0's
    // address, and their copies are zero-filled.
    auto slot_of = [&](int p) -> long long {
        const int pc = p < kv_len ? p : 0;
        if (sq.table == nullptr) return pc;
        return ((long long)__ldg(sq.table + (pc >> sq.block_shift)) << sq.block_shift) + (pc & ((1 << sq.block_shift) - 1));
    };
    constexpr int PER = BN * 16 / THREADS;
    static_assert(PER * THREADS == BN * 16, "a tile is a whole number of chunks per thread");
    auto load_kv = [&](int stage, int tile) {
        const int n0 = tile * BN;
        long long off[PER];
#pragma unroll
        for (int j = 0; j < PER; j++)
        {
            const int i = tid + j * THREADS;
            off[j] = slot_of(n0 + (i >> 4)) * kv_stride + (i & 15) * 8;
        }
#pragma unroll
        for (int j = 0; j < PER; j++)
        {
            const int i = tid + j * THREADS, key = i >> 4, cc = i & 15, ok = n0 + key < kv_len ? 16 : 0;
            const unsigned so = (cc >> 3) * (BN * PANEL_ROW) + sw128(key, cc & 7);
            cp_async16(sKs + stage * KV_BYTES + so, k + off[j], ok);
            cp_async16(sVs + stage * KV_BYTES + so, v + off[j], ok);
        }
        cp_async_commit();
    };

    // fp8: one tile's e4m3 K and V rows (8 chunks of 16 bytes per key) and scales into staging area `area`.
    constexpr int PER8 = BN * 8 / THREADS;
    static_assert(!FP8 || (PER8 * THREADS == BN * 8 && 2 * BN <= THREADS), "an fp8 tile is a whole number of chunks per thread");
    auto load_raw = [&](int area, int tile) {
        const int n0 = tile * BN;
        const unsigned dk = sRaw + area * Sh::RAW_BYTES, dv = dk + BN * HD, dks = dv + BN * HD, dvs = dks + 4 * BN;
        long long off[PER8];
#pragma unroll
        for (int j = 0; j < PER8; j++)
        {
            const int i = tid + j * THREADS;
            off[j] = slot_of(n0 + (i >> 3)) * kv_stride + (i & 7) * 16;
        }
        const long long soff = tid < BN ? slot_of(n0 + tid) * kv_heads : 0;
#pragma unroll
        for (int j = 0; j < PER8; j++)
        {
            const int i = tid + j * THREADS, key = i >> 3, ok = n0 + key < kv_len ? 16 : 0;
            cp_async16(dk + key * HD + (i & 7) * 16, sq.k8 + off[j], ok);
            cp_async16(dv + key * HD + (i & 7) * 16, sq.v8 + off[j], ok);
        }
        if (tid < BN)
        {
            const int ok = n0 + tid < kv_len ? 4 : 0;
            cp_async4(dks + 4 * tid, sq.k_scale + soff, ok);
            cp_async4(dvs + 4 * tid, sq.v_scale + soff, ok);
        }
        cp_async_commit();
    };
    // fp8: staging area `area` -> the bf16 K and V stage (swizzled), scales -> conv_scales. Zero-filled keys stay 0.
    auto convert = [&](int area) {
        const unsigned char* rk = sbase + Q_BYTES + 2 * KV_BYTES + area * Sh::RAW_BYTES;
#pragma unroll
        for (int j = 0; j < 2 * PER8; j++)
        {
            const int i = tid + j * THREADS, which = i / (BN * 8), ii = i % (BN * 8), key = ii >> 3, c8 = ii & 7;
            const uint4 w = *reinterpret_cast<const uint4*>(rk + which * BN * HD + key * HD + c8 * 16);
            unsigned char* dst = sbase + Q_BYTES + which * KV_BYTES;
            const int cc = 2 * c8;                         // the first of the two bf16 chunks (8 dims each)
            *reinterpret_cast<uint4*>(dst + (cc >> 3) * (BN * PANEL_ROW) + sw128(key, cc & 7)) =
                make_uint4(e4m3x2_to_bf16x2(w.x, 0x1404u), e4m3x2_to_bf16x2(w.x, 0x3424u), e4m3x2_to_bf16x2(w.y, 0x1404u), e4m3x2_to_bf16x2(w.y, 0x3424u));
            *reinterpret_cast<uint4*>(dst + ((cc + 1) >> 3) * (BN * PANEL_ROW) + sw128(key, (cc + 1) & 7)) =
                make_uint4(e4m3x2_to_bf16x2(w.z, 0x1404u), e4m3x2_to_bf16x2(w.z, 0x3424u), e4m3x2_to_bf16x2(w.w, 0x1404u), e4m3x2_to_bf16x2(w.w, 0x3424u));
        }
        const float* rs = reinterpret_cast<const float*>(rk + 2 * BN * HD);
        if (tid < 2 * BN) conv_scales[tid] = rs[tid];
    };

    if (FP8)
    {
        load_raw(0, 0);
        if (n_tiles > 1) load_raw(1, 1);
        else cp_async_commit();
    }
    else load_kv(0, 0);
    stage_q<BM>(sbase, sq, row0, 0, BM, tid, THREADS, rows_total, group, kvh);
    fence_proxy_async();

    const int wg = tid >> 7, warp = (tid >> 5) & 3, lane = tid & 31, quad = lane & 3;
    const int r_lo = row0 + wg * 64 + warp * 16 + (lane >> 2);       // this thread's rows: r_lo and r_lo + 8
    RowState st{-INFINITY, -INFINITY, 0.f, 0.f, pos0 + r_lo / group, pos0 + (r_lo + 8) / group};
    auto diagonal = [&](int tile) { return tile * BN + BN - 1 > pos0 + t_first; };

    float o[64];
#pragma unroll
    for (int i = 0; i < 64; i++) o[i] = 0.f;
    float s[BN / 2];
    unsigned p[BN / 4];
    float alpha0, alpha1;

    for (int j = 0; j < n_tiles; j++)
    {
        int stage = j & 1;
        if (FP8)
        {
            // Tile j has landed (tile j+1 may still be in flight); once converted, its staging area takes tile j+2.
            cp_async_wait<1>();
            __syncthreads();
            convert(j & 1);
            fence_proxy_async();
            __syncthreads();
            if (j + 2 < n_tiles) load_raw(j & 1, j + 2);
            else cp_async_commit();
            stage = 0;
        }
        else
        {
#if WG_ONE_BARRIER
            // One barrier per tile: past it, every thread's copies of tile j have landed and every warpgroup is done
            // with tile j-1, so its stage takes tile j+1 now (no second barrier at the end of the tile).
            cp_async_wait<0>();
            fence_proxy_async();
            __syncthreads();
            if (j + 1 < n_tiles) load_kv((j + 1) & 1, j + 1);
#else
            if (j + 1 < n_tiles)
            {
                load_kv((j + 1) & 1, j + 1);
                cp_async_wait<1>();
            }
            else cp_async_wait<0>();
            fence_proxy_async();
            __syncthreads();
#endif
        }
        wgmma_fence();
        issue_qk<BN, BM>(s, sQ, sKs + stage * KV_BYTES, wg);
        wgmma_commit();
        wgmma_wait<0>();
        pin_registers<BN / 2>(s);
        const bool rescale = softmax_tile<BN>(s, p, st, j * BN, diagonal(j), quad, scale_log2, alpha0, alpha1,
            FP8 ? conv_scales : nullptr, FP8 ? conv_scales + BN : nullptr);
        pin_registers<64>(o);
        if (rescale) rescale_o(o, alpha0, alpha1);
        wgmma_fence();
        issue_pv<BN>(o, p, sVs + stage * KV_BYTES);
        wgmma_commit();
        wgmma_wait<0>();
        pin_registers<64>(o);
        if (FP8 || !WG_ONE_BARRIER) __syncthreads();  // every warpgroup is done with this stage before it refills
    }

    store_o(o, st, r_lo, rows_total, group, kvh, sq.out, sq.ldo, quad);
}
// ---- Warp-specialised entry (contiguous bf16 caches): FlashAttention-3's structure ----
// CTA = 3 warpgroups, one CTA per SM: WG0 produces (one thread issues TMA loads of K and V tiles into WS_STAGES-deep
// rings, full / empty mbarriers per stage), WG1 and WG2 consume, 64 packed query rows each (BM = 128). Against
// flash_wgmma above: no cp.async issue slots in the consumers and no CTA-wide barrier per tile (each warpgroup waits
// only for its own data), and each consumer overlaps its own softmax with its own MMAs (intra-warpgroup pipelining):
//   S(j) = Q·K(j)ᵀ and O += P(j-1)·V(j-1) are issued together; once S(j) is done (wait_group 1) the softmax of tile j
//   runs while P(j-1)·V(j-1) still occupies the tensor cores; O is rescaled after that product completes.
// P(j) is written while the tensor cores read P(j-1) from registers, so P lives in two register sets, swapped by
// unrolling the key loop by two; every wgmma is issued unconditionally inside the loop body (the first and last tiles
// are peeled), so ptxas can see which group each wait retires and does not serialise them (C7514, NOTES.md).
// K / V tiles come from 4-D tensor maps over the caches: (head_dim, kv_heads, positions, batch), box (64, 1, BN, 1),
// 128-byte swizzle, so one box is one 64-dim panel in exactly the layout the descriptors read; the positions extent is
// the step's cache length, so keys past it arrive as zeros (their scores are masked; zero V keeps 0 * V finite).
#ifndef WS_BN
#define WS_BN 128
#endif
#ifndef WS_STAGES
#define WS_STAGES 2
#endif

template <int BN>
struct WsShape
{
    static constexpr int BM = 128, Q_BYTES = 2 * BM * PANEL_ROW, KV_BYTES = 2 * BN * PANEL_ROW;
    static constexpr int SMEM = Q_BYTES + 2 * WS_STAGES * KV_BYTES + 4 * WS_STAGES * 8 + 1024;
};

// Work item order. Persistent (WS_PERSISTENT, default): gridDim.x CTAs (one per SM) walk the (row tile, pair) items
// heaviest first (the last row tiles see the most keys), CTA c taking item c of the first gridDim.x, item 2G-1-c of the
// next (a zigzag, so that every CTA's sum of causal lengths comes out about even), and so on; the producer then loads
// the next item's first K/V tiles while the consumers finish the current one, and no CTA pays its start-up and the
// barrier set-up per item. Otherwise one item per CTA, grid (row tiles, pairs), heavy_first.
#ifndef WS_PERSISTENT
#define WS_PERSISTENT 1
#endif
// Q rows staged per thread with all their loads in flight at once (a consumer thread stages 4 row-chunks of 64 rows):
// the staging is the serial start of every item, before its first MMA.
#ifndef WS_Q_UNROLL
#define WS_Q_UNROLL 4
#endif
// FlashAttention-3's inter-warpgroup ping-pong: the two consumer warpgroups take turns issuing their MMAs (named
// barriers WS_SCHED_BAR + 0 / + 1), so one warpgroup's softmax runs while the other's MMAs occupy the tensor cores
// instead of both softmaxes falling into the same gap.
#ifndef WS_PINGPONG
#define WS_PINGPONG 1
#endif
constexpr int WS_SCHED_BAR = 3;                     // ids 1 and 2: each consumer warpgroup's own barrier
constexpr int WS_ZERO_BAR = 5;                      // both consumer warpgroups (paged: stale V rows zeroed)
__device__ __forceinline__ bool ws_item(int r, int m_tiles, int pairs, int& tile_m, int& pair)
{
#if WS_PERSISTENT
    const int G = gridDim.x, c = blockIdx.x;
    const int pos = r * G + ((r & 1) ? G - 1 - c : c);
    if (pos >= m_tiles * pairs) return false;
    tile_m = m_tiles - 1 - pos / pairs;
    pair = pos % pairs;
    return true;
#else
    if (r > 0) return false;
    heavy_first(tile_m, pair);
    return true;
#endif
}

// Arguments of the warp-specialised entries. Contiguous: batch sequences at the same positions (T rows at pos0; q, out
// per sequence at q_bstride / o_bstride). Paged: batch = sequences, T = the longest one's rows, and sequence s's rows,
// positions and blocks from cu_q / ctx_lens / block_tables, as the two-CTA paged entry takes them.
struct WsArgs
{
    const float* q;
    long long q_bstride;
    int ldq;
    bf16_t* out;
    long long o_bstride;
    int ldo, batch, T, heads, kv_heads, pos0;
    float scale_log2;
    const float* rope;
    const int* cu_q;
    const int* ctx_lens;
    const int* block_tables;
    int max_blocks, block_shift, num_blocks;
    const bf16_t* qb;          // contiguous entry: bf16 rotated queries instead of q (WgSeq::qb)
};

// One work item's sequence: its KV head, rows, positions, queries, outputs and (paged) block table.
struct WsView
{
    int seq, kvh, T, pos0, kv_len;
    const float* q;
    const bf16_t* qb;
    bf16_t* out;
    const int* table;
    // Key tiles of the row tile at packed row row0: keys 0 .. pos0 + its last row's token.
    template <int BN, int BM> __device__ __forceinline__ int tiles(int row0, int group) const
    {
        return (pos0 + min(T - 1, (row0 + BM - 1) / group) + BN) / BN;
    }
};

template <bool PAGED>
__device__ __forceinline__ WsView ws_view(const WsArgs& A, int pair, int group)
{
    WsView w;
    w.seq = pair / A.kv_heads;
    w.kvh = pair % A.kv_heads;
    if (PAGED)
    {
        const int q0 = A.cu_q[w.seq];
        w.T = A.cu_q[w.seq + 1] - q0;
        w.kv_len = A.ctx_lens[w.seq];
        w.pos0 = w.kv_len - w.T;
        w.q = A.q + (long long)q0 * A.ldq;
        w.qb = nullptr;
        w.out = A.out + (long long)q0 * A.ldo;
        w.table = A.block_tables + (long long)w.seq * A.max_blocks;
    }
    else
    {
        w.T = A.T;
        w.pos0 = A.pos0;
        w.kv_len = A.pos0 + A.T;
        w.q = A.q + w.seq * A.q_bstride;
        w.qb = A.qb != nullptr ? A.qb + w.seq * A.q_bstride : nullptr;
        w.out = A.out + w.seq * A.o_bstride;
        w.table = nullptr;
    }
    return w;
}

// One BN-key tile of K or V (keys n0 ..) into a stage: two 64-dim panels. Contiguous: one box per panel from the 4-D map
// (head_dim, kv_heads, positions, batch). Paged: the map is (head_dim, kv_heads, block_size, num_blocks) with boxes of
// min(BN, block size) keys, each from its block through the table; boxes wholly past the sequence's length ask for
// block num_blocks, which the TMA zero-fills without reading the table or the pool there.
template <int BN, bool PAGED>
__device__ __forceinline__ void ws_load_tile(const WsArgs& A, const WsView& w, const TensorMap* map, unsigned dst, int n0, unsigned bar)
{
    // Run by the producer's whole warp (lane 0 issues): the paged path reads the tile's table entries one per lane, all
    // at once, instead of one dependent load per box between the copies (each TMA's asm orders the next load after it).
    const int lane = threadIdx.x & 31;
    if (!PAGED)
    {
        if (lane == 0)
        {
            tma_load_4d(dst, map, 0, w.kvh, n0, w.seq, bar);
            tma_load_4d(dst + BN * PANEL_ROW, map, 64, w.kvh, n0, w.seq, bar);
        }
        return;
    }
    const int bs = 1 << A.block_shift, kpb = bs < BN ? bs : BN, boxes = BN / kpb;   // boxes <= 16: block size >= 8
    int mine = A.num_blocks;
    if (lane < boxes && n0 + lane * kpb < w.kv_len) mine = __ldg(w.table + ((n0 + lane * kpb) >> A.block_shift));
    for (int k = 0; k < boxes; k++)
    {
        const int blk = __shfl_sync(0xffffffffu, mine, k), off = (n0 + k * kpb) & (bs - 1);
        if (lane == 0)
        {
            tma_load_4d(dst + k * kpb * PANEL_ROW, map, 0, w.kvh, off, blk, bar);
            tma_load_4d(dst + BN * PANEL_ROW + k * kpb * PANEL_ROW, map, 64, w.kvh, off, blk, bar);
        }
    }
}

template <int BN, bool PAGED>
__device__ __forceinline__ void flash_wgmma_ws(const WsArgs& A, const TensorMap* map_k, const TensorMap* map_v)
{
    const int heads = A.heads, kv_heads = A.kv_heads, T = A.T;
    const float scale_log2 = A.scale_log2;
    typedef WsShape<BN> Sh;
    constexpr int BM = Sh::BM, KV_BYTES = Sh::KV_BYTES, S = WS_STAGES;
    extern __shared__ unsigned char smem_raw[];
    const unsigned raw = smem_addr(smem_raw), base = (raw + 1023u) & ~1023u;
    unsigned char* const sbase = smem_raw + (base - raw);
    const unsigned sQ = base, sK = base + Sh::Q_BYTES, sV = sK + S * KV_BYTES, bars = sV + S * KV_BYTES;
    // full / empty barriers of K stage s and V stage s
    auto k_full = [&](int st) { return bars + 8 * st; };
    auto k_empty = [&](int st) { return bars + 8 * (S + st); };
    auto v_full = [&](int st) { return bars + 8 * (2 * S + st); };
    auto v_empty = [&](int st) { return bars + 8 * (3 * S + st); };

    const int group = heads / kv_heads, pairs = A.batch * kv_heads;
    const int m_tiles = (T * group + BM - 1) / BM;       // T: the longest sequence's rows (paged) or every one's
    const int wg = threadIdx.x >> 7, t = threadIdx.x & 127;

    if (threadIdx.x == 0)
    {
        for (int st = 0; st < S; st++)
        {
            mbar_init(k_full(st), 1);                     // the producer's expect_tx
            mbar_init(v_full(st), 1);
            mbar_init(k_empty(st), 8);                    // each consumer warp
            mbar_init(v_empty(st), 8);
        }
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    __syncthreads();

    // K/V tiles are counted over all the CTA's items: tile g sits in stage g % S, in that stage's (g / S)-th use.
    if (wg == 0)
    {
        asm volatile("setmaxnreg.dec.sync.aligned.u32 24;");
        if (t < 32)                                       // one warp; its lane 0 arms the barriers and issues the copies
        {
            int g = 0, tile_m, pair;
            for (int r = 0; ws_item(r, m_tiles, pairs, tile_m, pair); r++)
            {
                const WsView w = ws_view<PAGED>(A, pair, group);
                const int row0 = tile_m * BM;
                if (row0 >= w.T * group) continue;        // paged: a shorter sequence has fewer row tiles
                const int n_tiles = w.tiles<BN, BM>(row0, group);
                for (int j = 0; j < n_tiles; j++, g++)
                {
                    const int st = g % S;
                    const unsigned ph = (unsigned)(g / S) & 1u;
                    mbar_wait(k_empty(st), ph ^ 1u);
                    if (t == 0) mbar_expect_tx(k_full(st), KV_BYTES);
                    ws_load_tile<BN, PAGED>(A, w, map_k, sK + st * KV_BYTES, j * BN, k_full(st));
                    mbar_wait(v_empty(st), ph ^ 1u);
                    if (t == 0) mbar_expect_tx(v_full(st), KV_BYTES);
                    ws_load_tile<BN, PAGED>(A, w, map_v, sV + st * KV_BYTES, j * BN, v_full(st));
                }
            }
        }
        return;
    }
    asm volatile("setmaxnreg.inc.sync.aligned.u32 240;");
    const int cw = wg - 1, warp = t >> 5, lane = t & 31, quad = lane & 3;
    // Ping-pong turns: each warpgroup issues the same number of MMA batches per item (one per key tile and one more),
    // so the turns alternate through every item; warpgroup 1 hands the first turn to warpgroup 0.
    auto turn_wait = [&]() { if (WS_PINGPONG) named_bar_sync(WS_SCHED_BAR + cw, 256); };
    auto turn_pass = [&]() { if (WS_PINGPONG) named_bar_arrive(WS_SCHED_BAR + (cw ^ 1), 256); };
    if (WS_PINGPONG && cw == 1) named_bar_arrive(WS_SCHED_BAR, 256);
    int g0 = 0, tile_m, pair;                             // g0: the CTA's K/V tiles before this item
    for (int r = 0; ws_item(r, m_tiles, pairs, tile_m, pair); r++)
    {
        const WsView w = ws_view<PAGED>(A, pair, group);
        const int kvh = w.kvh, row0 = tile_m * BM, rows_total = w.T * group, pos0 = w.pos0;
        if (row0 >= rows_total) continue;                 // the producer skips the same items
        const int n_tiles = w.tiles<BN, BM>(row0, group), t_first = row0 / group;
        const WgSeq sq{w.q, A.ldq, w.out, A.ldo, w.T, pos0, nullptr, nullptr, nullptr, 0, nullptr, nullptr, nullptr, nullptr, A.rope, w.qb};
        // This warpgroup's 64 rows of Q (it reads only its own rows of the panels, and its previous item's MMAs are done).
        stage_q<BM, WS_Q_UNROLL>(sbase, sq, row0, cw * 64, 64, t, 128, rows_total, group, kvh);
        fence_proxy_async();
        warpgroup_sync(1 + cw);

        const int r_lo = row0 + cw * 64 + warp * 16 + (lane >> 2);       // this thread's rows: r_lo and r_lo + 8
        RowState rs{-INFINITY, -INFINITY, 0.f, 0.f, pos0 + r_lo / group, pos0 + (r_lo + 8) / group};
        auto diagonal = [&](int tile) { return tile * BN + BN - 1 > pos0 + t_first; };

        float o[64];
#pragma unroll
        for (int i = 0; i < 64; i++) o[i] = 0.f;
        float s[BN / 2];
#pragma unroll
        for (int i = 0; i < BN / 2; i++) s[i] = 0.f;
        unsigned pa[BN / 4], pb[BN / 4];
        float alpha0, alpha1;
        auto stage_of = [&](int j) { return (g0 + j) % S; };
        auto parity_of = [&](int j) { return (unsigned)((g0 + j) / S) & 1u; };

        // Tile 0: S, softmax -> P(0) (O is still zero: no rescale).
        mbar_wait(k_full(stage_of(0)), parity_of(0));
        turn_wait();
        wgmma_fence();
        issue_qk<BN, BM>(s, sQ, sK + stage_of(0) * KV_BYTES, cw);
        wgmma_commit();
        turn_pass();
        wgmma_wait<0>();
        pin_registers<BN / 2>(s);
        if (lane == 0) mbar_arrive(k_empty(stage_of(0)));
        softmax_tile<BN>(s, pa, rs, 0, diagonal(0), quad, scale_log2, alpha0, alpha1, nullptr, nullptr);

        // Tile j >= 1: S(j) and P(j-1)·V(j-1) in flight together, softmax(j) under the latter.
        auto step = [&](int j, const unsigned* p_prev, unsigned* p_cur) {
            const int sk = stage_of(j), sv = stage_of(j - 1);
            mbar_wait(k_full(sk), parity_of(j));
            mbar_wait(v_full(sv), parity_of(j - 1));
            turn_wait();
            wgmma_fence();
            issue_qk<BN, BM>(s, sQ, sK + sk * KV_BYTES, cw);
            wgmma_commit();
            issue_pv<BN>(o, p_prev, sV + sv * KV_BYTES);
            wgmma_commit();
            turn_pass();
            wgmma_wait<1>();                              // S(j) is done; P(j-1)·V(j-1) may still run
            pin_registers<BN / 2>(s);
            if (lane == 0) mbar_arrive(k_empty(sk));
            const bool rescale = softmax_tile<BN>(s, p_cur, rs, j * BN, diagonal(j), quad, scale_log2, alpha0, alpha1, nullptr, nullptr);
            wgmma_wait<0>();
            pin_registers<64>(o);
            if (lane == 0) mbar_arrive(v_empty(sv));
            if (rescale) rescale_o(o, alpha0, alpha1);
        };
        // The last tile's P·V.
        auto last_pv = [&](const unsigned* p_last) {
            const int sv = stage_of(n_tiles - 1);
            mbar_wait(v_full(sv), parity_of(n_tiles - 1));
            if (PAGED)
            {
                // Keys past the sequence's length in its last tile: whole boxes came zero-filled, but the rest of
                // its last block holds whatever an earlier owner of the block left there, and P = 0 times a NaN or
                // inf of V is NaN. The two warpgroups zero those rows of the stage together before either reads it.
                const int valid = w.kv_len - (n_tiles - 1) * BN;
                if (valid < BN)
                {
                    for (int i = valid * 16 + (cw * 128 + t); i < BN * 16; i += 256)
                    {
                        const int key = i >> 4, cc = i & 15;
                        *reinterpret_cast<uint4*>(sbase + (sV - base) + sv * KV_BYTES + (cc >> 3) * (BN * PANEL_ROW) + sw128(key, cc & 7)) =
                            make_uint4(0u, 0u, 0u, 0u);
                    }
                    fence_proxy_async();
                    named_bar_sync(WS_ZERO_BAR, 256);
                }
            }
            turn_wait();
            wgmma_fence();
            issue_pv<BN>(o, p_last, sV + sv * KV_BYTES);
            wgmma_commit();
            turn_pass();
            wgmma_wait<0>();
            pin_registers<64>(o);
            if (lane == 0) mbar_arrive(v_empty(sv));
        };
        int j = 1;
        for (; j + 1 < n_tiles; j += 2)
        {
            step(j, pa, pb);
            step(j + 1, pb, pa);
        }
        if (j < n_tiles)
        {
            step(j, pa, pb);
            last_pv(pb);
        }
        else last_pv(pa);
        g0 += n_tiles;

        store_o(o, rs, r_lo, rows_total, group, kvh, sq.out, sq.ldo, quad);
    }
    // Warpgroup 1's last turn (and its first hand-over, when the CTA had no item) is still pending on warpgroup 0's
    // barrier: take it, so that no named barrier is left half-arrived at exit.
    if (WS_PINGPONG && cw == 0) named_bar_sync(WS_SCHED_BAR, 256);
}
} // namespace

// wgmma exists only on sm_90a: elsewhere the file still compiles (the launcher never starts these entries there).
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define FA_WGMMA_BODY(...) __VA_ARGS__
#else
#define FA_WGMMA_BODY(...) __trap()
#endif

// Contiguous caches: flash_attn_wgmma_d128_n{BN}_g{NWG}. Grid (row tiles of BM = 64 * NWG packed rows,
// batch * kv_heads), 128 * NWG threads, dynamic shared memory (BM + 4 * BN) * 256 bytes (Q, two stages of K and V)
// + 1024 for the alignment. Sequence b's queries at q + b * q_bstride (fp32, row stride ldq, 16-byte aligned rows),
// caches at k / v + b * kv_bstride ((capacity, kv_heads, 128) bf16), output rows at out + b * o_bstride (row stride
// heads * 128, bf16). A query at position pos0 + t sees keys 0 .. pos0 + t. rope (may be null): q is not rotated yet,
// row t's [cos | sin] of its 64 pairs are at rope + t * 128 (every sequence of the batch at the same positions).
#define FA_WGMMA_ENTRY(BN, NWG, CTAS)                                                                                    \
extern "C" __global__ void __launch_bounds__(128 * NWG, CTAS) flash_attn_wgmma_d128_n##BN##_g##NWG(const float* q,     \
    long long q_bstride, int ldq, const bf16_t* k, const bf16_t* v, long long kv_bstride, bf16_t* out,                   \
    long long o_bstride, int T, int heads, int kv_heads, int pos0, float scale_log2, const float* rope)                  \
{                                                                                                                        \
    int tile_m, pair;                                                                                                    \
    heavy_first(tile_m, pair);                                                                                           \
    const int b = pair / kv_heads, kvh = pair % kv_heads;                                                                \
    const WgSeq sq{q + b * q_bstride, ldq, out + b * o_bstride, heads * HD, T, pos0, k + b * kv_bstride + kvh * HD,     \
        v + b * kv_bstride + kvh * HD, nullptr, 0, nullptr, nullptr, nullptr, nullptr, rope};                            \
    FA_WGMMA_BODY(flash_wgmma<BN, NWG, false>(sq, kvh, tile_m, heads, kv_heads, scale_log2));                            \
}

// Paged caches, a varlen batch (attention_flash.cu's flash_attn_paged_* layout and arguments, without split-K):
// flash_attn_paged_wgmma_d128_n{BN}_g{NWG}. Grid (row tiles of the longest sequence, sequences * kv_heads); sequence
// s owns rows cu_q[s] .. cu_q[s+1]-1 (q row stride ldq, output row stride ldo) at the last positions of its
// ctx_lens[s]; position p sits in block block_tables[s * max_blocks + p / block_size], slot p % block_size of the pool
// (num_blocks, block_size, kv_heads, 128). Sequences with no rows do nothing.
#define FA_WGMMA_PAGED_ENTRY(BN, NWG, CTAS)                                                                              \
extern "C" __global__ void __launch_bounds__(128 * NWG, CTAS) flash_attn_paged_wgmma_d128_n##BN##_g##NWG(               \
    const float* q, int ldq, const bf16_t* k_cache, const bf16_t* v_cache, const int* block_tables, int max_blocks,      \
    int block_shift, const int* cu_q, const int* ctx_lens, bf16_t* out, int ldo, int heads, int kv_heads,               \
    float scale_log2)                                                                                                    \
{                                                                                                                        \
    int tile_m, pair;                                                                                                    \
    heavy_first(tile_m, pair);                                                                                           \
    const int s = pair / kv_heads, kvh = pair % kv_heads, q0 = cu_q[s], T = cu_q[s + 1] - q0;                            \
    if (T <= 0) return;                                                                                                  \
    const WgSeq sq{q + (long long)q0 * ldq, ldq, out + (long long)q0 * ldo, ldo, T, ctx_lens[s] - T, k_cache + kvh * HD, \
        v_cache + kvh * HD, block_tables + (long long)s * max_blocks, block_shift, nullptr, nullptr, nullptr, nullptr,    \
        nullptr};                                                                                                        \
    FA_WGMMA_BODY(flash_wgmma<BN, NWG, false>(sq, kvh, tile_m, heads, kv_heads, scale_log2));                            \
}

// The same over an fp8 e4m3 pool (attention_flash.cu's flash_attn_paged_fp8_* arguments): k_cache / v_cache bytes in
// the bf16 pool's layout, k_scale / v_scale fp32 (num_blocks * block_size, kv_heads).
#define FA_WGMMA_PAGED_FP8_ENTRY(BN, NWG, CTAS)                                                                          \
extern "C" __global__ void __launch_bounds__(128 * NWG, CTAS) flash_attn_paged_fp8_wgmma_d128_n##BN##_g##NWG(           \
    const float* q, int ldq, const unsigned char* k_cache, const unsigned char* v_cache, const float* k_scale,          \
    const float* v_scale, const int* block_tables, int max_blocks, int block_shift, const int* cu_q, const int* ctx_lens, \
    bf16_t* out, int ldo, int heads, int kv_heads, float scale_log2)                                                     \
{                                                                                                                        \
    int tile_m, pair;                                                                                                    \
    heavy_first(tile_m, pair);                                                                                           \
    const int s = pair / kv_heads, kvh = pair % kv_heads, q0 = cu_q[s], T = cu_q[s + 1] - q0;                            \
    if (T <= 0) return;                                                                                                  \
    const WgSeq sq{q + (long long)q0 * ldq, ldq, out + (long long)q0 * ldo, ldo, T, ctx_lens[s] - T, nullptr, nullptr,  \
        block_tables + (long long)s * max_blocks, block_shift, k_cache + kvh * HD, v_cache + kvh * HD, k_scale + kvh,     \
        v_scale + kvh, nullptr};                                                                                         \
    FA_WGMMA_BODY(flash_wgmma<BN, NWG, true>(sq, kvh, tile_m, heads, kv_heads, scale_log2));                             \
}

// 2 warpgroups x 64 rows, 64-key tiles, 128 registers so that two CTAs (99 KB of shared memory each) share an SM:
// the fastest of the shapes measured (H100, same process: 434 TFLOP/s at 8K causal vs 371 for 3 warpgroups and
// 362 for 128-key tiles at one CTA per SM).
FA_WGMMA_ENTRY(64, 2, 2)
FA_WGMMA_PAGED_ENTRY(64, 2, 2)
FA_WGMMA_PAGED_FP8_ENTRY(64, 2, 2)

// Contiguous caches, warp-specialised: flash_attn_wgmma_ws_d128_n{BN}. 384 threads, dynamic shared memory
// WsShape<BN>::SMEM; grid (CTAs, 1) persistent (WS_PERSISTENT: at most one CTA per SM and item) or (row tiles of 128
// packed rows, batch * kv_heads). The arguments of flash_attn_wgmma_* above plus the batch, with the caches as 4-D tensor
// maps (AttentionKernel.Hopper.cs encodes them): dims (128, kv_heads, pos0 + T, batch), strides (256 B,
// kv_heads * 256 B, kv_bstride * 2 B), box (64, 1, BN, 1), bf16, 128-byte swizzle. qb (may be null): the queries as
// rotated bf16 (gemm_qkv.cu's output, same strides in elements) instead of q and rope.
#define FA_WGMMA_WS_ENTRY(BN)                                                                                            \
extern "C" __global__ void __launch_bounds__(384, 1) flash_attn_wgmma_ws_d128_n##BN(const float* q, long long q_bstride, \
    int ldq, const __grid_constant__ TensorMap map_k, const __grid_constant__ TensorMap map_v, bf16_t* out,               \
    long long o_bstride, int batch, int T, int heads, int kv_heads, int pos0, float scale_log2, const float* rope,       \
    const bf16_t* qb)                                                                                                    \
{                                                                                                                        \
    const WsArgs a{q, q_bstride, ldq, out, o_bstride, heads * HD, batch, T, heads, kv_heads, pos0, scale_log2, rope,     \
        nullptr, nullptr, nullptr, 0, 0, 0, qb};                                                                         \
    FA_WGMMA_BODY((flash_wgmma_ws<BN, false>(a, &map_k, &map_v)));                                                       \
}

// Paged bf16 pool, warp-specialised: flash_attn_paged_wgmma_ws_d128_n{BN}. The two-CTA paged entry's arguments (the
// pool as 4-D tensor maps (128, kv_heads, block_size, num_blocks), box (64, 1, min(BN, block_size), 1)), plus the
// longest sequence's rows and the pool's block count; persistent grid (CTAs, 1). Block size: a power of two >= 8 (a
// box then starts on a 1024-byte boundary of the swizzle).
#define FA_WGMMA_WS_PAGED_ENTRY(BN)                                                                                      \
extern "C" __global__ void __launch_bounds__(384, 1) flash_attn_paged_wgmma_ws_d128_n##BN(const float* q, int ldq,      \
    const __grid_constant__ TensorMap map_k, const __grid_constant__ TensorMap map_v, const int* block_tables,           \
    int max_blocks, int block_shift, int num_blocks, const int* cu_q, const int* ctx_lens, int sequences, int max_q,     \
    bf16_t* out, int ldo, int heads, int kv_heads, float scale_log2)                                                     \
{                                                                                                                        \
    const WsArgs a{q, 0, ldq, out, 0, ldo, sequences, max_q, heads, kv_heads, 0, scale_log2, nullptr, cu_q, ctx_lens,    \
        block_tables, max_blocks, block_shift, num_blocks};                                                              \
    FA_WGMMA_BODY((flash_wgmma_ws<BN, true>(a, &map_k, &map_v)));                                                        \
}
// One expansion level more, so that WS_BN's value (not its name) is pasted into the entry name.
#define FA_WGMMA_WS_ENTRY_OF(BN) FA_WGMMA_WS_ENTRY(BN) FA_WGMMA_WS_PAGED_ENTRY(BN)
FA_WGMMA_WS_ENTRY_OF(WS_BN)
