//! Loading the embedded kernel modules: the fatbin (native code for sm_80 / sm_90a, plus compute_90 PTX
//! the driver can JIT) or the plain compute_90 PTX.

use super::device::cuda_error;
use crate::kernels::{Module, MODULES};
use crate::Result;
use cudarc::driver::{CudaContext, CudaModule};
use cudarc::nvrtc::Ptx;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Image {
    Fatbin,
    Ptx,
}

impl std::fmt::Display for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Image::Fatbin => "fatbin",
            Image::Ptx => "PTX",
        })
    }
}

pub fn find(name: &str) -> Result<&'static Module> {
    match MODULES.iter().find(|m| m.name == name) {
        Some(m) => Ok(m),
        None => crate::bail!(
            "no kernel module {name:?} was compiled (have: {:?})",
            MODULES.iter().map(|m| m.name).collect::<Vec<_>>()
        ),
    }
}

/// Load module `name` from the chosen image.
pub fn load(ctx: &Arc<CudaContext>, name: &str, image: Image) -> Result<Arc<CudaModule>> {
    let module = find(name)?;
    let ptx = match image {
        Image::Fatbin => Ptx::from_binary(module.fatbin.to_vec()),
        Image::Ptx => Ptx::from_src(module.ptx),
    };
    ctx.load_module(ptx).map_err(|e| cuda_error(&format!("loading the {image} of kernels/{name}.cu"), e))
}

/// Load module `name`: the fatbin first, the PTX if the fatbin has nothing for this device.
pub fn load_best(ctx: &Arc<CudaContext>, name: &str) -> Result<(Arc<CudaModule>, Image)> {
    match load(ctx, name, Image::Fatbin) {
        Ok(m) => Ok((m, Image::Fatbin)),
        Err(fatbin_err) => load(ctx, name, Image::Ptx).map(|m| (m, Image::Ptx)).map_err(|ptx_err| {
            crate::Error::msg(format!(
                "neither image of kernels/{name}.cu loads on this device ({fatbin_err}; {ptx_err}); \
                 the fatbin holds {:?} and the PTX needs a driver for CUDA 13.0 or newer",
                crate::kernels::FATBIN_ARCHS
            ))
        }),
    }
}

/// The kernel entry points of a module, read from its PTX (`.entry NAME(`): every `extern "C"
/// __global__` function, the instantiated `_bf16` / `_f32` pairs included.
pub fn entry_points(module: &Module) -> Vec<&'static str> {
    module
        .ptx
        .lines()
        .filter_map(|l| l.split_once(".entry ").map(|(_, rest)| rest))
        .map(|rest| rest.split(|c: char| c == '(' || c.is_whitespace()).next().unwrap_or(rest))
        .collect()
}

/// Every entry point of every compiled module as (module, entry point).
pub fn all_entry_points() -> Vec<(&'static str, &'static str)> {
    MODULES.iter().flat_map(|m| entry_points(m).into_iter().map(move |e| (m.name, e))).collect()
}
