//! The container's root filesystem: image + scratch overlay (or the
//! image in place), volumes, /proc, /sys, and the switch into it.

use std::path::{Component, Path, PathBuf};

use bulkhead_protocol::{Source, Storage, Volume};
use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use thiserror::Error;

use super::devices::dev_plan;
use super::fsops::FsOp;
use super::mount_options::{self, MountOptions, OptionError};
use super::subpath::Resolved;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("path {0:?} cannot be used in overlay options (contains ',', ':' or '\\')")]
    UnsafeOverlayPath(String),
    #[error("volume {destination}: {source}")]
    Option {
        destination: String,
        source: OptionError,
    },
    #[error("volume {destination}: cannot find subpath {subpath:?} in its source: {source}")]
    Subpath {
        destination: String,
        subpath: String,
        source: Errno,
    },
    #[error(
        "volume {destination}: cannot place its mount point inside the container's root: {reason}"
    )]
    Destination { destination: String, reason: String },
    #[error("the image's /{0} is a symlink; it must be a directory")]
    SystemLink(&'static str),
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

/// Changes the flags of the mount at `target`: how a bind gets them (a
/// bind mount itself ignores every flag but MS_REC).
fn remount(target: PathBuf, flags: MsFlags) -> FsOp {
    FsOp::Mount {
        source: None,
        target,
        fstype: None,
        flags: MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags,
        data: None,
    }
}

/// Mounts `source` at `mount_point` with `flags` (and `data`, for a
/// tmpfs). Directories are bound there: the in-place root must be a mount
/// point of its own.
fn mount_at(
    source: &Source,
    mount_point: PathBuf,
    flags: MsFlags,
    data: Option<&str>,
    ops: &mut Vec<FsOp>,
) {
    match source {
        Source::Directory { path } => {
            ops.push(mkdir(mount_point.clone()));
            ops.push(bind(PathBuf::from(path), mount_point));
        }
        Source::BlockDevice { path, fs_type } => {
            ops.push(FsOp::AwaitDisk {
                device: PathBuf::from(path),
            });
            ops.push(mkdir(mount_point.clone()));
            ops.push(fs_mount(path, mount_point, fs_type, flags, data));
        }
        // No wait: virtio-fs devices are probed at boot (a template's
        // slots too), and the backend is connected before the vCPUs run.
        // The host's virtiofsd enforces read-only; MS_RDONLY here makes
        // writes fail early with EROFS instead of at the backend.
        Source::Virtiofs { tag } => {
            ops.push(mkdir(mount_point.clone()));
            ops.push(fs_mount(tag, mount_point, "virtiofs", flags, data));
        }
        Source::Tmpfs => {
            ops.push(mkdir(mount_point.clone()));
            ops.push(fs_mount("tmpfs", mount_point, "tmpfs", flags, data));
        }
    }
}

/// Makes `source` available as a directory: block devices, virtio-fs
/// shares and tmpfs are mounted at `mount_point`, directories are used in
/// place.
fn materialize(
    source: &Source,
    mount_point: PathBuf,
    flags: MsFlags,
    data: Option<&str>,
    ops: &mut Vec<FsOp>,
) -> PathBuf {
    if let Source::Directory { path } = source {
        return PathBuf::from(path);
    }
    mount_at(source, mount_point.clone(), flags, data, ops);
    mount_point
}

/// A volume's options, read-only when either its `read_only` or its
/// options say so (an `rw` option does not undo `read_only`).
fn volume_options(v: &Volume) -> Result<MountOptions, PlanError> {
    let mut options =
        mount_options::parse(&v.options, v.source == Source::Tmpfs).map_err(|source| {
            PlanError::Option {
                destination: v.destination.clone(),
                source,
            }
        })?;
    if v.read_only {
        options.flags |= MsFlags::MS_RDONLY;
    }
    Ok(options)
}

/// The sub-path as a relative path of normal components; `None` when it
/// names the whole source (empty, or only `.`).
fn subpath(v: &Volume) -> Option<PathBuf> {
    let path: PathBuf = Path::new(v.subpath.as_deref()?)
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect();
    (!path.as_os_str().is_empty()).then_some(path)
}

/// Where the writable volumes of `storage` are in the agent's view: their
/// mount points, or the directories used in place; and an in-place root,
/// whose writes are as much the user's data.
pub fn writable_volumes(storage: &Storage, layout: &Layout) -> Vec<PathBuf> {
    let root = (storage.in_place && !storage.read_only_root).then(|| layout.rootfs());
    storage
        .volumes
        .iter()
        .enumerate()
        .filter(|(_, v)| {
            // A spec with bad options never gets this far.
            volume_options(v).is_ok_and(|o| !o.flags.contains(MsFlags::MS_RDONLY))
        })
        .map(|(i, v)| match &v.source {
            Source::Directory { path } => PathBuf::from(path),
            Source::BlockDevice { .. } | Source::Virtiofs { .. } | Source::Tmpfs => {
                layout.volume(i)
            }
        })
        .chain(root)
        .collect()
}

fn overlay_path(p: &Path) -> Result<String, PlanError> {
    let s = p.display().to_string();
    if s.contains([',', ':', '\\']) {
        return Err(PlanError::UnsafeOverlayPath(s));
    }
    Ok(s)
}

/// One volume as the init binds it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct VolumeBind {
    destination: String,
    /// The volume's directory in the agent's view.
    root: PathBuf,
    subpath: Option<PathBuf>,
    target: PathBuf,
    /// Flags for the bind's remount; none when it needs none.
    flags: MsFlags,
}

