//! The container spec the host sends with `CreateContainer`.
//!
//! This is bulkhead's own small struct, not an embedded
//! `oci_spec::runtime::Spec`: it holds exactly the subset of the OCI runtime
//! spec the agent implements (so nothing is silently ignored), plus
//! bulkhead's storage layout. [`ContainerSpec::from_oci`] builds one from an
//! OCI spec.

use std::collections::BTreeMap;
use std::path::{Component, Path};

use oci_spec::runtime::{PosixRlimitType, Spec};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::network::{NetworkSpec, NetworkSpecError};

/// Why a spec cannot be used.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("the OCI spec has no process")]
    MissingProcess,
    #[error("process.args is empty")]
    EmptyArgs,
    #[error("{field} contains a NUL byte")]
    NulByte { field: &'static str },
    #[error("{field} is not valid UTF-8")]
    NotUtf8 { field: &'static str },
    #[error("environment entry {0:?} is not of the form KEY=value")]
    BadEnv(String),
    #[error("process.cwd {0:?} is not an absolute path")]
    RelativeCwd(String),
    #[error("hostname {0:?} is longer than 64 bytes")]
    HostnameTooLong(String),
    #[error("{field} {path:?} must be an absolute path without `..`")]
    BadPath { field: &'static str, path: String },
    #[error("volume destination {0:?} must be an absolute path other than `/`, without `..`")]
    BadVolumeDestination(String),
    #[error("virtio-fs tag {0:?} must be 1 to {VIRTIOFS_TAG_MAX} bytes without NUL")]
    BadVirtiofsTag(String),
    #[error("{0} cannot be a tmpfs (only volumes can)")]
    TmpfsOnlyAsVolume(&'static str),
    #[error("volume subpath {0:?} must be relative, without `..`")]
    BadSubpath(String),
    #[error("{field} entry {path:?} must be an absolute path without `..`")]
    BadListedPath { field: &'static str, path: String },
    #[error("sysctl {0:?} is not a valid name (dotted, without `/` or `..`)")]
    BadSysctl(String),
    #[error("the seccomp program is {0} bytes, not a whole number of 8-byte instructions")]
    BadSeccomp(usize),
    #[error(transparent)]
    Network(#[from] NetworkSpecError),
}

/// The longest virtio-fs tag: the `tag` field of the device's config
/// space (virtio spec 5.11.4), which the guest mounts the device by.
pub const VIRTIOFS_TAG_MAX: usize = 36;

/// Everything the agent needs to build and run one container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerSpec {
    pub process: ProcessSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default)]
    pub resources: Resources,
    #[serde(default)]
    pub storage: Storage,
    /// OCI `linux.maskedPaths`: made unreadable in the container (a file
    /// gets /dev/null bound over it, a directory an empty read-only
    /// tmpfs); paths that do not exist are skipped, as runc does.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub masked_paths: Vec<String>,
    /// OCI `linux.readonlyPaths`: bound onto themselves read-only;
    /// missing paths are skipped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub readonly_paths: Vec<String>,
    /// OCI `linux.sysctl`: written under /proc/sys inside the container's
    /// namespaces before its process runs.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sysctls: BTreeMap<String, String>,
    /// A classic-BPF seccomp program (an array of `struct sock_filter`, 8
    /// bytes each, native endian), compiled on the host from OCI
    /// `linux.seccomp`, installed by the init as its last step before exec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seccomp_bpf: Option<Vec<u8>>,
    /// eth0 and its routes; `None`: the container has only `lo`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkSpec>,
}

/// The container's process, as in OCI `process`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessSpec {
    pub args: Vec<String>,
    /// `KEY=value` entries. The agent adds `PATH` (Docker's default) and
    /// `HOME` (from the container's /etc/passwd) when they are missing, and
    /// `TERM=xterm` with a terminal.
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default = "default_cwd")]
    pub cwd: String,
    #[serde(default)]
    pub user: User,
    /// Give the process a pty instead of pipes; stderr then arrives as
    /// stdout.
    #[serde(default)]
    pub terminal: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console_size: Option<TtySize>,
    /// Capability names (`CAP_` prefix optional) kept in the bounding set,
    /// and also in the effective/permitted sets for uid 0. `None` means
    /// the OCI/Docker default set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rlimits: Vec<Rlimit>,
    #[serde(default)]
    pub no_new_privileges: bool,
}

