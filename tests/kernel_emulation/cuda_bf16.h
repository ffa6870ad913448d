// The CPU stand-in for CUDA's <cuda_bf16.h> (tests/kernel_emulation/cuda_emulation.h; also the device
// emulation's cuBLASLt and NCCL): bf16 as its 16 bits, conversions from f32 rounding to nearest even
// (NaN stays NaN), as the GPU's __float2bfloat16.
#pragma once
#include <stdint.h>
#include <string.h>

#include "vector_types.h"

struct __nv_bfloat16 {
    uint16_t bits;
};
struct alignas(4) __nv_bfloat162 {
    __nv_bfloat16 x, y;
};

inline float __bfloat162float(__nv_bfloat16 v) {
    const uint32_t bits = (uint32_t)v.bits << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

inline __nv_bfloat16 __float2bfloat16(float f) {
    uint32_t bits;
    memcpy(&bits, &f, 4);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return {(uint16_t)((bits >> 16) | 0x40u)};
    bits += 0x7fffu + ((bits >> 16) & 1u);
    return {(uint16_t)(bits >> 16)};
}

inline __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi) { return {__float2bfloat16(lo), __float2bfloat16(hi)}; }

inline float2 __bfloat1622float2(__nv_bfloat162 v) { return {__bfloat162float(v.x), __bfloat162float(v.y)}; }
