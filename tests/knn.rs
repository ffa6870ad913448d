//! `retro knn build|search|eval` on NumPy files: IVF recall on clustered data, exact Flat, deterministic
//! bytes whatever the thread count, a bitwise save / load round trip, and every bad input refused with a
//! clear message and nothing half-written.

mod common;

use retro::retrieval::index_file::AnyIndex;
use retro::retrieval::npy;
use retro::rng::Rng;
use std::path::{Path, PathBuf};
use std::process::Command;

fn retro(args: &[&str], threads: Option<usize>) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_retro"));
    cmd.args(args);
    if let Some(t) = threads {
        cmd.env("RAYON_NUM_THREADS", t.to_string());
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

fn dir(name: &str) -> PathBuf {
    common::temp_dir(&format!("knn-{name}"))
}

/// `n` points around `centres` random unit centres: x = normalize(c + 0.05·N(0, I)), d = 384.
fn clustered(rng: &mut Rng, centres: &[f32], n: usize, d: usize) -> Vec<f32> {
    let c = centres.len() / d;
    let mut out = Vec::with_capacity(n * d);
    for i in 0..n {
        let centre = &centres[(i % c) * d..(i % c + 1) * d];
        let x: Vec<f32> = centre.iter().map(|&v| v + (0.05 * rng.normal()) as f32).collect();
        let norm = x.iter().map(|v| v * v).sum::<f32>().sqrt();
        out.extend(x.iter().map(|v| v / norm));
    }
    out
}

fn unit_centres(rng: &mut Rng, c: usize, d: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(c * d);
    for _ in 0..c {
        let x: Vec<f32> = (0..d).map(|_| rng.normal() as f32).collect();
        let norm = x.iter().map(|v| v * v).sum::<f32>().sqrt();
        out.extend(x.iter().map(|v| v / norm));
    }
    out
}

const D: usize = 384;

/// The documented bound for IVF-PQ (PQ48 on d = 384, IVFauto, nprobe 16) on this clustered data:
/// measured 0.51 (IVF-Flat: 1.0). A code of 8 bits per 8 dimensions cannot order the 100 near-equidistant
/// members of a query's cluster exactly (their true scores differ by the noise alone), so about half of
/// the exact top 10 survive; 0.45 leaves room for other seeds without letting a broken PQ (~0.1) pass.
const PQ48_RECALL_AT_10: f64 = 0.45;

/// Database (10 000 vectors around 100 centres) and 200 queries, as .npy files in `dir`.
fn data(dir: &Path) -> (PathBuf, PathBuf) {
    let mut rng = Rng::new(42);
    let centres = unit_centres(&mut rng, 100, D);
    let (db, q) = (dir.join("db.npy"), dir.join("q.npy"));
    npy::write_f32(&db, 10_000, D, &clustered(&mut rng, &centres, 10_000, D)).unwrap();
    npy::write_f32(&q, 200, D, &clustered(&mut rng, &centres, 200, D)).unwrap();
    (db, q)
}

fn recall(lines: &str, nprobe: usize) -> f64 {
    lines
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["nprobe"] == nprobe)
        .unwrap_or_else(|| panic!("no line for nprobe {nprobe} in {lines}"))["recall_at_k"]
        .as_f64()
        .unwrap()
}

