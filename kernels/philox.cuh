// Philox4x32-10 (Salmon et al., SC 2011) and the draws built on it, shared by kernels/random.cu and
// kernels/dropout.cu. src/philox.rs is the CPU twin and documents the layout: 4-element block j of stream
// s under seed is philox(counter = [lo(j), hi(j), lo(s), hi(s)], key = [lo(seed), hi(seed)]).
#pragma once
#include <stdint.h>

__device__ inline uint4 philox4x32_10(uint4 c, uint2 k) {
#pragma unroll
    for (int round = 0; round < 10; ++round) {
        if (round > 0) {
            k.x += 0x9E3779B9u;
            k.y += 0xBB67AE85u;
        }
        const uint32_t lo0 = 0xD2511F53u * c.x, hi0 = __umulhi(0xD2511F53u, c.x);
        const uint32_t lo1 = 0xCD9E8D57u * c.z, hi1 = __umulhi(0xCD9E8D57u, c.z);
        c = make_uint4(hi1 ^ c.y ^ k.x, lo1, hi0 ^ c.w ^ k.y, lo0);
    }
    return c;
}

// The four words of block j of `stream` under `seed`.
__device__ inline uint4 philox_block(uint64_t seed, uint64_t stream, uint64_t j) {
    return philox4x32_10(make_uint4((uint32_t)j, (uint32_t)(j >> 32), (uint32_t)stream, (uint32_t)(stream >> 32)),
                         make_uint2((uint32_t)seed, (uint32_t)(seed >> 32)));
}
