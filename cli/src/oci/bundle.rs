//! An OCI bundle made into a container plan. The rootfs and every host
//! directory the config binds are shared through virtio-fs (a bound file
//! through its directory); proc, sysfs, devpts, mqueue, /dev and /dev/shm
//! are the guest's own; tmpfs mounts are made in the guest. What cannot
//! be honoured in a microVM is an error naming the field.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context};
use bulkhead_protocol::{ContainerSpec, Source, Storage, Volume};
use oci_spec::runtime::{LinuxNamespaceType, Mount, Spec};

use crate::lifecycle::network::NetworkPlan;
use crate::lifecycle::{Plan, Record};
use crate::share::{self, HostDir};

/// The container plan and record for the bundle at `bundle`.
pub fn load(bundle: &Path, id: &str) -> anyhow::Result<(Plan, Record)> {
    let bundle = std::fs::canonicalize(bundle)
        .with_context(|| format!("cannot use bundle {}", bundle.display()))?;
    let config = bundle.join("config.json");
    if !config.exists() {
        bail!("bundle {} has no config.json", bundle.display());
    }
    let spec =
        Spec::load(&config).map_err(|e| anyhow::anyhow!("invalid {}: {e}", config.display()))?;
    let plan = plan(&spec, &bundle)?;
    let mut record = Record::new(id, bundle);
    record.annotations = spec
        .annotations()
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    record.hooks = spec.hooks().clone();
    record.command = plan.spec.process.args.clone();
    Ok((plan, record))
}

fn plan(spec: &Spec, bundle: &Path) -> anyhow::Result<Plan> {
    refuse_unsupported(spec)?;
    let root = spec.root().as_ref().context("config.json has no root")?;
    let rootfs = if root.path().is_absolute() {
        root.path().clone()
    } else {
        bundle.join(root.path())
    };
    let rootfs = std::fs::canonicalize(&rootfs)
        .with_context(|| format!("cannot use root.path {}", rootfs.display()))?;
    if !rootfs.is_dir() {
        bail!("root.path {} is not a directory", rootfs.display());
    }
    let read_only_root = root.readonly().unwrap_or(false);
    let mut shares = Shares::default();
    // Writable on the host even for root.readonly: mount points the config
    // needs may be missing and are made first; the guest then makes the
    // root read-only, as runc does.
    shares.add(&rootfs, false);
    let mut volumes = Vec::new();
    for m in spec.mounts().iter().flatten() {
        if let Some(v) = volume(m, &mut shares)? {
            volumes.push(v);
        }
    }
    let storage = Storage {
        lower: Source::virtiofs(share::tag(0)),
        scratch: None,
        volumes,
        in_place: true,
        read_only_root,
    };
    let mut container = ContainerSpec::from_oci(spec, storage).context("invalid config.json")?;
    if let Some(linux) = spec.linux() {
        container.masked_paths = linux.masked_paths().clone().unwrap_or_default();
        container.readonly_paths = linux.readonly_paths().clone().unwrap_or_default();
        container.sysctls = linux
            .sysctl()
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<BTreeMap<_, _>>();
        if let Some(seccomp) = linux.seccomp() {
            container.seccomp_bpf =
                Some(super::seccomp::compile(seccomp).context("linux.seccomp")?);
        }
    }
    container.validate().context("invalid config.json")?;
    let memory = container.resources.memory_limit;
    Ok(Plan {
        spec: container,
        disks: Vec::new(),
        host_dirs: shares.dirs,
        mem_mib: Plan::mem_mib_for(memory),
        cold: false,
        network: engine_network(spec),
        host_cgroup: false,
    })
}

/// A network namespace the engine made and put its interface in: the
/// guest's eth0 takes that interface's place. Without one (a new, empty
/// namespace) the container has only `lo`, as under runc.
fn engine_network(spec: &Spec) -> NetworkPlan {
    let path = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .into_iter()
        .flatten()
        .find(|ns| ns.typ() == LinuxNamespaceType::Network)
        .and_then(|ns| ns.path().clone());
    path.map_or(NetworkPlan::None, NetworkPlan::Namespace)
}

/// The host directories shared so far, by path: a directory bound twice
/// is shared once, read-only only if every use is.
#[derive(Default)]
struct Shares {
    dirs: Vec<HostDir>,
}

impl Shares {
    /// The tag of `path`'s share.
    fn add(&mut self, path: &Path, read_only: bool) -> String {
        if let Some(i) = self.dirs.iter().position(|d| d.path == path) {
            self.dirs[i].read_only &= read_only;
            return share::tag(i);
        }
        self.dirs.push(HostDir {
            path: path.to_path_buf(),
            read_only,
        });
        share::tag(self.dirs.len() - 1)
    }
}

