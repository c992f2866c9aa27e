//! Embeds the workflows this deployment serves: every file under `SWITCHYARD_WORKFLOWS_DIR`
//! (at build time; default: the repository's `workflows/`), so their includes (schemas,
//! corpora) travel with them. `src/bundle.rs` compiles them at cold start.
//!
//! And, for the Lambda packages (release builds for arm64 Linux: `sam build`, cargo-lambda,
//! which builds them with `panic = "abort"`), links the functions with `no-unwind-tables.ld`,
//! which drops the unwind tables (1.0–1.5 MB of each function after fat LTO). rustc's
//! `-C force-unwind-tables=no` does not remove them: a function with a personality routine
//! gets an unwind entry whatever the flag, and nearly every Rust function has one (issue 25).
//! Such a build of these binaries cannot unwind: a panic prints its message and aborts. That is
//! safe only with `panic = "abort"`, so such a build that would unwind (a plain `cargo build
//! --release --target aarch64-unknown-linux-gnu`, `cargo test --release` on an arm64 Linux
//! host) does not compile: lib.rs has a `compile_error!` for it.

use std::path::{Path, PathBuf};

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            walk(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    // The Lambda packages: release builds for arm64 Linux, which cargo-lambda makes with
    // `panic = "abort"`. That is a profile setting, which a build script cannot see
    // (`CARGO_CFG_PANIC` shows the target's default), so the crate gets the cfg
    // `unwind_tables_dropped` and lib.rs refuses to compile such a build that unwinds.
    println!("cargo:rustc-check-cfg=cfg(unwind_tables_dropped)");
    let cfg = |key: &str| std::env::var(key).unwrap_or_default();
    if cfg("PROFILE") == "release"
        && cfg("CARGO_CFG_TARGET_OS") == "linux"
        && cfg("CARGO_CFG_TARGET_ARCH") == "aarch64"
    {
        let script = manifest.join("no-unwind-tables.ld");
        println!("cargo:rerun-if-changed={}", script.display());
        println!("cargo:rustc-link-arg-bins=-Wl,-T,{}", script.display());
        println!("cargo:rustc-cfg=unwind_tables_dropped");
    }
    let root = manifest.join("../..");
    println!("cargo:rerun-if-env-changed=SWITCHYARD_WORKFLOWS_DIR");
    let dir = match std::env::var("SWITCHYARD_WORKFLOWS_DIR") {
        Ok(d) if !d.trim().is_empty() => root.join(d.trim()),
        _ => root.join("workflows"),
    };
    let dir = dir
        .canonicalize()
        .map_err(|e| format!("workflows dir `{}`: {e}", dir.display()))?;
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut files = Vec::new();
    walk(&dir, &mut files)?;
    files.sort();
    let mut code = String::from("/// Every file of the workflows dir: (path relative to it, contents).\npub static FILES: &[(&str, &str)] = &[\n");
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
        // Only text files can be workflow includes; anything else stays out of the binary.
        if std::fs::read_to_string(f).is_err() {
            continue;
        }
        let rel = f.strip_prefix(&dir)?.to_string_lossy().replace('\\', "/");
        code.push_str(&format!(
            "    ({rel:?}, include_str!({:?})),\n",
            f.display().to_string()
        ));
    }
    code.push_str("];\n");
    let out = PathBuf::from(std::env::var("OUT_DIR")?).join("bundle.rs");
    std::fs::write(out, code)?;
    Ok(())
}
