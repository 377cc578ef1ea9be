//! Capability sets: the OCI defaults, parsing, and applying them.

use std::sync::OnceLock;

use caps::{Capability, CapsHashSet};
use nix::errno::Errno;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum CapError {
    #[error("unknown capability {0:?}")]
    Unknown(String),
    #[error("cannot set capabilities ({what}): {source}")]
    Apply { what: &'static str, source: Errno },
}

/// The OCI / Docker default set.
pub const DEFAULT_CAPABILITIES: &[Capability] = &[
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FSETID,
    Capability::CAP_FOWNER,
    Capability::CAP_MKNOD,
    Capability::CAP_NET_RAW,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
    Capability::CAP_SETFCAP,
    Capability::CAP_SETPCAP,
    Capability::CAP_NET_BIND_SERVICE,
    Capability::CAP_SYS_CHROOT,
    Capability::CAP_KILL,
    Capability::CAP_AUDIT_WRITE,
];

/// The five sets a process gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapabilitySets {
    pub bounding: CapsHashSet,
    pub effective: CapsHashSet,
    pub permitted: CapsHashSet,
    pub inheritable: CapsHashSet,
    pub ambient: CapsHashSet,
}

/// Parses names like `CAP_NET_ADMIN` or `net_admin`.
pub fn parse_capability(name: &str) -> Result<Capability, CapError> {
    let upper = name.trim().to_ascii_uppercase();
    let canonical = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    canonical
        .parse()
        .map_err(|_| CapError::Unknown(name.to_string()))
}

/// The sets for a process running as `uid` with the `requested` bounding
/// set (`None`: the defaults). Like Docker, root gets the set as effective
/// and permitted too; other users start with none (exec would clear them
/// anyway), and inheritable/ambient stay empty.
pub fn capability_sets(requested: Option<&[String]>, uid: u32) -> Result<CapabilitySets, CapError> {
    let bounding: CapsHashSet = match requested {
        None => DEFAULT_CAPABILITIES.iter().copied().collect(),
        Some(names) => names
            .iter()
            .map(|n| parse_capability(n))
            .collect::<Result<_, _>>()?,
    };
    let process = if uid == 0 {
        bounding.clone()
    } else {
        CapsHashSet::new()
    };
    Ok(CapabilitySets {
        bounding,
        effective: process.clone(),
        permitted: process,
        inheritable: CapsHashSet::new(),
        ambient: CapsHashSet::new(),
    })
}

/// The sets as the kernel's bit masks (bit n: capability n), computed by
/// the agent so the container's init applies them without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CapMasks {
    pub bounding: u64,
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
    pub ambient: u64,
    /// The highest capability the running kernel knows.
    pub last_cap: u8,
}

fn mask(set: &CapsHashSet) -> u64 {
    set.iter().fold(0, |m, c| m | c.bitmask())
}

/// The kernel's highest capability number, read once (at agent start-up,
/// before the template snapshot) from procfs; the caps crate's newest if
/// procfs cannot tell.
pub fn last_cap() -> u8 {
    static LAST: OnceLock<u8> = OnceLock::new();
    *LAST.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(|| caps::all().iter().map(|c| c.index()).max().unwrap_or(40))
    })
}

impl CapabilitySets {
    pub fn masks(&self) -> CapMasks {
        CapMasks {
            bounding: mask(&self.bounding),
            effective: mask(&self.effective),
            permitted: mask(&self.permitted),
            inheritable: mask(&self.inheritable),
            ambient: mask(&self.ambient),
            last_cap: last_cap(),
        }
    }
}

