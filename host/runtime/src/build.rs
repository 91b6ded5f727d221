//! Compiling guest crates to wasm32-wasip2 components (`rolehost build`, and `rolehost run`
//! for roles given as a `crate`).

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::BuildError;

/// The target guests build for.
pub const TARGET: &str = "wasm32-wasip2";

/// Installs the wasm32-wasip2 target with rustup when it is missing. Without rustup (a
/// toolchain installed otherwise), the build itself will say whether the target is there.
pub fn ensure_target() -> Result<(), BuildError> {
    let Ok(out) = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
    else {
        return Ok(());
    };
    if String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == TARGET)
    {
        return Ok(());
    }
    tracing::info!("installing the {TARGET} target with rustup");
    let status = Command::new("rustup")
        .args(["target", "add", TARGET])
        .status()
        .map_err(|source| BuildError::Spawn {
            tool: "rustup".into(),
            source,
        })?;
    if status.success() {
        Ok(())
    } else {
        Err(BuildError::Target)
    }
}

/// Builds the guest crate (or workspace) at `crate_dir` in release mode for wasm32-wasip2 and
/// returns the components it produced. `target_dir` overrides cargo's target directory.
pub fn build_crate(
    crate_dir: &Path,
    target_dir: Option<&Path>,
) -> Result<Vec<PathBuf>, BuildError> {
    ensure_target()?;
    let manifest = crate_dir.join("Cargo.toml");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.args(["build", "--release", "--target", TARGET])
        .arg("--message-format=json-render-diagnostics")
        .arg("--manifest-path")
        .arg(&manifest)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        // Flags meant for the host build (when run from cargo itself) must not leak into the
        // guest build.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET");
    if let Some(dir) = target_dir {
        cmd.arg("--target-dir").arg(dir);
    }
    tracing::info!(crate_dir = %crate_dir.display(), "building guest crate");
    let mut child = cmd.spawn().map_err(|source| BuildError::Spawn {
        tool: cargo.to_string_lossy().into_owned(),
        source,
    })?;
    let mut components = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            components.extend(wasm_artifacts(&line));
        }
    }
    let status = child.wait().map_err(|source| BuildError::Spawn {
        tool: cargo.to_string_lossy().into_owned(),
        source,
    })?;
    if !status.success() {
        return Err(BuildError::Cargo {
            crate_dir: crate_dir.to_path_buf(),
        });
    }
    if components.is_empty() {
        return Err(BuildError::NoComponent {
            crate_dir: crate_dir.to_path_buf(),
        });
    }
    Ok(components)
}

/// The `.wasm` files a `compiler-artifact` message of cargo names.
fn wasm_artifacts(line: &str) -> Vec<PathBuf> {
    let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
        return Vec::new();
    };
    if msg["reason"] != "compiler-artifact" {
        return Vec::new();
    }
    msg["filenames"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f.as_str())
        .filter(|f| f.ends_with(".wasm"))
        .map(PathBuf::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_wasm_files_from_cargo_messages() {
        let line = r#"{"reason":"compiler-artifact","filenames":["/t/wasm32-wasip2/release/counter.wasm","/t/libcounter.rlib"]}"#;
        assert_eq!(
            wasm_artifacts(line),
            vec![PathBuf::from("/t/wasm32-wasip2/release/counter.wasm")]
        );
        assert!(wasm_artifacts(r#"{"reason":"build-finished","success":true}"#).is_empty());
        assert!(wasm_artifacts("not json").is_empty());
    }
}
