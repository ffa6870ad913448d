//! Index files (`retro knn build --out`), versioned and checksummed. Little-endian: magic `RETROIDX`,
//! u32 version 1, u32 kind (0 Flat, 1 IVF-Flat, 2 IVF-PQ), u32 metric (0 inner product, 1 L2), u32 dim,
//! u64 vector count n, u64 list count L (0 for Flat), f32 centroids [L, dim], u64 list lengths [L], i64 ids
//! [n] (IVF: list by list), then Flat / IVF-Flat: f32 vectors [n, dim] (in the same order); IVF-PQ: u64
//! m, f32 codebooks [m, 256, dim / m], u8 codes [n, m]. Then the checksum trailer
//! (`data::integrity::seal`). Another version, a truncated or damaged file is refused with its reason.

use super::assignment::Assignment;
use super::index_spec::IndexSpec;
use super::ivf::{IvfFlat, List};
use super::ivf_pq::{IvfPq, PqList};
use super::knn::{FlatIndex, Index, Metric, Neighbors};
use super::pq::{ProductQuantizer, CODEWORDS};
use crate::data::integrity;
use crate::data::stored::Stored;
use crate::progress;
use crate::{bail, ensure, Result};
use std::path::Path;

const MAGIC: &[u8; 8] = b"RETROIDX";

/// Every value of rows `vectors` (of `dim`; the first is row `first_row`) is finite, else an error naming
/// the row.
pub fn check_finite(vectors: &[f32], dim: usize, first_row: usize) -> Result<()> {
    if let Some(i) = vectors.iter().position(|v| !v.is_finite()) {
        bail!("vector {} holds {} (vectors must be finite)", first_row + i / dim.max(1), vectors[i]);
    }
    Ok(())
}
pub const VERSION: u32 = 1;
const FIX: &str = "rebuild it with `retro knn build`";

/// A built index of either kind.
pub enum AnyIndex {
    Flat(FlatIndex),
    Ivf(IvfFlat),
    IvfPq(IvfPq),
}

/// Rows assigned at a time by `build_file` (as `retro preprocess` assigns 64 embedding blocks).
pub const ASSIGN_ROWS: usize = 16384;

/// Training points per list at most (faiss's 256): a larger sample costs time and changes little.
const MAX_TRAIN_PER_LIST: usize = 256;

impl AnyIndex {
    /// Build `spec` over `vectors` (rows of `dim`; ids are row numbers). IVF trains k-means on a seeded
    /// sample of `ntrain` rows (default: 256 per list, at most all of them), then adds every row.
    pub fn build(
        spec: IndexSpec,
        dim: usize,
        metric: Metric,
        vectors: Vec<f32>,
        ntrain: Option<usize>,
        seed: u64,
    ) -> Result<Self> {
        ensure!(dim > 0 && vectors.len() % dim == 0, "{} values are not vectors of dimension {dim}", vectors.len());
        let n = vectors.len() / dim;
        check_finite(&vectors, dim, 0)?;
        let Some(rows) = Self::training_rows(spec, n, ntrain, seed)? else {
            return Ok(AnyIndex::Flat(FlatIndex::new(dim, metric, vectors)?));
        };
        let sample: Vec<f32> = rows.iter().flat_map(|&r| vectors[r * dim..(r + 1) * dim].iter().copied()).collect();
        let mut index = Self::train(spec, dim, metric, n, &sample, seed)?;
        let assignment = index.assign(&vectors)?;
        index.insert(&assignment, &vectors, 0)?;
        Ok(index)
    }

    /// The rows of a database of `n` vectors that an IVF `spec` trains on (sorted; seeded): `ntrain` of
    /// them (default 256 per list, at least the lists and, for PQ, 256 codewords' worth, at most `n`).
    /// `None` for the flat index, which trains nothing.
    pub fn training_rows(spec: IndexSpec, n: usize, ntrain: Option<usize>, seed: u64) -> Result<Option<Vec<usize>>> {
        ensure!(n > 0, "the database is empty: nothing to index");
        let Some(nlist) = spec.nlist(n) else { return Ok(None) };
        ensure!(nlist <= n, "IVF{nlist} needs at least {nlist} vectors to train on, the database has {n}");
        let (ntrain, _) = Self::sample_size(spec, nlist, n, ntrain);
        let mut rows = crate::rng::Rng::new(seed).sample_indices(n, ntrain);
        rows.sort_unstable();
        Ok(Some(rows))
    }

