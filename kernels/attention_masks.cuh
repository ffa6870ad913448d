// What both attention kernels (attention.cu, attention_exact.cu) hide or drop, as the CPU reference does
// (src/backend/cpu/attention.rs): keys the key mask hides (missing neighbours) get no probability, and a
// row whose keys are all hidden is zero; attention dropout scales kept probabilities by 1 / (1 - p) and
// zeroes the others, with the mask a pure function of (seed, pair, row, key), so the backward regenerates it.
#pragma once
#include "attention.h"
#include "philox.cuh"

// Whether key `key` of batch `b` is visible.
__device__ inline bool key_visible(const AttentionParams& p, int b, int key) {
    return p.key_mask == 0 || reinterpret_cast<const uint8_t*>(p.key_mask)[(size_t)b * p.sk + key] != 0;
}

// The dropout factor of probability (row, key) of pair bh: 0 or 1 / (1 - p); 1 without dropout. A
// tensor-parallel rank's pair draws the stream of the same head in the whole layer, so masks do not
// depend on the split (the CPU's `Dropout::split_heads`).
__device__ inline float keep_factor(const AttentionParams& p, int bh, int row, int key) {
    if (p.dropout_scale == 0.f) return 1.f;
    const uint64_t i = (uint64_t)row * p.sk + key;
    const uint64_t stream = p.dropout_all_heads == 0 ? (uint64_t)bh
                                                     : (uint64_t)(bh / p.heads) * p.dropout_all_heads +
                                                           p.dropout_first_head + bh % p.heads;
    const uint4 w = philox_block(p.dropout_seed, stream, i >> 2);
    const uint32_t e = (uint32_t)(i & 3);
    const uint32_t word = e == 0 ? w.x : e == 1 ? w.y : e == 2 ? w.z : w.w;
    return word >= p.dropout_threshold ? p.dropout_scale : 0.f;
}
