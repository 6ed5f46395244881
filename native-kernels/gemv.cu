// Matrix-vector products for decode-sized steps (1..8 rows): the weight is streamed once from device memory for
// all rows, which is what bounds a decode step (cuBLAS GEMM with n = 1 runs at ~2/3 of the copy bandwidth).
//   gemv_bf16_r{R}:       y (R, ldy) fp32  = x (R, in) bf16 · W (out, in)ᵀ bf16, plus y itself when accumulate != 0
//                         (the residual add of o_proj / down_proj into the fp32 residual stream).
//   gemv_silu_bf16_r{R}:  out (R, inter) bf16 = silu(x · Wgᵀ) · (x · Wuᵀ) with W = [gate; up] (2·inter, in): the
//                         fused [gate; up] projection as CudaWeights stores it, the SwiGLU applied before anything
//                         leaves registers (no fp32 gate/up round trip, no separate silu launch).
//   gemv_rms_bf16_r{R}, gemv_rms_silu_bf16_r{R} (R = 1..4): the same two products with the RMSNorm that precedes
//                         every projection folded in: x is the fp32 residual stream (R, in) and the product uses
//                         RMSNorm(x) · nw. Each warp reads the whole x row anyway, so it also sums x² itself and
//                         scales its dot products by 1 / sqrt(mean(x²) + eps) at the end (y = inv · W (x ⊙ nw)):
//                         no norm launch and no bf16 normed row in between (the activations stay fp32, which is
//                         at least as accurate as the separate norm's bf16 rounding). Decode only.
//   gemv_e4m3_r{R}, gemv_silu_e4m3_r{R}: the plain and SwiGLU products with W held as fp8 e4m3 codes (an FP8
//                         checkpoint's weights kept as they are: half the bytes to stream) and one fp32 scale per
//                         weight row. Each code becomes its exact value (e4m3 -> f16 -> f32, no
//                         rounding), the dot product sums value · x in fp32, and the row's scale multiplies the sum once:
//                         code · scale is never rounded to bf16, unlike the dequantized weights, so the result differs
//                         from the bf16 path by at most that rounding. Vector path only (in % 16 == 0, 16-byte aligned).
// Vector path (in % 8 == 0, 16-byte aligned x and W): each warp owns two weight rows (o and o + ceil(out / 2), or
// gate row o and up row o + inter for the SwiGLU variant: distant rows, see GEMV_PAIR_SPLIT); each lane loads 16 bytes
// (8 bf16) of both rows per step, GEMV_UNROLL steps issued before the first use so enough bytes are in flight to
// cover DRAM latency. Weight loads bypass L1 (ld.global.nc.L1::no_allocate: each byte is used once) so the small x
// rows stay L1-resident for the other warps; accumulation is fp32 per lane, then a warp-shuffle sum. The *_any entries
// are the fallback for odd in or unaligned pointers: scalar loads, one row per warp, R at run time.
// Programmatic launch (sm_90+): before pdl_wait() a warp issues its first batch of weight loads (constant data;
// the *_pf_* entries also ask L2 to prefetch the rows' first bytes), so when the engine launches these
// programmatically the first loads overlap the previous kernel's tail; x and y are touched only after the wait.
// Then pdl_launch_dependents() lets the next kernel start.
// Launch (vector): grid ceil(out / (2 · GEMV_WARPS)) (plain) or ceil(inter / GEMV_WARPS) (silu), block 32 · GEMV_WARPS.
// Launch (any):    grid ceil(out / GEMV_WARPS) or ceil(inter / GEMV_WARPS), block 32 · GEMV_WARPS.
#include "swiftkv_common.cuh"

