// Probe for native-kernels/gemm_swiglu.cu on the GPU machine (no .NET): checks the gated GEMM against cuBLAS (fp32
// gate/up, silu·up in fp32) on odd shapes, then times it against cublasGemmEx with a bf16 [gate | up] output alone and
// with silu_mul_bf16 (what the engine ran before) at the Llama-3.1-8B MLP shape, alternating them in one process.
//   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -Inative-kernels [-DGG_STAGES=4 -DGG_CLUSTER=2] \
//        -o /tmp/swiglu_probe bench/gemm/swiglu_probe.cu -lcublas -lcuda && /tmp/swiglu_probe
#include <cublas_v2.h>
#include <cuda.h>
#include <cuda_runtime.h>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>
#include "gemm_swiglu.cu"
#include "silu_mul.cu"

#define CK(x) do { auto e_ = (x); if ((int)e_ != 0) { std::printf("FAIL %s = %d at line %d\n", #x, (int)e_, __LINE__); std::exit(1); } } while (0)

__global__ void fill(bf16_t* p, size_t n, unsigned seed, float scale)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        unsigned h = (unsigned)i * 2654435761u ^ seed;
        h ^= h >> 13; h *= 0x5bd1e995u; h ^= h >> 15;
        p[i] = f32_to_bf16(((h & 0xffff) / 65536.0f - 0.5f) * scale);
    }
}

// ref (M, inter) fp32 = silu(g) * u from fp32 [gate | up] (M, 2 inter)
__global__ void ref_swiglu(const float* gu, int M, int inter, float* ref)
{
    size_t n = (size_t)M * inter;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        size_t r = i / inter, c = i % inter;
        float g = gu[r * 2 * inter + c], u = gu[r * 2 * inter + inter + c];
        ref[i] = g / (1.f + expf(-g)) * u;
    }
}

static CUtensorMap makeMap(const void* base, int rows, int cols, int boxRows, int boxCols = 64)
{
    CUtensorMap m;
    cuuint64_t dims[2] = {(cuuint64_t)cols, (cuuint64_t)rows};
    cuuint64_t strides[1] = {(cuuint64_t)cols * 2};
    cuuint32_t box[2] = {(cuuint32_t)boxCols, (cuuint32_t)boxRows}, es[2] = {1, 1};
    CK(cuTensorMapEncodeTiled(&m, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, const_cast<void*>(base), dims, strides, box, es,
        CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE));
    return m;
}

static int maxClusters = 0;   // clusters of GG_CLUSTER CTAs that fit on the GPU at once (GPCs may leave SMs unpaired)

static void launchGated(const bf16_t* x, const bf16_t* w, bf16_t* out, int M, int inter, int K, cudaStream_t st)
{
    CUtensorMap mx = makeMap(x, M, K, GM_BM), mg = makeMap(w, inter, K, GG_BN), mu = makeMap(w + (size_t)inter * K, inter, K, GG_BN);
    CUtensorMap mo = makeMap(out, M, inter, GM_OUT_ROWS, GM_OUT_COLS);
    int units = ((M + GM_BM * GG_CLUSTER - 1) / (GM_BM * GG_CLUSTER)) * ((inter + GG_BN - 1) / GG_BN);
    int grid = std::min(units, maxClusters) * GG_CLUSTER;
    gemm_swiglu_bf16<<<grid, GG_THREADS, GG_SMEM_BYTES, st>>>(*reinterpret_cast<TensorMap*>(&mx), *reinterpret_cast<TensorMap*>(&mg),
        *reinterpret_cast<TensorMap*>(&mu), *reinterpret_cast<TensorMap*>(&mo), M, inter, K);
}

