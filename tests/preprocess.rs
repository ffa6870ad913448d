//! `retro preprocess` end to end on a small synthetic corpus with three topics: neighbours come from other
//! documents and mostly share the topic, stages resume after a kill, `--validate` recomputes blocks
//! bitwise, and bad settings fail cleanly.

use retro::data::chunks::ChunkDb;
use retro::data::indexed::IndexedDataset;
use retro::data::samples::Samples;
use retro::preprocess::project::ProjectConfig;
use retro::retrieval::neighbors::NeighborStore;
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::corpus;

fn tmpdir(name: &str) -> PathBuf {
    common::temp_dir(&format!("pre-{name}"))
}

fn preprocess(input: &Path, project: &Path, extra: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_retro"))
        .args(["preprocess", "--input"])
        .arg(input)
        .arg("--project")
        .arg(project)
        .args(["--seq-length", "128", "--split", "90,10,0", "--num-neighbors-query", "20", "--num-neighbors-save", "3"])
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn read_all(project: &Path) -> (IndexedDataset, ChunkDb, Samples, NeighborStore) {
    let config = ProjectConfig::read(project).unwrap();
    let ds = IndexedDataset::open(&config.data_prefix(project)).unwrap();
    let db = ChunkDb::read(&project.join("db/chunks.bin")).unwrap();
    let samples = Samples::read(&project.join("data/samples_train.bin")).unwrap();
    let store = NeighborStore::read(&project.join("neighbors/train.bin")).unwrap();
    (ds, db, samples, store)
}

#[test]
fn builds_a_project_whose_neighbours_are_from_other_documents_and_on_topic() {
    let dir = tmpdir("full");
    let input = corpus(&dir);
    let project = dir.join("project");
    let (code, stdout, err) = preprocess(&input, &project, &[]);
    assert_eq!(code, 0, "{err}");
    let summary: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(summary["tokenize"]["documents"], 31);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(project.join("config.json")).unwrap()).unwrap();
    for key in [
        "retro_gpt_seq_length",
        "retro_gpt_chunk_length",
        "retro_gpt_split",
        "retro_gpt_data_path",
        "retro_index_str",
        "retro_query_num_neighbors_save",
    ] {
        assert!(config.get(key).is_some(), "config.json lacks {key}");
    }
    let (ds, db, samples, store) = read_all(&project);
    // 90% of 31 documents = 28 training documents; every chunk stays inside its document.
    assert!(db
        .chunks
        .iter()
        .all(|c| (c.doc as usize) < 28 && c.start as usize + c.len as usize <= ds.lengths[c.doc as usize] as usize));
    assert_eq!(store.samples(), samples.len());
    assert_eq!((store.chunks_per_sample, store.k), (2, 3));
    let topic_of = |doc: u32| doc as usize % 3;
    let (mut same, mut total) = (0, 0);
    for s in 0..samples.len() {
        let (_, docs) = samples.tokens(&ds, s).unwrap();
        for c in 0..2 {
            for &id in store.get(s, c) {
                assert!(id >= 0, "sample {s} chunk {c} found fewer than 3 neighbours");
                let doc = db.chunks[id as usize].doc;
                assert!(!docs.contains(&doc), "sample {s} retrieved chunk {id} of its own document {doc}");
                // The chunk's topic: the document it starts in.
                if docs.len() == 1 {
                    same += (topic_of(doc) == topic_of(docs[0])) as usize;
                    total += 1;
                }
            }
        }
    }
    assert!(total > 0 && same * 10 >= total * 9, "only {same} of {total} neighbours share the topic");
    // Inspect prints the neighbours' text.
    let out = Command::new(env!("CARGO_BIN_EXE_retro"))
        .args(["inspect", "--project"])
        .arg(&project)
        .args(["--sample", "0"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("== chunk 1") && text.contains("neighbour 1: chunk"), "{text}");
}

#[test]
fn a_killed_run_resumes_and_validate_recomputes_blocks_bitwise() {
    let dir = tmpdir("resume");
    let input = corpus(&dir);
    let project = dir.join("project");
    let (code, _, err) = preprocess(&input, &project, &[]);
    assert_eq!(code, 0, "{err}");
    let before = std::fs::read(project.join("neighbors/train.bin")).unwrap();
    let embeddings = std::fs::read(project.join("db/embeddings/000000.f32")).unwrap();
    // As after a kill in the middle of the query stage: its marker, the assembled file and a block gone.
    std::fs::remove_file(project.join("stages/query.json")).unwrap();
    std::fs::remove_file(project.join("neighbors/train.bin")).unwrap();
    std::fs::remove_file(project.join("neighbors/train/000001.i64")).unwrap();
    let (code, _, err) = preprocess(&input, &project, &["--validate", "1.0"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read(project.join("neighbors/train.bin")).unwrap(), before);
    // --stage reruns one stage; embedding blocks are reused, not recomputed.
    let (code, stdout, err) = preprocess(&input, &project, &["--stage", "embed"]);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("\"blocks_computed\":0"), "{stdout}");
    // A flipped bit fails the block's checksum (--validate verifies every stored checksum first).
    let mut bad = embeddings.clone();
    bad[0] ^= 1;
    std::fs::write(project.join("db/embeddings/000000.f32"), &bad).unwrap();
    let (code, _, err) = preprocess(&input, &project, &["--validate", "1.0"]);
    assert_eq!(code, 2);
    assert!(err.contains("000000.f32") && err.contains("checksum") && err.contains("--stage embed"), "{err}");
    // A block that was changed and sealed again passes its checksum but not the recomputation.
    let path = project.join("db/embeddings/000000.f32");
    let mut resealed = retro::data::integrity::unseal(&embeddings, &path, "").unwrap().to_vec();
    resealed[0] ^= 1;
    retro::data::integrity::seal(&mut resealed);
    assert_eq!(resealed.len(), embeddings.len());
    std::fs::write(project.join("db/embeddings/000000.f32"), resealed).unwrap();
    let (code, _, err) = preprocess(&input, &project, &["--validate", "1.0"]);
    assert_ne!(code, 0);
    assert!(err.contains("000000.f32") && err.contains("differs"), "{err}");
}

#[test]
fn a_project_written_with_another_config_is_refused_naming_the_key() {
    let dir = tmpdir("mix");
    let input = corpus(&dir);
    let project = dir.join("project");
    let (code, _, err) = preprocess(&input, &project, &["--stage", "tokenize"]);
    assert_eq!(code, 0, "{err}");
    let config_before = std::fs::read(project.join("config.json")).unwrap();
    let (code, _, err) = preprocess(&input, &project, &["--chunk-length", "32"]);
    assert_eq!(code, 2);
    assert!(err.contains("retro_gpt_chunk_length = 64") && err.contains("asks for 32"), "{err}");
    assert_eq!(std::fs::read(project.join("config.json")).unwrap(), config_before, "config.json changed");
}

#[test]
fn fewer_chunks_than_neighbours_asked_for_is_a_clear_error() {
    let dir = tmpdir("few");
    let input = corpus(&dir);
    let project = dir.join("project");
    let (code, _, err) = preprocess(&input, &project, &["--num-neighbors-query", "100000"]);
    assert_eq!(code, 2);
    assert!(err.contains("fewer than the 100000 neighbours asked for"), "{err}");
    assert!(!project.join("neighbors/train.bin").exists());
    // No neighbours at all, or more saved than searched: refused before any stage runs.
    for bad in [["--num-neighbors-query", "0"], ["--num-neighbors-save", "0"], ["--num-neighbors-save", "21"]] {
        let project = dir.join(format!("p{}", bad[1]));
        let (code, _, err) = preprocess(&input, &project, &bad);
        assert_eq!(code, 2, "{bad:?}: {err}");
        assert!(err.contains("--num-neighbors-save") && err.contains("at most --num-neighbors-query"), "{err}");
        assert!(!project.exists(), "{bad:?}: nothing written");
    }
}

#[test]
fn bad_stage_and_seq_length_are_refused() {
    let dir = tmpdir("flags");
    let input = corpus(&dir);
    let (code, _, err) = preprocess(&input, &dir.join("p1"), &["--stage", "embedd"]);
    assert_eq!(code, 2);
    assert!(err.contains("stages are tokenize, db, embed, index, query"), "{err}");
    let (code, _, err) = preprocess(&input, &dir.join("p2"), &["--chunk-length", "48"]);
    assert_eq!(code, 2);
    assert!(err.contains("multiple of --chunk-length 48"), "{err}");
}

#[test]
fn a_document_shorter_than_a_chunk_is_one_short_chunk_padded_with_eod() {
    let dir = tmpdir("short");
    let input = corpus(&dir);
    let prefix = dir.join("tok");
    let out = Command::new(env!("CARGO_BIN_EXE_retro"))
        .args(["tokenize", "--append-eod", "--input"])
        .arg(&input)
        .arg("--output-prefix")
        .arg(&prefix)
        .output()
        .unwrap();
    assert!(out.status.success());
    let ds = IndexedDataset::open(&dir.join("tok_text_document")).unwrap();
    let chunks: Vec<_> = ChunkDb::cut(&ds, 0..ds.len(), 64).collect();
    let last = *chunks.last().unwrap();
    assert_eq!(last.doc as usize, ds.len() - 1);
    assert_eq!(last.start, 0);
    assert_eq!(last.len as usize, ds.lengths[ds.len() - 1] as usize);
    assert!(last.len < 64);
    // No chunk crosses a document, and every document's chunks tile it exactly.
    for d in 0..ds.len() {
        let total: u32 = chunks.iter().filter(|c| c.doc as usize == d).map(|c| c.len).sum();
        assert_eq!(total, ds.lengths[d] as u32);
    }
    let db = ChunkDb { chunk_length: 64, chunks: chunks.clone().into() };
    let tokens = db.tokens(&ds, db.len() - 1).unwrap();
    assert_eq!(tokens.len(), 64);
    assert!(tokens[last.len as usize..].iter().all(|&t| t == retro::data::tokenizer::EOD));
    // Written and read back in place: the same records, with the layout the format documents.
    let path = dir.join("chunks.bin");
    db.write(&path).unwrap();
    let read = ChunkDb::read(&path).unwrap();
    assert!(read.chunks.is_mapped());
    assert_eq!(read, db);
    let bytes = std::fs::read(&path).unwrap();
    let at = 24 + 12 * (db.len() - 1);
    let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap());
    assert_eq!((u32_at(at), u32_at(at + 4), u32_at(at + 8)), (last.doc, last.start, last.len));
    // Chunks streamed into the file must be exactly as many as it was sized for: else refused, and the
    // database already there is kept.
    for count in [chunks.len() + 1, chunks.len() - 1] {
        let err = ChunkDb::write_chunks(&path, 64, count, chunks.iter().copied()).unwrap_err().to_string();
        assert!(err.contains("chunks"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "the old database is kept");
    }
    assert_eq!(
        std::fs::read_dir(&dir)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().contains(".tmp"))
            .count(),
        0
    );
}

