// kernels/cross_entropy.cu and kernels/vocab_parallel.cu against a double reference. The vocab-parallel
// kernels run on two "ranks" (two slices of every row's classes), with the host standing in for the NCCL
// max and sum between them, as ops/parallel.rs does on GPUs; both must give the unsplit row's loss and
// each rank its slice of the gradient. Rows with the ignored target -1; vocabularies shorter than one
// block's column groups and longer than two.
#include "harness.h"
#include "cross_entropy.h"

#define CE_KERNELS(T, S)                                                                                         \
    void softmax_cross_entropy_##S(T* logits, float* losses, const int32_t* targets, int classes, float grad_scale); \
    void vocab_ce_row_max_##S(const T* logits, int classes, float* max);                                        \
    void vocab_ce_row_sums_##S(const T* logits, int classes, const float* max, const int32_t* targets, float* sums); \
    void vocab_ce_loss_grad_##S(const T* logits, int classes, const float* max, const float* sums,               \
                                const int32_t* targets, float grad_scale, float* losses, T* dz);
extern "C" {
CE_KERNELS(bf16, bf16)
CE_KERNELS(float, f32)
}

namespace {

template <typename T>
void cross_entropy(int rows, int classes) {
    const float grad_scale = 0.25f;
    Rng rng(rows * 7 + classes);
    Buf<T> logits((size_t)rows * classes);
    rng.fill(logits, -4.0, 6.0);
    Buf<int32_t> targets(rows);
    for (int r = 0; r < rows; ++r) targets[r] = r == 1 ? -1 : (int32_t)((r * 7919 + 13) % classes);
    // The reference from the rounded logits.
    std::vector<double> want_loss(rows), want_grad((size_t)rows * classes);
    for (int r = 0; r < rows; ++r) {
        double m = -INFINITY, s = 0;
        for (int j = 0; j < classes; ++j) m = fmax(m, to_f(logits[(size_t)r * classes + j]));
        for (int j = 0; j < classes; ++j) s += exp(to_f(logits[(size_t)r * classes + j]) - m);
        const int t = targets[r];
        want_loss[r] = t < 0 ? 0.0 : m + log(s) - to_f(logits[(size_t)r * classes + t]);
        for (int j = 0; j < classes; ++j) {
            const double p = exp(to_f(logits[(size_t)r * classes + j]) - m) / s;
            want_grad[(size_t)r * classes + j] = t < 0 ? 0.0 : (p - (j == t)) * grad_scale;
        }
    }
    const std::string name = std::string("(") + type_name<T>() + ") " + std::to_string(rows) + " x " +
                             std::to_string(classes);

    // The vocab-parallel kernels on two slices, before the fused kernel overwrites the logits.
    const int split = (classes / 16) * 8, widths[2] = {split, classes - split};
    std::vector<Buf<T>*> slices, grads;
    std::vector<Buf<int32_t>*> local_targets;
    Buf<float> max(rows), sums(2 * (size_t)rows), losses(rows);
    for (int r = 0; r < rows; ++r) max[r] = -INFINITY, sums[r] = sums[rows + r] = 0.f;
    for (int k = 0; k < 2; ++k) {
        const int first = k == 0 ? 0 : split, width = widths[k];
        slices.push_back(new Buf<T>((size_t)rows * width));
        grads.push_back(new Buf<T>((size_t)rows * width));
        local_targets.push_back(new Buf<int32_t>(rows));
        for (int r = 0; r < rows; ++r) {
            memcpy(slices[k]->p + (size_t)r * width, logits.p + (size_t)r * classes + first, width * sizeof(T));
            const int t = targets[r];
            (*local_targets[k])[r] = t >= first && t < first + width ? t - first : -1;
        }
    }
    // Row maxima per rank, then their max (NCCL max).
    for (int k = 0; k < 2; ++k) {
        Buf<float> local(rows);
        emu::launch(dim3(rows), RETRO_CE_BLOCK, 0, [&] { RETRO_KERNEL(T, vocab_ce_row_max)(slices[k]->p, widths[k], local.p); });
        for (int r = 0; r < rows; ++r) max[r] = fmaxf(max[r], local[r]);
    }
    // Sums of exponentials and target logits per rank, then their sum (NCCL sum).
    for (int k = 0; k < 2; ++k) {
        Buf<float> local(2 * (size_t)rows);
        emu::launch(dim3(rows), RETRO_CE_BLOCK, 0,
                    [&] { RETRO_KERNEL(T, vocab_ce_row_sums)(slices[k]->p, widths[k], max.p, local_targets[k]->p, local.p); });
        for (size_t e = 0; e < 2 * (size_t)rows; ++e) sums[e] += local[e];
    }
    for (int k = 0; k < 2; ++k) {
        emu::launch(dim3(rows), RETRO_CE_BLOCK, 0, [&] {
            RETRO_KERNEL(T, vocab_ce_loss_grad)(slices[k]->p, widths[k], max.p, sums.p, local_targets[k]->p, grad_scale, losses.p,
                                  grads[k]->p);
        });
        // A row whose target no rank holds (-1) is not ignored by the vocab-parallel loss: Megatron's
        // vocab-parallel loss has no ignore index; the model masks such rows with the loss mask.
        std::vector<double> want_l(rows), want_g((size_t)rows * widths[k]);
        const int first = k == 0 ? 0 : split;
        for (int r = 0; r < rows; ++r) {
            double m = -INFINITY, s = 0;
            for (int j = 0; j < classes; ++j) m = fmax(m, to_f(logits[(size_t)r * classes + j]));
            for (int j = 0; j < classes; ++j) s += exp(to_f(logits[(size_t)r * classes + j]) - m);
            const int t = targets[r];
            want_l[r] = m + log(s) - (t < 0 ? 0.0 : to_f(logits[(size_t)r * classes + t]));
            for (int j = 0; j < widths[k]; ++j) {
                const double p = exp(to_f(logits[(size_t)r * classes + first + j]) - m) / s;
                want_g[(size_t)r * widths[k] + j] = (p - (first + j == t)) * grad_scale;
            }
        }
        const std::string rank = "vocab-parallel cross-entropy " + name + ", rank " + std::to_string(k) + " of 2";
        expect_close(rank + ": loss", losses, want_l, 1e-5, 1e-5);
        expect_close(rank + ": gradient slice", *grads[k], want_g, tol<T>() * 1e-2, tol<T>());
    }
    for (int k = 0; k < 2; ++k) delete slices[k], delete grads[k], delete local_targets[k];

    Buf<float> fused_losses(rows);
    emu::launch(dim3(rows), RETRO_CE_BLOCK, 0,
                [&] { RETRO_KERNEL(T, softmax_cross_entropy)(logits.p, fused_losses.p, targets.p, classes, grad_scale); });
    expect_close("fused cross-entropy " + name + " (row 1 ignored): loss", fused_losses, want_loss, 1e-5, 1e-5);
    expect_close("fused cross-entropy " + name + ": gradient in place", logits, want_grad, tol<T>() * 1e-2, tol<T>());
}

}  // namespace

void loss_tests() {
    cross_entropy<bf16>(4, 1000);
    cross_entropy<float>(3, 8200);
    cross_entropy<bf16>(2, 8200);
}
