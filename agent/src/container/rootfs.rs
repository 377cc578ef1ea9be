//! The container's root filesystem: image + scratch overlay, volumes,
//! /proc, /sys, and the switch into it.

use std::path::{Path, PathBuf};

use bulkhead_protocol::{Source, Storage};
use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use thiserror::Error;

use super::devices::dev_plan;
use super::fsops::FsOp;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("path {0:?} cannot be used in overlay options (contains ',', ':' or '\\')")]
    UnsafeOverlayPath(String),
}

#[derive(Debug, Error)]
pub enum PivotError {
    #[error("cannot switch to the container root {rootfs}: {step}: {source}")]
    Failed {
        rootfs: PathBuf,
        step: &'static str,
        source: Errno,
    },
}

/// Where one container's mount points live under the agent's state dir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub base: PathBuf,
}

impl Layout {
    pub fn new(state_dir: &Path, id: &str) -> Layout {
        Layout {
            base: state_dir.join(id),
        }
    }

    fn lower(&self) -> PathBuf {
        self.base.join("lower")
    }

    fn scratch(&self) -> PathBuf {
        self.base.join("scratch")
    }

    pub fn rootfs(&self) -> PathBuf {
        self.base.join("rootfs")
    }

    fn volume(&self, index: usize) -> PathBuf {
        self.base.join(format!("volume{index}"))
    }

    /// Unmounts what [`plan`]'s storage part mounted and removes the mount
    /// points. Lazy unmounts: the agent does not wait for filesystems to
    /// shut down. Paths that were never mounted fail harmlessly.
    pub fn teardown(&self, volumes: usize) {
        let mounted = std::iter::once(self.rootfs())
            .chain((0..volumes).map(|i| self.volume(i)))
            .chain([self.scratch(), self.lower()]);
        for dir in mounted {
            let _ = umount2(&dir, MntFlags::MNT_DETACH);
            let _ = std::fs::remove_dir(&dir);
        }
        let _ = std::fs::remove_dir(&self.base);
    }
}

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

fn mkdir(path: PathBuf) -> FsOp {
    FsOp::Mkdir { path, mode: 0o755 }
}

fn fs_mount(
    source: &str,
    target: PathBuf,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> FsOp {
    FsOp::Mount {
        source: Some(source.into()),
        target,
        fstype: Some(fstype.to_string()),
        flags,
        data: data.map(str::to_string),
    }
}

fn bind(source: PathBuf, target: PathBuf) -> FsOp {
    FsOp::Mount {
        source: Some(source),
        target,
        fstype: None,
        flags: MsFlags::MS_BIND | MsFlags::MS_REC,
        data: None,
    }
}

fn remount_read_only(target: PathBuf) -> FsOp {
    FsOp::Mount {
        source: None,
        target,
        fstype: None,
        flags: MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        data: None,
    }
}

/// Makes `source` available as a directory: block devices and virtio-fs
/// shares are mounted at `mount_point`, directories are used in place.
fn materialize(
    source: &Source,
    mount_point: PathBuf,
    read_only: bool,
    ops: &mut Vec<FsOp>,
) -> PathBuf {
    let flags = if read_only {
        MsFlags::MS_RDONLY
    } else {
        MsFlags::empty()
    };
    match source {
        Source::Directory { path } => PathBuf::from(path),
        Source::BlockDevice { path, fs_type } => {
            ops.push(FsOp::AwaitDisk {
                device: PathBuf::from(path),
            });
            ops.push(mkdir(mount_point.clone()));
            ops.push(fs_mount(path, mount_point.clone(), fs_type, flags, None));
            mount_point
        }
        // No wait: virtio-fs devices are probed at boot (a template's
        // slots too), and the backend is connected before the vCPUs run.
        // The host's virtiofsd enforces read-only; MS_RDONLY here makes
        // writes fail early with EROFS instead of at the backend.
        Source::Virtiofs { tag } => {
            ops.push(mkdir(mount_point.clone()));
            ops.push(fs_mount(tag, mount_point.clone(), "virtiofs", flags, None));
            mount_point
        }
        Source::Tmpfs => {
            ops.push(mkdir(mount_point.clone()));
            ops.push(fs_mount("tmpfs", mount_point.clone(), "tmpfs", flags, None));
            mount_point
        }
    }
}

/// Where the writable volumes of `storage` are in the agent's view: their
/// mount points, or the directories used in place.
pub fn writable_volumes(storage: &Storage, layout: &Layout) -> Vec<PathBuf> {
    storage
        .volumes
        .iter()
        .enumerate()
        .filter(|(_, v)| !v.read_only)
        .map(|(i, v)| match &v.source {
            Source::Directory { path } => PathBuf::from(path),
            Source::BlockDevice { .. } | Source::Virtiofs { .. } | Source::Tmpfs => {
                layout.volume(i)
            }
        })
        .collect()
}

fn overlay_path(p: &Path) -> Result<String, PlanError> {
    let s = p.display().to_string();
    if s.contains([',', ':', '\\']) {
        return Err(PlanError::UnsafeOverlayPath(s));
    }
    Ok(s)
}

/// The mounts of one container, split by who makes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Made by the agent in its own namespace before the clone: every
    /// mount backed by a disk (image, scratch, overlay root, volumes).
    /// Holding them there means the container's exit only drops its copies,
    /// so the exit status is not held up by filesystem shutdown (journal
    /// flush, page cache eviction); the agent unmounts after replying.
    pub storage: Vec<FsOp>,
    /// Made by the container's init in its new namespace: /proc, /sys,
    /// cgroup2, /dev, then the volume binds (last, so they may sit
    /// anywhere, even under /dev).
    pub container: Vec<FsOp>,
}

