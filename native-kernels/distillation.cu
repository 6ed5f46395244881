// SwiftKV distillation on the GPU (SwiftKV.Engine/Distillation/CudaDistillationTrainer): the fp32 passes around the
// cuBLAS GEMMs of the teacher/student forward, the backward through the student's later layers, the T²·KL loss and
// Adam. Every array is fp32, row-major (rows, features), as the CPU trainer (TrainingKernels) computes it; the GPU
// trainer is checked against that trainer and against PyTorch autograd. Reductions run in a fixed order inside one
// block (no atomics on values), so a run gives the same bits every time on one GPU.
#include "swiftkv_common.cuh"

// y = w ⊙ x·r, r = 1/sqrt(mean(x²) + eps), per row; r is also stored when rstd != null (the backward reuses it).
// Launch: grid (rows), block 256.
extern "C" __global__ void rms_norm_fwd_f32(const float* x, const float* w, float* y, float* rstd, int dim, float eps)
{
    __shared__ float red[32];
    const float* xr = x + (long long)blockIdx.x * dim;
    float* yr = y + (long long)blockIdx.x * dim;
    float ss = 0.f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) ss += xr[i] * xr[i];
    float r = 1.f / sqrtf(block_sum(ss, red) / dim + eps);
    if (rstd != nullptr && threadIdx.x == 0) rstd[blockIdx.x] = r;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) yr[i] = w[i] * (xr[i] * r);
}

// The input's gradient of the norm above, ADDED to dx: dx += r·(g − x̂·mean(g ⊙ x̂)), g = w ⊙ dy, x̂ = x·r.
// Launch: grid (rows), block 256.
extern "C" __global__ void rms_norm_bwd_dx_f32(const float* x, const float* w, const float* dy, float* dx, int dim, float eps)
{
    __shared__ float red[32];
    long long off = (long long)blockIdx.x * dim;
    const float* xr = x + off;
    const float* dyr = dy + off;
    float ss = 0.f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) ss += xr[i] * xr[i];
    float r = 1.f / sqrtf(block_sum(ss, red) / dim + eps);
    float dot = 0.f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) dot += w[i] * dyr[i] * (xr[i] * r);
    float mean = block_sum(dot, red) / dim;
    float* dxr = dx + off;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) dxr[i] += r * (w[i] * dyr[i] - xr[i] * r * mean);
}

// Column sums in two passes, for a weight's gradient that sums over tokens (a norm's weight: Σ_t dy·x·r_t; a bias:
// Σ_t dy). Pass 1: partial[c, i] = Σ over rows [c·chunk, (c+1)·chunk) of a[t, i] · (b ? b[t, i] : 1) · (s ? s[t] : 1).
// Launch: grid (ceil(dim / 256), chunks), block 256.
extern "C" __global__ void column_partial_f32(const float* a, const float* b, const float* s, int rows, int dim, int chunk, float* partial)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= dim) return;
    int t0 = blockIdx.y * chunk, t1 = min(rows, t0 + chunk);
    float acc = 0.f;
    for (int t = t0; t < t1; t++)
    {
        long long at = (long long)t * dim + i;
        float v = a[at];
        if (b != nullptr) v *= b[at];
        if (s != nullptr) v *= s[t];
        acc += v;
    }
    partial[(long long)blockIdx.y * dim + i] = acc;
}

// Pass 2: out[i] += Σ_c partial[c, i], chunks in order. Launch: grid (ceil(dim / 256)), block 256.
extern "C" __global__ void column_finish_f32(const float* partial, int chunks, int dim, float* out)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= dim) return;
    float acc = 0.f;
    for (int c = 0; c < chunks; c++) acc += partial[(long long)c * dim + i];
    out[i] += acc;
}

// y (rows, dim) += b (dim). Launch: grid (ceil(dim / 256), rows), block 256.
extern "C" __global__ void add_bias_f32(float* y, const float* b, int dim)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < dim) y[(long long)blockIdx.y * dim + i] += b[i];
}

// y[i] += x[i]. Launch: grid (ceil(n / 256)), block 256.
extern "C" __global__ void add_f32(float* y, const float* x, long long n)
{
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] += x[i];
}

// RoPE in Hugging Face's rotate-half layout on (rows, heads · head_dim), row t at position positions[t] (several
// sequences packed into one pass each start at 0), from host-made (positions, head_dim / 2)
// cos/sin tables (the CPU's own angles, so both rotate alike). inverse != 0 rotates by the opposite angle: the
// rotation's transpose, which is RoPE's gradient. Launch: grid (rows, heads), block head_dim / 2.
extern "C" __global__ void rope_f32(float* x, int heads, int head_dim, const float* cos_t, const float* sin_t, int inverse, const int* positions)
{
    int half = head_dim >> 1, i = threadIdx.x, t = blockIdx.x;
    if (i >= half) return;
    float* h = x + ((long long)t * heads + blockIdx.y) * head_dim;
    long long p = positions[t];
    float c = cos_t[p * half + i], s = sin_t[p * half + i];
    if (inverse) s = -s;
    float a = h[i], b = h[i + half];
    h[i] = a * c - b * s;
    h[i + half] = b * c + a * s;
}

