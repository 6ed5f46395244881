// Shared helpers for the SwiftKV kernels: bf16 storage as raw 16-bit words (no cuda_bf16.h, so NVRTC needs no
// toolkit headers and compiles fast), and deterministic block reductions. Included by every native-kernels/*.cu.
#pragma once

typedef unsigned short bf16_t;

#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif

__device__ __forceinline__ float bf16_to_f32(bf16_t b) { return __uint_as_float(((unsigned)b) << 16); }

// Round to nearest even; NaN stays a (quiet) NaN.
__device__ __forceinline__ bf16_t f32_to_bf16(float f)
{
    unsigned u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16_t)((u >> 16) | 0x40u);
    return (bf16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// Sums over a warp / a block, in float or double (the distillation trainer's loss sums).
template <typename T>
__device__ __forceinline__ T warp_sum(T v)
{
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Block-wide sum; blockDim.x must be a multiple of 32 and shm hold 32 values. Every thread gets the result,
// summed in the same order, so the value does not depend on which thread reads it.
template <typename T>
__device__ __forceinline__ T block_sum(T v, T* shm)
{
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) shm[warp] = v;
    __syncthreads();
    T r = 0;
    for (int i = 0; i < warps; i++) r += shm[i];
    return r;
}

__device__ __forceinline__ float block_max(float v, float* shm)
{
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) shm[warp] = v;
    __syncthreads();
    float r = -INFINITY;
    for (int i = 0; i < warps; i++) r = fmaxf(r, shm[i]);
    return r;
}

__device__ __forceinline__ unsigned bf16x2_of(float lo, float hi)
{
    return (unsigned)f32_to_bf16(lo) | ((unsigned)f32_to_bf16(hi) << 16);
}

// RMSNorm of one fp32 row in whole float4s (dim % 4 == 0; row, bias and weight 16-byte aligned), in Hugging Face's
// order. rms_row_inv adds bias into the row in place (when given) and returns 1 / sqrt(mean(x^2) + eps) to every
// thread; rms_row_bf16x4 is four outputs x · inv · weight as bf16. rms_norm_f32 and rms_norm_quantize_e4m3 both call
// these, so the W8A8 route's fused pass quantizes the very bf16 values the norm kernel writes.
__device__ __forceinline__ float rms_row_inv(float4* row4, const float4* b4, int dim, float eps, float* red)
{
    float ss = 0.f;
    for (int c = threadIdx.x; c < dim / 4; c += blockDim.x)
    {
        float4 v = row4[c];
        if (b4 != nullptr)
        {
            const float4 b = b4[c];
            v.x += b.x; v.y += b.y; v.z += b.z; v.w += b.w;
            row4[c] = v;
        }
        ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
    }
    ss = block_sum(ss, red);
    return 1.f / sqrtf(ss / (float)dim + eps);
}

__device__ __forceinline__ uint2 rms_row_bf16x4(float4 v, float4 w, float inv)
{
    return make_uint2(bf16x2_of(v.x * inv * w.x, v.y * inv * w.y), bf16x2_of(v.z * inv * w.z, v.w * inv * w.w));
}

