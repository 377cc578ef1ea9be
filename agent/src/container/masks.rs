//! OCI `linux.maskedPaths` and `linux.readonlyPaths`: parts of the
//! container's own /proc and /sys (and anything else listed) hidden or
//! frozen, as runc does it. They name paths in the container's view, so
//! the init applies them after the pivot, allocation-free, on paths the
//! agent prepared.

use std::ffi::{CStr, CString};

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum PathError {
    #[error("{field} entry {path:?} contains a NUL byte")]
    Nul { field: &'static str, path: String },
    #[error("cannot mask {path}: {source}")]
    Mask { path: String, source: Errno },
    #[error("cannot make {path} read-only: {source}")]
    ReadOnly { path: String, source: Errno },
}

/// The masked and read-only paths, ready for the init.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathRules {
    masked: Vec<CString>,
    readonly: Vec<CString>,
}

fn cstrings(field: &'static str, paths: &[String]) -> Result<Vec<CString>, PathError> {
    paths
        .iter()
        .map(|p| {
            CString::new(p.as_str()).map_err(|_| PathError::Nul {
                field,
                path: p.clone(),
            })
        })
        .collect()
}

/// The per-mount flags a remount must repeat: a bind of /proc/sys is
/// nosuid,nodev,noexec like /proc, and a remount sets every flag anew.
const KEPT_FLAGS: [(libc::c_ulong, MsFlags); 6] = [
    (libc::ST_NOSUID, MsFlags::MS_NOSUID),
    (libc::ST_NODEV, MsFlags::MS_NODEV),
    (libc::ST_NOEXEC, MsFlags::MS_NOEXEC),
    (libc::ST_NOATIME, MsFlags::MS_NOATIME),
    (libc::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
    (libc::ST_RELATIME, MsFlags::MS_RELATIME),
];

/// The per-mount flags of the mount holding `path`. glibc's statvfs is
/// one statfs(2) here (kernels since 2.6.36 report the flags themselves),
/// so this is allocation-free.
fn mount_flags(path: &CStr) -> Result<MsFlags, Errno> {
    // SAFETY: statvfs is plain data; all-zero is a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a statvfs we own.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return Err(Errno::last());
    }
    let have = st.f_flag;
    Ok(KEPT_FLAGS
        .iter()
        .filter(|(st_flag, _)| have & st_flag != 0)
        .fold(MsFlags::empty(), |acc, (_, ms)| acc | *ms))
}

impl PathRules {
    pub fn new(masked: &[String], readonly: &[String]) -> Result<PathRules, PathError> {
        Ok(PathRules {
            masked: cstrings("linux.maskedPaths", masked)?,
            readonly: cstrings("linux.readonlyPaths", readonly)?,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.masked.is_empty() && self.readonly.is_empty()
    }

    /// Binds each read-only path onto itself and remounts the bind
    /// read-only; missing paths are skipped. On failure, the index of the
    /// path. Allocation-free.
    pub fn apply_readonly(&self) -> Result<(), (usize, Errno)> {
        for (i, path) in self.readonly.iter().enumerate() {
            let path = path.as_c_str();
            let bind = MsFlags::MS_BIND | MsFlags::MS_REC;
            match mount(Some(path), path, None::<&CStr>, bind, None::<&CStr>) {
                Ok(()) => {}
                Err(Errno::ENOENT) => continue,
                Err(e) => return Err((i, e)),
            }
            let kept = mount_flags(path).map_err(|e| (i, e))?;
            let flags =
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_REC;
            mount(
                None::<&CStr>,
                path,
                None::<&CStr>,
                flags | kept,
                None::<&CStr>,
            )
            .map_err(|e| (i, e))?;
        }
        Ok(())
    }

    /// Binds /dev/null over each masked file and an empty read-only tmpfs
    /// over each masked directory; missing paths are skipped. Needs the
    /// container's /dev. On failure, the index of the path.
    /// Allocation-free.
    pub fn apply_masks(&self) -> Result<(), (usize, Errno)> {
        for (i, path) in self.masked.iter().enumerate() {
            let path = path.as_c_str();
            // Trying the bind first saves a stat for files: a file bound
            // onto a directory fails with ENOTDIR, which says which it is.
            let null = mount(
                Some(c"/dev/null"),
                path,
                None::<&CStr>,
                MsFlags::MS_BIND,
                None::<&CStr>,
            );
            match null {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(Errno::ENOTDIR) => mount(
                    Some(c"tmpfs"),
                    path,
                    Some(c"tmpfs"),
                    MsFlags::MS_RDONLY,
                    None::<&CStr>,
                )
                .map_err(|e| (i, e))?,
                Err(e) => return Err((i, e)),
            }
        }
        Ok(())
    }

    pub fn mask_error(&self, index: usize, source: Errno) -> Option<PathError> {
        let path = self.masked.get(index)?.to_string_lossy().into_owned();
        Some(PathError::Mask { path, source })
    }

    pub fn readonly_error(&self, index: usize, source: Errno) -> Option<PathError> {
        let path = self.readonly.get(index)?.to_string_lossy().into_owned();
        Some(PathError::ReadOnly { path, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_keep_their_order_and_name_their_failures() {
        let rules = PathRules::new(
            &["/proc/kcore".into(), "/sys/firmware".into()],
            &["/proc/sys".into()],
        )
        .unwrap();
        assert!(!rules.is_empty());
        assert!(PathRules::new(&[], &[]).unwrap().is_empty());
        assert_eq!(
            rules.mask_error(1, Errno::EPERM).unwrap().to_string(),
            "cannot mask /sys/firmware: EPERM: Operation not permitted"
        );
        assert_eq!(
            rules.readonly_error(0, Errno::EINVAL).unwrap().to_string(),
            "cannot make /proc/sys read-only: EINVAL: Invalid argument"
        );
        assert!(rules.readonly_error(1, Errno::EINVAL).is_none());
        assert!(matches!(
            PathRules::new(&["/a\0b".into()], &[]),
            Err(PathError::Nul {
                field: "linux.maskedPaths",
                ..
            })
        ));
    }

    /// The per-mount options of `mount_point` as /proc/self/mountinfo
    /// lists them.
    fn mountinfo_options(mount_point: &str) -> Vec<String> {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let line = info
            .lines()
            .rfind(|l| l.split(' ').nth(4) == Some(mount_point))
            .unwrap();
        line.split(' ')
            .nth(5)
            .unwrap()
            .split(',')
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn flags_a_remount_must_keep() {
        for (mount_point, c_path) in [("/", c"/"), ("/proc", c"/proc"), ("/dev", c"/dev")] {
            let flags = mount_flags(c_path).unwrap();
            let listed = mountinfo_options(mount_point);
            for (name, flag) in [
                ("nosuid", MsFlags::MS_NOSUID),
                ("nodev", MsFlags::MS_NODEV),
                ("noexec", MsFlags::MS_NOEXEC),
                ("noatime", MsFlags::MS_NOATIME),
                ("relatime", MsFlags::MS_RELATIME),
            ] {
                assert_eq!(
                    flags.contains(flag),
                    listed.iter().any(|o| o == name),
                    "{mount_point}: {name} in {listed:?} vs {flags:?}"
                );
            }
        }
        assert_eq!(mount_flags(c"/nonexistent"), Err(Errno::ENOENT));
    }
}
