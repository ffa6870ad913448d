//! No kernel without its GPU check: every entry point of kernels/*.cu must be in the device script's list
//! (scripts/gpu-kernels.tsv: its test, family and benchmark) and in the ledger (docs/gpu-status.md: when
//! it last passed on a GPU), and neither may list an entry point that no longer exists.

use std::collections::BTreeSet;
use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Rows that are library calls, not entry points of ours.
fn is_library_row(name: &str) -> bool {
    name.starts_with("cublaslt_")
}

/// Entry points declared in the kernel sources: `extern "C" __global__ void [bounds] NAME(` and the
/// `NAME_bf16` / `NAME_f32` pairs of `RETRO_BF16_AND_F32(bounds, NAME, ...)`.
fn source_entry_points() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut files: Vec<_> = std::fs::read_dir(root().join("kernels")).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    for path in files.iter().filter(|p| p.extension().is_some_and(|e| e == "cu")) {
        let text = std::fs::read_to_string(path).unwrap();
        for line in text.lines() {
            if let Some(rest) = line.trim_start().strip_prefix("extern \"C\" __global__ void ") {
                let head = rest.split('(').next().unwrap();
                // The last word before "(": after `__launch_bounds__(...)` the split keeps the bounds macro.
                let name = if head.contains("__launch_bounds__") {
                    rest.split(')').nth(1).unwrap().split('(').next().unwrap().trim()
                } else {
                    head.split_whitespace().last().unwrap()
                };
                names.insert(name.to_string());
            }
            if let Some(rest) = line.trim_start().strip_prefix("RETRO_BF16_AND_F32(") {
                // `bounds, name, PARAMS, ...`; bounds may hold a parenthesised macro with a comma-free body.
                let after_bounds = match rest.find("),") {
                    Some(i) if rest.starts_with("__launch_bounds__") => &rest[i + 2..],
                    _ => rest.split_once(',').unwrap().1,
                };
                let name = after_bounds.split(',').next().unwrap().trim();
                names.insert(format!("{name}_bf16"));
                names.insert(format!("{name}_f32"));
            }
        }
    }
    names
}

fn manifest() -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(root().join("scripts/gpu-kernels.tsv")).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect()
}

fn ledger() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(root().join("docs/gpu-status.md")).unwrap();
    let section = text.split("## Kernel entry points").nth(1).expect("docs/gpu-status.md: no '## Kernel entry points'");
    section
        .lines()
        .filter_map(|l| {
            let cols: Vec<&str> = l.split('|').map(str::trim).collect();
            let name = cols.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
            Some((name.to_string(), cols.get(3)?.to_string()))
        })
        .collect()
}

#[test]
fn every_kernel_entry_point_has_a_gpu_check_and_a_ledger_entry() {
    let entries = source_entry_points();
    assert!(entries.len() >= 40, "found only {} entry points: {entries:?}", entries.len());
    // With kernels built, the PTX is the authority: the source reading above must agree with it.
    #[cfg(not(no_cuda_kernels))]
    {
        let ptx: BTreeSet<String> =
            retro::backend::cuda::module::all_entry_points().into_iter().map(|(_, e)| e.to_string()).collect();
        assert_eq!(entries, ptx, "entry points read from kernels/*.cu differ from the compiled PTX's");
    }

    let rows = manifest();
    let tests = std::fs::read_to_string(root().join("tests/cuda_kernels.rs")).unwrap();
    for row in &rows {
        assert_eq!(row.len(), 5, "scripts/gpu-kernels.tsv: 5 tab-separated columns expected: {row:?}");
        let (name, family, test, copy) = (&row[0], &row[1], &row[2], &row[3]);
        assert!(
            tests.contains(&format!("test_device!({test},")),
            "scripts/gpu-kernels.tsv: {name}'s test {test} is not a test_device! in tests/cuda_kernels.rs"
        );
        assert!(copy == "cuda" || copy == "cuda_f32", "{name}: copy {copy:?} is neither cuda nor cuda_f32");
        assert!(
            is_library_row(name) || root().join(format!("kernels/{family}.cu")).exists(),
            "{name}: family {family} has no kernels/{family}.cu"
        );
    }
    let listed: BTreeSet<String> = rows.iter().map(|r| r[0].clone()).filter(|n| !is_library_row(n)).collect();
    let missing: Vec<_> = entries.difference(&listed).collect();
    assert!(missing.is_empty(), "kernel entry points without a GPU check in scripts/gpu-kernels.tsv: {missing:?}");
    let stale: Vec<_> = listed.difference(&entries).collect();
    assert!(stale.is_empty(), "scripts/gpu-kernels.tsv lists entry points that do not exist: {stale:?}");

    let ledger = ledger();
    let in_ledger: BTreeSet<String> = ledger.iter().map(|(n, _)| n.clone()).filter(|n| !is_library_row(n)).collect();
    let missing: Vec<_> = entries.difference(&in_ledger).collect();
    assert!(missing.is_empty(), "kernel entry points missing from docs/gpu-status.md: {missing:?}");
    let stale: Vec<_> = in_ledger.difference(&entries).collect();
    assert!(stale.is_empty(), "docs/gpu-status.md lists entry points that do not exist: {stale:?}");
    for (name, when) in &ledger {
        assert!(
            when == "never run" || (when.len() >= 7 && when.chars().take(7).all(|c| c.is_ascii_hexdigit())),
            "docs/gpu-status.md: {name}: 'last passed' must be a commit or 'never run', not {when:?}"
        );
    }
}
