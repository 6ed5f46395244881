// Temperature / top-k / top-p sampling of fp32 logits on the GPU, so a sampled decode step downloads one token id.
// One block of SAMPLE_THREADS threads per row (sample_f32, sample_rows_f32), or on sm_90+ one cluster of SC_CTAS blocks
// per row (the *_cluster_ entries at the end); everything is a fixed-order reduction, so the same logits and the same
// uniform u always give the same token.
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

// Which bin of a search pass z falls in: how many of the cuts c_j = lo + step * (j + 1) are <= z (1..SEARCH_CUTS;
// z >= c_0 is the caller's). The product only guesses; the comparisons are the ones every cut is defined by.
__device__ __forceinline__ int search_bin(float z, float lo, float step, float inv_step)
{
    int k = min(SEARCH_CUTS, max(1, (int)((z - lo) * inv_step)));
    while (k < SEARCH_CUTS && z >= lo + step * (float)(k + 1)) k++;
    while (k > 1 && z < lo + step * (float)k) k--;
    return k;
}

// After a pass: f(c_j) = bins j+1 .. SEARCH_CUTS; the largest j whose f reaches goal keeps [c_j, c_{j+1}) (and
// [lo, c_0) if none does). bins: SEARCH_CUTS + 1 sums in shared memory; one thread calls it.
__device__ __forceinline__ void search_narrow(const float* bins, float lo, float hi, float step, float goal, float* bounds)
{
    float f = 0.f, nlo = lo, nhi = lo + step;
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

// The end of a search: two-way bisection of [lo, hi] down to adjacent floats, then hi itself if it qualifies (the
// bisection stops one ulp short when the answer is exactly hi). qualifies(t): f(t) >= goal over the whole row.
template <typename Qualifies>
__device__ __forceinline__ float search_finish(float lo, float hi, Qualifies qualifies)
{
    for (int s = 0; s < BISECT_STEPS && lo < hi; s++)
    {
        float mid = 0.5f * (lo + hi);
        if (mid <= lo || mid >= hi) break;
        if (qualifies(mid)) lo = mid; else hi = mid;
    }
    return qualifies(hi) ? hi : lo;
}

// Largest t in [lo, hi] with f(t) >= goal, where f(t) is the count (by_count) or the mass (sum of exp(z)) of
// {z >= t}, given f(lo) >= goal (or nothing larger qualifies, and lo is returned). The one search of both layouts:
//   f_at(t)          f(t) over the whole row, the same value in every thread (a block or cluster reduction);
//   for_each_z(g)    g(z) for every z this thread covers;
//   sum_bins()       after the table is filled: the row's SEARCH_CUTS + 1 bin sums, bin k summed over the threads in
//                    a fixed order, in shared memory that thread 0 reads.
// THREADS: the block size, the table's stride (bin k of thread t at table[k * THREADS + t]).
template <int THREADS, typename FAt, typename ForEachZ, typename SumBins>
__device__ __forceinline__ float search_passes(float lo, float hi, bool by_count, float goal, float* table, FAt f_at,
    ForEachZ for_each_z, SumBins sum_bins)
{
    __shared__ float bounds[2];
    // A confident row (the top token alone reaches top_p, or top_k = 1) has its answer at hi itself: one pass, where
    // the cuts would shrink toward hi for every pass they have.
    if (f_at(hi) >= goal) return hi;
    float* mine = table + threadIdx.x;
    for (int pass = 0; pass < SEARCH_PASSES; pass++)
    {
        // Cuts c_j = lo + step * (j + 1), j = 0..SEARCH_CUTS-1, strictly inside (lo, hi) and strictly increasing.
        const float step = (hi - lo) / (float)(SEARCH_CUTS + 1);
        const float ulp = fmaxf(fabsf(lo), fabsf(hi)) * 2.4e-7f + 1e-38f;
        if (!(step > 4.f * ulp)) break;
#pragma unroll
        for (int k = 0; k <= SEARCH_CUTS; k++) mine[k * THREADS] = 0.f;
        const float c0 = lo + step, inv_step = 1.f / step;
        for_each_z([&](float z) {
            if (!(z >= c0)) return;   // below every cut (NaN too): counts for none
            mine[search_bin(z, lo, step, inv_step) * THREADS] += by_count ? 1.f : __expf(z);
        });
        __syncthreads();
        const float* bins = sum_bins();
        if (threadIdx.x == 0) search_narrow(bins, lo, hi, step, goal, bounds);
        __syncthreads();
        lo = bounds[0];
        hi = bounds[1];
    }
    return search_finish(lo, hi, [&](float t) { return f_at(t) >= goal; });
}

// search_passes over a row in global memory (read from L2 on every pass), one block of SAMPLE_THREADS threads.
__device__ __forceinline__ float search_threshold(const float* row, int n, float mlog, float inv_t, float lo, float hi, bool by_count,
    float goal, float* red, float* table)
{
    __shared__ float bins[SEARCH_CUTS + 1];
    return search_passes<SAMPLE_THREADS>(lo, hi, by_count, goal, table,
        [&](float t) {
            float mass, count;
            kept(row, n, mlog, inv_t, 0.f, t, red, &mass, &count);
            return by_count ? count : mass;
        },
        [&](auto g) { for_each_logit(row, n, [&](float x) { g((x - mlog) * inv_t); }); },
        [&]() {
            // Warp w sums bin w over the threads in a fixed order.
            const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
            if (warp <= SEARCH_CUTS)
            {
                float v = 0.f;
                for (int t = lane; t < SAMPLE_THREADS; t += 32) v += table[warp * SAMPLE_THREADS + t];
                v = warp_sum(v);
                if (lane == 0) bins[warp] = v;
            }
            __syncthreads();
            return (const float*)bins;
        });
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
            if (!(z >= th)) continue;   // as the partial sums: NaN is never kept
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

#if __CUDA_ARCH__ >= 900
// ---- The same rule on a thread-block cluster (sm_90+): sample_cluster_f32, sample_rows_cluster_f32 ----
// Why: one CTA per row reads its row from L2 on every pass of the threshold searches (~20 passes, 270-290 us a 128K
// row at top-p 0.9 on the H100: ~5% of a batch-1 decode step; 66 us here, 8 x 512 threads being the fastest shape
// measured at 1-128 rows: SamplingBenchmarkTests). Here the row is spread over the SC_CTAS CTAs of one cluster, each
// holding its slice of z in shared memory: a pass walks shared memory and exchanges the 17 bin sums through
// distributed shared memory. Every cross-CTA value is combined in rank order by every CTA alike, so all CTAs take the
// same branches (and meet at the same cluster barriers), and the token depends only on the row, the parameters and u.
// The thresholds and the pick follow sample_row step for step; sums run in another order, so a draw whose u lands
// within rounding of a token boundary may differ from sample_row's.
// Launch: grid (SC_CTAS, rows), block SC_THREADS, dynamic shared memory (SEARCH_CUTS + 1) x SC_THREADS + SC_SLICE(n)
// floats (SamplingKernel.ClusterSharedBytes; the host reads SC_CTAS and SC_THREADS back from the built kernel and
// checks that the memory fits, else it launches the one-CTA entries).
#ifndef SC_CTAS
#define SC_CTAS 8
#endif
#ifndef SC_THREADS
#define SC_THREADS 512
#endif
#define SC_XCH 20                                                      // floats an exchange slot holds (>= cuts + 1)
#define SC_SLICE(n) ((((n) + 4 * SC_CTAS - 1) / (4 * SC_CTAS)) * 4)    // a CTA's slice, a multiple of 4 floats

#define SC_WARPS (SC_THREADS / 32)

struct ClusterRow
{
    float* z;          // this CTA's slice: the logits, then z = (logit - max) / T in place
    int begin, len;    // the slice's first index in the row and its length (0 for trailing CTAs of a short row)
    float* table;      // the search's per-thread bins, (SEARCH_CUTS + 1) x SC_THREADS
    float* xch;        // two exchange slots, used alternately: a slot is rewritten only after a later cluster barrier
    float* total;      // the last exchange's values combined over the ranks (SC_XCH)
    float* warps;      // per-warp partials, 2 x SC_WARPS
    int buf;
};

// This CTA's exchange slot: write the CTA's values into it, then call sc_combine.
__device__ __forceinline__ float* sc_slot(ClusterRow& c) { return c.xch + c.buf * SC_XCH; }

// Combines slot[0 .. count) over the cluster's CTAs in rank order (sum, or max), into c.total for every thread of
// every CTA. The cluster barrier orders the slot writes before the other CTAs' loads.
__device__ __forceinline__ void sc_combine(ClusterRow& c, int count, bool max)
{
    const float* slot = sc_slot(c);
    cluster_sync();
    if (threadIdx.x < count)
    {
        float v[SC_CTAS];
#pragma unroll
        for (int r = 0; r < SC_CTAS; r++) v[r] = cluster_load(slot + threadIdx.x, (unsigned)r);
        float a = max ? -INFINITY : 0.f;
#pragma unroll
        for (int r = 0; r < SC_CTAS; r++) a = max ? fmaxf(a, v[r]) : a + v[r];
        c.total[threadIdx.x] = a;
    }
    c.buf ^= 1;
    __syncthreads();
}

// Two per-thread values reduced over the CTA (warp sums, then the warps in order) into the slot's entries 0 and 1.
__device__ __forceinline__ void sc_offer2(ClusterRow& c, float a, float b, bool max)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (max) { a = warp_max(a); b = warp_max(b); } else { a = warp_sum(a); b = warp_sum(b); }
    if (lane == 0) { c.warps[warp] = a; c.warps[SC_WARPS + warp] = b; }
    __syncthreads();
    if (threadIdx.x < 2)
    {
        float v = max ? -INFINITY : 0.f;
        for (int w = 0; w < SC_WARPS; w++) v = max ? fmaxf(v, c.warps[threadIdx.x * SC_WARPS + w]) : v + c.warps[threadIdx.x * SC_WARPS + w];
        sc_slot(c)[threadIdx.x] = v;
    }
}

// Mass (sum of exp(z)) and count of {z >= t} over the whole row.
__device__ __forceinline__ void sc_kept(ClusterRow& c, float t, float* mass, float* count)
{
    float s = 0.f, k = 0.f;
    for (int i = threadIdx.x; i < c.len; i += SC_THREADS)
    {
        const float z = c.z[i];
        if (z >= t) { s += __expf(z); k += 1.f; }
    }
    sc_offer2(c, s, k, false);
    sc_combine(c, 2, false);
    *mass = c.total[0];
    *count = c.total[1];
}

// search_passes over the cluster's row: each CTA walks its slice in shared memory, and the bin sums are exchanged.
__device__ __forceinline__ float sc_search(ClusterRow& c, float lo, float hi, bool by_count, float goal)
{
    return search_passes<SC_THREADS>(lo, hi, by_count, goal, c.table,
        [&](float t) {
            float mass, count;
            sc_kept(c, t, &mass, &count);
            return by_count ? count : mass;
        },
        [&](auto g) { for (int i = threadIdx.x; i < c.len; i += SC_THREADS) g(c.z[i]); },
        [&]() {
            // Warp w sums bins w, w + SC_WARPS, ... over the threads in a fixed order, straight into the exchange slot.
            const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
            for (int b = warp; b <= SEARCH_CUTS; b += SC_WARPS)
            {
                float v = 0.f;
                for (int t = lane; t < SC_THREADS; t += 32) v += c.table[b * SC_THREADS + t];
                v = warp_sum(v);
                if (lane == 0) sc_slot(c)[b] = v;
            }
            sc_combine(c, SEARCH_CUTS + 1, false);
            return (const float*)c.total;
        });
}

// Inclusive prefix sum over the block in a fixed order; *excl gets the exclusive one, bit-equal to the previous
// thread's inclusive sum (so a range split at a thread boundary adds up the same from either side).
__device__ __forceinline__ float sc_scan(float v, float* shm, float* excl)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    float x = v;
    for (int o = 1; o < 32; o <<= 1)
    {
        const float y = __shfl_up_sync(0xffffffffu, x, o);
        if (lane >= o) x += y;
    }
    float prev = __shfl_up_sync(0xffffffffu, x, 1);
    __syncthreads();
    if (lane == 31) shm[warp] = x;
    __syncthreads();
    float off = 0.f;
    for (int i = 0; i < warp; i++) off += shm[i];
    *excl = lane == 0 ? off : off + prev;
    return off + x;
}

