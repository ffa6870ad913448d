//! Checkpoints in Megatron's layout: `RUN/iter_0000010/` holding `model.safetensors` (Megatron names, the
//! model config in the metadata), `optimizer.safetensors` (AdamW moments by parameter name) and
//! `state.json` (iteration, consumed samples, the settings that must not change on resume), and
//! `RUN/latest_checkpointed_iteration.txt`. A checkpoint is written into a temporary directory, each
//! file fsynced, then renamed into place; the tracker file is updated last, so a crash leaves the previous
//! checkpoint intact and current.
//!
//! `state.json` records the checksum (`data::integrity::Sums`) of each file beside it and carries a
//! `crc32c` of its own text; every reader verifies them before loading, and a damaged newest checkpoint
//! is an error naming the previous one (never a silent fallback).

use crate::data::integrity::{self, Sums};
use crate::model::safetensors_io::{load_params, serialize, TensorFile};
use crate::model::{Params, RetroConfig, RetroModel};
use crate::tensor::{DType, Tensor};
use crate::train::AdamW;
use crate::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

pub const TRACKER: &str = "latest_checkpointed_iteration.txt";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub iteration: u64,
    pub consumed_samples: u64,
    pub optimizer_step: u64,
    /// What a resumed run must share with this one (model, data, batch, seed); compared key by key.
    pub run: serde_json::Value,
    /// Checksums of the files beside state.json, by file name (filled in by `save`).
    #[serde(default)]
    pub files: BTreeMap<String, Sums>,
}

impl State {
    /// The state of a run after `iteration` (the file checksums are filled in by `save`).
    pub fn at(iteration: u64, consumed_samples: u64, optimizer_step: u64, run: serde_json::Value) -> Self {
        Self { iteration, consumed_samples, optimizer_step, run, files: Default::default() }
    }
}

/// The files a checkpoint directory holds beside state.json.
const FILES: [&str; 2] = ["model.safetensors", "optimizer.safetensors"];
const FIX: &str = "this checkpoint cannot be used";

pub fn iteration_dir(run: &Path, iteration: u64) -> PathBuf {
    run.join(format!("iter_{iteration:07}"))
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes).with_context(|| format!("writing {}", path.display()))?;
    f.sync_all().with_context(|| format!("syncing {}", path.display()))?;
    Ok(())
}

/// Save, then keep only the newest `keep` checkpoints (0: keep all).
pub fn save(run: &Path, model: &RetroModel, opt: &AdamW, state: &State, keep: usize) -> Result<PathBuf> {
    let final_dir = iteration_dir(run, state.iteration);
    let tmp = run.join(format!(".iter_{:07}.tmp.{}", state.iteration, std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let names: Vec<&str> = model.params.specs.iter().map(|s| s.name.as_str()).collect();
    let meta =
        HashMap::from([("config".to_string(), model.config.to_json()), ("format".to_string(), "retro".to_string())]);
    let named: Vec<(&str, &Tensor)> = names.iter().copied().zip(&model.params.tensors).collect();
    let mut state = state.clone();
    let model_bytes = serialize(&named, meta)?;
    state.files.insert(FILES[0].into(), Sums::of(&model_bytes));
    write_synced(&tmp.join(FILES[0]), &model_bytes)?;
    drop(model_bytes);
    let m_names: Vec<String> = names.iter().map(|n| format!("exp_avg.{n}")).collect();
    let v_names: Vec<String> = names.iter().map(|n| format!("exp_avg_sq.{n}")).collect();
    let mut moments: Vec<(&str, &Tensor)> = m_names.iter().map(String::as_str).zip(&opt.exp_avg).collect();
    moments.extend(v_names.iter().map(String::as_str).zip(&opt.exp_avg_sq));
    let opt_meta = HashMap::from([
        ("step".to_string(), opt.step.to_string()),
        ("config".to_string(), serde_json::to_string(&opt.config)?),
    ]);
    let opt_bytes = serialize(&moments, opt_meta)?;
    state.files.insert(FILES[1].into(), Sums::of(&opt_bytes));
    write_synced(&tmp.join(FILES[1]), &opt_bytes)?;
    drop(opt_bytes);
    write_synced(&tmp.join("state.json"), integrity::seal_json(serde_json::to_value(&state)?)?.as_bytes())?;
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir)?;
    }
    std::fs::rename(&tmp, &final_dir)
        .with_context(|| format!("renaming {} to {}", tmp.display(), final_dir.display()))?;
    if let Ok(d) = std::fs::File::open(run) {
        let _ = d.sync_all();
    }
    crate::atomic_file::write(&run.join(TRACKER), state.iteration.to_string().as_bytes())?;
    if keep > 0 {
        let mut iters = list(run)?;
        iters.sort_unstable();
        while iters.len() > keep {
            let old = iters.remove(0);
            std::fs::remove_dir_all(iteration_dir(run, old))?;
        }
    }
    Ok(final_dir)
}

/// Iterations with a checkpoint directory in `run`.
pub fn list(run: &Path) -> Result<Vec<u64>> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(run) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(n) = name.strip_prefix("iter_").and_then(|s| s.parse().ok()) {
                out.push(n);
            }
        }
    }
    Ok(out)
}

/// The iteration the tracker names, if `run` has one.
pub fn latest(run: &Path) -> Result<Option<u64>> {
    let path = run.join(TRACKER);
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path)?;
    match text.trim().parse() {
        Ok(n) => Ok(Some(n)),
        Err(_) => bail!("{}: {:?} is not an iteration number", path.display(), text.trim()),
    }
}

