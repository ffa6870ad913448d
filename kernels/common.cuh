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

// Eight bf16 values moved as one 16-byte vector (every row length retro's kernels take is a multiple of 8).
union Bf16x8 {
    uint4 raw;
    __nv_bfloat162 pair[4];
};

__device__ inline void load8(const __nv_bfloat16* p, float v[8]) {
    Bf16x8 u;
    u.raw = *reinterpret_cast<const uint4*>(p);
    for (int i = 0; i < 4; ++i) {
        const float2 f = __bfloat1622float2(u.pair[i]);
        v[2 * i] = f.x;
        v[2 * i + 1] = f.y;
    }
}

__device__ inline void store8(__nv_bfloat16* p, const float v[8]) {
    Bf16x8 u;
    for (int i = 0; i < 4; ++i) u.pair[i] = __floats2bfloat162_rn(v[2 * i], v[2 * i + 1]);
    *reinterpret_cast<uint4*>(p) = u.raw;
}

// The f32 versions (two 16-byte vectors): every element-wise kernel is a template over its element type,
// bf16 for training and f32 for the exact checks against the CPU reference.
__device__ inline void load8(const float* p, float v[8]) {
    const float4 a = reinterpret_cast<const float4*>(p)[0], b = reinterpret_cast<const float4*>(p)[1];
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
}

__device__ inline void store8(float* p, const float v[8]) {
    reinterpret_cast<float4*>(p)[0] = make_float4(v[0], v[1], v[2], v[3]);
    reinterpret_cast<float4*>(p)[1] = make_float4(v[4], v[5], v[6], v[7]);
}

__device__ inline float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ inline float to_float(float x) { return x; }
template <typename T> __device__ inline T from_float(float x);
template <> __device__ inline __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16(x); }
template <> __device__ inline float from_float<float>(float x) { return x; }

// Instantiate the kernel template `name<T>` (a __device__ function) as the extern "C" entry points
// `name_bf16` and `name_f32`. PARAMS(T) is a macro giving the parameter list for element type T; the
// remaining arguments are the parameter names, passed through.
#define RETRO_BF16_AND_F32(bounds, name, PARAMS, ...) \
    extern "C" __global__ void bounds name##_bf16(PARAMS(__nv_bfloat16)) { name<__nv_bfloat16>(__VA_ARGS__); } \
    extern "C" __global__ void bounds name##_f32(PARAMS(float)) { name<float>(__VA_ARGS__); }
// Sum over the whole block, returned to every thread. `scratch` holds one float per warp; the two
// barriers make back-to-back calls with the same scratch safe. Fixed order: deterministic.
__device__ inline float block_allreduce_sum(float v, float* scratch) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float total = 0.f;
    for (int w = 0; w < warps; ++w) total += scratch[w];
    return total;
}

__device__ inline float block_allreduce_max(float v, float* scratch) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float m = -INFINITY;
    for (int w = 0; w < warps; ++w) m = fmaxf(m, scratch[w]);
    return m;
}
