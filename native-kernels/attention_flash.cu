// FlashAttention-2-style causal GQA attention on bf16 tensor cores (mma.sync m16n8k16, sm_80+), for head_dim 64
// and 128. One core serves prefill (a step of T queries at positions pos0..pos0+T-1, T large), chunked prefill
// (pos0 > 0) and decode (T = 1, split-K over the cache = flash-decoding), over either a contiguous cache per
// sequence or a paged cache (block tables) for a varlen batch of sequences in one launch.
//
// GQA packing: the `group` query heads sharing one KV head are packed into the M dimension, packed row
// r = t * group + g (token t, head kvh * group + g), so a CTA's K/V tile is read once for all of them and decode
// (T = 1) still fills 4..8 rows of a 16-row MMA instead of 1.
//   q   fp32 rotated queries (converted to bf16 once per CTA), row t of a sequence at position pos0 + t.
//   K/V bf16, or (paged only, flash_attn_paged_fp8_*) fp8 e4m3 with one fp32 scale per (slot, KV head): the fp8
//       tile is copied (cp.async) into a staging area of shared memory, then converted (exactly, unscaled) into the
//       same bf16 tile the MMAs read; each key's K scale multiplies its column of S and its V scale its column of P. Contiguous: (batch, capacity, kv_heads, D), sequence b at k + b * kv_bstride. Paged: the pool
//       (num_blocks, block_size, kv_heads, D); position p of sequence s sits in block table[s][p / block_size],
//       slot p % block_size (the layout of the serving engine's CpuPagedKvCache; block_size a power of two, passed
//       as its log2). A query at position p sees 0..p.
//   out bf16 (token, heads * D) rows, or, with splits > 1, partial results (normalised O and log2-sum-exp per
//       split, row (split, token, head)) that a combine kernel merges.
// CTA: NW warps, MF m-fragments (16 rows each) per warp, BM = 16 * MF * NW packed rows, BN keys per tile. K/V
// tiles double-buffered in shared memory with cp.async (rows padded by 16 bytes so ldmatrix is conflict-free).
// MF = 1 keeps the warp's Q fragments in registers; MF = 2 (32 rows per warp, FA2's layout) keeps Q in shared
// memory and re-reads it, so each K/V fragment loaded by ldmatrix feeds two MMAs (half the shared-memory traffic
// per FLOP, which is what capped MF = 1). Online softmax in fp32 in the exp2 domain; P is re-packed from the S
// accumulators into A fragments without touching shared memory.
// Grid: x = row tiles, y = sequence * kv_heads, z = splits; fa_block_order maps a CTA to (row tile, pair) so the
// heaviest causal tiles of all pairs start first.
// Decode as one CUDA graph (contiguous entries): the position can come from device memory (pos_dev, read after
// griddepcontrol.wait, so a graph replays any step), keys_per_split <= 0 splits the keys evenly over grid.z on the
// device, and with `counters` the split combine is fused: every CTA publishes its partials, and the last CTA of
// each (sequence, KV head, row tile) to arrive merges them (no combine launch); it resets its counter for the
// next launch. The paged entries take `counters` too (the serving engine's decode steps). Programmatic launch is
// allowed for every entry: nothing is read before pdl_wait().
#include "swiftkv_common.cuh"
#include "attention_common.cuh"

// Build switches (benchmarks compile the file again with other values and time both in one process):
//   FA_ORDER      1: heaviest causal row tiles first across every (sequence, KV head) pair; 0: per pair (each pair's
//                 tiles heavy to light, pair after pair, so the last pairs' heavy tiles started late: a tail).
//   FA_LOAD_HOIST 1: a thread computes every K/V chunk address of a tile (block-table reads included) before it
//                 issues the copies, so the table reads are in flight together; 0: one read, one copy, in turn (the
//                 copy's asm is a compiler memory barrier, so the next read could not move above it).
//   FA_LAZY_RESCALE 1: a warp keeps its softmax max while new maxima stay within 2^8 of it and skips O's rescale
//                 (attention_hopper.cu's WG_LAZY_RESCALE); 0: rescale every tile.
// (Measured on H100, same process: FA_ORDER 2K 144 -> 195 TFLOP/s with 32 rows/warp and 32-key tiles, 8K 273 -> 287;
// FA_LOAD_HOIST fixed the 16-rows-per-warp regression, 8K 173 -> 242. Packing P late, as 2e05f9d did, and a
// non-volatile mma asm changed nothing measurable and were dropped: src/SwiftKV.Cuda/NOTES.md.)
#ifndef FA_ORDER
#define FA_ORDER 1
#endif
#ifndef FA_LOAD_HOIST
#define FA_LOAD_HOIST 1
#endif
#ifndef FA_LAZY_RESCALE
#define FA_LAZY_RESCALE 1
#endif

__device__ __forceinline__ void ldsm_x4(unsigned addr, unsigned& r0, unsigned& r1, unsigned& r2, unsigned& r3)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
        : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3) : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_t(unsigned addr, unsigned& r0, unsigned& r1, unsigned& r2, unsigned& r3)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
        : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3) : "r"(addr));
}

// One sequence as a CTA sees it.
struct FaSeq
{
    const float* q;           // row t at q + t * ldq
    int ldq;
    bf16_t* out;              // row t at out + t * ldo (splits == 1)
    int ldo;
    long long part_row0;      // partial row of (split, t): split * part_split_rows + part_row0 + t
    long long part_split_rows;
    int T;                    // query rows of this step
    int pos0;                 // position of row 0 (= cached tokens before this step)
    const bf16_t* k;          // this KV head's column (+ kvh * D), and for contiguous caches this sequence's cache
    const bf16_t* v;
    const int* table;         // paged: this sequence's block table; null for contiguous
    int block_shift;          // paged: log2(block_size)
    const unsigned char* k8;  // paged fp8: this KV head's column of the e4m3 pool (k/v unused)
    const unsigned char* v8;
    const float* k_scale;     // paged fp8: scale of (slot, this KV head) at [slot * kv_heads]
    const float* v_scale;
};

