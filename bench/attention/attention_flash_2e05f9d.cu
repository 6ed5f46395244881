// FlashAttention-2-style causal GQA attention on bf16 tensor cores (mma.sync m16n8k16, sm_80+), for head_dim 64
// and 128. One kernel serves prefill (a step of T queries at positions pos0..pos0+T-1, T large), chunked prefill
// (pos0 > 0) and decode (T = 1, split-K over the cache = flash-decoding).
//
// GQA packing: the `group` query heads sharing one KV head are packed into the M dimension, packed row
// r = t * group + g (token t, head kvh * group + g), so a CTA's K/V tile is read once for all of them and decode
// (T = 1) still fills 4..8 rows of a 16-row MMA instead of 1.
//   q   (batch, T, ldq) fp32 rotated queries (converted to bf16 once per CTA); row t sits at position pos0 + t.
//   k,v (batch, capacity, kv_heads, D) bf16 caches; a query at position p sees keys 0..p.
//   out (batch, T, heads * D) bf16, or, with splits > 1, partial results (normalised O and log2-sum-exp per
//   split) that flash_attn_combine merges.
// CTA: NW warps, BM = 16 * NW packed rows (16 per warp), BN = 64 keys per tile; K/V tiles double-buffered in
// shared memory with cp.async (rows padded by 16 bytes so ldmatrix is conflict-free); Q fragments stay in
// registers for the whole loop; online softmax in fp32 in the exp2 domain; P is re-packed from the S accumulators
// into A fragments without touching shared memory.
// Grid: x = row tiles (heaviest causal tile first), y = batch * kv_heads, z = splits.
#include "swiftkv_common.cuh"

#define FA_BN 64

__device__ __forceinline__ unsigned smem_addr(const void* p)
{
    unsigned r;
    asm volatile("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }" : "=r"(r) : "l"(p));
    return r;
}

// 16-byte async copy global -> shared; src_bytes = 0 zero-fills (keys past the causal end may hold anything).
__device__ __forceinline__ void cp_async16(unsigned dst, const void* src, int src_bytes)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" :: "r"(dst), "l"(src), "r"(src_bytes) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;" :: "n"(N) : "memory"); }

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

