// The emulated device's core, shared by the stand-ins for libcuda (driver.cpp), libcublasLt (cublaslt.cpp)
// and libnccl (nccl.cpp): device memory, streams that run their work in order on a worker thread each, and
// events. libcuda.so.1 defines these; the other two libraries link against it, so all three see one device.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include <functional>
#include <string>

#define EMU_EXPORT __attribute__((visibility("default")))

namespace emu_device {

struct Stream;

// Queue `work` on `stream` (nullptr: the legacy default stream, which waits for every other stream first
// and runs `work` before returning, as CUDA's legacy stream orders itself with all blocking streams).
EMU_EXPORT void enqueue(Stream* stream, std::function<void()> work);
// Wait until everything queued on `stream` so far has run.
EMU_EXPORT void synchronize(Stream* stream);

// Whether [ptr, ptr + bytes) lies inside one live device allocation.
EMU_EXPORT bool device_range(uint64_t ptr, size_t bytes);
// Whether [ptr, ptr + bytes) lies inside one live page-locked host allocation (cuMemHostAlloc).
EMU_EXPORT bool pinned_range(const void* ptr, size_t bytes);

// A kernel entry point: `bind` copies the launch's arguments out of cuLaunchKernel's `params` (pointers
// to each argument, as CUDA passes them) and returns the launch, to run when the stream reaches it.
struct LaunchShape {
    unsigned grid[3], block[3];
    size_t shared_bytes;
};
using Bind = std::function<void()> (*)(void** params, const LaunchShape& shape);
// Called by each kernel file's registration (kernel_entry.h) when libcuda.so.1 is loaded.
EMU_EXPORT void register_kernel(const char* name, Bind bind);

// Report a fault of the program under test (a misuse a GPU would answer with an error or a crash) and abort.
EMU_EXPORT [[noreturn]] void fault(const std::string& what);

}  // namespace emu_device