template <int D, int NW, int MF, int BN>
struct FaShape
{
    static constexpr int BM = 16 * MF * NW, LD = D + 8, TILE = BN * LD;
    // [K0][V0][K1][V1] then, for MF > 1, Q (kept for the whole loop); MF = 1 stages Q in [K1][V1] first.
    static constexpr int SMEM_ELEMS = 4 * TILE + (MF > 1 ? BM * LD : 0);
    // fp8 paged: after SMEM_ELEMS, two staging areas of [K bytes BN x D][V bytes][K scales BN][V scales BN], then the
    // scales of the two converted tiles ([K scales BN][V scales BN] each), which the compute reads after the staging
    // area has been refilled.
    static constexpr int RAW_BYTES = 2 * BN * D + 8 * BN;
    static constexpr int FP8_EXTRA_BYTES = 2 * RAW_BYTES + 2 * 8 * BN;
};

template <int D, int NW, int MF, int BN, bool PAGED, bool FP8 = false>
__device__ __forceinline__ void flash_core(const FaSeq& sq, int heads, int kv_heads, int kvh, int tile_m, int split,
    int splits, int keys_per_split, float scale_log2, float* __restrict__ part_o, float* __restrict__ part_lse)
{
    typedef FaShape<D, NW, MF, BN> S;
    constexpr int BM = S::BM, LD = S::LD, TILE = S::TILE;
    constexpr int KD = D / 16, NB = BN / 8, DB = D / 8, CH = D / 8;
    static_assert(MF > 1 || BM <= 2 * BN, "MF = 1 stages Q in stage 1");
    static_assert(BN % 16 == 0, "key tile is a whole number of k-steps");
    extern __shared__ __align__(16) bf16_t smem[];

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int group = heads / kv_heads, rows_total = sq.T * group;
    const int row0 = tile_m * BM;
    if (row0 >= rows_total) return;                          // varlen: a shorter sequence has fewer row tiles
    const int kv_dim = kv_heads * D;
    const int T = sq.T, pos0 = sq.pos0;

    const int t_last = min(T - 1, (row0 + BM - 1) / group);
    const int kend = pos0 + t_last + 1;                       // keys this CTA may need: 0 .. kend-1
    const int k_begin = split * keys_per_split;
    const int k_end = min(kend, k_begin + keys_per_split);
    const int ntiles = k_end > k_begin ? (k_end - k_begin + BN - 1) / BN : 0;

    // K/V tile loader: BN rows x D/8 chunks of 16 bytes each; rows at or past kend are zero-filled.
    constexpr int PER = BN * CH / (NW * 32);                  // 16-byte chunks per thread per K (or V) tile
    static_assert(PER * NW * 32 == BN * CH, "a tile is a whole number of chunks per thread");
    auto load_tile = [&](int stage, int n0) {
        bf16_t* ks = smem + stage * 2 * TILE;
        bf16_t* vs = ks + TILE;
        auto slot_of = [&](int kk) -> long long {
            if (PAGED) return ((long long)__ldg(sq.table + (kk >> sq.block_shift)) << sq.block_shift) + (kk & ((1 << sq.block_shift) - 1));
            return kk;
        };
#if FA_LOAD_HOIST
        long long off[PER];
        #pragma unroll
        for (int j = 0; j < PER; j++)
        {
            const int i = tid + j * NW * 32, r = i / CH, key = n0 + r;
            off[j] = slot_of(key < kend ? key : 0) * kv_dim + (i % CH) * 8;
        }
        #pragma unroll
        for (int j = 0; j < PER; j++)
        {
            const int i = tid + j * NW * 32, r = i / CH, c = (i % CH) * 8, ok = n0 + r < kend ? 16 : 0;
            cp_async16(smem_addr(ks + r * LD + c), sq.k + off[j], ok);
            cp_async16(smem_addr(vs + r * LD + c), sq.v + off[j], ok);
        }
#else
        #pragma unroll
        for (int i = tid; i < BN * CH; i += NW * 32)
        {
            int r = i / CH, c = (i % CH) * 8, key = n0 + r;
            int ok = key < kend ? 16 : 0;
            long long off = slot_of(key < kend ? key : 0) * kv_dim + c;
            cp_async16(smem_addr(ks + r * LD + c), sq.k + off, ok);
            cp_async16(smem_addr(vs + r * LD + c), sq.v + off, ok);
        }
#endif
    };

    // fp8: BN rows x D/16 chunks of 16 bytes into staging area `stage`, plus the BN keys' scales (threads < BN).
    constexpr int CH8 = D / 16, PER8 = BN * CH8 / (NW * 32);
    static_assert(PER8 * NW * 32 == BN * CH8 && BN <= NW * 32, "an fp8 tile is a whole number of chunks per thread");
    unsigned char* raw_base = reinterpret_cast<unsigned char*>(smem + S::SMEM_ELEMS);
    auto tile_scales = [&](int stage) { return reinterpret_cast<float*>(raw_base + 2 * S::RAW_BYTES) + stage * 2 * BN; };
    auto load_tile8 = [&](int stage, int n0) {
        unsigned char* kr = raw_base + stage * S::RAW_BYTES;
        unsigned char* vr = kr + BN * D;
        float* ksc = reinterpret_cast<float*>(vr + BN * D);
        float* vsc = ksc + BN;
        auto slot_of = [&](int kk) -> long long {
            return ((long long)__ldg(sq.table + (kk >> sq.block_shift)) << sq.block_shift) + (kk & ((1 << sq.block_shift) - 1));
        };
        long long off[PER8];
        #pragma unroll
        for (int j = 0; j < PER8; j++)
        {
            const int i = tid + j * NW * 32, key = n0 + i / CH8;
            off[j] = slot_of(key < kend ? key : 0) * kv_dim + (i % CH8) * 16;
        }
        long long soff = 0;
        if (tid < BN) soff = slot_of(n0 + tid < kend ? n0 + tid : 0) * kv_heads;
        #pragma unroll
        for (int j = 0; j < PER8; j++)
        {
            const int i = tid + j * NW * 32, r = i / CH8, c = (i % CH8) * 16, ok = n0 + r < kend ? 16 : 0;
            cp_async16(smem_addr(kr + r * D + c), sq.k8 + off[j], ok);
            cp_async16(smem_addr(vr + r * D + c), sq.v8 + off[j], ok);
        }
        if (tid < BN)
        {
            const int ok = n0 + tid < kend ? 4 : 0;
            cp_async4(smem_addr(ksc + tid), sq.k_scale + soff, ok);
            cp_async4(smem_addr(vsc + tid), sq.v_scale + soff, ok);
        }
    };
    // fp8: staging area `stage` -> bf16 tile `stage`, unscaled (e4m3 values are exact in bf16); the K scales multiply
    // S's columns and the V scales P's columns below. Masked rows were zero-filled (scale 0): zeros.
    auto convert_tile = [&](int stage) {
        const unsigned char* kr = raw_base + stage * S::RAW_BYTES;
        bf16_t* ks = smem + stage * 2 * TILE;
        for (int i = tid; i < 2 * BN * CH8; i += NW * 32)
        {
            const int which = i / (BN * CH8), ii = i % (BN * CH8), r = ii / CH8, c = (ii % CH8) * 16;
            const uint4 w = *reinterpret_cast<const uint4*>(kr + which * BN * D + r * D + c);
            const unsigned words[4] = { w.x, w.y, w.z, w.w };
            unsigned o8[8];
            #pragma unroll
            for (int x = 0; x < 4; x++)
            {
                o8[2 * x] = e4m3x2_to_bf16x2(words[x], 0x1404u);
                o8[2 * x + 1] = e4m3x2_to_bf16x2(words[x], 0x3424u);
            }
            bf16_t* dst = ks + which * TILE + r * LD + c;
            *reinterpret_cast<uint4*>(dst) = make_uint4(o8[0], o8[1], o8[2], o8[3]);
            *reinterpret_cast<uint4*>(dst + 8) = make_uint4(o8[4], o8[5], o8[6], o8[7]);
        }
        const float* raw_sc = reinterpret_cast<const float*>(kr + 2 * BN * D);
        float* sc = tile_scales(stage);
        for (int i = tid; i < 2 * BN; i += NW * 32) sc[i] = raw_sc[i];
    };
    auto load = [&](int stage, int n0) {
        if constexpr (FP8) load_tile8(stage, n0);
        else load_tile(stage, n0);
    };

    if (ntiles > 0) load(0, k_begin);
    cp_async_commit();
    if constexpr (FP8)
    {
        // fp8 prefetches two tiles ahead: a staging area is free again once converted, early in its iteration.
        if (ntiles > 1) load(1, k_begin + BN);
        cp_async_commit();
    }

    // Q: fp32 global -> bf16 smem (MF = 1: stage 1, then A fragments in registers; MF > 1: its own region).
    bf16_t* qs = smem + (MF > 1 ? 4 : 2) * TILE;
    {
        const bool vec = ((sq.ldq & 3) == 0) && ((((unsigned long long)sq.q) & 15) == 0);
        for (int i = tid; i < BM * (D / 4); i += NW * 32)
        {
            int r = i / (D / 4), c = (i % (D / 4)) * 4, pr = row0 + r;
            float x0 = 0.f, x1 = 0.f, x2 = 0.f, x3 = 0.f;
            if (pr < rows_total)
            {
                int t = pr / group, h = kvh * group + pr % group;
                const float* src = sq.q + (long long)t * sq.ldq + h * D + c;
                if (vec) { float4 v4 = *reinterpret_cast<const float4*>(src); x0 = v4.x; x1 = v4.y; x2 = v4.z; x3 = v4.w; }
                else { x0 = src[0]; x1 = src[1]; x2 = src[2]; x3 = src[3]; }
            }
            unsigned* dst = reinterpret_cast<unsigned*>(qs + r * LD + c);
            dst[0] = pack_bf16(x0, x1);
            dst[1] = pack_bf16(x2, x3);
        }
    }
    __syncthreads();
    unsigned qf[MF == 1 ? KD : 1][4];
    if (MF == 1)
    {
        const bf16_t* qp = qs + (warp * 16 + (lane & 15)) * LD + (lane >> 4) * 8;
        #pragma unroll
        for (int kk = 0; kk < (MF == 1 ? KD : 1); kk++) ldsm_x4(smem_addr(qp + kk * 16), qf[kk][0], qf[kk][1], qf[kk][2], qf[kk][3]);
        __syncthreads();   // stage 1 is free for K/V now
    }
    const bf16_t* qwarp = qs + (warp * 16 * MF + (lane & 15)) * LD + (lane >> 4) * 8;

    const int g = lane >> 2, tig = lane & 3;
    const int wrow = row0 + warp * 16 * MF;
    const bool warp_active = wrow < rows_total;
    // Causal limit (last visible key) of this thread's rows; padding rows get the sequence's last row's limit.
    int lim[MF][2];
    #pragma unroll
    for (int mf = 0; mf < MF; mf++)
    {
        lim[mf][0] = pos0 + min(T - 1, (wrow + mf * 16 + g) / group);
        lim[mf][1] = pos0 + min(T - 1, (wrow + mf * 16 + g + 8) / group);
    }
    const int cta_min_lim = pos0 + row0 / group;

    float o[MF][DB][4];
    float m[MF][2], l[MF][2];
    #pragma unroll
    for (int mf = 0; mf < MF; mf++)
    {
        #pragma unroll
        for (int j = 0; j < DB; j++) o[mf][j][0] = o[mf][j][1] = o[mf][j][2] = o[mf][j][3] = 0.f;
        m[mf][0] = m[mf][1] = -INFINITY;
        l[mf][0] = l[mf][1] = 0.f;
    }

    for (int it = 0; it < ntiles; it++)
    {
        const int n0 = k_begin + it * BN;
        if constexpr (FP8)
        {
            // Tile it has landed (tile it+1 may still be in flight). bf16 tile it & 1 was last read by the compute
            // two tiles back, a barrier ago; once converted, staging area it & 1 takes tile it+2.
            cp_async_wait<1>();
            __syncthreads();
            convert_tile(it & 1);
            __syncthreads();
            if (it + 2 < ntiles) load(it & 1, n0 + 2 * BN);
            cp_async_commit();
        }
        else
        {
            if (it + 1 < ntiles) load((it + 1) & 1, n0 + BN);
            cp_async_commit();
            cp_async_wait<1>();
            __syncthreads();
        }

        if (warp_active)
        {
            const bf16_t* ks = smem + (it & 1) * 2 * TILE;
            const bf16_t* vs = ks + TILE;
            float s[MF][NB][4];
            #pragma unroll
            for (int mf = 0; mf < MF; mf++)
                #pragma unroll
                for (int j = 0; j < NB; j++) s[mf][j][0] = s[mf][j][1] = s[mf][j][2] = s[mf][j][3] = 0.f;
            // S = Q K^T: K rows are the B operand's columns (ldmatrix without transpose).
            const bf16_t* kp = ks + ((lane & 7) + ((lane >> 4) & 1) * 8) * LD + ((lane >> 3) & 1) * 8;
            #pragma unroll
            for (int kk = 0; kk < KD; kk++)
            {
                unsigned qa[MF][4];
                #pragma unroll
                for (int mf = 0; mf < MF; mf++)
                {
                    if (MF == 1)
                    {
                        qa[mf][0] = qf[MF == 1 ? kk : 0][0]; qa[mf][1] = qf[MF == 1 ? kk : 0][1];
                        qa[mf][2] = qf[MF == 1 ? kk : 0][2]; qa[mf][3] = qf[MF == 1 ? kk : 0][3];
                    }
                    else ldsm_x4(smem_addr(qwarp + mf * 16 * LD + kk * 16), qa[mf][0], qa[mf][1], qa[mf][2], qa[mf][3]);
                }
                #pragma unroll
                for (int jj = 0; jj < NB / 2; jj++)
                {
                    unsigned b0, b1, b2, b3;
                    ldsm_x4(smem_addr(kp + jj * 16 * LD + kk * 16), b0, b1, b2, b3);
                    #pragma unroll
                    for (int mf = 0; mf < MF; mf++)
                    {
                        mma_bf16(s[mf][2 * jj], qa[mf], b0, b1);
                        mma_bf16(s[mf][2 * jj + 1], qa[mf], b2, b3);
                    }
                }
            }
            if constexpr (FP8)
            {
                // S's column of key n = (Q . K8[n]) * k_scale[n]
                const float* ksc = tile_scales(it & 1);
                #pragma unroll
                for (int j = 0; j < NB; j++)
                {
                    const float2 sc = *reinterpret_cast<const float2*>(ksc + j * 8 + tig * 2);
                    #pragma unroll
                    for (int mf = 0; mf < MF; mf++)
                    {
                        s[mf][j][0] *= sc.x; s[mf][j][1] *= sc.y;
                        s[mf][j][2] *= sc.x; s[mf][j][3] *= sc.y;
                    }
                }
            }
            // Mask keys past each row's causal limit or this split's end (only tiles that reach them).
            if (n0 + BN - 1 > cta_min_lim || n0 + BN > k_end)
            {
                #pragma unroll
                for (int mf = 0; mf < MF; mf++)
                    #pragma unroll
                    for (int j = 0; j < NB; j++)
                        #pragma unroll
                        for (int e = 0; e < 2; e++)
                        {
                            int key = n0 + j * 8 + tig * 2 + e;
                            bool out_split = key >= k_end;
                            if (out_split || key > lim[mf][0]) s[mf][j][e] = -INFINITY;
                            if (out_split || key > lim[mf][1]) s[mf][j][2 + e] = -INFINITY;
                        }
            }
            unsigned pa[MF][NB / 2][4];   // P as bf16 A fragments, one per 16 keys
            #pragma unroll
            for (int mf = 0; mf < MF; mf++)
            {
                float mx0 = m[mf][0], mx1 = m[mf][1];
                #pragma unroll
                for (int j = 0; j < NB; j++)
                {
                    mx0 = fmaxf(mx0, fmaxf(s[mf][j][0], s[mf][j][1]));
                    mx1 = fmaxf(mx1, fmaxf(s[mf][j][2], s[mf][j][3]));
                }
                mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
                mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
                mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
                mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
#if FA_LAZY_RESCALE
                // While no row of the warp has a new max more than 2^8 above the one its P, l and O are scaled to,
                // keep the old max: P grows by at most 256x (far inside fp32 and bf16 range) and O needs no
                // rescale (attention_hopper.cu does the same). A row still at -inf compares as NaN: it rescales.
                const bool rescale = !__all_sync(0xffffffffu, (mx0 - m[mf][0]) * scale_log2 <= 8.f && (mx1 - m[mf][1]) * scale_log2 <= 8.f);
                if (!rescale) { mx0 = m[mf][0]; mx1 = m[mf][1]; }
#else
                const bool rescale = true;
#endif
                // A row with nothing visible yet keeps max -inf; use 0 as its reference so no inf - inf appears.
                const float ms0 = mx0 == -INFINITY ? 0.f : mx0 * scale_log2;
                const float ms1 = mx1 == -INFINITY ? 0.f : mx1 * scale_log2;
                const float a0 = fast_exp2(m[mf][0] * scale_log2 - ms0), a1 = fast_exp2(m[mf][1] * scale_log2 - ms1);
                m[mf][0] = mx0; m[mf][1] = mx1;
                float sum0 = 0.f, sum1 = 0.f;
                // Exponentiate and pack P to bf16 A fragments at once: the fp32 scores die here, which keeps the
                // 32-rows-per-warp shape under 255 registers.
                #pragma unroll
                for (int kk = 0; kk < NB / 2; kk++)
                {
                    float e[8];
                    #pragma unroll
                    for (int x = 0; x < 2; x++)
                    {
                        e[4 * x + 0] = fast_exp2(s[mf][2 * kk + x][0] * scale_log2 - ms0);
                        e[4 * x + 1] = fast_exp2(s[mf][2 * kk + x][1] * scale_log2 - ms0);
                        e[4 * x + 2] = fast_exp2(s[mf][2 * kk + x][2] * scale_log2 - ms1);
                        e[4 * x + 3] = fast_exp2(s[mf][2 * kk + x][3] * scale_log2 - ms1);
                        sum0 += e[4 * x + 0] + e[4 * x + 1];
                        sum1 += e[4 * x + 2] + e[4 * x + 3];
                        if constexpr (FP8)
                        {
                            // P's column of key n times v_scale[n], so P . V8 = P . V (the row sums above stay unscaled)
                            const float* vsc = tile_scales(it & 1) + BN;
                            const float2 sc = *reinterpret_cast<const float2*>(vsc + (2 * kk + x) * 8 + tig * 2);
                            e[4 * x + 0] *= sc.x; e[4 * x + 1] *= sc.y;
                            e[4 * x + 2] *= sc.x; e[4 * x + 3] *= sc.y;
                        }
                    }
                    pa[mf][kk][0] = pack_bf16(e[0], e[1]);
                    pa[mf][kk][1] = pack_bf16(e[2], e[3]);
                    pa[mf][kk][2] = pack_bf16(e[4], e[5]);
                    pa[mf][kk][3] = pack_bf16(e[6], e[7]);
                }
                l[mf][0] = l[mf][0] * a0 + sum0;
                l[mf][1] = l[mf][1] * a1 + sum1;
                if (rescale)
                {
                    #pragma unroll
                    for (int j = 0; j < DB; j++) { o[mf][j][0] *= a0; o[mf][j][1] *= a0; o[mf][j][2] *= a1; o[mf][j][3] *= a1; }
                }
            }
            // O += P V: P's A fragments were packed from the S accumulators; V via ldmatrix.trans.
            const bf16_t* vp = vs + ((lane & 7) + ((lane >> 3) & 1) * 8) * LD + ((lane >> 4) & 1) * 8;
            #pragma unroll
            for (int kk = 0; kk < BN / 16; kk++)
                #pragma unroll
                for (int dd = 0; dd < D / 16; dd++)
                {
                    unsigned b0, b1, b2, b3;
                    ldsm_x4_t(smem_addr(vp + kk * 16 * LD + dd * 16), b0, b1, b2, b3);
                    #pragma unroll
                    for (int mf = 0; mf < MF; mf++)
                    {
                        mma_bf16(o[mf][2 * dd], pa[mf][kk], b0, b1);
                        mma_bf16(o[mf][2 * dd + 1], pa[mf][kk], b2, b3);
                    }
                }
        }
        __syncthreads();   // the stage just read is refilled by the next iteration's prefetch
    }
    cp_async_wait<0>();
    if (!warp_active) return;

    #pragma unroll
    for (int mf = 0; mf < MF; mf++)
    {
        float lf[2];
        #pragma unroll
        for (int half = 0; half < 2; half++)
        {
            float x = l[mf][half];
            x += __shfl_xor_sync(0xffffffffu, x, 1);
            x += __shfl_xor_sync(0xffffffffu, x, 2);
            lf[half] = x;
        }
        #pragma unroll
        for (int half = 0; half < 2; half++)
        {
            const int pr = wrow + mf * 16 + g + half * 8;
            if (pr >= rows_total) continue;
            const int t = pr / group, h = kvh * group + pr % group;
            const float inv = lf[half] > 0.f ? 1.f / lf[half] : 0.f;
            if (splits == 1)
            {
                bf16_t* dst = sq.out + (long long)t * sq.ldo + h * D + tig * 2;
                #pragma unroll
                for (int j = 0; j < DB; j++)
                    *reinterpret_cast<unsigned*>(dst + j * 8) = pack_bf16(o[mf][j][half * 2] * inv, o[mf][j][half * 2 + 1] * inv);
            }
            else
            {
                // Partial (split, token, head): normalised O and log2(sum exp) in the scaled exp2 domain.
                const long long prow = (split * sq.part_split_rows + sq.part_row0 + t) * heads + h;
                float* dst = part_o + prow * D + tig * 2;
                #pragma unroll
                for (int j = 0; j < DB; j++)
                    *reinterpret_cast<float2*>(dst + j * 8) = make_float2(o[mf][j][half * 2] * inv, o[mf][j][half * 2 + 1] * inv);
                if (tig == 0)
                    part_lse[prow] = lf[half] > 0.f ? m[mf][half] * scale_log2 + log2f(lf[half]) : -INFINITY;
            }
        }
    }
}

