//! Compiles every `kernels/*.cu` with nvcc to PTX (compute_90) and to a fatbin (sm_80, sm_90a, compute_90
//! PTX), embeds both, and generates the kernel parameter structs from `bindings/*.h` with bindgen.
//! Without nvcc (or libclang for bindgen) the crate builds for the CPU only, with `cfg(no_cuda_kernels)`
//! and a warning; `RETRO_REQUIRE_CUDA=1` makes that a build failure instead.

use std::path::{Path, PathBuf};
use std::process::Command;

const PTX_ARCH: &str = "compute_90";
const FATBIN_GENCODE: [&str; 3] =
    ["arch=compute_80,code=sm_80", "arch=compute_90a,code=sm_90a", "arch=compute_90,code=compute_90"];
const FATBIN_ARCHS: [&str; 3] = ["sm_80", "sm_90a", "compute_90 (PTX)"];

fn main() {
    println!("cargo::rustc-check-cfg=cfg(no_cuda_kernels)");
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-changed=bindings");
    for var in ["NVCC", "CUDA_HOME", "RETRO_REQUIRE_CUDA", "PATH"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let require = std::env::var("RETRO_REQUIRE_CUDA").is_ok_and(|v| v == "1");
    if let Err(reason) = build_kernels() {
        if require {
            panic!("RETRO_REQUIRE_CUDA=1 but the CUDA kernels could not be built: {reason}");
        }
        println!("cargo:warning=building without CUDA kernels (CPU only): {reason}");
        println!("cargo:rustc-cfg=no_cuda_kernels");
        println!("cargo:rustc-env=RETRO_NO_KERNELS_REASON={}", reason.replace('\n', " "));
    }
}

fn build_kernels() -> Result<(), String> {
    let nvcc = find_nvcc()
        .ok_or("nvcc not found (looked at $NVCC, $CUDA_HOME/bin, $PATH and ./.cuda; see DESIGN.md section 3)")?;
    let version = run_output(Command::new(&nvcc).arg("--version")).map_err(|e| format!("{}: {e}", nvcc.display()))?;
    let version = version.lines().find(|l| l.contains("release")).unwrap_or("unknown").trim().to_string();
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let mut sources: Vec<PathBuf> = std::fs::read_dir(root.join("kernels"))
        .map_err(|e| format!("kernels/: {e}"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
        .collect();
    sources.sort();
    if sources.is_empty() {
        return Err("kernels/ holds no .cu file".into());
    }
    let common = |cmd: &mut Command| {
        cmd.args(["-O3", "-std=c++17", "--expt-relaxed-constexpr", "-I"])
            .arg(root.join("kernels"))
            .arg("-I")
            .arg(root.join("bindings"));
    };
    // Two nvcc processes per kernel family (PTX and fatbin), all in parallel.
    let jobs: Vec<_> = sources
        .iter()
        .flat_map(|src| {
            let stem = src.file_stem().unwrap().to_string_lossy().to_string();
            let mut ptx = Command::new(&nvcc);
            common(&mut ptx);
            ptx.arg("-ptx").arg(format!("-arch={PTX_ARCH}")).arg("-o").arg(out.join(format!("{stem}.ptx"))).arg(src);
            let mut fatbin = Command::new(&nvcc);
            common(&mut fatbin);
            fatbin.arg("-fatbin");
            for g in FATBIN_GENCODE {
                fatbin.arg("-gencode").arg(g);
            }
            fatbin.arg("-o").arg(out.join(format!("{stem}.fatbin"))).arg(src);
            [ptx, fatbin]
        })
        .map(|mut cmd| std::thread::spawn(move || run_output(&mut cmd)))
        .collect();
    for job in jobs {
        job.join().map_err(|_| "nvcc thread panicked".to_string())??;
    }
    let mut modules = String::new();
    for src in &sources {
        let stem = src.file_stem().unwrap().to_string_lossy().to_string();
        let ptx_path = out.join(format!("{stem}.ptx"));
        let ptx = std::fs::read_to_string(&ptx_path).map_err(|e| format!("{}: {e}", ptx_path.display()))?;
        if !ptx.contains(".entry") {
            return Err(format!("{} compiled to PTX with no kernel entry point", src.display()));
        }
        let fatbin_len = std::fs::metadata(out.join(format!("{stem}.fatbin"))).map(|m| m.len()).unwrap_or(0);
        if fatbin_len == 0 {
            return Err(format!("{} compiled to an empty fatbin", src.display()));
        }
        modules += &format!(
            "    Module {{ name: {stem:?}, ptx: include_str!({ptx:?}), fatbin: include_bytes!({fat:?}) }},\n",
            ptx = ptx_path.display().to_string(),
            fat = out.join(format!("{stem}.fatbin")).display().to_string()
        );
    }
    generate_bindings(&root, &out)?;
    let code = format!(
        "/// One compiled kernel family: `kernels/<name>.cu`.\n\
         pub struct Module {{ pub name: &'static str, pub ptx: &'static str, pub fatbin: &'static [u8] }}\n\
         pub const MODULES: &[Module] = &[\n{modules}];\n\
         pub const PTX_ARCH: &str = {PTX_ARCH:?};\n\
         pub const FATBIN_ARCHS: &[&str] = &{FATBIN_ARCHS:?};\n\
         pub const NVCC_VERSION: &str = {version:?};\n\
         /// Kernel parameter structs and constants from `bindings/*.h`.\n\
         #[allow(non_camel_case_types, non_snake_case, non_upper_case_globals, dead_code, clippy::all)]\n\
         pub mod abi {{ include!(concat!(env!(\"OUT_DIR\"), \"/bindings.rs\")); }}\n"
    );
    std::fs::write(out.join("kernels.rs"), code).map_err(|e| e.to_string())
}

fn generate_bindings(root: &Path, out: &Path) -> Result<(), String> {
    let mut headers: Vec<PathBuf> = std::fs::read_dir(root.join("bindings"))
        .map_err(|e| format!("bindings/: {e}"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "h"))
        .collect();
    headers.sort();
    let mut builder = bindgen::Builder::default()
        .allowlist_file(".*/bindings/.*\\.h")
        .derive_default(true)
        .derive_debug(true)
        .layout_tests(true);
    for h in &headers {
        builder = builder.header(h.to_string_lossy());
    }
    let bindings = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| builder.generate()))
        .map_err(|_| "bindgen panicked (is libclang installed? apt-get install libclang-dev)".to_string())?
        .map_err(|e| format!("bindgen failed on bindings/*.h: {e}"))?;
    bindings.write_to_file(out.join("bindings.rs")).map_err(|e| e.to_string())
}

fn run_output(cmd: &mut Command) -> Result<String, String> {
    let output = cmd.output().map_err(|e| format!("cannot run {:?}: {e}", cmd.get_program()))?;
    if !output.status.success() {
        return Err(format!(
            "{:?} failed:\n{}{}",
            cmd.get_args().collect::<Vec<_>>(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn find_nvcc() -> Option<PathBuf> {
    let works = |p: &Path| p.is_file();
    if let Ok(p) = std::env::var("NVCC") {
        return Some(PathBuf::from(p));
    }
    if let Ok(home) = std::env::var("CUDA_HOME") {
        let p = Path::new(&home).join("bin/nvcc");
        if works(&p) {
            return Some(p);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        if let Some(p) = std::env::split_paths(&path).map(|d| d.join("nvcc")).find(|p| works(p)) {
            return Some(p);
        }
    }
    // The repository's ignored venv from `scripts/test` (pip's nvidia-cuda-nvcc); call the real path.
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").ok()?);
    let lib = std::fs::read_dir(root.join(".cuda/lib")).ok()?;
    lib.filter_map(|e| e.ok())
        .map(|e| e.path().join("site-packages/nvidia/cu13/bin/nvcc"))
        .find(|p| works(p))
        .and_then(|p| p.canonicalize().ok())
}
