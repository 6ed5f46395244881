// Does cuBLASLt run W8A8 GEMMs with a scale per weight row and per token row (OUTER_VEC_32F) on this GPU, and how
// fast against bf16? Run on the GPU machine:
//   nvcc -O2 -o /tmp/fp8_rowwise_probe bench/gemm/fp8_rowwise_probe.cu -lcublasLt && /tmp/fp8_rowwise_probe [rows...]
// For each Llama-3.1-8B prefill projection (y = x·Wᵀ in cuBLAS's TN form: A = W (k, m), B = x (k, n)) it asks the
// heuristic for bf16, fp8 with scalar scales and fp8 with outer-vector scales (A: m floats, B: n floats), times what
// it gets, and checks 64 outputs of the outer-vector GEMM against a host sum over the same e4m3 codes.
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define CK(x) do { auto e_ = (x); if ((int)e_ != 0) { std::printf("FAIL %s = %d at line %d\n", #x, (int)e_, __LINE__); std::exit(1); } } while (0)

struct Shape { const char* name; int out, in; bool f32out, accumulate; };

__global__ void fill_bf16(__nv_bfloat16* p, size_t n, unsigned seed)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        unsigned h = (unsigned)i * 2654435761u ^ seed;
        h ^= h >> 15; h *= 2246822519u; h ^= h >> 13;
        p[i] = __float2bfloat16(((h & 0xffff) / 65536.f - 0.5f) * 0.1f);
    }
}

__global__ void fill_e4m3(__nv_fp8_e4m3* p, size_t n, unsigned seed)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        unsigned h = (unsigned)i * 2654435761u ^ seed;
        h ^= h >> 15; h *= 2246822519u; h ^= h >> 13;
        p[i] = __nv_fp8_e4m3(((h & 0xffff) / 65536.f - 0.5f) * 800.f);
    }
}

__global__ void fill_f32(float* p, size_t n, unsigned seed)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        unsigned h = (unsigned)i * 2654435761u ^ seed;
        h ^= h >> 15; h *= 2246822519u; h ^= h >> 13;
        p[i] = 1e-4f * (1.f + (h & 0xff) / 256.f);
    }
}

static cublasLtHandle_t lt;
static void* workspace;
static const size_t wsBytes = 32u << 20;

// mode: 0 bf16, 1 fp8 scalar scales, 2 fp8 outer-vector scales. Returns ms per GEMM (median of 5) or -status.
static float run(int mode, const Shape& s, int n, void* w, void* x, void* y, float* sa, float* sb, bool timed)
{
    cublasLtMatmulDesc_t op;
    CK(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasOperation_t t = CUBLAS_OP_T, nn = CUBLAS_OP_N;
    CK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &t, sizeof t));
    CK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &nn, sizeof nn));
    cudaDataType_t ab = mode == 0 ? CUDA_R_16BF : CUDA_R_8F_E4M3, cd = s.f32out ? CUDA_R_32F : CUDA_R_16BF;
    if (mode > 0) {
        cublasLtMatmulMatrixScale_t sm = mode == 2 ? CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F : CUBLASLT_MATMUL_MATRIX_SCALE_SCALAR_32F;
        CK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &sm, sizeof sm));
        CK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &sm, sizeof sm));
        CK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &sa, sizeof sa));
        CK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &sb, sizeof sb));
    }
    cublasLtMatrixLayout_t a, b, c;
    CK(cublasLtMatrixLayoutCreate(&a, ab, s.in, s.out, s.in));
    CK(cublasLtMatrixLayoutCreate(&b, ab, s.in, n, s.in));
    CK(cublasLtMatrixLayoutCreate(&c, cd, s.out, n, s.out));
    cublasLtMatmulPreference_t pref;
    CK(cublasLtMatmulPreferenceCreate(&pref));
    size_t wb = wsBytes;
    CK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wb, sizeof wb));
    cublasLtMatmulHeuristicResult_t r;
    int found = 0;
    int st = cublasLtMatmulAlgoGetHeuristic(lt, op, a, b, c, c, pref, 1, &r, &found);
    float result;
    if (st != 0 || found == 0) result = st != 0 ? -(float)st : -1000.f;
    else {
        float alpha = 1, beta = s.accumulate ? 1.f : 0.f;
        cudaEvent_t e0, e1;
        CK(cudaEventCreate(&e0));
        CK(cudaEventCreate(&e1));
        std::vector<float> ms;
        for (int rep = 0; rep < (timed ? 8 : 1); rep++) {
            CK(cudaEventRecord(e0));
            int reps = timed ? 10 : 1;
            for (int i = 0; i < reps; i++)
                CK(cublasLtMatmul(lt, op, &alpha, w, a, x, b, &beta, y, c, y, c, &r.algo, workspace, wsBytes, 0));
            CK(cudaEventRecord(e1));
            CK(cudaEventSynchronize(e1));
            float m;
            CK(cudaEventElapsedTime(&m, e0, e1));
            ms.push_back(m / reps);
        }
        std::sort(ms.begin(), ms.end());
        result = ms[ms.size() / 2];
        cudaEventDestroy(e0);
        cudaEventDestroy(e1);
    }
    cublasLtMatmulPreferenceDestroy(pref);
    cublasLtMatrixLayoutDestroy(a);
    cublasLtMatrixLayoutDestroy(b);
    cublasLtMatrixLayoutDestroy(c);
    cublasLtMatmulDescDestroy(op);
    return result;
}