// One output element of a split merge: partial row `row` of each split (rows per_split apart), dimension d (the
// combine kernel's). fused_combine below spreads the same arithmetic, in the same order, over a CTA, so both give the
// same bits.
__device__ __forceinline__ float combine_element(const float* part_o, const float* part_lse, long long row, long long per_split,
    int splits, int D, int d)
{
    float mx = -INFINITY;
    for (int s = 0; s < splits; s++) mx = fmaxf(mx, part_lse[s * per_split + row]);
    float wsum = 0.f, acc = 0.f;
    for (int s = 0; s < splits; s++)
    {
        float lse = part_lse[s * per_split + row];
        float w = lse == -INFINITY ? 0.f : exp2f(lse - mx);
        wsum += w;
        if (w != 0.f) acc += w * part_o[(s * per_split + row) * D + d];
    }
    return acc / wsum;
}

// Fused split combine of a contiguous launch: called by every thread of every CTA after flash_core. The CTA
// publishes its partials (fence, then one atomic per CTA); the last of the grid.z splits of this (sequence, KV
// head, row tile) merges the tile's rows into out, reading the partials from L2, and re-arms the counter.
// The merge is spread over the CTA so no thread walks the splits serially more than once: the rows' log-sum-exps
// are staged in the (now idle) dynamic shared memory, one thread per row turns them into weights, then each
// thread merges 4 output dims of one row with 16-byte loads. Same arithmetic, in the same order, as
// combine_element, so the result has the same bits as the combine kernel's.
template <int D, int BM>
__device__ __forceinline__ void fused_combine(const FaSeq& sq, int heads, int kv_heads, int kvh, int tile_m, int splits,
    const float* part_o, const float* part_lse, int* counter)
{
    __shared__ int last;
    extern __shared__ __align__(16) bf16_t smem[];
    __threadfence();                       // this thread's partial stores are visible device-wide
    __syncthreads();                       // (also: every thread is done with the K/V tiles in smem)
    if (threadIdx.x == 0)
    {
        last = atomicAdd(counter, 1) == splits - 1;
        if (last) *counter = 0;            // every split has arrived: re-armed for the next launch
    }
    __syncthreads();
    if (!last) return;
    __threadfence();
    const int group = heads / kv_heads, rows_total = sq.T * group, row0 = tile_m * BM;
    const int nrows = min(BM, rows_total - row0);
    const long long per_split = sq.part_split_rows * heads;
    // wts: (nrows, splits) log-sum-exps, then weights; wsum: (nrows). At most 128 x 64 + 128 floats (< 36 KB, the
    // smallest dynamic shared memory of a contiguous entry).
    float* wts = reinterpret_cast<float*>(smem);
    float* wsum = wts + nrows * splits;
    auto part_row = [&](int r) {
        const int pr = row0 + r, t = pr / group, h = kvh * group + pr % group;
        return (sq.part_row0 + t) * heads + h;
    };
    for (int i = threadIdx.x; i < nrows * splits; i += blockDim.x)
    {
        const int r = i / splits, s = i % splits;
        wts[i] = __ldcg(part_lse + s * per_split + part_row(r));
    }
    __syncthreads();
    for (int r = threadIdx.x; r < nrows; r += blockDim.x)
    {
        float* wr = wts + r * splits;
        float mx = -INFINITY;
        for (int s = 0; s < splits; s++) mx = fmaxf(mx, wr[s]);
        float sum = 0.f;
        for (int s = 0; s < splits; s++)
        {
            float lse = wr[s];
            float w = lse == -INFINITY ? 0.f : exp2f(lse - mx);
            sum += w;
            wr[s] = w;
        }
        wsum[r] = sum;
    }
    __syncthreads();
    constexpr int Q = D / 4;
    for (int i = threadIdx.x; i < nrows * Q; i += blockDim.x)
    {
        const int r = i / Q, d = (i % Q) * 4;
        const long long row = part_row(r);
        const float* wr = wts + r * splits;
        float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f;
#pragma unroll 4
        for (int s = 0; s < splits; s++)
        {
            const float w = wr[s];
            if (w != 0.f)
            {
                const float4 o = __ldcg(reinterpret_cast<const float4*>(part_o + (s * per_split + row) * D + d));
                a0 += w * o.x; a1 += w * o.y; a2 += w * o.z; a3 += w * o.w;
            }
        }
        const int pr = row0 + r, t = pr / group, h = kvh * group + pr % group;
        const float ws = wsum[r];
        bf16_t* dst = sq.out + (long long)t * sq.ldo + h * D + d;
        dst[0] = f32_to_bf16(a0 / ws); dst[1] = f32_to_bf16(a1 / ws); dst[2] = f32_to_bf16(a2 / ws); dst[3] = f32_to_bf16(a3 / ws);
    }
}