    /// The training sample's size for `ntrain` (None: the default) and the least it may be.
    fn sample_size(spec: IndexSpec, nlist: usize, n: usize, ntrain: Option<usize>) -> (usize, usize) {
        // PQ codebooks need 256 training residuals per subspace.
        let least = if matches!(spec, IndexSpec::IvfPq { .. }) { nlist.max(CODEWORDS) } else { nlist };
        (ntrain.unwrap_or(MAX_TRAIN_PER_LIST * nlist).max(least).min(n), least.min(n))
    }

    /// The `ntrain` to build `spec` over `n` vectors of `dim` with under `--memory-limit` (`limit`):
    /// `ntrain` itself when it fits or there is no limit, else the largest sample that fits (said on
    /// stderr); an error, before any work, when the build does not fit at all (`memory_budget`).
    pub fn ntrain_within(
        spec: IndexSpec,
        n: usize,
        dim: usize,
        ntrain: Option<usize>,
        limit: Option<u64>,
    ) -> Result<Option<usize>> {
        let (size, least) = match spec.nlist(n) {
            Some(nlist) => Self::sample_size(spec, nlist, n, ntrain),
            None => (0, 0),
        };
        Ok(super::memory_budget::training_rows_within(limit, spec, n, dim, size, least)?.or(ntrain))
    }

    /// An IVF `spec` for a database of `n` vectors trained on `sample` (the `training_rows`), no vectors yet.
    pub fn train(spec: IndexSpec, dim: usize, metric: Metric, n: usize, sample: &[f32], seed: u64) -> Result<Self> {
        check_finite(sample, dim, 0)?;
        let nlist = spec.nlist(n).ok_or_else(|| crate::Error::msg("the flat index is not trained"))?;
        Ok(match spec {
            IndexSpec::IvfPq { m, .. } => AnyIndex::IvfPq(IvfPq::train(dim, metric, nlist, m, sample, seed)?),
            _ => AnyIndex::Ivf(IvfFlat::train(dim, metric, nlist, sample, seed)?),
        })
    }

    /// The cells (and PQ codes) of rows `vectors` of an IVF index: the costly half of adding them.
    pub fn assign(&self, vectors: &[f32]) -> Result<Assignment> {
        check_finite(vectors, self.index().dim(), 0)?;
        match self {
            AnyIndex::Flat(_) => bail!("the flat index assigns no cells"),
            AnyIndex::Ivf(i) => Ok(Assignment { cells: i.assign(vectors)?, codes: Vec::new(), code_bytes: 0 }),
            AnyIndex::IvfPq(i) => {
                let (cells, codes) = i.assign(vectors)?;
                Ok(Assignment { cells, codes, code_bytes: i.m() })
            }
        }
    }

    /// Rows `vectors` (ids `first_id`, ...) into an IVF index's lists as `assignment` (from `assign` on
    /// the same rows) says.
    pub fn insert(&mut self, assignment: &Assignment, vectors: &[f32], first_id: i64) -> Result<()> {
        match self {
            AnyIndex::Flat(_) => bail!("the flat index has no lists"),
            AnyIndex::Ivf(i) => i.insert(&assignment.cells, vectors, first_id),
            AnyIndex::IvfPq(i) => {
                ensure!(
                    assignment.code_bytes == i.m(),
                    "an assignment of {}-byte codes for PQ{}",
                    assignment.code_bytes,
                    i.m()
                );
                i.insert(&assignment.cells, &assignment.codes, first_id)
            }
        }
    }

    pub fn index(&self) -> &dyn Index {
        match self {
            AnyIndex::Flat(f) => f,
            AnyIndex::Ivf(i) => i,
            AnyIndex::IvfPq(i) => i,
        }
    }