/// A checkpoint directory, verified: `dir` itself if it holds model.safetensors, else the latest
/// iteration of a run.
pub fn resolve(dir: &Path) -> Result<PathBuf> {
    match find(dir)? {
        Some((d, _)) => Ok(d),
        None => bail!("{}: no checkpoint (neither model.safetensors nor {TRACKER})", dir.display()),
    }
}

/// The checkpoint `dir` names (`dir` itself if it holds model.safetensors, else the run's latest) and
/// its state, verified; None for a run directory without a checkpoint. When the newest checkpoint of a
/// run is damaged the error says so and names the previous one: nothing falls back to it silently.
pub fn find(dir: &Path) -> Result<Option<(PathBuf, State)>> {
    if dir.join(FILES[0]).is_file() {
        return verify(dir).map(|s| Some((dir.to_path_buf(), s)));
    }
    let Some(it) = latest(dir)? else { return Ok(None) };
    let newest = iteration_dir(dir, it);
    match verify(&newest) {
        Ok(state) => Ok(Some((newest, state))),
        Err(e) => {
            let hint = match list(dir)?.into_iter().filter(|&i| i < it).max() {
                Some(p) => format!(
                    "the previous checkpoint is {} (iteration {p}): point --load (or --checkpoint) at it to use it",
                    iteration_dir(dir, p).display()
                ),
                None => format!("{} holds no earlier checkpoint", dir.display()),
            };
            bail!("{e}\nthe newest checkpoint, {}, is damaged and was not loaded; {hint}", newest.display())
        }
    }
}

/// Verify a checkpoint directory: state.json's own checksum, then every file it records.
pub fn verify(dir: &Path) -> Result<State> {
    let state = load_state(dir)?;
    for name in FILES {
        let path = dir.join(name);
        let Some(sums) = state.files.get(name) else {
            bail!(
                "{}: no checksum recorded for {name} (written by a retro older than checksums)",
                dir.join("state.json").display()
            );
        };
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        sums.check(&bytes, &path, FIX)?;
    }
    Ok(state)
}

/// The model of a checkpoint (or of a run's latest checkpoint), with the config stored in it, in f32.
pub fn load(dir_or_run: &Path) -> Result<(PathBuf, RetroModel)> {
    let dir = resolve(dir_or_run)?;
    let file = TensorFile::read(&dir.join("model.safetensors"))?;
    let model = model_from(&file, &dir, &config_in(&file, &dir)?, DType::F32)?;
    Ok((dir, model))
}

/// Model parameters of a checkpoint for `config`: strict, and every mismatch is listed.
pub fn load_model(dir: &Path, config: &RetroConfig, dtype: DType) -> Result<RetroModel> {
    model_from(&TensorFile::read(&dir.join("model.safetensors"))?, dir, config, dtype)
}

fn model_from(file: &TensorFile, dir: &Path, config: &RetroConfig, dtype: DType) -> Result<RetroModel> {
    let specs = RetroModel::specs(config)?;
    let (params, _) = load_params(file, &specs, dtype, true, 0, &[])
        .map_err(|e| e.context(format!("{} does not fit this model", dir.display())))?;
    RetroModel::from_params(config, params)
}

/// The model config stored in a checkpoint's model file.
fn config_in(file: &TensorFile, dir: &Path) -> Result<RetroConfig> {
    match file.metadata.get("config") {
        Some(c) => RetroConfig::from_json(c),
        None => bail!("{}/model.safetensors has no config in its metadata", dir.display()),
    }
}

/// Restore the optimizer moments and step of a checkpoint.
pub fn load_optimizer(dir: &Path, params: &Params, opt: &mut AdamW) -> Result<()> {
    let file = TensorFile::read(&dir.join("optimizer.safetensors"))?;
    for (i, spec) in params.specs.iter().enumerate() {
        for (prefix, slot) in [("exp_avg", &mut opt.exp_avg[i]), ("exp_avg_sq", &mut opt.exp_avg_sq[i])] {
            let t = file.tensor(&format!("{prefix}.{}", spec.name))?;
            ensure!(
                t.shape() == spec.shape.as_slice(),
                "{prefix}.{} has shape {:?}, expected {:?}",
                spec.name,
                t.shape(),
                spec.shape
            );
            *slot = t.to_dtype(params.dtype())?;
        }
    }
    opt.step = file
        .metadata
        .get("step")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| crate::Error::msg("optimizer.safetensors lacks its step"))?;
    Ok(())
}

/// state.json, its own checksum verified (the files beside it are `verify`'s).
pub fn load_state(dir: &Path) -> Result<State> {
    let path = dir.join("state.json");
    serde_json::from_value(integrity::read_sealed_json(&path, FIX)?)
        .map_err(|e| crate::Error::msg(format!("{}: {e}", path.display())))
}

/// Keys of `saved` whose values differ in `now`, as "key: saved -> now".
pub fn differences(saved: &serde_json::Value, now: &serde_json::Value) -> Vec<String> {
    let (Some(a), Some(b)) = (saved.as_object(), now.as_object()) else { return vec!["(not comparable)".into()] };
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| {
            format!(
                "{k}: {} -> {}",
                a.get(k).unwrap_or(&serde_json::Value::Null),
                b.get(k).unwrap_or(&serde_json::Value::Null)
            )
        })
        .collect()
}