__device__ __forceinline__ void sample_row_cluster(const float* row, int n, float inv_temperature, int top_k, float top_p, float ur, int* out)
{
    extern __shared__ __align__(16) float dyn[];   // the slice takes float4 stores
    __shared__ float xch[2 * SC_XCH], total[SC_XCH], warps[2 * SC_WARPS], red[32];
    const int rank = (int)cluster_rank();
    const int slice = SC_SLICE(n);
    ClusterRow c;
    c.table = dyn;
    c.z = dyn + (SEARCH_CUTS + 1) * SC_THREADS;
    c.begin = min(n, rank * slice);
    c.len = min(n, c.begin + slice) - c.begin;
    c.xch = xch;
    c.total = total;
    c.warps = warps;
    c.buf = 0;

    // The slice into shared memory, with its maximum and smallest finite logit.
    float mlog = -INFINITY, lo_log = INFINITY;
    const float* src = row + c.begin;
    if ((n & 3) == 0 && (((unsigned long long)row) & 15) == 0)
    {
        const float4* s4 = reinterpret_cast<const float4*>(src);
        float4* d4 = reinterpret_cast<float4*>(c.z);
#pragma unroll 4
        for (int q = threadIdx.x; q < (c.len >> 2); q += SC_THREADS)
        {
            const float4 a = s4[q];
            d4[q] = a;
            mlog = fmaxf(fmaxf(mlog, a.x), fmaxf(a.y, fmaxf(a.z, a.w)));
            if (a.x > -INFINITY) lo_log = fminf(lo_log, a.x);
            if (a.y > -INFINITY) lo_log = fminf(lo_log, a.y);
            if (a.z > -INFINITY) lo_log = fminf(lo_log, a.z);
            if (a.w > -INFINITY) lo_log = fminf(lo_log, a.w);
        }
    }
    else
    {
        for (int i = threadIdx.x; i < c.len; i += SC_THREADS)
        {
            const float x = src[i];
            c.z[i] = x;
            mlog = fmaxf(mlog, x);
            if (x > -INFINITY) lo_log = fminf(lo_log, x);
        }
    }
    sc_offer2(c, mlog, -lo_log, true);
    sc_combine(c, 2, true);
    mlog = total[0];
    lo_log = -total[1];

    if (!(mlog > -INFINITY) || mlog == INFINITY)
    {
        float first = INFINITY;
        if (mlog == INFINITY)
            for (int i = threadIdx.x; i < c.len; i += SC_THREADS)
                if (c.z[i] == INFINITY) { first = (float)(c.begin + i); break; }
        sc_offer2(c, -first, 0.f, true);
        sc_combine(c, 1, true);
        if (rank == 0 && threadIdx.x == 0) *out = mlog == INFINITY ? (int)(-total[0]) : -1;
        cluster_sync();   // no CTA leaves while another may still read its exchange slots
        return;
    }
    for (int i = threadIdx.x; i < c.len; i += SC_THREADS) c.z[i] = (c.z[i] - mlog) * inv_temperature;
    __syncthreads();
    const float lo_z = fmaxf((lo_log - mlog) * inv_temperature, -128.f);

    float th = lo_z, mass_k, count;
    if (top_k > 0 && top_k < n) th = sc_search(c, lo_z, 0.f, true, (float)top_k);
    if (top_p < 1.f)
    {
        sc_kept(c, th, &mass_k, &count);
        th = sc_search(c, th, 0.f, false, top_p * mass_k);
    }

    // Ordered pick: thread t of rank r owns the contiguous range [t·sub, (t+1)·sub) of r's slice.
    const int sub = (c.len + SC_THREADS - 1) / SC_THREADS;
    const int b0 = min(c.len, (int)threadIdx.x * sub), b1 = min(c.len, b0 + sub);
    float p = 0.f;
    for (int i = b0; i < b1; i++)
    {
        const float z = c.z[i];
        if (z >= th) p += __expf(z);
    }
    float excl;
    const float incl = sc_scan(p, red, &excl);
    if (threadIdx.x == SC_THREADS - 1) sc_slot(c)[0] = incl;
    // Every rank's kept mass, in rank order (the exchange gathers instead of combining).
    {
        const float* slot = sc_slot(c);
        cluster_sync();
        if (threadIdx.x < SC_CTAS) total[threadIdx.x] = cluster_load(slot, threadIdx.x);
        c.buf ^= 1;
        __syncthreads();
    }
    float sum = 0.f;
    for (int r = 0; r < SC_CTAS; r++) sum += total[r];
    const float target = ur * sum;
    float run = 0.f;
    int owner = -1, last = 0;
    for (int r = 0; r < SC_CTAS; r++)
    {
        const float pr = total[r];
        if (pr > 0.f) last = r;
        if (owner < 0 && pr > 0.f && run + pr > target) owner = r;
        if (owner < 0) run += pr;
    }
    if (!(sum > 0.f))
    {
        // Nothing kept (cannot happen while 1 / T is finite: the top token has z = 0): report it rather than leave out.
        if (rank == 0 && threadIdx.x == 0) *out = -1;
        cluster_sync();
        return;
    }
    if (owner < 0) { owner = last; run = sum - total[last]; }
    if (rank == owner)
    {
        const float local = target - run;   // how far into this slice's kept mass the target falls
        float w = p > 0.f && incl > local ? (float)threadIdx.x : INFINITY;
        w = -block_max(-w, red);
        const float lastp = block_max(p > 0.f ? (float)threadIdx.x : -1.f, red);
        if ((float)threadIdx.x == (w < INFINITY ? w : lastp))
        {
            const float t = local - excl;
            float acc = 0.f;
            int pick = -1, lastk = b0;
            for (int i = b0; i < b1; i++)
            {
                const float z = c.z[i];
                if (!(z >= th)) continue;
                lastk = i;
                acc += __expf(z);
                if (acc > t) { pick = i; break; }
            }
            *out = c.begin + (pick >= 0 ? pick : lastk);
        }
    }
    cluster_sync();   // no CTA leaves while another may still read its exchange slots
}