int main(int argc, char** argv)
{
    std::printf("cublasLt version %zu; enum values: A_SCALE_POINTER %d B_SCALE_POINTER %d A_SCALE_MODE %d B_SCALE_MODE %d "
                "OUTER_VEC_32F %d SCALAR_32F %d CUDA_R_8F_E4M3 %d FAST_ACCUM %d\n",
        cublasLtGetVersion(), (int)CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, (int)CUBLASLT_MATMUL_DESC_B_SCALE_POINTER,
        (int)CUBLASLT_MATMUL_DESC_A_SCALE_MODE, (int)CUBLASLT_MATMUL_DESC_B_SCALE_MODE, (int)CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F,
        (int)CUBLASLT_MATMUL_MATRIX_SCALE_SCALAR_32F, (int)CUDA_R_8F_E4M3, (int)CUBLASLT_MATMUL_DESC_FAST_ACCUM);
    std::vector<int> rows;
    for (int i = 1; i < argc; i++) rows.push_back(std::atoi(argv[i]));
    if (rows.empty()) rows = {2048, 8192, 32768, 200, 16};
    const Shape shapes[] = {{"qkv", 6144, 4096, true, false}, {"o_proj", 4096, 4096, true, true}, {"gate_up", 28672, 4096, false, false},
                            {"gate_up f32", 28672, 4096, true, false}, {"down", 4096, 14336, true, true}, {"swiftkv_kv", 32768, 4096, true, false}};
    CK(cublasLtCreate(&lt));
    CK(cudaMalloc(&workspace, wsBytes));
    size_t maxRows = 32768;
    void *wb, *xb, *w8, *x8, *y;
    float *sa, *sb;
    CK(cudaMalloc(&wb, (size_t)32768 * 14336 * 2));
    CK(cudaMalloc(&xb, maxRows * 14336 * 2));
    CK(cudaMalloc(&w8, (size_t)32768 * 14336));
    CK(cudaMalloc(&x8, maxRows * 14336));
    CK(cudaMalloc(&y, maxRows * 32768 * 4));
    CK(cudaMalloc(&sa, 32768 * 4));
    CK(cudaMalloc(&sb, maxRows * 4));
    fill_bf16<<<1024, 256>>>((__nv_bfloat16*)wb, (size_t)32768 * 14336, 1);
    fill_bf16<<<1024, 256>>>((__nv_bfloat16*)xb, maxRows * 14336, 2);
    fill_e4m3<<<1024, 256>>>((__nv_fp8_e4m3*)w8, (size_t)32768 * 14336, 3);
    fill_e4m3<<<1024, 256>>>((__nv_fp8_e4m3*)x8, maxRows * 14336, 4);
    fill_f32<<<64, 256>>>(sa, 32768, 5);
    fill_f32<<<64, 256>>>(sb, maxRows, 6);
    CK(cudaDeviceSynchronize());

    // Correctness of the outer-vector form: D[i][j] = sa[i] * sb[j] * sum_k W[i][k] x[j][k] (beta 0, fp32 out).
    {
        Shape s{"check", 1024, 4096, true, false};
        int n = 256;
        float ms = run(2, s, n, w8, x8, y, sa, sb, false);
        if (ms < 0) std::printf("outer-vector check: refused (%g)\n", ms);
        else {
            CK(cudaDeviceSynchronize());
            std::vector<unsigned char> hw((size_t)1024 * 4096), hx((size_t)n * 4096);
            std::vector<float> hsa(1024), hsb(n), hy((size_t)1024 * n);
            CK(cudaMemcpy(hw.data(), w8, hw.size(), cudaMemcpyDeviceToHost));
            CK(cudaMemcpy(hx.data(), x8, hx.size(), cudaMemcpyDeviceToHost));
            CK(cudaMemcpy(hsa.data(), sa, 4096, cudaMemcpyDeviceToHost));
            CK(cudaMemcpy(hsb.data(), sb, n * 4, cudaMemcpyDeviceToHost));
            CK(cudaMemcpy(hy.data(), y, hy.size() * 4, cudaMemcpyDeviceToHost));
            auto dec = [](unsigned char c) { __nv_fp8_e4m3 v; v.__x = c; return (double)(float)v; };
            double worst = 0;
            for (int t = 0; t < 64; t++) {
                int i = (t * 131) % 1024, j = (t * 37) % n;
                double sum = 0, mag = 0;
                for (int k = 0; k < 4096; k++) {
                    double p = dec(hw[(size_t)i * 4096 + k]) * dec(hx[(size_t)j * 4096 + k]);
                    sum += p;
                    mag += std::fabs(p);
                }
                double want = sum * hsa[i] * hsb[j], got = hy[(size_t)j * 1024 + i];
                worst = std::fmax(worst, std::fabs(got - want) / (mag * hsa[i] * hsb[j]));
            }
            std::printf("outer-vector check: worst |err| / sum|terms| over 64 outputs = %.3g\n", worst);
        }
    }

    std::printf("| rows | shape | bf16 ms | TFLOP/s | fp8 scalar ms | TFLOP/s | fp8 outer-vec ms | TFLOP/s | outer-vec / bf16 |\n|---|---|---|---|---|---|---|---|---|\n");
    for (int n : rows)
        for (const Shape& s : shapes) {
            float t0 = run(0, s, n, wb, xb, y, sa, sb, true);
            float t1 = run(1, s, n, w8, x8, y, sa, sb, true);
            float t2 = run(2, s, n, w8, x8, y, sa, sb, true);
            double flop = 2.0 * s.out * s.in * n;
            auto tf = [&](float t) { return t > 0 ? flop / t / 1e9 : 0.0; };
            std::printf("| %d | %s | %.4f | %.0f | %.4f | %.0f | %.4f | %.0f | %.2fx |\n", n, s.name, t0, tf(t0), t1, tf(t1), t2, tf(t2),
                t2 > 0 && t0 > 0 ? t0 / t2 : 0.0);
        }
    return 0;
}