/// Plans the mounts for `storage` at `layout`.
pub fn plan(storage: &Storage, layout: &Layout, cgroup_ns: bool) -> Result<Plan, PlanError> {
    let mut ops = vec![mkdir(layout.base.clone())];

    let lower = materialize(&storage.lower, layout.lower(), true, &mut ops);
    let scratch = match &storage.scratch {
        Some(source) => materialize(source, layout.scratch(), false, &mut ops),
        None => {
            ops.push(mkdir(layout.scratch()));
            ops.push(fs_mount(
                "tmpfs",
                layout.scratch(),
                "tmpfs",
                MsFlags::empty(),
                Some("mode=0755"),
            ));
            layout.scratch()
        }
    };
    let (upper, work) = (scratch.join("upper"), scratch.join("work"));
    ops.push(mkdir(upper.clone()));
    ops.push(mkdir(work.clone()));

    let rootfs = layout.rootfs();
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        overlay_path(&lower)?,
        overlay_path(&upper)?,
        overlay_path(&work)?
    );
    ops.push(mkdir(rootfs.clone()));
    ops.push(fs_mount(
        "overlay",
        rootfs.clone(),
        "overlay",
        MsFlags::empty(),
        Some(&data),
    ));
    let volume_sources: Vec<PathBuf> = storage
        .volumes
        .iter()
        .enumerate()
        .map(|(i, v)| materialize(&v.source, layout.volume(i), v.read_only, &mut ops))
        .collect();
    let storage_ops = ops;

    let mut ops = vec![
        mkdir(rootfs.join("proc")),
        fs_mount(
            "proc",
            rootfs.join("proc"),
            "proc",
            NOSUID_NODEV_NOEXEC,
            None,
        ),
        mkdir(rootfs.join("sys")),
        fs_mount(
            "sysfs",
            rootfs.join("sys"),
            "sysfs",
            NOSUID_NODEV_NOEXEC | MsFlags::MS_RDONLY,
            None,
        ),
    ];
    if cgroup_ns {
        ops.push(fs_mount(
            "cgroup2",
            rootfs.join("sys/fs/cgroup"),
            "cgroup2",
            NOSUID_NODEV_NOEXEC | MsFlags::MS_RDONLY,
            None,
        ));
    }
    ops.extend(dev_plan(&rootfs.join("dev")));
    for (v, source) in storage.volumes.iter().zip(volume_sources) {
        let target = rootfs.join(v.destination.trim_start_matches('/'));
        ops.push(FsOp::MkdirAll {
            path: target.clone(),
        });
        ops.push(bind(source, target.clone()));
        if v.read_only {
            ops.push(remount_read_only(target));
        }
    }
    Ok(Plan {
        storage: storage_ops,
        container: ops,
    })
}

