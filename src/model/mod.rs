//! The RETRO model (Megatron's, exactly: docs/architecture.md, "The model"), its config and presets, its named
//! parameters and their safetensors I/O.

pub mod config;
mod decoder;
mod encoder;
pub mod kv_decode;
pub mod params;
mod retro;
pub mod safetensors_io;

pub use config::{padded_vocab_size, RetroConfig};
pub use params::Params;
pub use retro::{Batch, LossAndGrads, RetroModel};
