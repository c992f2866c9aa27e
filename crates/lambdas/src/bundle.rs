//! The workflows compiled into this binary (see `build.rs`), read the way `switchyard dev`
//! reads a directory: every `*.yaml` / `*.yml` with a top-level `steps:` is a workflow, its
//! includes are looked up among the bundled files relative to it.

use switchyard_core::model::ModelInfo;
use switchyard_core::workflow::{self, FileLoader};
use switchyard_engine::Workflows;

include!(concat!(env!("OUT_DIR"), "/bundle.rs"));

/// Bundled files under one workflow's folder.
struct Bundled<'a> {
    dir: &'a str,
}

impl FileLoader for Bundled<'_> {
    fn read(&self, rel: &str) -> Result<String, String> {
        if rel.starts_with('/') || rel.split('/').any(|c| c == "..") {
            return Err(format!(
                "`{rel}` must be a path inside the workflow's folder"
            ));
        }
        let path = if self.dir.is_empty() {
            rel.to_string()
        } else {
            format!("{}/{rel}", self.dir)
        };
        FILES
            .iter()
            .find(|(p, _)| *p == path)
            .map(|(_, text)| text.to_string())
            .ok_or_else(|| format!("cannot read `{rel}`: not in the bundled workflows dir"))
    }
}

fn is_workflow(path: &str, text: &str) -> bool {
    (path.ends_with(".yaml") || path.ends_with(".yml"))
        && text.lines().any(|l| l.starts_with("steps:"))
}

/// Compiles every bundled workflow against `models`. A problem names file, line and column
/// (the build embedded it, so this only fails when a model the file names is not offered).
pub fn workflows(models: &[ModelInfo]) -> Result<Workflows, String> {
    let mut out = Workflows::new();
    let mut problems = Vec::new();
    for (path, text) in FILES.iter().filter(|(p, t)| is_workflow(p, t)) {
        let dir = path.rsplit_once('/').map_or("", |(d, _)| d);
        match workflow::compile(text, &Bundled { dir }, models) {
            Ok(wf) => out.add(wf),
            Err(diags) => problems.extend(
                diags
                    .into_iter()
                    .map(|d| format!("{path}:{}:{}: {}", d.line, d.col, d.message)),
            ),
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems.join("\n"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn includes_stay_inside_the_folder() {
        let b = Bundled { dir: "" };
        assert!(b.read("../Cargo.toml").unwrap_err().contains("inside"));
        assert!(b.read("/etc/passwd").unwrap_err().contains("inside"));
        assert!(b
            .read("missing.json")
            .unwrap_err()
            .contains("not in the bundled"));
    }

    #[test]
    fn the_examples_are_bundled() {
        assert!(FILES.iter().any(|(p, _)| *p == "support-triage.yaml"));
        assert!(FILES.iter().filter(|(p, t)| is_workflow(p, t)).count() >= 6);
    }
}
