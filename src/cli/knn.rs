//! `retro knn build|search|eval`: nearest-neighbour indexes on NumPy files, usable on their own.

use retro::data::stored::Stored;
use retro::retrieval::index_file::AnyIndex;
use retro::retrieval::index_spec::IndexSpec;
use retro::retrieval::knn::{FlatIndex, Index, Metric};
use retro::retrieval::{memory_budget, npy};
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Subcommand)]
pub enum Knn {
    /// Build an index over the rows of a float32 .npy matrix [vectors, dimension] (ids = row numbers)
    /// and write it to --out (versioned, checksummed). Prints a JSON summary.
    Build(BuildArgs),
    /// Search an index: the k nearest rows of every query, nearest first, as int64 ids (-1 where there
    /// are fewer) and float32 scores (inner products, or squared L2 distances), in .npy files.
    Search(SearchArgs),
    /// Recall@k against exact search over the index's own vectors, and queries/s, for each --nprobe:
    /// one JSON line each.
    Eval(EvalArgs),
}

#[derive(clap::Args)]
pub struct BuildArgs {
    /// float32 .npy [vectors, dimension], C order.
    #[arg(long)]
    pub vectors: PathBuf,
    /// faiss's vocabulary: Flat, IVF<n>,Flat, IVF<n>,PQ<m> (m-byte codes), n a number or auto (about
    /// 4·sqrt(vectors) lists, >= 39 points per list).
    #[arg(long, default_value = "IVFauto,Flat")]
    pub index: String,
    /// ip (inner product; cosine for unit vectors) or l2.
    #[arg(long, default_value = "ip")]
    pub metric: String,
    /// k-means training sample (default: 256 rows per list, at most all of them).
    #[arg(long)]
    pub ntrain: Option<usize>,
    #[arg(long, default_value_t = 1234)]
    pub seed: u64,
    /// Memory the build may hold besides the memory-mapped vectors and index file (e.g. 8G, 512M): the
    /// k-means training sample is cut to fit, and a limit too small for the rest is refused up front.
    #[arg(long)]
    pub memory_limit: Option<String>,
    #[arg(long)]
    pub out: PathBuf,
}

/// The index, the queries and k that search and eval share.
#[derive(clap::Args)]
pub struct Queries {
    #[arg(long)]
    pub index: PathBuf,
    /// float32 .npy [queries, dimension], C order.
    #[arg(long)]
    pub queries: PathBuf,
    #[arg(long, default_value_t = 10)]
    pub k: usize,
}

impl Queries {
    /// The index and the queries: (index, query count, dimension, values).
    fn open(&self) -> retro::Result<(AnyIndex, usize, usize, Stored<f32>)> {
        let index = AnyIndex::load(&self.index)?;
        let (nq, d, queries) = npy::read_f32(&self.queries)?;
        Ok((index, nq, d, queries))
    }
}

#[derive(clap::Args)]
pub struct SearchArgs {
    #[command(flatten)]
    pub q: Queries,
    /// Lists searched per query (IVF).
    #[arg(long, default_value_t = 16)]
    pub nprobe: usize,
    #[arg(long)]
    pub out_ids: PathBuf,
    #[arg(long)]
    pub out_dists: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub q: Queries,
    /// Comma-separated nprobe values.
    #[arg(long, default_value = "1,4,16,64")]
    pub nprobe: String,
    /// The database vectors (.npy) for the exact search: needed for a PQ index, which keeps only codes.
    #[arg(long)]
    pub vectors: Option<PathBuf>,
}

fn metric(s: &str) -> retro::Result<Metric> {
    match s {
        "ip" => Ok(Metric::InnerProduct),
        "l2" => Ok(Metric::L2),
        other => retro::bail!("--metric {other:?}: ip or l2"),
    }
}