#[test]
fn ivf_recall_flat_exactness_determinism_and_round_trip() {
    let dir = dir("main");
    let (db, q) = data(&dir);
    let ivf = dir.join("ivf.idx");
    let (code, out, err) =
        retro(&["knn", "build", "--vectors", &s(&db), "--index", "IVFauto", "--out", &s(&ivf)], None);
    assert_eq!(code, 0, "{err}");
    // IVFauto on 10 000 vectors: 4·sqrt(n) = 400 lists, bounded by 39 points per list to 256.
    assert!(out.contains("\"index\":\"IVF256,Flat\""), "{out}");
    let (code, out, err) =
        retro(&["knn", "eval", "--index", &s(&ivf), "--queries", &s(&q), "--nprobe", "1,16,256"], None);
    assert_eq!(code, 0, "{err}");
    eprintln!("{out}");
    assert!(recall(&out, 16) >= 0.95, "recall@10 at nprobe 16: {out}");
    assert_eq!(recall(&out, 256), 1.0, "every list probed is exact search: {out}");
    // IVF-PQ, 48 bytes a vector (8 dimensions per code): recall against exact search over the vectors.
    let pq = dir.join("pq.idx");
    let (code, out, err) =
        retro(&["knn", "build", "--vectors", &s(&db), "--index", "IVFauto,PQ48", "--out", &s(&pq)], None);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"index\":\"IVF256,PQ48\""), "{out}");
    let (code, out, err) =
        retro(&["knn", "eval", "--index", &s(&pq), "--queries", &s(&q), "--vectors", &s(&db), "--nprobe", "16"], None);
    assert_eq!(code, 0, "{err}");
    eprintln!("{out}");
    assert!(recall(&out, 16) >= PQ48_RECALL_AT_10, "IVF-PQ recall@10 at nprobe 16: {out}");
    let (code, _, err) = retro(&["knn", "eval", "--index", &s(&pq), "--queries", &s(&q)], None);
    assert!(code == 2 && err.contains("--vectors"), "{err}");
    let again = dir.join("pq-again.idx");
    AnyIndex::load(&pq).unwrap().save(&again).unwrap();
    assert_eq!(std::fs::read(&pq).unwrap(), std::fs::read(&again).unwrap());
    // Flat: exact.
    let flat = dir.join("flat.idx");
    let (code, _, err) = retro(&["knn", "build", "--vectors", &s(&db), "--index", "Flat", "--out", &s(&flat)], None);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = retro(&["knn", "eval", "--index", &s(&flat), "--queries", &s(&q), "--nprobe", "1"], None);
    assert_eq!(code, 0, "{err}");
    assert_eq!(recall(&out, 1), 1.0, "{out}");
    // The same bytes from one and two threads.
    let one = dir.join("ivf-1.idx");
    let args = ["knn", "build", "--vectors", &s(&db), "--index", "IVF64,Flat", "--metric", "l2", "--out"];
    let (code, _, err) = retro(&[&args[..], &[&s(&one)]].concat(), Some(1));
    assert_eq!(code, 0, "{err}");
    let two = dir.join("ivf-2.idx");
    let (code, _, err) = retro(&[&args[..], &[&s(&two)]].concat(), Some(2));
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read(&one).unwrap(), std::fs::read(&two).unwrap(), "index bytes depend on the thread count");
    // Load and save again: the same bytes.
    let again = dir.join("again.idx");
    AnyIndex::load(&ivf).unwrap().save(&again).unwrap();
    assert_eq!(std::fs::read(&ivf).unwrap(), std::fs::read(&again).unwrap());
    // search writes int64 ids and float32 scores numpy can read: check the header and the sizes. The
    // lists' tasks share each query's selection in whatever order they run: the same files from one and
    // two threads.
    let search = |ids: &Path, dists: &Path, threads: usize| {
        let (i, d) = (s(ids), s(dists));
        let args = ["knn", "search", "--index", &s(&ivf), "--queries", &s(&q), "--k", "10", "--nprobe", "16"];
        let (code, _, err) = retro(&[&args[..], &["--out-ids", &i, "--out-dists", &d]].concat(), Some(threads));
        assert_eq!(code, 0, "{err}");
    };
    let (ids, dists) = (dir.join("ids.npy"), dir.join("dists.npy"));
    search(&ids, &dists, 2);
    let (ids1, dists1) = (dir.join("ids-1.npy"), dir.join("dists-1.npy"));
    search(&ids1, &dists1, 1);
    for (a, b) in [(&ids, &ids1), (&dists, &dists1)] {
        assert_eq!(std::fs::read(a).unwrap(), std::fs::read(b).unwrap(), "search results depend on the thread count");
    }
    let ids = std::fs::read(&ids).unwrap();
    assert!(String::from_utf8_lossy(&ids[..128]).contains("'descr': '<i8', 'fortran_order': False, 'shape': (200, 10)"));
    let header = u16::from_le_bytes([ids[8], ids[9]]) as usize;
    assert_eq!(ids.len(), 10 + header + 200 * 10 * 8);
    let (rows, cols, scores) = npy::read_f32(&dists).unwrap();
    assert_eq!((rows, cols), (200, 10));
    assert!(scores.windows(2).step_by(10).all(|w| w[0] >= w[1]), "inner products nearest first");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A .npy with a hand-written header (for the formats retro refuses).