// Which row tile of which (sequence, KV head) pair this CTA takes. CTAs start in linear block order (x fastest), so
// with FA_ORDER linear block i takes tile rank i / gridDim.y (rank 0 = the last, longest causal tile) of pair
// i % gridDim.y: the longest tiles of every pair go first and short ones fill the tail.
__device__ __forceinline__ void fa_block_order(int& tile_m, int& pair)
{
#if FA_ORDER
    const unsigned lin = blockIdx.y * gridDim.x + blockIdx.x;
    tile_m = (int)(gridDim.x - 1 - lin / gridDim.y);
    pair = (int)(lin % gridDim.y);
#else
    tile_m = (int)(gridDim.x - 1 - blockIdx.x);
    pair = (int)blockIdx.y;
#endif
}

// Contiguous caches, `batch` sequences at the same positions (grid.y = batch * kv_heads): sequence b's queries at
// q + b * q_bstride (row stride ldq), its caches at k/v + b * kv_bstride, its output at out + b * o_bstride (row
// stride heads * D); partial rows (split, b * T + t, head). pos_dev (optional) overrides pos0 from device memory;
// keys_per_split <= 0: computed here from the position, ceil(key tiles / splits) tiles each (trailing splits may
// be empty); counters (optional, gridDim.x * gridDim.y ints, zero before the first launch): fused combine.
#define FA_ENTRY(D, NW, MF, BN)                                                                                          \
extern "C" __global__ void __launch_bounds__(NW * 32) flash_attn_d##D##_w##NW##_m##MF##_n##BN(const float* q,          \
    long long q_bstride, int ldq, const bf16_t* k, const bf16_t* v, long long kv_bstride, bf16_t* out, long long o_bstride, \
    float* part_o, float* part_lse, int T, int heads, int kv_heads, int pos0, int keys_per_split, float scale_log2,    \
    const int* pos_dev, int* counters)                                                                                   \
{                                                                                                                        \
    pdl_wait();                                                                                                          \
    int tile_m, pair;                                                                                                    \
    fa_block_order(tile_m, pair);                                                                                        \
    const int batch = gridDim.y / kv_heads, b = pair / kv_heads, kvh = pair % kv_heads;                                  \
    if (pos_dev != nullptr) pos0 = *pos_dev;                                                                             \
    if (keys_per_split <= 0)                                                                                             \
    {                                                                                                                    \
        const int tiles = (pos0 + T + BN - 1) / BN;                                                                      \
        keys_per_split = (tiles + gridDim.z - 1) / gridDim.z * BN;                                                       \
    }                                                                                                                    \
    FaSeq sq;                                                                                                            \
    sq.q = q + b * q_bstride; sq.ldq = ldq;                                                                              \
    sq.out = out + b * o_bstride; sq.ldo = heads * D;                                                                    \
    sq.part_row0 = (long long)b * T; sq.part_split_rows = (long long)batch * T;                                          \
    sq.T = T; sq.pos0 = pos0;                                                                                            \
    sq.k = k + b * kv_bstride + kvh * D; sq.v = v + b * kv_bstride + kvh * D;                                            \
    sq.table = nullptr; sq.block_shift = 0;                                                                               \
    flash_core<D, NW, MF, BN, false>(sq, heads, kv_heads, kvh, tile_m, blockIdx.z, gridDim.z,                           \
        keys_per_split, scale_log2, part_o, part_lse);                                                                   \
    if (counters != nullptr && gridDim.z > 1)                                                                            \
        fused_combine<D, FaShape<D, NW, MF, BN>::BM>(sq, heads, kv_heads, kvh, tile_m, gridDim.z, part_o, part_lse,      \
            counters + (long long)pair * gridDim.x + tile_m);                                                            \
}

