//! Embeds the workflows this deployment serves: every file under `SWITCHYARD_WORKFLOWS_DIR`
//! (at build time; default: the repository's `workflows/`), so their includes (schemas,
//! corpora) travel with them. `src/bundle.rs` compiles them at cold start.

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