    /// Lists searched per query (IVF; the flat index searches everything).
    pub fn set_nprobe(&mut self, nprobe: usize) {
        match self {
            AnyIndex::Flat(_) => {}
            AnyIndex::Ivf(i) => i.set_nprobe(nprobe),
            AnyIndex::IvfPq(i) => i.set_nprobe(nprobe),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            AnyIndex::Flat(_) => "Flat".into(),
            AnyIndex::Ivf(i) => format!("IVF{},Flat", i.nlist()),
            AnyIndex::IvfPq(i) => format!("IVF{},PQ{}", i.nlist(), i.m()),
        }
    }

    /// Search with the queries' dimension checked against the index's.
    pub fn search(&self, queries: &[f32], dim: usize, k: usize) -> Result<Neighbors> {
        let index = self.index();
        ensure!(dim == index.dim(), "queries have dimension {dim}, the index {}", index.dim());
        ensure!(
            k <= index.len(),
            "k = {k} is larger than the index's {} vectors (ask for at most {})",
            index.len(),
            index.len()
        );
        index.search(queries, k)
    }

    /// Write the index to `path` (atomically: a reader sees the old file or the new one).
    pub fn save(&self, path: &Path) -> Result<()> {
        let index = self.index();
        match self {
            AnyIndex::Flat(f) => {
                Self::write_flat(path, index.dim(), index.metric(), f.len(), std::iter::once(Ok((0, f.vectors()))))
            }
            AnyIndex::Ivf(i) => {
                let lens = i.lists().iter().map(|l| l.ids.len()).collect();
                FileHeader::ivf(index.metric(), i.centroids(), lens, None).write(path, |slots| {
                    for (cell, l) in i.lists().iter().enumerate() {
                        for (&id, v) in l.ids.iter().zip(l.vectors.chunks(index.dim())) {
                            slots.put_run(cell, id, bytemuck::cast_slice(v))?;
                        }
                    }
                    Ok(())
                })
            }
            AnyIndex::IvfPq(i) => {
                let lens = i.lists().iter().map(|l| l.ids.len()).collect();
                FileHeader::ivf(index.metric(), i.centroids(), lens, Some(i.quantizer())).write(path, |slots| {
                    for (cell, l) in i.lists().iter().enumerate() {
                        for (&id, code) in l.ids.iter().zip(l.codes.chunks(i.m())) {
                            slots.put_run(cell, id, code)?;
                        }
                    }
                    Ok(())
                })
            }
        }
    }

    /// The index file of this trained IVF index (it holds no vectors) with `n` rows added from `blocks`:
    /// each gives its assignment (from `assign`), its first row and (IVF-Flat) its vectors, in row order.
    /// Written in place through a memory map as the blocks arrive, so neither the vectors nor the lists
    /// are held in memory: the bytes `insert` then `save` would write. `cells` are every row's cells in
    /// row order (they size the lists before any row is written).
    pub fn write_with_rows<V: AsRef<[f32]>>(
        &self,
        path: &Path,
        cells: &[u32],
        blocks: impl Iterator<Item = Result<(Assignment, usize, V)>>,
    ) -> Result<()> {
        let (metric, dim) = (self.index().metric(), self.index().dim());
        let (centroids, pq) = match self {
            AnyIndex::Flat(_) => bail!("the flat index has no lists"),
            AnyIndex::Ivf(i) => (i.centroids(), None),
            AnyIndex::IvfPq(i) => (i.centroids(), Some(i.quantizer())),
        };
        let nlist = centroids.len() / dim;
        let mut lens = vec![0usize; nlist];
        for &c in cells {
            ensure!((c as usize) < nlist, "cell {c} of an index of {nlist} lists");
            lens[c as usize] += 1;
        }
        FileHeader::ivf(metric, centroids, lens, pq).write(path, |slots| {
            for block in blocks {
                let (assignment, first_row, vectors) = block?;
                let vectors = vectors.as_ref();
                for (i, &cell) in assignment.cells.iter().enumerate() {
                    let row = match pq {
                        Some(pq) => &assignment.codes[i * pq.m..(i + 1) * pq.m],
                        None => bytemuck::cast_slice(&vectors[i * dim..(i + 1) * dim]),
                    };
                    slots.put_run(cell, (first_row + i) as i64, row)?;
                }
            }
            Ok(())
        })
    }

