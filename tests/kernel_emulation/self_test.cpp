// The emulation's own diagnostics: kernels that are wrong in the ways a GPU would hang on or leave
// undefined must end the emulation with a message naming the fault, not hang or pass. Each runs in a
// child process (the emulation aborts on a fault); the parent checks that it aborted and what it said.
#include "harness.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

namespace {

// Runs `body` in a child with a 1 s barrier timeout; returns its stderr if it died by SIGABRT, else a
// description of how it ended.
std::string aborts_with(void (*body)()) {
    int pipe_fds[2];
    if (pipe(pipe_fds) != 0) emu::fail("pipe");
    fflush(stdout);
    const pid_t child = fork();
    if (child == 0) {
        dup2(pipe_fds[1], 2);
        close(pipe_fds[0]);
        emu::barrier_timeout_s = 1.0;
        body();
        _exit(0);
    }
    close(pipe_fds[1]);
    std::string err;
    char buf[512];
    ssize_t got;
    while ((got = read(pipe_fds[0], buf, sizeof buf)) > 0) err.append(buf, (size_t)got);
    close(pipe_fds[0]);
    int status = 0;
    waitpid(child, &status, 0);
    if (WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT) return err;
    return "(did not abort: status " + std::to_string(status) + ") " + err;
}

void check(const char* what, void (*body)(), const char* message) {
    const std::string err = aborts_with(body);
    const bool ok = err.find(message) != std::string::npos;
    expect(std::string("emulation self-test: ") + what + " is reported" + (ok ? "" : ": got \"" + err + "\""), ok);
}

// Lane 0 of warp 0 waits at __syncthreads while lanes 1..31 wait for it in a shuffle: a hang on a GPU.
// Either wait may be the first to time out; both messages say what was not reached.
void barrier_never_reached() {
    emu::launch(dim3(1), 64, 0, [] {
        float v = 1.f;
        if (threadIdx.x == 0) __syncthreads();
        else if (threadIdx.x < 32) v = __shfl_xor_sync(0xffffffffu, v, 1);
        else __syncthreads();
        (void)v;
    });
}

// A full-mask shuffle after lane 5 has returned: undefined on a GPU.
void shuffle_after_return() {
    emu::launch(dim3(1), 32, 0, [] {
        if (threadIdx.x == 5) return;
        float v = __shfl_xor_sync(0xffffffffu, 1.f, 1);
        (void)v;
    });
}

// Thread 7 returns before a __syncthreads the others reach: undefined on a GPU.
void syncthreads_after_return() {
    emu::launch(dim3(1), 64, 0, [] {
        if (threadIdx.x == 7) return;
        __syncthreads();
    });
}

void too_much_shared_memory() { emu::launch(dim3(1), 32, 228 * 1024, [] {}); }

}  // namespace

void self_tests() {
    check("a barrier one thread never reaches", barrier_never_reached, "that not every");
    check("a shuffle after a lane returned", shuffle_after_return, "after lanes of its warp had returned");
    check("a __syncthreads after a thread returned", syncthreads_after_return, "after threads of the block had returned");
    check("a launch with more shared memory than a block can have", too_much_shared_memory, "227 KiB");
}