/// The mounts every container's guest makes itself, whatever the config
/// says of them: (destination, the types that may ask for it).
const GUEST_MOUNTS: &[(&str, &[&str])] = &[
    ("/proc", &["proc"]),
    ("/dev", &["tmpfs", "devtmpfs"]),
    ("/dev/pts", &["devpts"]),
    // Bound from the host by podman: sharing memory with the host makes
    // no sense across a VM boundary; the guest's tmpfs is what it means.
    ("/dev/shm", &["tmpfs", "bind", "shm"]),
    ("/dev/mqueue", &["mqueue"]),
    ("/sys", &["sysfs"]),
    ("/sys/fs/cgroup", &["cgroup", "cgroup2"]),
];

/// The volume for one OCI mount, `None` for one the guest makes anyway.
fn volume(m: &Mount, shares: &mut Shares) -> anyhow::Result<Option<Volume>> {
    let dest = m.destination().display().to_string();
    let options = m.options().clone().unwrap_or_default();
    let is_bind =
        m.typ().as_deref() == Some("bind") || options.iter().any(|o| o == "bind" || o == "rbind");
    let typ = if is_bind {
        "bind"
    } else {
        m.typ().as_deref().unwrap_or("")
    };
    if let Some((_, types)) = GUEST_MOUNTS.iter().find(|(d, _)| *d == dest) {
        if types.contains(&typ) {
            return Ok(None);
        }
    }
    let read_only = options.iter().any(|o| o == "ro");
    match typ {
        "tmpfs" => {
            let mut v = Volume::new(Source::Tmpfs, dest, read_only);
            v.options = options;
            Ok(Some(v))
        }
        "bind" => {
            let source = m
                .source()
                .as_ref()
                .with_context(|| format!("bind mount at {dest} has no source"))?;
            let source = std::fs::canonicalize(source)
                .with_context(|| format!("cannot bind {} at {dest}", source.display()))?;
            let meta = std::fs::metadata(&source)?;
            let (dir, subpath) = if meta.is_dir() {
                (source.clone(), None)
            } else if meta.is_file() {
                let parent = source.parent().unwrap_or(Path::new("/")).to_path_buf();
                let name = source.file_name().map(|n| n.to_string_lossy().into_owned());
                (parent, name)
            } else {
                bail!(
                    "mounts: cannot bind {} at {dest}: only directories and regular files cross into a microVM",
                    source.display()
                );
            };
            let tag = shares.add(&dir, read_only);
            let mut v = Volume::new(Source::virtiofs(tag), dest, read_only);
            v.subpath = subpath;
            v.options = options;
            Ok(Some(v))
        }
        other => bail!("mounts: a mount of type {other:?} at {dest} is not supported in a microVM"),
    }
}

/// The parts of a config that would be silently wrong in a microVM.
fn refuse_unsupported(spec: &Spec) -> anyhow::Result<()> {
    let Some(linux) = spec.linux() else {
        return Ok(());
    };
    for ns in linux.namespaces().iter().flatten() {
        match (ns.typ(), ns.path()) {
            // The engine's veth is there: the guest takes it over.
            (LinuxNamespaceType::Network, Some(_)) => {}
            (typ, Some(path)) => bail!(
                "linux.namespaces: joining the {typ:?} namespace {} is not supported: \
                 the container's namespaces live in its own guest kernel",
                path.display()
            ),
            (LinuxNamespaceType::User, None) => {
                bail!("linux.namespaces: user namespaces are not supported")
            }
            (LinuxNamespaceType::Time, None) => {
                bail!("linux.namespaces: time namespaces are not supported")
            }
            _ => {}
        }
    }
    if linux.uid_mappings().as_ref().is_some_and(|m| !m.is_empty())
        || linux.gid_mappings().as_ref().is_some_and(|m| !m.is_empty())
    {
        bail!("linux.uidMappings/gidMappings: user namespaces are not supported");
    }
    if let Some(devices) = linux.devices().as_ref().filter(|d| !d.is_empty()) {
        bail!(
            "linux.devices: host devices ({}) cannot be passed into a microVM",
            devices
                .iter()
                .map(|d| d.path().display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if let Some(r) = linux.resources() {
        if r.hugepage_limits().as_ref().is_some_and(|h| !h.is_empty()) {
            bail!("linux.resources.hugepageLimits is not supported");
        }
        if r.network().is_some() {
            bail!("linux.resources.network is not supported");
        }
        if r.rdma().as_ref().is_some_and(|h| !h.is_empty()) {
            bail!("linux.resources.rdma is not supported");
        }
        if r.unified().as_ref().is_some_and(|h| !h.is_empty()) {
            bail!("linux.resources.unified is not supported");
        }
    }
    if linux.intel_rdt().is_some() {
        bail!("linux.intelRdt is not supported");
    }
    Ok(())
}
