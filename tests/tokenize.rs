//! `retro tokenize`: byte-identical to Megatron's preprocess_data.py (the expected .idx is built here from
//! the layout in docs/formats.md, independently of retro's writer), and clean failures on bad input.

mod common;

use retro::data::indexed::IndexedDataset;
use retro::data::tokenizer::{encode, EOD};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;

fn tmpdir(name: &str) -> PathBuf {
    common::temp_dir(&format!("tok-{name}"))
}

fn tokenize(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_retro")).arg("tokenize").args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The .idx Megatron's IndexedDatasetBuilder writes, from docs/formats.md.
fn expected_idx(docs: &[Vec<u32>]) -> Vec<u8> {
    let lengths: Vec<i32> = docs.iter().filter(|d| !d.is_empty()).map(|d| d.len() as i32).collect();
    let mut doc_indices = vec![0i64];
    let mut seen = 0i64;
    for d in docs {
        if !d.is_empty() {
            seen += 1;
        }
        doc_indices.push(seen);
    }
    let mut b = Vec::new();
    b.extend_from_slice(b"MMIDIDX\x00\x00");
    b.extend_from_slice(&1u64.to_le_bytes());
    b.push(8u8);
    b.extend_from_slice(&(lengths.len() as u64).to_le_bytes());
    b.extend_from_slice(&(doc_indices.len() as u64).to_le_bytes());
    for l in &lengths {
        b.extend_from_slice(&l.to_le_bytes());
    }
    let mut ptr = 0i64;
    for l in &lengths {
        b.extend_from_slice(&ptr.to_le_bytes());
        ptr += 2 * *l as i64;
    }
    for d in &doc_indices {
        b.extend_from_slice(&d.to_le_bytes());
    }
    b
}

fn sha(path: &Path) -> String {
    format!("{:x}", Sha256::digest(std::fs::read(path).unwrap()))
}

#[test]
fn jsonl_output_is_byte_identical_to_megatron_layout() {
    let dir = tmpdir("jsonl");
    let texts = [
        "Fellow-Citizens of the Senate and House of Representatives:",
        "",
        "The text <|endoftext|> is ordinary text here.",
        "Unicode: naïve café — 日本語 🙂",
    ];
    let jsonl: String = texts.iter().map(|t| format!("{}\n", serde_json::json!({"text": t, "other": 1}))).collect();
    std::fs::write(dir.join("c.jsonl"), &jsonl).unwrap();
    let prefix = dir.join("out");
    let (code, stdout, err) = tokenize(&[
        "--input",
        dir.join("c.jsonl").to_str().unwrap(),
        "--output-prefix",
        prefix.to_str().unwrap(),
        "--append-eod",
        "--workers",
        "2",
    ]);
    assert_eq!(code, 0, "{err}");
    let summary: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(summary["documents"], 4);
    assert_eq!(summary["empty_documents"], 1);
    let docs: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| {
            let mut ids = encode(t);
            if !ids.is_empty() {
                ids.push(EOD);
            }
            ids
        })
        .collect();
    assert!(!docs[2].contains(&EOD) || docs[2].iter().filter(|&&t| t == EOD).count() == 1);
    let idx = dir.join("out_text_document.idx");
    let expected = expected_idx(&docs);
    assert_eq!(std::fs::read(&idx).unwrap(), expected);
    assert_eq!(sha(&idx), format!("{:x}", Sha256::digest(&expected)));
    let bin: Vec<u8> = docs.iter().flatten().flat_map(|&t| (t as u16).to_le_bytes()).collect();
    assert_eq!(std::fs::read(dir.join("out_text_document.bin")).unwrap(), bin);
    let ds = IndexedDataset::open(&dir.join("out_text_document")).unwrap();
    assert_eq!(ds.len(), 3);
    assert_eq!(ds.sequence(2).unwrap(), docs[3]);
    // Without --append-eod no EOD is added.
    let (code, _, err) = tokenize(&[
        "--input",
        dir.join("c.jsonl").to_str().unwrap(),
        "--output-prefix",
        dir.join("noeod").to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let ds = IndexedDataset::open(&dir.join("noeod_text_document")).unwrap();
    assert_eq!(ds.sequence(0).unwrap(), encode(texts[0]));
}

#[test]
fn text_files_directories_and_paragraphs() {
    let dir = tmpdir("txt");
    std::fs::create_dir_all(dir.join("corpus/sub")).unwrap();
    std::fs::write(dir.join("corpus/b.txt"), "Second file.\n\nWith two paragraphs.\n").unwrap();
    std::fs::write(dir.join("corpus/a.txt"), "First file.").unwrap();
    std::fs::write(dir.join("corpus/sub/c.txt"), "Nested.").unwrap();
    std::fs::write(dir.join("corpus/ignored.md"), "not a text file").unwrap();
    let run = |extra: &[&str], name: &str| {
        let mut args =
            vec!["--input", dir.join("corpus").to_str().unwrap().to_string().leak() as &str, "--output-prefix"];
        let p = dir.join(name).to_str().unwrap().to_string();
        args.push(p.leak());
        args.push("--append-eod");
        args.extend_from_slice(extra);
        let (code, _, err) = tokenize(&args);
        assert_eq!(code, 0, "{err}");
        IndexedDataset::open(&dir.join(format!("{name}_text_document"))).unwrap()
    };
    let files = run(&[], "files");
    assert_eq!(files.len(), 3);
    assert_eq!(files.sequence(0).unwrap(), [encode("First file."), vec![EOD]].concat());
    assert_eq!(files.sequence(1).unwrap(), [encode("Second file.\n\nWith two paragraphs.\n"), vec![EOD]].concat());
    let paras = run(&["--split-paragraphs"], "paras");
    assert_eq!(paras.len(), 4);
    assert_eq!(paras.sequence(2).unwrap(), [encode("With two paragraphs."), vec![EOD]].concat());
}

fn assert_fails(args: &[&str], needles: &[&str], dir: &Path) {
    let (code, _, err) = tokenize(args);
    assert_ne!(code, 0);
    for n in needles {
        assert!(err.contains(n), "{err:?} lacks {n:?}");
    }
    // Nothing half-written.
    let leftovers: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("out"))
        .collect();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
}

#[test]
fn bad_inputs_fail_cleanly_naming_file_and_line() {
    let dir = tmpdir("bad");
    let p = |n: &str| dir.join(n).to_str().unwrap().to_string();
    let out = p("out");
    std::fs::write(dir.join("empty.jsonl"), "").unwrap();
    assert_fails(&["--input", &p("empty.jsonl"), "--output-prefix", &out], &["empty.jsonl", "no documents"], &dir);
    std::fs::write(dir.join("malformed.jsonl"), "{\"text\": \"ok\"}\n{\"text\": \"broken\n").unwrap();
    assert_fails(
        &["--input", &p("malformed.jsonl"), "--output-prefix", &out],
        &["malformed.jsonl:2", "malformed JSON"],
        &dir,
    );
    std::fs::write(dir.join("nokey.jsonl"), "{\"text\": \"ok\"}\n{\"body\": \"x\"}\n").unwrap();
    assert_fails(&["--input", &p("nokey.jsonl"), "--output-prefix", &out], &["nokey.jsonl:2", "no key \"text\""], &dir);
    std::fs::write(dir.join("latin1.txt"), b"caf\xe9\n").unwrap();
    assert_fails(
        &["--input", &p("latin1.txt"), "--output-prefix", &out],
        &["latin1.txt", "not valid UTF-8", "byte 3"],
        &dir,
    );
    std::fs::write(dir.join("latin1.jsonl"), b"{\"text\": \"caf\xe9\"}\n").unwrap();
    assert_fails(
        &["--input", &p("latin1.jsonl"), "--output-prefix", &out],
        &["latin1.jsonl:1", "not valid UTF-8"],
        &dir,
    );
    assert_fails(&["--input", &p("missing.jsonl"), "--output-prefix", &out], &["missing.jsonl", "no such file"], &dir);
    std::fs::write(dir.join("data.csv"), "a,b").unwrap();
    assert_fails(&["--input", &p("data.csv"), "--output-prefix", &out], &["data.csv", "unknown input type"], &dir);
}

#[test]
fn truncated_or_corrupt_index_is_refused() {
    let dir = tmpdir("corrupt");
    std::fs::write(dir.join("c.jsonl"), "{\"text\": \"one two three\"}\n{\"text\": \"four\"}\n").unwrap();
    let prefix = dir.join("x");
    let (code, _, err) = tokenize(&[
        "--input",
        dir.join("c.jsonl").to_str().unwrap(),
        "--output-prefix",
        prefix.to_str().unwrap(),
        "--append-eod",
    ]);
    assert_eq!(code, 0, "{err}");
    let base = dir.join("x_text_document");
    let (bin, idx) = retro::data::indexed::paths(&base);
    let good_bin = std::fs::read(&bin).unwrap();
    let good_idx = std::fs::read(&idx).unwrap();
    std::fs::write(&bin, &good_bin[..good_bin.len() - 2]).unwrap();
    let err = IndexedDataset::open(&base).err().unwrap().to_string();
    assert!(err.contains("truncated or mismatched"), "{err}");
    std::fs::write(&bin, &good_bin).unwrap();
    std::fs::write(&idx, &good_idx[..good_idx.len() - 8]).unwrap();
    let err = IndexedDataset::open(&base).err().unwrap().to_string();
    assert!(err.contains("need") && err.contains("bytes"), "{err}");
    let mut bad = good_idx.clone();
    bad[0] = b'X';
    std::fs::write(&idx, &bad).unwrap();
    assert!(IndexedDataset::open(&base).err().unwrap().to_string().contains("bad magic"));
    let mut bad = good_idx.clone();
    bad[17] = 3;
    std::fs::write(&idx, &bad).unwrap();
    assert!(IndexedDataset::open(&base).err().unwrap().to_string().contains("dtype code 3"));
    let mut bad = good_idx;
    bad[9] = 2;
    std::fs::write(&idx, &bad).unwrap();
    assert!(IndexedDataset::open(&base).err().unwrap().to_string().contains("version 2"));
}
