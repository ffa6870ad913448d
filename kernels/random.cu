// Counter-based random fills: out[i] = std * N(0, 1) drawn by Philox4x32-10 (src/philox.rs is the CPU
// twin and documents the layout): 4-element block j of stream s under seed is
// philox(counter = [lo(j), hi(j), lo(s), hi(s)], key = [lo(seed), hi(seed)]), and Box-Muller turns words
// (0, 1) and (2, 3) into elements (4j, 4j + 1) and (4j + 2, 4j + 3). No state: any thread draws any block,
// so a buffer of any size fills in one grid-stride pass and the values do not depend on the grid.
// Used for benchmark inputs and for initialising large models on the GPU (the host would take seconds).
// Tiling: one thread per 4-element block, grid-stride; the tail block writes only the elements < n.
#include "common.cuh"
#include "elementwise.h"
#include "philox.cuh"

// The top 23 bits plus half a step: exact in f32, strictly inside (0, 1) (2^-24 .. 1 - 2^-24).
__device__ inline float unit_open(uint32_t w) { return ((float)(w >> 9) + 0.5f) * (1.0f / 8388608.0f); }

__device__ inline float2 box_muller(uint32_t w0, uint32_t w1) {
    const float r = sqrtf(-2.0f * logf(unit_open(w0)));
    float s, c;
    sincospif(2.0f * unit_open(w1), &s, &c);
    return make_float2(r * c, r * s);
}

template <typename T>
__device__ inline void fill_normal(T* __restrict__ out, uint64_t n, uint64_t seed, uint64_t stream, float std) {
    RETRO_GRID_STRIDE(j, (n + 3) / 4) {
        const uint4 w = philox_block(seed, stream, j);
        const float2 a = box_muller(w.x, w.y), b = box_muller(w.z, w.w);
        const float v[4] = {a.x, a.y, b.x, b.y};
        for (int e = 0; e < 4; ++e)
            if (4 * j + e < n) out[4 * j + e] = from_float<T>(std * v[e]);
    }
}
#define FILL_NORMAL_PARAMS(T) T *__restrict__ out, uint64_t n, uint64_t seed, uint64_t stream, float std
RETRO_BF16_AND_F32(, fill_normal, FILL_NORMAL_PARAMS, out, n, seed, stream, std)