impl VolumeBind {
    fn ops(
        &self,
        resolve: &dyn Fn(&Path, &Path) -> Result<Resolved, Errno>,
        ops: &mut Vec<FsOp>,
    ) -> Result<(), PlanError> {
        let source = match &self.subpath {
            None => Resolved {
                path: self.root.clone(),
                is_dir: true,
            },
            Some(sub) => resolve(&self.root, sub).map_err(|source| PlanError::Subpath {
                destination: self.destination.clone(),
                subpath: sub.display().to_string(),
                source,
            })?,
        };
        let target = self.target.clone();
        if source.is_dir {
            ops.push(FsOp::MkdirAll {
                path: target.clone(),
            });
        } else {
            // A file can only be bound onto a file.
            if let Some(parent) = target.parent() {
                ops.push(FsOp::MkdirAll {
                    path: parent.to_path_buf(),
                });
            }
            ops.push(FsOp::CreateFile {
                path: target.clone(),
            });
        }
        ops.push(bind(source.path, target.clone()));
        if !self.flags.is_empty() {
            ops.push(remount(target, self.flags));
        }
        Ok(())
    }
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
    /// The start of the init's part: /proc, /sys, cgroup2, /dev.
    system: Vec<FsOp>,
    volumes: Vec<VolumeBind>,
    /// The root, when it is to be read-only.
    read_only_root: Option<PathBuf>,
    /// The container's root in the agent's view.
    rootfs: PathBuf,
}

impl Plan {
    /// Moves every mount point to where the container will see it, inside
    /// its root: the image's symlinks on the way resolve as if the root
    /// were `/` (securejoin, as runc and Kata do), so a link such as
    /// `/data -> /` or `-> ../../..` cannot make the init create or mount
    /// over the agent's own files. A destination under an earlier volume
    /// resolves inside that volume, which the init will have bound there.
    /// An image whose /proc, /sys or /dev is a symlink is refused, as runc
    /// refuses it.
    ///
    /// Call it once [`storage`](Self::storage) is mounted, before
    /// [`container`](Self::container).
    pub fn confine_mount_points(&mut self) -> Result<(), PlanError> {
        for dir in SYSTEM_DIRS {
            let path = self.rootfs.join(dir);
            if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
                return Err(PlanError::SystemLink(dir));
            }
        }
        for i in 0..self.volumes.len() {
            let (earlier, rest) = self.volumes.split_at_mut(i);
            let v = &mut rest[0];
            v.target = confined_target(&self.rootfs, earlier, v)?;
        }
        Ok(())
    }

    /// The mounts the container's init makes in its new namespace: /proc,
    /// /sys, cgroup2, /dev, then the volume binds (last, so they may sit
    /// anywhere, even under /dev), then the read-only remount of the root
    /// (after the binds, so their mount points can still be made; a
    /// remount changes one mount, so the volumes keep their own modes).
    ///
    /// Call it once [`storage`](Self::storage) is mounted: a sub-path's
    /// kind (directory or not) is looked up through `resolve` (normally
    /// [`subpath::resolve`](super::subpath::resolve)).
    pub fn container(
        &self,
        resolve: impl Fn(&Path, &Path) -> Result<Resolved, Errno>,
    ) -> Result<Vec<FsOp>, PlanError> {
        let mut ops = self.system.clone();
        for v in &self.volumes {
            v.ops(&resolve, &mut ops)?;
        }
        if let Some(root) = &self.read_only_root {
            ops.push(remount(root.clone(), MsFlags::MS_RDONLY));
        }
        Ok(ops)
    }
}

