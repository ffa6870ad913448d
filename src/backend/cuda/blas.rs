//! Dense GEMMs through cuBLASLt: bf16 (or f32) inputs, f32 accumulation, bf16 or f32 output, with the
//! bias and bias+GELU epilogues. The handle and a 32 MiB workspace are created once per `Gpu`; the
//! descriptors, layouts and the heuristic's algorithm are cached per shape, so a training step after
//! the first makes no heuristic queries.
//!
//! Everything is row-major in retro. cuBLASLt is column-major, so a row-major `Y[M,N] = X[M,K] W^T`
//! is computed as the column-major `Y^T = W X^T` (see `Gemm::linear` and friends).

use super::device::cuda_error;
use super::gpu::{DeviceBuffer, Gpu};
use crate::Result;
use cudarc::cublaslt::{result, sys};
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Mutex;

const WORKSPACE_BYTES: usize = 32 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ElementType {
    BF16,
    F32,
}

impl ElementType {
    fn cuda(self) -> sys::cudaDataType {
        match self {
            ElementType::BF16 => sys::cudaDataType_t::CUDA_R_16BF,
            ElementType::F32 => sys::cudaDataType_t::CUDA_R_32F,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Epilogue {
    None,
    /// `+ bias[row of the column-major result]` = per output feature.
    Bias,
    /// `gelu_tanh(. + bias)` (cuBLASLt's GELU is the tanh approximation).
    BiasGelu,
}

/// One column-major GEMM `D = alpha op(A) op(B) + beta C`, with C = D.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GemmShape {
    pub trans_a: bool,
    pub trans_b: bool,
    pub m: u64,
    pub n: u64,
    pub k: u64,
    pub lda: i64,
    pub ldb: i64,
    pub ldc: i64,
    pub input: ElementType,
    pub output: ElementType,
    pub epilogue: Epilogue,
}

struct Plan {
    desc: sys::cublasLtMatmulDesc_t,
    a: sys::cublasLtMatrixLayout_t,
    b: sys::cublasLtMatrixLayout_t,
    c: sys::cublasLtMatrixLayout_t,
    algo: sys::cublasLtMatmulAlgo_t,
}

pub struct Blas {
    ctx: std::sync::Arc<cudarc::driver::CudaContext>,
    handle: sys::cublasLtHandle_t,
    workspace: DeviceBuffer<u8>,
    stream: sys::cudaStream_t,
    plans: Mutex<HashMap<GemmShape, Plan>>,
}

// SAFETY: the handle and the cached descriptors are used under the `plans` lock or on one stream.
unsafe impl Send for Blas {}
unsafe impl Sync for Blas {}

fn blas_error(what: &str, e: impl std::fmt::Debug) -> crate::Error {
    crate::Error::msg(format!("cuBLASLt {what}: {e:?}"))
}

impl Blas {
    pub fn new(gpu: &Gpu) -> Result<Self> {
        // SAFETY: probes whether libcublasLt can be opened; the handle below would panic otherwise.
        if !unsafe { sys::is_culib_present() } {
            crate::bail!("libcublasLt.so is not found (set LD_LIBRARY_PATH to the CUDA 13 libraries)");
        }
        gpu.ctx.bind_to_thread().map_err(|e| cuda_error("binding the context", e))?;
        let handle = result::create_handle().map_err(|e| blas_error("creating the handle", e))?;
        Ok(Self {
            ctx: gpu.ctx.clone(),
            handle,
            workspace: gpu.alloc::<u8>(WORKSPACE_BYTES)?,
            stream: gpu.compute.cu_stream() as sys::cudaStream_t,
            plans: Mutex::new(HashMap::new()),
        })
    }

    fn plan(&self, s: &GemmShape) -> Result<Plan> {
        let err = |what: &str, e| blas_error(&format!("{what} for {s:?}"), e);
        let (a_rows, a_cols) = if s.trans_a { (s.k, s.m) } else { (s.m, s.k) };
        let (b_rows, b_cols) = if s.trans_b { (s.n, s.k) } else { (s.k, s.n) };
        let a = result::create_matrix_layout(s.input.cuda(), a_rows, a_cols, s.lda).map_err(|e| err("layout A", e))?;
        let b = result::create_matrix_layout(s.input.cuda(), b_rows, b_cols, s.ldb).map_err(|e| err("layout B", e))?;
        let c = result::create_matrix_layout(s.output.cuda(), s.m, s.n, s.ldc).map_err(|e| err("layout C", e))?;
        let desc =
            result::create_matmul_desc(sys::cublasComputeType_t::CUBLAS_COMPUTE_32F, sys::cudaDataType_t::CUDA_R_32F)
                .map_err(|e| err("matmul descriptor", e))?;
        // cublasOperation_t as an i32: 0 = N, 1 = T.
        let op = |t: bool| t as i32;
        let epilogue = match s.epilogue {
            Epilogue::None => sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_DEFAULT,
            Epilogue::Bias => sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS,
            Epilogue::BiasGelu => sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_GELU_BIAS,
        };
        // SAFETY: each attribute gets a pointer to a value of the type cuBLASLt documents for it.
        unsafe {
            set_desc(desc, sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA, &op(s.trans_a))?;
            set_desc(desc, sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB, &op(s.trans_b))?;
            set_desc(desc, sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue)?;
            // The bias vector has D's type: CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE left at its default (-1 =
            // D's type), the only combination cuBLASLt documents for bf16 and f32 GEMMs.
        }
        let pref = result::create_matmul_pref().map_err(|e| err("preference", e))?;
        let workspace = WORKSPACE_BYTES as u64;
        // SAFETY: as above; the preference is destroyed after the heuristic query.
        let heuristic = unsafe {
            result::set_matmul_pref_attribute(
                pref,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                (&workspace) as *const u64 as *const c_void,
                std::mem::size_of::<u64>(),
            )
            .map_err(|e| err("workspace preference", e))?;
            let h = result::get_matmul_algo_heuristic(self.handle, desc, a, b, c, c, pref);
            let _ = result::destroy_matmul_pref(pref);
            h.map_err(|e| err("no algorithm (heuristic)", e))?
        };
        Ok(Plan { desc, a, b, c, algo: heuristic.algo })
    }

    /// Run `D = alpha op(A) op(B) + beta D` (column-major, see `GemmShape`), with `bias` (D's type,
    /// length m) for the bias epilogues. Pointers are device addresses of the right element types.
    ///
    /// # Safety
    /// `a`, `b`, `d` (and `bias`) must hold the elements the shape describes, in the stated types.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn gemm(
        &self,
        s: &GemmShape,
        a: u64,
        b: u64,
        d: u64,
        bias: Option<u64>,
        alpha: f32,
        beta: f32,
    ) -> Result<()> {
        crate::ensure!(
            bias.is_some() == (s.epilogue != Epilogue::None),
            "GEMM {s:?}: a bias pointer is needed exactly for the bias epilogues"
        );
        self.ctx.bind_to_thread().map_err(|e| cuda_error("binding the context", e))?;
        let mut plans = self.plans.lock().unwrap();
        if !plans.contains_key(s) {
            let p = self.plan(s)?;
            plans.insert(*s, p);
        }
        let p = &plans[s];
        if let Some(bias) = bias {
            set_desc(p.desc, sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias)?;
        }
        result::matmul(
            self.handle,
            p.desc,
            (&alpha) as *const f32 as *const c_void,
            (&beta) as *const f32 as *const c_void,
            a as *const c_void,
            p.a,
            b as *const c_void,
            p.b,
            d as *const c_void,
            p.c,
            d as *mut c_void,
            p.c,
            &p.algo,
            self.workspace.ptr() as *mut c_void,
            WORKSPACE_BYTES,
            self.stream,
        )
        .map_err(|e| blas_error(&format!("matmul {s:?}"), e))
    }
}

unsafe fn set_desc<T>(
    desc: sys::cublasLtMatmulDesc_t,
    attr: sys::cublasLtMatmulDescAttributes_t,
    value: &T,
) -> Result<()> {
    result::set_matmul_desc_attribute(desc, attr, value as *const T as *const c_void, std::mem::size_of::<T>())
        .map_err(|e| blas_error(&format!("setting {attr:?}"), e))
}

impl Drop for Blas {
    fn drop(&mut self) {
        let plans = std::mem::take(&mut *self.plans.lock().unwrap_or_else(|p| p.into_inner()));
        // SAFETY: every descriptor was created by this handle and is no longer used.
        unsafe {
            for p in plans.into_values() {
                let _ = result::destroy_matrix_layout(p.a);
                let _ = result::destroy_matrix_layout(p.b);
                let _ = result::destroy_matrix_layout(p.c);
                let _ = result::destroy_matmul_desc(p.desc);
            }
            let _ = result::destroy_handle(self.handle);
        }
    }
}
