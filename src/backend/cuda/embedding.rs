//! Launchers for kernels/embedding.cu, and `TokenBatch`: token ids on the device together with the
//! CSR grouping (positions by token id) that makes the word-embedding backward deterministic.

use super::element::{kernel, GpuFloat};
use super::gpu::{DeviceBuffer, Gpu};
use super::launch::{config, grid_for, launch};
use crate::kernels::abi::RETRO_ELEMENTWISE_BLOCK;
use crate::Result;

pub struct TokenBatch {
    pub tokens: DeviceBuffer<i32>,
    /// Distinct ids, ascending.
    unique: DeviceBuffer<i32>,
    /// `starts[u]..starts[u + 1]` indexes `order` for id `unique[u]`.
    starts: DeviceBuffer<i32>,
    /// Token positions sorted by id (ascending positions within an id).
    order: DeviceBuffer<i32>,
    pub count: usize,
    unique_count: usize,
    /// Rows of the table the ids were checked against (every id is -1 or below it).
    rows: usize,
}

impl TokenBatch {
    /// Validate the ids against `vocab` (a bad id is an error here, not an out-of-bounds read on the
    /// GPU) and build the grouping. This is host work the data loader does once per batch.
    pub fn new(gpu: &Gpu, tokens: &[i32], vocab: usize) -> Result<Self> {
        if let Some((i, &t)) = tokens.iter().enumerate().find(|(_, &t)| t < 0 || t as usize >= vocab) {
            crate::bail!("token {t} at position {i} is outside the vocabulary of {vocab}");
        }
        Self::grouped(gpu, tokens, vocab)
    }

    /// Ids of `rows` table rows, -1 for a token whose row is not in this table (a vocab-parallel rank's
    /// part: `rows_forward` gives it a zero row and the backward leaves it out).
    pub fn with_missing(gpu: &Gpu, tokens: &[i32], rows: usize) -> Result<Self> {
        if let Some((i, &t)) = tokens.iter().enumerate().find(|(_, &t)| t < -1 || t >= 0 && t as usize >= rows) {
            crate::bail!("token {t} at position {i} is neither -1 (another rank's) nor a row below {rows}");
        }
        Self::grouped(gpu, tokens, rows)
    }

    fn grouped(gpu: &Gpu, tokens: &[i32], rows: usize) -> Result<Self> {
        crate::ensure!(tokens.len() < i32::MAX as usize, "{} tokens in one batch", tokens.len());
        // Positions of -1 ids join no group: the word backward adds nothing for them.
        let mut order: Vec<i32> = (0..tokens.len() as i32).filter(|&i| tokens[i as usize] >= 0).collect();
        order.sort_by_key(|&i| tokens[i as usize]);
        let mut unique = Vec::new();
        let mut starts = Vec::new();
        for (j, &i) in order.iter().enumerate() {
            let t = tokens[i as usize];
            if unique.last() != Some(&t) {
                unique.push(t);
                starts.push(j as i32);
            }
        }
        starts.push(order.len() as i32);
        Ok(Self {
            tokens: gpu.upload(tokens)?,
            unique_count: unique.len(),
            unique: gpu.upload(&unique)?,
            starts: gpu.upload(&starts)?,
            order: gpu.upload(&order)?,
            count: tokens.len(),
            rows,
        })
    }
}

/// Which rows of the position table a batch reads: `first + t % period` for token t.
#[derive(Debug, Clone, Copy)]
pub struct Positions {
    pub first: usize,
    pub period: usize,
}

impl Positions {
    /// Every row of `period` tokens at positions 0..period.
    pub fn from_zero(period: usize) -> Self {
        Self { first: 0, period }
    }
}

fn check(word: usize, position: usize, d: usize, at: Positions, vocab: usize) -> Result<()> {
    crate::ensure!(d % 8 == 0 && d > 0, "embedding width {d} must be a multiple of 8 on the GPU");
    crate::ensure!(word == vocab * d, "word table of {word} elements is not {vocab} x {d}");
    crate::ensure!(
        at.period > 0 && position >= (at.first + at.period) * d,
        "position table of {position} elements has fewer than {} rows of {d}",
        at.first + at.period
    );
    Ok(())
}

/// `out[t] = word[tokens[t]] + position[at.first + t % at.period]`.
pub fn forward<E: GpuFloat>(
    gpu: &Gpu,
    batch: &TokenBatch,
    word: &DeviceBuffer<E>,
    position: &DeviceBuffer<E>,
    d: usize,
    at: Positions,
) -> Result<DeviceBuffer<E>> {
    check(word.len(), position.len(), d, at, batch.rows)?;
    let period = at.period;
    let out = gpu.alloc::<E>(batch.count * d)?;
    if batch.count == 0 {
        return Ok(out);
    }
    let (count, dd, p) = (batch.count as u64, d as i32, period as i32);
    let items = count * (d / 8) as u64;
    // SAFETY: argument list of embedding_forward_{bf16,f32}; ids validated in TokenBatch::new.
    unsafe {
        launch(
            gpu,
            "embedding",
            &kernel::<E>("embedding_forward"),
            config((grid_for(items, RETRO_ELEMENTWISE_BLOCK), 1, 1), RETRO_ELEMENTWISE_BLOCK, 0),
            &[&out.ptr(), &batch.tokens.ptr(), &word.ptr(), &position.ptr_at(at.first * d), &count, &dd, &p],
        )?;
    }
    Ok(out)
}

