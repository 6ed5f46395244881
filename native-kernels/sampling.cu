// Temperature / top-k / top-p sampling of fp32 logits on the GPU, so a sampled decode step downloads one token id.
// One block of SAMPLE_THREADS threads per row; everything is a fixed-order block reduction, so the same logits and
// the same uniform u always give the same token.
//   z_i = (logits_i - max logit) / temperature <= 0, so p_i ∝ exp(z_i) and no temperature overflows z. NaN logits
//     count as -inf (never kept), as on the CPU sampler. A row with no finite maximum gets out = -1 (every logit NaN or
//     -inf: nothing to sample, the caller reports it); a row whose maximum is +inf gets its first +inf token (the
//     limit of the softmax, ties toward the lower id).
//   Tokens with z < -128 have exp(z) = 0 in fp32, so the bisections search [max(min z, -128), 0].
//   top-k (k > 0): the threshold t_k = the largest t with #{z_i >= t} >= k, found by bisection on t (ties at the
//     threshold are kept, as Hugging Face's top-k filter keeps them).
//   top-p (< 1): among {z_i >= t_k}, the largest t with mass{z_i >= t} >= top_p · mass{z_i >= t_k} (the nucleus:
//     the smallest set of most likely tokens whose probability reaches top_p, HF order: top-k first, then top-p).
//   Then the token is the first i in vocabulary order whose cumulative kept mass exceeds u · (total kept mass).
// A threshold search instead of a sort (search_threshold): each pass over the row (from L2) splits the interval at
// SEARCH_CUTS evenly spaced thresholds, every thread binning its z into its own column of a shared table (no atomics:
// the sums run in a fixed order, so the same row always gives the same threshold); ~6 such passes narrow [-128, 0] to
// a few ulps, and a two-way bisection finishes. A row whose answer is the top value itself stops after one pass. (Two-way bisection alone took ~50 passes for top-p: 0.7-0.8 ms per
// step at one CTA per row on the H100.) Dynamic shared memory: SAMPLE_TABLE_BYTES.
// sample_f32: every row with the same parameters; row r uses u_r = frac(u + r · 0.6180339887) so one uniform serves
// a batch. sample_rows_f32: each row its own (1 / temperature, top_p, u) and top_k (a serving step's sequences); a row
// with 1 / temperature 0 is left as it is (the caller put its argmax there). Both run sample_row, so the same row,
// parameters and u_r give the same token from either.
// Launch: grid (rows), block SAMPLE_THREADS. mask_logits_f32 and bias_logits_f32 (end of file) apply constraints and
// penalties to the rows beforehand.
#include "swiftkv_common.cuh"

#define SAMPLE_THREADS 1024
#define BISECT_STEPS 48
#define SEARCH_CUTS 16
#ifndef SEARCH_PASSES
#define SEARCH_PASSES 12   // 0: two-way bisection only (the previous search; SamplingBenchmarkTests times both)
#endif
// (SEARCH_CUTS + 1) bins x SAMPLE_THREADS floats: bin k of thread t at table[k * SAMPLE_THREADS + t].
#define SAMPLE_TABLE_BYTES ((SEARCH_CUTS + 1) * SAMPLE_THREADS * 4)

// f(x) for every logit of the row this thread covers. 16-byte loads, several in flight: a strided scalar loop waits on
// one L2 load at a time, ~35 us a pass over 128K logits for one CTA (the argmax kernel measured the same).
template <typename F>
__device__ __forceinline__ void for_each_logit(const float* row, int n, F f)
{
    if ((n & 3) == 0 && (((unsigned long long)row) & 15) == 0)
    {
        const float4* r4 = reinterpret_cast<const float4*>(row);
#pragma unroll 4
        for (int c = threadIdx.x; c < (n >> 2); c += blockDim.x)
        {
            const float4 a = r4[c];
            f(a.x); f(a.y); f(a.z); f(a.w);
        }
    }
    else
    {
#pragma unroll 4
        for (int i = threadIdx.x; i < n; i += blockDim.x) f(row[i]);
    }
}

// Sum over the row of exp(z - m) where z >= t (mass) and the count of such z; every thread gets both.
__device__ __forceinline__ void kept(const float* row, int n, float mlog, float inv_t, float m, float t, float* red, float* mass, float* count)
{
    float s = 0.f, c = 0.f;
    for_each_logit(row, n, [&](float x) {
        const float z = (x - mlog) * inv_t;
        if (z >= t) { s += __expf(z - m); c += 1.f; }
    });
    *mass = block_sum(s, red);
    *count = block_sum(c, red);
}

