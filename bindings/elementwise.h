/* Launch constants of kernels/embedding.cu and kernels/gelu.cu, shared with Rust through bindgen. */
#pragma once

/* Threads per block of the element-wise kernels (each thread moves 8 bf16 = 16 bytes per step). */
#define RETRO_ELEMENTWISE_BLOCK 256