fn default_cwd() -> String {
    "/".to_string()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TtySize {
    pub rows: u16,
    pub cols: u16,
}

/// Who the process runs as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum User {
    /// Numeric ids, as in an OCI spec.
    Id {
        uid: u32,
        gid: u32,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        additional_gids: Vec<u32>,
    },
    /// An image-config `User` string (`name`, `uid`, `name:group`,
    /// `uid:gid`), resolved by the agent against the container's own
    /// /etc/passwd and /etc/group; supplementary groups come from
    /// /etc/group.
    Name { name: String },
}

impl Default for User {
    fn default() -> Self {
        User::Id {
            uid: 0,
            gid: 0,
            additional_gids: Vec::new(),
        }
    }
}

/// One resource limit, as in OCI `process.rlimits`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    #[serde(rename = "type")]
    pub kind: RlimitKind,
    pub soft: u64,
    pub hard: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RlimitKind {
    RlimitCpu,
    RlimitFsize,
    RlimitData,
    RlimitStack,
    RlimitCore,
    RlimitRss,
    RlimitNproc,
    RlimitNofile,
    RlimitMemlock,
    RlimitAs,
    RlimitLocks,
    RlimitSigpending,
    RlimitMsgqueue,
    RlimitNice,
    RlimitRtprio,
    RlimitRttime,
}

impl From<PosixRlimitType> for RlimitKind {
    fn from(t: PosixRlimitType) -> Self {
        match t {
            PosixRlimitType::RlimitCpu => RlimitKind::RlimitCpu,
            PosixRlimitType::RlimitFsize => RlimitKind::RlimitFsize,
            PosixRlimitType::RlimitData => RlimitKind::RlimitData,
            PosixRlimitType::RlimitStack => RlimitKind::RlimitStack,
            PosixRlimitType::RlimitCore => RlimitKind::RlimitCore,
            PosixRlimitType::RlimitRss => RlimitKind::RlimitRss,
            PosixRlimitType::RlimitNproc => RlimitKind::RlimitNproc,
            PosixRlimitType::RlimitNofile => RlimitKind::RlimitNofile,
            PosixRlimitType::RlimitMemlock => RlimitKind::RlimitMemlock,
            PosixRlimitType::RlimitAs => RlimitKind::RlimitAs,
            PosixRlimitType::RlimitLocks => RlimitKind::RlimitLocks,
            PosixRlimitType::RlimitSigpending => RlimitKind::RlimitSigpending,
            PosixRlimitType::RlimitMsgqueue => RlimitKind::RlimitMsgqueue,
            PosixRlimitType::RlimitNice => RlimitKind::RlimitNice,
            PosixRlimitType::RlimitRtprio => RlimitKind::RlimitRtprio,
            PosixRlimitType::RlimitRttime => RlimitKind::RlimitRttime,
        }
    }
}

/// Cgroup limits, with OCI `linux.resources` units and meanings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// Bytes; -1 means unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit: Option<i64>,
    /// Maximum number of tasks; 0 or negative means unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids_limit: Option<i64>,
    /// Microseconds per `cpu_period`; negative means unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_quota: Option<i64>,
    /// Microseconds (default 100000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_period: Option<u64>,
    /// cgroup v1 style shares (2..=262144), converted to `cpu.weight`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_shares: Option<u64>,
    /// cgroup v1 style blkio weight (10..=1000), converted to `io.weight`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blkio_weight: Option<u16>,
}