// Programmatic dependent launch (sm_90+; no-ops below and when the launch was not programmatic). A kernel that the
// host launches programmatically (CudaKernel.Launch(programmatic: true)) may start while the previous kernel on the
// stream still runs: it must call pdl_wait() before reading or writing anything an earlier kernel touches. Work
// that reads only constant data (weights) may go before it. pdl_launch_dependents() lets the next kernel start
// early once every block of this one has called it (or exited).
__device__ __forceinline__ void pdl_wait()
{
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_launch_dependents()
{
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

#if __CUDA_ARCH__ >= 900
// Thread-block clusters (sm_90+): this CTA's rank in its cluster, a barrier over every thread of the cluster (release /
// acquire: shared-memory writes before it are visible to the other CTAs after it), and a load from the same shared
// variable in the CTA of another rank (distributed shared memory).
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

__device__ __forceinline__ float cluster_load(const float* shared_var, unsigned rank)
{
    unsigned local = (unsigned)__cvta_generic_to_shared(shared_var), remote;
    float v;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(local), "r"(rank));
    asm volatile("ld.shared::cluster.f32 %0, [%1];" : "=f"(v) : "r"(remote) : "memory");
    return v;
}
#endif

// RoPE, rotate-half layout: the pair (a, b) = dims (i, i + head_dim/2) of one head turned by angle inv_freq_i * pos
// (one fp32 multiply, as PyTorch computes it). The one definition every kernel that rotates uses.
__device__ __forceinline__ void rope_pair(float& a, float& b, float inv_freq_i, float pos)
{
    float s, co;
    sincosf(inv_freq_i * pos, &s, &co);
    const float ra = a * co - b * s, rb = b * co + a * s;
    a = ra;
    b = rb;
}

// The (head, pair) units of one row are spread over the blocks of the grid's y dimension (gridDim.y = 1 gives one
// block per row): a decode step's single row then runs on many blocks at once instead of one block walking 2,000+
// units in dependent load -> sincos -> store rounds (13.6 us per layer under ncu at 1 row, on the critical path).
__device__ __forceinline__ int row_unit_first() { return blockIdx.y * blockDim.x + threadIdx.x; }
__device__ __forceinline__ int row_unit_stride() { return gridDim.y * blockDim.x; }

// Unit idx = (head, pair) of a row of heads: bias, then RoPE in place.
__device__ __forceinline__ void rope_unit(float* row, const float* bias, const float* inv_freq, int idx, int head_dim, float pos)
{
    const int half = head_dim / 2, h = idx / half, i = idx % half, c = h * head_dim + i;
    float a = row[c], b = row[c + half];
    if (bias != nullptr) { a += bias[c]; b += bias[c + half]; }
    rope_pair(a, b, inv_freq[i], pos);
    row[c] = a;
    row[c + half] = b;
}

// Bias + RoPE in place on one row of `heads` heads (bias may be null), over this block's units of the row.
__device__ __forceinline__ void rope_row(float* row, const float* bias, const float* inv_freq, int heads, int head_dim, float pos)
{
    for (int idx = row_unit_first(); idx < heads * (head_dim / 2); idx += row_unit_stride())
        rope_unit(row, bias, inv_freq, idx, head_dim, pos);
}

// Unit idx = (KV head, pair) of one row: K (bias, then RoPE unless inv_freq is null) and V (bias) stored as bf16
// at kc / vc (kv_heads x head_dim).
__device__ __forceinline__ void kv_unit_to_bf16(const float* kr, const float* vr, const float* k_bias, const float* v_bias,
    const float* inv_freq, int idx, int head_dim, float pos, bf16_t* kc, bf16_t* vc)
{
    const int half = head_dim / 2, h = idx / half, i = idx % half, c = h * head_dim + i;
    float a = kr[c], b = kr[c + half], va = vr[c], vb = vr[c + half];
    if (k_bias != nullptr) { a += k_bias[c]; b += k_bias[c + half]; }
    if (v_bias != nullptr) { va += v_bias[c]; vb += v_bias[c + half]; }
    if (inv_freq != nullptr) rope_pair(a, b, inv_freq[i], pos);
    kc[c] = f32_to_bf16(a);
    kc[c + half] = f32_to_bf16(b);
    vc[c] = f32_to_bf16(va);
    vc[c + half] = f32_to_bf16(vb);
}

// One pass over a fused [q | k | v] row (q_dim = heads x head_dim columns of q, then K, then V, kv_dim each): units
// below q_units are q pairs, bias + RoPE in place (rope_unit); the kv_units after them K/V pairs stored as bf16 at
// kc / vc (kv_unit_to_bf16); kv_units 0 rotates q only. One index space over both, so each thread has one unit when
// the launcher gives the row enough blocks. The loop of rope_kv.cu's and attention_kv_write.cu's one-launch kernels.
__device__ __forceinline__ void qkv_row_units(float* row, const float* q_bias, const float* k_bias, const float* v_bias,
    const float* inv_freq, int q_units, int kv_units, int q_dim, int kv_dim, int head_dim, float pos, bf16_t* kc, bf16_t* vc)
{
    const float* kr = row + q_dim;
    for (int idx = row_unit_first(); idx < q_units + kv_units; idx += row_unit_stride())
    {
        if (idx >= q_units) kv_unit_to_bf16(kr, kr + kv_dim, k_bias, v_bias, inv_freq, idx - q_units, head_dim, pos, kc, vc);
        else rope_unit(row, q_bias, inv_freq, idx, head_dim, pos);
    }
}

// One row's K and V stored as bf16 (kv_unit_to_bf16), over this block's units of the row.
__device__ __forceinline__ void kv_row_to_bf16(const float* kr, const float* vr, const float* k_bias, const float* v_bias,
    const float* inv_freq, int kv_heads, int head_dim, float pos, bf16_t* kc, bf16_t* vc)
{
    for (int idx = row_unit_first(); idx < kv_heads * (head_dim / 2); idx += row_unit_stride())
        kv_unit_to_bf16(kr, vr, k_bias, v_bias, inv_freq, idx, head_dim, pos, kc, vc);
}

// SwiGLU on 8 bf16 columns: bf16(silu(g) · u) for the 8 gates of g and ups of u, in fp32 (silu_mul_bf16 and the
// W8A8 route's fused silu + quantize pass, activation_fp8.cu, so both write the same values).
// silu(g) = g / (1 + e^-g), as every forward kernel forms it: with the fast exp and division, accurate to a few ulp of
// fp32, far below the bf16 rounding of every output it feeds, and about 5x fewer instructions than expf + IEEE division
// (the W8A8 SwiGLU + quantize pass took 10-21% less time with it, 2K-row 8B to 70B shapes; gemm_swiglu.cu's epilogue stalls the tensor cores
// for its length). For g < -88, e^-g = inf and __fdividef gives 0, as silu does; a NaN stays NaN.
__device__ __forceinline__ float silu_f32(float g) { return __fdividef(g, 1.f + __expf(-g)); }

__device__ __forceinline__ uint4 silu_mul_bf16x8(uint4 gv, uint4 uv)
{
    const unsigned gw[4] = { gv.x, gv.y, gv.z, gv.w }, uw[4] = { uv.x, uv.y, uv.z, uv.w };
    unsigned ow[4];
#pragma unroll
    for (int k = 0; k < 4; k++)
    {
        float g0 = __uint_as_float(gw[k] << 16), g1 = __uint_as_float(gw[k] & 0xffff0000u);
        float u0 = __uint_as_float(uw[k] << 16), u1 = __uint_as_float(uw[k] & 0xffff0000u);
        unsigned lo = f32_to_bf16(silu_f32(g0) * u0), hi = f32_to_bf16(silu_f32(g1) * u1);
        ow[k] = lo | (hi << 16);
    }
    return make_uint4(ow[0], ow[1], ow[2], ow[3]);
}

// Shared-memory addresses and 16-byte cp.async (sm_80+): the attention kernels' tiles, the e4m3 rows GEMM's rings.
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

// d (16x8 fp32) += a (16x16 bf16, row) * b (16x8 bf16, col): one warp's mma.sync m16n8k16 (sm_80+).
__device__ __forceinline__ void mma_bf16(float* d, const unsigned* a, unsigned b0, unsigned b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// 16 bytes of weights read once: not kept in L1 (ld.global.nc.L1::no_allocate), so the small activation rows stay there.
__device__ __forceinline__ uint4 ld_stream16(const void* p)
{
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0,%1,%2,%3}, [%4];"
        : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    return v;
}

// Two e4m3 bytes of u -> bf16x2, exact and unscaled (the fp8 KV cache applies its per-key scale to S and P instead,
// the fp8 GEMV its per-row scale to the sum). `sel` is the __byte_perm selector that puts them in the high byte of each 16-bit lane ([0, lo, 0, hi]); there e4m3's exponent
// and mantissa sit where bf16's are, which is the value times 2^-120 (exponent bias 7 vs 127, subnormals included),
// and one exact bf16x2 multiply by 2^120 (fma with -0 so that -0 stays -0) restores it: 4 instructions for two
// elements, where going through fp32 (decode, scale, round to bf16) took about 14.
__device__ __forceinline__ unsigned e4m3x2_to_bf16x2(unsigned u, unsigned sel)
{
    const unsigned x = __byte_perm(u, 0u, sel);
    const unsigned t = (x & 0x80008000u) | ((x >> 4) & 0x07f007f0u);
    unsigned r;
    asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(r) : "r"(t), "r"(0x7b807b80u), "r"(0x80008000u));
    return r;
}