    /// A flat index file over the `n` rows of `blocks` (each its first row and its vectors, in row order),
    /// written in place as they arrive: the vectors are never all in memory.
    pub fn write_flat<V: AsRef<[f32]>>(
        path: &Path,
        dim: usize,
        metric: Metric,
        n: usize,
        blocks: impl Iterator<Item = Result<(usize, V)>>,
    ) -> Result<()> {
        FileHeader::flat(dim, metric, n).write(path, |slots| {
            for block in blocks {
                let (first_row, vectors) = block?;
                check_finite(vectors.as_ref(), dim, first_row)?;
                slots.put_run(0, first_row as i64, bytemuck::cast_slice(vectors.as_ref()))?;
            }
            Ok(())
        })
    }

    /// `build` written straight to `path`, for vectors larger than memory (`retro knn build`): IVF
    /// trains on the sample rows, assigns ASSIGN_ROWS rows at a time, then writes the lists in place from
    /// the (memory-mapped) vectors, holding only the cells (and PQ codes) of every row. Returns what it
    /// built (`describe`). `progress`: a spinner and bars on stderr for the three steps.
    #[allow(clippy::too_many_arguments)]
    pub fn build_file(
        spec: IndexSpec,
        dim: usize,
        metric: Metric,
        vectors: &[f32],
        ntrain: Option<usize>,
        seed: u64,
        path: &Path,
        progress: bool,
    ) -> Result<String> {
        ensure!(dim > 0 && vectors.len() % dim == 0, "{} values are not vectors of dimension {dim}", vectors.len());
        let n = vectors.len() / dim;
        let Some(rows) = Self::training_rows(spec, n, ntrain, seed)? else {
            Self::write_flat(path, dim, metric, n, std::iter::once(Ok((0, vectors))))?;
            return Ok("Flat".into());
        };
        let sample: Vec<f32> = rows.iter().flat_map(|&r| vectors[r * dim..(r + 1) * dim].iter().copied()).collect();
        let what = format!("k-means: {} lists on {} rows", spec.nlist(n).unwrap_or(0), rows.len());
        let training = progress::spinner(&what, progress);
        let index = Self::train(spec, dim, metric, n, &sample, seed)?;
        training.finish_and_clear();
        drop(sample);
        let block_rows = |b: usize| b * ASSIGN_ROWS..((b + 1) * ASSIGN_ROWS).min(n);
        let bar = progress::bar(n, "assign", progress);
        let assignments: Vec<Assignment> = (0..n.div_ceil(ASSIGN_ROWS))
            .map(|b| {
                let r = block_rows(b);
                check_finite(&vectors[r.start * dim..r.end * dim], dim, r.start)?;
                bar.inc(r.len() as u64);
                index.assign(&vectors[r.start * dim..r.end * dim])
            })
            .collect::<Result<_>>()?;
        bar.finish_and_clear();
        let cells: Vec<u32> = assignments.iter().flat_map(|a| a.cells.iter().map(|&c| c as u32)).collect();
        let bar = progress::bar(n, "lists", progress);
        let blocks = assignments.into_iter().enumerate().map(|(b, a)| {
            let r = block_rows(b);
            bar.inc(r.len() as u64);
            Ok((a, r.start, &vectors[r.start * dim..r.end * dim]))
        });
        index.write_with_rows(path, &cells, blocks)?;
        bar.finish_and_clear();
        Ok(index.describe())
    }