// Paged caches, a varlen batch (grid.y = sequences * kv_heads): sequence s owns query/output rows
// cu_q[s] .. cu_q[s+1]-1 (row stride ldq / ldo) and, after this step, ctx_lens[s] cached positions, so its rows sit
// at positions ctx_lens[s] - (cu_q[s+1] - cu_q[s]) ... Its block table is block_tables + s * max_blocks. Partial
// rows (split, token, head) with total_tokens tokens per split. Sequences with no rows (graph padding) do nothing.
// keys_per_split <= 0: each sequence divides its own keys evenly over grid.z (ceil(key tiles / splits) tiles each,
// trailing splits may be empty), so a graph captured with splits chosen from bounds replays any context lengths.
// counters (optional, gridDim.x * gridDim.y ints, zero before the first launch): fused split combine, as above.
template <int D, int NW, int MF, int BN, bool FP8>
__device__ __forceinline__ void flash_paged(const float* q, int ldq, const bf16_t* k_cache, const bf16_t* v_cache,
    const unsigned char* k8, const unsigned char* v8, const float* k_scale, const float* v_scale, const int* block_tables,
    int max_blocks, int block_shift, const int* cu_q, const int* ctx_lens, bf16_t* out, int ldo, float* part_o,
    float* part_lse, int total_tokens, int heads, int kv_heads, int keys_per_split, float scale_log2, int* counters)
{
    pdl_wait();
    int tile_m, pair;
    fa_block_order(tile_m, pair);
    const int s = pair / kv_heads, kvh = pair % kv_heads;
    const int q0 = cu_q[s], T = cu_q[s + 1] - q0;
    if (T <= 0) return;
    if (keys_per_split <= 0)
    {
        const int tiles = (ctx_lens[s] + BN - 1) / BN;
        keys_per_split = (tiles + gridDim.z - 1) / gridDim.z * BN;
    }
    FaSeq sq;
    sq.q = q + (long long)q0 * ldq; sq.ldq = ldq;
    sq.out = out + (long long)q0 * ldo; sq.ldo = ldo;
    sq.part_row0 = q0; sq.part_split_rows = total_tokens;
    sq.T = T; sq.pos0 = ctx_lens[s] - T;
    sq.k = FP8 ? nullptr : k_cache + kvh * D; sq.v = FP8 ? nullptr : v_cache + kvh * D;
    sq.k8 = FP8 ? k8 + kvh * D : nullptr; sq.v8 = FP8 ? v8 + kvh * D : nullptr;
    sq.k_scale = FP8 ? k_scale + kvh : nullptr; sq.v_scale = FP8 ? v_scale + kvh : nullptr;
    sq.table = block_tables + (long long)s * max_blocks; sq.block_shift = block_shift;
    flash_core<D, NW, MF, BN, true, FP8>(sq, heads, kv_heads, kvh, tile_m, blockIdx.z, gridDim.z,
        keys_per_split, scale_log2, part_o, part_lse);
    if (counters != nullptr && gridDim.z > 1)
        fused_combine<D, FaShape<D, NW, MF, BN>::BM>(sq, heads, kv_heads, kvh, tile_m, gridDim.z, part_o, part_lse,
            counters + (long long)pair * gridDim.x + tile_m);
}

