/* Parameters of the fused AdamW kernels (kernels/adamw.cu), shared with Rust through bindgen.
 * Plain C: this header is read by nvcc (C++) and by libclang (C). */
#pragma once
#include <stdint.h>

/* Threads per block of every adamw.cu kernel. */
#define RETRO_ADAMW_BLOCK 256
/* Blocks of the first sum-of-squares pass: a fixed grid keeps the reduction order, and so the bits, fixed. */
#define RETRO_SUMSQ_BLOCKS 256

/* One AdamW step over a flat f32 parameter arena (torch.optim.AdamW + clip_grad_norm_ semantics). The
 * arena holds the parameters that decay first: elements [0, decay_end) decay, the rest do not. */
typedef struct AdamwParams {
    float decay_factor;          /* 1 - lr * weight_decay, for elements below decay_end */
    float one_minus_beta1;       /* 1 - beta1 */
    float beta2;
    float one_minus_beta2;       /* 1 - beta2 */
    float eps;
    float step_size;             /* lr / (1 - beta1^t) */
    float bias_correction2_sqrt; /* sqrt(1 - beta2^t) */
    double grad_scale;           /* multiplied into every gradient (1 / micro-batches: the average) */
    double max_norm;             /* clip the global norm of grad_scale * grad to this; <= 0: no clipping */
    uint64_t n;                  /* elements */
    uint64_t decay_end;          /* elements [0, decay_end) decay */
} AdamwParams;