pub fn run(cmd: Knn) -> retro::Result<()> {
    match cmd {
        Knn::Build(a) => {
            let spec = IndexSpec::parse(&a.index)?;
            let metric = metric(&a.metric)?;
            let limit = a.memory_limit.as_deref().map(memory_budget::parse_bytes).transpose()?;
            let (n, d, vectors) = npy::read_f32(&a.vectors)?;
            retro::ensure!(n > 0, "{}: no vectors: nothing to index", a.vectors.display());
            let ntrain = AnyIndex::ntrain_within(spec, n, d, a.ntrain, limit)?;
            let t = Instant::now();
            // Written in place as it is built: the vectors and the lists are never all in memory.
            let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
            let built = AnyIndex::build_file(spec, d, metric, &vectors, ntrain, a.seed, &a.out, progress)?;
            let secs = t.elapsed().as_secs_f64();
            println!(
                "{}",
                json!({"index": built, "requested": a.index, "metric": a.metric, "vectors": n, "dim": d,
                       "ntrain": ntrain, "memory_limit": limit, "build_s": secs, "out": a.out})
            );
            Ok(())
        }
        Knn::Search(a) => {
            let (mut index, nq, d, queries) = a.q.open()?;
            index.set_nprobe(a.nprobe);
            let k = a.q.k;
            let found = index.search(&queries, d, k)?;
            npy::write_i64(&a.out_ids, nq, k, &found.ids)?;
            if let Some(path) = &a.out_dists {
                npy::write_f32(path, nq, k, &found.scores)?;
            }
            Ok(())
        }
        Knn::Eval(a) => {
            let (mut index, nq, d, queries) = a.q.open()?;
            let k = a.q.k;
            let nprobes: Vec<usize> = a
                .nprobe
                .split(',')
                .map(|s| s.trim().parse().map_err(|_| retro::Error::msg(format!("--nprobe {s:?}: not a number"))))
                .collect::<retro::Result<_>>()?;
            let exact = exact_neighbours(&index, a.vectors.as_deref(), &queries, d, k)?;
            for nprobe in nprobes {
                index.set_nprobe(nprobe);
                let t = Instant::now();
                let found = index.search(&queries, d, k)?;
                let secs = t.elapsed().as_secs_f64();
                let hits: usize = (0..nq)
                    .map(|q| {
                        let want = &exact[q * k..(q + 1) * k];
                        found.ids[q * k..(q + 1) * k].iter().filter(|id| **id >= 0 && want.contains(id)).count()
                    })
                    .sum();
                println!(
                    "{}",
                    json!({"index": index.describe(), "nprobe": nprobe, "k": k, "queries": nq,
                           "recall_at_k": hits as f64 / (nq * k).max(1) as f64, "queries_per_s": nq as f64 / secs})
                );
            }
            Ok(())
        }
    }
}

/// The exact k nearest ids of each query: over `vectors` when given, else over the index's own vectors.
fn exact_neighbours(
    index: &AnyIndex,
    vectors: Option<&std::path::Path>,
    queries: &[f32],
    d: usize,
    k: usize,
) -> retro::Result<Vec<i64>> {
    if let Some(path) = vectors {
        let (n, vd, v) = npy::read_f32(path)?;
        retro::ensure!(
            n == index.index().len() && vd == d,
            "--vectors {}: {n} x {vd}, the index holds {} vectors of dimension {}",
            path.display(),
            index.index().len(),
            index.index().dim()
        );
        let flat = AnyIndex::Flat(FlatIndex::new(d, index.index().metric(), v)?);
        return Ok(flat.search(queries, d, k)?.ids);
    }
    match index {
        AnyIndex::Flat(_) => Ok(index.search(queries, d, k)?.ids),
        AnyIndex::IvfPq(_) => {
            retro::bail!("a PQ index keeps codes, not vectors: give --vectors (the .npy it was built from)")
        }
        AnyIndex::Ivf(ivf) => {
            let n = ivf.len();
            let mut vectors = vec![0f32; n * d];
            for list in ivf.lists() {
                for (&id, v) in list.ids.iter().zip(list.vectors.chunks(d)) {
                    vectors[id as usize * d..(id as usize + 1) * d].copy_from_slice(v);
                }
            }
            let flat = AnyIndex::Flat(FlatIndex::new(d, ivf.metric(), vectors)?);
            Ok(flat.search(queries, d, k)?.ids)
        }
    }
}