// GEMV_WARPS must match GemvKernel.Warps (the launcher's grid); both may be overridden for bench/gemv_probe.py.
#ifndef GEMV_WARPS
#define GEMV_WARPS 8
#endif
// Steps of 16-byte loads in flight per lane and row. 2 since the rows were paired far apart (bench/gemv_probe.py,
// H100, layer of four projections: 8 warps x 2 steps 154.8-155.2 us, x 4 158.2-159.2, x 8 166.4; 4 warps x 4 157.6);
// before that 4 was best.
#ifndef GEMV_UNROLL
#define GEMV_UNROLL 2
#endif
// Which rows are in flight together decides how evenly DRAM serves them (bench/gemv_probe.py, H100, 8B decode shapes,
// two passes each; per layer of four projections 169.1-169.5 us before either switch):
//   GEMV_PAIR_SPLIT 1: a plain entry's warp takes rows o and o + ceil(out / 2) instead of o and o + 1 (the SwiGLU
//                   entries already pair rows inter apart): down_proj 48.5 -> 44.1 us, o_proj 16.2-18.3 -> 14.9-17.4,
//                   qkv 22.0 -> 21.5; layer 163.0.
//   GEMV_SILU_STAGGER n: a SwiGLU warp starts its rows n chunks (16 bytes each) further in than the warp before it and
//                   wraps around: [gate; up] 81.8 -> 79.8 us at n = 32 (80.5 at 256). Staggering the plain entries
//                   too made down_proj slower (44.1 -> 48.9 with the split), so they do not.
// (Interleaving gate and up rows in memory, so a SwiGLU warp streams one range, changed nothing: 81.6 vs 81.8 us.)
#ifndef GEMV_PAIR_SPLIT
#define GEMV_PAIR_SPLIT 1
#endif
#ifndef GEMV_SILU_STAGGER
#define GEMV_SILU_STAGGER 32
#endif