/// Where a filesystem comes from inside the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Source {
    /// A block device to mount (the production case: virtio disks).
    BlockDevice {
        path: String,
        #[serde(default = "default_fs_type")]
        fs_type: String,
    },
    /// An existing directory (lets the agent run on a host without disks).
    Directory { path: String },
    /// A virtio-fs device, mounted by its tag: a host directory served by
    /// a virtiofsd. The guest probes these devices at boot, so there is
    /// nothing to wait for.
    Virtiofs { tag: String },
    /// A fresh tmpfs (only as a volume), made with the volume's `options`
    /// (`size=`, `mode=`, `nosuid`, ...).
    Tmpfs,
}

fn default_fs_type() -> String {
    "ext4".to_string()
}

impl Source {
    /// An ext4 block device.
    pub fn block_device(path: impl Into<String>) -> Self {
        Source::BlockDevice {
            path: path.into(),
            fs_type: default_fs_type(),
        }
    }

    pub fn directory(path: impl Into<String>) -> Self {
        Source::Directory { path: path.into() }
    }

    pub fn virtiofs(tag: impl Into<String>) -> Self {
        Source::Virtiofs { tag: tag.into() }
    }

    /// The guest path of a device or directory; a virtio-fs source has
    /// none, only a tag.
    pub fn path(&self) -> Option<&str> {
        match self {
            Source::BlockDevice { path, .. } | Source::Directory { path } => Some(path),
            Source::Virtiofs { .. } | Source::Tmpfs => None,
        }
    }
}

/// The container's filesystems.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Storage {
    /// The image: read-only overlay lower layer.
    #[serde(default = "default_lower")]
    pub lower: Source,
    /// Holds the overlay upper and work dirs; `None` puts them on a tmpfs.
    #[serde(default = "default_scratch")]
    pub scratch: Option<Source>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    /// `lower` is the container's root itself (an OCI bundle's rootfs
    /// shared from the host): mounted as it is, no overlay, no scratch;
    /// what the container writes lands in it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub in_place: bool,
    /// OCI `root.readonly`: the container's root is mounted read-only
    /// (volumes keep their own modes).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only_root: bool,
}

fn default_lower() -> Source {
    Source::block_device("/dev/vda")
}

fn default_scratch() -> Option<Source> {
    Some(Source::block_device("/dev/vdb"))
}

impl Default for Storage {
    fn default() -> Self {
        Storage {
            lower: default_lower(),
            scratch: default_scratch(),
            volumes: Vec::new(),
            in_place: false,
            read_only_root: false,
        }
    }
}

/// A filesystem mounted at `destination` inside the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    pub source: Source,
    pub destination: String,
    #[serde(default)]
    pub read_only: bool,
    /// Bind only this relative path of the source (a file or a directory)
    /// at `destination`: how an OCI bind mount of a host *file* arrives,
    /// its directory being the share.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subpath: Option<String>,
    /// OCI mount options. `nosuid`, `nodev`, `noexec`, `ro` and the atime
    /// flags are honoured; for a tmpfs, the rest (`size=`, `mode=`, ...)
    /// is its data. Bind and propagation options are accepted and mean
    /// nothing more (every guest mount is private). `tmpcopyup` makes a
    /// tmpfs start with a copy of what the root has at `destination`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Volume {
    /// A volume of all of `source`, with no options.
    pub fn new(source: Source, destination: impl Into<String>, read_only: bool) -> Volume {
        Volume {
            source,
            destination: destination.into(),
            read_only,
            subpath: None,
            options: Vec::new(),
        }
    }
}

impl ProcessSpec {
    /// A root process running `args` in `/` with no environment.
    pub fn new(args: Vec<String>) -> Self {
        ProcessSpec {
            args,
            env: Vec::new(),
            cwd: default_cwd(),
            user: User::default(),
            terminal: false,
            console_size: None,
            capabilities: None,
            rlimits: Vec::new(),
            no_new_privileges: false,
        }
    }
}