    /// Open an index file: verified whole (its checksums), then its lists and vectors read in place from
    /// the memory-mapped file (the pages verification read are released; searches fault in what they scan).
    pub fn load(path: &Path) -> Result<Self> {
        let (map, payload) = integrity::map_sealed(path, FIX)?;
        let b = &map[..payload];
        let bad = |why: String| crate::Error::msg(format!("{}: {why}; {FIX}", path.display()));
        if b.len() < 40 || &b[..8] != MAGIC {
            return Err(bad("not a retro index file".into()));
        }
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap()) as usize;
        if u32_at(8) != VERSION {
            return Err(bad(format!("index file version {}, this retro reads version {VERSION}", u32_at(8))));
        }
        let (kind, metric, dim, n, nlist) = (u32_at(12), u32_at(16), u32_at(20) as usize, u64_at(24), u64_at(32));
        let metric = match metric {
            0 => Metric::InnerProduct,
            1 => Metric::L2,
            m => return Err(bad(format!("unknown metric code {m}"))),
        };
        // Bytes after the ids: the vectors, or for IVF-PQ its m, codebooks and codes.
        let ids_at = 40u128 + 4 * (nlist * dim) as u128 + 8 * nlist as u128;
        let tail_at = ids_at + 8 * n as u128;
        let tail = (b.len() as u128).checked_sub(tail_at);
        let m = if kind == 2 && tail.is_some_and(|t| t >= 8) { u64_at(tail_at as usize) } else { 0 };
        let tail_need = match kind {
            2 if m > 0 && dim % m == 0 => 8 + 4 * (CODEWORDS * dim) as u128 + (n * m) as u128,
            2 => u128::MAX,
            _ => 4 * (n * dim) as u128,
        };
        if dim == 0 || tail != Some(tail_need) {
            return Err(bad(format!("{} bytes do not hold {n} vectors of dimension {dim} in {nlist} lists", b.len())));
        }
        let (ids_at, tail_at) = (ids_at as usize, tail_at as usize);
        let f32s = |from: usize, count: usize| -> Vec<f32> { bytemuck::pod_collect_to_vec(&b[from..from + 4 * count]) };
        let centroids = f32s(40, nlist * dim);
        let lens_at = 40 + 4 * nlist * dim;
        let lens: Vec<usize> = (0..nlist).map(|i| u64_at(lens_at + 8 * i)).collect();
        if kind != 0 && lens.iter().sum::<usize>() != n {
            return Err(bad("list lengths do not add up to the vector count".into()));
        }
        // Rows `at..at + len` of each list, in list order.
        let spans: Vec<(usize, usize)> = lens
            .iter()
            .scan(0, |at, &len| {
                *at += len;
                Some((*at - len, len))
            })
            .collect();
        let ids = |at: usize, len: usize| Stored::<i64>::mapped(&map, ids_at + 8 * at, len);
        match kind {
            0 => Ok(AnyIndex::Flat(FlatIndex::new(dim, metric, Stored::<f32>::mapped(&map, tail_at, n * dim))?)),
            1 => {
                let lists = spans
                    .iter()
                    .map(|&(at, len)| List {
                        ids: ids(at, len),
                        vectors: Stored::mapped(&map, tail_at + 4 * at * dim, len * dim),
                        ..Default::default()
                    })
                    .collect();
                Ok(AnyIndex::Ivf(IvfFlat::from_parts(dim, metric, centroids, lists)?))
            }
            2 => {
                let codebooks = f32s(tail_at + 8, CODEWORDS * dim);
                let codes_at = tail_at + 8 + 4 * CODEWORDS * dim;
                let lists = spans
                    .iter()
                    .map(|&(at, len)| PqList {
                        ids: ids(at, len),
                        codes: Stored::mapped(&map, codes_at + at * m, len * m),
                    })
                    .collect();
                let pq = ProductQuantizer { dim, m, codebooks };
                Ok(AnyIndex::IvfPq(IvfPq::from_parts(dim, metric, centroids, pq, lists)?))
            }
            k => bail!("{}: unknown index kind {k}; {FIX}", path.display()),
        }
    }
}

/// What precedes an index file's rows, and where its lists' slots lie: kind, metric, dimension, the
/// centroids, the list lengths (Flat: one list of every vector, no lengths written), the row size (a
/// vector, or an m-byte code) and the PQ codebooks.
struct FileHeader<'a> {
    kind: u32,
    metric: Metric,
    dim: usize,
    centroids: &'a [f32],
    lens: Vec<usize>,
    pq: Option<&'a ProductQuantizer>,
}

impl<'a> FileHeader<'a> {
    fn flat(dim: usize, metric: Metric, n: usize) -> Self {
        Self { kind: 0, metric, dim, centroids: &[], lens: vec![n], pq: None }
    }

