//! `Gpu`: everything one process needs on one device. The context, a compute stream where every
//! kernel runs, a copy stream for host-to-device batch uploads, the caching allocator, the loaded
//! kernel modules (fatbin first, PTX as fallback) and the cuBLASLt handle.

use super::allocator::{Allocator, Block, MemoryStats};
use super::device::{context, cuda_error};
use super::module::{load, load_best, Image};
use crate::Result;
use cudarc::driver::{result, CudaContext, CudaFunction, CudaModule, CudaStream, DeviceRepr, PinnedHostSlice};
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, OnceLock};

pub struct Gpu {
    pub ctx: Arc<CudaContext>,
    pub compute: Arc<CudaStream>,
    pub copy: Arc<CudaStream>,
    allocator: Arc<Allocator>,
    modules: Mutex<HashMap<&'static str, (Arc<CudaModule>, Image)>>,
    functions: Mutex<HashMap<(&'static str, String), CudaFunction>>,
    blas: OnceLock<super::blas::Blas>,
    only_image: Option<Image>,
    ordinal: usize,
}

/// A typed device array of `len` elements in a cached block: the whole block, or a view of part of it
/// (`view`: the parameter arenas, whose per-tensor views the tape reads). The block goes back to the
/// cache when its last buffer is dropped.
pub struct DeviceBuffer<T> {
    block: Arc<Block>,
    /// The first element's index in the block.
    start: usize,
    len: usize,
    _element: PhantomData<T>,
}

impl<T> DeviceBuffer<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The device address (a kernel argument).
    pub fn ptr(&self) -> u64 {
        self.ptr_at(0)
    }

    /// The address of element `offset` (for a kernel working on part of the buffer).
    pub fn ptr_at(&self, offset: usize) -> u64 {
        assert!(offset <= self.len, "offset {offset} past the end of a buffer of {}", self.len);
        self.block.ptr() + ((self.start + offset) * std::mem::size_of::<T>()) as u64
    }

    /// Elements `start..start + len` of this buffer, sharing its memory: kernels writing through the
    /// view write the buffer.
    pub fn view(&self, start: usize, len: usize) -> Result<DeviceBuffer<T>> {
        crate::ensure!(
            start + len <= self.len,
            "a view of elements {start}..{} of a buffer of {}",
            start + len,
            self.len
        );
        Ok(DeviceBuffer { block: self.block.clone(), start: self.start + start, len, _element: PhantomData })
    }

    pub fn bytes(&self) -> usize {
        self.len * std::mem::size_of::<T>()
    }
}

impl Gpu {
    /// Open device `ordinal`: context, streams, allocator. Fails cleanly without a driver or device.
    pub fn new(ordinal: usize) -> Result<Arc<Self>> {
        Self::open(ordinal, None)
    }

    /// The process's `Gpu` for device `ordinal`, opened on first use: what device tensors
    /// (`Tensor::to(Device::Cuda(n))`) live on, so every op on that device shares one stream and cache.
    pub fn shared(ordinal: usize) -> Result<Arc<Self>> {
        static OPEN: OnceLock<Mutex<HashMap<usize, Arc<Gpu>>>> = OnceLock::new();
        let mut open = OPEN.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
        if let Some(gpu) = open.get(&ordinal) {
            return Ok(gpu.clone());
        }
        let gpu = Self::new(ordinal)?;
        open.insert(ordinal, gpu.clone());
        Ok(gpu)
    }

    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// Like `new`, but every module is loaded from `image` only (`retro info` checks both images).
    pub fn with_image(ordinal: usize, image: Image) -> Result<Arc<Self>> {
        Self::open(ordinal, Some(image))
    }

    fn open(ordinal: usize, only_image: Option<Image>) -> Result<Arc<Self>> {
        let ctx = context(ordinal)?;
        // retro orders its own work: one compute stream, explicit events for the copy stream. cudarc's
        // per-slice event tracking would add an event record to every launch for nothing.
        // SAFETY: no CudaSlice created by retro is shared between streams without an explicit event.
        unsafe { ctx.disable_event_tracking() };
        let compute = ctx.new_stream().map_err(|e| cuda_error("creating the compute stream", e))?;
        let copy = ctx.new_stream().map_err(|e| cuda_error("creating the copy stream", e))?;
        Ok(Arc::new(Self {
            allocator: Allocator::new(ctx.clone()),
            ctx,
            compute,
            copy,
            modules: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
            blas: OnceLock::new(),
            only_image,
            ordinal,
        }))
    }