// x is written by the kernel before this one, so it is read through the coherent path (L1-cached), not .nc.
__device__ __forceinline__ uint4 ld_cached16(const void* p)
{
    uint4 v;
    asm volatile("ld.global.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    return v;
}

// Bytes of each weight row that a warp asks L2 to prefetch before waiting on the previous kernel: the first two
// unrolled steps (2 x 32 lanes x GEMV_UNROLL x 16 B) of an unstaggered walk (a staggered SwiGLU warp starts elsewhere,
// so there the prefetch covers other bytes than its first loads; the option is off by default and timed slower).
#define GEMV_PREFETCH_BYTES (2 * 32 * GEMV_UNROLL * 16)

__device__ __forceinline__ void prefetch_row_l2(const bf16_t* row, int in)
{
#if __CUDA_ARCH__ >= 900
    unsigned bytes = min(in * 2, GEMV_PREFETCH_BYTES) & ~15u;
    if ((threadIdx.x & 31) == 0 && bytes > 0)
        asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" :: "l"(row), "r"(bytes) : "memory");
#endif
}

// Wait for the previous kernel (programmatic launch), then let the next one start.
__device__ __forceinline__ void gemv_wait()
{
    pdl_wait();
    pdl_launch_dependents();
}

// Start of the vector entries: optionally ask L2 for the rows' first bytes. The wait itself comes inside
// gemv_two_rows, after the first weight loads are issued.
__device__ __forceinline__ void gemv_prefetch(const bf16_t* w, int in, long long o0, long long o1, bool l2)
{
    if (!l2) return;
    prefetch_row_l2(w + o0 * in, in);
    if (o1 != o0) prefetch_row_l2(w + o1 * in, in);
}

// The 8 bf16 of a 16-byte word as fp32 (element 2k in the low half of word k).
__device__ __forceinline__ void unpack8(uint4 v, float f[8])
{
    f[0] = __uint_as_float(v.x << 16); f[1] = __uint_as_float(v.x & 0xffff0000u);
    f[2] = __uint_as_float(v.y << 16); f[3] = __uint_as_float(v.y & 0xffff0000u);
    f[4] = __uint_as_float(v.z << 16); f[5] = __uint_as_float(v.z & 0xffff0000u);
    f[6] = __uint_as_float(v.w << 16); f[7] = __uint_as_float(v.w & 0xffff0000u);
}

// The 8 fp32 norm weights of chunk c (constant data: the read-only path).
__device__ __forceinline__ void load_norm8(const float* __restrict__ nw, int c, float f[8])
{
    const float4* p = reinterpret_cast<const float4*>(nw) + 2 * c;
    float4 a = __ldg(p), b = __ldg(p + 1);
    f[0] = a.x; f[1] = a.y; f[2] = a.z; f[3] = a.w; f[4] = b.x; f[5] = b.y; f[6] = b.z; f[7] = b.w;
}

// 8 fp32 residual values (two 16-byte words at p, written by an earlier kernel: coherent path) times the norm
// weights into fx, and their squares into ss.
__device__ __forceinline__ void load_x8_norm(const uint4* p, const float fn[8], float fx[8], float& ss)
{
    uint4 a = ld_cached16(p), b = ld_cached16(p + 1);
    float v[8] = { __uint_as_float(a.x), __uint_as_float(a.y), __uint_as_float(a.z), __uint_as_float(a.w),
                   __uint_as_float(b.x), __uint_as_float(b.y), __uint_as_float(b.z), __uint_as_float(b.w) };
#pragma unroll
    for (int j = 0; j < 8; j++)
    {
        ss = fmaf(v[j], v[j], ss);
        fx[j] = v[j] * fn[j];
    }
}

// acc[0][r] = row o0 · x_r, acc[1][r] = row o1 · x_r over this lane's 16-byte chunks, before the warp sum.
// NORM: x is fp32 (R, in) and the product uses x ⊙ nw; acc is then scaled by each row's 1 / rms (see the header).
// FP8: w holds e4m3 codes, so a 16-byte chunk is 16 elements (two groups of 8 of x) instead of 8; acc is unscaled.
template <int R, bool NORM = false, bool FP8 = false>
__device__ __forceinline__ void gemv_two_rows(const void* __restrict__ x, const void* __restrict__ w, int in,
    long long o0, long long o1, float acc[2][R], const float* __restrict__ nw = nullptr, float eps = 0.f, int stagger = 0)
{
    constexpr int G = FP8 ? 2 : 1;   // groups of 8 elements per 16-byte weight chunk
    const int lane = threadIdx.x & 31, n8 = in >> 3, nc = n8 / G;
    const long long rowBytes = (long long)in * (FP8 ? 1 : 2);
    const uint4* w0 = reinterpret_cast<const uint4*>(reinterpret_cast<const unsigned char*>(w) + o0 * rowBytes);
    const uint4* w1 = reinterpret_cast<const uint4*>(reinterpret_cast<const unsigned char*>(w) + o1 * rowBytes);
    const uint4* xv = reinterpret_cast<const uint4*>(x);
    float ss[R];
#pragma unroll
    for (int r = 0; r < R; r++) acc[0][r] = acc[1][r] = ss[r] = 0.f;
    uint4 a[GEMV_UNROLL], b[GEMV_UNROLL];
    // Chunk c of the lane's walk is chunk at(c) of the rows: warp k starts k * stagger chunks in and wraps around.
    const int start = stagger > 0 ? (int)((long long)(blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5)) * stagger % nc) : 0;
    auto at = [&](int c) { int cs = c + start; return cs >= nc ? cs - nc : cs; };
    auto load = [&](int base)
    {
#pragma unroll
        for (int u = 0; u < GEMV_UNROLL; u++)
        {
            int c = base + u * 32;
            if (c < nc) { a[u] = ld_stream16(w0 + at(c)); b[u] = ld_stream16(w1 + at(c)); }
        }
    };
    // The weights are constant: the first batch is requested before waiting on the previous kernel, so under a
    // programmatic launch the DRAM latency of this kernel's start overlaps the previous kernel's tail.
    load(lane);
    gemv_wait();
    for (int base = lane; base < nc; base += 32 * GEMV_UNROLL)
    {
        if (base != lane) load(base);
#pragma unroll
        for (int u = 0; u < GEMV_UNROLL; u++)
        {
            int c = base + u * 32;
            if (c >= nc) break;
            c = at(c);
            float fa[8 * G], fb[8 * G];
            if constexpr (FP8) { e4m3x16_to_f32(a[u], fa); e4m3x16_to_f32(b[u], fb); }
            else { unpack8(a[u], fa); unpack8(b[u], fb); }
#pragma unroll
            for (int g = 0; g < G; g++)
            {
                const int c8 = c * G + g;   // the group of 8 elements of x
                float fn[8];
                if (NORM) load_norm8(nw, c8, fn);
#pragma unroll
                for (int r = 0; r < R; r++)
                {
                    float fx[8];
                    if (NORM) load_x8_norm(xv + (long long)r * 2 * n8 + 2 * c8, fn, fx, ss[r]);
                    else unpack8(ld_cached16(xv + (long long)r * n8 + c8), fx);
#pragma unroll
                    for (int j = 0; j < 8; j++)
                    {
                        acc[0][r] = fmaf(fa[8 * g + j], fx[j], acc[0][r]);
                        acc[1][r] = fmaf(fb[8 * g + j], fx[j], acc[1][r]);
                    }
                }
            }
        }
    }
#pragma unroll
    for (int r = 0; r < R; r++)
    {
        acc[0][r] = warp_sum(acc[0][r]);
        acc[1][r] = warp_sum(acc[1][r]);
        if (NORM)
        {
            // Every lane covered its chunks of the whole row: the warp sum is the row's full sum of squares.
            const float inv = 1.f / sqrtf(warp_sum(ss[r]) / (float)in + eps);
            acc[0][r] *= inv;
            acc[1][r] *= inv;
        }
    }
}

