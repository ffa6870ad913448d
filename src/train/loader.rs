//! The training data: sample -> tokens [n + 1] (inputs and next-token labels) and neighbour tokens
//! [l, k, r] (each neighbour chunk and the next chunk of its document, EOD-padded at the document's end;
//! a missing neighbour (-1) becomes r tokens of -1, which the model masks). Batches are assembled on a
//! background thread, a few ahead, so the step does not wait on I/O.

use crate::data::chunks::ChunkDb;
use crate::data::indexed::IndexedDataset;
use crate::data::samples::Samples;
use crate::model::Batch;
use crate::preprocess::project::{Layout, ProjectConfig};
use crate::retrieval::neighbors::NeighborStore;
use crate::tensor::Tensor;
use crate::{ensure, Result};
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;

/// One split of a project, ready to cut into batches.
pub struct SplitData {
    pub samples: Samples,
    neighbors: Option<NeighborStore>,
    ds: Arc<IndexedDataset>,
    db: Arc<ChunkDb>,
    /// Neighbours per chunk the model takes (k) and tokens per neighbour (r).
    pub k: usize,
    pub retrieved_chunks: usize,
}

/// The project's datasets for training: the token dataset, chunk database, and train / valid splits.
pub struct ProjectData {
    pub config: ProjectConfig,
    pub train: SplitData,
    pub valid: Option<SplitData>,
}

impl ProjectData {
    /// `k`: neighbours per chunk; `retrieved_chunks`: chunks per neighbour (the neighbour chunk and its
    /// continuation: Megatron's retro_num_retrieved_chunks); `retrieval`: load the neighbour stores (not
    /// for the GPT baseline).
    pub fn open(dir: &Path, k: usize, retrieved_chunks: usize, retrieval: bool) -> Result<Self> {
        ensure!(
            k > 0 && retrieved_chunks > 0,
            "neighbours per chunk ({k}) and chunks per neighbour ({retrieved_chunks}) must be at least 1"
        );
        let config = ProjectConfig::read(dir)?;
        let layout = Layout { dir: dir.to_path_buf() };
        let ds = Arc::new(crate::preprocess::project::open_tokens(dir, &config)?);
        let db = Arc::new(ChunkDb::read(&layout.chunks())?);
        let split = |name: &str| -> Result<Option<SplitData>> {
            let path = layout.samples(name);
            if !path.exists() {
                return Ok(None);
            }
            let samples = Samples::read(&path)?;
            let neighbors = if retrieval {
                let store = NeighborStore::read(&layout.neighbors(name))?;
                ensure!(
                    store.k >= k,
                    "{}: {} neighbours per chunk saved, the model needs k = {k}",
                    layout.neighbors(name).display(),
                    store.k
                );
                ensure!(
                    store.samples() == samples.len(),
                    "{}: neighbours for {} samples, the sample index has {}",
                    layout.neighbors(name).display(),
                    store.samples(),
                    samples.len()
                );
                Some(store)
            } else {
                None
            };
            Ok(Some(SplitData { samples, neighbors, ds: ds.clone(), db: db.clone(), k, retrieved_chunks }))
        };
        let Some(train) = split("train")? else {
            crate::bail!(
                "{}: no training samples (run retro preprocess to the end)",
                layout.samples("train").display()
            );
        };
        Ok(Self { valid: split("valid")?, train, config })
    }
}

impl SplitData {
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The batch of samples `ids` (taken modulo the split's size).
    pub fn batch(&self, ids: &[usize]) -> Result<Batch> {
        let n = self.samples.seq_length;
        let m = self.db.chunk_length;
        let l = n / m;
        let r = self.retrieved_chunks * m;
        let mut tokens = Vec::with_capacity(ids.len() * n);
        let mut labels = Vec::with_capacity(ids.len() * n);
        let mut nb = Vec::new();
        for &id in ids {
            let s = id % self.len();
            let (t, _) = self.samples.tokens(&self.ds, s)?;
            tokens.extend(t[..n].iter().map(|&x| x as i64));
            labels.extend(t[1..].iter().map(|&x| x as i64));
            if let Some(store) = &self.neighbors {
                for c in 0..l {
                    for &chunk in &store.get(s, c)[..self.k] {
                        if chunk < 0 {
                            nb.extend(std::iter::repeat_n(-1i64, r));
                        } else {
                            nb.extend(
                                self.db
                                    .neighbor_tokens(&self.ds, chunk as usize, self.retrieved_chunks)?
                                    .iter()
                                    .map(|&x| x as i64),
                            );
                        }
                    }
                }
            }
        }
        let b = ids.len();
        Ok(Batch {
            tokens: Tensor::from_vec(tokens, &[b, n])?,
            labels: Tensor::from_vec(labels, &[b, n])?,
            neighbors: if self.neighbors.is_some() { Some(Tensor::from_vec(nb, &[b, l, self.k, r])?) } else { None },
        })
    }
}

/// Batches for `plan` (each entry a list of sample ids), built on a background thread, `ahead` at most.
pub fn prefetch(split: Arc<SplitData>, plan: Vec<Vec<usize>>, ahead: usize) -> Receiver<Result<Batch>> {
    let (tx, rx) = sync_channel(ahead.max(1));
    std::thread::spawn(move || {
        for ids in plan {
            if tx.send(split.batch(&ids)).is_err() {
                break;
            }
        }
    });
    rx
}