extern "C" __global__ void __launch_bounds__(SC_THREADS) __cluster_dims__(SC_CTAS, 1, 1) sample_cluster_f32(const float* logits, int n,
    float inv_temperature, int top_k, float top_p, float u, int* out)
{
    float ur = u + 0.6180339887f * (float)blockIdx.y;
    ur -= floorf(ur);
    sample_row_cluster(logits + (long long)blockIdx.y * n, n, inv_temperature, top_k, top_p, ur, out + blockIdx.y);
}

extern "C" __global__ void __launch_bounds__(SC_THREADS) __cluster_dims__(SC_CTAS, 1, 1) sample_rows_cluster_f32(const float* logits, int n,
    const float* params, const int* top_k, int* out)
{
    const float* p = params + 3LL * blockIdx.y;
    const float inv_temperature = p[0];
    if (inv_temperature == 0.f) return;   // the whole cluster returns alike
    sample_row_cluster(logits + (long long)blockIdx.y * n, n, inv_temperature, top_k[blockIdx.y], p[1], p[2], out + blockIdx.y);
}
#endif

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
// bit (i % 32) of allowed[j * words + i / 32] is set, else gets -inf. rows: (count) ints; allowed: (count, words)
// 32-bit words, words >= ceil(n / 32) (SamplingKernel.PackMask). Bits, not bytes: a step uploads 16 KB a masked row
// of Llama 3's vocabulary instead of 128 KB.
// Launch: grid (ceil(n / 256), count), block 256; a thread per logit, a warp per mask word.
extern "C" __global__ void mask_logits_f32(float* logits, int n, const int* rows, const unsigned* allowed, int words)
{
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const unsigned w = allowed[(long long)blockIdx.y * words + (i >> 5)];
    if (!((w >> (i & 31)) & 1u)) logits[(long long)rows[blockIdx.y] * n + i] = -INFINITY;
}