#[test]
fn an_ivf_index_probing_every_list_finds_the_flat_index_neighbours() {
    let dir = tmpdir("ivf");
    let input = corpus(&dir);
    let (flat, ivf) = (dir.join("flat"), dir.join("ivf"));
    let (code, out, err) = preprocess(&input, &flat, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"type\":\"Flat\""), "auto below 1M chunks is Flat: {out}");
    let (code, out, err) = preprocess(&input, &ivf, &["--retro-index-str", "IVF4,Flat", "--retro-query-nprobe", "4"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"type\":\"IVF4,Flat\""), "{out}");
    let read = |p: &Path| NeighborStore::read(&p.join("neighbors/train.bin")).unwrap();
    assert_eq!(read(&ivf), read(&flat), "nprobe = nlist is exact search");
    // An index string retro does not build is refused before anything is written.
    let (code, _, err) = preprocess(&input, &dir.join("pq"), &["--retro-index-str", "IVF4,PQx"]);
    assert_eq!(code, 2);
    assert!(err.contains("--retro-index-str") && err.contains("IVF4,PQx"), "{err}");
    assert!(!dir.join("pq").exists());
}

// The IVF index stage keeps its trained quantizer and each block's assignment: a rerun after a kill
// reuses them, a lost or damaged one is recomputed (a damaged one named), and the index is the one-shot
// build's, byte for byte.
#[test]
fn the_ivf_index_stage_resumes_from_its_stored_training_and_assignments() {
    use retro::retrieval::index_file::AnyIndex;
    use retro::retrieval::index_spec::IndexSpec;
    use retro::retrieval::knn::Metric;
    let dir = tmpdir("ivf-resume");
    let input = corpus(&dir);
    let project = dir.join("project");
    let ivf = ["--retro-index-str", "IVF4,Flat", "--retro-query-nprobe", "4"];
    let (code, out, err) = preprocess(&input, &project, &ivf);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"add_blocks_computed\":1"), "{out}");
    let index = std::fs::read(project.join("index/index.bin")).unwrap();
    // The one-shot build over the same embeddings and seed.
    let (_, db, _, _) = read_all(&project);
    let layout = retro::preprocess::project::Layout { dir: project.clone() };
    let vectors = retro::preprocess::read_embeddings(&layout, db.len(), 384).unwrap();
    let spec = IndexSpec::parse("IVF4,Flat").unwrap();
    let whole = AnyIndex::build(spec, 384, Metric::InnerProduct, vectors, None, 1234).unwrap();
    whole.save(&dir.join("whole.bin")).unwrap();
    assert!(std::fs::read(dir.join("whole.bin")).unwrap() == index, "the staged index differs from the one-shot build");
    // Killed before the index was written: the training and the assignment are reused.
    std::fs::remove_file(project.join("index/index.bin")).unwrap();
    let (code, out, err) = preprocess(&input, &project, &[&ivf[..], &["--stage", "index"]].concat());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"add_blocks_computed\":0"), "{out}");
    assert!(std::fs::read(project.join("index/index.bin")).unwrap() == index);
    // A damaged training and a lost assignment are computed again, to the same index.
    let mut trained = std::fs::read(project.join("index/trained.bin")).unwrap();
    trained[20] ^= 1;
    std::fs::write(project.join("index/trained.bin"), &trained).unwrap();
    std::fs::remove_file(project.join("index/adds/000000.bin")).unwrap();
    let (code, out, err) = preprocess(&input, &project, &[&ivf[..], &["--stage", "index"]].concat());
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("trained.bin") && err.contains("training the index again"), "{err}");
    assert!(out.contains("\"add_blocks_computed\":1"), "{out}");
    assert!(std::fs::read(project.join("index/index.bin")).unwrap() == index);
    // Pieces left for another database (here: its record says so) are discarded, not reused.
    std::fs::write(project.join("index/adds/source.json"), b"{\"chunks\": 1}").unwrap();
    let (code, out, err) = preprocess(&input, &project, &[&ivf[..], &["--stage", "index"]].concat());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"add_blocks_computed\":1"), "{out}");
    assert!(std::fs::read(project.join("index/index.bin")).unwrap() == index);
    // A --memory-limit too small for the index stage is refused before any work; the index stays.
    let small = [&ivf[..], &["--stage", "index", "--memory-limit", "100K"]].concat();
    let (code, _, err) = preprocess(&input, &project, &small);
    assert!(code != 0 && err.contains("--memory-limit 0.1 MiB") && err.contains("needs at least"), "{err}");
    assert!(std::fs::read(project.join("index/index.bin")).unwrap() == index);
}