fn raw_npy(path: &Path, descr: &str, fortran: bool, rows: usize, cols: usize, bytes_per: usize) {
    let mut header = format!(
        "{{'descr': '{descr}', 'fortran_order': {}, 'shape': ({rows}, {cols}), }}",
        if fortran { "True" } else { "False" }
    );
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend_from_slice(&(header.len() as u16).to_le_bytes());
    b.extend_from_slice(header.as_bytes());
    b.extend(std::iter::repeat_n(0u8, rows * cols * bytes_per));
    std::fs::write(path, b).unwrap();
}

#[test]
fn bad_inputs_are_refused_clearly_with_nothing_half_written() {
    let dir = dir("bad");
    let mut rng = Rng::new(1);
    let small = dir.join("small.npy");
    npy::write_f32(&small, 100, 16, &(0..1600).map(|_| rng.normal() as f32).collect::<Vec<_>>()).unwrap();
    let index = dir.join("small.idx");
    let (code, _, err) =
        retro(&["knn", "build", "--vectors", &s(&small), "--index", "IVF4,Flat", "--out", &s(&index)], None);
    assert_eq!(code, 0, "{err}");
    let out = dir.join("out.idx");
    let build = |vectors: &Path, spec: &str| {
        retro(&["knn", "build", "--vectors", &s(vectors), "--index", spec, "--out", &s(&out)], None)
    };
    let cases: Vec<(PathBuf, &str, Vec<&str>)> = {
        let empty = dir.join("empty.npy");
        npy::write_f32(&empty, 0, 16, &[]).unwrap();
        let nan = dir.join("nan.npy");
        let mut v = vec![0.5f32; 32];
        v[20] = f32::NAN;
        npy::write_f32(&nan, 2, 16, &v).unwrap();
        let f64s = dir.join("f64.npy");
        raw_npy(&f64s, "<f8", false, 4, 16, 8);
        let fortran = dir.join("fortran.npy");
        raw_npy(&fortran, "<f4", true, 4, 16, 4);
        vec![
            (empty, "Flat", vec!["empty"]),
            (nan, "Flat", vec!["row 1", "NaN"]),
            (f64s, "Flat", vec!["'<f8'", "float32"]),
            (fortran, "Flat", vec!["Fortran", "C order"]),
            (small.clone(), "IVF1000,Flat", vec!["IVF1000", "100"]),
            (small.clone(), "IVF4,PQ5", vec!["PQ5", "multiple"]),
            (small.clone(), "IVF4,PQ4", vec!["PQ4", "at least 256"]),
        ]
    };
    for (vectors, spec, words) in cases {
        let (code, _, err) = build(&vectors, spec);
        assert_eq!(code, 2, "{}: {err}", vectors.display());
        assert!(words.iter().all(|w| err.contains(w)), "{}: {err}", vectors.display());
        assert!(!out.exists(), "{}: an index was written", vectors.display());
    }
    // Search: another dimension, k larger than the database, a truncated or corrupt index file.
    let ids = dir.join("ids.npy");
    let search = |index: &Path, queries: &Path, k: &str| {
        retro(&["knn", "search", "--index", &s(index), "--queries", &s(queries), "--k", k, "--out-ids", &s(&ids)], None)
    };
    let q8 = dir.join("q8.npy");
    npy::write_f32(&q8, 3, 8, &[0.1; 24]).unwrap();
    let (code, _, err) = search(&index, &q8, "5");
    assert!(code == 2 && err.contains("dimension 8") && err.contains("16"), "{err}");
    let (code, _, err) = search(&index, &small, "101");
    assert!(code == 2 && err.contains("k = 101") && err.contains("100 vectors"), "{err}");
    let bytes = std::fs::read(&index).unwrap();
    let cut = dir.join("cut.idx");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let (code, _, err) = search(&cut, &small, "5");
    assert!(code == 2 && err.contains("cut.idx") && err.contains("knn build"), "{err}");
    let mut flipped = bytes.clone();
    flipped[100] ^= 1;
    std::fs::write(&cut, &flipped).unwrap();
    let (code, _, err) = search(&cut, &small, "5");
    assert!(code == 2 && err.contains("checksum"), "{err}");
    // Another format version (sealed again, so only the version differs).
    let mut other = retro::data::integrity::unseal(&bytes, &index, "").unwrap().to_vec();
    other[8] = 2;
    retro::data::integrity::seal(&mut other);
    std::fs::write(&cut, &other).unwrap();
    let (code, _, err) = search(&cut, &small, "5");
    assert!(code == 2 && err.contains("version 2") && err.contains("version 1"), "{err}");
    assert!(!ids.exists(), "ids were written for a failed search");
    std::fs::remove_dir_all(&dir).unwrap();
}