// The 16 e4m3 codes of a 16-byte word as fp32, exactly: two codes at a time through f16x2 (every e4m3 value is an f16
// value). Element 4k + j is byte j of word k. sm_89+ converts in hardware; older GPUs through the
// exact bf16 bit placement of e4m3x2_to_bf16x2 above.
__device__ __forceinline__ void e4m3x16_to_f32(uint4 v, float f[16])
{
    const unsigned wd[4] = { v.x, v.y, v.z, v.w };
#pragma unroll
    for (int k = 0; k < 4; k++)
    {
#if __CUDA_ARCH__ >= 890
        unsigned lo, hi;
        asm("{\n\t.reg .b16 a, b;\n\tmov.b32 {a, b}, %2;\n\t"
            "cvt.rn.f16x2.e4m3x2 %0, a;\n\tcvt.rn.f16x2.e4m3x2 %1, b;\n\t}" : "=r"(lo), "=r"(hi) : "r"(wd[k]));
        float a0, a1, b0, b1;
        asm("{\n\t.reg .f16 l, h;\n\tmov.b32 {l, h}, %2;\n\tcvt.f32.f16 %0, l;\n\tcvt.f32.f16 %1, h;\n\t}" : "=f"(a0), "=f"(a1) : "r"(lo));
        asm("{\n\t.reg .f16 l, h;\n\tmov.b32 {l, h}, %2;\n\tcvt.f32.f16 %0, l;\n\tcvt.f32.f16 %1, h;\n\t}" : "=f"(b0), "=f"(b1) : "r"(hi));
        f[4 * k] = a0; f[4 * k + 1] = a1; f[4 * k + 2] = b0; f[4 * k + 3] = b1;
#else
        unsigned lo = e4m3x2_to_bf16x2(wd[k], 0x1404u), hi = e4m3x2_to_bf16x2(wd[k], 0x3424u);
        f[4 * k] = __uint_as_float(lo << 16); f[4 * k + 1] = __uint_as_float(lo & 0xffff0000u);
        f[4 * k + 2] = __uint_as_float(hi << 16); f[4 * k + 3] = __uint_as_float(hi & 0xffff0000u);
#endif
    }
}
