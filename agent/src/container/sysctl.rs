//! OCI `linux.sysctl`: kernel parameters written by the init under the
//! container's own /proc/sys, so namespaced ones (net.*, kernel.domainname,
//! kernel.shm*, ...) land in the container's namespaces. Others change the
//! guest kernel, which is the container's alone: the VM is the boundary,
//! so they are not refused as runc refuses them.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum SysctlError {
    #[error("sysctl {0:?} contains a NUL byte")]
    Nul(String),
    #[error("cannot set sysctl {name} to {value:?}: {source}")]
    Write {
        name: String,
        value: String,
        source: Errno,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Sysctl {
    name: String,
    value: String,
    /// `/proc/sys/net/ipv4/ip_forward` for `net.ipv4.ip_forward`.
    path: CString,
}

/// The sysctls, in name order, ready for the init.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sysctls(Vec<Sysctl>);

/// Where `name` lives under /proc/sys.
pub fn proc_path(name: &str) -> String {
    format!("/proc/sys/{}", name.replace('.', "/"))
}

impl Sysctls {
    /// The spec's names were checked (dotted, no `/`, no `..`) by its
    /// validation.
    pub fn new(sysctls: &BTreeMap<String, String>) -> Result<Sysctls, SysctlError> {
        sysctls
            .iter()
            .map(|(name, value)| {
                if value.contains('\0') {
                    return Err(SysctlError::Nul(name.clone()));
                }
                let path =
                    CString::new(proc_path(name)).map_err(|_| SysctlError::Nul(name.clone()))?;
                Ok(Sysctl {
                    name: name.clone(),
                    value: value.clone(),
                    path,
                })
            })
            .collect::<Result<_, _>>()
            .map(Sysctls)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Writes each value, in one write(2): procfs parses a sysctl per
    /// write, so a value cut in two would be two values. On failure, the
    /// index of the sysctl. Allocation-free.
    pub fn apply(&self) -> Result<(), (usize, Errno)> {
        for (i, s) in self.0.iter().enumerate() {
            // SAFETY: a NUL-terminated path the agent prepared.
            let raw = unsafe {
                libc::open(
                    s.path.as_ptr(),
                    libc::O_WRONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
                )
            };
            if raw < 0 {
                return Err((i, Errno::last()));
            }
            // SAFETY: open just returned this descriptor; we own it.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            let bytes = s.value.as_bytes();
            // SAFETY: writes from a live slice to a descriptor we own.
            let n = unsafe { libc::write(fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
            match n {
                n if n < 0 => return Err((i, Errno::last())),
                n if n as usize != bytes.len() => return Err((i, Errno::EIO)),
                _ => {}
            }
        }
        Ok(())
    }

    pub fn error(&self, index: usize, source: Errno) -> Option<SysctlError> {
        let s = self.0.get(index)?;
        Some(SysctlError::Write {
            name: s.name.clone(),
            value: s.value.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_proc_paths_in_order() {
        let map: BTreeMap<String, String> = [
            ("net.ipv4.ip_forward".to_string(), "1".to_string()),
            ("kernel.domainname".to_string(), "example.org".to_string()),
        ]
        .into_iter()
        .collect();
        let s = Sysctls::new(&map).unwrap();
        assert_eq!(s.0[0].path.as_bytes(), b"/proc/sys/kernel/domainname");
        assert_eq!(s.0[1].path.as_bytes(), b"/proc/sys/net/ipv4/ip_forward");
        assert_eq!(
            s.error(1, Errno::EACCES).unwrap().to_string(),
            "cannot set sysctl net.ipv4.ip_forward to \"1\": EACCES: Permission denied"
        );
        assert!(s.error(2, Errno::EACCES).is_none());
        let bad: BTreeMap<String, String> = [("kernel.x".to_string(), "a\0b".to_string())]
            .into_iter()
            .collect();
        assert!(matches!(Sysctls::new(&bad), Err(SysctlError::Nul(n)) if n == "kernel.x"));
    }

    #[test]
    fn a_missing_sysctl_fails_at_its_index() {
        let map: BTreeMap<String, String> = [("kernel.no_such_knob".to_string(), "1".to_string())]
            .into_iter()
            .collect();
        let s = Sysctls::new(&map).unwrap();
        assert_eq!(s.apply(), Err((0, Errno::ENOENT)));
    }
}
