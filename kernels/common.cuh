// Shared device helpers for every kernel family. No host code.
#pragma once
#include <cuda_bf16.h>
#include <stdint.h>

// Grid-stride loop over n elements with 64-bit indices.
#define RETRO_GRID_STRIDE(i, n) \
    for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (uint64_t)gridDim.x * blockDim.x)

// Sum of `v` over the block (blockDim.x a multiple of 32, at most 1024); the result is valid in thread 0.
// Warp shuffles then one shared-memory pass: a fixed order, so the result is deterministic.
template <typename T>
__device__ inline T block_sum(T v) {
    __shared__ T warp_sums[32];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) warp_sums[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < (int)(blockDim.x >> 5) ? warp_sums[lane] : T(0);
        for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    }
    return v;
}