/// Makes every mount in this (new) namespace private, so nothing the
/// container setup mounts or unmounts propagates back to the agent.
pub fn make_private() -> nix::Result<()> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
}

/// The steps of [`enter`], named in its errors.
pub const ENTER_STEPS: [&str; 6] = [
    "chdir",
    "pivot_root",
    "detach old root",
    "move mount",
    "chroot",
    "chdir /",
];

/// Makes `rootfs` the root: `pivot_root` then detaches the old root, so
/// nothing of the agent's filesystem stays reachable. Falls back to
/// move-mount + chroot where the old root cannot be pivoted away from
/// (an initramfs root that was not re-rooted at boot). On failure, the
/// index of the step in [`ENTER_STEPS`]; allocation-free.
pub fn enter(rootfs: &Path) -> Result<(), (usize, Errno)> {
    let at = |step| move |e| (step, e);
    nix::unistd::chdir(rootfs).map_err(at(0))?;
    match nix::unistd::pivot_root(".", ".") {
        Ok(()) => {
            // The old root is now stacked under "."; detach it.
            umount2(".", MntFlags::MNT_DETACH).map_err(at(2))?;
        }
        Err(Errno::EINVAL) => {
            mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>).map_err(at(3))?;
            nix::unistd::chroot(".").map_err(at(4))?;
        }
        Err(e) => return Err((1, e)),
    }
    nix::unistd::chdir("/").map_err(at(5))
}

