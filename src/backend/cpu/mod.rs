//! CPU reference kernels on contiguous row-major slices, generic over f32 / f64.
//! Rows are split over rayon in fixed-size blocks and partial sums are combined in block order, so every
//! result is bitwise reproducible whatever the thread count.

pub mod adamw;
pub mod attention;
pub mod cross_entropy;
pub mod dropout;
pub mod elementwise;
pub mod embedding;
pub mod gemm;
pub mod layernorm;
pub mod layout;
pub mod linear;
pub mod math;
mod parallel;
pub mod simd;

pub use parallel::{column_sums, SendPtr, ROW_BLOCK};