/// What the init mounts on in the image's root, which must be directories.
const SYSTEM_DIRS: [&str; 3] = ["proc", "sys", "dev"];

/// Where `v` is to be bound, with no symlink left in the part that exists:
/// in the image, or inside the last of the `earlier` volumes it lies under
/// (by its destination, or by where the image's links lead).
fn confined_target(
    rootfs: &Path,
    earlier: &[VolumeBind],
    v: &VolumeBind,
) -> Result<PathBuf, PlanError> {
    let fail = |e: std::io::Error| PlanError::Destination {
        destination: v.destination.clone(),
        reason: e.to_string(),
    };
    let destination = lexical(&v.destination);
    let in_image = safe_path::scoped_join(rootfs, &destination).map_err(fail)?;
    let under = earlier.iter().rev().find_map(|e| {
        destination
            .strip_prefix(lexical(&e.destination))
            .or_else(|_| in_image.strip_prefix(&e.target))
            .ok()
            .map(|rest| (e, rest.to_path_buf()))
    });
    let Some((volume, rest)) = under else {
        return Ok(in_image);
    };
    // The volume's own links stay inside it: the init cannot resolve them
    // against the merged view, so they are never followed out of it.
    let base = match &volume.subpath {
        Some(sub) => safe_path::scoped_join(&volume.root, sub),
        None => volume.root.canonicalize(),
    }
    .map_err(fail)?;
    let inside = safe_path::scoped_join(&base, &rest).map_err(fail)?;
    let rest = inside.strip_prefix(&base).unwrap_or(Path::new(""));
    Ok(volume.target.join(rest))
}

/// `destination` as normal components, `..` stopping at the root: what the
/// container means by it before any link is followed.
fn lexical(destination: &str) -> PathBuf {
    let mut path = PathBuf::new();
    for c in Path::new(destination).components() {
        match c {
            Component::Normal(n) => path.push(n),
            Component::ParentDir => {
                path.pop();
            }
            _ => {}
        }
    }
    path
}

/// Plans the mounts for `storage` at `layout`.
pub fn plan(storage: &Storage, layout: &Layout, cgroup_ns: bool) -> Result<Plan, PlanError> {
    let mut ops = vec![mkdir(layout.base.clone())];
    let rootfs = layout.rootfs();
    if storage.in_place {
        // Writable even for a read-only root: mount points for /proc,
        // /dev and the volumes may have to be made in it first.
        mount_at(
            &storage.lower,
            rootfs.clone(),
            MsFlags::empty(),
            None,
            &mut ops,
        );
    } else {
        overlay_root(storage, layout, &mut ops)?;
    }
    let options = storage
        .volumes
        .iter()
        .map(volume_options)
        .collect::<Result<Vec<_>, _>>()?;
    let mut volumes = Vec::new();
    for (i, (v, o)) in storage.volumes.iter().zip(options).enumerate() {
        // A tmpfs is made with all its options; other sources get only
        // read-only (so writes fail early) and the rest on their bind.
        // A tmpfs to copy up into stays writable here; its bind is still
        // remounted read-only for the container.
        let (flags, data) = match v.source {
            Source::Tmpfs if o.copy_up => {
                (o.flags.difference(MsFlags::MS_RDONLY), o.data.as_deref())
            }
            Source::Tmpfs => (o.flags, o.data.as_deref()),
            _ => (o.flags & MsFlags::MS_RDONLY, None),
        };
        let destination = v.destination.trim_start_matches('/');
        let root = materialize(&v.source, layout.volume(i), flags, data, &mut ops);
        if o.copy_up {
            // The root's own files there: earlier volumes are bound only
            // by the init, after this.
            ops.push(FsOp::CopyUp {
                root: rootfs.clone(),
                path: PathBuf::from(destination),
                to: root.clone(),
            });
        }
        volumes.push(VolumeBind {
            destination: v.destination.clone(),
            root,
            subpath: subpath(v),
            target: rootfs.join(destination),
            flags: o.flags,
        });
    }
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
    Ok(Plan {
        storage: storage_ops,
        system: ops,
        volumes,
        read_only_root: storage.read_only_root.then_some(rootfs.clone()),
        rootfs,
    })
}