    /// A kernel entry point of `kernels/<module>.cu`, loaded once per process.
    pub fn function(&self, module: &'static str, name: &str) -> Result<CudaFunction> {
        if let Some(f) = self.functions.lock().unwrap().get(&(module, name.to_string())) {
            return Ok(f.clone());
        }
        let m = {
            let mut modules = self.modules.lock().unwrap();
            match modules.get(module) {
                Some((m, _)) => m.clone(),
                None => {
                    let loaded = match self.only_image {
                        Some(image) => (load(&self.ctx, module, image)?, image),
                        None => load_best(&self.ctx, module)?,
                    };
                    modules.insert(module, loaded.clone());
                    loaded.0
                }
            }
        };
        let f = m.load_function(name).map_err(|e| cuda_error(&format!("kernel {name} in kernels/{module}.cu"), e))?;
        self.functions.lock().unwrap().insert((module, name.to_string()), f.clone());
        Ok(f)
    }

    pub fn blas(&self) -> Result<&super::blas::Blas> {
        if let Some(b) = self.blas.get() {
            return Ok(b);
        }
        let b = super::blas::Blas::new(self)?;
        Ok(self.blas.get_or_init(|| b))
    }

    pub fn memory(&self) -> MemoryStats {
        self.allocator.stats()
    }

    /// An uninitialised buffer of `len` elements.
    pub fn alloc<T: DeviceRepr>(&self, len: usize) -> Result<DeviceBuffer<T>> {
        let block = self.allocator.alloc(len * std::mem::size_of::<T>())?;
        Ok(DeviceBuffer { block: Arc::new(block), start: 0, len, _element: PhantomData })
    }

    /// A zero-filled buffer (the memset is queued on the compute stream).
    pub fn zeros<T: DeviceRepr>(&self, len: usize) -> Result<DeviceBuffer<T>> {
        let buf = self.alloc::<T>(len)?;
        self.fill_zero(&buf)?;
        Ok(buf)
    }

    pub fn fill_zero<T>(&self, buf: &DeviceBuffer<T>) -> Result<()> {
        self.ctx.bind_to_thread().map_err(|e| cuda_error("binding the context", e))?;
        // SAFETY: the range lies inside the buffer's block.
        unsafe { result::memset_d8_async(buf.ptr(), 0, buf.bytes(), self.compute.cu_stream()) }
            .map_err(|e| cuda_error("memset", e))
    }

    /// Copy `host` into a new buffer (queued on the compute stream; `host` has been read when it returns).
    pub fn upload<T: DeviceRepr>(&self, host: &[T]) -> Result<DeviceBuffer<T>> {
        let buf = self.alloc::<T>(host.len())?;
        self.write(&buf, 0, host)?;
        Ok(buf)
    }

    /// Overwrite elements `offset..offset + host.len()` of `buf`.
    pub fn write<T: DeviceRepr>(&self, buf: &DeviceBuffer<T>, offset: usize, host: &[T]) -> Result<()> {
        crate::ensure!(
            offset + host.len() <= buf.len(),
            "write of {} elements at {offset} into {}",
            host.len(),
            buf.len()
        );
        self.ctx.bind_to_thread().map_err(|e| cuda_error("binding the context", e))?;
        // SAFETY: the destination range is inside the buffer. From pageable memory the driver copies
        // `host` into its own staging memory before the call returns (CUDA's "API synchronization
        // behavior"; torch's non-blocking copies from pageable tensors rely on the same), so `host` may
        // be dropped at once and the host does not wait for the stream: an op that uploads its indices
        // keeps the step's work queued.
        unsafe { result::memcpy_htod_async(buf.ptr_at(offset), host, self.compute.cu_stream()) }
            .map_err(|e| cuda_error("host-to-device copy", e))
    }

    /// The buffer's contents (waits for the compute stream).
    pub fn download<T: DeviceRepr + Default + Clone>(&self, buf: &DeviceBuffer<T>) -> Result<Vec<T>> {
        let mut host = vec![T::default(); buf.len()];
        self.ctx.bind_to_thread().map_err(|e| cuda_error("binding the context", e))?;
        // SAFETY: `host` holds exactly the buffer's elements; the stream is synchronised before reading.
        unsafe { result::memcpy_dtoh_async(&mut host, buf.ptr(), self.compute.cu_stream()) }
            .map_err(|e| cuda_error("device-to-host copy", e))?;
        self.synchronize()?;
        Ok(host)
    }

