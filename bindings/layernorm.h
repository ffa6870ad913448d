/* Launch constants of kernels/layernorm.cu, shared with Rust through bindgen. */
#pragma once

/* Threads per block; thread t owns the 8-element column groups t, t + BLOCK, ... of a row. */
#define RETRO_LN_BLOCK 128
/* Column groups a thread keeps in registers: rows up to 128 * 8 * 4 = 4096 wide. */
#define RETRO_LN_MAX_GROUPS 4
