// The kernel emulation's test runner: every family's checks, then a count. Exit status 1 on any failure.
#include "harness.h"

#include <chrono>

void attention_tests();
void norm_tests();
void loss_tests();
void optimizer_tests();
void elementwise_tests();
void self_tests();

int main() {
    const struct {
        const char* name;
        void (*run)();
    } families[] = {{"self-test", self_tests},       {"elementwise", elementwise_tests}, {"optimizer", optimizer_tests}, {"norms", norm_tests},
                    {"losses", loss_tests},           {"attention", attention_tests}};
    for (const auto& f : families) {
        const auto start = std::chrono::steady_clock::now();
        f.run();
        const std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
        printf("-- %s: %.1f s\n", f.name, took.count());
    }
    if (failures()) {
        printf("kernel emulation: %d checks failed\n", failures());
        return 1;
    }
    printf("kernel emulation: all checks passed\n");
    return 0;
}