// m = silu(gate) ⊙ up. Launch: grid (ceil(n / 256)), block 256.
extern "C" __global__ void silu_mul_fwd_f32(const float* gate, const float* up, float* m, long long n)
{
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float g = gate[i];
    m[i] = g / (1.f + expf(-g)) * up[i];
}

// Its gradients, written: d_up = dm ⊙ silu(gate), d_gate = dm ⊙ up ⊙ σ(gate)·(1 + gate·(1 − σ(gate))).
// Launch: grid (ceil(n / 256)), block 256.
extern "C" __global__ void silu_mul_bwd_f32(const float* gate, const float* up, const float* dm, float* d_gate, float* d_up, long long n)
{
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float x = gate[i], sig = 1.f / (1.f + expf(-x));
    d_up[i] = dm[i] * x * sig;
    d_gate[i] = dm[i] * up[i] * sig * (1.f + x * (1.f - sig));
}

// Causal softmax of attention scores in place: s (heads, rows, rows), row t of a head keeps keys 0..t:
// p = softmax(s · scale) there and 0 beyond. Launch: grid (rows, heads), block 256.
extern "C" __global__ void causal_softmax_f32(float* s, int rows, float scale)
{
    __shared__ float red[32];
    int t = blockIdx.x, len = t + 1;
    float* row = s + ((long long)blockIdx.y * rows + t) * rows;
    float m = -INFINITY;
    for (int k = threadIdx.x; k < len; k += blockDim.x) m = fmaxf(m, row[k] * scale);
    m = block_max(m, red);
    float sum = 0.f;
    for (int k = threadIdx.x; k < len; k += blockDim.x)
    {
        float e = expf(row[k] * scale - m);
        row[k] = e;
        sum += e;
    }
    float inv = 1.f / block_sum(sum, red);
    for (int k = threadIdx.x; k < rows; k += blockDim.x) row[k] = k < len ? row[k] * inv : 0.f;
}

// Softmax's backward in place: dp (heads, rows, rows) holds dO·Vᵀ and becomes dS = p ⊙ (dp − Σ_k p·dp) · scale on keys
// 0..t (0 beyond), the gradient of the scores before scaling. Launch: grid (rows, heads), block 256.
extern "C" __global__ void causal_softmax_bwd_f32(const float* p, float* dp, int rows, float scale)
{
    __shared__ float red[32];
    int t = blockIdx.x, len = t + 1;
    long long off = ((long long)blockIdx.y * rows + t) * rows;
    const float* pr = p + off;
    float* dr = dp + off;
    float dot = 0.f;
    for (int k = threadIdx.x; k < len; k += blockDim.x) dot += pr[k] * dr[k];
    dot = block_sum(dot, red);
    for (int k = threadIdx.x; k < rows; k += blockDim.x) dr[k] = k < len ? pr[k] * (dr[k] - dot) * scale : 0.f;
}

// x[index[r]] += y (n, dim) (indices distinct). Launch: grid (n), block 256.
extern "C" __global__ void scatter_add_rows_f32(const float* y, const int* index, int dim, float* x)
{
    const float* src = y + (long long)blockIdx.x * dim;
    float* dst = x + (long long)index[blockIdx.x] * dim;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) dst[i] += src[i];
}

// Index of the largest value, the first on ties (as TensorPrimitives.IndexOfMax). Every thread gets the result.
__device__ int block_argmax(const float* z, int n, float* shm_v, int* shm_i)
{
    // Starting at index 0 keeps the answer inside the row when no value compares (a row of NaNs).
    float best = -INFINITY;
    int at = 0;
    for (int k = threadIdx.x; k < n; k += blockDim.x)
        if (z[k] > best || (z[k] == best && k < at)) { best = z[k]; at = k; }
    for (int o = 16; o > 0; o >>= 1)
    {
        float ov = __shfl_xor_sync(0xffffffffu, best, o);
        int oi = __shfl_xor_sync(0xffffffffu, at, o);
        if (ov > best || (ov == best && oi < at)) { best = ov; at = oi; }
    }
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    __syncthreads();
    if (lane == 0) { shm_v[warp] = best; shm_i[warp] = at; }
    __syncthreads();
    best = -INFINITY; at = 0;
    for (int w = 0; w < warps; w++)
        if (shm_v[w] > best || (shm_v[w] == best && shm_i[w] < at)) { best = shm_v[w]; at = shm_i[w]; }
    return at;
}

