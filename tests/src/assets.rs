//! Where the control-plane binaries are: `BATON_CONTROL_PLANE_ASSETS` if set (the test command
//! sets it), else whatever `tests/control-plane/build.sh --check` reports as already built.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The binaries and files every cluster needs.
pub const REQUIRED: [&str; 9] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "kubelet",
    "kwok",
    "kwok-stages.yaml",
    "helm",
];

/// The directory holding the control-plane binaries.
pub fn dir() -> Result<PathBuf> {
    let dir = match std::env::var_os("BATON_CONTROL_PLANE_ASSETS") {
        Some(d) => PathBuf::from(d),
        None => {
            let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("control-plane/build.sh");
            let out = Command::new("bash")
                .arg(&script)
                .arg("--check")
                .output()
                .with_context(|| format!("running {}", script.display()))?;
            if !out.status.success() {
                bail!(
                    "the control plane is not built; run {} (or the README's test command)",
                    script.display()
                );
            }
            PathBuf::from(String::from_utf8(out.stdout)?.trim())
        }
    };
    for f in REQUIRED {
        if !dir.join(f).exists() {
            bail!("{} is missing from {}", f, dir.display());
        }
    }
    Ok(dir)
}