// d (16x8 fp32) += a (16x16 bf16, row) * b (16x8 bf16, col)
__device__ __forceinline__ void mma_bf16(float* d, const unsigned* a, unsigned b0, unsigned b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// 2^x on the special-function unit (2^-inf = 0); the softmax needs no more accuracy than bf16 P keeps.
__device__ __forceinline__ float fast_exp2(float x)
{
    float r;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
    return r;
}

// Two floats -> bf16x2 (round to nearest even), lo in the low half (the lower column of a fragment pair).
__device__ __forceinline__ unsigned pack_bf16(float lo, float hi)
{
    unsigned r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

template <int D, int NW>
__device__ __forceinline__ void flash_attn(const float* __restrict__ q, long long q_bstride, int ldq,
    const bf16_t* __restrict__ kc, const bf16_t* __restrict__ vc, long long kv_bstride,
    bf16_t* __restrict__ out, long long o_bstride, float* __restrict__ part_o, float* __restrict__ part_lse,
    int T, int heads, int kv_heads, int pos0, int keys_per_split, float scale_log2)
{
    constexpr int BM = 16 * NW, BN = FA_BN, LD = D + 8;   // smem row stride in bf16 (16-byte pad)
    constexpr int TILE = BN * LD;                            // one K or V tile, elements
    constexpr int KD = D / 16, NB = BN / 8, DB = D / 8;
    static_assert(BM <= 2 * BN, "Q staging must fit in stage 1");
    extern __shared__ __align__(16) bf16_t smem[];           // [K0][V0][K1][V1]; Q staged in [K1][V1] first

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int group = heads / kv_heads, rows_total = T * group;
    const int tile_m = gridDim.x - 1 - blockIdx.x;           // long causal tiles start first
    const int b = blockIdx.y / kv_heads, kvh = blockIdx.y % kv_heads, split = blockIdx.z, splits = gridDim.z;
    const int row0 = tile_m * BM;
    const int kv_dim = kv_heads * D;

    const int t_last = min(T - 1, (row0 + BM - 1) / group);
    const int kend = pos0 + t_last + 1;                       // keys this CTA may need: 0 .. kend-1
    const int k_begin = split * keys_per_split;
    const int k_end = min(kend, k_begin + keys_per_split);
    const int ntiles = k_end > k_begin ? (k_end - k_begin + BN - 1) / BN : 0;

    const bf16_t* kb = kc + b * kv_bstride + kvh * D;
    const bf16_t* vb = vc + b * kv_bstride + kvh * D;

    // K/V tile loader: BN rows x D/8 chunks of 16 bytes each; rows at or past kend are zero-filled.
    auto load_tile = [&](int stage, int n0) {
        bf16_t* ks = smem + stage * 2 * TILE;
        bf16_t* vs = ks + TILE;
        constexpr int CH = D / 8;
        #pragma unroll
        for (int i = tid; i < BN * CH; i += NW * 32)
        {
            int r = i / CH, c = (i % CH) * 8, key = n0 + r;
            int ok = key < kend ? 16 : 0;
            long long off = (long long)(key < kend ? key : 0) * kv_dim + c;
            cp_async16(smem_addr(ks + r * LD + c), kb + off, ok);
            cp_async16(smem_addr(vs + r * LD + c), vb + off, ok);
        }
    };

    if (ntiles > 0) load_tile(0, k_begin);
    cp_async_commit();

    // Q: fp32 global -> bf16 smem (in stage 1) -> A fragments in registers.
    {
        bf16_t* qs = smem + 2 * TILE;
        const float* qb = q + b * q_bstride;
        const bool vec = ((ldq & 3) == 0) && ((q_bstride & 3) == 0) && ((((unsigned long long)q) & 15) == 0);
        for (int i = tid; i < BM * (D / 4); i += NW * 32)
        {
            int r = i / (D / 4), c = (i % (D / 4)) * 4, pr = row0 + r;
            float x0 = 0.f, x1 = 0.f, x2 = 0.f, x3 = 0.f;
            if (pr < rows_total)
            {
                int t = pr / group, h = kvh * group + pr % group;
                const float* src = qb + (long long)t * ldq + h * D + c;
                if (vec) { float4 v4 = *reinterpret_cast<const float4*>(src); x0 = v4.x; x1 = v4.y; x2 = v4.z; x3 = v4.w; }
                else { x0 = src[0]; x1 = src[1]; x2 = src[2]; x3 = src[3]; }
            }
            unsigned* dst = reinterpret_cast<unsigned*>(qs + r * LD + c);
            dst[0] = pack_bf16(x0, x1);
            dst[1] = pack_bf16(x2, x3);
        }
    }
    __syncthreads();
    unsigned qf[KD][4];
    {
        const bf16_t* qs = smem + 2 * TILE + (warp * 16 + (lane & 15)) * LD + (lane >> 4) * 8;
        #pragma unroll
        for (int kk = 0; kk < KD; kk++) ldsm_x4(smem_addr(qs + kk * 16), qf[kk][0], qf[kk][1], qf[kk][2], qf[kk][3]);
    }
    __syncthreads();   // stage 1 is free for K/V now

    const int g = lane >> 2, tig = lane & 3;
    const int wrow = row0 + warp * 16;
    const bool warp_active = wrow < rows_total;
    // Causal limit (last visible key) of this thread's two rows; padding rows get the CTA's limit.
    const int lim0 = pos0 + min(T - 1, (wrow + g) / group);
    const int lim1 = pos0 + min(T - 1, (wrow + g + 8) / group);
    const int cta_min_lim = pos0 + row0 / group;

    float o[DB][4];
    #pragma unroll
    for (int j = 0; j < DB; j++) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;

    for (int it = 0; it < ntiles; it++)
    {
        const int n0 = k_begin + it * BN;
        if (it + 1 < ntiles) load_tile((it + 1) & 1, n0 + BN);
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();

        if (warp_active)
        {
            const bf16_t* ks = smem + (it & 1) * 2 * TILE;
            const bf16_t* vs = ks + TILE;
            float s[NB][4];
            #pragma unroll
            for (int j = 0; j < NB; j++) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
            // S = Q K^T: K rows are the B operand's columns (ldmatrix without transpose).
            const bf16_t* kp = ks + ((lane & 7) + ((lane >> 4) & 1) * 8) * LD + ((lane >> 3) & 1) * 8;
            #pragma unroll
            for (int kk = 0; kk < KD; kk++)
                #pragma unroll
                for (int jj = 0; jj < NB / 2; jj++)
                {
                    unsigned b0, b1, b2, b3;
                    ldsm_x4(smem_addr(kp + jj * 16 * LD + kk * 16), b0, b1, b2, b3);
                    mma_bf16(s[2 * jj], qf[kk], b0, b1);
                    mma_bf16(s[2 * jj + 1], qf[kk], b2, b3);
                }
            // Mask keys past each row's causal limit or this split's end (only tiles that reach them).
            if (n0 + BN - 1 > cta_min_lim || n0 + BN > k_end)
            {
                #pragma unroll
                for (int j = 0; j < NB; j++)
                    #pragma unroll
                    for (int e = 0; e < 2; e++)
                    {
                        int key = n0 + j * 8 + tig * 2 + e;
                        bool out_split = key >= k_end;
                        if (out_split || key > lim0) s[j][e] = -INFINITY;
                        if (out_split || key > lim1) s[j][2 + e] = -INFINITY;
                    }
            }
            float mx0 = m0, mx1 = m1;
            #pragma unroll
            for (int j = 0; j < NB; j++)
            {
                mx0 = fmaxf(mx0, fmaxf(s[j][0], s[j][1]));
                mx1 = fmaxf(mx1, fmaxf(s[j][2], s[j][3]));
            }
            mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
            mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
            mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
            mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
            // A row with nothing visible yet keeps max -inf; use 0 as its reference so no inf - inf appears.
            const float ms0 = mx0 == -INFINITY ? 0.f : mx0 * scale_log2;
            const float ms1 = mx1 == -INFINITY ? 0.f : mx1 * scale_log2;
            const float a0 = fast_exp2(m0 * scale_log2 - ms0), a1 = fast_exp2(m1 * scale_log2 - ms1);
            m0 = mx0; m1 = mx1;
            float sum0 = 0.f, sum1 = 0.f;
            #pragma unroll
            for (int j = 0; j < NB; j++)
            {
                s[j][0] = fast_exp2(s[j][0] * scale_log2 - ms0);
                s[j][1] = fast_exp2(s[j][1] * scale_log2 - ms0);
                s[j][2] = fast_exp2(s[j][2] * scale_log2 - ms1);
                s[j][3] = fast_exp2(s[j][3] * scale_log2 - ms1);
                sum0 += s[j][0] + s[j][1];
                sum1 += s[j][2] + s[j][3];
            }
            l0 = l0 * a0 + sum0;
            l1 = l1 * a1 + sum1;
            #pragma unroll
            for (int j = 0; j < DB; j++) { o[j][0] *= a0; o[j][1] *= a0; o[j][2] *= a1; o[j][3] *= a1; }
            // O += P V: P's A fragments come straight from the S accumulators; V via ldmatrix.trans.
            const bf16_t* vp = vs + ((lane & 7) + ((lane >> 3) & 1) * 8) * LD + ((lane >> 4) & 1) * 8;
            #pragma unroll
            for (int kk = 0; kk < BN / 16; kk++)
            {
                unsigned pa[4];
                pa[0] = pack_bf16(s[2 * kk][0], s[2 * kk][1]);
                pa[1] = pack_bf16(s[2 * kk][2], s[2 * kk][3]);
                pa[2] = pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]);
                pa[3] = pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3]);
                #pragma unroll
                for (int dd = 0; dd < D / 16; dd++)
                {
                    unsigned b0, b1, b2, b3;
                    ldsm_x4_t(smem_addr(vp + kk * 16 * LD + dd * 16), b0, b1, b2, b3);
                    mma_bf16(o[2 * dd], pa, b0, b1);
                    mma_bf16(o[2 * dd + 1], pa, b2, b3);
                }
            }
        }
        __syncthreads();   // the stage just read is refilled by the next iteration's prefetch
    }
    cp_async_wait<0>();
    if (!warp_active) return;

    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    const float inv0 = l0 > 0.f ? 1.f / l0 : 0.f, inv1 = l1 > 0.f ? 1.f / l1 : 0.f;

    #pragma unroll
    for (int half = 0; half < 2; half++)
    {
        const int pr = wrow + g + half * 8;
        if (pr >= rows_total) continue;
        const int t = pr / group, h = kvh * group + pr % group;
        const float inv = half ? inv1 : inv0;
        if (splits == 1)
        {
            bf16_t* dst = out + b * o_bstride + (long long)t * heads * D + h * D + tig * 2;
            #pragma unroll
            for (int j = 0; j < DB; j++)
                *reinterpret_cast<unsigned*>(dst + j * 8) = pack_bf16(o[j][half * 2] * inv, o[j][half * 2 + 1] * inv);
        }
        else
        {
            // Partial (split, b, t, h): normalised O and log2(sum exp) in the scaled exp2 domain.
            const long long prow = ((long long)split * (gridDim.y / kv_heads) + b) * T * heads + (long long)t * heads + h;
            float* dst = part_o + prow * D + tig * 2;
            #pragma unroll
            for (int j = 0; j < DB; j++)
                *reinterpret_cast<float2*>(dst + j * 8) = make_float2(o[j][half * 2] * inv, o[j][half * 2 + 1] * inv);
            if (tig == 0)
            {
                const float l = half ? l1 : l0, m = half ? m1 : m0;
                part_lse[prow] = l > 0.f ? m * scale_log2 + log2f(l) : -INFINITY;
            }
        }
    }
}