fn no_nul(field: &'static str, s: &str) -> Result<(), SpecError> {
    if s.contains('\0') {
        return Err(SpecError::NulByte { field });
    }
    Ok(())
}

fn is_clean_absolute(path: &str) -> bool {
    let p = Path::new(path);
    p.is_absolute() && !p.components().any(|c| c == Component::ParentDir)
}

fn check_source(field: &'static str, source: &Source) -> Result<(), SpecError> {
    let path = match source {
        Source::BlockDevice { path, .. } | Source::Directory { path } => path,
        Source::Virtiofs { tag } => return check_virtiofs_tag(tag),
        Source::Tmpfs if field == "volume source" => return Ok(()),
        Source::Tmpfs => return Err(SpecError::TmpfsOnlyAsVolume(field)),
    };
    no_nul(field, path)?;
    if !is_clean_absolute(path) {
        return Err(SpecError::BadPath {
            field,
            path: path.to_string(),
        });
    }
    Ok(())
}

/// The kernel copies the tag out of a fixed 36-byte field and looks it up
/// as a C string: longer or NUL-holding tags can never match a device.
fn check_virtiofs_tag(tag: &str) -> Result<(), SpecError> {
    if tag.is_empty() || tag.len() > VIRTIOFS_TAG_MAX || tag.contains('\0') {
        return Err(SpecError::BadVirtiofsTag(tag.to_string()));
    }
    Ok(())
}

impl ContainerSpec {
    /// A spec with default resources and the default guest disks.
    pub fn new(process: ProcessSpec) -> Self {
        ContainerSpec {
            process,
            hostname: None,
            resources: Resources::default(),
            storage: Storage::default(),
            masked_paths: Vec::new(),
            readonly_paths: Vec::new(),
            sysctls: BTreeMap::new(),
            seccomp_bpf: None,
            network: None,
        }
    }

    /// Checks what can be checked without the container's filesystem.
    pub fn validate(&self) -> Result<(), SpecError> {
        let p = &self.process;
        if p.args.is_empty() {
            return Err(SpecError::EmptyArgs);
        }
        for a in &p.args {
            no_nul("process.args", a)?;
        }
        for e in &p.env {
            no_nul("process.env", e)?;
            if !matches!(e.find('='), Some(i) if i > 0) {
                return Err(SpecError::BadEnv(e.clone()));
            }
        }
        no_nul("process.cwd", &p.cwd)?;
        if !p.cwd.starts_with('/') {
            return Err(SpecError::RelativeCwd(p.cwd.clone()));
        }
        if let User::Name { name } = &p.user {
            no_nul("process.user", name)?;
        }
        if let Some(h) = &self.hostname {
            no_nul("hostname", h)?;
            if h.len() > 64 {
                return Err(SpecError::HostnameTooLong(h.clone()));
            }
        }
        check_source("storage.lower", &self.storage.lower)?;
        if let Some(s) = &self.storage.scratch {
            check_source("storage.scratch", s)?;
        }
        for v in &self.storage.volumes {
            check_source("volume source", &v.source)?;
            if let Some(sub) = &v.subpath {
                no_nul("volume subpath", sub)?;
                let p = Path::new(sub);
                if p.is_absolute() || p.components().any(|c| c == Component::ParentDir) {
                    return Err(SpecError::BadSubpath(sub.clone()));
                }
            }
            no_nul("volume destination", &v.destination)?;
            if !is_clean_absolute(&v.destination) || Path::new(&v.destination) == Path::new("/") {
                return Err(SpecError::BadVolumeDestination(v.destination.clone()));
            }
        }
        for (field, list) in [
            ("linux.maskedPaths", &self.masked_paths),
            ("linux.readonlyPaths", &self.readonly_paths),
        ] {
            for path in list {
                no_nul(field, path)?;
                if !is_clean_absolute(path) {
                    return Err(SpecError::BadListedPath {
                        field,
                        path: path.clone(),
                    });
                }
            }
        }
        for (name, value) in &self.sysctls {
            no_nul("linux.sysctl", name)?;
            no_nul("linux.sysctl", value)?;
            if name.is_empty()
                || name.contains('/')
                || name.split('.').any(|part| part.is_empty() || part == "..")
            {
                return Err(SpecError::BadSysctl(name.clone()));
            }
        }
        if let Some(bpf) = &self.seccomp_bpf {
            if bpf.is_empty() || bpf.len() % 8 != 0 {
                return Err(SpecError::BadSeccomp(bpf.len()));
            }
        }
        if let Some(n) = &self.network {
            n.validate()?;
        }
        Ok(())
    }

