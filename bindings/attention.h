/* Parameters and tile sizes of kernels/attention.cu, shared with Rust through bindgen. */
#pragma once
#include <stdint.h>

/* Query rows per block (4 warps x 16 rows) and keys per tile. */
#define RETRO_ATTN_BLOCK_M 64
#define RETRO_ATTN_BLOCK_N 64
#define RETRO_ATTN_THREADS 128
/* bf16 elements of padding per shared-memory row: 16 bytes, so the 8 rows a fragment load touches
 * start in 8 different groups of 4 banks (conflict-free). */
#define RETRO_ATTN_PAD 8

/* One attention problem: q [batch, sq, heads * hd] and k, v [batch, sk, heads * hd] read in place with
 * row strides (so a fused QKV or KV projection output is used without a copy); the gradients dq, dk, dv
 * are written with the same strides as q, k, v. o and do are contiguous [batch, sq, heads * hd]. */
typedef struct AttentionParams {
    uint64_t q, k, v, o, lse;   /* device addresses; lse [batch * heads, sq] f32, log2 domain */
    uint64_t dout, delta;       /* backward: dO, and delta = rowsum(dO * O) [batch * heads, sq] */
    uint64_t dq, dk, dv;
    uint64_t key_mask;          /* u8 [batch, sk], nonzero = visible (missing neighbours are 0); 0 = all visible */
    uint64_t dropout_seed;      /* attention dropout: probability (i, j) of pair bh = b * heads + h is kept when
                                   word (i * sk + j) % 4 of Philox block (i * sk + j) / 4 of stream bh is at
                                   least dropout_threshold (src/philox.rs::keep_mask, as the CPU) */
    uint32_t dropout_threshold;
    float dropout_scale;        /* 1 / (1 - p) for a kept probability; 0 = no dropout */
    int32_t dropout_first_head; /* a tensor-parallel rank's slice of the layer's heads: its pair b * heads + h */
    int32_t dropout_all_heads;  /* draws stream b * all_heads + first_head + h, the unsplit layer's; 0 = unsplit */
    int32_t batch, heads, sq, sk, head_dim;
    int32_t q_stride, k_stride, v_stride; /* elements between consecutive rows */
    int32_t causal;             /* 1: query i sees keys 0..=i */
    float scale;                /* softmax scale, 1 / sqrt(hd) */
    float scale_log2;           /* scale * log2(e): exp(scale * s) = exp2(scale_log2 * s) */
} AttentionParams;