    fn ivf(metric: Metric, centroids: &'a [f32], lens: Vec<usize>, pq: Option<&'a ProductQuantizer>) -> Self {
        let dim = centroids.len() / lens.len().max(1);
        Self { kind: if pq.is_some() { 2 } else { 1 }, metric, dim, centroids, lens, pq }
    }

    /// Write the file: this header, then `fill` puts every row into its list's slots (ids and rows
    /// land at their final offsets in a memory map), then the checksum trailer; refused, with nothing
    /// left behind, if a list is not exactly filled.
    fn write(&self, path: &Path, fill: impl FnOnce(&mut Slots) -> Result<()>) -> Result<()> {
        let n: usize = self.lens.iter().sum();
        let written_lens: &[usize] = if self.kind == 0 { &[] } else { &self.lens };
        let row_bytes = self.pq.map_or(4 * self.dim, |pq| pq.m);
        let mut head = Vec::new();
        head.extend_from_slice(MAGIC);
        let metric = match self.metric {
            Metric::InnerProduct => 0u32,
            Metric::L2 => 1,
        };
        for v in [VERSION, self.kind, metric, self.dim as u32] {
            head.extend_from_slice(&v.to_le_bytes());
        }
        head.extend_from_slice(&(n as u64).to_le_bytes());
        head.extend_from_slice(&(written_lens.len() as u64).to_le_bytes());
        head.extend_from_slice(bytemuck::cast_slice(self.centroids));
        written_lens.iter().for_each(|&l| head.extend_from_slice(&(l as u64).to_le_bytes()));
        let ids_at = head.len();
        let mut rows_at = ids_at + 8 * n;
        let mut pq_head = Vec::new();
        if let Some(pq) = self.pq {
            pq_head.extend_from_slice(&(pq.m as u64).to_le_bytes());
            pq_head.extend_from_slice(bytemuck::cast_slice(&pq.codebooks));
            rows_at += pq_head.len();
        }
        let payload = rows_at + row_bytes * n;
        integrity::write_sealed_mapped(path, payload, |file| {
            file[..ids_at].copy_from_slice(&head);
            file[rows_at - pq_head.len()..rows_at].copy_from_slice(&pq_head);
            let (head_and_ids, rest) = file.split_at_mut(rows_at);
            let mut slots = Slots {
                ids: &mut head_and_ids[ids_at..ids_at + 8 * n],
                rows: &mut rest[..row_bytes * n],
                row_bytes,
                next: self.lens.iter().scan(0, |at, &l| Some(std::mem::replace(at, *at + l))).collect(),
                ends: self.lens.iter().scan(0, |at, &l| Some(std::mem::replace(at, *at + l) + l)).collect(),
            };
            fill(&mut slots)?;
            if let Some(cell) = (0..slots.next.len()).find(|&c| slots.next[c] != slots.ends[c]) {
                bail!(
                    "{}: list {cell} got {} of its rows",
                    path.display(),
                    self.lens[cell] - (slots.ends[cell] - slots.next[cell])
                );
            }
            Ok(())
        })
    }
}

/// The id and row slots of an index file being written: list `cell`'s rows go to its next free slots.
struct Slots<'f> {
    ids: &'f mut [u8],
    rows: &'f mut [u8],
    row_bytes: usize,
    next: Vec<usize>,
    ends: Vec<usize>,
}

impl Slots<'_> {
    /// Rows `rows` (whole rows) with ids `first_id`, ... into list `cell`.
    fn put_run(&mut self, cell: usize, first_id: i64, rows: &[u8]) -> Result<()> {
        let count = rows.len() / self.row_bytes;
        let (Some(&at), Some(&end)) = (self.next.get(cell), self.ends.get(cell)) else {
            bail!("an index file has no list {cell}")
        };
        ensure!(rows.len() % self.row_bytes == 0 && at + count <= end, "list {cell} is given more rows than it holds");
        for (i, slot) in self.ids[8 * at..8 * (at + count)].chunks_exact_mut(8).enumerate() {
            slot.copy_from_slice(&(first_id + i as i64).to_le_bytes());
        }
        self.rows[at * self.row_bytes..(at + count) * self.row_bytes].copy_from_slice(rows);
        self.next[cell] = at + count;
        Ok(())
    }
}