int main(int argc, char** argv)
{
    CK(cuInit(0));
    int dev = 0, sms = 0;
    CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    CK(cudaFuncSetAttribute(gemm_swiglu_bf16, cudaFuncAttributeMaxDynamicSharedMemorySize, GG_SMEM_BYTES));
    {
        cudaLaunchConfig_t cfg = {};
        cfg.gridDim = dim3(sms); cfg.blockDim = dim3(GG_THREADS); cfg.dynamicSmemBytes = GG_SMEM_BYTES;
        cudaLaunchAttribute at; at.id = cudaLaunchAttributeClusterDimension; at.val.clusterDim.x = GG_CLUSTER; at.val.clusterDim.y = 1; at.val.clusterDim.z = 1;
        cfg.attrs = &at; cfg.numAttrs = 1;
        CK(cudaOccupancyMaxActiveClusters(&maxClusters, gemm_swiglu_bf16, &cfg));
    }
    cudaFuncAttributes fa;
    CK(cudaFuncGetAttributes(&fa, gemm_swiglu_bf16));
    std::printf("gemm_swiglu_bf16 stages %d cluster %d fast silu %d: %d regs, %zu B local, smem %d, max active clusters %d, SMs %d\n", GG_STAGES,
        GG_CLUSTER, GG_FAST_SILU, fa.numRegs, fa.localSizeBytes, GG_SMEM_BYTES, maxClusters, sms);
    cublasHandle_t blas;
    CK(cublasCreate(&blas));
    cudaStream_t st;
    CK(cudaStreamCreate(&st));
    CK(cublasSetStream(blas, st));

    struct Shape { int M, inter, K; };
    bool allOk = true;
    for (Shape s : {Shape{300, 392, 200}, Shape{129, 136, 72}, Shape{1, 256, 64}, Shape{2048, 14336, 4096}, Shape{517, 1032, 4104}, Shape{300, 168, 64}, Shape{1100, 4104, 136}, Shape{517, 3080, 1032}})
    {
        size_t nx = (size_t)s.M * s.K, nw = (size_t)2 * s.inter * s.K;
        bf16_t *x, *w, *out; float *gu, *ref;
        CK(cudaMalloc(&x, nx * 2)); CK(cudaMalloc(&w, nw * 2)); CK(cudaMalloc(&out, (size_t)s.M * s.inter * 2));
        CK(cudaMalloc(&gu, (size_t)s.M * 2 * s.inter * 4)); CK(cudaMalloc(&ref, (size_t)s.M * s.inter * 4));
        fill<<<512, 256, 0, st>>>(x, nx, 1234u, 2.0f);
        fill<<<512, 256, 0, st>>>(w, nw, 99u, 0.1f);
        CK(cudaMemsetAsync(out, 0xff, (size_t)s.M * s.inter * 2, st));   // poison: NaN bf16
        float alpha = 1, beta = 0;
        CK(cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, 2 * s.inter, s.M, s.K, &alpha, w, CUDA_R_16BF, s.K, x, CUDA_R_16BF, s.K, &beta,
            gu, CUDA_R_32F, 2 * s.inter, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        ref_swiglu<<<512, 256, 0, st>>>(gu, s.M, s.inter, ref);
        launchGated(x, w, out, s.M, s.inter, s.K, st);
        CK(cudaGetLastError());
        CK(cudaStreamSynchronize(st));
        std::vector<unsigned short> o((size_t)s.M * s.inter);
        std::vector<float> r((size_t)s.M * s.inter);
        CK(cudaMemcpy(o.data(), out, o.size() * 2, cudaMemcpyDeviceToHost));
        CK(cudaMemcpy(r.data(), ref, r.size() * 4, cudaMemcpyDeviceToHost));
        double maxRef = 0, maxErr = 0; size_t bad = 0, nan = 0;
        for (size_t i = 0; i < o.size(); i++) maxRef = std::max(maxRef, (double)std::fabs(r[i]));
        for (size_t i = 0; i < o.size(); i++) {
            unsigned u = (unsigned)o[i] << 16; float v; std::memcpy(&v, &u, 4);
            if (std::isnan(v)) { nan++; continue; }
            double e = std::fabs(v - r[i]);
            maxErr = std::max(maxErr, e);
            if (e > 1e-2 * std::fabs(r[i]) + 1e-3 * maxRef) bad++;
        }
        bool ok = nan == 0 && bad == 0;
        allOk &= ok;
        std::printf("check M=%d inter=%d K=%d: max|ref| %.4g max err %.3g (%.2e of max) nan %zu bad %zu -> %s\n", s.M, s.inter, s.K,
            maxRef, maxErr, maxErr / maxRef, nan, bad, ok ? "OK" : "FAIL");
        CK(cudaFree(x)); CK(cudaFree(w)); CK(cudaFree(out)); CK(cudaFree(gu)); CK(cudaFree(ref));
    }
    if (!allOk) { std::printf("correctness FAILED: no timing\n"); return 1; }

    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0)); CK(cudaEventCreate(&e1));
    for (int M : {2048, 8192, 32768})
    {
        const int inter = 14336, K = 4096;
        bf16_t *x, *w, *gu, *out;
        CK(cudaMalloc(&x, (size_t)M * K * 2)); CK(cudaMalloc(&w, (size_t)2 * inter * K * 2));
        CK(cudaMalloc(&gu, (size_t)M * 2 * inter * 2)); CK(cudaMalloc(&out, (size_t)M * inter * 2));
        fill<<<512, 256, 0, st>>>(x, (size_t)M * K, 5u, 2.0f);
        fill<<<512, 256, 0, st>>>(w, (size_t)2 * inter * K, 7u, 0.1f);
        float alpha = 1, beta = 0;
        auto gemm = [&] { CK(cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, 2 * inter, M, K, &alpha, w, CUDA_R_16BF, K, x, CUDA_R_16BF, K, &beta,
            gu, CUDA_R_16BF, 2 * inter, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT)); };
        auto silu = [&] { silu_mul_bf16<<<dim3((inter / 8 + 255) / 256, M), 256, 0, st>>>(gu, M, inter, out, 1); };
        auto gated = [&] { launchGated(x, w, out, M, inter, K, st); };
        auto time = [&](auto f, int iters) {
            CK(cudaEventRecord(e0, st));
            for (int i = 0; i < iters; i++) f();
            CK(cudaEventRecord(e1, st));
            CK(cudaEventSynchronize(e1));
            float ms; CK(cudaEventElapsedTime(&ms, e0, e1));
            return ms * 1000.0 / iters;
        };
        const int iters = M >= 32768 ? 3 : (M >= 8192 ? 10 : 30);
        for (int i = 0; i < 3; i++) { gemm(); silu(); gated(); }
        CK(cudaStreamSynchronize(st));
        std::vector<double> tb, tg, tgemm, tsilu;
        for (int round = 0; round < 5; round++)
        {
            tb.push_back(time([&] { gemm(); silu(); }, iters));
            tg.push_back(time(gated, iters));
            tgemm.push_back(time(gemm, iters));
            tsilu.push_back(time(silu, iters));
        }
        auto med = [](std::vector<double> v) { std::sort(v.begin(), v.end()); return v[v.size() / 2]; };
        const double flop = 2.0 * M * 2.0 * inter * K;
        std::printf("M=%d inter=%d K=%d: cublas+silu %.1f us | gated %.1f us (%.0f TFLOP/s) | cublas gemm alone %.1f us (%.0f TFLOP/s) | silu %.1f us | gated/base %.3f | gated/gemm alone %.3f\n",
            M, inter, K, med(tb), med(tg), flop / med(tg) / 1e6, med(tgemm), flop / med(tgemm) / 1e6, med(tsilu), med(tg) / med(tb), med(tg) / med(tgemm));
        std::printf("   rounds base:"); for (double v : tb) std::printf(" %.1f", v);
        std::printf("  gated:"); for (double v : tg) std::printf(" %.1f", v);
        std::printf("\n");
        CK(cudaFree(x)); CK(cudaFree(w)); CK(cudaFree(gu)); CK(cudaFree(out));
    }
    return 0;
}
