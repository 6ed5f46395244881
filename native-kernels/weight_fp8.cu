// FP8 checkpoint weights to bf16 on the GPU, as the loader uploads them: a run of a matrix's fp8 codes (one byte per
// weight, half the bytes of bf16 over PCIe and no host pass over each weight) becomes
//   out[i] = bf16(value(codes[i]) * scale(row, column)),   element first + i of a row-major [rows, columns] matrix,
// with the scale of the element's [block_rows, block_columns] block: one per matrix (block = the matrix), one per
// output row (block_rows = 1, block_columns = columns), or one per block, the last blocks of a row or column partial.
// value() is the format's 256-entry table made by the host (SwiftKV.Model.Checkpoint.Float8), and the product is
// one fp32 multiply rounded to nearest even, so the result equals the CPU loader's dequantization rounded to bf16.
// Launch: any grid-stride grid, block 256.
// dequantize_e4m3_rows_bf16: the same values for an e4m3 matrix held on the GPU as codes with one scale per row (the
// engine's kept FP8 weights), written whole into a bf16 scratch before a GEMM reads it: 16 codes per thread and step
// (one 16-byte load, two 16-byte stores). Needs columns % 16 == 0 and 16-byte aligned codes and out. Launch: any
// grid-stride grid, block 256.
#include "swiftkv_common.cuh"

extern "C" __global__ void dequantize_fp8_bf16(const unsigned char* codes, long long n, long long first,
                                               const float* table, const float* scales, long long columns,
                                               int block_rows, int block_columns, int scale_columns, bf16_t* out)
{
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
    {
        long long g = first + i;
        long long row = g / columns, column = g - row * columns;
        float scale = scales[(row / block_rows) * scale_columns + column / block_columns];
        out[i] = f32_to_bf16(__fmul_rn(table[codes[i]], scale));
    }
}

extern "C" __global__ void dequantize_e4m3_rows_bf16(const uint4* codes, const float* scales, long long rows, long long columns, uint4* out)
{
    const long long chunks = rows * columns / 16, perRow = columns / 16;
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < chunks; i += stride)
    {
        float v[16];
        e4m3x16_to_f32(codes[i], v);
        const float scale = scales[i / perRow];
        unsigned packed[8];
#pragma unroll
        for (int j = 0; j < 8; j++)
            packed[j] = (unsigned)f32_to_bf16(__fmul_rn(v[2 * j], scale)) | ((unsigned)f32_to_bf16(__fmul_rn(v[2 * j + 1], scale)) << 16);
        out[2 * i] = make_uint4(packed[0], packed[1], packed[2], packed[3]);
        out[2 * i + 1] = make_uint4(packed[4], packed[5], packed[6], packed[7]);
    }
}
