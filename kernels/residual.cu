// The residual stream's plumbing, bf16 rows:
//   add_bf16:        out = a + b            (a residual connection)
//   add_into_bf16:   a += b                 (gradients meeting at a fork of the residual stream)
//   shift_rows_bf16: per batch, out[i] = x[i + shift] for i < rows_out, zero where i + shift is outside
//                    0..rows_in: the CCA's shift of the decoder states by m - 1 into chunks, its inverse,
//                    and their gradients (Megatron's pad / cut in decoder_attention.py).
// Tiling: memory-bound grid-stride loops over 8-element groups (16-byte loads); widths are multiples of 8.
#include "common.cuh"
#include "elementwise.h"

extern "C" __global__ void add_bf16(__nv_bfloat16* __restrict__ out, const __nv_bfloat16* __restrict__ a,
                                    const __nv_bfloat16* __restrict__ b, uint64_t n) {
    RETRO_GRID_STRIDE(g, n / 8) {
        float x[8], y[8];
        load8(a + g * 8, x);
        load8(b + g * 8, y);
        for (int e = 0; e < 8; ++e) x[e] += y[e];
        store8(out + g * 8, x);
    }
}

extern "C" __global__ void add_into_bf16(__nv_bfloat16* __restrict__ a, const __nv_bfloat16* __restrict__ b, uint64_t n) {
    RETRO_GRID_STRIDE(g, n / 8) {
        float x[8], y[8];
        load8(a + g * 8, x);
        load8(b + g * 8, y);
        for (int e = 0; e < 8; ++e) x[e] += y[e];
        store8(a + g * 8, x);
    }
}

extern "C" __global__ void shift_rows_bf16(__nv_bfloat16* __restrict__ out, const __nv_bfloat16* __restrict__ x,
                                           int batch, int rows_in, int rows_out, int d, int shift) {
    const uint64_t groups = (uint64_t)d / 8;
    RETRO_GRID_STRIDE(g, (uint64_t)batch * rows_out * groups) {
        const uint64_t row = g / groups;  // b * rows_out + i
        const int c = (int)(g % groups) * 8;
        const int b = (int)(row / rows_out), i = (int)(row % rows_out);
        const int src = i + shift;
        uint4 v = make_uint4(0, 0, 0, 0);
        if (src >= 0 && src < rows_in) v = *reinterpret_cast<const uint4*>(x + ((size_t)b * rows_in + src) * d + c);
        *reinterpret_cast<uint4*>(out + row * d + c) = v;
    }
}