/// The image as the read-only lower layer of an overlay whose writes go to
/// the scratch (a disk, or a tmpfs without one).
fn overlay_root(storage: &Storage, layout: &Layout, ops: &mut Vec<FsOp>) -> Result<(), PlanError> {
    let lower = materialize(
        &storage.lower,
        layout.lower(),
        MsFlags::MS_RDONLY,
        None,
        ops,
    );
    let scratch = match &storage.scratch {
        Some(source) => materialize(source, layout.scratch(), MsFlags::empty(), None, ops),
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
        rootfs,
        "overlay",
        MsFlags::empty(),
        Some(&data),
    ));
    Ok(())
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

    /// The init's part of a plan without sub-path volumes.
    fn container(plan: &Plan) -> Vec<FsOp> {
        plan.container(|root, sub| panic!("looked up {root:?} {sub:?}"))
            .unwrap()
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
                        FsOp::Mkdir { path, .. } | FsOp::MkdirAll { path }
                        | FsOp::CreateFile { path } if path == target)),
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
        let m = mounts(&container(&plan));
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
        assert!(!container(&plan)
            .iter()
            .any(|op| matches!(op, FsOp::AwaitDisk { .. })));
        assert_eq!(
            overlay_data(&plan.storage),
            "lowerdir=/run/bulkhead/c1/lower,upperdir=/run/bulkhead/c1/scratch/upper,\
             workdir=/run/bulkhead/c1/scratch/work"
        );
        assert_created_before_mounted(&[], &plan.storage);
        assert_created_before_mounted(&plan.storage, &container(&plan));
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
        assert!(!mounts(&container(&plan))
            .iter()
            .any(|(_, f)| f == "cgroup2"));
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
        let m = mounts(&container(&plan));
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
        assert!(container(&plan).contains(&FsOp::Mount {
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
        let m = mounts(&container(&plan));
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
        assert!(container(&plan).contains(&FsOp::Mount {
            source: Some("/run/bulkhead/c1/volume0".into()),
            target: "/run/bulkhead/c1/rootfs/srv".into(),
            fstype: None,
            flags: MsFlags::MS_BIND | MsFlags::MS_REC,
            data: None,
        }));
        assert_created_before_mounted(&[], &plan.storage);
        assert_created_before_mounted(&plan.storage, &container(&plan));

        // Shutdown flushes the writable share like a writable disk.
        assert_eq!(
            writable_volumes(&storage, &layout()),
            [
                PathBuf::from("/run/bulkhead/c1/volume1"),
                PathBuf::from("/run/bulkhead/c1/volume2"),
            ]
        );
    }

    fn volume(source: Source, destination: &str) -> Volume {
        Volume::new(source, destination, false)
    }

    #[test]
    fn in_place_root_is_the_lower_itself() {
        for (lower, expect) in [
            (
                Source::directory("/bundle/rootfs"),
                ("/run/bulkhead/c1/rootfs".to_string(), "bind".to_string()),
            ),
            (
                Source::virtiofs("share0"),
                ("/run/bulkhead/c1/rootfs".into(), "virtiofs".into()),
            ),
        ] {
            let storage = Storage {
                lower: lower.clone(),
                in_place: true,
                // Ignored: nothing waits for it or mounts it.
                scratch: Some(Source::block_device("/dev/vdb")),
                ..Storage::default()
            };
            let plan = plan(&storage, &layout(), false).unwrap();
            assert_eq!(mounts(&plan.storage), [expect], "{lower:?}");
            assert!(!plan
                .storage
                .iter()
                .any(|op| matches!(op, FsOp::AwaitDisk { .. })));
            // Writable in the agent's view (the mount points are made in
            // it), and flushed at shutdown like a volume.
            assert!(plan.storage.iter().all(|op| !matches!(op,
                FsOp::Mount { flags, .. } if flags.contains(MsFlags::MS_RDONLY))));
            assert_eq!(
                writable_volumes(&storage, &layout()),
                [PathBuf::from("/run/bulkhead/c1/rootfs")]
            );
            let c = container(&plan);
            assert!(!c.iter().any(|op| matches!(op,
                FsOp::Mount { flags, .. } if flags.contains(MsFlags::MS_REMOUNT))));
            assert_created_before_mounted(&[], &plan.storage);
            assert_created_before_mounted(&plan.storage, &c);
        }
        assert!(plan(
            &Storage {
                lower: Source::directory("/bundle/rootfs"),
                in_place: true,
                ..Storage::default()
            },
            &layout(),
            false
        )
        .unwrap()
        .storage
        .contains(&bind(
            "/bundle/rootfs".into(),
            "/run/bulkhead/c1/rootfs".into()
        )));
    }

    #[test]
    fn read_only_root_is_remounted_after_the_volumes() {
        let mut storage = Storage {
            read_only_root: true,
            volumes: vec![volume(Source::directory("/host/data"), "/data")],
            ..Storage::default()
        };
        for in_place in [false, true] {
            storage.in_place = in_place;
            let plan = plan(&storage, &layout(), false).unwrap();
            let c = container(&plan);
            let m = mounts(&c);
            assert_eq!(
                m[m.len() - 2..],
                [
                    (
                        "/run/bulkhead/c1/rootfs/data".to_string(),
                        "bind".to_string()
                    ),
                    ("/run/bulkhead/c1/rootfs".into(), "remount".into()),
                ]
            );
            // Only the root: MS_REC would take the volumes with it.
            assert_eq!(
                c.last(),
                Some(&FsOp::Mount {
                    source: None,
                    target: "/run/bulkhead/c1/rootfs".into(),
                    fstype: None,
                    flags: MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                    data: None,
                })
            );
            // A read-only in-place root has nothing to flush.
            assert_eq!(
                writable_volumes(&storage, &layout()),
                [PathBuf::from("/host/data")]
            );
        }
    }

    #[test]
    fn subpaths_bind_files_onto_files_and_directories_onto_directories() {
        let mut hosts = volume(Source::virtiofs("share0"), "/etc/hosts");
        hosts.subpath = Some("hosts".into());
        hosts.read_only = true;
        let mut conf = volume(Source::directory("/host/etc"), "/srv/conf");
        conf.subpath = Some("./app/conf".into());
        let mut whole = volume(Source::directory("/host/all"), "/all");
        whole.subpath = Some(".".into());
        let storage = Storage {
            volumes: vec![hosts, conf, whole],
            ..Storage::default()
        };
        let plan = plan(&storage, &layout(), false).unwrap();
        let looked_up = std::cell::RefCell::new(Vec::new());
        let c = plan
            .container(|root, sub| {
                looked_up
                    .borrow_mut()
                    .push((root.to_path_buf(), sub.to_path_buf()));
                Ok(Resolved {
                    path: root.join(sub),
                    is_dir: sub != Path::new("hosts"),
                })
            })
            .unwrap();
        assert_eq!(
            looked_up.into_inner(),
            [
                ("/run/bulkhead/c1/volume0".into(), "hosts".into()),
                ("/host/etc".into(), "app/conf".into()),
            ]
        );
        let r = |p: &str| PathBuf::from("/run/bulkhead/c1/rootfs").join(p);
        let tail = &c[c.len() - 8..];
        assert_eq!(
            tail,
            [
                FsOp::MkdirAll { path: r("etc") },
                FsOp::CreateFile {
                    path: r("etc/hosts")
                },
                bind("/run/bulkhead/c1/volume0/hosts".into(), r("etc/hosts")),
                remount(r("etc/hosts"), MsFlags::MS_RDONLY),
                FsOp::MkdirAll {
                    path: r("srv/conf")
                },
                bind("/host/etc/app/conf".into(), r("srv/conf")),
                FsOp::MkdirAll { path: r("all") },
                bind("/host/all".into(), r("all")),
            ]
        );
        assert_created_before_mounted(&plan.storage, &c);

        let missing = plan.container(|_, _| Err(Errno::ENOENT)).unwrap_err();
        assert_eq!(
            missing.to_string(),
            "volume /etc/hosts: cannot find subpath \"hosts\" in its source: \
             ENOENT: No such file or directory"
        );
    }

    #[test]
    fn volume_options_become_flags_and_tmpfs_data() {
        let mut tmp = volume(Source::Tmpfs, "/tmp");
        tmp.options = ["nosuid", "nodev", "size=64m", "mode=1777", "rbind"]
            .map(String::from)
            .to_vec();
        let mut data = volume(Source::block_device("/dev/vdc"), "/data");
        data.options = ["noexec", "ro", "relatime", "rprivate"]
            .map(String::from)
            .to_vec();
        let mut rw = volume(Source::directory("/host/rw"), "/rw");
        rw.options = vec!["rw".into()];
        let storage = Storage {
            volumes: vec![tmp, data, rw],
            ..Storage::default()
        };
        let plan = plan(&storage, &layout(), false).unwrap();
        // The tmpfs is made with everything; the disk only read-only.
        assert!(plan.storage.contains(&fs_mount(
            "tmpfs",
            "/run/bulkhead/c1/volume0".into(),
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("size=64m,mode=1777"),
        )));
        assert!(plan.storage.contains(&fs_mount(
            "/dev/vdc",
            "/run/bulkhead/c1/volume1".into(),
            "ext4",
            MsFlags::MS_RDONLY,
            None,
        )));
        let c = container(&plan);
        let r = |p: &str| PathBuf::from("/run/bulkhead/c1/rootfs").join(p);
        assert!(c.contains(&remount(r("tmp"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV)));
        assert!(c.contains(&remount(
            r("data"),
            MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY | MsFlags::MS_RELATIME
        )));
        // Nothing to change on a plain writable bind.
        assert!(!c.iter().any(|op| matches!(op,
            FsOp::Mount { target, flags, .. }
                if *target == r("rw") && flags.contains(MsFlags::MS_REMOUNT))));
        assert_eq!(
            writable_volumes(&storage, &layout()),
            [
                PathBuf::from("/run/bulkhead/c1/volume0"),
                PathBuf::from("/host/rw")
            ]
        );

        let mut bad = volume(Source::directory("/host/x"), "/x");
        bad.options = vec!["ro".into(), "tmpcopyup".into()];
        let err = plan_err(vec![bad]);
        assert_eq!(
            err.to_string(),
            "volume /x: unsupported mount option \"tmpcopyup\""
        );
        let mut bad = volume(Source::Tmpfs, "/t");
        bad.options = vec!["size=1m,uid=0".into()];
        assert!(matches!(
            plan_err(vec![bad]),
            PlanError::Option { destination, source: OptionError::BadValue(_) } if destination == "/t"
        ));
    }

    #[test]
    fn tmpcopyup_copies_the_root_into_its_fresh_tmpfs() {
        let mut run = volume(Source::Tmpfs, "/run");
        run.options = ["tmpcopyup", "ro", "size=8m"].map(String::from).to_vec();
        let mut tmp = volume(Source::Tmpfs, "/tmp");
        tmp.options = vec!["size=8m".into()];
        let mut etc = volume(Source::Tmpfs, "/etc");
        etc.options = vec!["tmpcopyup".into(), "notmpcopyup".into()];
        for in_place in [false, true] {
            let storage = Storage {
                lower: Source::directory("/images/app"),
                in_place,
                volumes: vec![run.clone(), tmp.clone(), etc.clone()],
                ..Storage::default()
            };
            let plan = plan(&storage, &layout(), false).unwrap();
            let copy_ups: Vec<_> = plan
                .storage
                .iter()
                .enumerate()
                .filter(|(_, op)| matches!(op, FsOp::CopyUp { .. }))
                .collect();
            assert_eq!(copy_ups.len(), 1, "{:?}", plan.storage);
            let (at, op) = copy_ups[0];
            assert_eq!(
                *op,
                FsOp::CopyUp {
                    root: "/run/bulkhead/c1/rootfs".into(),
                    path: "run".into(),
                    to: "/run/bulkhead/c1/volume0".into(),
                }
            );
            // Right after its tmpfs is mounted, writable (the root was
            // mounted before), and only the bind is read-only.
            assert_eq!(
                plan.storage[at - 1],
                fs_mount(
                    "tmpfs",
                    "/run/bulkhead/c1/volume0".into(),
                    "tmpfs",
                    MsFlags::empty(),
                    Some("size=8m"),
                )
            );
            let root_mounted = plan.storage.iter().position(
                |op| matches!(op, FsOp::Mount { target, .. } if *target == layout().rootfs()),
            );
            assert!(root_mounted.unwrap() < at);
            let r = |p: &str| PathBuf::from("/run/bulkhead/c1/rootfs").join(p);
            assert!(container(&plan).contains(&remount(r("run"), MsFlags::MS_RDONLY)));
        }
        // Still a tmpfs-only option.
        let mut bad = volume(Source::virtiofs("share0"), "/srv");
        bad.options = vec!["tmpcopyup".into()];
        assert_eq!(
            plan_err(vec![bad]).to_string(),
            "volume /srv: unsupported mount option \"tmpcopyup\""
        );
    }

    fn plan_err(volumes: Vec<Volume>) -> PlanError {
        let storage = Storage {
            volumes,
            ..Storage::default()
        };
        plan(&storage, &layout(), false).unwrap_err()
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

    #[test]
    fn mount_points_stay_inside_the_root_whatever_the_links_say() {
        use std::os::unix::fs::symlink;
        let tmp = std::env::temp_dir().join(format!("bulkhead-confine-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).unwrap();
        let tmp = tmp.canonicalize().unwrap();
        let layout = Layout::new(&tmp, "c1");
        let (rootfs, host) = (layout.rootfs(), tmp.join("host"));
        for dir in [rootfs.join("opt"), rootfs.join("proc"), host.join("inner")] {
            std::fs::create_dir_all(dir).unwrap();
        }
        symlink("/", rootfs.join("escape")).unwrap();
        symlink("../../../../../../etc", rootfs.join("up")).unwrap();
        symlink("/opt", rootfs.join("srv")).unwrap();
        symlink("/nowhere/deep", rootfs.join("dangling")).unwrap();
        // A volume's own link out of it.
        symlink("/", host.join("out")).unwrap();
        let storage = Storage {
            volumes: vec![
                volume(Source::Tmpfs, "/escape/data"),
                volume(Source::Tmpfs, "/up/x"),
                volume(Source::directory(host.to_str().unwrap()), "/srv"),
                volume(Source::Tmpfs, "/srv/out/y"),
                volume(Source::Tmpfs, "/dangling"),
                volume(Source::Tmpfs, "/opt/inner/z"),
            ],
            ..Storage::default()
        };
        let mut plan = plan(&storage, &layout, false).unwrap();
        plan.confine_mount_points().unwrap();
        let ops = plan
            .container(|root, sub| {
                Ok(Resolved {
                    path: root.join(sub),
                    is_dir: true,
                })
            })
            .unwrap();
        let binds: Vec<PathBuf> = ops
            .iter()
            .filter_map(|op| match op {
                FsOp::Mount { target, flags, .. }
                    if *flags == MsFlags::MS_BIND | MsFlags::MS_REC =>
                {
                    Some(target.clone())
                }
                _ => None,
            })
            .collect();
        let r = |p: &str| rootfs.join(p);
        assert_eq!(
            binds[binds.len() - 6..],
            [
                r("data"),
                r("etc/x"),
                r("opt"),
                // Inside the volume bound at /opt: its link to / is its own root.
                r("opt/y"),
                r("nowhere/deep"),
                // Where the image's link put /srv's volume, so inside it too.
                r("opt/inner/z"),
            ]
        );
        assert!(ops.iter().all(|op| match op {
            FsOp::MkdirAll { path } | FsOp::CreateFile { path } => path.starts_with(&tmp),
            _ => true,
        }));

        std::fs::remove_dir(rootfs.join("proc")).unwrap();
        symlink("/", rootfs.join("proc")).unwrap();
        assert_eq!(
            plan.confine_mount_points(),
            Err(PlanError::SystemLink("proc"))
        );
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