// An fp8 weight's row scales applied to its two rows' sums.
template <int R>
__device__ __forceinline__ void gemv_scale_rows(float acc[2][R], const float* __restrict__ scales, long long o0, long long o1)
{
    const float s0 = __ldg(scales + o0), s1 = __ldg(scales + o1);
#pragma unroll
    for (int r = 0; r < R; r++) { acc[0][r] *= s0; acc[1][r] *= s1; }
}

// FP8: w holds e4m3 codes and scales[o] multiplies row o's sums (see gemv_two_rows).
template <int R, bool PREFETCH, bool NORM = false, bool FP8 = false>
__device__ __forceinline__ void gemv_plain(const void* __restrict__ x, const void* __restrict__ w, float* y, int in, int out,
    int ldy, int accumulate, const float* __restrict__ nw = nullptr, float eps = 0.f, const float* __restrict__ scales = nullptr)
{
    const int warp = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5), lane = threadIdx.x & 31;
#if GEMV_PAIR_SPLIT
    const long long halfo = (out + 1) / 2, o0 = warp, o1 = warp + halfo;
    if (o0 >= halfo) return;
    const bool has1 = o1 < out;
#else
    const long long o0 = 2LL * warp, o1 = o0 + 1;
    if (o0 >= out) return;
    const bool has1 = o1 < out;
#endif
    if constexpr (!FP8) gemv_prefetch(static_cast<const bf16_t*>(w), in, o0, has1 ? o1 : o0, PREFETCH);
    float acc[2][R];
    gemv_two_rows<R, NORM, FP8>(x, w, in, o0, has1 ? o1 : o0, acc, nw, eps);
    if constexpr (FP8) gemv_scale_rows<R>(acc, scales, o0, has1 ? o1 : o0);
    // Lane r writes row r of the first output, lane 8 + r of the second: one store per lane, no serial loop.
#pragma unroll
    for (int r = 0; r < R; r++)
    {
        if (lane == r)
        {
            float* p = y + (long long)r * ldy + o0;
            *p = acc[0][r] + (accumulate ? *p : 0.f);
        }
        if (has1 && lane == 8 + r)
        {
            float* p = y + (long long)r * ldy + o1;
            *p = acc[1][r] + (accumulate ? *p : 0.f);
        }
    }
}

template <int R, bool PREFETCH, bool NORM = false, bool FP8 = false>
__device__ __forceinline__ void gemv_silu(const void* __restrict__ x, const void* __restrict__ w, bf16_t* out, int in, int inter,
    const float* __restrict__ nw = nullptr, float eps = 0.f, const float* __restrict__ scales = nullptr)
{
    const int o = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (o >= inter) return;
    if constexpr (!FP8) gemv_prefetch(static_cast<const bf16_t*>(w), in, o, (long long)o + inter, PREFETCH);
    float acc[2][R];
    gemv_two_rows<R, NORM, FP8>(x, w, in, o, (long long)o + inter, acc, nw, eps, GEMV_SILU_STAGGER);
    if constexpr (FP8) gemv_scale_rows<R>(acc, scales, o, (long long)o + inter);
#pragma unroll
    for (int r = 0; r < R; r++)
        if (lane == r)
        {
            float g = acc[0][r];
            out[(long long)r * inter + o] = f32_to_bf16(silu_f32(g) * acc[1][r]);
        }
}