fn prctl(op: libc::c_int, arg: libc::c_ulong) -> Result<(), Errno> {
    // SAFETY: the capability prctls used here take integers only.
    if unsafe {
        libc::prctl(
            op,
            arg,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    } < 0
    {
        return Err(Errno::last());
    }
    Ok(())
}

/// Shrinks the bounding set. Must run while we still hold CAP_SETPCAP,
/// i.e. before switching user. Allocation-free.
pub fn drop_bounding(m: &CapMasks) -> Result<(), CapError> {
    for cap in 0..=m.last_cap.min(63) {
        if m.bounding & (1 << cap) != 0 {
            continue;
        }
        match prctl(libc::PR_CAPBSET_DROP, cap.into()) {
            // EINVAL: a capability this kernel does not have.
            Ok(()) | Err(Errno::EINVAL) => {}
            Err(source) => {
                return Err(CapError::Apply {
                    what: "bounding",
                    source,
                })
            }
        }
    }
    Ok(())
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Sets effective, permitted, inheritable (one capset) and ambient; runs
/// after the user switch. Allocation-free.
pub fn apply_process_sets(m: &CapMasks) -> Result<(), CapError> {
    let header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let word = |v: u64, i: u32| (v >> (32 * i)) as u32;
    let data = [0, 1].map(|i| CapData {
        effective: word(m.effective, i),
        permitted: word(m.permitted, i),
        inheritable: word(m.inheritable, i),
    });
    // SAFETY: capset reads a v3 header and two data structs, which is
    // exactly what we pass.
    if unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) } < 0 {
        return Err(CapError::Apply {
            what: "effective/permitted/inheritable",
            source: Errno::last(),
        });
    }
    // capset drops every ambient capability that is not both permitted and
    // inheritable: with no inheritable set, ambient is empty now.
    if m.inheritable == 0 {
        return Ok(());
    }
    let ambient_err = |source| CapError::Apply {
        what: "ambient",
        source,
    };
    prctl(
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
    )
    .map_err(ambient_err)?;
    for cap in 0..=m.last_cap.min(63) {
        if m.ambient & (1 << cap) != 0 {
            // SAFETY: PR_CAP_AMBIENT_RAISE takes the capability number.
            let rc = unsafe {
                libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                    libc::c_ulong::from(cap),
                    0 as libc::c_ulong,
                    0 as libc::c_ulong,
                )
            };
            if rc < 0 {
                return Err(ambient_err(Errno::last()));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_for_root() {
        let s = capability_sets(None, 0).unwrap();
        assert_eq!(s.bounding.len(), 14);
        assert!(s.bounding.contains(&Capability::CAP_NET_BIND_SERVICE));
        assert!(!s.bounding.contains(&Capability::CAP_SYS_ADMIN));
        assert!(!s.bounding.contains(&Capability::CAP_NET_ADMIN));
        assert_eq!(s.effective, s.bounding);
        assert_eq!(s.permitted, s.bounding);
        assert!(s.inheritable.is_empty());
        assert!(s.ambient.is_empty());
    }

    #[test]
    fn non_root_gets_only_a_bounding_set() {
        let s = capability_sets(None, 1000).unwrap();
        assert_eq!(s.bounding.len(), 14);
        assert!(s.effective.is_empty());
        assert!(s.permitted.is_empty());
    }

    #[test]
    fn explicit_sets_and_name_forms() {
        let names = vec!["CAP_NET_ADMIN".to_string(), "sys_ptrace".to_string()];
        let s = capability_sets(Some(&names), 0).unwrap();
        assert_eq!(
            s.bounding,
            [Capability::CAP_NET_ADMIN, Capability::CAP_SYS_PTRACE]
                .into_iter()
                .collect()
        );
        assert!(capability_sets(Some(&[]), 0).unwrap().bounding.is_empty());
        assert!(matches!(
            capability_sets(Some(&["CAP_FLY".to_string()]), 0),
            Err(CapError::Unknown(n)) if n == "CAP_FLY"
        ));
    }

    #[test]
    fn masks_are_the_kernel_bits() {
        let names = vec!["CAP_CHOWN".to_string(), "CAP_SYS_ADMIN".to_string()];
        let m = capability_sets(Some(&names), 0).unwrap().masks();
        assert_eq!(m.bounding, 1 | (1 << 21));
        assert_eq!(m.effective, m.bounding);
        assert_eq!(m.inheritable, 0);
        assert!(m.last_cap >= 37, "any kernel we run has CAP_AUDIT_READ");
        let m = capability_sets(None, 1000).unwrap().masks();
        assert_eq!((m.effective, m.permitted), (0, 0));
        assert_eq!(m.bounding.count_ones(), 14);
    }
}
