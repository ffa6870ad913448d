/* Launch constants of kernels/reduce.cu, shared with Rust through bindgen. */
#pragma once

/* Columns per block of the column sums (one thread per column: coalesced row reads). */
#define RETRO_COLSUM_BLOCK 256
/* Rows each first-pass block of column_sum_bf16_partials adds up. */
#define RETRO_COLSUM_ROWS 256