/// The error of [`enter`] failing at `step`.
pub fn enter_error(rootfs: &Path, step: usize, source: Errno) -> PivotError {
    PivotError::Failed {
        rootfs: rootfs.to_path_buf(),
        step: ENTER_STEPS.get(step).copied().unwrap_or("?"),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulkhead_protocol::Volume;

    fn layout() -> Layout {
        Layout::new(Path::new("/run/bulkhead"), "c1")
    }

    fn mounts(ops: &[FsOp]) -> Vec<(String, String)> {
        ops.iter()
            .filter_map(|op| match op {
                FsOp::Mount {
                    target,
                    fstype,
                    flags,
                    ..
                } => Some((
                    target.display().to_string(),
                    fstype.clone().unwrap_or_else(|| {
                        if flags.contains(MsFlags::MS_REMOUNT) {
                            "remount"
                        } else {
                            "bind"
                        }
                        .to_string()
                    }),
                )),
                _ => None,
            })
            .collect()
    }

    fn overlay_data(ops: &[FsOp]) -> String {
        ops.iter()
            .find_map(|op| match op {
                FsOp::Mount {
                    fstype: Some(t),
                    data,
                    ..
                } if t == "overlay" => data.clone(),
                _ => None,
            })
            .unwrap()
    }

    /// Every mount point is created before it is mounted on (within the
    /// same list, or by the storage part for container mounts).
    fn assert_created_before_mounted(before: &[FsOp], ops: &[FsOp]) {
        for (i, op) in ops.iter().enumerate() {
            if let FsOp::Mount { target, flags, .. } = op {
                if flags.contains(MsFlags::MS_REMOUNT) || target.ends_with("sys/fs/cgroup") {
                    continue;
                }
                assert!(
                    before.iter().chain(&ops[..i]).any(|o| matches!(o,
                        FsOp::Mkdir { path, .. } | FsOp::MkdirAll { path } if path == target)),
                    "{} mounted before being created",
                    target.display()
                );
            }
        }
    }

    #[test]
    fn guest_default_storage() {
        let plan = plan(&Storage::default(), &layout(), true).unwrap();
        assert_eq!(
            mounts(&plan.storage),
            [
                ("/run/bulkhead/c1/lower".to_string(), "ext4".to_string()),
                ("/run/bulkhead/c1/scratch".into(), "ext4".into()),
                ("/run/bulkhead/c1/rootfs".into(), "overlay".into()),
            ]
        );
        let m = mounts(&plan.container);
        let expect_prefix = [
            ("/run/bulkhead/c1/rootfs/proc", "proc"),
            ("/run/bulkhead/c1/rootfs/sys", "sysfs"),
            ("/run/bulkhead/c1/rootfs/sys/fs/cgroup", "cgroup2"),
            ("/run/bulkhead/c1/rootfs/dev", "tmpfs"),
        ];
        for (i, (t, f)) in expect_prefix.iter().enumerate() {
            assert_eq!(m[i], (t.to_string(), f.to_string()));
        }
        let lower_mount = FsOp::Mount {
            source: Some("/dev/vda".into()),
            target: "/run/bulkhead/c1/lower".into(),
            fstype: Some("ext4".into()),
            flags: MsFlags::MS_RDONLY,
            data: None,
        };
        let pos = |op: &FsOp| plan.storage.iter().position(|o| o == op).unwrap();
        // Every disk is waited for (a restored VM gets it late), before
        // its mount.
        let wait = FsOp::AwaitDisk {
            device: "/dev/vda".into(),
        };
        assert!(pos(&wait) < pos(&lower_mount));
        assert!(plan.storage.contains(&FsOp::AwaitDisk {
            device: "/dev/vdb".into()
        }));
        assert!(!plan
            .container
            .iter()
            .any(|op| matches!(op, FsOp::AwaitDisk { .. })));
        assert_eq!(
            overlay_data(&plan.storage),
            "lowerdir=/run/bulkhead/c1/lower,upperdir=/run/bulkhead/c1/scratch/upper,\
             workdir=/run/bulkhead/c1/scratch/work"
        );
        assert_created_before_mounted(&[], &plan.storage);
        assert_created_before_mounted(&plan.storage, &plan.container);
    }

    #[test]
    fn tmpfs_scratch_and_directory_lower() {
        let storage = Storage {
            lower: Source::directory("/images/busybox"),
            in_place: false,
            read_only_root: false,
            scratch: None,
            volumes: vec![],
        };
        let plan = plan(&storage, &layout(), false).unwrap();
        assert_eq!(
            mounts(&plan.storage),
            [
                ("/run/bulkhead/c1/scratch".to_string(), "tmpfs".to_string()),
                ("/run/bulkhead/c1/rootfs".into(), "overlay".into()),
            ]
        );
        assert!(!mounts(&plan.container).iter().any(|(_, f)| f == "cgroup2"));
        assert!(overlay_data(&plan.storage).starts_with("lowerdir=/images/busybox,"));
    }

    #[test]
    fn volumes_are_bound_last_and_read_only_when_asked() {
        let storage = Storage {
            volumes: vec![
                Volume {
                    source: Source::block_device("/dev/vdc"),
                    destination: "/data".into(),
                    read_only: true,
                    subpath: None,
                    options: Vec::new(),
                },
                Volume {
                    source: Source::directory("/host/cache"),
                    destination: "/var/cache/app".into(),
                    read_only: false,
                    subpath: None,
                    options: Vec::new(),
                },
            ],
            ..Storage::default()
        };
        let plan = plan(&storage, &layout(), false).unwrap();
        assert!(plan.storage.contains(&FsOp::Mount {
            source: Some("/dev/vdc".into()),
            target: "/run/bulkhead/c1/volume0".into(),
            fstype: Some("ext4".into()),
            flags: MsFlags::MS_RDONLY,
            data: None,
        }));
        let m = mounts(&plan.container);
        let last: Vec<(&str, &str)> = m[m.len() - 3..]
            .iter()
            .map(|(t, f)| (t.as_str(), f.as_str()))
            .collect();
        assert_eq!(
            last,
            [
                ("/run/bulkhead/c1/rootfs/data", "bind"),
                ("/run/bulkhead/c1/rootfs/data", "remount"),
                ("/run/bulkhead/c1/rootfs/var/cache/app", "bind"),
            ]
        );
        assert!(plan.container.contains(&FsOp::Mount {
            source: Some("/host/cache".into()),
            target: "/run/bulkhead/c1/rootfs/var/cache/app".into(),
            fstype: None,
            flags: MsFlags::MS_BIND | MsFlags::MS_REC,
            data: None,
        }));
    }

    #[test]
    fn virtiofs_volumes_are_mounted_by_tag_without_a_disk_wait() {
        let storage = Storage {
            volumes: vec![
                Volume {
                    source: Source::virtiofs("share0"),
                    destination: "/srv".into(),
                    read_only: true,
                    subpath: None,
                    options: Vec::new(),
                },
                Volume {
                    source: Source::block_device("/dev/vdc"),
                    destination: "/srv/cache".into(),
                    read_only: false,
                    subpath: None,
                    options: Vec::new(),
                },
                Volume {
                    source: Source::virtiofs("share1"),
                    destination: "/out".into(),
                    read_only: false,
                    subpath: None,
                    options: Vec::new(),
                },
            ],
            ..Storage::default()
        };
        let plan = plan(&storage, &layout(), false).unwrap();
        let share0 = FsOp::Mount {
            source: Some("share0".into()),
            target: "/run/bulkhead/c1/volume0".into(),
            fstype: Some("virtiofs".into()),
            flags: MsFlags::MS_RDONLY,
            data: None,
        };
        let pos = |op: &FsOp| plan.storage.iter().position(|o| o == op).unwrap();
        assert!(
            pos(&mkdir("/run/bulkhead/c1/volume0".into())) < pos(&share0),
            "{:?}",
            plan.storage
        );
        assert!(plan.storage.contains(&FsOp::Mount {
            source: Some("share1".into()),
            target: "/run/bulkhead/c1/volume2".into(),
            fstype: Some("virtiofs".into()),
            flags: MsFlags::empty(),
            data: None,
        }));
        let awaited: Vec<_> = plan
            .storage
            .iter()
            .filter_map(|op| match op {
                FsOp::AwaitDisk { device } => Some(device.display().to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(awaited, ["/dev/vda", "/dev/vdb", "/dev/vdc"]);

        // Bound into the container in spec order (a share's subdirectory
        // volume after the share), the read-only one remounted read-only.
        let m = mounts(&plan.container);
        let last: Vec<(&str, &str)> = m[m.len() - 4..]
            .iter()
            .map(|(t, f)| (t.as_str(), f.as_str()))
            .collect();
        assert_eq!(
            last,
            [
                ("/run/bulkhead/c1/rootfs/srv", "bind"),
                ("/run/bulkhead/c1/rootfs/srv", "remount"),
                ("/run/bulkhead/c1/rootfs/srv/cache", "bind"),
                ("/run/bulkhead/c1/rootfs/out", "bind"),
            ]
        );
        assert!(plan.container.contains(&FsOp::Mount {
            source: Some("/run/bulkhead/c1/volume0".into()),
            target: "/run/bulkhead/c1/rootfs/srv".into(),
            fstype: None,
            flags: MsFlags::MS_BIND | MsFlags::MS_REC,
            data: None,
        }));
        assert_created_before_mounted(&[], &plan.storage);
        assert_created_before_mounted(&plan.storage, &plan.container);

        // Shutdown flushes the writable share like a writable disk.
        assert_eq!(
            writable_volumes(&storage, &layout()),
            [
                PathBuf::from("/run/bulkhead/c1/volume1"),
                PathBuf::from("/run/bulkhead/c1/volume2"),
            ]
        );
    }

    #[test]
    fn teardown_takes_the_mount_points_away() {
        let state = std::env::temp_dir().join(format!("bulkhead-layout-{}", std::process::id()));
        let layout = Layout::new(&state, "c");
        for d in [
            layout.rootfs(),
            layout.lower(),
            layout.volume(0),
            layout.volume(1),
        ] {
            std::fs::create_dir_all(d).unwrap();
        }
        layout.teardown(2);
        assert!(!layout.base.exists());
        std::fs::remove_dir(&state).unwrap();
    }

    #[test]
    fn overlay_rejects_separator_characters() {
        let storage = Storage {
            lower: Source::directory("/images/a,upperdir=/etc"),
            ..Storage::default()
        };
        assert!(matches!(
            plan(&storage, &layout(), false),
            Err(PlanError::UnsafeOverlayPath(_))
        ));
    }
}