    /// Takes the supported parts of an OCI runtime spec: process (args, env,
    /// cwd, user, terminal, console size, bounding capabilities, rlimits,
    /// no_new_privileges), hostname and linux.resources (memory limit, pids
    /// limit, cpu quota/period/shares, blkio weight). Root, mounts, hooks
    /// and namespaces are bulkhead's business and come from `storage`.
    pub fn from_oci(spec: &Spec, storage: Storage) -> Result<Self, SpecError> {
        let process = spec.process().as_ref().ok_or(SpecError::MissingProcess)?;
        let user = process.user();
        let cwd = process
            .cwd()
            .to_str()
            .ok_or(SpecError::NotUtf8 {
                field: "process.cwd",
            })?
            .to_string();
        let capabilities = process
            .capabilities()
            .as_ref()
            .and_then(|c| c.bounding().as_ref())
            .map(|set| {
                let mut names: Vec<String> = set
                    .iter()
                    .filter_map(|c| serde_json::to_value(c).ok())
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect();
                names.sort();
                names
            });
        let rlimits = process
            .rlimits()
            .iter()
            .flatten()
            .map(|r| Rlimit {
                kind: r.typ().into(),
                soft: r.soft(),
                hard: r.hard(),
            })
            .collect();
        let process_spec = ProcessSpec {
            args: process.args().clone().unwrap_or_default(),
            env: process.env().clone().unwrap_or_default(),
            cwd,
            user: User::Id {
                uid: user.uid(),
                gid: user.gid(),
                additional_gids: user.additional_gids().clone().unwrap_or_default(),
            },
            terminal: process.terminal().unwrap_or(false),
            console_size: process.console_size().map(|b| TtySize {
                rows: b.height().min(u16::MAX as u64) as u16,
                cols: b.width().min(u16::MAX as u64) as u16,
            }),
            capabilities,
            rlimits,
            no_new_privileges: process.no_new_privileges().unwrap_or(false),
        };

        let mut resources = Resources::default();
        if let Some(r) = spec.linux().as_ref().and_then(|l| l.resources().as_ref()) {
            if let Some(m) = r.memory() {
                resources.memory_limit = m.limit();
            }
            if let Some(p) = r.pids() {
                resources.pids_limit = Some(p.limit());
            }
            if let Some(c) = r.cpu() {
                resources.cpu_quota = c.quota();
                resources.cpu_period = c.period();
                resources.cpu_shares = c.shares();
            }
            if let Some(b) = r.block_io() {
                resources.blkio_weight = b.weight();
            }
        }

        let spec = ContainerSpec {
            process: process_spec,
            hostname: spec.hostname().clone().filter(|h| !h.is_empty()),
            resources,
            storage,
            ..ContainerSpec::new(ProcessSpec::new(Vec::new()))
        };
        spec.validate()?;
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{
        Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxMemoryBuilder,
        LinuxPidsBuilder, LinuxResourcesBuilder, PosixRlimitBuilder, ProcessBuilder, SpecBuilder,
        UserBuilder,
    };

    fn spec(args: &[&str]) -> ContainerSpec {
        ContainerSpec::new(ProcessSpec::new(
            args.iter().map(|s| s.to_string()).collect(),
        ))
    }

    #[test]
    fn minimal_json_gets_defaults() {
        let s: ContainerSpec = serde_json::from_str(r#"{"process":{"args":["true"]}}"#).unwrap();
        assert_eq!(s, spec(&["true"]));
        assert_eq!(s.storage.lower, Source::block_device("/dev/vda"));
        assert_eq!(s.storage.scratch, Some(Source::block_device("/dev/vdb")));
        s.validate().unwrap();
    }

    #[test]
    fn null_scratch_means_tmpfs() {
        let s: ContainerSpec =
            serde_json::from_str(r#"{"process":{"args":["true"]},"storage":{"scratch":null}}"#)
                .unwrap();
        assert_eq!(s.storage.scratch, None);
    }

    #[test]
    fn spec_json_round_trips() {
        let mut s = spec(&["sh", "-c", "echo hi"]);
        s.hostname = Some("box".into());
        s.process.user = User::Name {
            name: "nobody:nogroup".into(),
        };
        s.process.rlimits.push(Rlimit {
            kind: RlimitKind::RlimitNofile,
            soft: 10,
            hard: 20,
        });
        s.resources.memory_limit = Some(1 << 20);
        s.storage.volumes.push(Volume {
            source: Source::block_device("/dev/vdc"),
            destination: "/data".into(),
            read_only: true,
            subpath: None,
            options: Vec::new(),
        });
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains(r#""type":"RLIMIT_NOFILE""#), "{json}");
        assert_eq!(serde_json::from_str::<ContainerSpec>(&json).unwrap(), s);
    }

    #[test]
    fn validation_rejects_bad_input() {
        assert_eq!(spec(&[]).validate(), Err(SpecError::EmptyArgs));
        assert!(matches!(
            spec(&["a\0b"]).validate(),
            Err(SpecError::NulByte { .. })
        ));

        let mut s = spec(&["true"]);
        s.process.env = vec!["NOVALUE".into()];
        assert_eq!(s.validate(), Err(SpecError::BadEnv("NOVALUE".into())));
        s.process.env = vec!["=x".into()];
        assert!(s.validate().is_err());
        s.process.env = vec!["A=".into()];
        s.validate().unwrap();

        let mut s = spec(&["true"]);
        s.process.cwd = "tmp".into();
        assert!(matches!(s.validate(), Err(SpecError::RelativeCwd(_))));

        let mut s = spec(&["true"]);
        s.hostname = Some("x".repeat(65));
        assert!(matches!(s.validate(), Err(SpecError::HostnameTooLong(_))));

        for dest in ["data", "/", "/a/../../etc"] {
            let mut s = spec(&["true"]);
            s.storage.volumes.push(Volume {
                source: Source::block_device("/dev/vdc"),
                destination: dest.into(),
                read_only: false,
                subpath: None,
                options: Vec::new(),
            });
            assert!(
                matches!(s.validate(), Err(SpecError::BadVolumeDestination(_))),
                "{dest}"
            );
        }

        let mut s = spec(&["true"]);
        s.storage.lower = Source::directory("relative/dir");
        assert!(matches!(s.validate(), Err(SpecError::BadPath { .. })));
    }

    #[test]
    fn virtiofs_source_round_trips_with_its_tag() {
        let mut s = spec(&["true"]);
        s.storage.volumes.push(Volume {
            source: Source::virtiofs("share0"),
            destination: "/srv".into(),
            read_only: true,
            subpath: None,
            options: Vec::new(),
        });
        let json = serde_json::to_string(&s).unwrap();
        assert!(
            json.contains(r#""source":{"type":"virtiofs","tag":"share0"}"#),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<ContainerSpec>(&json).unwrap(), s);
        s.validate().unwrap();
        assert_eq!(Source::virtiofs("share0").path(), None);
        assert_eq!(Source::block_device("/dev/vdc").path(), Some("/dev/vdc"));
    }

    #[test]
    fn virtiofs_tags_must_fit_the_device_field() {
        let with_tag = |tag: &str| {
            let mut s = spec(&["true"]);
            s.storage.volumes.push(Volume {
                source: Source::virtiofs(tag),
                destination: "/srv".into(),
                read_only: false,
                subpath: None,
                options: Vec::new(),
            });
            s.validate()
        };
        with_tag(&"t".repeat(VIRTIOFS_TAG_MAX)).unwrap();
        for bad in [
            String::new(),
            "t".repeat(VIRTIOFS_TAG_MAX + 1),
            "a\0b".into(),
        ] {
            assert_eq!(
                with_tag(&bad),
                Err(SpecError::BadVirtiofsTag(bad.clone())),
                "{bad:?}"
            );
        }
        // The lower layer may come from a share too.
        let mut s = spec(&["true"]);
        s.storage.lower = Source::virtiofs("");
        assert!(matches!(s.validate(), Err(SpecError::BadVirtiofsTag(_))));
    }

    #[test]
    fn from_oci_takes_supported_fields() {
        let caps: oci_spec::runtime::Capabilities =
            [Capability::Chown, Capability::Kill].into_iter().collect();
        let oci = SpecBuilder::default()
            .hostname("web")
            .process(
                ProcessBuilder::default()
                    .args(vec!["nginx".to_string(), "-g".to_string()])
                    .env(vec!["A=1".to_string()])
                    .cwd("/srv")
                    .terminal(true)
                    .no_new_privileges(true)
                    .user(
                        UserBuilder::default()
                            .uid(1000u32)
                            .gid(100u32)
                            .additional_gids(vec![5u32])
                            .build()
                            .unwrap(),
                    )
                    .capabilities(
                        LinuxCapabilitiesBuilder::default()
                            .bounding(caps)
                            .build()
                            .unwrap(),
                    )
                    .rlimits(vec![PosixRlimitBuilder::default()
                        .typ(PosixRlimitType::RlimitNofile)
                        .soft(100u64)
                        .hard(200u64)
                        .build()
                        .unwrap()])
                    .build()
                    .unwrap(),
            )
            .linux(
                LinuxBuilder::default()
                    .resources(
                        LinuxResourcesBuilder::default()
                            .memory(
                                LinuxMemoryBuilder::default()
                                    .limit(1i64 << 30)
                                    .build()
                                    .unwrap(),
                            )
                            .pids(LinuxPidsBuilder::default().limit(64i64).build().unwrap())
                            .cpu(
                                LinuxCpuBuilder::default()
                                    .quota(50000i64)
                                    .period(100000u64)
                                    .build()
                                    .unwrap(),
                            )
                            .build()
                            .unwrap(),
                    )
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();

        let s = ContainerSpec::from_oci(&oci, Storage::default()).unwrap();
        assert_eq!(s.process.args, ["nginx", "-g"]);
        assert_eq!(s.process.env, ["A=1"]);
        assert_eq!(s.process.cwd, "/srv");
        assert!(s.process.terminal);
        assert!(s.process.no_new_privileges);
        assert_eq!(
            s.process.user,
            User::Id {
                uid: 1000,
                gid: 100,
                additional_gids: vec![5]
            }
        );
        assert_eq!(
            s.process.capabilities,
            Some(vec!["CAP_CHOWN".to_string(), "CAP_KILL".to_string()])
        );
        assert_eq!(
            s.process.rlimits,
            [Rlimit {
                kind: RlimitKind::RlimitNofile,
                soft: 100,
                hard: 200
            }]
        );
        assert_eq!(s.hostname.as_deref(), Some("web"));
        assert_eq!(s.resources.memory_limit, Some(1 << 30));
        assert_eq!(s.resources.pids_limit, Some(64));
        assert_eq!(s.resources.cpu_quota, Some(50000));
        assert_eq!(s.resources.cpu_period, Some(100000));
    }

    #[test]
    fn from_oci_requires_a_process() {
        let mut oci = Spec::default();
        oci.set_process(None);
        assert_eq!(
            ContainerSpec::from_oci(&oci, Storage::default()),
            Err(SpecError::MissingProcess)
        );
    }
}