    /// Copy `height` rows of `width` elements from `src` (rows `src_pitch` elements apart, starting at
    /// element `src_offset`) into `dst` (rows `dst_pitch` apart, from `dst_offset`), on the compute stream:
    /// narrowing, concatenation and padding of device tensors, without a kernel.
    #[allow(clippy::too_many_arguments)]
    pub fn copy_rows<T>(
        &self,
        dst: &DeviceBuffer<T>,
        dst_offset: usize,
        dst_pitch: usize,
        src: &DeviceBuffer<T>,
        src_offset: usize,
        src_pitch: usize,
        width: usize,
        height: usize,
    ) -> Result<()> {
        if width == 0 || height == 0 {
            return Ok(());
        }
        let fits =
            |offset: usize, pitch: usize, len: usize| pitch >= width && offset + (height - 1) * pitch + width <= len;
        crate::ensure!(
            fits(dst_offset, dst_pitch, dst.len()) && fits(src_offset, src_pitch, src.len()),
            "copy_rows: {height} rows of {width} from offset {src_offset} pitch {src_pitch} of {} elements into offset {dst_offset} pitch {dst_pitch} of {}",
            src.len(),
            dst.len()
        );
        let e = std::mem::size_of::<T>();
        self.ctx.bind_to_thread().map_err(|e| cuda_error("binding the context", e))?;
        if height == 1 || (src_pitch == width && dst_pitch == width) {
            // Contiguous: one flat copy (2D copies refuse pitches above the device's limit, ~2 GiB).
            // SAFETY: both ranges were checked to lie inside their buffers; ordered on the compute stream.
            return unsafe {
                result::memcpy_dtod_async(
                    dst.ptr_at(dst_offset),
                    src.ptr_at(src_offset),
                    width * height * e,
                    self.compute.cu_stream(),
                )
            }
            .map_err(|e| cuda_error("device copy", e));
        }
        let device = cudarc::driver::sys::CUmemorytype::CU_MEMORYTYPE_DEVICE;
        let copy = cudarc::driver::sys::CUDA_MEMCPY2D {
            srcXInBytes: 0,
            srcY: 0,
            srcMemoryType: device,
            srcHost: std::ptr::null(),
            srcDevice: src.ptr_at(src_offset),
            srcArray: std::ptr::null_mut(),
            srcPitch: src_pitch * e,
            dstXInBytes: 0,
            dstY: 0,
            dstMemoryType: device,
            dstHost: std::ptr::null_mut(),
            dstDevice: dst.ptr_at(dst_offset),
            dstArray: std::ptr::null_mut(),
            dstPitch: dst_pitch * e,
            WidthInBytes: width * e,
            Height: height,
        };
        // SAFETY: both ranges were checked to lie inside their buffers; ordered on the compute stream.
        unsafe { cudarc::driver::sys::cuMemcpy2DAsync_v2(&copy, self.compute.cu_stream()).result() }
            .map_err(|e| cuda_error("2D device copy", e))
    }

    pub fn synchronize(&self) -> Result<()> {
        self.compute.synchronize().map_err(|e| cuda_error("synchronising the compute stream", e))
    }

    /// Page-locked host memory for batches (what asynchronous uploads read from).
    pub fn pinned<T: DeviceRepr + cudarc::driver::ValidAsZeroBits>(&self, len: usize) -> Result<PinnedHostSlice<T>> {
        // SAFETY: zero bits are a valid T; the memory is written by the caller before it is uploaded.
        unsafe { self.ctx.alloc_pinned_with_flags::<T>(len, 0) }.map_err(|e| cuda_error("pinned host allocation", e))
    }

    /// Upload a pinned host buffer into `dst` on the copy stream, overlapping with host work; the compute
    /// stream waits for the copy before any kernel queued after this call. The copy stream first waits for
    /// the compute stream, so `dst` (a cached block maybe used just before) is never overwritten early.
    /// Returns the copy's completion event: `src` must not be rewritten before it has completed.
    pub fn upload_pinned<T: DeviceRepr + cudarc::driver::ValidAsZeroBits>(
        &self,
        src: &PinnedHostSlice<T>,
        dst: &DeviceBuffer<T>,
    ) -> Result<cudarc::driver::CudaEvent> {
        crate::ensure!(src.len() == dst.len(), "pinned upload of {} elements into {}", src.len(), dst.len());
        let host = src.as_slice().map_err(|e| cuda_error("pinned buffer", e))?;
        let ready = self.compute.record_event(None).map_err(|e| cuda_error("recording an event", e))?;
        self.copy.wait(&ready).map_err(|e| cuda_error("copy stream wait", e))?;
        // SAFETY: pinned source, destination inside its block; ordered after the compute stream's prior work.
        unsafe { result::memcpy_htod_async(dst.ptr(), host, self.copy.cu_stream()) }
            .map_err(|e| cuda_error("async host-to-device copy", e))?;
        let done = self.copy.record_event(None).map_err(|e| cuda_error("recording an event", e))?;
        self.compute.wait(&done).map_err(|e| cuda_error("compute stream wait", e))?;
        Ok(done)
    }

    pub fn name(&self) -> String {
        self.ctx.name().unwrap_or_else(|_| "unknown GPU".into())
    }
}