// gemv_*_r{R}: no L2 prefetch; gemv_*_pf_r{R}: with the L2 prefetch of the rows' first bytes before pdl_wait.
#define GEMV_ENTRIES(R) \
    extern "C" __global__ void __launch_bounds__(32 * GEMV_WARPS) gemv_bf16_r##R(const bf16_t* __restrict__ x, const bf16_t* __restrict__ w, \
        float* y, int in, int out, int ldy, int accumulate) { gemv_plain<R, false>(x, w, y, in, out, ldy, accumulate); } \
    extern "C" __global__ void __launch_bounds__(32 * GEMV_WARPS) gemv_bf16_pf_r##R(const bf16_t* __restrict__ x, const bf16_t* __restrict__ w, \
        float* y, int in, int out, int ldy, int accumulate) { gemv_plain<R, true>(x, w, y, in, out, ldy, accumulate); } \
    extern "C" __global__ void __launch_bounds__(32 * GEMV_WARPS) gemv_silu_bf16_r##R(const bf16_t* __restrict__ x, const bf16_t* __restrict__ w, \
        bf16_t* out, int in, int inter) { gemv_silu<R, false>(x, w, out, in, inter); } \
    extern "C" __global__ void __launch_bounds__(32 * GEMV_WARPS) gemv_silu_bf16_pf_r##R(const bf16_t* __restrict__ x, const bf16_t* __restrict__ w, \
        bf16_t* out, int in, int inter) { gemv_silu<R, true>(x, w, out, in, inter); }

GEMV_ENTRIES(1)
GEMV_ENTRIES(2)
GEMV_ENTRIES(3)
GEMV_ENTRIES(4)
GEMV_ENTRIES(5)
GEMV_ENTRIES(6)
GEMV_ENTRIES(7)
GEMV_ENTRIES(8)

// RMSNorm folded in: x fp32 (R, in), nw fp32 (in). Same grids as the plain entries.
#define GEMV_RMS_ENTRIES(R) \
    extern "C" __global__ void __launch_bounds__(32 * GEMV_WARPS) gemv_rms_bf16_r##R(const float* __restrict__ x, const float* __restrict__ nw, \
        float eps, const bf16_t* __restrict__ w, float* y, int in, int out, int ldy, int accumulate) \
        { gemv_plain<R, false, true>(x, w, y, in, out, ldy, accumulate, nw, eps); } \
    extern "C" __global__ void __launch_bounds__(32 * GEMV_WARPS) gemv_rms_silu_bf16_r##R(const float* __restrict__ x, const float* __restrict__ nw, \
        float eps, const bf16_t* __restrict__ w, bf16_t* out, int in, int inter) \
        { gemv_silu<R, false, true>(x, w, out, in, inter, nw, eps); }

GEMV_RMS_ENTRIES(1)
GEMV_RMS_ENTRIES(2)
GEMV_RMS_ENTRIES(3)
GEMV_RMS_ENTRIES(4)

// fp8 e4m3 weights with one fp32 scale per row (no L2-prefetch variant). Same grids as the bf16 entries. No RMSNorm
// folding: a folding warp reads 8 bytes of fp32 x and norm weight per element, which at 16 elements per 16-byte weight
// load outruns L1; folded forms were timed slower than the norm kernel first (CudaBackend.NormThenLinear).
#define GEMV_E4M3_ENTRIES(R) \
    extern "C" __global__ void __launch_bounds__(32 * GEMV_WARPS) gemv_e4m3_r##R(const bf16_t* __restrict__ x, const unsigned char* __restrict__ w, \
        const float* __restrict__ scales, float* y, int in, int out, int ldy, int accumulate) \
        { gemv_plain<R, false, false, true>(x, w, y, in, out, ldy, accumulate, nullptr, 0.f, scales); } \
    extern "C" __global__ void __launch_bounds__(32 * GEMV_WARPS) gemv_silu_e4m3_r##R(const bf16_t* __restrict__ x, const unsigned char* __restrict__ w, \
        const float* __restrict__ scales, bf16_t* out, int in, int inter) \
        { gemv_silu<R, false, false, true>(x, w, out, in, inter, nullptr, 0.f, scales); }
GEMV_E4M3_ENTRIES(1)
GEMV_E4M3_ENTRIES(2)
GEMV_E4M3_ENTRIES(3)
GEMV_E4M3_ENTRIES(4)
GEMV_E4M3_ENTRIES(5)
GEMV_E4M3_ENTRIES(6)
GEMV_E4M3_ENTRIES(7)
GEMV_E4M3_ENTRIES(8)