#define FA_PAGED_ENTRY(D, NW, MF, BN)                                                                                    \
extern "C" __global__ void __launch_bounds__(NW * 32) flash_attn_paged_d##D##_w##NW##_m##MF##_n##BN(const float* q,    \
    int ldq, const bf16_t* k_cache, const bf16_t* v_cache, const int* block_tables, int max_blocks, int block_shift,     \
    const int* cu_q, const int* ctx_lens, bf16_t* out, int ldo, float* part_o, float* part_lse, int total_tokens,        \
    int heads, int kv_heads, int keys_per_split, float scale_log2, int* counters)                                        \
{                                                                                                                        \
    flash_paged<D, NW, MF, BN, false>(q, ldq, k_cache, v_cache, nullptr, nullptr, nullptr, nullptr, block_tables,       \
        max_blocks, block_shift, cu_q, ctx_lens, out, ldo, part_o, part_lse, total_tokens, heads, kv_heads,              \
        keys_per_split, scale_log2, counters);                                                                           \
}

// The same over an fp8 e4m3 pool: k_cache / v_cache bytes in the bf16 pool's layout, k_scale / v_scale fp32
// (num_blocks * block_size, kv_heads). Dynamic shared memory: the bf16 entry's + FaShape::FP8_EXTRA_BYTES.
#define FA_PAGED_FP8_ENTRY(D, NW, MF, BN)                                                                                \
extern "C" __global__ void __launch_bounds__(NW * 32) flash_attn_paged_fp8_d##D##_w##NW##_m##MF##_n##BN(               \
    const float* q, int ldq, const unsigned char* k_cache, const unsigned char* v_cache, const float* k_scale,          \
    const float* v_scale, const int* block_tables, int max_blocks, int block_shift, const int* cu_q,                   \
    const int* ctx_lens, bf16_t* out, int ldo, float* part_o, float* part_lse, int total_tokens, int heads,            \
    int kv_heads, int keys_per_split, float scale_log2, int* counters)                                                   \
{                                                                                                                        \
    flash_paged<D, NW, MF, BN, true>(q, ldq, nullptr, nullptr, k_cache, v_cache, k_scale, v_scale, block_tables,        \
        max_blocks, block_shift, cu_q, ctx_lens, out, ldo, part_o, part_lse, total_tokens, heads, kv_heads,              \
        keys_per_split, scale_log2, counters);                                                                           \
}

