//! The jail's file tree: what of the host a VMM sees, and where. Only its
//! VM's files are bound in, at short fixed paths:
//!
//! ```text
//! /dev/kvm
//! /kernel, /initrd       a fresh boot (read-only)
//! /snapshot/             a restore: the template (read-only)
//! /disk/0, /disk/1 ...   the VM's disks (read-only unless writable)
//! /vm/                   the VM's sockets (the run directory's `vm/`)
//! ```
//!
//! Everything else (the host's /, /proc, /sys, /dev, other containers) is
//! out of sight. The layout is data, made here and mounted by `inside`.

use std::path::{Path, PathBuf};

use crate::lifecycle::vm_spec::{Source, VmSpec, VM_DIR};

/// One host path bound into the jail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    pub host: PathBuf,
    /// Absolute, inside the jail.
    pub jail: PathBuf,
    pub read_only: bool,
    pub is_dir: bool,
}

#[derive(Debug)]
pub struct Layout {
    pub binds: Vec<Bind>,
    /// The VM's spec with every path as the VMM sees it in the jail.
    pub spec: VmSpec,
}

pub const KVM: &str = "/dev/kvm";
const SOCKETS: &str = "/vm";

impl Layout {
    /// The jail of the VM `spec` describes, whose sockets are all in
    /// `run_dir`'s `vm/` (`run_dir`: the container's directory on the host).
    pub fn of(spec: &VmSpec, run_dir: &Path) -> Layout {
        let mut binds = vec![
            Bind {
                host: KVM.into(),
                jail: KVM.into(),
                read_only: false,
                is_dir: false,
            },
            Bind {
                host: run_dir.join(VM_DIR),
                jail: SOCKETS.into(),
                read_only: false,
                is_dir: true,
            },
        ];
        let mut file = |host: &Path, jail: String, read_only: bool, is_dir: bool| {
            binds.push(Bind {
                host: host.to_path_buf(),
                jail: PathBuf::from(&jail),
                read_only,
                is_dir,
            });
            PathBuf::from(jail)
        };
        let mut jailed = spec.clone();
        jailed.source = match &spec.source {
            Source::Boot {
                kernel,
                initrd,
                mem_mib,
                pvm_compat,
            } => Source::Boot {
                kernel: file(kernel, "/kernel".into(), true, false),
                initrd: file(initrd, "/initrd".into(), true, false),
                mem_mib: *mem_mib,
                pvm_compat: *pvm_compat,
            },
            Source::Restore { snapshot_dir } => Source::Restore {
                snapshot_dir: file(snapshot_dir, "/snapshot".into(), true, true),
            },
        };
        for (i, (disk, jailed)) in spec.disks.iter().zip(&mut jailed.disks).enumerate() {
            jailed.path = file(&disk.path, format!("/disk/{i}"), disk.read_only, false);
        }
        jailed.uds = in_sockets(&spec.uds);
        jailed.shares = spec.shares.iter().map(|s| in_sockets(s)).collect();
        Layout {
            binds,
            spec: jailed,
        }
    }
}

/// A socket of the VM (however the host reaches it: a long directory is
/// reached through /proc/self/fd) as the jail sees it.
fn in_sockets(socket: &Path) -> PathBuf {
    Path::new(SOCKETS).join(socket.file_name().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::vm_spec::{DiskSpec, NetSpec};

    fn spec(source: Source) -> VmSpec {
        VmSpec {
            source,
            disks: vec![
                DiskSpec {
                    path: "/store/img.ext4".into(),
                    read_only: true,
                },
                DiskSpec {
                    path: "/run/c1/scratch.ext4".into(),
                    read_only: false,
                },
            ],
            shares: vec!["/proc/self/fd/7/fs-0.sock".into()],
            uds: "/run/c1/vm/vsock.sock".into(),
            net: Some(NetSpec {
                tap_name: "bh0".into(),
                mac: [2, 0, 0, 0, 0, 1],
            }),
        }
    }

    #[test]
    fn a_restore_sees_the_template_its_disks_and_its_run_dir_only() {
        let layout = Layout::of(
            &spec(Source::Restore {
                snapshot_dir: "/var/lib/t/abc".into(),
            }),
            Path::new("/run/c1"),
        );
        let binds: Vec<_> = layout
            .binds
            .iter()
            .map(|b| {
                (
                    b.host.to_str().unwrap(),
                    b.jail.to_str().unwrap(),
                    b.read_only,
                )
            })
            .collect();
        assert_eq!(
            binds,
            [
                ("/dev/kvm", "/dev/kvm", false),
                ("/run/c1/vm", "/vm", false),
                ("/var/lib/t/abc", "/snapshot", true),
                ("/store/img.ext4", "/disk/0", true),
                ("/run/c1/scratch.ext4", "/disk/1", false),
            ]
        );
        let s = &layout.spec;
        assert!(
            matches!(&s.source, Source::Restore { snapshot_dir } if snapshot_dir == Path::new("/snapshot"))
        );
        assert_eq!(s.uds, Path::new("/vm/vsock.sock"));
        assert_eq!(s.shares, [PathBuf::from("/vm/fs-0.sock")]);
        assert_eq!(s.disks[1].path, Path::new("/disk/1"));
        assert!(!s.disks[1].read_only);
    }

    #[test]
    fn a_fresh_boot_sees_its_kernel_and_initrd_read_only() {
        let layout = Layout::of(
            &spec(Source::Boot {
                kernel: "/cache/vmlinux".into(),
                initrd: "/cache/agent.cpio".into(),
                mem_mib: 256,
                pvm_compat: true,
            }),
            Path::new("/run/c1"),
        );
        let kernel = layout.binds.iter().find(|b| b.jail == Path::new("/kernel"));
        assert_eq!(
            kernel.map(|b| (b.host.as_path(), b.read_only)),
            Some((Path::new("/cache/vmlinux"), true))
        );
        match &layout.spec.source {
            Source::Boot {
                kernel,
                initrd,
                mem_mib,
                pvm_compat,
            } => {
                assert_eq!(kernel, Path::new("/kernel"));
                assert_eq!(initrd, Path::new("/initrd"));
                assert_eq!((*mem_mib, *pvm_compat), (256, true));
            }
            other => panic!("{other:?}"),
        }
    }
}