// Largest t in [lo, hi] with f(t) >= goal, where f(t) is the count (by_count) or the mass (sum of exp(z)) of
// {z >= t}, given f(lo) >= goal (or nothing larger qualifies, and lo is returned).
__device__ __forceinline__ float search_threshold(const float* row, int n, float mlog, float inv_t, float lo, float hi, bool by_count,
    float goal, float* red, float* table)
{
    __shared__ float bins[SEARCH_CUTS + 1];
    __shared__ float bounds[2];
    float mass, count;
    // A confident row (the top token alone reaches top_p, or top_k = 1) has its answer at hi itself: one pass, where
    // the cuts would shrink toward hi for every pass they have.
    kept(row, n, mlog, inv_t, 0.f, hi, red, &mass, &count);
    if ((by_count ? count : mass) >= goal) return hi;
    float* mine = table + threadIdx.x;
    for (int pass = 0; pass < SEARCH_PASSES; pass++)
    {
        // Cuts c_j = lo + step * (j + 1), j = 0..SEARCH_CUTS-1, strictly inside (lo, hi) and strictly increasing.
        const float step = (hi - lo) / (float)(SEARCH_CUTS + 1);
        const float ulp = fmaxf(fabsf(lo), fabsf(hi)) * 2.4e-7f + 1e-38f;
        if (!(step > 4.f * ulp)) break;
        for (int k = 0; k <= SEARCH_CUTS; k++) mine[k * SAMPLE_THREADS] = 0.f;
        const float c0 = lo + step;
        for_each_logit(row, n, [&](float x) {
            const float z = (x - mlog) * inv_t;
            if (!(z >= c0)) return;   // below every cut (NaN too): counts for none
            // k = how many cuts are <= z, by the same comparisons as everywhere else (the division only guesses).
            int k = min(SEARCH_CUTS, max(1, (int)((z - lo) / step)));
            while (k < SEARCH_CUTS && z >= lo + step * (float)(k + 1)) k++;
            while (k > 1 && z < lo + step * (float)k) k--;
            mine[k * SAMPLE_THREADS] += by_count ? 1.f : __expf(z);
        });
        __syncthreads();
        // Warp w sums bin w over the threads in a fixed order.
        const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
        if (warp <= SEARCH_CUTS)
        {
            float v = 0.f;
            for (int t = lane; t < SAMPLE_THREADS; t += 32) v += table[warp * SAMPLE_THREADS + t];
            for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
            if (lane == 0) bins[warp] = v;
        }
        __syncthreads();
        if (threadIdx.x == 0)
        {
            // f(c_j) = bins j+1 .. SEARCH_CUTS; the largest j whose f reaches goal keeps [c_j, c_{j+1}).
            float f = 0.f, nlo = lo, nhi = c0;
            for (int j = SEARCH_CUTS - 1; j >= 0; j--)
            {
                f += bins[j + 1];
                if (f >= goal)
                {
                    nlo = lo + step * (float)(j + 1);
                    nhi = j + 1 < SEARCH_CUTS ? lo + step * (float)(j + 2) : hi;
                    break;
                }
            }
            bounds[0] = nlo;
            bounds[1] = nhi;
        }
        __syncthreads();
        lo = bounds[0];
        hi = bounds[1];
    }
    for (int s = 0; s < BISECT_STEPS && lo < hi; s++)
    {
        float mid = 0.5f * (lo + hi);
        if (mid <= lo || mid >= hi) break;
        kept(row, n, mlog, inv_t, 0.f, mid, red, &mass, &count);
        if ((by_count ? count : mass) >= goal) lo = mid; else hi = mid;
    }
    // hi itself may still qualify (the bisection stops one ulp short when the answer is exactly hi).
    kept(row, n, mlog, inv_t, 0.f, hi, red, &mass, &count);
    return (by_count ? count : mass) >= goal ? hi : lo;
}