FA_ENTRY(64, 4, 1, 64)
FA_ENTRY(128, 4, 1, 64)
FA_ENTRY(64, 8, 1, 64)
FA_ENTRY(128, 8, 1, 64)
FA_ENTRY(64, 4, 2, 64)
FA_ENTRY(128, 4, 2, 64)
FA_ENTRY(64, 4, 2, 32)
FA_ENTRY(128, 4, 2, 32)
FA_PAGED_ENTRY(64, 4, 1, 64)
FA_PAGED_ENTRY(128, 4, 1, 64)
FA_PAGED_ENTRY(64, 4, 2, 64)
FA_PAGED_ENTRY(128, 4, 2, 64)
FA_PAGED_ENTRY(64, 4, 2, 32)
FA_PAGED_ENTRY(128, 4, 2, 32)
FA_PAGED_FP8_ENTRY(64, 4, 1, 64)
FA_PAGED_FP8_ENTRY(128, 4, 1, 64)
FA_PAGED_FP8_ENTRY(64, 4, 2, 64)
FA_PAGED_FP8_ENTRY(128, 4, 2, 64)
FA_PAGED_FP8_ENTRY(64, 4, 2, 32)
FA_PAGED_FP8_ENTRY(128, 4, 2, 32)

// Merges the split partials of contiguous launches: out = sum_s w_s O_s with w_s = 2^(lse_s - max) / sum 2^(lse - max).
// Grid (batch * T * heads), block D threads.
extern "C" __global__ void flash_attn_combine(const float* part_o, const float* part_lse, bf16_t* out, long long o_bstride,
    int batch, int T, int heads, int D, int splits)
{
    const long long row = blockIdx.x;                  // (b, t, h) flattened
    const int b = (int)(row / ((long long)T * heads));
    const long long rr = row % ((long long)T * heads);  // t * heads + h
    const long long per_split = (long long)batch * T * heads;
    out[b * o_bstride + rr * D + threadIdx.x] = f32_to_bf16(combine_element(part_o, part_lse, row, per_split, splits, D, threadIdx.x));
}
