// The residual stream's plumbing, bf16 (or f32) rows:
//   add_*:           out = a + b            (a residual connection)
//   add_into_*:      a += b                 (gradients meeting at a fork of the residual stream)
//   shift_rows_*:    per batch, out[i] = x[i + shift] for i < rows_out, zero where i + shift is outside
//                    0..rows_in: the CCA's shift of the decoder states by m - 1 into chunks, its inverse,
//                    and their gradients (Megatron's pad / cut in decoder_attention.py).
//   add_bias_*:      out[r] = x[r] + bias for every row r of d: a row-parallel linear's bias, added once
//                    after the ranks' partial products are summed (its gradient is a column sum: reduce.cu).
//   scale_*:         out = x * factor * (*by, when by is not null): the CCA gate, the backward of a loss
//                    by its incoming gradient (a device scalar, so the host never waits for it), gradient
//                    averaging.
// Tiling: memory-bound grid-stride loops over 8-element groups (16-byte loads); widths are multiples of 8.
// scale_* works element by element, so any length (a LayerNorm's gradient of d elements) is accepted.
#include "common.cuh"
#include "elementwise.h"

template <typename T>
__device__ inline void add(T* __restrict__ out, const T* __restrict__ a, const T* __restrict__ b, uint64_t n) {
    RETRO_GRID_STRIDE(g, n / 8) {
        float x[8], y[8];
        load8(a + g * 8, x);
        load8(b + g * 8, y);
        for (int e = 0; e < 8; ++e) x[e] += y[e];
        store8(out + g * 8, x);
    }
}
#define ADD_PARAMS(T) T *__restrict__ out, const T *__restrict__ a, const T *__restrict__ b, uint64_t n
RETRO_BF16_AND_F32(, add, ADD_PARAMS, out, a, b, n)

template <typename T>
__device__ inline void add_into(T* __restrict__ a, const T* __restrict__ b, uint64_t n) {
    RETRO_GRID_STRIDE(g, n / 8) {
        float x[8], y[8];
        load8(a + g * 8, x);
        load8(b + g * 8, y);
        for (int e = 0; e < 8; ++e) x[e] += y[e];
        store8(a + g * 8, x);
    }
}
#define ADD_INTO_PARAMS(T) T *__restrict__ a, const T *__restrict__ b, uint64_t n
RETRO_BF16_AND_F32(, add_into, ADD_INTO_PARAMS, a, b, n)

template <typename T>
__device__ inline void add_bias(T* __restrict__ out, const T* __restrict__ x, const T* __restrict__ bias, uint64_t n,
                                int d) {
    RETRO_GRID_STRIDE(g, n / 8) {
        float v[8], b[8];
        load8(x + g * 8, v);
        load8(bias + (g * 8) % d, b);
        for (int e = 0; e < 8; ++e) v[e] += b[e];
        store8(out + g * 8, v);
    }
}
#define ADD_BIAS_PARAMS(T) T *__restrict__ out, const T *__restrict__ x, const T *__restrict__ bias, uint64_t n, int d
RETRO_BF16_AND_F32(, add_bias, ADD_BIAS_PARAMS, out, x, bias, n, d)

template <typename T>
__device__ inline void shift_rows(T* __restrict__ out, const T* __restrict__ x, int batch, int rows_in, int rows_out,
                                  int d, int shift) {
    const uint64_t groups = (uint64_t)d / 8;
    RETRO_GRID_STRIDE(g, (uint64_t)batch * rows_out * groups) {
        const uint64_t row = g / groups;  // b * rows_out + i
        const int c = (int)(g % groups) * 8;
        const int b = (int)(row / rows_out), i = (int)(row % rows_out);
        const int src = i + shift;
        float v[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
        if (src >= 0 && src < rows_in) load8(x + ((size_t)b * rows_in + src) * d + c, v);
        store8(out + row * d + c, v);
    }
}
#define SHIFT_PARAMS(T) T *__restrict__ out, const T *__restrict__ x, int batch, int rows_in, int rows_out, int d, int shift
RETRO_BF16_AND_F32(, shift_rows, SHIFT_PARAMS, out, x, batch, rows_in, rows_out, d, shift)

template <typename T>
__device__ inline void scale(T* __restrict__ out, const T* __restrict__ x, float factor, const float* __restrict__ by,
                             uint64_t n) {
    const float f = by ? factor * *by : factor;
    RETRO_GRID_STRIDE(i, n) out[i] = from_float<T>(to_float(x[i]) * f);
}
#define SCALE_PARAMS(T) T *__restrict__ out, const T *__restrict__ x, float factor, const float *__restrict__ by, uint64_t n
RETRO_BF16_AND_F32(, scale, SCALE_PARAMS, out, x, factor, by, n)
