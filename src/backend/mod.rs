//! Compute backends. `cpu` is the reference every kernel is checked against. `cuda` finds the driver
//! and devices, loads the embedded kernel modules and launches them; it grows into the full GPU
//! backend (storage, allocator, every op) in [cuda-core].

pub mod cpu;
pub mod cuda;