/// `out[t] = table[tokens[t]]`, zero where the id is -1 (`TokenBatch::with_missing`).
pub fn rows_forward<E: GpuFloat>(
    gpu: &Gpu,
    batch: &TokenBatch,
    table: &DeviceBuffer<E>,
    d: usize,
) -> Result<DeviceBuffer<E>> {
    crate::ensure!(d % 8 == 0 && d > 0, "embedding width {d} must be a multiple of 8 on the GPU");
    crate::ensure!(
        table.len() == batch.rows * d,
        "table of {} elements is not the {} rows of {d} the ids were checked against",
        table.len(),
        batch.rows
    );
    let out = gpu.alloc::<E>(batch.count * d)?;
    if batch.count == 0 {
        return Ok(out);
    }
    let (count, dd) = (batch.count as u64, d as i32);
    let items = count * (d / 8) as u64;
    // SAFETY: argument list of embedding_rows_{bf16,f32}; ids are -1 or below `batch.rows`, the table's
    // rows (checked above).
    unsafe {
        launch(
            gpu,
            "embedding",
            &kernel::<E>("embedding_rows"),
            config((grid_for(items, RETRO_ELEMENTWISE_BLOCK), 1, 1), RETRO_ELEMENTWISE_BLOCK, 0),
            &[&out.ptr(), &batch.tokens.ptr(), &table.ptr(), &count, &dd],
        )?;
    }
    Ok(out)
}

/// `dtable += ...` (f32) from `dout` [count, d]: each row's tokens' gradients, the -1 ids left out.
pub fn rows_backward<E: GpuFloat>(
    gpu: &Gpu,
    batch: &TokenBatch,
    dout: &DeviceBuffer<E>,
    dtable: &DeviceBuffer<f32>,
    d: usize,
) -> Result<()> {
    crate::ensure!(
        d % 8 == 0 && d > 0 && dout.len() == batch.count * d && dtable.len() == batch.rows * d,
        "embedding rows backward: dout of {} elements for {} tokens of {d}, table of {}",
        dout.len(),
        batch.count,
        dtable.len()
    );
    word_backward(gpu, batch, dout, dtable, d)
}

fn word_backward<E: GpuFloat>(
    gpu: &Gpu,
    batch: &TokenBatch,
    dout: &DeviceBuffer<E>,
    dword: &DeviceBuffer<f32>,
    d: usize,
) -> Result<()> {
    if batch.unique_count == 0 {
        return Ok(());
    }
    let dd = d as i32;
    let threads = ((d / 8).div_ceil(32) * 32).clamp(32, RETRO_ELEMENTWISE_BLOCK as usize) as u32;
    // SAFETY: argument list of embedding_word_backward; one block per distinct id, each a row of dword.
    unsafe {
        launch(
            gpu,
            "embedding",
            &kernel::<E>("embedding_word_backward"),
            config((batch.unique_count as u32, 1, 1), threads, 0),
            &[&dword.ptr(), &dout.ptr(), &batch.unique.ptr(), &batch.starts.ptr(), &batch.order.ptr(), &dd],
        )
    }
}

/// `dword += ...` and `dposition += ...` (f32 accumulators) from `dout` [count, d]. Deterministic.
pub fn backward<E: GpuFloat>(
    gpu: &Gpu,
    batch: &TokenBatch,
    dout: &DeviceBuffer<E>,
    dword: &DeviceBuffer<f32>,
    dposition: &DeviceBuffer<f32>,
    d: usize,
    at: Positions,
) -> Result<()> {
    check(dword.len(), dposition.len(), d, at, batch.rows)?;
    let period = at.period;
    crate::ensure!(
        dout.len() == batch.count * d,
        "embedding backward: dout has {} elements, not {} x {d}",
        dout.len(),
        batch.count
    );
    if batch.count == 0 {
        return Ok(());
    }
    word_backward(gpu, batch, dout, dword, d)?;
    let (count, dd, p) = (batch.count as u64, d as i32, period as i32);
    let items = (period.min(batch.count) * d / 8) as u64;
    // SAFETY: argument list of embedding_position_backward.
    unsafe {
        launch(
            gpu,
            "embedding",
            &kernel::<E>("embedding_position_backward"),
            config((grid_for(items, RETRO_ELEMENTWISE_BLOCK), 1, 1), RETRO_ELEMENTWISE_BLOCK, 0),
            &[&dposition.ptr_at(at.first * d), &dout.ptr(), &count, &dd, &p],
        )
    }
}
