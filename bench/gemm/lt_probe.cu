// cuBLASLt algorithm probe for the engine's prefill GEMMs (Llama-3.1-8B shapes), run on the GPU machine:
//   nvcc -O2 -o /tmp/lt_probe bench/gemm/lt_probe.cu -lcublasLt -lcublas && /tmp/lt_probe [rows...]
// For each projection it times cublasGemmEx (what the engine calls today) and every algorithm cuBLASLt's heuristic
// offers for the same problem (y = x·Wᵀ, bf16 in, fp32 accumulate, fp32 or bf16 out, beta 0 or 1), and prints
// TFLOP/s per algorithm: how much a per-shape choice of algorithm can gain over the default heuristic.
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define CK(x) do { auto e_ = (x); if ((int)e_ != 0) { std::printf("FAIL %s = %d at line %d\n", #x, (int)e_, __LINE__); std::exit(1); } } while (0)

struct Shape { const char* name; int out, in; bool f32out, accumulate; };

__global__ void fill(__nv_bfloat16* p, size_t n, unsigned seed)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        unsigned h = (unsigned)i * 2654435761u ^ seed;
        h ^= h >> 13; h *= 0x5bd1e995u; h ^= h >> 15;
        p[i] = __float2bfloat16(((h & 0xffff) / 65536.0f - 0.5f) * 0.05f);
    }
}

int main(int argc, char** argv)
{
    std::vector<int> rowsList;
    for (int i = 1; i < argc; i++) rowsList.push_back(std::atoi(argv[i]));
    if (rowsList.empty()) rowsList = {2048, 8192};
    const Shape shapes[] = {
        {"qkv_proj", 6144, 4096, true, false},
        {"qkv_proj_bf16out", 6144, 4096, false, false},
        {"o_proj(+=)", 4096, 4096, true, true},
        {"gate_up(bf16)", 28672, 4096, false, false},
        {"down_proj(+=)", 4096, 14336, true, true},
        {"swiftkv_kv(16 leaders)", 32768, 4096, true, false},
    };
    int maxRows = *std::max_element(rowsList.begin(), rowsList.end());
    size_t maxW = 28672ull * 4096, maxX = (size_t)maxRows * 14336, maxY = (size_t)maxRows * 32768;
    __nv_bfloat16 *w, *x; void* y; void* ws; size_t wsBytes = 64ull << 20;
    CK(cudaMalloc(&w, maxW * 2)); CK(cudaMalloc(&x, maxX * 2)); CK(cudaMalloc(&y, maxY * 4)); CK(cudaMalloc(&ws, wsBytes));
    fill<<<1024, 256>>>(w, maxW, 1); fill<<<1024, 256>>>(x, maxX, 2);
    CK(cudaMemset(y, 0, maxY * 4));
    cudaStream_t st; CK(cudaStreamCreate(&st));
    cublasHandle_t blas; CK(cublasCreate(&blas)); CK(cublasSetStream(blas, st));
    cublasLtHandle_t lt; CK(cublasLtCreate(&lt));
    cudaEvent_t e0, e1; CK(cudaEventCreate(&e0)); CK(cudaEventCreate(&e1));
    const int warm = 3, iters = 20;

    for (int rows : rowsList)
    for (const Shape& s : shapes) {
        int m = s.out, n = rows, k = s.in;
        double flop = 2.0 * m * n * k;
        float alpha = 1, beta = s.accumulate ? 1 : 0;
        cudaDataType_t ct = s.f32out ? CUDA_R_32F : CUDA_R_16BF;
        auto timeIt = [&](auto&& launch) {
            for (int i = 0; i < warm; i++) launch();
            CK(cudaEventRecord(e0, st));
            for (int i = 0; i < iters; i++) launch();
            CK(cudaEventRecord(e1, st));
            CK(cudaEventSynchronize(e1));
            float ms; CK(cudaEventElapsedTime(&ms, e0, e1));
            return (double)ms / iters;
        };
        double gemmEx = timeIt([&] {
            CK(cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &alpha, w, CUDA_R_16BF, k, x, CUDA_R_16BF, k, &beta, y, ct, m,
                CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        });
        std::printf("rows %d %-24s m=%d n=%d k=%d  GemmEx %.1f us %.0f TFLOP/s\n", rows, s.name, m, n, k, gemmEx * 1e3, flop / gemmEx / 1e9);

        cublasLtMatmulDesc_t desc; CK(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
        cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
        CK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
        CK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
        cublasLtMatrixLayout_t la, lb, lc;
        CK(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, k, m, k));
        CK(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, k, n, k));
        CK(cublasLtMatrixLayoutCreate(&lc, ct, m, n, m));
        cublasLtMatmulPreference_t pref; CK(cublasLtMatmulPreferenceCreate(&pref));
        CK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsBytes, sizeof wsBytes));
        cublasLtMatmulHeuristicResult_t res[32]; int got = 0;
        CK(cublasLtMatmulAlgoGetHeuristic(lt, desc, la, lb, lc, lc, pref, 32, res, &got));
        double best = 1e30; int bestI = -1;
        for (int i = 0; i < got; i++) {
            if (res[i].state != CUBLAS_STATUS_SUCCESS) continue;
            bool ok = true;
            double t = timeIt([&] {
                if (!ok) return;
                auto r = cublasLtMatmul(lt, desc, &alpha, w, la, x, lb, &beta, y, lc, y, lc, &res[i].algo, ws, wsBytes, st);
                if (r != CUBLAS_STATUS_SUCCESS) ok = false;
            });
            if (!ok) { std::printf("    algo %2d failed\n", i); continue; }
            int id = 0, tile = 0, stages = 0, splitk = 0, swz = 0, cluster = 0; size_t sz;
            cublasLtMatmulAlgoConfigGetAttribute(&res[i].algo, CUBLASLT_ALGO_CONFIG_ID, &id, sizeof id, &sz);
            cublasLtMatmulAlgoConfigGetAttribute(&res[i].algo, CUBLASLT_ALGO_CONFIG_TILE_ID, &tile, sizeof tile, &sz);
            cublasLtMatmulAlgoConfigGetAttribute(&res[i].algo, CUBLASLT_ALGO_CONFIG_STAGES_ID, &stages, sizeof stages, &sz);
            cublasLtMatmulAlgoConfigGetAttribute(&res[i].algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &splitk, sizeof splitk, &sz);
            cublasLtMatmulAlgoConfigGetAttribute(&res[i].algo, CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING, &swz, sizeof swz, &sz);
            cublasLtMatmulAlgoConfigGetAttribute(&res[i].algo, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID, &cluster, sizeof cluster, &sz);
            std::printf("    algo %2d id %3d tile %3d stages %3d splitk %d swz %d cluster %2d ws %zu: %.1f us %.0f TFLOP/s\n",
                i, id, tile, stages, splitk, swz, cluster, res[i].workspaceSize, t * 1e3, flop / t / 1e9);
            if (t < best) { best = t; bestI = i; }
        }
        if (bestI >= 0) {
            // Re-time the heuristic's first choice and the best one back to back (noise check).
            double h0 = timeIt([&] { cublasLtMatmul(lt, desc, &alpha, w, la, x, lb, &beta, y, lc, y, lc, &res[0].algo, ws, wsBytes, st); });
            double b = timeIt([&] { cublasLtMatmul(lt, desc, &alpha, w, la, x, lb, &beta, y, lc, y, lc, &res[bestI].algo, ws, wsBytes, st); });
            double g = timeIt([&] { cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &alpha, w, CUDA_R_16BF, k, x, CUDA_R_16BF, k, &beta, y, ct, m,
                CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT); });
            std::printf("  SUMMARY rows %d %-24s GemmEx %.1f us | Lt heuristic#0 %.1f us | Lt best (#%d of %d) %.1f us = %.0f TFLOP/s (%.1f%% vs GemmEx)\n",
                rows, s.name, g * 1e3, h0 * 1e3, bestI, got, b * 1e3, flop / b / 1e9, 100 * (g - b) / g);
        }
        cublasLtMatmulPreferenceDestroy(pref);
        cublasLtMatrixLayoutDestroy(la); cublasLtMatrixLayoutDestroy(lb); cublasLtMatrixLayoutDestroy(lc);
        cublasLtMatmulDescDestroy(desc);
    }
    return 0;
}
