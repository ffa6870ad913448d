//! retro: a RETRO (Retrieval-Enhanced Transformer) training engine.
//! docs/architecture.md is the map of the code; each module's doc says what it holds.

pub mod alloc_tuning;
pub mod atomic_file;
pub mod autograd;
pub mod backend;
pub mod bench;
pub mod commands;
pub mod data;
pub mod dist;
pub mod error;
pub mod model;
pub mod nn;
pub mod ops;
pub mod philox;
pub mod preprocess;
pub mod profile;
pub mod progress;
pub mod retrieval;
pub mod rng;
pub mod tensor;
pub mod train;
pub mod variants;

pub use error::{Context, Error, Result};

/// Kernels compiled by build.rs (PTX and fatbin per `kernels/*.cu`), or an empty list without nvcc.
pub mod kernels {
    #[cfg(not(no_cuda_kernels))]
    include!(concat!(env!("OUT_DIR"), "/kernels.rs"));

    #[cfg(no_cuda_kernels)]
    pub mod build {
        /// Why no kernels were compiled (set by build.rs).
        pub const MISSING_REASON: &str = env!("RETRO_NO_KERNELS_REASON");
    }
}
