// Registers a kernel file's entry points with the emulated driver. scripts/device-emulation compiles each
// kernels/<name>.cu as C++ (cuda_emulation.h included first, as scripts/kernel-emulation does) followed by
// this header and one RETRO_REGISTER_KERNEL(entry) line per entry point of the file.
//
// A launch copies the kernel's arguments when cuLaunchKernel is called (CUDA's semantics: the caller may
// reuse its argument values at once) into a tuple of the entry point's own parameter types, and runs the
// kernel through emu::launch when the stream reaches it, one launch at a time on the whole device (the
// emulation's block state is global).
#pragma once
#include <memory>
#include <mutex>
#include <tuple>
#include <utility>

#include "device.h"

namespace emu_device {

inline std::mutex& kernel_lock() {
    static std::mutex m;
    return m;
}

template <typename F>
struct Parameters;
template <typename... A>
struct Parameters<void (*)(A...)> {
    using Tuple = std::tuple<std::decay_t<A>...>;
};

template <typename Tuple, size_t... I>
Tuple copy_arguments(void** params, std::index_sequence<I...>) {
    return Tuple{*static_cast<std::tuple_element_t<I, Tuple>*>(params[I])...};
}

template <auto Entry>
std::function<void()> bind(void** params, const LaunchShape& shape) {
    using Tuple = typename Parameters<decltype(Entry)>::Tuple;
    auto args = std::make_shared<Tuple>(
        copy_arguments<Tuple>(params, std::make_index_sequence<std::tuple_size<Tuple>::value>{}));
    return [args, shape] {
        std::lock_guard<std::mutex> one_launch_at_a_time(kernel_lock());
        emu::launch(dim3{shape.grid[0], shape.grid[1], shape.grid[2]},
                    dim3{shape.block[0], shape.block[1], shape.block[2]}, shape.shared_bytes,
                    [&] { std::apply(Entry, *args); });
    };
}

struct Registration {
    Registration(const char* name, Bind b) { register_kernel(name, b); }
};

}  // namespace emu_device

#define RETRO_REGISTER_KERNEL(entry) \
    static emu_device::Registration registration_##entry(#entry, &emu_device::bind<&entry>);