// What `retro preprocess`'s index stage does, block by block (train on the sample rows, assign each
// block, store the assignment as bytes, insert them in order) gives exactly the one-shot build's index.
#[test]
fn a_block_by_block_build_is_the_one_shot_build_byte_for_byte() {
    use retro::retrieval::assignment::Assignment;
    use retro::retrieval::index_spec::IndexSpec;
    use retro::retrieval::knn::Metric;
    let (n, d) = (3000, 32);
    let mut rng = Rng::new(11);
    let centres = unit_centres(&mut rng, 20, d);
    let vectors = clustered(&mut rng, &centres, n, d);
    let out = dir("blocks");
    for spec in ["IVF16,Flat", "IVF8,PQ4"] {
        let spec = IndexSpec::parse(spec).unwrap();
        let whole = AnyIndex::build(spec, d, Metric::InnerProduct, vectors.clone(), None, 5).unwrap();
        let rows = AnyIndex::training_rows(spec, n, None, 5).unwrap().unwrap();
        let sample: Vec<f32> = rows.iter().flat_map(|&r| vectors[r * d..(r + 1) * d].to_vec()).collect();
        let mut staged = AnyIndex::train(spec, d, Metric::InnerProduct, n, &sample, 5).unwrap();
        let blocks: Vec<(usize, Vec<u8>)> = (0..n)
            .step_by(700)
            .map(|first| {
                let rows = &vectors[first * d..(first + 700).min(n) * d];
                (first, staged.assign(rows).unwrap().to_bytes())
            })
            .collect();
        for (first, bytes) in blocks {
            let count = 700.min(n - first);
            let assignment = Assignment::from_bytes(&bytes, count).unwrap();
            staged.insert(&assignment, &vectors[first * d..(first + count) * d], first as i64).unwrap();
        }
        let (a, b) = (out.join("whole.bin"), out.join("staged.bin"));
        whole.save(&a).unwrap();
        staged.save(&b).unwrap();
        assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(), "{spec:?}: the staged index differs");
        // An assignment read back for another block size is refused.
        let bytes = staged.assign(&vectors[..10 * d]).unwrap().to_bytes();
        let err = Assignment::from_bytes(&bytes, 11).unwrap_err().to_string();
        assert!(err.contains("expected 11 vectors"), "{err}");
    }
}

