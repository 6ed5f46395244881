// What cublasGemmEx costs the first time it sees a row count, on the host and on the GPU (run on the GPU machine):
//   nvcc -O2 -o /tmp/first_call_probe bench/gemm/first_call_probe.cu -lcublas && /tmp/first_call_probe [rows...]
// The engine's serving prefill calls cuBLAS for [q; k; v], o_proj and down_proj (Llama-3.1-8B shapes, fp32 out) with
// n = the step's rows, which changes from step to step. For each n in order, each shape is called twice; the table
// gives the host time of each call (enqueue only) and its GPU time, so a per-shape heuristic or kernel-load cost
// shows as a first call far above the second.
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define CK(x) do { auto e_ = (x); if ((int)e_ != 0) { std::printf("FAIL %s = %d at line %d\n", #x, (int)e_, __LINE__); std::exit(1); } } while (0)

struct Shape { const char* name; int out, in; float beta; };

int main(int argc, char** argv)
{
    std::vector<int> rows;
    for (int i = 1; i < argc; i++) rows.push_back(std::atoi(argv[i]));
    if (rows.empty()) rows = {8192, 2000, 2000, 1999, 2001, 1500, 1500, 3000, 3000, 777, 4097};
    const Shape shapes[] = {{"qkv", 6144, 4096, 0.f}, {"o_proj", 4096, 4096, 1.f}, {"down", 4096, 14336, 1.f}};
    int maxRows = 0;
    for (int r : rows) maxRows = r > maxRows ? r : maxRows;
    __nv_bfloat16 *x, *w;
    float* y;
    CK(cudaMalloc(&x, (size_t)maxRows * 14336 * 2));
    CK(cudaMalloc(&w, (size_t)14336 * 6144 * 2));
    CK(cudaMalloc(&y, (size_t)maxRows * 6144 * 4));
    CK(cudaMemset(x, 0, (size_t)maxRows * 14336 * 2));
    CK(cudaMemset(w, 0, (size_t)14336 * 6144 * 2));
    cublasHandle_t h;
    CK(cublasCreate(&h));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    std::printf("| rows | shape | 1st call host us | 1st GPU us | 2nd call host us | 2nd GPU us |\n|---|---|---|---|---|---|\n");
    for (int n : rows)
        for (const Shape& s : shapes) {
            double host[2], gpu[2];
            for (int k = 0; k < 2; k++) {
                float alpha = 1, beta = s.beta, ms = 0;
                CK(cudaDeviceSynchronize());
                CK(cudaEventRecord(e0));
                auto t0 = std::chrono::steady_clock::now();
                CK(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, s.out, n, s.in, &alpha, w, CUDA_R_16BF, s.in, x, CUDA_R_16BF, s.in,
                    &beta, y, CUDA_R_32F, s.out, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
                auto t1 = std::chrono::steady_clock::now();
                CK(cudaEventRecord(e1));
                CK(cudaEventSynchronize(e1));
                CK(cudaEventElapsedTime(&ms, e0, e1));
                host[k] = std::chrono::duration<double, std::micro>(t1 - t0).count();
                gpu[k] = ms * 1e3;
            }
            std::printf("| %d | %s | %.1f | %.1f | %.1f | %.1f |\n", n, s.name, host[0], gpu[0], host[1], gpu[1]);
        }
    return 0;
}
