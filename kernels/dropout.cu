// Dropout: out[i] = x[i] * scale where element i is kept, 0 where dropped. Element i of `stream` under
// `seed` is kept when word i % 4 of Philox block i / 4 is at or above `threshold` (= p * 2^32): the mask
// src/philox.rs::keep_mask computes on the CPU, bit for bit, so both devices drop the same elements. The
// backward is the same kernel on the gradient with the same (seed, stream): the mask is regenerated, never
// stored.
// Tiling: one thread per 4-element block (one Philox call), grid-stride; the tail block stops at n.
#include "common.cuh"
#include "elementwise.h"
#include "philox.cuh"

template <typename T>
__device__ inline void dropout(T* __restrict__ out, const T* __restrict__ x, uint64_t n, uint64_t seed,
                               uint64_t stream, uint32_t threshold, float scale) {
    RETRO_GRID_STRIDE(j, (n + 3) / 4) {
        const uint4 w = philox_block(seed, stream, j);
        const uint32_t words[4] = {w.x, w.y, w.z, w.w};
        for (int e = 0; e < 4; ++e) {
            const uint64_t i = 4 * j + e;
            if (i < n) out[i] = from_float<T>(words[e] >= threshold ? to_float(x[i]) * scale : 0.f);
        }
    }
}
#define DROPOUT_PARAMS(T)                                                                                      \
    T *__restrict__ out, const T *__restrict__ x, uint64_t n, uint64_t seed, uint64_t stream, uint32_t threshold, \
        float scale
RETRO_BF16_AND_F32(, dropout, DROPOUT_PARAMS, out, x, n, seed, stream, threshold, scale)