// The loss of one logit row per block: zt, zs (n, vocab) teacher and student logits. loss[r] = T²·KL(p_t || p_s)
// with p = softmax(z / T); agree[r] = 1 when both logits' argmax agree. When grad_scale != 0, zs is overwritten with
// d/dz_s of grad_scale · loss = grad_scale · T · (p_s − p_t). Launch: grid (n), block 1024.
extern "C" __global__ void kl_rows_f32(const float* zt, float* zs, int vocab, float temperature, float grad_scale, double* loss, int* agree)
{
    __shared__ float red[32];
    __shared__ int red_i[32];
    __shared__ double red_d[32];
    long long off = (long long)blockIdx.x * vocab;
    const float* t = zt + off;
    float* s = zs + off;
    int at_t = block_argmax(t, vocab, red, red_i);
    int at_s = block_argmax(s, vocab, red, red_i);
    float inv_t = 1.f / temperature;
    float mt = t[at_t] * inv_t, ms = s[at_s] * inv_t;
    float st = 0.f, ss = 0.f;
    for (int k = threadIdx.x; k < vocab; k += blockDim.x)
    {
        st += expf(t[k] * inv_t - mt);
        ss += expf(s[k] * inv_t - ms);
    }
    float lt = logf(block_sum(st, red)), ls = logf(block_sum(ss, red));
    // log p_t − log p_s = (t − s)/T − (mt + lt) + (ms + ls): exact in the log domain, so a p_s that underflows still
    // counts (the CPU holds it at the smallest normal float instead; both are far below the tolerance that matters).
    double kl = 0;
    for (int k = threadIdx.x; k < vocab; k += blockDim.x)
    {
        float lpt = t[k] * inv_t - mt - lt, lps = s[k] * inv_t - ms - ls;
        float pt = expf(lpt);
        kl += (double)pt * (double)(lpt - lps);
        if (grad_scale != 0.f) s[k] = grad_scale * temperature * (expf(lps) - pt);
    }
    kl = block_sum(kl, red_d);
    if (threadIdx.x == 0)
    {
        loss[blockIdx.x] = (double)temperature * temperature * kl;
        agree[blockIdx.x] = at_t == at_s ? 1 : 0;
    }
}

// The hidden-state term on gathered rows: loss[r] = weight · mean_i (hs − ht)²; when d != null, d (n, dim) is written
// with grad_scale · weight · 2 · (hs − ht) / dim. Launch: grid (n), block 256.
extern "C" __global__ void mse_rows_f32(const float* ht, const float* hs, int dim, float weight, float grad_scale, float* d, double* loss)
{
    __shared__ double red_d[32];
    long long off = (long long)blockIdx.x * dim;
    double acc = 0;
    for (int i = threadIdx.x; i < dim; i += blockDim.x)
    {
        float diff = hs[off + i] - ht[off + i];
        acc += (double)diff * diff;
        if (d != nullptr) d[off + i] = diff * (2.f * weight * grad_scale / dim);
    }
    acc = block_sum(acc, red_d);
    if (threadIdx.x == 0) loss[blockIdx.x] = weight * acc / dim;
}

// Adam as torch.optim.Adam (no weight decay): m = β1·m + (1 − β1)·g, v = β2·v + (1 − β2)·g², p −= lr_c1 · m /
// (sqrt(v) / c2_sqrt + eps) with lr_c1 = lr / (1 − β1^t), c2_sqrt = sqrt(1 − β2^t); the update in double, as the CPU's.
// Launch: grid (ceil(n / 256)), block 256.
extern "C" __global__ void adam_f32(float* p, const float* g, float* m, float* v, long long n, float beta1, float beta2, float eps,
    double lr_c1, double c2_sqrt)
{
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float gi = g[i];
    float mi = beta1 * m[i] + (1.f - beta1) * gi;
    float vi = beta2 * v[i] + (1.f - beta2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    p[i] -= (float)(lr_c1 * mi / (sqrt((double)vi) / c2_sqrt + eps));
}

// flags[slot] = 1 when x (n) holds a NaN or an infinity (flags zeroed by the caller). Launch: grid (ceil(n / 256)), block 256.
extern "C" __global__ void find_nonfinite_f32(const float* x, long long n, int* flags, int slot)
{
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n && !isfinite(x[i])) flags[slot] = 1;
}

// w (n) = the bf16 values b widened to fp32 (exact): a frozen matrix held in bf16, just before a GEMM reads it. Eight
// values a thread, in 16-byte loads and two 16-byte stores where both pointers allow (a whole matrix does), one at a
// time otherwise. Launch: grid (ceil(n / 2048)), block 256.
extern "C" __global__ void widen_bf16_f32(const bf16_t* b, float* w, long long n)
{
    long long i = ((long long)blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (i >= n) return;
    bool aligned = ((reinterpret_cast<unsigned long long>(b) | reinterpret_cast<unsigned long long>(w)) & 15) == 0;
    if (aligned && i + 8 <= n)
    {
        uint4 v = *reinterpret_cast<const uint4*>(b + i);   // element i in the low half of v.x (little-endian)
        float4* to = reinterpret_cast<float4*>(w + i);
        to[0] = make_float4(__uint_as_float(v.x << 16), __uint_as_float(v.x & 0xffff0000u), __uint_as_float(v.y << 16), __uint_as_float(v.y & 0xffff0000u));
        to[1] = make_float4(__uint_as_float(v.z << 16), __uint_as_float(v.z & 0xffff0000u), __uint_as_float(v.w << 16), __uint_as_float(v.w & 0xffff0000u));
        return;
    }
    for (long long j = i; j < n && j < i + 8; j++) w[j] = bf16_to_f32(b[j]);
}