// Fallback: any in, any alignment; one weight row per warp, rows (1..8) at run time.
__device__ __forceinline__ void gemv_row_any(const bf16_t* x, const bf16_t* wr, int in, int rows, float acc[8])
{
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int r = 0; r < 8; r++) acc[r] = 0.f;
    for (int i = lane; i < in; i += 32)
    {
        float wv = bf16_to_f32(wr[i]);
#pragma unroll
        for (int r = 0; r < 8; r++)
            if (r < rows) acc[r] = fmaf(wv, bf16_to_f32(x[(long long)r * in + i]), acc[r]);
    }
#pragma unroll
    for (int r = 0; r < 8; r++) acc[r] = warp_sum(acc[r]);
}

// The same with the RMSNorm folded in: x fp32 (rows 1..4, in), scaled by each row's 1 / rms after the warp sum.
__device__ __forceinline__ void gemv_row_any_rms(const float* x, const float* nw, float eps, const bf16_t* wr, int in, int rows, float acc[4])
{
    const int lane = threadIdx.x & 31;
    float ss[4];
#pragma unroll
    for (int r = 0; r < 4; r++) acc[r] = ss[r] = 0.f;
    for (int i = lane; i < in; i += 32)
    {
        float wv = bf16_to_f32(wr[i]), n = nw[i];
#pragma unroll
        for (int r = 0; r < 4; r++)
            if (r < rows)
            {
                float v = x[(long long)r * in + i];
                ss[r] = fmaf(v, v, ss[r]);
                acc[r] = fmaf(wv, v * n, acc[r]);
            }
    }
#pragma unroll
    for (int r = 0; r < 4; r++) acc[r] = warp_sum(acc[r]) * (1.f / sqrtf(warp_sum(ss[r]) / (float)in + eps));
}

extern "C" __global__ void gemv_rms_bf16_any(const float* x, const float* nw, float eps, const bf16_t* w, float* y, int rows, int in, int out,
    int ldy, int accumulate)
{
    const int o = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (o >= out) return;
    gemv_wait();
    float acc[4];
    gemv_row_any_rms(x, nw, eps, w + (long long)o * in, in, rows, acc);
#pragma unroll
    for (int r = 0; r < 4; r++)
        if (r < rows && lane == r)
        {
            float* p = y + (long long)r * ldy + o;
            *p = acc[r] + (accumulate ? *p : 0.f);
        }
}

extern "C" __global__ void gemv_rms_silu_bf16_any(const float* x, const float* nw, float eps, const bf16_t* w, bf16_t* out, int rows, int in, int inter)
{
    const int o = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (o >= inter) return;
    gemv_wait();
    float g[4], u[4];
    gemv_row_any_rms(x, nw, eps, w + (long long)o * in, in, rows, g);
    gemv_row_any_rms(x, nw, eps, w + ((long long)o + inter) * in, in, rows, u);
#pragma unroll
    for (int r = 0; r < 4; r++)
        if (r < rows && lane == r) out[(long long)r * inter + o] = f32_to_bf16(silu_f32(g[r]) * u[r]);
}

extern "C" __global__ void gemv_bf16_any(const bf16_t* x, const bf16_t* w, float* y, int rows, int in, int out, int ldy, int accumulate)
{
    const int o = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (o >= out) return;
    gemv_wait();
    float acc[8];
    gemv_row_any(x, w + (long long)o * in, in, rows, acc);
#pragma unroll
    for (int r = 0; r < 8; r++)
        if (r < rows && lane == r)
        {
            float* p = y + (long long)r * ldy + o;
            *p = acc[r] + (accumulate ? *p : 0.f);
        }
}

extern "C" __global__ void gemv_silu_bf16_any(const bf16_t* x, const bf16_t* w, bf16_t* out, int rows, int in, int inter)
{
    const int o = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (o >= inter) return;
    gemv_wait();
    float g[8], u[8];
    gemv_row_any(x, w + (long long)o * in, in, rows, g);
    gemv_row_any(x, w + ((long long)o + inter) * in, in, rows, u);
#pragma unroll
    for (int r = 0; r < 8; r++)
        if (r < rows && lane == r) out[(long long)r * inter + o] = f32_to_bf16(silu_f32(g[r]) * u[r]);
}
