//! The TensorBoard event files retro writes, read back by TensorBoard's own reader (PyPI `tensorboard`,
//! EventAccumulator) installed into a throw-away venv under target/.

use retro::train::tensorboard::EventWriter;
use std::path::Path;
use std::process::Command;

const TENSORBOARD: &str = "tensorboard==2.21.0";

fn venv_python() -> std::path::PathBuf {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tensorboard-venv");
    let python = venv.join("bin/python");
    if !python.exists() || !Command::new(&python).args(["-c", "import tensorboard"]).status().unwrap().success() {
        assert!(
            Command::new("python3").args(["-m", "venv"]).arg(&venv).status().unwrap().success(),
            "python3 -m venv failed"
        );
        let ok = Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "--disable-pip-version-check", TENSORBOARD])
            .status()
            .unwrap()
            .success();
        assert!(ok, "pip install {TENSORBOARD} failed (PyPI is needed for this test)");
    }
    python
}

#[test]
fn tensorboard_reads_back_every_scalar() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("tb-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut w = EventWriter::create(&dir).unwrap();
    for step in 1..=5u64 {
        w.scalar("lm loss", 10.0 / step as f64, step).unwrap();
        w.scalar("learning-rate", 1e-3 * step as f64, step).unwrap();
    }
    w.scalar("lm loss validation ppl", 123.5, 5).unwrap();
    w.flush().unwrap();
    let script = r#"
import sys, json
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
acc = EventAccumulator(sys.argv[1]); acc.Reload()
out = {tag: [[e.step, e.value] for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
print(json.dumps(out))
"#;
    let out = Command::new(venv_python()).args(["-c", script]).arg(&dir).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let loss = v["lm loss"].as_array().unwrap();
    assert_eq!(loss.len(), 5);
    assert_eq!(loss[1][0], 2);
    assert!((loss[1][1].as_f64().unwrap() - 5.0).abs() < 1e-6);
    assert!((v["learning-rate"][4][1].as_f64().unwrap() - 5e-3).abs() < 1e-9);
    assert_eq!(v["lm loss validation ppl"][0][0], 5);
    assert!((v["lm loss validation ppl"][0][1].as_f64().unwrap() - 123.5).abs() < 1e-4);
}
