//! The shipped manifests, as they are, on real nodes. The only overlay is what a test cluster
//! needs and a user's would not: the node's boot ID lives in a file of the simulated host (a
//! container's own /proc shows the machine's), so it is mounted and named to the agent.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, Result, bail};

use crate::cluster::Cluster;

/// What to install.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// `manifests/`: the command method (kured's default).
    Command,
    /// `manifests/signal/`: the signal method.
    Signal,
    /// The Helm chart with its default values (the command method).
    Chart,
    /// The Helm chart with `config.rebootMethod=signal`.
    ChartSignal,
}

impl Variant {
    /// Every variant.
    pub const ALL: [Variant; 4] = [
        Variant::Command,
        Variant::Signal,
        Variant::Chart,
        Variant::ChartSignal,
    ];

    /// Whether the variant reboots with the signal method.
    pub fn is_signal(self) -> bool {
        matches!(self, Variant::Signal | Variant::ChartSignal)
    }
}

/// The namespace (and, for the chart, the release name's namespace) baton is installed into.
pub const NAMESPACE: &str = "baton-system";

/// The path of a folder of `manifests/`.
pub fn manifests(sub: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../manifests")
        .join(sub)
}

/// The test cluster's only change to the shipped DaemonSet: the simulated host's boot ID file,
/// mounted into the agent's container ...
const BOOT_ID_MOUNT: &str = r#"- op: add
  path: /spec/template/spec/volumes/-
  value: {name: test-boot-id, hostPath: {path: /proc/sys/kernel/random/boot_id, type: File}}
- op: add
  path: /spec/template/spec/containers/0/volumeMounts/-
  value: {name: test-boot-id, mountPath: /host/boot_id, readOnly: true}
"#;
/// ... and named to the agent (the chart has a value for it).
const BOOT_ID_ENV: &str = r#"- op: add
  path: /spec/template/spec/containers/0/env/-
  value: {name: BATON_BOOT_ID_FILE, value: /host/boot_id}
"#;

/// The YAML of `variant` with the test overlay applied, rendered with the cluster's kubectl
/// (kustomize) and helm.
pub fn render(cluster: &Cluster, variant: Variant) -> Result<String> {
    let dir = tempfile::tempdir()?;
    // kustomize takes only relative paths to other kustomizations.
    let relative = |target: PathBuf| -> Result<String> {
        let target = target.canonicalize()?;
        let up = dir.path().components().count().saturating_sub(1);
        Ok(format!(
            "{}{}",
            "../".repeat(up),
            target.display().to_string().trim_start_matches('/')
        ))
    };
    let resource = match variant {
        Variant::Command => relative(manifests(""))?,
        Variant::Signal => relative(manifests("signal"))?,
        Variant::Chart | Variant::ChartSignal => {
            let mut args = vec![
                "template".to_owned(),
                "baton".to_owned(),
                manifests("helm/baton").display().to_string(),
                "--namespace".to_owned(),
                NAMESPACE.to_owned(),
            ];
            args.extend([
                "--set".to_owned(),
                "config.bootIdFile=/host/boot_id".to_owned(),
            ]);
            if variant == Variant::ChartSignal {
                args.extend(["--set".to_owned(), "config.rebootMethod=signal".to_owned()]);
            }
            let yaml = run(cluster.helm(), &args, None)?;
            std::fs::write(dir.path().join("chart.yaml"), yaml)?;
            "chart.yaml".to_owned()
        }
    };
    let chart = matches!(variant, Variant::Chart | Variant::ChartSignal);
    let patch = if chart {
        BOOT_ID_MOUNT.to_owned()
    } else {
        format!("{BOOT_ID_MOUNT}{BOOT_ID_ENV}")
    };
    std::fs::write(dir.path().join("boot-id.yaml"), patch)?;
    std::fs::write(
        dir.path().join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - {resource}
patches:
  - path: boot-id.yaml
    target: {{kind: DaemonSet}}
"
        ),
    )?;
    run(
        cluster.kubectl(),
        &[
            "kustomize".to_owned(),
            "--load-restrictor=LoadRestrictionsNone".to_owned(),
            dir.path().display().to_string(),
        ],
        None,
    )
}

/// Applies `yaml` (server-side, as the cluster's admin); the namespace is created if missing.
pub fn apply(cluster: &Cluster, yaml: &str) -> Result<()> {
    let mut create = cluster.kubectl();
    create.args(["create", "namespace", NAMESPACE]);
    let _ = create.output();
    run(
        cluster.kubectl(),
        &["apply", "--server-side", "-f", "-"].map(str::to_owned),
        Some(yaml),
    )?;
    Ok(())
}

/// Deletes what `yaml` created, except the namespace, and waits until the DaemonSet's pods are
/// gone.
pub fn delete(cluster: &Cluster, yaml: &str) -> Result<()> {
    let kept: Vec<&str> = yaml
        .split("\n---\n")
        .filter(|doc| !doc.lines().any(|l| l.trim() == "kind: Namespace"))
        .collect();
    run(
        cluster.kubectl(),
        &["delete", "--wait", "--cascade=foreground", "-f", "-"].map(str::to_owned),
        Some(&kept.join("\n---\n")),
    )?;
    Ok(())
}

fn run(mut cmd: std::process::Command, args: &[String], stdin: Option<&str>) -> Result<String> {
    use std::io::Write;
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let shown = format!(
        "{} {}",
        Path::new(cmd.get_program()).display(),
        args.join(" ")
    );
    let mut child = cmd.spawn().with_context(|| format!("running {shown}"))?;
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("{shown}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?)
}