// Index files are written in place (a memory map filled list by list) and read in place: every way of
// writing one gives the bytes of `build` + `save`, a loaded index searches its mapped lists exactly as
// the built one searches memory, and adding to a loaded index copies the list it changes.
#[test]
fn indexes_are_written_and_read_in_place_with_the_in_memory_bytes() {
    use retro::retrieval::index_spec::IndexSpec;
    use retro::retrieval::knn::Metric;
    let (n, d) = (2500, 16);
    let mut rng = Rng::new(21);
    let centres = unit_centres(&mut rng, 12, d);
    let vectors = clustered(&mut rng, &centres, n, d);
    let queries = clustered(&mut rng, &centres, 40, d);
    let out = dir("in-place");
    for metric in [Metric::InnerProduct, Metric::L2] {
        for spec in ["Flat", "IVF10,Flat", "IVF6,PQ4"] {
            let spec = IndexSpec::parse(spec).unwrap();
            let mut whole = AnyIndex::build(spec, d, metric, vectors.clone(), None, 3).unwrap();
            let (a, b, c) = (out.join("a.idx"), out.join("b.idx"), out.join("c.idx"));
            whole.save(&a).unwrap();
            let want = std::fs::read(&a).unwrap();
            AnyIndex::build_file(spec, d, metric, &vectors, None, 3, &b, false).unwrap();
            assert!(std::fs::read(&b).unwrap() == want, "{spec:?} {metric:?}: build_file differs from build + save");
            let mut loaded = AnyIndex::load(&a).unwrap();
            match &loaded {
                AnyIndex::Flat(_) => {}
                AnyIndex::Ivf(i) => assert!(i.lists().iter().all(|l| l.ids.is_empty() || l.vectors.is_mapped())),
                AnyIndex::IvfPq(i) => assert!(i.lists().iter().all(|l| l.ids.is_empty() || l.codes.is_mapped())),
            }
            for nprobe in [1, 3] {
                whole.set_nprobe(nprobe);
                loaded.set_nprobe(nprobe);
                assert_eq!(
                    whole.search(&queries, d, 10).unwrap(),
                    loaded.search(&queries, d, 10).unwrap(),
                    "{spec:?} {metric:?} nprobe {nprobe}: the mapped index searches differently"
                );
            }
            if !matches!(whole, AnyIndex::Flat(_)) {
                // The preprocess route: the trained index and each block's stored assignment.
                let rows = AnyIndex::training_rows(spec, n, None, 3).unwrap().unwrap();
                let sample: Vec<f32> = rows.iter().flat_map(|&r| vectors[r * d..(r + 1) * d].to_vec()).collect();
                let trained = AnyIndex::train(spec, d, metric, n, &sample, 3).unwrap();
                let blocks: Vec<_> = (0..n).step_by(900).map(|f| (f, (f + 900).min(n))).collect();
                let assigned: Vec<_> =
                    blocks.iter().map(|&(f, e)| trained.assign(&vectors[f * d..e * d]).unwrap()).collect();
                let cells: Vec<u32> = assigned.iter().flat_map(|a| a.cells.iter().map(|&c| c as u32)).collect();
                let rows_of = assigned.into_iter().zip(&blocks).map(|(a, &(f, e))| Ok((a, f, &vectors[f * d..e * d])));
                trained.write_with_rows(&c, &cells, rows_of).unwrap();
                assert!(std::fs::read(&c).unwrap() == want, "{spec:?} {metric:?}: write_with_rows differs");
                // Adding to the loaded index copies its lists into memory and equals adding to the built one.
                let more = clustered(&mut rng, &centres, 50, d);
                let asg = whole.assign(&more).unwrap();
                whole.insert(&asg, &more, n as i64).unwrap();
                loaded.insert(&asg, &more, n as i64).unwrap();
                assert_eq!(whole.search(&queries, d, 10).unwrap(), loaded.search(&queries, d, 10).unwrap());
            }
        }
    }
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn memory_limit_cuts_the_training_sample_or_refuses_before_any_work() {
    let dir = dir("memory-limit");
    let (db, q) = data(&dir);
    let out = dir.join("limited.idx");
    let build = |limit: &str| {
        let args = ["knn", "build", "--vectors", &s(&db), "--index", "IVF64,Flat", "--memory-limit", limit];
        retro(&[&args[..], &["--out", &s(&out)]].concat(), None)
    };
    // 10 000 x 384 vectors: a block (every row, twice) is 30.7 MB, the rest ~3.6 MB; IVF64's default
    // sample is every row (15 MB more).
    let (code, _, err) = build("30M");
    assert!(code == 2 && err.contains("needs at least") && err.contains("--memory-limit 30.0 MiB"), "{err}");
    assert!(!out.exists(), "a refused build wrote an index");
    let (code, _, err) = build("lots");
    assert!(code == 2 && err.contains("a size such as"), "{err}");
    let (code, stdout, err) = build("40M");
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("training the index on"), "the cut is said: {err}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let ntrain = v["ntrain"].as_u64().unwrap();
    assert!((64..10_000).contains(&ntrain), "{stdout}");
    let (code, lines, err) = retro(&["knn", "eval", "--index", &s(&out), "--queries", &s(&q), "--nprobe", "64"], None);
    assert_eq!(code, 0, "{err}");
    assert_eq!(recall(&lines, 64), 1.0, "{lines}");
    std::fs::remove_dir_all(&dir).unwrap();
}
