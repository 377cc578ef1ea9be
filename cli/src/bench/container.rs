//! The plain-container baseline: the image's own root filesystem run by
//! `crun` or `runc` on the host, from an OCI bundle written here; and the
//! same bundles run by bulkhead's own runc-compatible `run --bundle`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use oci_spec::runtime::{PosixRlimitBuilder, PosixRlimitType, ProcessBuilder, RootBuilder, Spec};

use super::programs::{tail, which};
use super::results::System;
use super::workload::Workload;
use crate::run::record::monotonic_ns;

/// The sandbox caps the hard nofile limit at 20000; runc fails setting a
/// higher one, so the bundle asks for what `runc spec` does.
const NOFILE: u64 = 1024;

/// An installed OCI runtime.
#[derive(Debug, Clone)]
pub struct Runtime {
    pub system: System,
    pub path: PathBuf,
}

/// crun and runc, whichever are on PATH, and this bulkhead as an OCI
/// runtime on the same bundles.
pub fn installed() -> Vec<Runtime> {
    let mut found: Vec<Runtime> = [(System::Crun, "crun"), (System::Runc, "runc")]
        .into_iter()
        .filter_map(|(system, name)| which(name).map(|path| Runtime { system, path }))
        .collect();
    if let Ok(path) = std::env::current_exe() {
        found.push(Runtime {
            system: System::BulkheadOci,
            path,
        });
    }
    found
}

/// `runc spec`'s defaults, running `args` on the read-only `rootfs`.
pub fn bundle_spec(rootfs: &Path, args: &[&str]) -> anyhow::Result<Spec> {
    let mut spec = Spec::default();
    let root = RootBuilder::default()
        .path(rootfs)
        // Never write into the image store.
        .readonly(true)
        .build()?;
    spec.set_root(Some(root));
    let defaults = spec.process().clone().unwrap_or_default();
    let nofile = PosixRlimitBuilder::default()
        .typ(PosixRlimitType::RlimitNofile)
        .hard(NOFILE)
        .soft(NOFILE)
        .build()?;
    let mut process = ProcessBuilder::default()
        .args(args.iter().map(|a| a.to_string()).collect::<Vec<_>>())
        .env(defaults.env().clone().unwrap_or_default())
        .cwd("/")
        .rlimits(vec![nofile])
        .no_new_privileges(true)
        .terminal(false)
        .build()?;
    process.set_capabilities(defaults.capabilities().clone());
    spec.set_process(Some(process));
    spec.set_hostname(Some("bench".into()));
    Ok(spec)
}

/// A bundle directory holding config.json for one workload.
pub fn write_bundle(dir: &Path, rootfs: &Path, workload: &Workload) -> anyhow::Result<PathBuf> {
    let bundle = dir.join(format!("bundle-{}", workload.name));
    std::fs::create_dir_all(&bundle)
        .with_context(|| format!("cannot create {}", bundle.display()))?;
    let spec = bundle_spec(rootfs, workload.args)?;
    spec.save(bundle.join("config.json"))
        .with_context(|| format!("cannot write {}/config.json", bundle.display()))?;
    Ok(bundle)
}

/// One `RUNTIME run --bundle B ID`, timed from spawn to exit, in ms.
pub fn run_once(rt: &Runtime, bundle: &Path, id: &str, workload: &Workload) -> anyhow::Result<f64> {
    let mut cmd = Command::new(&rt.path);
    cmd.arg("run")
        .arg("--bundle")
        .arg(bundle)
        .arg(id)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = monotonic_ns();
    let output = cmd
        .output()
        .with_context(|| format!("cannot run {}", rt.path.display()))?;
    let end = monotonic_ns();
    if !output.status.success() {
        bail!(
            "{} run failed ({}):\n{}",
            rt.system.name(),
            output.status,
            tail(&output.stderr, 10)
        );
    }
    workload.check_output(&output.stdout)?;
    Ok((end - start) as f64 / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::workload::WORKLOADS;

    #[test]
    fn bundle_runs_the_workload_on_a_read_only_root() {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("rootfs");
        let bundle = write_bundle(dir.path(), &rootfs, &WORKLOADS[1]).unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(bundle.join("config.json")).unwrap()).unwrap();
        assert_eq!(json["root"]["path"], rootfs.to_str().unwrap());
        assert_eq!(json["root"]["readonly"], true);
        assert_eq!(
            json["process"]["args"],
            serde_json::json!(["echo", "bulkhead-bench"])
        );
        assert_eq!(json["process"]["terminal"], false);
        assert_eq!(
            json["process"]["rlimits"],
            serde_json::json!([{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}])
        );
        assert!(json["process"]["env"][0]
            .as_str()
            .unwrap()
            .starts_with("PATH="));
        // runc spec's namespaces and mounts are kept.
        let ns: Vec<&str> = json["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert!(ns.contains(&"pid") && ns.contains(&"mount"));
        assert!(json["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["destination"] == "/proc"));
    }
}