__device__ __forceinline__ void sample_row(const float* row, int n, float inv_temperature, int top_k, float top_p, float ur, int* out)
{
    extern __shared__ float table[];
    __shared__ float red[32];
    __shared__ float partial[SAMPLE_THREADS];
    __shared__ int owner;

    float mlog = -INFINITY, lo_log = INFINITY;
    for_each_logit(row, n, [&](float x) {
        mlog = fmaxf(mlog, x);                                  // fmaxf drops NaN
        if (x > -INFINITY) lo_log = fminf(lo_log, x);
    });
    mlog = block_max(mlog, red);
    lo_log = -block_max(-lo_log, red);
    if (!(mlog > -INFINITY) || mlog == INFINITY)
    {
        // Nothing finite to sample (-1), or the first +inf token: the smallest index holding +inf.
        float first = INFINITY;
        if (mlog == INFINITY)
            for (int i = threadIdx.x; i < n; i += blockDim.x)
                if (row[i] == INFINITY) { first = fminf(first, (float)i); break; }
        first = -block_max(-first, red);
        if (threadIdx.x == 0) *out = mlog == INFINITY ? (int)first : -1;
        return;
    }
    // From here z is relative to the maximum: z(x) = (x - mlog) * inv_t, in [-inf, 0].
    const float m = 0.f;
    const float lo_z = fmaxf((lo_log - mlog) * inv_temperature, -128.f);

    float count;
    float th = lo_z;
    if (top_k > 0 && top_k < n)
        th = search_threshold(row, n, mlog, inv_temperature, lo_z, m, true, (float)top_k, red, table);
    float mass_k;
    kept(row, n, mlog, inv_temperature, m, th, red, &mass_k, &count);
    if (top_p < 1.f)
        th = search_threshold(row, n, mlog, inv_temperature, th, m, false, top_p * mass_k, red, table);

    // Ordered pick: thread t owns the contiguous index range [t·chunk, (t+1)·chunk).
    int chunk = (n + SAMPLE_THREADS - 1) / SAMPLE_THREADS;
    int begin = threadIdx.x * chunk, end = min(n, begin + chunk);
    float s = 0.f;
    for (int i = begin; i < end; i++)
    {
        float z = (row[i] - mlog) * inv_temperature;
        if (z >= th) s += __expf(z - m);
    }
    partial[threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.x == 0)
    {
        float total = 0.f;
        for (int t = 0; t < SAMPLE_THREADS; t++) total += partial[t];
        float target = ur * total, run = 0.f;
        int w = -1, last = 0;
        for (int t = 0; t < SAMPLE_THREADS; t++)
        {
            float p = partial[t];
            if (p > 0.f) last = t;
            if (w < 0 && p > 0.f && run + p > target) w = t;
            if (w < 0) run += p;
        }
        if (w < 0) { w = last; run = total - partial[last]; }
        owner = w;
        red[0] = target - run;   // how far into the owner's range the target falls
    }
    __syncthreads();
    if (threadIdx.x == owner)
    {
        float target = red[0], run = 0.f;
        int pick = -1, last = begin;
        for (int i = begin; i < end; i++)
        {
            float z = (row[i] - mlog) * inv_temperature;
            if (z < th) continue;
            last = i;
            run += __expf(z - m);
            if (run > target) { pick = i; break; }
        }
        *out = pick >= 0 ? pick : last;
    }
}

extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS) sample_f32(const float* logits, int n, float inv_temperature, int top_k,
    float top_p, float u, int* out)
{
    float ur = u + 0.6180339887f * (float)blockIdx.x;
    ur -= floorf(ur);
    sample_row(logits + (long long)blockIdx.x * n, n, inv_temperature, top_k, top_p, ur, out + blockIdx.x);
}

// params: (rows, 3) floats (1 / temperature, top_p, u); top_k: (rows) ints.
extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS) sample_rows_f32(const float* logits, int n, const float* params,
    const int* top_k, int* out)
{
    const float* p = params + 3LL * blockIdx.x;
    const float inv_temperature = p[0];
    if (inv_temperature == 0.f) return;   // greedy: the argmax is already in out
    sample_row(logits + (long long)blockIdx.x * n, n, inv_temperature, top_k[blockIdx.x], p[1], p[2], out + blockIdx.x);
}

// A step's logit biases (frequency / presence penalties), added before its rows are picked: entry i adds deltas[i] to
// logits[row * n + token] with (row, token) = entries[2i], entries[2i + 1]. The host checks every entry and gives each
// (row, token) at most once, so no two threads touch one logit.
// Launch: grid (ceil(count / 256)), block 256.
extern "C" __global__ void bias_logits_f32(float* logits, int n, const int* entries, const float* deltas, int count)
{
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= count) return;
    logits[(long long)entries[2 * i] * n + entries[2 * i + 1]] += deltas[i];
}

// A step's logits constraints (JSON mode), applied before its rows are picked: row rows[j] keeps logit i only where
// allowed[j * n + i] is nonzero, else gets -inf. rows: (count) ints, allowed: (count, n) bytes.
// Launch: grid (ceil(n / 1024), count), block 256; each thread covers 4 consecutive logits.
extern "C" __global__ void mask_logits_f32(float* logits, int n, const int* rows, const unsigned char* allowed)
{
    const long long j = blockIdx.y;
    float* row = logits + (long long)rows[j] * n;
    const unsigned char* a = allowed + j * n;
    const int i0 = (blockIdx.x * blockDim.x + threadIdx.x) * 4;
    for (int i = i0; i < i0 + 4 && i < n; i++)
        if (!a[i]) row[i] = -INFINITY;
}
