// The two pieces of kernels/attention.cu that are not plain C++: the warp-wide bf16 tensor-core MMA
// (mma.sync.m16n8k16, f32 accumulate) and the block's dynamic shared memory. scripts/kernel-emulation
// compiles the kernels as C++ on the CPU with its own definitions of both (tests/kernel_emulation/),
// so they are defined here only for nvcc.
#pragma once
#include <stdint.h>

#ifndef RETRO_KERNEL_EMULATION
// c += A B for one warp: A 16x16 (row-major fragment a[4]), B 16x8 (column-major fragment b[2]), each
// register two bf16; the fragment layouts are the PTX ISA's for m16n8k16 (see load_a / load_b).
__device__ inline void mma16816(float c[4], const uint32_t a[4], const uint32_t b[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// The block's dynamic shared memory (sized by the launch), 16-byte aligned for the vector stores.
#define RETRO_DYNAMIC_SHARED(name) extern __shared__ __align__(16) unsigned char name[]
#endif
