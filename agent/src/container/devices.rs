//! The container's minimal /dev: a tmpfs with the OCI default device
//! nodes, its own devpts instance, /dev/shm and the usual symlinks.

use std::path::Path;

use nix::mount::MsFlags;

use super::fsops::FsOp;

/// (name, major, minor) of the OCI default character devices.
pub const DEVICE_NODES: &[(&str, u64, u64)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

const SYMLINKS: &[(&str, &str)] = &[
    ("pts/ptmx", "ptmx"),
    ("/proc/self/fd", "fd"),
    ("/proc/self/fd/0", "stdin"),
    ("/proc/self/fd/1", "stdout"),
    ("/proc/self/fd/2", "stderr"),
    ("/proc/kcore", "core"),
];

/// The operations building /dev at `dev` (the rootfs's dev directory).
/// Nodes are created with mknod rather than bind-mounted from the agent's
/// /dev: one syscall each instead of two or three.
pub fn dev_plan(dev: &Path) -> Vec<FsOp> {
    let tmpfs = |target: &Path, flags: MsFlags, data: &str| FsOp::Mount {
        source: Some("tmpfs".into()),
        target: target.to_path_buf(),
        fstype: Some("tmpfs".into()),
        flags,
        data: Some(data.to_string()),
    };
    let mut ops = vec![
        FsOp::Mkdir {
            path: dev.to_path_buf(),
            mode: 0o755,
        },
        tmpfs(
            dev,
            MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
            "mode=755,size=65536k",
        ),
    ];
    ops.extend(
        DEVICE_NODES
            .iter()
            .map(|&(name, major, minor)| FsOp::Mknod {
                path: dev.join(name),
                mode: 0o666,
                major,
                minor,
            }),
    );
    ops.push(FsOp::Mkdir {
        path: dev.join("pts"),
        mode: 0o755,
    });
    ops.push(FsOp::Mount {
        source: Some("devpts".into()),
        target: dev.join("pts"),
        fstype: Some("devpts".into()),
        flags: MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        data: Some("newinstance,ptmxmode=0666,mode=0620,gid=5".into()),
    });
    ops.extend(SYMLINKS.iter().map(|&(target, link)| FsOp::Symlink {
        target: target.into(),
        link: dev.join(link),
    }));
    let shm = dev.join("shm");
    ops.push(FsOp::Mkdir {
        path: shm.clone(),
        mode: 0o1777,
    });
    ops.push(tmpfs(
        &shm,
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        "mode=1777,size=65536k",
    ));
    // POSIX message queues of the container's own IPC namespace.
    ops.push(FsOp::Mkdir {
        path: dev.join("mqueue"),
        mode: 0o755,
    });
    ops.push(FsOp::Mount {
        source: Some("mqueue".into()),
        target: dev.join("mqueue"),
        fstype: Some("mqueue".into()),
        flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        data: None,
    });
    ops
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn dev_has_the_oci_defaults() {
        let ops = dev_plan(Path::new("/r/dev"));
        let nodes: Vec<_> = ops
            .iter()
            .filter_map(|op| match op {
                FsOp::Mknod {
                    path,
                    mode,
                    major,
                    minor,
                } => Some((path.clone(), *mode, *major, *minor)),
                _ => None,
            })
            .collect();
        assert_eq!(nodes.len(), 6);
        assert!(nodes.contains(&(PathBuf::from("/r/dev/null"), 0o666, 1, 3)));
        assert!(nodes.contains(&(PathBuf::from("/r/dev/tty"), 0o666, 5, 0)));
        assert!(ops.contains(&FsOp::Symlink {
            target: "pts/ptmx".into(),
            link: "/r/dev/ptmx".into()
        }));
        // The tmpfs comes first, so every node lands on it.
        assert!(matches!(&ops[1], FsOp::Mount { target, .. } if target == Path::new("/r/dev")));
    }

    #[test]
    fn devpts_is_a_private_instance() {
        let ops = dev_plan(Path::new("/r/dev"));
        let data = ops
            .iter()
            .find_map(|op| match op {
                FsOp::Mount {
                    fstype: Some(t),
                    data,
                    ..
                } if t == "devpts" => data.clone(),
                _ => None,
            })
            .unwrap();
        assert!(data.contains("newinstance"));
        assert!(data.contains("ptmxmode=0666"));
    }
}
