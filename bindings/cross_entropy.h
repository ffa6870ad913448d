/* Launch constants of kernels/cross_entropy.cu, shared with Rust through bindgen. */
#pragma once

/* Threads per row (one block per row of logits). */
#define RETRO_CE_BLOCK 512
