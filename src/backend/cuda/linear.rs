//! A linear layer on the GPU: the three row-major GEMMs of `y = x W^T + b` (forward, input gradient,
//! weight gradient) through cuBLASLt, plus the bias gradient as a deterministic column sum.

use super::blas::{ElementType, Epilogue, GemmShape};
use super::element::GpuFloat;
use super::gpu::{DeviceBuffer, Gpu};
use super::reduce;
use crate::Result;

/// Row-major linear-layer GEMMs on top of `Blas` (weights `[out, in]` as in torch and Megatron).
#[derive(Debug, Clone, Copy)]
pub struct Linear {
    pub rows: usize,
    pub in_features: usize,
    pub out_features: usize,
}

impl Linear {
    /// `y[rows, out] = x[rows, in] w[out, in]^T (+ bias) (GELU)`; x, w, y and the bias of type `E`.
    pub fn forward_shape<E: GpuFloat>(&self, epilogue: Epilogue) -> GemmShape {
        GemmShape {
            trans_a: true,
            trans_b: false,
            m: self.out_features as u64,
            n: self.rows as u64,
            k: self.in_features as u64,
            lda: self.in_features as i64,
            ldb: self.in_features as i64,
            ldc: self.out_features as i64,
            input: E::BLAS,
            output: E::BLAS,
            epilogue,
        }
    }

    /// `dx[rows, in] = dy[rows, out] w[out, in]`, all of type `E`.
    pub fn grad_input_shape<E: GpuFloat>(&self) -> GemmShape {
        GemmShape {
            trans_a: false,
            trans_b: false,
            m: self.in_features as u64,
            n: self.rows as u64,
            k: self.out_features as u64,
            lda: self.in_features as i64,
            ldb: self.out_features as i64,
            ldc: self.in_features as i64,
            input: E::BLAS,
            output: E::BLAS,
            epilogue: Epilogue::None,
        }
    }

    /// `dw[out, in] (+)= dy[rows, out]^T x[rows, in]`; inputs of type `E`, f32 gradient (beta 1 accumulates).
    pub fn grad_weight_shape<E: GpuFloat>(&self) -> GemmShape {
        GemmShape {
            trans_a: false,
            trans_b: true,
            m: self.in_features as u64,
            n: self.out_features as u64,
            k: self.rows as u64,
            lda: self.in_features as i64,
            ldb: self.out_features as i64,
            ldc: self.in_features as i64,
            input: E::BLAS,
            output: ElementType::F32,
            epilogue: Epilogue::None,
        }
    }

    fn check(&self, x: usize, w: usize) -> Result<()> {
        crate::ensure!(
            x == self.rows * self.in_features && w == self.out_features * self.in_features,
            "linear {self:?}: x has {x} elements and w {w}"
        );
        Ok(())
    }

    /// `y = x w^T (+ bias)`, or `gelu(x w^T + bias)` with `gelu` (cuBLASLt's epilogue). The bias has the
    /// output's type: cuBLASLt documents the bias type as D's (f32 bias vectors only for IMMA / FP8 GEMMs).
    pub fn forward<E: GpuFloat>(
        &self,
        gpu: &Gpu,
        x: &DeviceBuffer<E>,
        w: &DeviceBuffer<E>,
        bias: Option<&DeviceBuffer<E>>,
        gelu: bool,
    ) -> Result<DeviceBuffer<E>> {
        self.check(x.len(), w.len())?;
        if let Some(b) = bias {
            crate::ensure!(
                b.len() == self.out_features,
                "linear bias of {} for {} outputs",
                b.len(),
                self.out_features
            );
        }
        let epilogue = match (bias, gelu) {
            (None, false) => Epilogue::None,
            (Some(_), false) => Epilogue::Bias,
            (Some(_), true) => Epilogue::BiasGelu,
            (None, true) => crate::bail!("the GELU epilogue is only wired with a bias"),
        };
        let y = gpu.alloc::<E>(self.rows * self.out_features)?;
        // SAFETY: shapes checked above; y sized [rows, out].
        unsafe {
            gpu.blas()?.gemm(
                &self.forward_shape::<E>(epilogue),
                w.ptr(),
                x.ptr(),
                y.ptr(),
                bias.map(|b| b.ptr()),
                1.0,
                0.0,
            )?
        };
        Ok(y)
    }

    /// `dx = dy w`; `dw += dy^T x` (f32); `dbias += column sums of dy`.
    pub fn backward<E: GpuFloat>(
        &self,
        gpu: &Gpu,
        dy: &DeviceBuffer<E>,
        x: &DeviceBuffer<E>,
        w: &DeviceBuffer<E>,
        dw: &DeviceBuffer<f32>,
        dbias: Option<&DeviceBuffer<f32>>,
    ) -> Result<DeviceBuffer<E>> {
        self.check(x.len(), w.len())?;
        crate::ensure!(
            dy.len() == self.rows * self.out_features && dw.len() == w.len(),
            "linear backward: shape mismatch"
        );
        let dx = gpu.alloc::<E>(self.rows * self.in_features)?;
        let blas = gpu.blas()?;
        // SAFETY: shapes checked above.
        unsafe {
            blas.gemm(&self.grad_input_shape::<E>(), w.ptr(), dy.ptr(), dx.ptr(), None, 1.0, 0.0)?;
            blas.gemm(&self.grad_weight_shape::<E>(), x.ptr(), dy.ptr(), dw.ptr(), None, 1.0, 1.0)?;
        }
        if let Some(db) = dbias {
            reduce::add_column_sums(gpu, db, dy, self.out_features)?;
        }
        Ok(dx)
    }
}
