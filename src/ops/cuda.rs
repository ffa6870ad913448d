//! What the ops share on the GPU: the dtype dispatch over the two device float types (bf16 for training
//! activations and GEMM operands, f32 to check against the CPU), and the device check every op makes.
//! Each op's GPU branch lives in its own file, next to its CPU branch, and calls backend/cuda's launcher
//! of the same name.

use crate::autograd::Var;
use crate::tensor::Device;
use crate::{ensure, Result};

/// For an op with no GPU path yet: `x` must be on the CPU, else an error naming the op, the device and
/// `why` it is CPU-only.
pub(crate) fn cpu_only(op: &str, x: &Var, why: &str) -> Result<()> {
    ensure!(x.value().device() == Device::Cpu, "{op}: {why} (a tensor on {})", x.value().device());
    Ok(())
}

/// Run `$body` with `$E` the GPU element type of `$dtype` (bf16 or f32), or fail naming the op.
#[macro_export]
macro_rules! with_gpu_float {
    ($dtype:expr, $op:expr, $E:ident => $body:expr) => {
        match $dtype {
            $crate::tensor::DType::BF16 => {
                type $E = half::bf16;
                $body
            }
            $crate::tensor::DType::F32 => {
                type $E = f32;
                $body
            }
            other => $crate::bail!("{}: {} tensors are not computed on a GPU (use bf16 or f32)", $op, other),
        }
    };
}

/// The device all of `vars` are on; an error naming the op and the shapes when they differ.
pub fn same_device(op: &str, vars: &[&Var]) -> Result<Device> {
    let device = vars[0].value().device();
    for v in vars {
        ensure!(
            v.value().device() == device,
            "{op}: inputs on different devices: {:?} on {} and {:?} on {} (copy with .to(device))",
            vars[0].shape(),
            device,
            v.shape(),
            v.value().device()
        );
    }
    Ok(device)
}