#define FA_ENTRY(D, NW)                                                                                                  \
extern "C" __global__ void __launch_bounds__(NW * 32) flash_attn_d##D##_w##NW(const float* q, long long q_bstride, int ldq, \
    const bf16_t* k, const bf16_t* v, long long kv_bstride, bf16_t* out, long long o_bstride, float* part_o, float* part_lse, \
    int T, int heads, int kv_heads, int pos0, int keys_per_split, float scale_log2)                                      \
{                                                                                                                        \
    flash_attn<D, NW>(q, q_bstride, ldq, k, v, kv_bstride, out, o_bstride, part_o, part_lse, T, heads, kv_heads, pos0,   \
        keys_per_split, scale_log2);                                                                                     \
}

FA_ENTRY(64, 4)
FA_ENTRY(128, 4)
FA_ENTRY(64, 8)
FA_ENTRY(128, 8)

// Merges the split partials: out = sum_s w_s O_s with w_s = 2^(lse_s - max) / sum 2^(lse - max).
// Grid (batch * T * heads), block D threads.
extern "C" __global__ void flash_attn_combine(const float* part_o, const float* part_lse, bf16_t* out, long long o_bstride,
    int batch, int T, int heads, int D, int splits)
{
    const long long row = blockIdx.x;                  // (b, t, h) flattened
    const int b = (int)(row / ((long long)T * heads));
    const long long rr = row % ((long long)T * heads);  // t * heads + h
    const long long per_split = (long long)batch * T * heads;
    float mx = -INFINITY;
    for (int s = 0; s < splits; s++) mx = fmaxf(mx, part_lse[s * per_split + row]);
    float wsum = 0.f, acc = 0.f;
    for (int s = 0; s < splits; s++)
    {
        float lse = part_lse[s * per_split + row];
        float w = lse == -INFINITY ? 0.f : exp2f(lse - mx);
        wsum += w;
        if (w != 0.f) acc += w * part_o[(s * per_split + row) * D + threadIdx.x];
    }
    out[b * o_bstride + rr * D + threadIdx.x] = f32_to_bf16(acc / wsum);
}
